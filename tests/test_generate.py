"""The synthetic log generator: determinism, schemas, manifest, bad rows, planted signal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clickgraph.core.config import load_config
from spark_jobs import generate_logs, log_schema
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.spark


def _sorted_rows(df):
    return sorted(tuple(r) for r in df.collect())


def test_day_plan_grows_users_and_content():
    cfg = load_config()
    plan = generate_logs.plan_days(cfg.generate)
    assert len(plan.start_ms) == cfg.generate.num_days
    assert plan.users_available == sorted(plan.users_available)
    assert plan.users_available[-1] == cfg.generate.num_users
    assert plan.content_available == sorted(plan.content_available)
    assert all(b - a == 86_400_000 for a, b in zip(plan.start_ms, plan.start_ms[1:]))


def test_time_of_day_quantiles_are_an_inverse_cdf():
    q = generate_logs.time_of_day_quantiles()
    assert q == sorted(q) and 0 <= q[0] and q[-1] < 86_400_000
    evening = sum(1 for x in q if 19 * 3.6e6 <= x < 22 * 3.6e6)
    night = sum(1 for x in q if 2 * 3.6e6 <= x < 5 * 3.6e6)
    assert evening > 4 * night  # the daily cycle is real


def test_same_seed_same_rows_whatever_the_partitioning(spark, tmp_path):
    base = tiny_overrides(tmp_path)
    a = load_config(None, base + ["generate.num_output_files=1"])
    b = load_config(None, base + ["generate.num_output_files=5"])
    c = load_config(None, base + ["generate.seed=8"])
    rows = [_sorted_rows(generate_logs.events_df(spark, generate_logs.LatentModel(x.generate)))
            for x in (a, b, c)]
    assert len(rows[0]) > 1000
    assert rows[0] == rows[1]
    assert rows[0] != rows[2]
    users = [_sorted_rows(generate_logs.users_df(spark, generate_logs.LatentModel(x.generate)))
             for x in (a, b)]
    assert users[0] == users[1]


def test_job_writes_schemas_manifest_and_counts(spark, tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path))
    manifest = generate_logs.run(spark, cfg, log=lambda *_: None)
    out = Path(cfg.paths.stage("logs"))
    on_disk = json.loads((out / "_MANIFEST.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest, default=str))
    assert manifest["kind"] == "logs" and manifest["format_version"] == 1
    assert (out / "_config.yaml").exists()
    assert not list(tmp_path.glob(".logs.staging-*"))

    events = spark.read.parquet(str(out / "events" / "parquet"))
    data_fields = [(f.name, f.dataType) for f in events.schema.fields if f.name != "dt"]
    assert data_fields == [(f.name, f.dataType) for f in log_schema.EVENTS.fields]
    for name, schema in log_schema.ENTITY_TABLES.items():
        table = spark.read.parquet(str(out / "entities" / name))
        assert [(f.name, f.dataType) for f in table.schema.fields] == \
            [(f.name, f.dataType) for f in schema.fields], name
        assert table.count() == manifest["entity_counts"][name]

    counts = {r["event_type"]: r["count"] for r in events.groupBy("event_type").count().collect()}
    assert counts == manifest["event_counts"]
    assert set(counts) == set(log_schema.EVENT_TYPES)
    assert counts["click"] == counts["view"]
    assert counts["click"] == events.where("event_type = 'impression' AND clicked").count()
    assert events.select("event_id").distinct().count() == manifest["events_total"]
    assert manifest["days"][0] == cfg.generate.start_date and len(manifest["days"]) == 3

    json_lines = spark.read.text(str(out / "events" / "json"))
    assert json_lines.count() == manifest["events_total"] == manifest["json_lines_total"]
    assert manifest["bad_rows"]["total"] == 0


def test_no_event_before_its_user_signed_up_or_its_content_existed(spark, tiny_cfg):
    from pyspark.sql import functions as F

    m = generate_logs.LatentModel(tiny_cfg.generate)
    events = generate_logs.events_df(spark, m)
    users = generate_logs.users_df(spark, m)
    content = generate_logs.content_df(spark, m)
    joined = events.join(users, "user_id").join(content, "content_id", "left")
    early_user = joined.where(F.col("ts_ms") <= F.unix_millis("signup_time")).count()
    early_content = joined.where(F.col("ts_ms") <= F.unix_millis("created_time")).count()
    assert early_user == 0 and early_content == 0


def test_rerun_replaces_output_without_duplicates(spark, tiny_cfg):
    generate_logs.run(spark, tiny_cfg, log=lambda *_: None)
    first = spark.read.parquet(tiny_cfg.paths.stage("logs") + "/events/parquet").count()
    generate_logs.run(spark, tiny_cfg, log=lambda *_: None)
    assert spark.read.parquet(tiny_cfg.paths.stage("logs") + "/events/parquet").count() == first


def _classify(line: str) -> str:
    """Independent check of what kind of bad JSON line this is (None when good)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return "malformed"
    if "user_id" not in row:
        return "missing_key"
    if row["event_type"] not in log_schema.EVENT_TYPES:
        return "unknown_event_type"
    if not isinstance(row["ts_ms"], int):
        return "wrong_type"
    if row["ts_ms"] > 4_000_000_000_000:
        return "future_timestamp"
    if row["ts_ms"] < 946_684_800_000:
        return "ancient_timestamp"
    return "ok"


