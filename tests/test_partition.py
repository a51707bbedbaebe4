"""The partition job: shards cover the graph exactly, the report compares with random."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from clickgraph.core.config import load_config
from clickgraph.core.manifest import ManifestError
from clickgraph.core.timeline import split_windows
from spark_jobs import build_graph, generate_logs, partition
from tests.conftest import tiny_overrides
from trainer.data import load_graph_data
from trainer.shard import load_shard

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def store_cfg(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("partition")
    cfg = load_config(None, tiny_overrides(root) + ["generate.num_users=400", "generate.num_days=4",
                                                    "train.val_days=1", "train.test_days=1"])
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
    windows = split_windows(manifest["graph"]["days"], store_cfg.train.val_days,
                            store_cfg.train.test_days)
    data = load_graph_data(store_cfg.paths.stage("graph"), fit_before=windows.val_start)
    # the shard set and a single-process run fit the vocabularies by one rule: on the
    # nodes known before the training window ends
    assert data.vocab == json.loads((out / "vocab.json").read_text())
    assert manifest["vocab"]["fit_before"] == windows.val_start
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
    # the first run fitted the vocabularies; the rerun continues that set and keeps them
    assert manifest["vocab"]["source"] == "fitted" and again["vocab"]["source"] == "previous"


def test_shards_cut_by_the_random_book_on_request(spark, store_cfg, shard_set, tmp_path):
    """partition.shard_book=random (the bytes-per-event baseline) cuts the shards by the
    hash book; --place-new refuses such a set."""
    from clickgraph.core.config import replace

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
    data = load_graph_data(store_cfg.paths.stage("graph"), vocab=json.loads((out / "vocab.json").read_text()))
    total = sum(p["edges"] for p in placed["parts"])
    assert total == sum(csr.num_edges for csr in data.graph.csr.values())


def _few_seeds(cfg, **partition_fields):
    """50 sampled seeds: their lookups (at most 50 x 10 x 5 in hop 2) are fewer than the pairs."""
    import dataclasses

    return dataclasses.replace(cfg, partition=dataclasses.replace(cfg.partition, quality_seeds=50,
                                                                  **partition_fields))


def _tiny_budget(cfg):
    return _few_seeds(cfg, edge_budget=1000)


def _refuse_to_collect(adjacency):
    raise AssertionError("the fine adjacency was collected to the driver above the edge budget")


@pytest.fixture(scope="module")
def in_memory_graph(spark, store_cfg, shard_set):
    """The store as the in-memory path sees it (the default budget): the reference.

    Loaded after the placement test has added day 4, like the tests that use it."""
    from clickgraph.core.graph_store import open_graph_store

    return partition.load_partition_graph(spark, store_cfg, open_graph_store(store_cfg.paths.stage("graph")))


def test_above_the_edge_budget_spark_coarsens_first(spark, store_cfg, shard_set, in_memory_graph, tmp_path,
                                                     monkeypatch):
    """The path past one machine's memory: Spark coarsens to the edge budget, METIS
    partitions the coarse graph, the book is projected back and refined in Spark, and
    the quality report is computed from Spark. The fine adjacency never reaches the
    driver, and the report equals the in-memory report of the same books."""
    from partitioning.base import PartitionResult

    cfg = _tiny_budget(store_cfg)
    monkeypatch.setattr(partition, "_collect_pairs", _refuse_to_collect)
    collected = []
    frame_class = type(spark.range(1))  # the concrete DataFrame class (pyspark.sql.classic in Spark 4)

    def counting(collect):
        def collect_and_count(frame):
            table = collect(frame)
            collected.append(len(table))
            return table
        return collect_and_count

    for method in ("toPandas", "toArrow"):
        if hasattr(frame_class, method):
            monkeypatch.setattr(frame_class, method, counting(getattr(frame_class, method)))
    out = tmp_path / "coarse"
    manifest = partition.run(spark, cfg, out_url=str(out), log=lambda *_: None)
    monkeypatch.undo()

    assert manifest["num_pairs"] > 1000 and manifest["method"] == "spark_coarsened"
    metis, random = manifest["quality"]["metis"], manifest["quality"]["random"]
    assert metis["algorithm"] == "spark_coarsened_metis"
    assert metis["edge_cut_fraction"]["unweighted"] < random["edge_cut_fraction"]["unweighted"]
    assert metis["balance"]["training_events"] <= 1 + cfg.partition.imbalance + 1e-9
    owned = sum(sum(p["owned"].values()) for p in manifest["parts"])
    assert owned == sum(manifest["num_nodes"].values())
    # what reached the driver: per-node tables (N rows, or N x parts for rebalancing) and
    # sampled lookups (at most seeds x fanout per hop), never a table per edge
    num_nodes = sum(manifest["num_nodes"].values())
    p = cfg.partition
    lookups = p.quality_seeds * p.quality_fanouts[0] * max(1, p.quality_fanouts[1])
    assert lookups < manifest["num_pairs"] and num_nodes * p.num_parts < manifest["num_pairs"]
    assert collected and max(collected) <= max(num_nodes * p.num_parts, lookups), (collected, num_nodes)

    # the same books measured in memory: same trees, so the same figures
    g = in_memory_graph
    assert g["num_pairs"] == manifest["num_pairs"]
    for name, file in (("metis", "book.npy"), ("random", "book_random.npy")):
        book = np.load(out / file)
        result = PartitionResult(assignment=book, num_parts=p.num_parts, algorithm=name, params={},
                                 wall_s=0.0, peak_rss_bytes=0, peak_rss_delta_bytes=0, memory_probe="")
        expected, got = partition.quality_of(_few_seeds(store_cfg), g, result), manifest["quality"][name]
        assert got["remote_fraction_1hop"] == pytest.approx(expected["remote_fraction_1hop"], abs=1e-12)
        assert got["remote_fraction_2hop"] == pytest.approx(expected["remote_fraction_2hop"], abs=1e-12)
        assert got["lookups"] == expected["lookups"] and got["num_seeds"] == expected["num_seeds"]
        for kind, cut in expected["edge_cut_fraction"].items():
            assert got["edge_cut_fraction"][kind] == pytest.approx(cut, rel=1e-9)
        assert got["balance"] == pytest.approx(expected["balance"], rel=1e-9)


def test_place_new_above_the_edge_budget_reads_only_the_new_nodes_pairs(spark, store_cfg, shard_set,
                                                                        in_memory_graph, monkeypatch):
    """--place-new past the budget: the pairs of the new nodes come through a Spark filter,
    and the extended book, its drift and its report equal the in-memory ones."""
    from clickgraph.core.graph_store import open_graph_store

    _, out = shard_set
    g = in_memory_graph
    full_book = np.load(out / "book.npy").astype(np.int64)
    previous_books = {t: full_book[g["offsets"][t]:g["offsets"][t] + n][: int(0.8 * n)]
                      for t, n in g["num_nodes"].items()}
    previous = {"baseline_edge_cut": 0.3}
    expected = partition.place_new(_few_seeds(store_cfg), g, previous, previous_books, log=lambda *_: None)

    cfg = _tiny_budget(store_cfg)
    monkeypatch.setattr(partition, "_collect_pairs", _refuse_to_collect)
    big = partition.load_partition_graph(spark, cfg, open_graph_store(store_cfg.paths.stage("graph")))
    try:
        assert big["graph"] is None
        placed = partition.place_new(cfg, big, previous, previous_books, log=lambda *_: None)
    finally:
        partition.release_partition_graph(big)
    assert placed["method"] == "placement" and placed["new_nodes"] == expected["new_nodes"] > 0
    assert np.array_equal(placed["book"], expected["book"])
    current = expected["drift"]["current_edge_cut"]
    assert placed["drift"]["current_edge_cut"] == pytest.approx(current, rel=1e-12)
    for name in ("metis", "random"):
        got, want = placed["quality"][name], expected["quality"][name]
        assert got["remote_fraction_1hop"] == want["remote_fraction_1hop"]


# ---------------------------------------------------------------- shard sets at remote URLs


def _memory_url(name: str) -> str:
    """A fresh folder of fsspec's in-process memory filesystem (a stand-in for s3a://)."""
    return f"memory://clickgraph-test-{uuid.uuid4().hex[:8]}/{name}"


