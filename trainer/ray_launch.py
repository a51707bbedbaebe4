"""Distributed training under Ray Train: one worker per partition shard.

``clickgraph train --workers N`` (N > 1) and ``python -m trainer`` (the entry point for
``ray job submit``) call :func:`train_distributed`. The driver checks everything that can
be checked before a worker starts (shard set and graph store versions, world size =
number of parts, checkpoint storage, the checkpoint to continue from), attaches to Ray
(``ray.address`` or ``RAY_ADDRESS``) or starts a local one on loopback, and runs a
``TorchTrainer`` with one worker per part; :func:`trainer.dist_train.train_worker` runs
the lockstep DDP loop in their process group.

A worker (:func:`worker_loop`, rank ``r``):

1. copies its shard ``part-r`` to local disk when the shard set is at a remote URL
   (:func:`local_shard_folder`) and memory-maps it (:func:`trainer.shard.load_shard`);
2. reads the training window's impressions of the users it owns from the graph store
   (the filter is pushed into the parquet read: only its users' rows are ever held; every
   worker still scans the window's files), plus the creation time of all content
   (negatives);
3. with ``--continue``: keeps only impressions after the checkpoint's last trained time,
   plus ``train.replay_fraction`` per new event of older ones, drawn at random;
4. trains; every ``resources.checkpoint_every_steps`` steps and at each epoch's end all ranks
   gather their generator states and rank 0 hands a checkpoint to ``ray.train.report``
   (:mod:`trainer.checkpoint`); after a failure Ray Train restarts every worker and
   ``ray.train.get_checkpoint()`` gives the latest one, from which the loop resumes at
   the exact step with the same random streams;
5. at each epoch's end every rank scores the validation impressions of its own users
   (the same sample as ``--workers 1`` validates on, so the AUCs compare directly) with
   the distributed sampler, and rank 0 computes the AUCs of the gathered scores
   (:class:`trainer.dist_inference.DistValidator`; no rank loads the graph store); at the
   end rank 0 writes ``metrics.json``.

Devices (:func:`choose_placement`): with ``resources.device: auto`` the run asks Ray for one
GPU per worker and an NCCL group when the cluster has at least one GPU per worker, and
trains on the CPU over gloo otherwise; ``cuda`` insists on GPUs, ``cpu`` never asks.

Addresses. A local Ray started here (:func:`connect_ray`) is bound to loopback: Ray turns
a loopback ``_node_ip_address`` into the machine's routable address unless its
single-machine mode is on (:func:`_ray_on_loopback`), and with the node address on
loopback the GCS, raylet, workers, dashboard agent and metrics servers listen on 127.0.0.1
only. The process group is then formed by the workers themselves
(:func:`own_group_torch_config`), with rank 0's store bound to 127.0.0.1 and gloo's and
NCCL's sockets on the loopback interface (:func:`trainer.distributed.init_process_group`):
Ray Train's own set-up would bind the store to every interface. Attached to a cluster,
Ray Train sets the group up as usual.

Worker output: progress lines are written to the worker's stdout (:func:`_console`),
which Ray forwards to the driver once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from clickgraph.core import fs
from clickgraph.core.config import Config, TrainConfig
from clickgraph.core.errors import InputError
from clickgraph.core.graph_store import IMPRESSIONS
from clickgraph.core.progress import RateProgress
from clickgraph.core.shards import PARTITIONS_FORMAT_VERSION, PARTITIONS_KIND, VOCAB_FILE
from clickgraph.core.timeline import Windows, split_windows
from trainer import checkpoint as ckpt
from trainer.data import Impressions
from trainer.dist_train import ResumeState, StepContext, TrainHooks
from trainer.distributed import all_gather_tensor, find_free_port, is_loopback

FAIL_AT_ENV = "CLICKGRAPH_TEST_FAIL_AT"  # "rank:global_step:marker_file", tests only
GROUP_TIMEOUT_S = 1800  # collective timeout of a group the workers form (TorchConfig's default)


# ---------------------------------------------------------------------- shard access


def local_shard_folder(partitions_url: str, part_path: str, cache_root: str | None = None,
                       version: str = "") -> str:
    """A local folder holding shard ``part_path`` of the shard set at ``partitions_url``.

    Local shard sets are used in place. Remote ones (any fsspec URL) are copied once into
    ``<cache_root>/<hash of url and version>/<part_path>`` (a staging folder renamed into
    place, so a half-copied shard is never used), so the arrays can be memory-mapped.

    Args:
        partitions_url: The shard set folder.
        part_path: The part's folder name in the set's manifest, e.g. ``part-00001``.
        cache_root: Where copies go (default: the system temporary folder).
        version: Something that changes when the shard set is rewritten (its manifest's
            ``created_at``), so a stale copy is never reused.

    Returns:
        A local path to pass to :func:`trainer.shard.load_shard`.
    """
    if fs.is_local(partitions_url):
        return fs.join(partitions_url, part_path).removeprefix("file://")
    key = hashlib.sha256(f"{partitions_url}|{version}".encode()).hexdigest()[:16]
    root = os.path.join(cache_root or tempfile.gettempdir(), "clickgraph-shards", key)
    final = os.path.join(root, part_path)
    if os.path.exists(os.path.join(final, fs.MANIFEST_NAME)):
        return final
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{part_path}.", dir=root)
    filesystem, remote = fs.filesystem(fs.join(partitions_url, part_path))
    filesystem.get(remote.rstrip("/") + "/", staging.rstrip("/") + "/", recursive=True)
    if not os.path.exists(os.path.join(staging, fs.MANIFEST_NAME)):
        raise FileNotFoundError(f"{partitions_url}/{part_path}: copied shard has no "
                                f"{fs.MANIFEST_NAME}")
    try:
        os.rename(staging, final)
    except OSError:  # another worker on this machine finished the same copy first
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return final


def owned_window_impressions(store, windows: Windows, window: str, shard, slack_s: int
                             ) -> Impressions:
    """Impressions whose own time falls in ``window`` and whose user ``shard`` owns, in
    :func:`trainer.data.canonical_order`.

    Args:
        store: The graph store (:func:`clickgraph.core.graph_store.open_graph_store`).
        windows: The event-time split.
        window: ``"train"``, ``"val"`` or ``"test"``.
        shard: This worker's :class:`~trainer.shard.PartitionShard`.
        slack_s: How far an event may lie outside its day folder
            (``graph.log_day_slack_s``): the folders read are those that may hold the
            window's events; the rows kept are decided by their time alone.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    # Only this part's users' rows are read (the filter runs batch by batch in the read).
    users = pa.array(shard.owned["user"].numpy(), pa.int64())
    imp = store.read_edges_arrow(IMPRESSIONS, windows.folders(window, store.days, slack_s),
                                 columns=["src", "dst", "ts_ms", "position", "clicked"],
                                 row_filter=pc.field("src").isin(users))
    out = Impressions.from_arrow(imp)
    keep = windows.mask(window, out.time) & (shard.owner("user", out.user) == shard.part)
    return out.take(torch.nonzero(keep).view(-1))