def test_bad_rows_match_the_request(spark, tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path) + ["generate.bad_row_fraction=0.05",
                                                        "generate.formats=[json]"])
    manifest = generate_logs.run(spark, cfg, log=lambda *_: None)
    lines = [r[0] for r in spark.read.text(cfg.paths.stage("logs") + "/events/json").collect()]
    by_kind = manifest["bad_rows"]["by_kind"]
    assert set(by_kind) == set(generate_logs.BAD_ROW_KINDS)
    assert len(lines) == manifest["json_lines_total"] == manifest["events_total"] + sum(by_kind.values())
    share = sum(by_kind.values()) / len(lines)
    assert 0.035 < share < 0.065, share  # 5% requested, binomial noise on ~6k lines

    seen: dict[str, int] = {}
    for line in lines:
        kind = _classify(line)
        seen[kind] = seen.get(kind, 0) + 1
    duplicates = len(lines) - len(set(lines))
    for kind in ("malformed", "missing_key", "unknown_event_type", "wrong_type",
                 "future_timestamp", "ancient_timestamp"):
        assert seen.get(kind, 0) == by_kind[kind], kind
    assert duplicates == by_kind["duplicate"]


@pytest.mark.slow
def test_planted_signal_beats_per_row_features(spark, tmp_path):
    """Per-row features miss what the generator plants: a logistic regression on
    demographics, content type, position and hour reaches a clearly lower ROC-AUC than the
    generator's own click probability on the same impressions."""
    import numpy as np
    from pyspark.sql import functions as F
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import OneHotEncoder

    cfg = load_config(None, [f"paths.root={tmp_path}", "generate.num_users=3000",
                             "generate.num_days=10", "generate.num_content=1500"])
    m = generate_logs.LatentModel(cfg.generate)
    imp = generate_logs.impressions_df(spark, m, with_truth=True)
    users = generate_logs.users_df(spark, m)
    content = generate_logs.content_df(spark, m).select("content_id", "content_type")
    rows = (imp.join(users, "user_id").join(content, "content_id")
            .select("country", "language", "device", "age_band", "gender", "content_type",
                    F.col("position").cast("string").alias("position"),
                    F.hour(F.timestamp_millis("ts_ms")).cast("string").alias("hour"),
                    F.col("day"), F.col("clicked").cast("int").alias("y"), "p_click")
            .toPandas())
    assert len(rows) > 50_000
    train, test = rows[rows.day < 7], rows[rows.day >= 7]
    features = ["country", "language", "device", "age_band", "gender", "content_type",
                "position", "hour"]
    enc = OneHotEncoder(handle_unknown="ignore").fit(train[features])
    lr = LogisticRegression(max_iter=500).fit(enc.transform(train[features]), train.y)
    auc_lr = roc_auc_score(test.y, lr.predict_proba(enc.transform(test[features]))[:, 1])
    auc_truth = roc_auc_score(test.y, test.p_click)
    assert 0.03 < np.mean(test.y) < 0.3
    assert auc_truth > 0.75
    assert auc_truth - auc_lr > 0.08, (auc_truth, auc_lr)
