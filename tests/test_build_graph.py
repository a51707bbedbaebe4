"""Tests of the graph store job (spark_jobs/build_graph.py) and its reader.

Small generated logs (300 users, 3 days, 3 % bad JSON lines) and a hand-made
bring-your-own-logs fixture (tests/fixtures/byo) whose every count is worked out by hand.
Spark comes from the session-scoped ``spark`` fixture in tests/conftest.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from clickgraph.core.config import ConfigError, load_config
from spark_jobs import store_io

FIXTURE = Path(__file__).parent / "fixtures" / "byo"
DAYS = ["2026-03-02", "2026-03-03", "2026-03-04"]
D1, D2 = "2025-06-01", "2025-06-02"


# --------------------------------------------------------------------------- fixtures


def _generated_cfg(root: Path, *extra: str):
    return load_config(overrides=[
        f"paths.root={root}", f"paths.logs={root}/logs", f"paths.graph={root}/graph",
        "spark.master=local[2]", "spark.shuffle_partitions=4",
        "generate.num_users=300", "generate.num_days=3", "generate.num_content=200",
        "generate.num_articles=300", "generate.num_brands=40", "generate.num_categories=8",
        "generate.bad_row_fraction=0.03", "generate.formats=[json]", "generate.seed=11",
        *extra])


@pytest.fixture(scope="module")
def logs(spark, tmp_path_factory):
    """Generated logs with every kind of bad JSON line; returns (root, logs manifest)."""
    from spark_jobs.generate_logs import run as generate

    root = tmp_path_factory.mktemp("gen")
    manifest = generate(spark, _generated_cfg(root), log=lambda *_: None)
    assert set(manifest["bad_rows"]["by_kind"]) == {
        "malformed", "missing_key", "unknown_event_type", "future_timestamp",
        "ancient_timestamp", "duplicate", "wrong_type"}
    return root, manifest


@pytest.fixture(scope="module")
def full_store(spark, logs):
    """All three days built in one run."""
    from spark_jobs.build_graph import run as build

    root, _ = logs
    manifest = build(spark, _generated_cfg(root), log=lambda *_: None)
    return root / "graph", manifest


def _byo_cfg(*extra: str):
    return load_config(FIXTURE / "config.yaml", [
        f"graph.input.events.path={FIXTURE / 'events'}",
        f"graph.input.entities.user.path={FIXTURE / 'entities' / 'members.csv'}",
        f"graph.input.entities.content.path={FIXTURE / 'entities' / 'items.jsonl'}",
        f"graph.input.entities.article.path={FIXTURE / 'entities' / 'products.csv'}",
        f"graph.input.entities.brand.path={FIXTURE / 'entities' / 'labels.csv'}",
        f"graph.input.entities.category.path={FIXTURE / 'entities' / 'sections.csv'}",
        *extra])


def _edges(store, relation: str) -> list[tuple]:
    """All edges of a relation as sorted tuples (day included)."""
    table = store.read_edges_arrow(relation)
    cols = [c for c in table.column_names]
    return sorted((tuple(row[c] for c in cols) for row in table.to_pylist()), key=repr)


def _id_map(store, node_type: str) -> dict[str, tuple[int, str]]:
    table = pq.read_table(store.id_map_url(node_type)).to_pylist()
    return {r["raw_id"]: (r["id"], r["first_day"]) for r in table}


# --------------------------------------------------------------------------- no Spark


def test_config_rejects_unknown_relation_attribute_and_link():
    with pytest.raises(ConfigError, match="graph.relation_weights.follows"):
        load_config(overrides=["graph.relation_weights.follows=1.0"])
    with pytest.raises(ConfigError, match="graph.input.entities.user.attributes.shoe_size"):
        load_config(overrides=["graph.input.entities.user.attributes.shoe_size=shoe"])
    with pytest.raises(ConfigError, match="graph.input.entities.brand.links.category"):
        load_config(overrides=["graph.input.entities.brand.links.category=cat"])
    with pytest.raises(ConfigError, match="already mapped"):
        load_config(overrides=["graph.input.events.event_types.click=[impression]"])
    with pytest.raises(ConfigError, match="graph.max_quarantine_fraction"):
        load_config(overrides=["graph.max_quarantine_fraction=1.5"])
    with pytest.raises(ConfigError, match="graph.min_event_time"):
        load_config(overrides=["graph.min_event_time=yesterday"])


def test_parse_days():
    from spark_jobs.build_graph import parse_days

    assert parse_days(None, None) is None
    assert parse_days(["2026-03-03", "2026-03-02", "2026-03-03"], None) == ["2026-03-02", "2026-03-03"]
    assert parse_days(None, "2026-02-27..2026-03-01") == ["2026-02-27", "2026-02-28", "2026-03-01"]
    for bad in ("2026-03-02", "2026-03-05..2026-03-02", "a..b"):
        with pytest.raises(ConfigError):
            parse_days(None, bad)
    with pytest.raises(ConfigError):
        parse_days(["03/02/2026"], None)


# --------------------------------------------------------------------------- transforms


@pytest.mark.spark
def test_event_checks_give_each_bad_row_its_reason(spark):
    """parse_events -> mark_duplicates -> mark_unknown_entities on hand-made JSON lines."""
    from spark_jobs.build_graph import (
        TimeBounds,
        event_targets,
        mark_duplicates,
        mark_unknown_entities,
        parse_events,
    )

    day, t = "2026-03-02", 1772445600000  # 2026-03-02T10:00Z

    def line(eid, **over):
        row = {"event_id": eid, "event_type": "impression", "ts_ms": t, "user_id": "U1",
               "content_id": "C1", "position": 3, "clicked": False}
        row.update(over)
        return json.dumps({k: v for k, v in row.items() if v is not None})

    lines = {
        "ok": line("ok"),
        "dup1": line("dup"), "dup2": line("dup"),
        "later_copy": line("ok", ts_ms=t + 5),  # same id, later time: the earlier is kept
        "truncated": line("x")[:30],
        "empty": "",
        "no_user": line("no_user", user_id=None),
        "hover": line("hover", event_type="hover"),
        "ts_text": line("ts_text", ts_ms="02/03/2026 10:00"),
        "pos_text": line("pos_text", position="third"),
        "future": line("future", ts_ms=t + 80 * 365 * 86_400_000),
        "ancient": line("ancient", ts_ms=t - 35 * 365 * 86_400_000),
        "other_day": line("other_day", ts_ms=t + 3 * 86_400_000),  # outside its log day
        "ghost_user": line("ghost_user", user_id="U404"),
        "like_no_brand": line("like_no_brand", event_type="brand_like", content_id=None),
        "like_ok": line("like_ok", event_type="brand_like", content_id=None, brand_id="B1"),
    }
    raw = spark.createDataFrame([(v, day) for v in lines.values()],
                                "value string, _part_day string")
    cfg = load_config()
    bounds = TimeBounds(min_ms=946684800000, max_ms=t + 30 * 86_400_000, day_slack_ms=86_400_000)
    parsed = parse_events(raw, cfg.graph.input.events, "json", bounds, True)
    known = spark.createDataFrame([("user", "U1"), ("content", "C1"), ("brand", "B1")],
                                  "t string, raw_id string")
    checked = mark_unknown_entities(event_targets(mark_duplicates(parsed)), known, 3)
    got: dict[tuple, list] = {}
    for row in checked.collect():
        got.setdefault((row["event_id"], row["ts_ms"]), []).append(row["reason"])
    year = 365 * 86_400_000
    assert {k: sorted(v, key=str) for k, v in got.items()} == {
        ("ok", t): [None], ("ok", t + 5): ["duplicate"], ("dup", t): [None, "duplicate"],
        (None, None): ["malformed", "malformed"], ("no_user", t): ["missing_key"],
        ("hover", t): ["unknown_event_type"], ("ts_text", None): ["wrong_type"],
        ("pos_text", t): ["wrong_type"], ("future", t + 80 * year): ["timestamp_out_of_range"],
        ("ancient", t - 35 * year): ["timestamp_out_of_range"],
        ("other_day", t + 3 * 86_400_000): ["timestamp_out_of_range"],
        ("ghost_user", t): ["unknown_entity"], ("like_no_brand", t): ["missing_key"],
        ("like_ok", t): [None],
    }
    bad = {r["event_id"]: r["raw"] for r in checked.where("reason IS NOT NULL").collect()}
    assert bad["hover"] == lines["hover"]  # row-level reasons keep the input line


@pytest.mark.spark
def test_timestamp_forms(spark):
    from pyspark.sql import types as T

    from spark_jobs.build_graph import to_epoch_ms

    rows = [("1772445600000", "1772445600", "2026-03-02T10:00:00Z"),
            ("1772445600000.0", "1772445600.25", "2026-03-02T11:00:00+01:00"),
            ("03/02/2026", "soon", "2026-13-45T10:00:00Z")]
    df = spark.createDataFrame(rows, "ms string, s string, iso string")
    out = df.select(
        to_epoch_ms(df["ms"], T.StringType(), "ms", "k").alias("ms"),
        to_epoch_ms(df["s"], T.StringType(), "s", "k").alias("s"),
        to_epoch_ms(df["iso"], T.StringType(), "iso", "k").alias("iso")).collect()
    t = 1772445600000
    assert [tuple(r) for r in out] == [(t, t, t), (t, t + 250, t), (None, None, None)]
    native = spark.createDataFrame([(t,)], "v long").selectExpr("timestamp_millis(v) AS ts")
    assert native.select(to_epoch_ms(native["ts"], T.TimestampType(), "iso", "k")).first()[0] == t
    with pytest.raises(ConfigError, match="numeric .* time unit is .iso."):
        to_epoch_ms(df["ms"], T.LongType(), "iso", "graph.input.events.timestamp_unit")


@pytest.mark.spark
def test_assign_ids_keeps_existing_and_appends_in_day_then_raw_order(spark):
    from spark_jobs.build_graph import assign_ids

    existing = spark.createDataFrame([("user", "u9"), ("user", "u5")], "t string, raw_id string")
    candidates = spark.createDataFrame(
        [("user", "u9", "2026-03-02"), ("user", "u2", "2026-03-03"), ("user", "u7", "2026-03-02"),
         ("user", "u1", "2026-03-03"), ("brand", "b1", "2026-03-02")],
        "t string, raw_id string, first_day string")
    got = {(r["t"], r["raw_id"]): r["id"] for r in
           assign_ids(candidates, existing, {"user": 2, "brand": 0}).collect()}
    # u9 exists already: untouched (not returned); new users after id 1 by (day, raw id)
    assert got == {("user", "u7"): 2, ("user", "u1"): 3, ("user", "u2"): 4, ("brand", "b1"): 0}


# --------------------------------------------------------------------------- the store


@pytest.mark.spark
def test_full_build_counts_add_up_and_quarantine_matches_injected_bad_rows(full_store, logs):
    from clickgraph.core.graph_store import open_graph_store

    path, manifest = full_store
    _, logs_manifest = logs
    for key in ("format_version", "rows_read", "rows_kept", "rows_quarantined",
                "quarantine_by_reason", "days", "node_counts", "edge_counts", "time_range",
                "producer_version", "config_hash"):
        assert key in manifest, key
    assert manifest["rows_read"] == manifest["rows_kept"] + manifest["rows_quarantined"]
    assert manifest["rows_quarantined"] == sum(manifest["quarantine_by_reason"].values())
    events = manifest["events"]
    assert events["rows_read"] == logs_manifest["json_lines_total"]
    assert events["rows_read"] == events["rows_kept"] + events["rows_quarantined"]
    for day in DAYS:
        d = events["by_day"][day]
        assert d["rows_read"] == d["rows_kept"] + d["rows_quarantined"]
    injected = dict(logs_manifest["bad_rows"]["by_kind"])
    injected["timestamp_out_of_range"] = injected.pop("future_timestamp") + \
        injected.pop("ancient_timestamp")
    assert events["quarantine_by_reason"] == dict(sorted(injected.items()))
    # one edge per kept event, per event type
    counts = logs_manifest["event_counts"]
    assert manifest["edge_counts"]["user__impressed__content"] == counts["impression"]
    assert manifest["edge_counts"]["user__clicked__content"] == counts["click"]
    assert manifest["edge_counts"]["user__viewed__content"] == counts["view"]
    assert manifest["edge_counts"]["user__likes__brand"] == counts["brand_like"]
    assert events["rows_kept"] == logs_manifest["events_total"]
    # the generator's entities are all valid, and every article has one brand and category
    assert manifest["node_counts"]["article"] == 300
    assert manifest["edge_counts"]["article__of__brand"] == 300
    assert manifest["edge_counts"]["article__in__category"] == 300
    assert manifest["days"] == DAYS
    open_graph_store(str(path), verify="counts")
    quarantined = pq.read_table(path / "quarantine" / "events").to_pylist()
    assert len(quarantined) == events["rows_quarantined"]
    assert all(r["raw"] for r in quarantined)


@pytest.mark.spark
def test_written_tables_match_schemas(full_store):
    from clickgraph.core.graph_store import open_graph_store
    from spark_jobs.schemas import ID_MAP_SCHEMA, RELATIONS, edge_schema, node_schema

    store = open_graph_store(str(full_store[0]))

    def names_types(arrow_schema):
        mapping = {"int64": "bigint", "int32": "int", "double": "double", "bool": "boolean",
                   "string": "string", "large_string": "string"}
        return [(f.name, mapping[str(f.type)]) for f in arrow_schema]

    def expected(spark_schema):
        return [(f.name, f.dataType.simpleString()) for f in spark_schema.fields]

    for ntype in store.node_types:
        assert names_types(pq.read_schema(next(Path(store.node_url(ntype)).glob("*.parquet")))) \
            == expected(node_schema(ntype))
        assert names_types(pq.read_schema(next(Path(store.id_map_url(ntype)).glob("*.parquet")))) \
            == expected(ID_MAP_SCHEMA)
    assert set(store.relations) == set(RELATIONS)
    for name, info in store.relations.items():
        assert info.count > 0, name
        for folder in store.edge_urls(name).values():
            for file in Path(folder).glob("*.parquet"):
                assert names_types(pq.read_schema(file)) == expected(edge_schema(name)), name
    # reverse direction: same table, src and dst swapped
    fwd = store.read_edges_arrow("user__clicked__content")
    rev = store.read_edges_arrow("user__clicked__content", reverse=True)
    assert rev.column("src").to_pylist() == fwd.column("dst").to_pylist()


@pytest.mark.spark
def test_day_by_day_equals_full_and_rerun_changes_nothing(spark, logs, full_store, monkeypatch):
    """Incremental build (day 1, then days 2..3) == full build; a crashed rerun leaves
    the store readable; a rerun of a day replaces it without duplicating anything."""
    import spark_jobs.build_graph as job
    from clickgraph.core.graph_store import open_graph_store

    root, _ = logs
    inc = root / "incremental"
    cfg = _generated_cfg(root, f"paths.graph={inc}")
    job.run(spark, cfg, days=[DAYS[0]], log=lambda *_: None)
    first = open_graph_store(str(inc), verify="counts")
    assert first.days == [DAYS[0]]
    ids_after_day1 = {t: _id_map(first, t) for t in first.node_types}
    m_inc = job.run(spark, cfg, days=DAYS[1:], log=lambda *_: None)
    full = open_graph_store(str(full_store[0]), verify="counts")
    store = open_graph_store(str(inc), verify="counts")
    for key in ("rows_read", "rows_kept", "rows_quarantined", "quarantine_by_reason",
                "node_counts", "edge_counts", "days", "time_range"):
        assert m_inc[key] == full_store[1][key], key
    for ntype in full.node_types:
        inc_ids = _id_map(store, ntype)
        assert inc_ids == _id_map(full, ntype), ntype
        # ids given on day 1 never change
        assert all(inc_ids[raw] == v for raw, v in ids_after_day1[ntype].items())
        assert pq.read_table(store.node_url(ntype)).sort_by("id").to_pylist() == \
            pq.read_table(full.node_url(ntype)).sort_by("id").to_pylist()
    for rel in full.relations:
        assert _edges(store, rel) == _edges(full, rel), rel

    # a rerun of day 2 that dies before its manifest: the store is as before
    before = json.loads((inc / "_MANIFEST.json").read_text())

    def die(*_args, **_kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(job, "write_manifest", die)
    with pytest.raises(RuntimeError, match="killed"):
        job.run(spark, cfg, days=[DAYS[1]], log=lambda *_: None)
    monkeypatch.undo()
    assert json.loads((inc / "_MANIFEST.json").read_text()) == before
    open_graph_store(str(inc), verify="counts")
    # the rerun that succeeds replaces day 2 and clears the dead run's folders
    m_rerun = job.run(spark, cfg, days=[DAYS[1]], log=lambda *_: None)
    for key in ("rows_read", "rows_kept", "rows_quarantined", "quarantine_by_reason",
                "node_counts", "edge_counts", "days"):
        assert m_rerun[key] == before[key], key
    assert m_rerun["events"]["by_day"][DAYS[1]]["run"] != before["events"]["by_day"][DAYS[1]]["run"]
    store = open_graph_store(str(inc), verify="counts")
    for rel in full.relations:
        assert _edges(store, rel) == _edges(full, rel), rel
    for day_dir in inc.glob("edges/*/day=*"):
        assert len(list(day_dir.glob("run=*"))) == 1, day_dir
    for ntype in full.node_types:
        assert _id_map(store, ntype) == _id_map(full, ntype)


@pytest.mark.spark
def test_reader_refuses_unknown_version_missing_manifest_and_missing_files(full_store, tmp_path):
    from clickgraph.core.graph_store import GraphStoreError, open_graph_store

    copy = tmp_path / "graph"
    shutil.copytree(full_store[0], copy)
    manifest_path = copy / "_MANIFEST.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(GraphStoreError, match="format_version 99"):
        open_graph_store(str(copy))
    manifest_path.write_text(json.dumps(manifest))
    open_graph_store(str(copy), verify="counts")
    rel = manifest["relations"]["user__clicked__content"]["partitions"][0]["path"]
    victim = next((copy / rel).glob("*.parquet"))
    victim.unlink()
    with pytest.raises(GraphStoreError, match="holds .* rows, the manifest says"):
        open_graph_store(str(copy), verify="counts")
    shutil.rmtree(copy / rel)
    with pytest.raises(GraphStoreError, match="missing"):
        open_graph_store(str(copy))
    manifest_path.unlink()
    with pytest.raises(GraphStoreError, match="no _MANIFEST.json"):
        open_graph_store(str(copy))


@pytest.mark.spark
def test_byo_fixture(spark, tmp_path):
    """The hand-made fixture: other names, ms/ISO/epoch-second times, CSV and JSON tables,
    multi-valued links. Every number below is worked out in tests/fixtures/byo."""
    from clickgraph.core.graph_store import open_graph_store
    from spark_jobs.build_graph import run as build

    out = tmp_path / "byo"
    m = build(spark, _byo_cfg(), out_url=str(out), log=lambda *_: None)
    assert m["rows_read"] == m["rows_kept"] + m["rows_quarantined"] == 17 + 6 + 3 + 3 + 2 + 2
    assert m["events"]["quarantine_by_reason"] == {
        "duplicate": 1, "malformed": 1, "missing_key": 1, "timestamp_out_of_range": 1,
        "unknown_entity": 1, "unknown_event_type": 1, "wrong_type": 1}
    assert m["events"]["rows_kept"] == 10
    assert m["events"]["undated"]["rows_read"] == 3  # malformed, text time, 1999
    assert m["entities"]["user"]["quarantine_by_reason"] == {"duplicate": 1, "missing_key": 1}
    assert m["entities"]["content"]["dangling_links"] == 1  # I3 -> unknown label L9
    assert m["days"] == [D1, D2]
    assert m["node_counts"] == {"user": 3, "content": 3, "article": 3, "brand": 2, "category": 2}
    assert m["edge_counts"] == {
        "user__impressed__content": 5, "user__clicked__content": 2, "user__viewed__content": 1,
        "user__likes__brand": 2, "content__features__article": 3, "content__of__brand": 3,
        "content__in__category": 4, "article__of__brand": 3, "article__in__category": 3}
    store = open_graph_store(str(out), verify="counts")
    users = _id_map(store, "user")
    # M4 joins after the last day: not yet a node; M3 joins on day 2
    assert users == {"M1": (0, D1), "M2": (1, D1), "M3": (2, D2)}
    # I2 is published on day 2 but impressed on day 1: it enters on day 1
    assert _id_map(store, "content") == {"I1": (0, D1), "I2": (1, D1), "I3": (2, D1)}
    imp = {(r["src"], r["dst"], r["position"]): (r["clicked"], r["weight"])
           for r in store.read_edges_arrow("user__impressed__content").to_pylist()}
    assert imp[(0, 0, 0)] == (True, pytest.approx(0.4))  # video: 0.2 x content_type_weight 2.0
    assert imp[(1, 2, 2)] == (False, pytest.approx(0.2))
    viewed = store.read_edges_arrow("user__viewed__content").to_pylist()
    assert [(r["dwell_ms"], r["ts_ms"]) for r in viewed] == [(30000, 1748772006000)]
    # the Spark reader: reverse = src and dst swapped (content 0 -> user 0)
    rev = store_io.read_edges(spark, store, "user__viewed__content", reverse=True).collect()
    assert [(r["src"], r["dst"], r["day"], r["weight"]) for r in rev] == [(0, 0, D1, 1.6)]
    clicks = store_io.read_edges(spark, store, "user__clicked__content", days=[D2]).collect()
    assert [(r["src"], r["dst"], r["day"]) for r in clicks] == [(2, 1, D2)]
    cats = sorted((r["src"], r["dst"], r["ts_ms"])
                  for r in store.read_edges_arrow("content__in__category").to_pylist())
    # I1 in S1 and S2 (multi-valued column), times = publication (epoch seconds -> ms)
    assert cats == [(0, 0, 1747267200000), (0, 1, 1747267200000), (1, 1, 1748865600000),
                    (2, 0, 1748563200000)]
    nodes = {r["raw_id"]: r for r in pq.read_table(store.node_url("user")).to_pylist()}
    assert nodes["M2"]["created_ts_ms"] == 1747722600000  # 2025-05-20T08:30+02:00
    assert nodes["M2"]["country"] == "FR" and nodes["M2"]["language"] is None

    # the same logs day by day give the same store
    out2 = tmp_path / "byo-days"
    build(spark, _byo_cfg(), days=[D1], out_url=str(out2), log=lambda *_: None)
    m2 = build(spark, _byo_cfg(), days=[D2], out_url=str(out2), log=lambda *_: None)
    for key in ("rows_read", "rows_kept", "quarantine_by_reason", "node_counts", "edge_counts"):
        assert m2[key] == m[key], key
    store2 = open_graph_store(str(out2), verify="counts")
    for rel in store.relations:
        assert _edges(store2, rel) == _edges(store, rel), rel


@pytest.mark.spark
def test_failures_name_their_cause_and_leave_the_store(spark, tmp_path):
    from spark_jobs.build_graph import GraphBuildError
    from spark_jobs.build_graph import run as build

    out = tmp_path / "strict"
    with pytest.raises(GraphBuildError, match="above graph.max_quarantine_fraction=0.05"):
        build(spark, _byo_cfg("graph.max_quarantine_fraction=0.05"), out_url=str(out),
              log=lambda *_: None)
    assert not out.exists() or not any(out.rglob("*.parquet"))
    with pytest.raises(GraphBuildError, match="not found at .*nowhere.csv"):
        build(spark, _byo_cfg(f"graph.input.entities.brand.path={tmp_path / 'nowhere.csv'}"),
              out_url=str(out), log=lambda *_: None)
    with pytest.raises(ConfigError, match="graph.input.entities.user.attributes.country"):
        build(spark, _byo_cfg("graph.input.entities.user.attributes.country=nation"),
              out_url=str(out), log=lambda *_: None)
    with pytest.raises(GraphBuildError, match="no events for day 2025-06-09"):
        build(spark, _byo_cfg(), days=["2025-06-09"], out_url=str(out), log=lambda *_: None)


@pytest.mark.spark
def test_cli_build_graph_with_day(tmp_path, spark, capsys):
    from clickgraph.app.cli import main

    out = tmp_path / "cli"
    args = ["build-graph", "--config", str(FIXTURE / "config.yaml"), "--out", str(out)]
    for key, name in (("events", "events"), ("entities.user", "entities/members.csv"),
                      ("entities.content", "entities/items.jsonl"),
                      ("entities.article", "entities/products.csv"),
                      ("entities.brand", "entities/labels.csv"),
                      ("entities.category", "entities/sections.csv")):
        args += ["--set", f"graph.input.{key}.path={FIXTURE / name}"]
    assert main([*args, "--day", D2]) == 0
    manifest = json.loads((out / "_MANIFEST.json").read_text())
    assert manifest["days"] == [D2]
    assert "rows read" in capsys.readouterr().out
    assert main([*args, "--day", "2025-13-01"]) == 2
    assert main([*args, "--set", "graph.input.events.path=/nonexistent/events"]) == 1