def continue_window(impressions: Impressions, since_time: int, replay_fraction: float,
                    generator: torch.Generator) -> tuple[Impressions, int, int]:
    """Impressions after ``since_time`` plus a random replay sample of the older ones.

    Args:
        impressions: This rank's training impressions, sorted by time.
        since_time: Last event time the checkpoint trained on, seconds; events at
            exactly that second count as old.
        replay_fraction: Older events drawn (without replacement) per new event.
        generator: Draws the replay sample.

    Returns:
        ``(events, new_count, replay_count)``, events sorted by time.
    """
    new = torch.nonzero(impressions.time > since_time).view(-1)
    old = torch.nonzero(impressions.time <= since_time).view(-1)
    replay_count = min(int(round(replay_fraction * new.numel())), old.numel())
    replay = old[torch.randperm(old.numel(), generator=generator)[:replay_count]]
    keep = torch.cat([replay, new]).sort().values
    return impressions.take(keep), int(new.numel()), int(replay_count)


def content_created_times(store) -> torch.Tensor:
    """int64 ``[num_content]``: when each content is known to exist, seconds
    (:func:`clickgraph.core.vocab.known_from`; random negatives are drawn from content
    known before the event). Edges are read only when some content has no creation time."""
    from clickgraph.core.vocab import created_seconds, first_seen_in_store, known_from

    created = created_seconds(store.read_nodes_arrow("content"))
    if not bool((created > 0).all()):
        created = known_from(created, first_seen_in_store(store, ["content"])["content"])
    return torch.from_numpy(created)


# ---------------------------------------------------------------------- run plan