def _local_set(root: Path, marker: str) -> Path:
    """A shard-set-shaped folder: data files, a part manifest and the set's manifest."""
    (root / "part-00000" / "owned").mkdir(parents=True)
    np.save(root / "part-00000" / "owned" / "user.npy", np.arange(3))
    (root / "part-00000" / "_MANIFEST.json").write_text(json.dumps({"part": 0}))
    (root / "book.npy").write_bytes(marker.encode())
    (root / "vocab.json").write_text("{}")
    (root / "_MANIFEST.json").write_text(json.dumps({"kind": "partitions", "marker": marker}))
    return root


def test_publish_uploads_manifests_last_and_replaces_the_previous_set(tmp_path, monkeypatch):
    from fsspec.implementations.memory import MemoryFileSystem

    from clickgraph.core import fs

    url = _memory_url("partitions")
    filesystem, final = fs.filesystem(url)
    filesystem.pipe_file(f"{final}/part-00009/stale.npy", b"old")  # a part the new set lacks
    filesystem.pipe_file(f"{final}/_MANIFEST.json", b"{}")
    copied = []
    cp_file = MemoryFileSystem.cp_file

    def recording_cp_file(self, path1, path2, **kwargs):
        copied.append(path2.removeprefix(final + "/"))
        return cp_file(self, path1, path2, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "cp_file", recording_cp_file)
    partition.publish_shard_set(str(_local_set(tmp_path / "set", "new")), url)
    assert copied[-1] == "_MANIFEST.json"
    assert copied.index("part-00000/_MANIFEST.json") > copied.index("part-00000/owned/user.npy")
    assert fs.read_json(fs.join(url, "_MANIFEST.json"))["marker"] == "new"
    assert not filesystem.exists(f"{final}/part-00009")  # the previous set is gone whole
    parent = final.rsplit("/", 1)[0]
    assert [p.rsplit("/", 1)[-1] for p in filesystem.ls(parent, detail=False)] == ["partitions"]


