"""``clickgraph evaluate/export --workers N``: the distributed paths against the one-process
ones on the same store, checkpoint and (deterministic, ``most_recent``) sampling.

Two gloo ranks run in spawned processes (``tests.test_distributed.run_ranks``) over a
2-part shard set of the session's trained tiny store; the one-process path runs here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from clickgraph.core import fs
from clickgraph.core.config import load_config
from tests.conftest import TINY_TRAIN, tiny_overrides
from tests.test_distributed import run_ranks

pytestmark = [pytest.mark.spark, pytest.mark.distributed]

quiet = lambda *_: None


@pytest.fixture(scope="module")
def sharded(trained_run, spark, tmp_path_factory):
    """The trained store cut in 2 parts, with every output of this module elsewhere:
    ``cfg`` (``most_recent`` sampling) reading the trained run's store and checkpoint."""
    from spark_jobs import partition

    cfg, _ = trained_run
    out = tmp_path_factory.mktemp("dist_inference")
    overrides = tiny_overrides(cfg.paths.root) + TINY_TRAIN + [
        f"paths.partitions={out}/partitions", f"paths.eval={out}/eval",
        f"paths.embeddings={out}/embeddings", "partition.num_parts=2",
        "train.strategy=most_recent", "evaluate.max_test_events=400",
        # One seed per sampler call: seeds sharing a root time in one call share their
        # (node, time) rows, so a node's tree depends on which seeds it was batched with
        # (docs/evaluation.md), and the workers' batches are not the one process's.
        "train.eval_batch_size=1", "evaluate.embedding_batch_size=1",
        "evaluate.max_fit_events=600"]
    sharded_cfg = load_config(None, overrides)
    partition.run(spark, sharded_cfg, log=quiet)
    return sharded_cfg, out


def _evaluate(rank: int, plan):
    from trainer.dist_inference import evaluate_part

    return evaluate_part(plan, rank, 2)


def _export(rank: int, plan):
    from trainer.dist_inference import export_part

    return export_part(plan, rank, 2)


def _plan(cfg, **changes):
    from trainer.dist_inference import plan_inference

    return dataclasses.replace(plan_inference(cfg, 2), **changes)


def _spark_features(spark):
    """The app's :data:`~trainer.dist_inference.BaselineFeatures`: the Spark job."""
    from spark_jobs.baseline_features import features_of

    return lambda url, vocab, imp: features_of(spark, url, vocab, imp.user.numpy(),
                                               imp.content.numpy(), imp.time.numpy(),
                                               imp.position.numpy())


def test_distributed_evaluation_equals_the_one_process_one(sharded, spark):
    from trainer.dist_inference import tree_features
    from trainer.evaluate import MODELS, run_evaluation
    from trainer.local import roc_auc

    cfg, out = sharded
    single = run_evaluation(cfg, out_url=str(out / "eval1"), log=quiet)
    plan = _plan(cfg, out_url=str(out / "eval2"))
    plan = dataclasses.replace(plan, trees=tree_features(plan, _spark_features(spark), quiet))
    results = run_ranks(_evaluate, plan, timeout_s=400)
    dist_result = results[0]
    assert results[1] is None
    assert len(dist_result["peak_rss_bytes"]) == 2 and min(dist_result["peak_rss_bytes"]) > 0
    one = pq.read_table(out / "eval1" / "scores.parquet").to_pydict()
    two = pq.read_table(out / "eval2" / "scores.parquet").to_pydict()
    # the same impressions in the same order, each scored the same
    for column in ("time", "user", "content", "label", "past_interactions", "cold", "day"):
        assert list(two[column]) == list(one[column]), column
    np.testing.assert_allclose(two["gnn"], one["gnn"], rtol=0, atol=1e-5)
    assert dist_result["events"] == single["events"] > 0
    per_worker = dist_result["events_per_worker"]
    assert len(per_worker) == 2 and min(per_worker) > 0 and sum(per_worker) == single["events"]
    # the AUC of the merged arrays (not an average of per-worker AUCs)
    assert dist_result["auc"]["gnn"] == pytest.approx(
        roc_auc(np.array(two["label"]), np.array(two["gnn"])), abs=1e-12)
    assert dist_result["auc"]["gnn"] == pytest.approx(single["auc"]["gnn"], abs=1e-6)
    for key in ("auc_cold", "auc_warm"):
        assert dist_result[key]["gnn"] == pytest.approx(single[key]["gnn"], abs=1e-6)
    assert [d["events"] for d in dist_result["per_day"]] == [d["events"] for d in single["per_day"]]
    # the trees: the same features (Spark's as-of counts, the owners' day-start
    # embeddings) and the same fit sample give the same trees and scores
    assert "not_scored" not in dist_result
    assert dist_result["fit_events"] == single["fit_events"] == 600
    assert dist_result["baseline_features"] == single["baseline_features"]
    assert dist_result["trees"] == single["trees"]
    for model in ("baseline", "baseline_plus_embeddings"):
        np.testing.assert_allclose(two[model], one[model], rtol=0, atol=1e-6, err_msg=model)
    for key in ("auc", "auc_cold", "auc_warm"):
        for model in MODELS:
            assert dist_result[key][model] == pytest.approx(single[key][model], abs=1e-6), \
                (key, model)
    assert all(dist_result["auc"][model] is not None for model in MODELS)
    assert fs.read_json(str(out / "eval2" / "evaluation.json"))["auc"] == dist_result["auc"]


