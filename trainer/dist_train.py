"""Lockstep data-parallel training over graph partitions: DDP plus distributed sampling.

Every rank ``r`` serves part ``r`` of the graph (:class:`~trainer.shard.PartitionShard`)
to every rank's sampler and trains on the impressions whose USER it owns, so a batch's
user seeds are local at hop 0 while its content seeds and deeper hops cross partitions
(:class:`~trainer.dist_sampler.DistTemporalSampler`). The model is wrapped in
:class:`torch.nn.parallel.DistributedDataParallel`; parameters stay identical on every
rank.

Devices. Under gloo everything runs on the CPU. Under NCCL each rank trains on its GPU
(:func:`~trainer.distributed.training_device`): the model and each step's batch (the
sampled subgraph, its fetched features, activity counts, positions, times, labels) live
there. Where the shard's CSR and features live, and so where the sampler draws and
gathers, is ``sampler_device`` (``resources.sampler_device``, :mod:`trainer.placement`):
on the CPU (the sampler's messages are then copied to the GPU and back inside
:func:`~trainer.distributed.exchange`, since NCCL moves only CUDA tensors), in GPU
memory, or in pinned host memory read by the GPU; ``auto`` picks GPU memory when the
arrays fit. The step's random generator stays on the CPU whatever the placement (the
draws are copied over), so a GPU run samples exactly the batches a CPU run with the same
seed does, on every placement (up to float rounding of the weighted draws' keys).
:func:`train_worker` joins an already-initialised default group (Ray Train's
``TorchTrainer`` sets one up) or creates its own. Launching, checkpoints and validation
live in :mod:`trainer.ray_launch`; they reach into the loop through :class:`TrainHooks`
and start it where a checkpoint left off through :class:`ResumeState`.

Lockstep. Sampling, feature fetches and gradient all-reduces are collectives, so every
rank must run the same number of steps. Each epoch the ranks agree (all-reduce MAX) on
``steps = max over ranks of ceil(own events / batch_size)`` and a rank with fewer events
pads its shuffled events with events re-drawn uniformly from its own (with replacement)
up to ``steps * batch_size``: every event of every part is seen each epoch, at the price
of small parts' events being seen a little more often. (Stopping at the minimum instead
would drop most of a large part's events whenever one part is small.) A rank with no
events at all runs the same steps on empty batches: it still serves the others' sampling
requests and joins every all-reduce with zero gradients.

Step. Each step is :func:`trainer.engine.prepare_step` then
:func:`trainer.engine.compute_step` (together :func:`~trainer.engine.training_step`, the
single-process engine's step too); only how a batch arrives is this module's
(:class:`DistBatchSource`: the distributed sampler, fetched features, the owners'
activity counts).

Pipelining (``prefetch_depth`` > 0, ``resources.prefetch_depth``). A background thread
per rank (:class:`~trainer.prefetch.Prefetcher`) prepares the next steps' batches while
the current step computes, at most ``prefetch_depth`` ready ahead. Its collectives
(sampling, features, counts, the step's example count) run on a gloo process group of
their own, created at the start, so they never interleave with the main thread's (DDP's
all-reduces, the epoch plan, the hooks'). It prepares the steps in order from the same
generator, and the compute draws nothing from it, so the batches, hence the losses and
parameters, are those of the plain loop (``tests/test_dist_pipeline.py``); the hooks see a
copy of the generator at the state the plain loop would have, so a checkpoint resumes
identically. An error in the thread reaches the main thread when it asks for that batch;
a rank that dies closes its sockets and its peers' collectives fail instead of waiting.

Loss. Each rank's loss is ``sum of its example losses * world_size / global examples``
(the global count is one all-reduce per step), so after DDP's averaging the gradient is
that of the mean over all examples of the step, whatever the per-rank batch sizes (random
negatives vary them; empty ranks have none).

Time split (seconds per rank, summed over steps):

* ``examples``: drawing the batch and its negatives plus the all-reduce of the count;
* ``sampling``: :meth:`DistTemporalSampler.sample`, its all-to-alls included;
* ``feature_exchange``: :meth:`DistTemporalSampler.fetch_inputs` (features and activity
  counts in one exchange pair) + input assembly;
* ``allreduce``: the gradient all-reduces, timed inside a DDP communication hook that
  runs each bucket's all-reduce synchronously. This gives up DDP's overlap of
  communication with the rest of backward (small here: CPU, one thread per worker) so
  the time can be measured exactly; it includes waiting for the slowest rank;
* ``compute``: forward + backward + optimizer step, minus ``allreduce``;
* ``idle``: with prefetching, the main thread's wait for a batch that was not ready yet
  (``examples``, ``sampling`` and ``feature_exchange`` are then the prefetch thread's
  time, overlapped with ``compute``); 0 without.

Bytes: what this rank sent to other ranks for sampling and features (see
:mod:`trainer.dist_sampler` for the message layouts), per trained event (padding
included), and the gradient bytes handed to the all-reduce over all steps (the bucket
buffer sizes; a ring all-reduce moves about ``2 (P - 1) / P`` times that per rank).
With a hot-node cache (``hot_cache``), the one-off bytes of building it are reported
apart (``hot_cache_build_sent``), not per event.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from clickgraph.core.config import TrainConfig
from clickgraph.core.progress import RateProgress
from trainer.checkpoint import grow_id_tables
from trainer.data import Impressions, NegativeSampler
from trainer.dist_sampler import DistTemporalSampler, HotNodeCache, build_hot_cache, model_inputs
from trainer.distributed import (
    Backend,
    ByteCounter,
    all_reduce_int,
    all_reduce_ints,
    init_process_group,
    training_device,
)
from trainer.engine import (
    Examples,
    ModelInputs,
    PreparedStep,
    compute_step,
    draw_examples,
    pair_weight,
    prepare_step,
    relation_fanouts,
    weighted_sampling,
    with_edge_weights,
)
from trainer.model import ClickGNN, NodeFeatures
from trainer.placement import SAMPLER_DEVICES, choose_sampler_device
from trainer.prefetch import Prefetcher, split_threads
from trainer.sampler import SampledSubgraph
from trainer.shard import PartitionShard


def owned_impressions(impressions: Impressions, shard: PartitionShard) -> Impressions:
    """The impressions whose user this shard's part owns, in their original order."""
    owner = shard.owner("user", impressions.user)
    return impressions.take(torch.nonzero(owner == shard.part).view(-1))


