"""Training and scoring steps of the click model, shared by every launcher.

A step takes impression indices, adds time-respecting random negatives, samples the
temporal neighbourhood of every (user, time) and (content, time) seed, and runs the model.
Launchers only decide which events a worker sees, how a batch's inputs arrive and how
gradients are combined: :func:`training_step` is the one training step, used by the
single-process :class:`ClickEngine` and by the distributed loop of
:mod:`trainer.dist_train`, each through its own :class:`BatchSource`. It is two halves,
:func:`prepare_step` (the batch) and :func:`compute_step` (the optimisation), so that a
loop can prepare the next batch on another thread while the current one computes
(:mod:`trainer.prefetch`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clickgraph.core.config import TrainConfig
from trainer.data import GraphData, Impressions, NegativeSampler
from trainer.model import ClickGNN, NodeFeatures
from trainer.sampler import SampledSubgraph, TemporalNeighborSampler
from trainer.scoring import chunked_scores


def pair_weight(cfg: TrainConfig) -> float | None:
    """The pair loss's weight under ``train.random_negative_loss: pair``, else ``None``."""
    return cfg.pair_loss_weight if cfg.random_negative_loss == "pair" else None


def relation_fanouts(cfg: TrainConfig, edge_types) -> dict:
    """Fanouts per relation: ``train.relation_fanouts`` by relation name (either
    direction), else ``train.fanouts``."""
    out = {}
    for et in edge_types:
        name = et[1].removeprefix("rev_")
        hops = list(cfg.relation_fanouts.get(name, cfg.fanouts))
        if len(hops) != len(cfg.fanouts):
            raise ValueError(f"train.relation_fanouts.{name} has {len(hops)} hops; "
                             f"train.fanouts has {len(cfg.fanouts)}")
        out[et] = hops
    return out


