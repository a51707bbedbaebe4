"""A platform with a subset of the schema runs every stage.

The platform has users, items with a category column and impressions with click labels:
no article, brand or category tables, no click, view or brand-like events, no brand or
dwell columns. Its mapping leaves out what it lacks (docs/graph-store.md, "A platform's
subset of the schema"); build-graph, partition, train (single process and a shard-set
worker), evaluate and export must run on what exists. Two stores: one with clicks derived
from the impression labels (``clicks_from_labels_after_s``), which trains, evaluates and
exports; one without any clicks (impressions and categories only), which partitions and
trains on its shard set. The logs are the trained run's generated ones cut down to that
subset and renamed, so the numbers mean something.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from clickgraph.core.config import ConfigError, load_config
from tests.conftest import TINY_TRAIN, tiny_overrides

pytestmark = pytest.mark.spark

quiet = lambda *_: None  # noqa: E731

SUBSET = [  # the mapping of a platform with users, items (+ category) and labelled impressions
    "graph.input.events.day_partition=null",
    "graph.input.events.timestamp_unit=s",
    "graph.input.events.columns={event_id: impression_id, event_type: kind, timestamp: "
    "shown_at, user_id: member, content_id: item, brand_id: null, position: slot, "
    "clicked: clicked, dwell_ms: null}",
    "graph.input.events.event_types={impression: [shown], click: null, view: [], brand_like: null}",
    "graph.input.entities.content={id: item, created_time: published, time_unit: iso, "
    "attributes: {}, links: {category: category}}",
    "graph.input.entities.article=null",
    "graph.input.entities.brand=null",
    "graph.input.entities.category=null",
]


def write_subset_logs(generated: Path, out: Path) -> int:
    """The generated logs cut to users, items (id, category, creation time) and
    impressions with their labels, renamed; returns the number of impressions."""
    events = ds.dataset(generated / "events" / "parquet", format="parquet",
                        partitioning="hive").to_table()
    kinds = events.column("event_type").to_pylist()
    keep = np.array([k == "impression" for k in kinds])
    imp = events.filter(pa.array(keep))
    table = pa.table({
        "impression_id": imp.column("event_id"),
        "kind": pa.array(["shown"] * imp.num_rows),
        "shown_at": pa.array(imp.column("ts_ms").to_numpy() / 1000.0),  # epoch seconds
        "member": imp.column("user_id"), "item": imp.column("content_id"),
        "slot": imp.column("position"), "clicked": imp.column("clicked")})
    (out / "events").mkdir(parents=True)
    pq.write_table(table, out / "events" / "impressions.parquet")
    users = ds.dataset(generated / "entities" / "users", format="parquet").to_table()
    (out / "entities" / "users").mkdir(parents=True)
    pq.write_table(users, out / "entities" / "users" / "users.parquet",
                   coerce_timestamps="us")  # Spark reads micro-, not nanoseconds
    content = ds.dataset(generated / "entities" / "content", format="parquet").to_table()
    items = pa.table({"item": content.column("content_id"),
                      "category": content.column("category_id"),
                      "published": pa.array([t.isoformat() for t in
                                             content.column("created_time").to_pylist()])})
    (out / "entities" / "items").mkdir(parents=True)
    pq.write_table(items, out / "entities" / "items" / "items.parquet")
    return imp.num_rows


CLICK_DELAY_S = 60


def subset_config(root: Path, logs: Path, label_clicks: bool = True):
    derive = [f"graph.input.events.clicks_from_labels_after_s={CLICK_DELAY_S}"] if label_clicks else []
    return load_config(None, tiny_overrides(root) + TINY_TRAIN + SUBSET + derive + [
        f"graph.input.events.path={logs / 'events'}",
        f"graph.input.entities.user.path={logs / 'entities' / 'users'}",
        f"graph.input.entities.content.path={logs / 'entities' / 'items'}",
        "partition.num_parts=1", "partition.quality_seeds=200"])


@pytest.fixture(scope="module")
def subset_logs(trained_run, tmp_path_factory):
    """The subset platform's logs: ``(folder, impressions written, days to build)``."""
    cfg_a, days = trained_run
    root = tmp_path_factory.mktemp("subset_logs")
    return root, write_subset_logs(Path(cfg_a.paths.logs), root), days[:5]


@pytest.fixture(scope="module")
def subset_run(spark, subset_logs, tmp_path_factory):
    """Store with clicks from labels and a single-process model: ``(cfg, impressions)``."""
    from spark_jobs import build_graph
    from trainer.local import train_single

    logs, n, days = subset_logs
    cfg = subset_config(tmp_path_factory.mktemp("subset"), logs)
    build_graph.run(spark, cfg, days=days, log=quiet)
    train_single(cfg, log=quiet)
    return cfg, n