def schema_features(shard: PartitionShard) -> dict[str, NodeFeatures]:
    """Features with the GLOBAL shapes and no data, to build the model.

    :class:`ClickGNN` reads only the cardinalities, whether a type has a creation time
    and, for id-embedded types, the global node count; ``expand`` views give it
    ``[num_nodes, C]`` shapes without allocating them.
    """
    out = {}
    for node_type, features in shard.features.items():
        count, columns = shard.num_nodes[node_type], features.categorical.shape[1]
        out[node_type] = NodeFeatures(
            categorical=torch.zeros((1, columns), dtype=torch.int64).expand(count, columns),
            cardinalities=list(features.cardinalities),
            created_time=(None if features.created_time is None
                          else torch.zeros(1, dtype=torch.int64).expand(count)),
            learn_id_embedding=features.learn_id_embedding)
    return out


def build_model(shard: PartitionShard, cfg: TrainConfig) -> ClickGNN:
    """The click model with the initial parameters of seed ``cfg.seed`` (same on every
    rank; DDP also broadcasts rank 0's at wrap time)."""
    torch.manual_seed(cfg.seed)
    return ClickGNN(schema_features(shard), shard.edge_types, cfg.model)


def batch_to(batch: SampledSubgraph, device: torch.device) -> SampledSubgraph:
    """``batch`` with every tensor on ``device`` (the same object when it is the CPU and
    the batch is there already, so the CPU path copies nothing)."""
    if device.type == "cpu" and all(n.device.type == "cpu" for n in batch.node.values()):
        return batch
    move = {name: {key: value.to(device) for key, value in getattr(batch, name).items()}
            for name in ("node", "node_time", "seed_local", "edge_index", "edge_id",
                         "edge_time", "edge_delta_t", "edge_weight")}
    attrs = {edge_type: {name: value.to(device) for name, value in attrs.items()}
             for edge_type, attrs in batch.edge_attr.items()}
    return dataclasses.replace(batch, **move, edge_attr=attrs)


@dataclass
class _AllReduceTimer:
    """State of the timing communication hook."""

    group: dist.ProcessGroup | None
    world_size: int
    seconds: float = 0.0
    bytes: int = 0
    calls: int = 0