@dataclass(frozen=True)
class RunPlan:
    """What the driver decided and checked; every worker gets a copy."""

    cfg: Config
    run_id: str
    graph_url: str
    partitions_url: str
    partitions_version: str
    parts: list[str]
    out_url: str
    checkpoint_root: str
    graph_version: dict[str, Any]
    id_map_version: dict[str, dict[str, Any]]
    vocab: dict[str, Any]
    continue_from: str | None = None
    since_time: int | None = None
    fail_at: tuple[int, int, str] | None = None
    backend: str = "gloo"
    use_gpu: bool = False
    rendezvous: tuple[str, int] | None = None  # set: the workers form their group there
    hot_cache: dict[str, float] | None = None


# ---------------------------------------------------------------------- placement


@dataclass(frozen=True)
class Placement:
    """Where the workers train: ``use_gpu`` (one GPU each) and the group's backend."""

    use_gpu: bool
    backend: Literal["gloo", "nccl"]


def choose_placement(device: str, cluster_gpus: float, workers: int) -> Placement:
    """GPUs and NCCL when asked for or, with ``auto``, when there is one GPU per worker.

    Args:
        device: ``resources.device``: ``auto``, ``cuda`` or ``cpu``.
        cluster_gpus: GPUs in the Ray cluster (``ray.cluster_resources().get("GPU", 0)``).
        workers: Training workers (one GPU each when on GPUs).

    Raises:
        ValueError: ``cuda`` without one GPU per worker, or an unknown ``device``.
    """
    if device not in ("auto", "cuda", "cpu"):
        raise InputError(f"resources.device must be auto, cuda or cpu, got {device!r}")
    enough = cluster_gpus >= workers
    if device == "cuda" and not enough:
        raise InputError(f"resources.device is cuda but the Ray cluster has {cluster_gpus:g} GPUs "
                         f"for {workers} workers (one each); use resources.device=auto or cpu")
    if device == "cuda" or (device == "auto" and enough and workers > 0):
        return Placement(use_gpu=True, backend="nccl")
    return Placement(use_gpu=False, backend="gloo")


def absolute(url: str) -> str:
    """Local paths made absolute (Ray Train workers run in their own working folder)."""
    return os.path.abspath(url.removeprefix("file://")) if fs.is_local(url) else url


@dataclass(frozen=True)
class ShardSet:
    """A shard set checked against its graph store (:func:`check_shard_set`)."""

    partitions_url: str
    manifest: dict[str, Any]
    graph_url: str
    store: Any  # clickgraph.core.graph_store.GraphStore

    @property
    def parts(self) -> list[str]:
        """The parts' folder names, part 0 first."""
        return [p["path"] for p in sorted(self.manifest["parts"], key=lambda p: p["part"])]


def check_shard_set(cfg: Config, workers: int, graph_url: str | None = None) -> ShardSet:
    """The shard set at ``paths.partitions``: complete, one part per worker, and cut from
    the graph store version at ``graph_url`` (default ``paths.graph``).

    Raises:
        InputError: Another number of parts, or shards cut from another store version.
        clickgraph.core.manifest.ManifestError: No complete shard set.
    """
    from clickgraph.core.graph_store import open_graph_store
    from clickgraph.core.manifest import read_manifest

    partitions_url = absolute(cfg.paths.stage("partitions"))
    manifest = read_manifest(partitions_url, PARTITIONS_KIND, (PARTITIONS_FORMAT_VERSION,))
    if int(manifest["num_parts"]) != workers:
        raise InputError(f"resources.workers is {workers} but the shard set {partitions_url} has "
                         f"{manifest['num_parts']} parts: one worker per part (run clickgraph "
                         f"partition --num-parts {workers}, or --workers {manifest['num_parts']})")
    graph_url = absolute(graph_url or cfg.paths.stage("graph"))
    store = open_graph_store(graph_url)
    version = ckpt.graph_version(manifest)
    if (store.manifest.get("created_at"), store.manifest.get("config_hash")) != \
            (version["created_at"], version["config_hash"]):
        raise InputError(f"the shards in {partitions_url} were cut from graph version "
                         f"{version['created_at']} but {graph_url} is version "
                         f"{store.manifest.get('created_at')}: run clickgraph partition "
                         "(--place-new after an incremental build) first")
    return ShardSet(partitions_url, manifest, graph_url, store)