def test_the_mapping_leaves_out_what_the_platform_lacks(tmp_path):
    cfg = subset_config(tmp_path, tmp_path)
    entities, events = cfg.graph.input.entities, cfg.graph.input.events
    assert list(entities.tables()) == ["user", "content"]
    assert entities.link_only_types() == {"category": [("content", "category")]}
    assert entities.node_types() == ("user", "content", "category")
    assert list(events.mapped_event_types()) == ["impression"]
    base = tiny_overrides(tmp_path) + SUBSET
    cases = {  # override -> the key the error must name
        "graph.input.events.event_types.impression=[]": "event_types.impression",
        "graph.input.events.event_types.brand_like=[like]": "event_types.brand_like",
        "graph.input.events.event_types.hover=null": "event_types.hover",
        "graph.input.entities.user=null": "graph.input.entities.user",
        "graph.input.entities.tag=null": "graph.input.entities.tag",
    }
    for override, key in cases.items():
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, base + [override])
    # views mapped without a content id column are still refused
    with pytest.raises(ConfigError, match=r"columns\.content_id"):
        load_config(None, base + ["graph.input.events.columns.content_id=null"])


def test_build_graph_holds_only_what_exists(subset_run):
    from clickgraph.core.graph_store import open_graph_store

    cfg, n_impressions = subset_run
    store = open_graph_store(cfg.paths.stage("graph"), verify="counts")
    assert sorted(store.node_types) == ["category", "content", "user"]
    assert sorted(store.relations) == ["content__in__category", "user__clicked__content",
                                       "user__impressed__content"]
    assert store.manifest["relations"]["user__clicked__content"]["source"] == \
        "label:impression.clicked"
    assert set(store.manifest["entities"]) == {"user", "content"}  # tables read
    imp = store.relations["user__impressed__content"]
    assert imp.count > 0 and store.manifest["rows_quarantined"] == 0
    # every built day's impressions are kept; the days not built stay out
    assert store.manifest["events"]["rows_kept"] == imp.count <= n_impressions
    # categories come from the items' links alone: no attributes, always existed
    cats = store.read_nodes_arrow("category")
    assert cats.num_rows == len(set(store.read_edges_arrow("content__in__category")
                                    .column("dst").to_pylist()))
    assert set(cats.column("created_ts_ms").to_pylist()) == {0}
    assert cats.column("group").null_count == cats.num_rows
    links = store.read_edges_arrow("content__in__category")
    assert links.num_rows == store.num_nodes("content")  # one category per item
    # one click per clicked impression, CLICK_DELAY_S after it, never earlier
    shown = store.read_edges_arrow("user__impressed__content").to_pandas()
    shown = shown[shown["clicked"]]
    clicks = store.read_edges_arrow("user__clicked__content").to_pandas()
    key = ["src", "dst", "ts_ms", "day"]
    expected = shown.assign(ts_ms=shown["ts_ms"] + CLICK_DELAY_S * 1000)[key]
    assert len(clicks) == len(shown) > 0
    assert expected.sort_values(key).to_numpy().tolist() == \
        clicks[key].sort_values(key).to_numpy().tolist()


def test_without_any_clicks_partition_and_a_shard_worker_train(spark, subset_logs, tmp_path):
    """Impressions and categories only: no clicked relation at all."""
    from clickgraph.core.graph_store import open_graph_store
    from clickgraph.core.timeline import split_windows
    from spark_jobs import build_graph, partition
    from trainer.data import load_graph_data, window_events
    from trainer.dist_train import owned_impressions, train_worker
    from trainer.distributed import find_free_port
    from trainer.shard import load_shard

    logs, _, days = subset_logs
    cfg = subset_config(tmp_path, logs, label_clicks=False)
    build_graph.run(spark, cfg, days=days, log=quiet)
    partition.run(spark, cfg, log=quiet)
    parts = cfg.paths.stage("partitions")
    manifest = json.loads((Path(parts) / "_MANIFEST.json").read_text())
    shard = load_shard(str(Path(parts) / manifest["parts"][0]["path"]))
    assert sorted(shard.node_types) == ["category", "content", "user"]
    assert {et[1].removeprefix("rev_") for et in shard.edge_types} == {"impressed", "in"}
    store = open_graph_store(cfg.paths.stage("graph"))
    windows = split_windows(store.days, cfg.train.val_days, cfg.train.test_days)
    data = load_graph_data(cfg.paths.stage("graph"), fit_before=windows.val_start)
    train = data.impressions.take(window_events(data.impressions, windows, "train"))
    result = train_worker(0, 1, shard, cfg.train, owned_impressions(train, shard),
                          data.content_created, master_addr="127.0.0.1",
                          master_port=find_free_port())
    assert result.steps_per_epoch[0] > 0 and np.isfinite(result.losses).all()


def test_evaluate_and_export_run_on_the_subset(subset_run, tmp_path):
    from trainer.evaluate import run_evaluation
    from trainer.export import run_export

    cfg, _ = subset_run
    result = run_evaluation(cfg, out_url=str(tmp_path / "eval"), log=quiet)
    assert all(0 < result["auc"][m] < 1 for m in result["auc"]), result["auc"]
    names = result["baseline_features"]
    assert {"user_impressed", "user_clicked", "user_ctr", "content_ctr"} <= set(names)
    assert not any(r in name for name in names for r in ("viewed", "likes"))
    manifest = run_export(cfg, out_url=str(tmp_path / "emb"), log=quiet)
    assert manifest["counts"]["user"] > 0 and manifest["counts"]["content"] > 0