def _timed_allreduce_hook(state: _AllReduceTimer, bucket):  # noqa: ANN001, ANN201
    """DDP's average-all-reduce, run synchronously so that its wall time is exact.

    ``bucket`` is a ``dist.GradBucket``; returns a completed ``Future[Tensor]``. No
    annotations: DDP compares them with the real classes, and this module's postponed
    (string) annotations would fail that check.
    """
    tensor = bucket.buffer()
    start = time.perf_counter()
    dist.all_reduce(tensor, group=state.group, async_op=True).wait()
    tensor.div_(state.world_size)
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)
    state.seconds += time.perf_counter() - start
    state.bytes += tensor.numel() * tensor.element_size()
    state.calls += 1
    future: torch.futures.Future[Tensor] = torch.futures.Future()
    future.set_result(tensor)
    return future


@dataclass
class WorkerResult:
    """What one rank reports after training.

    Attributes:
        rank: This rank.
        world_size: Number of ranks.
        steps_per_epoch: Steps run each epoch (equal on every rank).
        own_batches_per_epoch: ``ceil(own events / batch_size)`` each epoch, before
            padding.
        min_batches_per_epoch: The smallest ``own_batches`` over ranks, each epoch.
        own_events: Training impressions this rank owns (before the per-epoch cap).
        events_trained: Impressions trained on, padding re-draws included.
        examples_trained: Examples (impressions + random negatives) trained on.
        losses: Each step's mean loss over this rank's examples (NaN when it had none).
        time_split: Seconds per phase (see the module docstring) and ``total``.
        bytes: ``sent``/``received``/``calls`` per message kind across partitions, plus
            ``gradient_allreduce_bytes`` (buffer bytes handed to all-reduce, all steps).
        bytes_per_event: Sampling + feature bytes this rank sent per trained event.
        bytes_per_event_global: The same over all ranks (sum of bytes / sum of events).
        model_state: The trained parameters (CPU copies).
        device: Where the model trained, e.g. ``cpu`` or ``cuda:0``.
        backend: The process group's backend.
        hot_cache_nodes: Node type -> nodes in the replicated hot-node cache (empty
            without one).
        sampler_device: Where this rank's sampler arrays were placed: ``cpu``, ``cuda``
            or ``pinned`` (:mod:`trainer.placement`).
        sampler_footprint: ``edge_bytes``, ``node_bytes``, ``num_edges`` and
            ``bytes_per_edge`` of those arrays
            (:meth:`~trainer.dist_sampler.DistTemporalSampler.footprint`).
    """

    rank: int
    world_size: int
    device: str = "cpu"
    backend: str = "gloo"
    hot_cache_nodes: dict[str, int] = field(default_factory=dict)
    sampler_device: str = "cpu"
    sampler_footprint: dict[str, float] = field(default_factory=dict)
    steps_per_epoch: list[int] = field(default_factory=list)
    own_batches_per_epoch: list[int] = field(default_factory=list)
    min_batches_per_epoch: list[int] = field(default_factory=list)
    own_events: int = 0
    events_trained: int = 0
    examples_trained: int = 0
    losses: list[float] = field(default_factory=list)
    time_split: dict[str, float] = field(default_factory=dict)
    bytes: dict = field(default_factory=dict)
    bytes_per_event: float = 0.0
    bytes_per_event_global: float = 0.0
    model_state: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class DistBatchSource:
    """A rank's batches for :func:`~trainer.engine.prepare_step` (a
    :class:`~trainer.engine.BatchSource`); every method is collective.

    Attributes:
        sampler: This rank's distributed sampler.
        impressions: This rank's training impressions.
        negatives: Random negatives over all content.
        random_negative_ratio: Negatives per impression.
        num_nodes: Global node counts (``shard.num_nodes``).
        read_counts: Whether the model reads activity counts.
        device: Where the model lives.
        group: Process group of the step's count all-reduce: the sampler's (the default
            group, or the prefetch thread's own).
    """

    sampler: DistTemporalSampler
    impressions: Impressions
    negatives: NegativeSampler
    random_negative_ratio: float
    num_nodes: dict[str, int]
    read_counts: bool
    device: torch.device
    group: dist.ProcessGroup | None = None

    def step_examples(self, events: Tensor, generator: torch.Generator) -> Examples:
        """This rank's examples and, by one all-reduce, the step's count over all ranks."""
        user, content, seed_time, position, label = draw_examples(
            self.impressions, events, self.negatives, self.random_negative_ratio, generator)
        local = Examples(user, content, seed_time, position, label,
                         num_impressions=events.numel())
        total, impressions, pair_rows = all_reduce_ints(
            [label.numel(), events.numel(), local.pair_rows().numel()], self.group)
        return dataclasses.replace(local, global_count=total,
                                   global_pair_counts=(impressions, pair_rows))

    def sample(self, user: Tensor, content: Tensor, seed_time: Tensor,
               generator: torch.Generator) -> SampledSubgraph:
        """:meth:`DistTemporalSampler.sample` of the user and content seeds."""
        batch = self.sampler.sample({"user": (user, seed_time), "content": (content, seed_time)},
                                    generator=generator)
        _synchronize(self.sampler.device)
        return batch

    def model_inputs(self, batch: SampledSubgraph, user: Tensor, content: Tensor,
                     seed_time: Tensor, position: Tensor) -> ModelInputs:
        """Fetched features and owners' activity counts (one pair of exchanges:
        :meth:`DistTemporalSampler.fetch_inputs`), moved to :attr:`device`."""
        rows, counts = self.sampler.fetch_inputs(
            batch, {"user": (user, seed_time), "content": (content, seed_time)}
            if self.read_counts else None)
        model_batch, features = model_inputs(batch, rows, self.num_nodes)
        model_batch = batch_to(with_edge_weights(model_batch), self.device)
        features = {t: f.to(self.device) for t, f in features.items()}
        if counts is not None:
            counts = {t: c.to(self.device) for t, c in counts.items()}
        _synchronize(self.sampler.device)
        return ModelInputs(model_batch, features, counts, position.to(self.device),
                           seed_time.to(self.device))