def plan_run(cfg: Config, graph_url: str | None = None, out_url: str | None = None,
             continue_run: bool = False) -> RunPlan:
    """Every check that can fail before training starts.

    Raises:
        ValueError: the world size differs from the number of parts, or the shards were
            cut from another graph store version than ``paths.graph`` holds.
        trainer.checkpoint.CheckpointError: unusable checkpoint storage, or no / an
            incompatible checkpoint to continue from.
        clickgraph.core.manifest.ManifestError: no complete shard set.
    """
    r = cfg.resources
    shards = check_shard_set(cfg, r.workers, graph_url)
    partitions_url, manifest, graph_url, store = (shards.partitions_url, shards.manifest,
                                                  shards.graph_url, shards.store)
    version = ckpt.graph_version(manifest)
    vocab = fs.read_json(fs.join(partitions_url, VOCAB_FILE))
    id_maps = ckpt.id_map_version(store.manifest)
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    train_root = absolute(cfg.paths.stage("train"))
    checkpoint_root = absolute(r.checkpoint_url or fs.join(train_root, "checkpoints"))
    ckpt.check_storage(checkpoint_root)
    continue_from, since_time = None, None
    if continue_run:
        continue_from = ckpt.find_latest(train_root)
        meta = ckpt.read_meta(continue_from)
        ckpt.check_continue(meta, graph=version, id_maps=id_maps, vocab=vocab,
                            where=continue_from)
        since_time = int(meta["last_event_time"])
    fail_at = None
    if os.environ.get(FAIL_AT_ENV):
        rank, step, marker = os.environ[FAIL_AT_ENV].split(":", 2)
        fail_at = (int(rank), int(step), marker)
    out = absolute(out_url or fs.join(train_root, run_id))
    return RunPlan(cfg=cfg, run_id=run_id, graph_url=graph_url, partitions_url=partitions_url,
                   partitions_version=str(manifest.get("created_at")),
                   parts=shards.parts,
                   out_url=out, checkpoint_root=checkpoint_root, graph_version=version,
                   id_map_version=id_maps, vocab=vocab, continue_from=continue_from,
                   since_time=since_time, fail_at=fail_at)


# ---------------------------------------------------------------------- worker side