def test_a_crash_during_the_upload_leaves_the_previous_set_untouched(tmp_path, monkeypatch):
    from fsspec.implementations.memory import MemoryFileSystem

    from clickgraph.core import fs

    url = _memory_url("partitions")
    partition.publish_shard_set(str(_local_set(tmp_path / "old", "old")), url)
    calls = []
    put_file = MemoryFileSystem.put_file

    def failing_put_file(self, lpath, rpath, **kwargs):
        calls.append(rpath)
        if len(calls) == 3:
            raise OSError("network down")
        return put_file(self, lpath, rpath, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "put_file", failing_put_file)
    with pytest.raises(OSError, match="network down"):
        partition.publish_shard_set(str(_local_set(tmp_path / "new", "new")), url)
    assert fs.read_json(fs.join(url, "_MANIFEST.json"))["marker"] == "old"
    assert partition.read_npy(fs.join(url, "part-00000", "owned", "user.npy")).tolist() == [0, 1, 2]


def test_vocab_is_kept_only_for_a_continuation_of_the_previous_set():
    from clickgraph.core import fs

    url = _memory_url("partitions")
    vocab = {"user": {"country": ["DE", "FR"]}}
    fs.write_json(fs.join(url, "vocab.json"), vocab)
    previous = {"graph": {"config_hash": "a", "days": ["d1", "d2"]}}

    class Store:
        def __init__(self, config_hash, days):
            self.manifest, self.days = {"config_hash": config_hash}, days

    keep = partition.vocab_to_keep
    assert keep(None, url, Store("a", ["d1"]), False, log=lambda *_: None) is None
    assert keep(previous, url, Store("a", ["d1", "d2", "d3"]), False, log=lambda *_: None) == vocab
    assert keep(previous, url, Store("b", ["d1", "d2", "d3"]), False, log=lambda *_: None) is None
    assert keep(previous, url, Store("a", ["d2", "d3"]), False, log=lambda *_: None) is None
    assert keep(previous, url, Store("b", ["d9"]), True, log=lambda *_: None) == vocab  # --place-new