def _synchronize(device: torch.device) -> None:
    """Waits for a GPU sampler's kernels, so that the phase times are theirs (a no-op
    for a CPU sampler)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def place_sampler(sampler: DistTemporalSampler, setting: str, train_device: torch.device,
                  memory_fraction: float) -> str:
    """Chooses where ``sampler``'s arrays live (:func:`~trainer.placement.choose_sampler_device`
    with this GPU's free memory) and moves them there (local).

    Returns:
        ``"cpu"``, ``"cuda"`` or ``"pinned"``.
    """
    footprint = sampler.footprint()
    free = (torch.cuda.mem_get_info(train_device)[0] if train_device.type == "cuda"
            else None)
    placement = choose_sampler_device(setting, train_device, footprint.total_bytes, free,
                                      memory_fraction)
    sampler.place(placement, train_device if placement != "cpu" else None)
    return placement


PREFETCH_GROUP_TIMEOUT = dt.timedelta(seconds=300)
"""How long a prefetch-thread collective waits for the other ranks before failing."""


def _prepare(source: DistBatchSource, generator: torch.Generator, events: Tensor
             ) -> tuple[Tensor, PreparedStep, Tensor]:
    """One step's batch (collective on the source's group) and the generator's state
    after it."""
    return events, prepare_step(source, events, generator), generator.get_state()


def _generator_at(generator: torch.Generator, state: Tensor, prefetch_depth: int
                  ) -> torch.Generator:
    """The step's generator as the hooks see it: the live one in the plain loop; with
    prefetching (the live one is already further on) a copy at ``state``."""
    if prefetch_depth == 0:
        return generator
    snapshot = torch.Generator()
    snapshot.set_state(state)
    return snapshot


def _epoch_events(num_events: int, cap: int, steps: int, batch_size: int,
                  generator: torch.Generator) -> list[Tensor]:
    """This rank's ``steps`` batches of event indices: shuffled, capped, padded."""
    if num_events == 0:
        return [torch.empty(0, dtype=torch.int64)] * steps
    events = torch.randperm(num_events, generator=generator)[:cap]
    missing = steps * batch_size - events.numel()
    if missing > 0:
        redrawn = events[torch.randint(events.numel(), (missing,), generator=generator)]
        events = torch.cat([events, redrawn])
    return list(torch.split(events, batch_size))[:steps]