class RayHooks(TrainHooks):
    """Progress lines, checkpoints, validation and failure injection inside the loop."""

    def __init__(self, plan: RunPlan, rank: int, world_size: int, last_event_time: int,
                 history: list[dict[str, Any]], validator, log):
        self.plan, self.rank, self.world_size = plan, rank, world_size
        self.last_event_time = last_event_time
        self.history = history
        self.validator = validator
        self.log = log
        self.hook_seconds = 0.0
        self.started = time.perf_counter()
        self.events_at_start = 0
        self.progress: RateProgress | None = None

    def after_step(self, ctx: StepContext) -> None:
        r = self.plan.cfg.resources
        fail = self.plan.fail_at
        if fail and ctx.rank == fail[0] and ctx.global_step == fail[1] \
                and not os.path.exists(fail[2]):
            with open(fail[2], "w") as handle:
                handle.write(f"rank {ctx.rank} exited at global step {ctx.global_step}\n")
            # Ray Train registers a reported checkpoint when its controller next polls the
            # workers; a crash right after a report can lose it. Give it a few polls.
            time.sleep(5)
            os._exit(1)
        if ctx.rank == 0:
            if self.progress is None:   # the run's steps: every epoch has this epoch's count
                epochs = self.plan.cfg.train.epochs
                self.progress = RateProgress(
                    epochs * ctx.steps_in_epoch, "steps", self.log, r.progress_every_s,
                    done_at_start=ctx.epoch * ctx.steps_in_epoch + ctx.step - 1)
            if self.progress.due():
                train_seconds = time.perf_counter() - self.started - self.hook_seconds
                self.progress.update(ctx.epoch * ctx.steps_in_epoch + ctx.step,
                                     prefix=progress_line(ctx, self.world_size, train_seconds) + " | ")
        if r.checkpoint_every_steps and ctx.global_step % r.checkpoint_every_steps == 0 \
                and ctx.step < ctx.steps_in_epoch:
            self._checkpoint(ctx, epoch_done=False, metrics={})

    def after_epoch(self, ctx: StepContext) -> None:
        start = time.perf_counter()
        metrics: dict[str, Any] = {"epoch": ctx.epoch + 1}
        val = self.validator(ctx.model)  # collective; the figures on rank 0
        if ctx.rank == 0:
            metrics.update({"val_auc": val["auc"], "val": val,
                            "loss": float(np.nanmean(ctx.result.losses[-ctx.steps_in_epoch:]))
                            if ctx.result.losses else float("nan")})
            self.history.append(metrics)
            self.log(f"  epoch {ctx.epoch + 1}: val ROC-AUC {val['auc']:.4f} "
                     f"(cold {val['auc_cold']}, warm {val['auc_warm']})")
        self.hook_seconds += time.perf_counter() - start
        self._checkpoint(ctx, epoch_done=True, metrics=metrics)

    def _checkpoint(self, ctx: StepContext, epoch_done: bool, metrics: dict[str, Any]) -> None:
        import ray.train

        start = time.perf_counter()
        states = all_gather_tensor(ctx.generator.get_state())
        # Position to resume from: an epoch's end resumes at the next epoch's start.
        epoch, step = (ctx.epoch + 1, 0) if epoch_done else (ctx.epoch, ctx.step)
        name = f"checkpoint_{ctx.global_step:07d}"
        if ctx.rank == 0:
            meta = {"format_version": ckpt.FORMAT_VERSION, "epoch": epoch, "step": step,
                    "global_step": ctx.global_step, "epoch_done": epoch_done,
                    "world_size": self.world_size, "last_event_time": self.last_event_time,
                    "graph_version": self.plan.graph_version,
                    "id_map_version": self.plan.id_map_version, "vocab": self.plan.vocab,
                    "history": self.history, "since_time": self.plan.since_time,
                    "run": self.plan.run_id,
                    "model_config": dataclasses.asdict(self.plan.cfg.train.model)}
            body = {"format_version": ckpt.FORMAT_VERSION,
                    "model": {k: v.detach().cpu() for k, v in ctx.model.state_dict().items()},
                    "optimizer": ctx.optimizer.state_dict(), "scheduler": None,
                    "generators": states, "epoch": epoch, "step": step,
                    "global_step": ctx.global_step}
            with tempfile.TemporaryDirectory() as folder:
                ckpt.write_checkpoint_dir(folder, body, meta)
                ray.train.report({**_scalar(metrics), "global_step": ctx.global_step},
                                 checkpoint=ray.train.Checkpoint.from_directory(folder),
                                 checkpoint_dir_name=name)
        else:
            ray.train.report({"global_step": ctx.global_step}, checkpoint=None,
                             checkpoint_dir_name=name)
        self.hook_seconds += time.perf_counter() - start


def _scalar(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None}


def progress_line(ctx: StepContext, world_size: int, train_seconds: float) -> str:
    """``epoch e step s/S loss x | N events/s (all ranks) | split % | B bytes/event``
    (:class:`RateProgress` adds the run's steps, their rate and the ETA)."""
    times = {k: v for k, v in ctx.times.items() if k != "total"}
    total = sum(times.values()) or 1e-9
    split = " ".join(f"{k} {100 * v / total:.0f}%" for k, v in times.items())
    events = ctx.result.events_trained * world_size  # lockstep: equal events per rank
    bytes_per_event = ctx.counter.total_sent / max(ctx.result.events_trained, 1)
    return (f"  epoch {ctx.epoch + 1} step {ctx.step}/{ctx.steps_in_epoch} loss {ctx.loss:.4f} "
            f"| {events / max(train_seconds, 1e-9):,.0f} events/s | {split} "
            f"| {bytes_per_event:,.0f} B/event sent (rank 0)")


def _console(line: str) -> None:
    """Writes one line to this worker's stdout, which Ray forwards to the driver.

    Not ``print``: Ray Train (v2) replaces ``print`` in its workers with one that writes
    the line to stdout AND logs it through the root logger, whose handler writes it to
    stdout again, so each line reached the driver twice.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def worker_loop(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the TorchTrainer: one rank, one shard.

    With ``plan.rendezvous`` it forms the process group itself (see the module
    docstring) and destroys it at the end.
    """
    plan: RunPlan = config["plan"]
    with worker_group(plan.backend, plan.rendezvous) as (rank, world_size, device):
        _worker(plan, rank, world_size, device)


