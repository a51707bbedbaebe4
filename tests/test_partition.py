"""The partition job: shards cover the graph exactly, the report compares with random."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from clickgraph.config import load_config
from clickgraph.manifest import ManifestError
from spark_jobs import build_graph, generate_logs, partition
from tests.conftest import tiny_overrides
from trainer.data import load_graph_data
from trainer.shard import load_shard

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def store_cfg(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("partition")
    cfg = load_config(None, tiny_overrides(root) + ["generate.num_users=400", "generate.num_days=4"])
    logs = generate_logs.run(spark, cfg, log=lambda *_: None)
    build_graph.run(spark, cfg, days=logs["days"][:3], log=lambda *_: None)  # day 4 comes later
    return cfg


@pytest.fixture(scope="module")
def shard_set(spark, store_cfg):
    manifest = partition.run(spark, store_cfg, log=lambda *_: None)
    return manifest, Path(store_cfg.paths.stage("partitions"))


def test_manifest_has_quality_for_metis_and_random(shard_set):
    manifest, out = shard_set
    assert json.loads((out / "_MANIFEST.json").read_text())["kind"] == "partitions"
    for name in ("metis", "random"):
        q = manifest["quality"][name]
        for key in ("edge_cut_fraction", "remote_fraction_1hop", "remote_fraction_2hop", "balance"):
            assert key in q, (name, key)
        assert 0 <= q["remote_fraction_1hop"] <= 1
    # METIS cuts fewer edges than hashing on a graph with planted communities
    assert (manifest["quality"]["metis"]["edge_cut_fraction"]["unweighted"]
            < manifest["quality"]["random"]["edge_cut_fraction"]["unweighted"])


def test_book_covers_every_node_once_and_every_edge_lands_at_its_destination(shard_set, store_cfg):
    manifest, out = shard_set
    data = load_graph_data(store_cfg.paths.stage("graph"))
    shards = [load_shard(str(out / part["path"])) for part in manifest["parts"]]
    for node_type, count in data.graph.num_nodes.items():
        owned = np.concatenate([s.owned[node_type].numpy() for s in shards])
        assert sorted(owned.tolist()) == list(range(count)), node_type  # each node exactly once
        book = shards[0].partition_book[node_type].numpy()
        for s in shards:
            assert np.array_equal(s.partition_book[node_type].numpy(), book)
            assert np.all(book[s.owned[node_type].numpy()] == s.part)

    for edge_type, csr in data.graph.csr.items():
        expected = Counter(zip(csr.neighbor.tolist(), csr.edge_dst().tolist(), csr.edge_time.tolist(),
                               strict=True))
        got = Counter()
        for s in shards:
            part_csr = s.csr[edge_type]
            dst = s.owned[edge_type[2]][part_csr.edge_dst()]
            # an edge is stored by the owner of its destination, and only there
            assert np.all(s.partition_book[edge_type[2]].numpy()[dst.numpy()] == s.part)
            got.update(zip(part_csr.neighbor.tolist(), dst.tolist(), part_csr.edge_time.tolist(),
                           strict=True))
        assert got == expected, edge_type  # reloading all shards reproduces the store's edges


def test_rerun_replaces_the_shard_set(spark, store_cfg, shard_set):
    manifest, out = shard_set
    again = partition.run(spark, store_cfg, log=lambda *_: None)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("part-")) == \
        [p["path"] for p in again["parts"]]
    assert [p["edges"] for p in again["parts"]] == [p["edges"] for p in manifest["parts"]]
    assert not list(out.parent.glob(".partitions.staging-*"))


def test_shards_cut_by_the_random_book_on_request(spark, store_cfg, shard_set, tmp_path):
    """partition.shard_book=random (the bytes-per-event baseline) cuts the shards by the
    hash book; --place-new refuses such a set."""
    from clickgraph.config import replace

    cfg = replace(store_cfg, "partition", shard_book="random")
    out = tmp_path / "random"
    manifest = partition.run(spark, cfg, out_url=str(out), log=lambda *_: None)
    assert manifest["shard_book"] == "random"
    random_book = np.load(out / "book_random.npy")
    assert not np.array_equal(random_book, np.load(out / "book.npy"))
    shard = load_shard(str(out / manifest["parts"][0]["path"]))
    offsets = manifest["global_offsets"]
    for node_type, count in manifest["num_nodes"].items():
        start = offsets[node_type]
        assert np.array_equal(shard.partition_book[node_type].numpy(), random_book[start:start + count])
    with pytest.raises(ValueError, match="shard_book"):
        partition.run(spark, cfg, out_url=str(out), place_new_nodes=True, log=lambda *_: None)


def test_refuses_a_graph_store_without_manifest(spark, store_cfg, tmp_path):
    (tmp_path / "graph").mkdir()
    with pytest.raises(ManifestError, match="_MANIFEST.json"):
        partition.run(spark, store_cfg, graph_url=str(tmp_path / "graph"),
                      out_url=str(tmp_path / "parts"), log=lambda *_: None)
    assert not (tmp_path / "parts").exists()


def test_placement_of_new_nodes_keeps_the_book_and_the_balance(spark, store_cfg, shard_set):
    """After an incremental day, old nodes keep their part, new nodes are placed without
    METIS, balance stays within the configured tolerance, and shards hold the new edges."""
    manifest, out = shard_set
    before = {t: load_shard(str(out / "part-00000")).partition_book[t].numpy().copy()
              for t in manifest["num_nodes"]}
    logs_days = json.loads((Path(store_cfg.paths.stage("logs")) / "_MANIFEST.json").read_text())["days"]
    build_graph.run(spark, store_cfg, days=[logs_days[3]], log=lambda *_: None)
    placed = partition.run(spark, store_cfg, place_new_nodes=True, log=lambda *_: None)
    assert placed["method"] == "placement" and placed["placement"]["new_nodes"] > 0
    after = {t: load_shard(str(out / "part-00000")).partition_book[t].numpy() for t in placed["num_nodes"]}
    for node_type, old in before.items():
        assert np.array_equal(after[node_type][:len(old)], old), node_type
        assert len(after[node_type]) == placed["num_nodes"][node_type]
    tolerance = store_cfg.partition.placement_tolerance
    events_balance = placed["quality"]["metis"]["balance"]["training_events"]
    assert events_balance <= 1 + tolerance + 0.05, events_balance
    drift = placed["placement"]["drift"]
    assert drift["baseline_edge_cut"] == manifest["baseline_edge_cut"]
    assert isinstance(drift["repartition_recommended"], bool)
    data = load_graph_data(store_cfg.paths.stage("graph"))
    total = sum(p["edges"] for p in placed["parts"])
    assert total == sum(csr.num_edges for csr in data.graph.csr.values())


def test_above_the_edge_budget_spark_coarsens_first(spark, store_cfg, shard_set, tmp_path):
    """The path past one machine's METIS memory: Spark coarsens to the edge budget, METIS
    partitions the coarse graph, the book is projected back and refined."""
    import dataclasses

    cfg = dataclasses.replace(store_cfg, partition=dataclasses.replace(store_cfg.partition,
                                                                      edge_budget=1000))
    manifest = partition.run(spark, cfg, out_url=str(tmp_path / "coarse"), log=lambda *_: None)
    assert manifest["num_pairs"] > 1000 and manifest["method"] == "spark_coarsened"
    metis, random = manifest["quality"]["metis"], manifest["quality"]["random"]
    assert metis["algorithm"] == "spark_coarsened_metis"
    assert metis["edge_cut_fraction"]["unweighted"] < random["edge_cut_fraction"]["unweighted"]
    assert metis["balance"]["training_events"] <= 1 + cfg.partition.imbalance + 1e-9
    owned = sum(sum(p["owned"].values()) for p in manifest["parts"])
    assert owned == sum(manifest["num_nodes"].values())