def epoch_plan_generator(seed: int, rank: int, epoch: int) -> torch.Generator:
    """The generator of one rank's batch plan for one epoch.

    Derived from ``(seed, rank, epoch)`` alone, so a run resumed mid-epoch rebuilds the
    same batches and skips the ones already trained on.
    """
    return torch.Generator().manual_seed(seed + 1_000_003 * (rank + 1) + 7_919 * (epoch + 1))


@dataclass(frozen=True)
class ResumeState:
    """Where a (restarted or continued) run starts.

    Attributes:
        model: Parameters to start from (``state_dict`` of :class:`ClickGNN`), or
            ``None`` for fresh ones.
        optimizer: Adam state to start from, or ``None``.
        epoch: Epoch index to start in (0-based).
        step: Steps of that epoch already trained (its first ``step`` batches are skipped).
        global_step: Steps trained so far over the whole run.
        generator_state: This rank's step generator state (``torch.Generator.get_state``),
            or ``None`` to seed it afresh.
    """

    model: dict[str, Tensor] | None = None
    optimizer: dict | None = None
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    generator_state: Tensor | None = None


@dataclass
class StepContext:
    """What a hook sees: the live training objects and the position in the run.

    ``step`` counts the steps done in ``epoch`` (1 after the first), ``global_step`` the
    steps done in the whole run, a resumed one's earlier steps included.
    """

    rank: int
    world_size: int
    epoch: int
    step: int
    steps_in_epoch: int
    global_step: int
    model: ClickGNN
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    result: WorkerResult
    times: dict[str, float]
    counter: ByteCounter
    loss: float = float("nan")


class TrainHooks:
    """Calls out of the training loop; the default does nothing.

    Both methods run on every rank at the same point of the lockstep loop, so they may
    use collectives (all ranks call them the same number of times).
    """

    def after_step(self, ctx: StepContext) -> None:
        """After the optimiser step of every step."""

    def after_epoch(self, ctx: StepContext) -> None:
        """After the last step of every epoch."""


