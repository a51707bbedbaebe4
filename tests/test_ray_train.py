"""Distributed training under Ray Train: checkpoints, failure recovery, continue, job submit.

Fast tests check the checkpoint rules and the worker-side data helpers on hand-built
inputs. The ``ray`` tests build one tiny dataset with Spark (5 days, 300 users; the 5th
day is added later as an incremental day) and run the real launcher on it.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clickgraph.core.config import load_config
from tests.conftest import tiny_overrides
from trainer import checkpoint as ckpt
from trainer.data import Impressions

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- checkpoints


def _meta(**changes):
    meta = {"format_version": 1, "world_size": 2, "last_event_time": 100,
            "graph_version": {"created_at": "a", "config_hash": "h", "days": ["d1", "d2"]},
            "id_map_version": {"user": {"path": "id_maps/user/run=1", "count": 10}},
            "vocab": {"user": {"country": ["de", "fr"]}}}
    meta.update(changes)
    return meta


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {"format_version": 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": None, "generators": [torch.Generator().manual_seed(3).get_state()],
             "epoch": 1, "step": 2, "global_step": 6}
    ckpt.write_checkpoint_dir(str(tmp_path / "c"), state, _meta())
    back = ckpt.read_state(str(tmp_path / "c"))
    assert torch.equal(back["model"]["weight"], model.state_dict()["weight"])
    assert back["optimizer"]["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert torch.equal(back["generators"][0], state["generators"][0])
    assert ckpt.read_meta(str(tmp_path / "c"))["world_size"] == 2
    # Anything that needs pickled code is refused by the weights-only loader.
    torch.save({"format_version": 1, "evil": ckpt.CheckpointError("x")},
               tmp_path / "c" / ckpt.CHECKPOINT_FILE)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global"):
        ckpt.read_state(str(tmp_path / "c"))


def test_resume_refuses_another_graph_version_or_world_size():
    graph = _meta()["graph_version"]
    ckpt.check_resume(_meta(), graph=graph, world_size=2, where="c")
    with pytest.raises(ckpt.CheckpointError, match="graph version"):
        ckpt.check_resume(_meta(), graph={**graph, "created_at": "b"}, world_size=2, where="c")
    with pytest.raises(ckpt.CheckpointError, match="2 workers; this run has 3"):
        ckpt.check_resume(_meta(), graph=graph, world_size=3, where="c")


def test_continue_needs_an_extended_graph_grown_id_maps_and_the_same_vocab():
    newer = {"created_at": "b", "config_hash": "h", "days": ["d1", "d2", "d3"]}
    grown = {"user": {"path": "id_maps/user/run=2", "count": 12}}
    vocab = _meta()["vocab"]
    ckpt.check_continue(_meta(), graph=newer, id_maps=grown, vocab=vocab, where="c")
    with pytest.raises(ckpt.CheckpointError, match="do not extend"):
        ckpt.check_continue(_meta(), graph={**newer, "days": ["d2", "d3"]}, id_maps=grown,
                            vocab=vocab, where="c")
    with pytest.raises(ckpt.CheckpointError, match="config_hash"):
        ckpt.check_continue(_meta(), graph={**newer, "config_hash": "z"}, id_maps=grown,
                            vocab=vocab, where="c")
    with pytest.raises(ckpt.CheckpointError, match="shrank"):
        ckpt.check_continue(_meta(), graph=newer, id_maps={"user": {"path": "p", "count": 9}},
                            vocab=vocab, where="c")
    with pytest.raises(ckpt.CheckpointError, match="refitted"):
        ckpt.check_continue(_meta(), graph=newer, id_maps=grown,
                            vocab={"user": {"country": ["de", "es", "fr"]}}, where="c")


def test_unwritable_checkpoint_storage_is_a_clear_error(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(ckpt.CheckpointError, match="not writable"):
        ckpt.check_storage(str(tmp_path / "a_file" / "checkpoints"))
    ckpt.check_storage(str(tmp_path / "ok"))  # a fresh local folder is fine


# --------------------------------------------------------------------------- worker data


def test_remote_shard_is_copied_to_local_disk_and_maps_the_same(tmp_path):
    import fsspec

    from tests.test_distributed import random_case
    from trainer.ray_launch import local_shard_folder
    from trainer.shard import load_shard, save_shard, split_graph

    case = random_case(2)
    shard = split_graph(case.graph, case.features, case.book, num_parts=2)[1]
    save_shard(shard, str(tmp_path / "src" / "part-00001"))
    memory = fsspec.filesystem("memory")
    memory.put(str(tmp_path / "src") + "/", "/shardset/", recursive=True)
    folder = local_shard_folder("memory://shardset", "part-00001", str(tmp_path / "cache"), "v1")
    assert folder.startswith(str(tmp_path / "cache"))
    copy = load_shard(folder, mmap=True)
    for edge_type, csr in shard.csr.items():
        assert torch.equal(copy.csr[edge_type].neighbor, csr.neighbor)
        assert torch.equal(copy.csr[edge_type].edge_time, csr.edge_time)
    assert torch.equal(copy.owned["user"], shard.owned["user"])
    # A local shard set is used in place.
    assert local_shard_folder(str(tmp_path / "src"), "part-00001") == \
        str(tmp_path / "src" / "part-00001")


def test_continue_window_keeps_new_events_and_a_replay_sample_of_old_ones():
    from trainer.ray_launch import continue_window

    times = torch.arange(100, 120)  # 20 events, 100..119 s
    impressions = Impressions(user=torch.arange(20), content=torch.zeros(20, dtype=torch.int64),
                              time=times, position=torch.zeros(20, dtype=torch.int64),
                              clicked=torch.zeros(20))
    kept, new, replay = continue_window(impressions, since_time=109, replay_fraction=0.5,
                                        generator=torch.Generator().manual_seed(0))
    assert new == 10 and replay == 5 and len(kept) == 15
    assert int((kept.time > 109).sum()) == 10  # every new event, at 110..119
    assert int((kept.time <= 109).sum()) == 5  # at exactly 109 counts as already trained
    assert bool((kept.time[1:] >= kept.time[:-1]).all())


# --------------------------------------------------------------------------- Ray runs

TRAIN_OVERRIDES = [
    "train.val_days=1", "train.test_days=1", "train.epochs=2", "train.batch_size=64",
    "train.max_train_events=512", "train.max_eval_events=400", "train.eval_batch_size=512",
    "train.fanouts=[3, 2]", "train.relation_fanouts={}", "train.model.hidden_dim=16",
    "train.model.time_dim=8", "resources.checkpoint_every_steps=2", "resources.progress_every_s=1",
    "resources.max_failures=1", "resources.workers=2", "ray.num_cpus=2"]


@pytest.fixture(scope="module")
def dataset(spark, tmp_path_factory):
    """Tiny store of 4 days (the 5th generated, built later) partitioned in 2."""
    from spark_jobs import build_graph, generate_logs, partition

    root = tmp_path_factory.mktemp("raytrain")
    cfg = load_config(None, tiny_overrides(root) + ["generate.num_days=5"] + TRAIN_OVERRIDES)
    logs = generate_logs.run(spark, cfg, log=lambda *_: None)
    build_graph.run(spark, cfg, days=logs["days"][:4], log=lambda *_: None)
    partition.run(spark, cfg, log=lambda *_: None)
    return cfg, logs["days"]


def _expected_steps(metrics, cfg) -> int:
    t = cfg.train
    cap = t.max_train_events // cfg.resources.workers
    rank_batch = math.ceil(t.batch_size / cfg.resources.workers)  # batch_size is the global batch
    per_rank = [math.ceil(min(r["own_events"], cap) / rank_batch)
                for r in metrics["per_rank_events"]]
    return t.epochs * max(per_rank)


def _run(cfg, **kwargs):
    import ray

    from trainer.ray_launch import train_distributed

    try:
        return train_distributed(cfg, log=lambda *_: None, **kwargs)
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def recovered_run(dataset, tmp_path_factory):
    """A run whose rank 1 exits once at global step 3 (mid-epoch 1)."""
    cfg, _ = dataset
    marker = tmp_path_factory.mktemp("fail") / "rank1-died"
    os.environ["CLICKGRAPH_TEST_FAIL_AT"] = f"1:3:{marker}"
    try:
        metrics = _run(cfg)
    finally:
        del os.environ["CLICKGRAPH_TEST_FAIL_AT"]
    return metrics, marker


@pytest.mark.ray
@pytest.mark.slow
def test_world_size_other_than_the_number_of_parts_fails_before_training(dataset):
    from clickgraph.core.config import replace
    from trainer.ray_launch import plan_run

    cfg, _ = dataset
    with pytest.raises(ValueError, match="one worker per part"):
        plan_run(replace(cfg, "resources", workers=3))
    with pytest.raises(ckpt.CheckpointError, match="not writable"):
        (Path(cfg.paths.root) / "blocker").write_text("x")
        plan_run(replace(cfg, "resources", checkpoint_url=f"{cfg.paths.root}/blocker/ckpt"))


@pytest.mark.ray
@pytest.mark.slow
def test_killed_worker_resumes_from_the_latest_checkpoint_with_the_expected_steps(
        recovered_run, dataset):
    metrics, marker = recovered_run
    cfg, _ = dataset
    assert marker.exists()  # rank 1 really died once
    assert metrics["resumed_from_global_step"] == 2  # the checkpoint before step 3
    assert metrics["global_steps"] == _expected_steps(metrics, cfg)
    assert len(metrics["val_auc_per_epoch"]) == cfg.train.epochs
    assert 0.0 <= metrics["val_auc"] <= 1.0
    for key in ("events_per_s", "bytes_exchanged_per_event"):
        assert metrics[key] > 0
    assert set(metrics["time_split"]) >= {"sampling", "feature_exchange", "compute", "allreduce"}
    meta = ckpt.read_meta(metrics["checkpoint"])
    assert meta["global_step"] == metrics["global_steps"] and meta["epoch"] == cfg.train.epochs
    state = ckpt.read_state(metrics["checkpoint"])
    assert len(state["generators"]) == 2


@pytest.mark.ray
@pytest.mark.slow
def test_continue_after_an_incremental_day_trains_only_the_new_window(
        recovered_run, dataset, spark):
    from clickgraph.core.graph_store import open_graph_store
    from spark_jobs import build_graph, partition
    from trainer.shard import load_shard

    first, _ = recovered_run
    cfg, days = dataset
    build_graph.run(spark, cfg, days=[days[4]], log=lambda *_: None)
    manifest = partition.run(spark, cfg, place_new_nodes=True, log=lambda *_: None)
    metrics = _run(cfg, continue_run=True)
    assert metrics["since_time"] == first["last_event_time"]
    # Independently: impressions of the new training window after the last trained time.
    store = open_graph_store(cfg.paths.stage("graph"))
    new_days = sorted(store.days)[: len(store.days) - 2]
    imp = store.read_edges_arrow("user__impressed__content", new_days, columns=["src", "ts_ms"])
    times = torch.tensor(imp.column("ts_ms").to_numpy()) // 1000
    users = torch.tensor(imp.column("src").to_numpy())
    parts = Path(cfg.paths.stage("partitions"))
    book = load_shard(str(parts / manifest["parts"][0]["path"])).partition_book["user"]
    for rank, counts in enumerate(metrics["per_rank_events"]):
        owned_new = int(((times > first["last_event_time"]) & (book[users] == rank)).sum())
        assert counts["new"] == owned_new > 0
        assert counts["replay"] == round(cfg.train.replay_fraction * owned_new)
        assert counts["own_events"] == counts["new"] + counts["replay"]
    assert metrics["last_event_time"] > first["last_event_time"]
    assert metrics["continue_from"] == first["checkpoint"]
    # one pass over the new window (train.continue_epochs), not train.epochs
    assert len(metrics["val_auc_per_epoch"]) == cfg.train.continue_epochs == 1 < cfg.train.epochs


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_against_a_started_head(dataset, tmp_path):
    from trainer.distributed import find_free_port

    cfg, _ = dataset
    config = load_config(None, tiny_overrides(cfg.paths.root) + TRAIN_OVERRIDES +
                         [f"paths.train={tmp_path}/train", "train.epochs=1",
                          "resources.checkpoint_every_steps=0"])
    config_file = tmp_path / "job.yaml"
    config_file.write_text(config.to_yaml())
    gcs_port, dashboard_port = find_free_port(), find_free_port()
    # Ray 2.60 job servers require token authentication: one fresh token for head and client
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(gcs_port), "--num-cpus", "2", "--include-dashboard", "true",
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dashboard_port}"
        deadline = time.time() + 90
        while True:  # the job server answers once the dashboard is up
            probe = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address],
                                   env=env, capture_output=True, text=True)
            if probe.returncode == 0:
                break
            assert time.time() < deadline, probe.stderr[-2000:]
            time.sleep(2)
        job = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
             "--", "python", "-m", "trainer", "--config", str(config_file)],
            env=env, capture_output=True, text=True, timeout=300)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        runs = [p for p in (tmp_path / "train").iterdir() if (p / "metrics.json").exists()]
        assert len(runs) == 1
        metrics = json.loads((runs[0] / "metrics.json").read_text())
        assert metrics["workers"] == 2 and metrics["val_auc"] is not None
        assert metrics["global_steps"] == _expected_steps(metrics, config)
        assert (tmp_path / "train" / ckpt.LATEST_FILE).exists()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