@pytest.fixture(scope="module")
def remote_runs(spark, store_cfg):
    """A full run into a memory:// URL, a value dropped from its vocab.json (as if the model
    had been trained before that value existed), then a --place-new run into the same URL."""
    from clickgraph.core import fs

    url = _memory_url("partitions")
    full = partition.run(spark, store_cfg, out_url=url, log=lambda *_: None)
    book = partition.read_npy(fs.join(url, "book.npy"))
    vocab = fs.read_json(fs.join(url, "vocab.json"))
    dropped = vocab["user"]["country"].pop(0)
    fs.write_json(fs.join(url, "vocab.json"), vocab)
    placed = partition.run(spark, store_cfg, out_url=url, place_new_nodes=True, log=lambda *_: None)
    return {"url": url, "full": full, "book": book, "vocab": vocab, "dropped": dropped,
            "placed": placed}


def test_shard_set_at_a_remote_url_is_uploaded_extended_and_loads(remote_runs, store_cfg, tmp_path):
    from clickgraph.core import fs
    from trainer.ray_launch import local_shard_folder

    url, placed = remote_runs["url"], remote_runs["placed"]
    assert remote_runs["full"]["method"] == "direct" and placed["method"] == "placement"
    book, old, full = partition.read_npy(fs.join(url, "book.npy")), remote_runs["book"], remote_runs["full"]
    for node_type, count in full["num_nodes"].items():  # the previous book, read from the URL, is kept
        was = old[full["global_offsets"][node_type]:][:count]
        assert np.array_equal(book[placed["global_offsets"][node_type]:][:count], was), node_type
    data = load_graph_data(store_cfg.paths.stage("graph"), fit_before=0)
    shards = [load_shard(local_shard_folder(url, p["path"], cache_root=str(tmp_path),
                                            version=placed["created_at"]))
              for p in placed["parts"]]
    for node_type, count in data.graph.num_nodes.items():
        owned = np.concatenate([s.owned[node_type].numpy() for s in shards])
        assert sorted(owned.tolist()) == list(range(count)), node_type
    assert sum(csr.num_edges for s in shards for csr in s.csr.values()) == \
        sum(csr.num_edges for csr in data.graph.csr.values())
    filesystem, final = fs.filesystem(url)
    assert not filesystem.glob(final.rsplit("/", 1)[0] + "/.partitions.staging-*")


def test_place_new_keeps_the_previous_vocabulary_and_encodes_new_values_as_unknown(
        remote_runs, store_cfg, tmp_path):
    from clickgraph.core import fs
    from clickgraph.core.graph_store import open_graph_store, read_table
    from trainer.ray_launch import local_shard_folder

    url, vocab, dropped, placed = (remote_runs[k] for k in ("url", "vocab", "dropped", "placed"))
    assert fs.read_json(fs.join(url, "vocab.json")) == vocab  # what --continue compares
    assert placed["vocab"]["source"] == "previous"
    assert placed["vocab"]["unseen"] == {"user": {"country": 1}}
    store = open_graph_store(store_cfg.paths.stage("graph"))
    country = read_table(store.node_url("user")).sort_by("id").column("country").to_pylist()
    column = list(vocab["user"]).index("country")
    index = {v: i + 1 for i, v in enumerate(vocab["user"]["country"])}
    seen_dropped = 0
    for part in placed["parts"]:
        shard = load_shard(local_shard_folder(url, part["path"], cache_root=str(tmp_path),
                                              version=placed["created_at"]))
        features = shard.features["user"]
        # embedding sizes are the kept vocabulary's, so a continued checkpoint still fits
        assert features.cardinalities == [len(values) + 1 for values in vocab["user"].values()]
        owned = shard.owned["user"].numpy()
        codes = features.categorical[:, column].numpy()
        expected = [index.get(country[u], 0) for u in owned]
        assert codes.tolist() == expected
        seen_dropped += sum(country[u] == dropped for u in owned)
    assert seen_dropped > 0  # the dropped value occurs and got code 0