def train_worker(rank: int, world_size: int, shard: PartitionShard, cfg: TrainConfig,
                 impressions: Impressions, content_created: Tensor, *,
                 master_addr: str | None = None, master_port: int | None = None,
                 backend: Backend = "gloo", log: Callable[[str], None] | None = None,
                 hooks: TrainHooks | None = None, resume: ResumeState | None = None,
                 device: torch.device | str | None = None,
                 hot_cache: dict[str, float] | None = None, threads: int = 1,
                 prefetch_depth: int = 0, log_every_s: float = 30.0,
                 sampler_device: str = "cpu",
                 sampler_memory_fraction: float = 0.5) -> WorkerResult:
    """Trains the click model in lockstep with the other ranks (collective).

    Uses the current default process group when one is initialised (Ray Train sets it
    up), else creates one from ``master_addr``/``master_port`` and destroys it at the end.

    Args:
        rank: This rank; it must serve part ``rank`` (``shard.part``).
        world_size: Number of ranks (= ``shard.num_parts``).
        shard: The part this rank serves.
        cfg: Training config (``epochs``, ``batch_size``, ``fanouts``, ``strategy``,
            ``learning_rate``, ``random_negative_ratio``, ``max_train_events`` split
            evenly over ranks, ``seed``, model sizes).
        impressions: This rank's training impressions; every user must be owned here
            (see :func:`owned_impressions`).
        content_created: int64 ``[num_content]`` creation times of ALL content, seconds,
            for time-respecting random negatives.
        master_addr: Rank 0's host, when no process group is initialised yet.
        master_port: Its port.
        backend: Process-group backend when one is created here (``"auto"``: NCCL
            when CUDA is available).
        log: Progress lines (rank 0 only, one per ``log_every_s`` seconds with the run's
            steps, rate and ETA), e.g. ``print``.
        hooks: Called after every step and epoch on every rank (checkpoints, progress,
            validation: see :class:`TrainHooks`); ``None``: no calls.
        resume: Where to start (parameters, optimiser, position in the run, random
            stream); ``None``: epoch 0, step 0, fresh parameters of seed ``cfg.seed``.
        device: Where the model and batches live; ``None``:
            :func:`~trainer.distributed.training_device` of the group's backend and
            ``LOCAL_RANK`` (Ray Train and torchrun set it; default ``rank``), i.e. the
            CPU under gloo and ``cuda:<local rank>`` under NCCL, which needs a CUDA
            device.
        hot_cache: Node type -> fraction of its nodes, highest degree first, whose static
            features every rank replicates (:func:`~trainer.dist_sampler.build_hot_cache`)
            so that their lookups are served locally; ``None`` or ``{}``: no cache.
            The same on every rank.
        threads: torch threads of this rank (``resources.threads_per_worker``), split
            between compute and the prefetch thread by
            :func:`~trainer.prefetch.split_threads`.
        prefetch_depth: Batches this rank prepares ahead on a background thread while a
            step computes (``resources.prefetch_depth``; see the module docstring); 0:
            one after another. The batches and losses are the same either way.
        sampler_device: Where this rank's shard arrays live for sampling
            (``resources.sampler_device``: ``auto``, ``cpu``, ``cuda`` or ``pinned``;
            :mod:`trainer.placement`). ``cpu`` by default here (the launcher passes the
            config's, ``auto`` by default); ``cuda``/``pinned`` need a GPU ``device``.
        sampler_memory_fraction: Under ``auto``, the share of the GPU's free memory the
            arrays may take to be placed there (``resources.sampler_gpu_memory_fraction``).

    Returns:
        This rank's :class:`WorkerResult`.
    """
    if cfg.content_type_loss_weight:
        raise ValueError("train.content_type_loss_weight is applied by the single-process "
                         "trainer only (clickgraph train --workers 1); set it to {} here")
    if prefetch_depth < 0:
        raise ValueError(f"prefetch_depth must be >= 0, got {prefetch_depth}")
    if sampler_device not in SAMPLER_DEVICES:
        raise ValueError(f"sampler_device must be one of {list(SAMPLER_DEVICES)}, got "
                         f"{sampler_device!r}")
    compute_threads, _ = split_threads(threads, prefetch_depth)
    torch.set_num_threads(compute_threads)
    created_group = not dist.is_initialized()
    if created_group:
        if master_addr is None or master_port is None:
            raise ValueError("no process group is initialised: pass master_addr and "
                             "master_port")
        init_process_group(rank, world_size, master_addr, master_port, backend)
    try:
        group_backend = dist.get_backend()
        if device is None:
            device = training_device(group_backend, int(os.environ.get("LOCAL_RANK", rank)))
        device = torch.device(device)
        if group_backend == "nccl" and device.type != "cuda":
            raise ValueError(f"an nccl process group moves only CUDA tensors; the model "
                             f"cannot train on {device}")
        if device.type == "cuda":
            # comm_device() (where collectives put their tensors) follows the current device.
            torch.cuda.set_device(device)
        if dist.get_rank() != rank or dist.get_world_size() != world_size:
            raise ValueError(f"process group has rank {dist.get_rank()} of "
                             f"{dist.get_world_size()}, expected {rank} of {world_size}")
        foreign = impressions.user.numel() and not bool(
            (shard.owner("user", impressions.user) == shard.part).all())
        # Checked together so that one rank's bad input fails every rank, not a hang.
        if all_reduce_int(int(not foreign), "min") == 0:
            who = f"rank {rank}" if foreign else "another rank"
            raise ValueError(f"{who} was given impressions of users it does not own")
        return _train(rank, world_size, shard, cfg, impressions, content_created, log,
                      hooks or TrainHooks(), resume, device, hot_cache or {},
                      split_threads(threads, prefetch_depth)[1], prefetch_depth, log_every_s,
                      (sampler_device, sampler_memory_fraction))
    finally:
        if created_group:
            dist.destroy_process_group()