@contextlib.contextmanager
def worker_group(backend: str, rendezvous: tuple[str, int] | None
                 ) -> Iterator[tuple[int, int, torch.device]]:
    """Inside a Ray Train worker: ``(rank, world_size, device)`` in a process group.

    With ``rendezvous`` the workers form the group themselves there (see the module
    docstring) and destroy it on the way out; without, Ray Train has set it up.
    """
    import ray.train
    import torch.distributed as dist

    from trainer.distributed import init_process_group

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = torch.device("cpu")
    if backend == "nccl":
        import ray.train.torch

        device = ray.train.torch.get_device()
    if rendezvous is None:
        yield rank, world_size, device
        return
    # local_rank = the device index: init_process_group makes that GPU the current one.
    # Ray Train's collective timeout: the other ranks wait in one while rank 0 checkpoints.
    init_process_group(rank, world_size, *rendezvous, backend=backend,
                       timeout_s=GROUP_TIMEOUT_S,
                       local_rank=device.index if device.type == "cuda" else None)
    try:
        yield rank, world_size, device
    finally:
        dist.destroy_process_group()


def rank_batch_size(t: TrainConfig, world_size: int) -> int:
    """Impressions each rank takes per step under ``train.batch_scope``."""
    return t.batch_size if t.batch_scope == "worker" else math.ceil(t.batch_size / world_size)


def _worker(plan: RunPlan, rank: int, world_size: int, device: torch.device) -> None:
    import ray.train
    import torch.distributed as dist

    from clickgraph.core.graph_store import open_graph_store
    from trainer.dist_inference import DistValidator
    from trainer.dist_train import train_worker
    from trainer.distributed import all_reduce_int
    from trainer.shard import load_shard

    t = plan.cfg.train
    log = _console if rank == 0 else None
    started = time.perf_counter()

    folder = local_shard_folder(plan.partitions_url, plan.parts[rank],
                                version=plan.partitions_version)
    shard = load_shard(folder, mmap=True)
    if shard.part != rank or shard.num_parts != world_size:
        raise ValueError(f"rank {rank} of {world_size} got shard {shard.part} of {shard.num_parts}")
    store = open_graph_store(plan.graph_url)
    windows = split_windows(store.days, t.val_days, t.test_days)
    impressions = owned_window_impressions(store, windows, "train", shard,
                                           plan.cfg.graph.log_day_slack_s)
    new_events, replay_events = len(impressions), 0
    if plan.since_time is not None:
        impressions, new_events, replay_events = continue_window(
            impressions, plan.since_time, t.replay_fraction,
            torch.Generator().manual_seed(t.seed + 17 * (rank + 1)))
        if all_reduce_int(new_events, "sum") == 0:
            raise InputError(f"--continue: no training impression after the checkpoint's last "
                             f"trained time {plan.since_time}; nothing new to train on")
    content_created = content_created_times(store)
    last_event_time = all_reduce_int(int(impressions.time.max()) if len(impressions) else 0,
                                     "max")
    load_seconds = time.perf_counter() - started

    resume, history, resumed_from = None, [], 0
    restart = ray.train.get_checkpoint()
    if restart is not None:
        with restart.as_directory() as directory:
            meta = ckpt.read_meta(directory)
            ckpt.check_resume(meta, graph=plan.graph_version, world_size=world_size,
                              where=directory)
            state = ckpt.read_state(directory)
        resume = ResumeState(model=state["model"], optimizer=state["optimizer"],
                             epoch=state["epoch"], step=state["step"],
                             global_step=state["global_step"],
                             generator_state=state["generators"][rank])
        history, resumed_from = list(meta.get("history", [])), state["global_step"]
    elif plan.continue_from is not None:
        state = ckpt.read_state(plan.continue_from)
        resume = ResumeState(model=state["model"], optimizer=state["optimizer"])
    if log:
        log(f"train: {world_size} workers; rank 0 owns {len(impressions):,} training impressions"
            + (f" ({new_events:,} new since {plan.since_time}, {replay_events:,} replayed)"
               if plan.since_time is not None else "")
            + (f"; resuming at global step {resumed_from}" if restart is not None else "")
            + f" (loaded in {load_seconds:.1f} s)")

    hooks = RayHooks(plan, rank, world_size, last_event_time, history,
                     DistValidator(plan.cfg, shard, store, rank, world_size),
                     log or (lambda _: None))
    # With train.batch_scope=global, train.batch_size is the GLOBAL batch, as in
    # --workers 1: each rank takes its share, so a step sees as many impressions, and an
    # epoch has as many steps, as there. With "worker" each rank takes batch_size.
    # A continuation passes train.continue_epochs times over the new window (one new day
    # needs fewer passes than a full history; BENCHMARKS.md, continue vs retrain).
    epochs = (t.continue_epochs or t.epochs) if plan.since_time is not None else t.epochs
    rank_cfg = dataclasses.replace(t, batch_size=rank_batch_size(t, world_size), epochs=epochs)
    result = train_worker(rank, world_size, shard, rank_cfg, impressions, content_created,
                          log=None, hooks=hooks, resume=resume, device=device,
                          hot_cache=plan.hot_cache, threads=plan.cfg.resources.threads_per_worker,
                          prefetch_depth=plan.cfg.resources.prefetch_depth,
                          sampler_device=plan.cfg.resources.sampler_device,
                          sampler_memory_fraction=plan.cfg.resources.sampler_gpu_memory_fraction)
    train_seconds = result.time_split["total"] - hooks.hook_seconds
    events_all = all_reduce_int(result.events_trained, "sum")
    splits = [None] * world_size
    dist.all_gather_object(splits, result.time_split)
    counts = [None] * world_size
    dist.all_gather_object(counts, {"own_events": result.own_events, "new": new_events,
                                    "replay": replay_events})
    if rank != 0:
        return
    metrics = {
        "run": plan.run_id, "workers": world_size, "device": result.device,
        "backend": result.backend, "hot_cache_nodes": result.hot_cache_nodes,
        "sampler_device": result.sampler_device,
        "sampler_bytes_per_edge": result.sampler_footprint.get("bytes_per_edge"),
        "val_auc": history[-1]["val_auc"] if history else None,
        "val_auc_per_epoch": [h["val_auc"] for h in history],
        "val_auc_cold": history[-1]["val"]["auc_cold"] if history else None,
        "val_auc_warm": history[-1]["val"]["auc_warm"] if history else None,
        "events_per_s": events_all / max(train_seconds, 1e-9),
        "bytes_exchanged_per_event": result.bytes_per_event_global,
        "time_split": result.time_split, "time_split_per_rank": splits,
        "validation_seconds_rank0": round(hooks.hook_seconds, 3),
        "train_seconds": train_seconds, "load_seconds": load_seconds,
        "global_steps": resumed_from + len(result.losses),
        "resumed_from_global_step": resumed_from,
        "steps_per_epoch": result.steps_per_epoch, "events_trained": events_all,
        "per_rank_events": counts, "bytes": result.bytes, "epochs": history,
        "loss_per_step": [float(x) for x in result.losses],  # rank 0's, this run's steps
        "last_event_time": last_event_time, "since_time": plan.since_time,
        "continue_from": plan.continue_from, "graph": plan.graph_version,
        "id_map_version": plan.id_map_version,
        "checkpoints": fs.join(plan.checkpoint_root, plan.run_id),
    }
    fs.filesystem(plan.out_url)[0].makedirs(fs.filesystem(plan.out_url)[1], exist_ok=True)
    fs.write_text(fs.join(plan.out_url, "_config.yaml"), plan.cfg.to_yaml())
    fs.write_json(fs.join(plan.out_url, "metrics.json"), metrics)