def _by_id(table) -> tuple[np.ndarray, list[str], np.ndarray]:
    from trainer.export import embedding_matrix

    table = table.sort_by("id")
    return (table.column("id").to_numpy(), table.column("raw_id").to_pylist(),
            embedding_matrix(table))


def _assert_same_figures(got, expected, where: str) -> None:
    """``got`` equals ``expected`` (nested dicts and lists), floats to 1e-5."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(expected), where
        for key in expected:
            _assert_same_figures(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected)):
            _assert_same_figures(a, b, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, abs=1e-5), where
    else:
        assert got == expected, where


def test_distributed_export_equals_the_one_process_one_and_names_every_file(sharded):
    from trainer.export import read_version, run_export

    cfg, out = sharded
    single = run_export(cfg, out_url=str(out / "emb1"), log=quiet)
    cutoff = single["cutoff"]
    folder = out / "emb2" / cutoff["date"]
    results = run_ranks(_export, _plan(cfg, out_url=str(folder), cutoff=cutoff["seconds"]),
                        timeout_s=240)
    manifest = results[0]
    assert results[1] is None
    assert read_version(str(folder)) == manifest  # written, and valid
    assert manifest["format_version"] == 2 and manifest["workers"] == 2
    assert manifest["counts"] == single["counts"]
    assert manifest["files"]["recommendations"] == single["files"]["recommendations"]
    assert len(manifest["peak_rss_bytes"]) == 2 and min(manifest["peak_rss_bytes"]) > 0
    listed = sorted(p for files in manifest["parts"].values() for p in files)
    on_disk = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.parquet")
                     if p.is_file() and p.name != manifest["files"]["recommendations"])
    assert listed == on_disk and len(listed) == 4  # 2 types x 2 workers
    # the recommendation controls: the same lists and figures as one process
    for key in ("recommendations", "recommendations_controlled"):
        assert single[key]["users"] > 0
        _assert_same_figures(manifest[key], single[key], key)
    lists1 = pq.read_table(out / "emb1" / cutoff["date"] / single["files"]["recommendations"])
    lists2 = pq.read_table(folder / manifest["files"]["recommendations"])
    assert lists2.column_names == lists1.column_names and lists2.num_rows == lists1.num_rows
    for column in lists1.column_names:
        if column == "score":
            np.testing.assert_allclose(lists2.column(column).to_numpy(),
                                       lists1.column(column).to_numpy(), rtol=0, atol=1e-5)
        else:
            assert lists2.column(column).to_pylist() == lists1.column(column).to_pylist(), column
    for node_type in ("user", "content"):
        ids1, raw1, emb1 = _by_id(pq.read_table(out / "emb1" / cutoff["date"] / f"{node_type}.parquet"))
        ids2, raw2, emb2 = _by_id(pq.read_table(folder / manifest["files"][node_type]))
        assert np.array_equal(ids1, ids2) and raw1 == raw2
        np.testing.assert_allclose(emb2, emb1, rtol=0, atol=1e-5)
        # each worker wrote exactly the nodes its part owns
        for rank, name in enumerate(manifest["parts"][node_type]):
            assert name.endswith(f"part-{rank:05d}.parquet")
    # a second run at the same cutoff replaces the folder and sees no drift
    again = run_ranks(_export, _plan(cfg, out_url=str(folder), cutoff=cutoff["seconds"]),
                      timeout_s=240)[0]
    for node_type in ("user", "content"):
        assert again["drift"][node_type]["mean_cosine"] == pytest.approx(1.0, abs=1e-6)
        assert again["drift"][node_type]["new_share"] == 0


def _validate(rank: int, plan):
    from clickgraph.core.graph_store import open_graph_store
    from trainer.dist_inference import DistValidator, open_worker

    worker = open_worker(plan, rank, 2)
    worker.model.train()
    validator = DistValidator(plan.cfg, worker.shard, open_graph_store(plan.graph_url), rank, 2)
    figures = validator(worker.model)
    assert worker.model.training  # left as it was
    return figures, len(validator.owned)


def test_distributed_validation_equals_the_one_process_one(sharded):
    from clickgraph.core.timeline import split_windows
    from trainer.data import window_events
    from trainer.inference import load_trained
    from trainer.local import evaluate_window, subsample

    cfg, _ = sharded
    t = cfg.train
    model = load_trained(cfg)
    windows = split_windows(model.data.days, t.val_days, t.test_days)
    events = subsample(window_events(model.data.impressions, windows, "val"), t.max_eval_events,
                       torch.Generator().manual_seed(t.seed + 1))
    single = evaluate_window(model.engine, events, cfg.evaluate.cold_start_max_interactions,
                             torch.Generator().manual_seed(t.seed))
    results = run_ranks(_validate, _plan(cfg), timeout_s=240)
    figures = results[0][0]
    assert results[1][0] is None
    assert min(owned for _, owned in results) > 0
    assert sum(owned for _, owned in results) == figures["events"] == single["events"] > 0
    assert figures["cold_events"] == single["cold_events"]
    for key in ("auc", "auc_cold", "auc_warm"):
        assert figures[key] == pytest.approx(single[key], abs=1e-6)


def test_the_shard_sets_vocabularies_must_be_the_checkpoints(sharded, tmp_path):
    import shutil

    from clickgraph.core.config import replace
    from clickgraph.core.shards import VOCAB_FILE
    from trainer import checkpoint as ckpt
    from trainer.dist_inference import plan_inference

    cfg, out = sharded
    copy = tmp_path / "partitions"
    shutil.copytree(out / "partitions", copy)
    vocab = fs.read_json(str(copy / VOCAB_FILE))
    node_type = sorted(vocab)[0]
    vocab[node_type] = {**vocab[node_type], "extra": ["x"]}
    fs.write_json(str(copy / VOCAB_FILE), vocab)
    with pytest.raises(ckpt.CheckpointError, match="vocabularies differ"):
        plan_inference(replace(cfg, "paths", partitions=str(copy)), 2)
    with pytest.raises(ValueError, match="one worker per part"):
        plan_inference(cfg, 3)


def test_chunks_pad_to_the_lockstep_count():
    from trainer.scoring import chunks

    column = torch.arange(5)
    got = chunks((column,), 2, steps=4)
    assert [c[0].tolist() for c in got] == [[0, 1], [2, 3], [4], []]
    with pytest.raises(ValueError, match="need 3 chunks"):
        chunks((column,), 2, steps=2)


@pytest.mark.ray
@pytest.mark.slow
def test_cli_workers_2_runs_on_ray_workers(sharded, capsys, tmp_path):
    import json

    import ray

    from clickgraph.app.cli import main

    cfg, out = sharded
    overrides = tiny_overrides(cfg.paths.root) + TINY_TRAIN + [
        f"paths.partitions={out}/partitions", "train.strategy=most_recent",
        "evaluate.max_test_events=400", "train.eval_batch_size=1",
        "evaluate.embedding_batch_size=1", "evaluate.max_fit_events=600", "ray.num_cpus=2",
        "tracking.enabled=false"]
    args = [a for o in overrides for a in ("--set", o)]
    try:
        assert main(["evaluate", *args, "--workers", "2", "--json",
                     "--out", str(tmp_path / "eval")]) == 0
        evaluation = json.loads(capsys.readouterr().out)
        assert main(["export", *args, "--workers", "2", "--json",
                     "--out", str(tmp_path / "emb")]) == 0
        manifest = json.loads(capsys.readouterr().out)
    finally:
        ray.shutdown()
    assert evaluation["workers"] == 2 and sum(evaluation["events_per_worker"]) == 400
    written = fs.read_json(str(tmp_path / "eval" / "evaluation.json"))
    assert evaluation["auc"]["gnn"] is not None and evaluation["auc"]["baseline"] is not None
    assert evaluation["auc"] == written["auc"]
    assert manifest["workers"] == 2 and manifest["format_version"] == 2
    assert (tmp_path / "emb" / manifest["cutoff"]["date"] / "_MANIFEST.json").exists()


def test_each_worker_reads_only_its_users_training_impressions(sharded, monkeypatch):
    from clickgraph.core.graph_store import GraphStore, open_graph_store
    from clickgraph.core.timeline import split_windows
    from trainer.data import window_events
    from trainer.ray_launch import owned_window_impressions
    from trainer.shard import load_shard

    cfg, out = sharded
    store = open_graph_store(cfg.paths.stage("graph"))
    windows = split_windows(store.days, cfg.train.val_days, cfg.train.test_days)
    shards = [load_shard(str(out / "partitions" / f"part-{p:05d}")) for p in range(2)]
    reads = []
    original = GraphStore.read_edges_arrow

    def spy(self, *args, **kwargs):
        table = original(self, *args, **kwargs)
        reads.append(table)
        return table

    monkeypatch.setattr(GraphStore, "read_edges_arrow", spy)
    parts = [owned_window_impressions(store, windows, "train", shard, cfg.graph.log_day_slack_s)
             for shard in shards]
    for shard, read, owned in zip(shards, reads, parts, strict=True):
        # the filter ran inside the read: no other part's user came back from it
        users = torch.tensor(read.column("src").to_numpy())
        assert bool((shard.owner("user", users) == shard.part).all()) and len(owned) > 0
    from trainer.data import load_graph_data

    data = load_graph_data(cfg.paths.stage("graph"), fit_before=windows.val_start)
    expected = window_events(data.impressions, windows, "train")
    assert sum(len(p) for p in parts) == expected.numel()