def _train(rank: int, world_size: int, shard: PartitionShard, cfg: TrainConfig,
           impressions: Impressions, content_created: Tensor,
           log: Callable[[str], None] | None, hooks: TrainHooks,
           resume: ResumeState | None, device: torch.device,
           hot_cache: dict[str, float], prefetch_threads: int,
           prefetch_depth: int, log_every_s: float,
           sampler_setting: tuple[str, float]) -> WorkerResult:
    resume = resume or ResumeState()
    # The prefetch thread's collectives (sampling, features, counts, the step's example
    # count) get a group of their own, so they never interleave with the main thread's
    # (DDP's all-reduces, the epoch plan, hooks). A gloo group: it moves CPU tensors, where
    # the sampler's messages are. Created on every rank (new_group is collective).
    sample_group = (dist.new_group(backend="gloo", timeout=PREFETCH_GROUP_TIMEOUT)
                    if prefetch_depth > 0 else None)
    try:
        return _train_loop(rank, world_size, shard, cfg, impressions, content_created, log,
                           hooks, resume, device, hot_cache, prefetch_threads, prefetch_depth,
                           sample_group, log_every_s, sampler_setting)
    finally:
        # Not while a prefetch thread that would not stop is still inside one of the
        # group's collectives (Prefetcher.close warned): the process is failing anyway.
        if sample_group is not None and not any(
                thread.name == _prefetch_thread_name(rank) for thread in threading.enumerate()):
            dist.destroy_process_group(sample_group)


def _prefetch_thread_name(rank: int) -> str:
    return f"train-prefetch-rank{rank}"