# ---------------------------------------------------------------------- driver side


_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _ray_on_loopback() -> Iterator[None]:
    """Lets ``ray.init(_node_ip_address="127.0.0.1")`` keep the loopback address.

    Ray replaces a loopback node address with the machine's routable one
    (``ray._private.services.resolve_ip_for_localhost``) unless its single-machine mode is
    on, as it is by default on macOS and Windows (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``):
    then the node address stays 127.0.0.1, and the GCS, raylet, worker, dashboard agent
    and metrics servers listen on loopback only instead of every interface. The flag is
    read when ``ray`` is imported, so the driver's copy is switched too, and both are
    restored afterwards (attaching to a real cluster later in this process needs it on).
    Processes started inside the block inherit the environment variable.
    """
    from ray._private import ray_constants

    saved_env = os.environ.get(_SINGLE_MACHINE_ENV)
    saved_flag = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[_SINGLE_MACHINE_ENV] = "0"
    if saved_flag is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop(_SINGLE_MACHINE_ENV, None)
        else:
            os.environ[_SINGLE_MACHINE_ENV] = saved_env
        if saved_flag is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved_flag


def connect_ray(cfg: Config, log=print) -> bool:
    """Attach to ``ray.address`` / ``RAY_ADDRESS``, else start Ray on loopback only.

    Returns:
        Whether this process's Ray node is on a loopback address (then every worker runs
        on this machine, and the process group is formed on loopback too).
    """
    import ray

    if not ray.is_initialized():
        address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
        if address:
            log(f"train: attaching to Ray at {address}")
            ray.init(address=address, log_to_driver=True)
        else:
            log("train: starting a local Ray (loopback only, no dashboard)")
            # address="local": always a new private instance, never a cluster that
            # `ray start` left behind on this machine (ray.init() would otherwise attach
            # to /tmp/ray's last one)
            with _ray_on_loopback():
                ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False,
                         dashboard_host=cfg.ray.dashboard_host, _node_ip_address="127.0.0.1",
                         log_to_driver=True)
    return is_loopback(ray.util.get_node_ip_address())