def draw_examples(impressions: Impressions, events: Tensor, negatives: NegativeSampler,
                  random_negative_ratio: float, generator: torch.Generator
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Impressions ``events`` plus time-respecting random negatives.

    Each random negative copies a random impression's user, time and position and takes
    a content piece created strictly before that time (label 0).

    Returns:
        ``(user, content, seed_time, position, label)``, each ``[B + negatives]``.
    """
    user, content = impressions.user[events], impressions.content[events]
    seed_time, position = impressions.time[events], impressions.position[events]
    label = impressions.clicked[events]
    n_random = int(round(random_negative_ratio * events.numel()))
    if n_random:
        host = torch.randint(events.numel(), (n_random,), generator=generator)
        valid, neg_content = negatives.sample(seed_time[host], generator)
        host, neg_content = host[valid], neg_content[valid]
        user = torch.cat([user, user[host]])
        content = torch.cat([content, neg_content])
        seed_time = torch.cat([seed_time, seed_time[host]])
        position = torch.cat([position, position[host]])
        label = torch.cat([label, torch.zeros(host.numel())])
    return user, content, seed_time, position, label


def content_loss_weights(cfg: TrainConfig, data: GraphData) -> Tensor | None:
    """``train.content_type_loss_weight`` per content node: float32 ``[num_content]`` the
    weight of a **clicked** example of that content in the click loss (1 for unnamed or
    unknown types), or ``None`` when the mapping is empty.

    Only positives are weighted (weighted logistic regression, as YouTube's watch-time
    weighting): the odds the model learns for a type become ``w`` times its click odds, so
    its items rank higher. Weighing a type's clicks and non-clicks alike would leave its
    optimal probability, hence its rank, where it was."""
    if not cfg.content_type_loss_weight:
        return None
    columns = list(data.vocab.get("content", {}))
    if "content_type" not in columns:
        raise ValueError("train.content_type_loss_weight is set but the store's content "
                         "nodes have no content_type attribute")
    values = data.vocab["content"]["content_type"]
    by_code = torch.ones(len(values) + 1)
    for code, value in enumerate(values, start=1):
        by_code[code] = float(cfg.content_type_loss_weight.get(value, 1.0))
    codes = data.features["content"].categorical[:, columns.index("content_type")]
    return by_code[codes.cpu()]


def weighted_sampling(cfg: TrainConfig) -> bool:
    """Whether the sampler draws by edge weight: ``train.weighted_sampling`` applies to
    ``uniform`` draws; ``most_recent`` stays deterministic."""
    return cfg.weighted_sampling and cfg.strategy == "uniform"


def with_edge_weights(batch: SampledSubgraph) -> SampledSubgraph:
    """Per-edge weights (relation x content-type weight from the store's ``weight``
    attribute) in place of the broadcast relation weight."""
    weights = {et: batch.edge_attr[et].get("weight", batch.edge_weight[et]) for et in batch.edge_index}
    return SampledSubgraph(**{**batch.__dict__, "edge_weight": weights})


@dataclass(frozen=True)
class Examples:
    """One step's examples: impressions plus random negatives, each ``[B]`` on the CPU.

    Attributes:
        user: int64 global user ids.
        content: int64 global content ids.
        seed_time: int64 impression times, seconds since epoch (the seeds' time).
        position: int64 slot of the impression on the page.
        label: float32 1 for a click, else 0.
        global_count: Examples of this step over all data-parallel ranks (the loss
            normaliser, see :func:`training_step`); ``None`` in a single process.
        num_impressions: The first rows that are impressions (the rest are random
            negatives); ``None``: all of them.
        global_pair_counts: ``(impressions, pair rows)`` over all ranks, the
            normalisers of ``train.random_negative_loss: pair``; ``None`` in a single
            process.
    """

    user: Tensor
    content: Tensor
    seed_time: Tensor
    position: Tensor
    label: Tensor
    global_count: int | None = None
    num_impressions: int | None = None
    global_pair_counts: tuple[int, int] | None = None

    def pair_rows(self) -> Tensor:
        """Rows of the pair task: clicked impressions (positives) and random negatives."""
        n = self.label.numel() if self.num_impressions is None else self.num_impressions
        clicked = torch.nonzero(self.label[:n] > 0).view(-1)
        return torch.cat([clicked, torch.arange(n, self.label.numel())])


@dataclass(frozen=True)
class ModelInputs:
    """A batch as :class:`~trainer.model.ClickGNN` reads it, on the model's device.

    Attributes:
        batch: The sampled subgraph, with per-edge weights (:func:`with_edge_weights`);
            ``seed_local["user"]``/``["content"]`` are the examples' rows.
        features: Node type -> features indexed as the model indexes them.
        counts: Node type -> int64 ``[B, 2 * relations]`` activity counts of the
            examples' users and contents at their seed time, or ``None``.
        position: int64 ``[B]``.
        seed_time: int64 ``[B]`` seconds since epoch.
    """

    batch: SampledSubgraph
    features: dict[str, NodeFeatures]
    counts: dict[str, Tensor] | None
    position: Tensor
    seed_time: Tensor


class BatchSource(Protocol):
    """How a training step's batch arrives: the only part of a step that differs between
    the single-process engine (local sampler and features) and the distributed loop
    (distributed sampler, fetched features, owners' activity counts)."""

    def step_examples(self, events: Tensor, generator: torch.Generator) -> Examples:
        """The examples of impression indices ``events`` (random negatives added)."""

    def sample(self, user: Tensor, content: Tensor, seed_time: Tensor,
               generator: torch.Generator) -> SampledSubgraph:
        """The temporal neighbourhood of every ``(user, seed_time)`` and
        ``(content, seed_time)`` seed, each ``[B]``."""

    def model_inputs(self, batch: SampledSubgraph, user: Tensor, content: Tensor,
                     seed_time: Tensor, position: Tensor) -> ModelInputs:
        """``batch`` with its features and activity counts, on the model's device."""


def click_logits(model: nn.Module, inputs: ModelInputs, with_pair: bool = False
                 ) -> Tensor | tuple[Tensor, Tensor]:
    """Click logits ``[B]`` of ``model`` (a :class:`ClickGNN`, possibly DDP-wrapped); with
    ``with_pair`` also its pair logits ``[B]``."""
    return model(inputs.batch, inputs.features, inputs.batch.seed_local["user"],
                 inputs.batch.seed_local["content"], inputs.position, inputs.seed_time,
                 inputs.counts, with_pair=with_pair)


def pair_objective_loss(logits: Tensor, pair_logits: Tensor, examples: Examples, weight: float,
                        world_size: int | None) -> tuple[Tensor, float]:
    """``train.random_negative_loss: pair``: BCE of the click head on the impressions
    alone, plus ``weight`` x BCE of the pair logits on clicked impressions (1) against the
    random negatives (0).

    Single process: means over this step's rows. Data parallel: each rank's sums scaled by
    ``world_size`` over the step's global row counts, so that after DDP's averaging the
    gradient is that of the global means, whatever the per-rank sizes.

    Returns:
        ``(loss to back-propagate, mean loss of this worker to report)``.
    """
    n = examples.label.numel() if examples.num_impressions is None else examples.num_impressions
    label = examples.label.to(logits.device)
    rows = examples.pair_rows().to(logits.device)
    pair_label = (torch.arange(rows.numel(), device=logits.device) < int((label[:n] > 0).sum())
                  ).to(logits.dtype)
    click_sum = F.binary_cross_entropy_with_logits(logits[:n], label[:n], reduction="sum")
    pair_sum = F.binary_cross_entropy_with_logits(pair_logits[rows], pair_label, reduction="sum")
    if world_size is None:
        global_click, global_pair, scale = n, rows.numel(), 1
    else:
        global_click, global_pair = examples.global_pair_counts
        scale = world_size
    loss = click_sum * (scale / max(global_click, 1)) + \
        weight * pair_sum * (scale / max(global_pair, 1))
    report = float(click_sum.detach()) / max(n, 1) + \
        weight * float(pair_sum.detach()) / max(rows.numel(), 1)
    return loss, report


@dataclass(frozen=True)
class StepPhases:
    """Wall-clock seconds of one training step's phases.

    Attributes:
        examples: Drawing the examples (and, distributed, agreeing on their count).
        sampling: Sampling the neighbourhoods.
        inputs: Features, activity counts and moving the batch to the model's device.
        compute: Forward, loss, backward and optimiser step (gradient all-reduces
            included), finished on the device.
    """

    examples: float
    sampling: float
    inputs: float
    compute: float


@dataclass(frozen=True)
class StepOutcome:
    """What one :func:`training_step` did.

    Attributes:
        examples: The step's examples.
        loss: Mean loss over this worker's examples (NaN when it had none).
        phases: Seconds per phase.
    """

    examples: Examples
    loss: float
    phases: StepPhases


@dataclass(frozen=True)
class PreparedStep:
    """A step's batch, ready for the model: what :func:`prepare_step` made.

    Attributes:
        examples: The step's examples.
        inputs: The model's inputs of those examples.
        examples_s: Seconds drawing the examples (and, distributed, agreeing on counts).
        sampling_s: Seconds sampling the neighbourhoods.
        inputs_s: Seconds getting features and counts and moving them to the device.
    """

    examples: Examples
    inputs: ModelInputs
    examples_s: float
    sampling_s: float
    inputs_s: float


def prepare_step(source: BatchSource, events: Tensor, generator: torch.Generator
                 ) -> PreparedStep:
    """The first half of :func:`training_step`: examples, neighbourhoods and model inputs
    of impression indices ``events``, drawn from ``generator`` in a fixed order (negatives,
    then neighbours), so a step prepared ahead on another thread is the same batch.

    Args:
        source: Where the batch comes from.
        events: int64 ``[B]`` impression indices of this worker.
        generator: Random source of the negatives and the neighbour draws.
    """
    t0 = time.perf_counter()
    examples = source.step_examples(events, generator)
    t1 = time.perf_counter()
    batch = source.sample(examples.user, examples.content, examples.seed_time, generator)
    t2 = time.perf_counter()
    inputs = source.model_inputs(batch, examples.user, examples.content, examples.seed_time,
                                 examples.position)
    t3 = time.perf_counter()
    return PreparedStep(examples, inputs, t1 - t0, t2 - t1, t3 - t2)


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, source: BatchSource,
                  events: Tensor, generator: torch.Generator,
                  world_size: int | None = None, pair_weight: float | None = None,
                  content_weight: Tensor | None = None) -> StepOutcome:
    """One optimisation step of the click model on impression indices ``events``.

    Draws the examples, samples their neighbourhoods and gets the model's inputs from
    ``source`` (:func:`prepare_step`), then runs forward, the binary cross-entropy loss,
    backward and the optimiser step (:func:`compute_step`). The model's train/eval mode is
    the caller's.

    Args:
        model: The click model, possibly wrapped in ``DistributedDataParallel``.
        optimizer: Its optimiser.
        source: Where the batch comes from.
        events: int64 ``[B]`` impression indices of this worker.
        generator: Random source of the negatives and the neighbour draws.
        world_size, pair_weight, content_weight: As for :func:`compute_step`.

    Returns:
        The examples, the mean loss of this worker's examples and the phase times.
    """
    return compute_step(model, optimizer, prepare_step(source, events, generator), world_size,
                        pair_weight, content_weight)


def compute_step(model: nn.Module, optimizer: torch.optim.Optimizer, prepared: PreparedStep,
                 world_size: int | None = None, pair_weight: float | None = None,
                 content_weight: Tensor | None = None) -> StepOutcome:
    """The second half of :func:`training_step`: forward, loss, backward and the optimiser
    step on a :class:`PreparedStep`. Draws nothing from the step's generator.

    Loss: in a single process (``world_size`` None) the mean over the examples. Under
    data parallelism each rank's loss is ``sum of its example losses * world_size /
    examples.global_count``, so that after DDP's averaging the gradient is that of the
    mean over all examples of the step, whatever the per-rank batch sizes. With one rank
    both are the same quantity but not the same float rounding, so each path keeps its
    own formula.

    Args:
        model: The click model, possibly wrapped in ``DistributedDataParallel``.
        optimizer: Its optimiser.
        prepared: The step's examples and model inputs.
        world_size: Data-parallel ranks, or ``None`` in a single process.
        pair_weight: ``train.pair_loss_weight`` under ``train.random_negative_loss:
            pair`` (:func:`pair_objective_loss`); ``None``: every example is a row of
            the click head (``click``).
        content_weight: float ``[num_content]`` weight of a clicked example by content
            (:func:`content_loss_weights`; single process, ``click`` objective): the loss
            is then the weighted mean ``sum w BCE / sum w``; ``None``: all weigh 1.

    Returns:
        The examples, the mean loss of this worker's examples and the phase times.
    """
    examples, inputs = prepared.examples, prepared.inputs
    t3 = time.perf_counter()

    def phases(t4: float) -> StepPhases:
        return StepPhases(prepared.examples_s, prepared.sampling_s, prepared.inputs_s, t4 - t3)

    if pair_weight is not None:
        logits, pair_logits = click_logits(model, inputs, with_pair=True)
        loss, mean_loss = pair_objective_loss(logits, pair_logits, examples, pair_weight,
                                              world_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if logits.device.type == "cuda":
            torch.cuda.synchronize(logits.device)
        return StepOutcome(examples, mean_loss, phases(time.perf_counter()))
    logits = click_logits(model, inputs)
    label = examples.label.to(logits.device)
    if content_weight is not None:
        row_weight = torch.where(examples.label > 0, content_weight[examples.content],
                                 1.0).to(logits.device)
        loss = (F.binary_cross_entropy_with_logits(logits, label, weight=row_weight, reduction="sum")
                / row_weight.sum().clamp(min=1e-12))
        loss_sum = None
    elif world_size is None:
        loss = F.binary_cross_entropy_with_logits(logits, label)
        loss_sum = None
    else:
        loss_sum = F.binary_cross_entropy_with_logits(logits, label, reduction="sum")
        loss = loss_sum * (world_size / max(examples.global_count, 1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if logits.device.type == "cuda":  # kernels run asynchronously: time them finished
        torch.cuda.synchronize(logits.device)
    t4 = time.perf_counter()
    if loss_sum is None:
        mean_loss = float(loss.detach())
    else:
        mean_loss = float(loss_sum.detach()) / label.numel() if label.numel() else math.nan
    return StepOutcome(examples, mean_loss, phases(t4))


@dataclass
class StepTimes:
    """Seconds spent per phase, summed over steps."""

    sampling: float = 0.0
    compute: float = 0.0
    other: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {"sampling": round(self.sampling, 3), "compute": round(self.compute, 3),
                **{k: round(v, 3) for k, v in self.other.items()}}


class ClickEngine:
    """Model, sampler and optimiser for one worker.

    Args:
        data: The loaded graph store.
        cfg: Training config.
        device: Where the graph, features and model live.
    """

    def __init__(self, data: GraphData, cfg: TrainConfig, device: torch.device | str = "cpu"):
        self.data = data
        self.cfg = cfg
        self.device = torch.device(device)
        self.graph = data.graph.to(self.device)
        self.features = {t: f.to(self.device) for t, f in data.features.items()}
        self.sampler = TemporalNeighborSampler(self.graph, relation_fanouts(cfg, self.graph.edge_types),
                                               strategy=cfg.strategy,
                                               weighted=weighted_sampling(cfg))
        self.content_weight = content_loss_weights(cfg, data)
        self.model = ClickGNN(data.features, self.graph.edge_types, cfg.model).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.learning_rate,
                                          weight_decay=cfg.weight_decay)
        self.negatives = NegativeSampler(data.content_created)
        self.times = StepTimes()

    def forward(self, user: Tensor, content: Tensor, seed_time: Tensor, position: Tensor,
                generator: torch.Generator) -> Tensor:
        """Click logits for (user, content, time, position) rows."""
        t0 = time.perf_counter()
        batch = self.sample(user, content, seed_time, generator)
        inputs = self.model_inputs(batch, user, content, seed_time, position)
        self.times.sampling += time.perf_counter() - t0
        return click_logits(self.model, inputs)

    def examples(self, events: Tensor, generator: torch.Generator
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Impressions plus random negatives: ``(user, content, time, position, label)``."""
        return draw_examples(self.data.impressions, events, self.negatives,
                             self.cfg.random_negative_ratio, generator)

    def step_examples(self, events: Tensor, generator: torch.Generator) -> Examples:
        """:meth:`examples` as a :class:`BatchSource` gives them."""
        return Examples(*self.examples(events, generator), num_impressions=events.numel())

    def sample(self, user: Tensor, content: Tensor, seed_time: Tensor,
               generator: torch.Generator) -> SampledSubgraph:
        """The local sampler's subgraph of the user and content seeds (:class:`BatchSource`)."""
        at = seed_time.to(self.device)
        return self.sampler.sample({"user": (user.to(self.device), at),
                                    "content": (content.to(self.device), at)},
                                   generator=generator)

    def model_inputs(self, batch: SampledSubgraph, user: Tensor, content: Tensor,
                     seed_time: Tensor, position: Tensor) -> ModelInputs:
        """``batch`` with the local features and activity counts (:class:`BatchSource`)."""
        at = seed_time.to(self.device)
        counts = {node_type: self.sampler.activity_counts(node_type, node.to(self.device), at)
                  for node_type, node in (("user", user), ("content", content))}
        return ModelInputs(with_edge_weights(batch), self.features, counts,
                           position.to(self.device), at)

    def train_step(self, events: Tensor, generator: torch.Generator) -> float:
        """One optimisation step on impression indices ``events``; returns the loss."""
        return self.train_prepared(prepare_step(self, events, generator))

    def train_prepared(self, prepared: PreparedStep) -> float:
        """One optimisation step on a batch :func:`prepare_step` made from this engine
        (possibly ahead, on a prefetch thread); returns the loss."""
        self.model.train()
        step = compute_step(self.model, self.optimizer, prepared,
                            pair_weight=pair_weight(self.cfg), content_weight=self.content_weight)
        self.times.sampling += step.phases.sampling + step.phases.inputs
        self.times.compute += step.phases.compute
        return step.loss

    @torch.no_grad()
    def score(self, events: Tensor, generator: torch.Generator, log=None,
              log_every_s: float = 30.0) -> np.ndarray:
        """Click probabilities of impressions ``events`` (no negatives added); ``log``
        gets a progress line (done, rate, ETA) every ``log_every_s`` seconds."""
        self.model.eval()
        imp = self.data.impressions
        return chunked_scores(lambda u, c, t, p: self.forward(u, c, t, p, generator),
                              imp.user[events], imp.content[events], imp.time[events],
                              imp.position[events], self.cfg.eval_batch_size, log=log,
                              log_every_s=log_every_s)