def _train_loop(rank: int, world_size: int, shard: PartitionShard, cfg: TrainConfig,
                impressions: Impressions, content_created: Tensor,
                log: Callable[[str], None] | None, hooks: TrainHooks,
                resume: ResumeState, device: torch.device, hot_cache: dict[str, float],
                prefetch_threads: int, prefetch_depth: int,
                sample_group: dist.ProcessGroup | None, log_every_s: float,
                sampler_setting: tuple[str, float]) -> WorkerResult:
    counter = ByteCounter()
    # Built before the sampler (both are collective); its one-off bytes are reported
    # apart, so bytes per event count only what every step sends.
    cache_counter = ByteCounter()
    cache: HotNodeCache | None = (build_hot_cache(shard, hot_cache, counter=cache_counter)
                                  if hot_cache else None)
    sampler = DistTemporalSampler(shard, relation_fanouts(cfg, shard.edge_types),
                                  strategy=cfg.strategy, counter=counter, hot_cache=cache,
                                  weighted=weighted_sampling(cfg), group=sample_group)
    # Local, so checked together: one rank's impossible placement fails every rank.
    problem = None
    try:
        placement = place_sampler(sampler, sampler_setting[0], device, sampler_setting[1])
    except (ValueError, RuntimeError, torch.cuda.OutOfMemoryError) as error:
        problem = error
    if all_reduce_int(int(problem is None), "min") == 0:
        raise ValueError(f"rank {rank}: sampler placement failed: {problem}" if problem
                         else "another rank could not place its sampler (see its error)")
    footprint = sampler.footprint()
    if log is not None and rank == 0:
        log(f"  sampler arrays on {placement} ({sampler.device}): "
            f"{footprint.total_bytes / 2**20:,.1f} MiB, {footprint.bytes_per_edge:.1f} B "
            "per edge (rank 0)")
    model = build_model(shard, cfg)
    optimizer_state = resume.optimizer
    if resume.model is not None:  # --continue: the graph may have new nodes
        model_state, optimizer_state = grow_id_tables(model, resume.model, resume.optimizer)
        model.load_state_dict(model_state)
    model.to(device)
    timer = _AllReduceTimer(group=None, world_size=world_size)
    # Some relations get no edges in some batches (and the last layer never reads the
    # edges into non-seed types), so some parameters are unused in a given step.
    ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                  find_unused_parameters=True)
    ddp.register_comm_hook(timer, _timed_allreduce_hook)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=cfg.learning_rate,
                                 weight_decay=cfg.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    source = DistBatchSource(sampler, impressions, NegativeSampler(content_created),
                             cfg.random_negative_ratio, shard.num_nodes,
                             bool(model.count_relations), device, group=sample_group)
    # A different random stream per rank (negatives, the rows it draws for); the batch
    # plan of each epoch has its own generator (epoch_plan_generator).
    generator = torch.Generator().manual_seed(cfg.seed + 1_000_003 * (rank + 1))
    if resume.generator_state is not None:
        generator.set_state(resume.generator_state)

    result = WorkerResult(rank=rank, world_size=world_size, own_events=len(impressions),
                          device=str(device), backend=dist.get_backend(),
                          hot_cache_nodes=cache.sizes() if cache is not None else {},
                          sampler_device=placement,
                          sampler_footprint={
                              "edge_bytes": footprint.edge_bytes,
                              "node_bytes": footprint.node_bytes,
                              "num_edges": footprint.num_edges,
                              "bytes_per_edge": round(footprint.bytes_per_edge, 3)})
    times = dict.fromkeys(("examples", "sampling", "feature_exchange", "compute", "idle"), 0.0)
    cap = (cfg.max_train_events // world_size if cfg.max_train_events > 0
           else len(impressions))
    own_batches = math.ceil(min(len(impressions), cap) / cfg.batch_size)
    global_step = resume.global_step
    start_all = time.perf_counter()
    progress = None
    for epoch in range(resume.epoch, cfg.epochs):
        steps = all_reduce_int(own_batches, "max")
        fewest = all_reduce_int(own_batches, "min")
        result.steps_per_epoch.append(steps)
        result.own_batches_per_epoch.append(own_batches)
        result.min_batches_per_epoch.append(fewest)
        ddp.train()
        plan = _epoch_events(len(impressions), cap, steps, cfg.batch_size,
                             epoch_plan_generator(cfg.seed, rank, epoch))
        first_step = resume.step if epoch == resume.epoch else 0
        if progress is None:   # every epoch has this epoch's number of steps
            progress = RateProgress(cfg.epochs * steps, "steps", log if rank == 0 else None,
                                    log_every_s, done_at_start=epoch * steps + first_step)
        ctx = None
        # The epoch's batches are prepared in order from `generator` (negatives, then this
        # rank's share of every rank's neighbour draws), up to prefetch_depth ahead on a
        # thread; each comes with the generator's state right after it was prepared, the
        # state the plain loop has after that step (what a checkpoint saves).
        with Prefetcher(plan[first_step:steps], partial(_prepare, source, generator),
                        prefetch_depth, name=_prefetch_thread_name(rank),
                        on_start=partial(torch.set_num_threads, prefetch_threads)) as prepared:
            idle_before = times["idle"]
            for step, (events, batch, generator_state) in enumerate(prepared, start=first_step):
                times["idle"] = idle_before + prepared.waited_s
                allreduce_before = timer.seconds
                done = compute_step(ddp, optimizer, batch, world_size,
                                    pair_weight=pair_weight(cfg))
                times["examples"] += done.phases.examples
                times["sampling"] += done.phases.sampling
                times["feature_exchange"] += done.phases.inputs
                times["compute"] += done.phases.compute - (timer.seconds - allreduce_before)
                times["allreduce"] = timer.seconds
                global_step += 1
                result.events_trained += events.numel()
                result.examples_trained += done.examples.label.numel()
                result.losses.append(done.loss)
                if progress.due():
                    progress.update(epoch * steps + step + 1,
                                    prefix=f"  epoch {epoch + 1}/{cfg.epochs} step {step + 1}/{steps} "
                                           f"loss {result.losses[-1]:.4f} | ")
                ctx = StepContext(rank=rank, world_size=world_size, epoch=epoch, step=step + 1,
                                  steps_in_epoch=steps, global_step=global_step, model=model,
                                  optimizer=optimizer,
                                  generator=_generator_at(generator, generator_state,
                                                          prefetch_depth),
                                  result=result, times=times, counter=counter,
                                  loss=result.losses[-1])
                hooks.after_step(ctx)
        times["idle"] = idle_before + prepared.waited_s
        if ctx is None:  # resumed exactly at an epoch's end, or an epoch of zero steps
            ctx = StepContext(rank=rank, world_size=world_size, epoch=epoch, step=steps,
                              steps_in_epoch=steps, global_step=global_step, model=model,
                              optimizer=optimizer, generator=generator, result=result,
                              times=times, counter=counter)
        hooks.after_epoch(ctx)
    times["allreduce"] = timer.seconds
    times["total"] = time.perf_counter() - start_all
    result.time_split = {name: round(value, 4) for name, value in times.items()}
    result.bytes = {**counter.as_dict(), "gradient_allreduce_bytes": timer.bytes,
                    "hot_cache_build_sent": cache_counter.total_sent}
    result.bytes_per_event = counter.total_sent / max(result.events_trained, 1)
    total_sent = all_reduce_int(counter.total_sent, "sum")
    total_events = all_reduce_int(result.events_trained, "sum")
    result.bytes_per_event_global = total_sent / max(total_events, 1)
    result.model_state = {name: value.detach().cpu().clone()
                          for name, value in model.state_dict().items()}
    return result