def own_group_torch_config(backend: str):
    """A ``TorchConfig`` whose workers get no process group from Ray Train (they form it
    themselves, :func:`worker_loop`); the CUDA device context stays Ray Train's."""
    from ray.train.backend import Backend
    from ray.train.torch import TorchConfig

    class _NoGroupBackend(Backend):
        # As Ray's torch backend: workers of one machine see all its GPUs of this run.
        share_cuda_visible_devices = True

    class OwnGroupTorchConfig(TorchConfig):
        @property
        def backend_cls(self):  # noqa: ANN202 - Ray's own signature
            return _NoGroupBackend

    return OwnGroupTorchConfig(backend=backend)


def train_distributed(cfg: Config, graph_url: str | None = None, out_url: str | None = None,
                      continue_run: bool = False, log=print,
                      hot_cache: dict[str, float] | None = None) -> dict[str, Any]:
    """Train over the shard set with Ray Train; returns the metrics of ``metrics.json``.

    ``hot_cache``: node type -> fraction of its nodes whose static features every worker
    replicates (:func:`trainer.dist_sampler.build_hot_cache`); ``None``: the config's
    ``resources.hot_cache`` (``{}`` by default: no cache).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    plan = plan_run(cfg, graph_url, out_url, continue_run)
    r = cfg.resources
    log(f"train: {r.workers} workers over {plan.partitions_url}; checkpoints in "
        f"{plan.checkpoint_root}/{plan.run_id}; metrics in {plan.out_url}")
    on_loopback = connect_ray(cfg, log)
    placement = choose_placement(r.device, float(ray.cluster_resources().get("GPU", 0)),
                                 r.workers)
    if hot_cache is None:
        hot_cache = dict(r.hot_cache)
    plan = dataclasses.replace(
        plan, backend=placement.backend, use_gpu=placement.use_gpu, hot_cache=hot_cache,
        rendezvous=("127.0.0.1", find_free_port("127.0.0.1")) if on_loopback else None)
    log(f"train: {placement.backend} on {'GPUs' if placement.use_gpu else 'CPUs'}"
        + (f"; hot-node cache {hot_cache}" if hot_cache else ""))
    resources = {"CPU": r.threads_per_worker, **({"GPU": 1} if placement.use_gpu else {})}
    trainer = TorchTrainer(
        worker_loop, train_loop_config={"plan": plan},
        torch_config=(own_group_torch_config(placement.backend) if on_loopback
                      else TorchConfig(backend=placement.backend)),
        scaling_config=ScalingConfig(num_workers=r.workers, use_gpu=placement.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=plan.run_id, storage_path=plan.checkpoint_root,
                             failure_config=FailureConfig(max_failures=r.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=3)))
    result = trainer.fit()
    metrics = fs.read_json(fs.join(plan.out_url, "metrics.json"))
    if result.checkpoint is not None:
        latest = fs.join(plan.checkpoint_root, plan.run_id,
                         os.path.basename(result.checkpoint.path.rstrip("/")))
        ckpt.write_latest(cfg.paths.stage("train"), latest, ckpt.read_meta(latest))
        metrics["checkpoint"] = latest
        fs.write_json(fs.join(plan.out_url, "metrics.json"), metrics)
    metrics["out"] = plan.out_url  # the run folder, for the caller (not in metrics.json)
    val = metrics["val_auc"]
    log(f"train: validation ROC-AUC {val if val is None else round(val, 4)}; "
        f"{metrics['events_per_s']:,.0f} training events/s; "
        f"{metrics['bytes_exchanged_per_event']:,.0f} bytes exchanged per event -> {plan.out_url}")
    return metrics
