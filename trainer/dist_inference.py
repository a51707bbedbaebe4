"""Evaluation and export on the workers of a shard set: no process holds the whole graph.

``clickgraph evaluate --workers N`` and ``clickgraph export --workers N`` (N > 1) run on the
same workers and shards as distributed training (:mod:`trainer.ray_launch`): one Ray Train
worker per part, in one process group. Every worker (:func:`open_worker`) memory-maps only
its own shard and builds the checkpoint's model over the distributed sampler
(:class:`~trainer.dist_sampler.DistTemporalSampler`): neighbourhoods and features of nodes
owned elsewhere come from their owners, with the single-process rules (strictly earlier
edges only; a seed's tree as of its seed time). The chunk loops are those of the
one-process path (:mod:`trainer.scoring`), run in lockstep.

Evaluation (:func:`evaluate_distributed`, :func:`evaluate_part`): the driver draws the
one-process path's two samples (:func:`evaluation_samples`: the trees' fit sample of the
validation window, the test sample) and has their tree features computed without loading
the graph (:data:`BaselineFeatures`: the app runs ``spark_jobs.baseline_features``); the
rows travel in the plan (:class:`TreeFeatures`). Every worker draws the same samples,
keeps the test impressions whose user its part owns, scores each at its own time and
counts its users' past interactions (local: it owns them), and embeds, as of each
impression's day start, the samples' users and contents that its part owns
(:func:`day_start_states`). Rank 0 gathers the rows (score, label, time, user, content,
past interactions) and the embeddings, fits and scores the trees
(:func:`trainer.evaluate.score_trees`) and computes every figure over the merged arrays
(:func:`trainer.evaluate.window_metrics`): the exact AUC, never an average of per-worker
AUCs.

Export (:func:`export_part`): every worker embeds the users and contents its part owns
that exist before the cutoff, as of the cutoff, and writes its own parquet file of each
type. The recommendation controls (:func:`export_recommendations`) are those of the
one-process export, from what is small: rank 0 reads back from the written parts the
sampled users' embeddings and the catalogue's (the content existing before the cutoff),
the content types from the store's content node table, and gathers each content piece's
category from the part that owns the category; a model with history attention gets its
pairs' neighbourhoods from the distributed sampler (rank 0's seeds, the others serving).
Rank 0 writes the manifest last, naming every file, once all have written.

Every result records each rank's peak resident memory (``peak_rss_bytes``, rank order:
:func:`gather_peak_rss`), the figure ``benchmarks/inference_memory.py`` compares with the
one-process path.

With ``most_recent`` sampling both agree with the one-process path to float tolerance;
with ``uniform`` they agree in distribution (each row's draw is made by its owner, see
:mod:`trainer.dist_sampler`).
"""

from __future__ import annotations

import dataclasses
import math
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from clickgraph.core import fs
from clickgraph.core.config import Config, TrainConfig
from clickgraph.core.errors import InputError
from clickgraph.core.graph_store import IMPRESSIONS
from clickgraph.core.shards import VOCAB_FILE
from clickgraph.core.timeline import Windows, split_windows
from trainer import checkpoint as ckpt
from trainer.asof import AsOfCounts
from trainer.data import Impressions, NegativeSampler, canonical_order
from trainer.dist_sampler import DistTemporalSampler, model_inputs
from trainer.dist_train import DistBatchSource, batch_to, build_model
from trainer.distributed import all_reduce_int
from trainer.engine import click_logits, relation_fanouts, weighted_sampling, with_edge_weights
from trainer.export import (
    DIST_FORMAT_VERSION,
    EXPORTED_TYPES,
    RECOMMENDATIONS_FILE,
    cutoff_iso,
    drift_against_previous,
    embedding_matrix,
    embedding_table,
    export_manifest,
    graph_version_of,
    log_model,
    previous_version,
    read_parquet,
    recommendation_controls,
    recommendations_table,
    write_parquet,
)
from trainer.inference import CONTEXT_HOPS, PairContext
from trainer.model import ClickGNN
from trainer.ray_launch import absolute
from trainer.scoring import chunked_scores, chunked_states
from trainer.shard import PartitionShard


@dataclass(frozen=True, eq=False)
class TreeFeatures:
    """The tree baselines' feature rows (:func:`trainer.tabular.baseline_features`) of the
    evaluation's two samples (:func:`evaluation_samples`), computed before the workers
    start by a job over the store (``spark_jobs.baseline_features``, run by the app): the
    only as-of counts any process of the distributed evaluation holds.

    Attributes:
        fit: float32 ``[fit rows, K]``, the validation sample's rows in its order.
        test: float32 ``[test rows, K]``, the test sample's rows in its order.
        names: Column names.
        categorical: Which columns are categorical codes.
    """

    fit: np.ndarray
    test: np.ndarray
    names: list[str]
    categorical: list[bool]


BaselineFeatures = Callable[[str, dict[str, dict[str, list[str]]], Impressions],
                            tuple[np.ndarray, list[str], list[bool]]]
"""``(graph URL, vocabularies, impressions) -> (X, names, categorical)``: the baseline's
features of those impressions as :func:`trainer.tabular.baseline_features` computes them,
without loading the graph (the app passes ``spark_jobs.baseline_features.features_of``)."""


@dataclass(frozen=True)
class InferencePlan:
    """What the driver checked; every worker gets a copy.

    Attributes:
        cfg: The validated config.
        graph_url: The graph store (absolute when local).
        partitions_url: The shard set, cut from that store version.
        partitions_version: The shard set's ``created_at`` (for cached remote copies).
        parts: Part folder names, part 0 first.
        checkpoint: URL of the checkpoint folder.
        meta: Its ``meta.json``.
        out_url: Evaluation folder, or the export's date folder (set by the caller).
        cutoff: The export's cutoff, seconds (export only).
        trees: The tree baselines' feature rows of both samples (evaluation only; set
            by :func:`evaluate_distributed`).
        backend: Process-group backend.
        rendezvous: Where the workers form their group (a local Ray), else ``None``.
    """

    cfg: Config
    graph_url: str
    partitions_url: str
    partitions_version: str
    parts: list[str]
    checkpoint: str
    meta: dict[str, Any]
    out_url: str
    cutoff: int | None = None
    trees: TreeFeatures | None = None
    backend: str = "gloo"
    rendezvous: tuple[str, int] | None = None


def plan_inference(cfg: Config, workers: int, graph_url: str | None = None,
                   checkpoint: str | None = None) -> InferencePlan:
    """Every check that can fail before a worker starts.

    Raises:
        InputError: No shard set of ``workers`` parts cut from the store at ``graph_url``.
        CheckpointError: No usable checkpoint, one of another graph lineage, or one whose
            attribute vocabularies are not the shard set's (codes would mean other values).
    """
    from trainer.inference import check_lineage, resolve_checkpoint
    from trainer.ray_launch import check_shard_set

    shards = check_shard_set(cfg, workers, graph_url)
    url = resolve_checkpoint(cfg, checkpoint)
    meta = ckpt.read_meta(url)
    check_lineage(url, meta, shards.graph_url, shards.store.manifest)
    vocab = fs.read_json(fs.join(shards.partitions_url, VOCAB_FILE))
    if meta.get("vocab") is not None and meta["vocab"] != vocab:
        differ = sorted(t for t in set(vocab) | set(meta["vocab"])
                        if vocab.get(t) != meta["vocab"].get(t))
        raise ckpt.CheckpointError(
            f"{url}: the checkpoint's attribute vocabularies differ from the shard set's "
            f"{fs.join(shards.partitions_url, VOCAB_FILE)} for {differ}; the shards encode "
            "attributes with other codes (partition again from the model's store, or evaluate "
            "with --workers 1)")
    return InferencePlan(cfg=cfg, graph_url=shards.graph_url,
                         partitions_url=shards.partitions_url,
                         partitions_version=str(shards.manifest.get("created_at")),
                         parts=shards.parts, checkpoint=url, meta=meta, out_url="")


# ---------------------------------------------------------------------- one worker


@dataclass
class InferenceWorker:
    """A rank's shard, the checkpoint's model on it and the distributed sampler.

    Attributes:
        rank: This rank (= its part).
        world_size: Number of ranks (= parts).
        shard: Its part of the graph.
        cfg: The model's training config (:func:`trainer.inference.train_config_of`).
        model: The click model in eval mode.
        source: Batches over the distributed sampler (scoring needs only its
            ``sample``/``model_inputs``; it draws no negatives).
    """

    rank: int
    world_size: int
    shard: PartitionShard
    cfg: TrainConfig
    model: ClickGNN
    source: DistBatchSource

    @property
    def sampler(self) -> DistTemporalSampler:
        return self.source.sampler


def open_worker(plan: InferencePlan, rank: int, world_size: int) -> InferenceWorker:
    """Loads part ``rank``'s shard and the checkpoint's model on it (collective: the
    sampler's constructor checks that every rank agrees)."""
    from trainer.inference import train_config_of
    from trainer.ray_launch import local_shard_folder
    from trainer.shard import load_shard

    torch.set_num_threads(plan.cfg.resources.threads_per_worker)
    shard = load_shard(local_shard_folder(plan.partitions_url, plan.parts[rank],
                                          version=plan.partitions_version), mmap=True)
    if shard.part != rank or shard.num_parts != world_size:
        raise ValueError(f"rank {rank} of {world_size} got shard {shard.part} of {shard.num_parts}")
    t = train_config_of(plan.meta, plan.cfg.train)
    model = build_model(shard, t)
    state = ckpt.read_state(plan.checkpoint)["model"]
    try:
        model.load_state_dict(ckpt.grow_id_tables(model, state)[0])
    except RuntimeError as error:
        raise ckpt.CheckpointError(f"{plan.checkpoint}: parameters do not fit the configured "
                                   f"model (train.model): {str(error).splitlines()[0]}") from None
    model.eval()
    return worker_on(shard, t, model, rank, world_size)


def worker_on(shard: PartitionShard, cfg: TrainConfig, model: ClickGNN, rank: int,
              world_size: int) -> InferenceWorker:
    """An :class:`InferenceWorker` of ``model`` (already on its device) over ``shard``,
    with a sampler of its own (collective)."""
    sampler = DistTemporalSampler(shard, relation_fanouts(cfg, shard.edge_types),
                                  strategy=cfg.strategy, weighted=weighted_sampling(cfg))
    empty = Impressions(*(torch.empty(0, dtype=torch.int64) for _ in range(4)),
                        clicked=torch.empty(0))
    device = next(model.parameters()).device
    source = DistBatchSource(sampler, empty, NegativeSampler(torch.empty(0, dtype=torch.int64)),
                             0.0, shard.num_nodes, bool(model.count_relations), device)
    return InferenceWorker(rank, world_size, shard, cfg, model, source)


def lockstep_steps(rows: int, batch_size: int) -> int:
    """Chunks every rank runs: the most any rank needs (collective)."""
    return all_reduce_int(math.ceil(rows / batch_size), "max")


@torch.no_grad()
def score_owned(worker: InferenceWorker, impressions: Impressions, generator: torch.Generator
                ) -> np.ndarray:
    """Click probabilities of ``impressions`` (this rank's), each at its own time
    (collective; the one-process path is :meth:`trainer.engine.ClickEngine.score`).

    Returns:
        float32 ``[N]``.
    """
    source, batch_size = worker.source, worker.cfg.eval_batch_size

    def forward(user: Tensor, content: Tensor, seed_time: Tensor, position: Tensor) -> Tensor:
        batch = source.sample(user, content, seed_time, generator)
        return click_logits(worker.model, source.model_inputs(batch, user, content, seed_time,
                                                              position))

    return chunked_scores(forward, impressions.user, impressions.content, impressions.time,
                          impressions.position, batch_size,
                          steps=lockstep_steps(len(impressions), batch_size))


@torch.no_grad()
def embed_owned(worker: InferenceWorker, node_type: str, nodes: Tensor, at_time: int,
                batch_size: int, seed: int) -> Tensor:
    """States of ``nodes`` as of ``at_time`` (collective; the one-process path is
    :func:`trainer.inference.embed`).

    Returns:
        float32 ``[N, hidden_dim]``.
    """
    sampler, model = worker.sampler, worker.model
    generator = torch.Generator().manual_seed(seed)

    def states(node: Tensor, at: Tensor) -> Tensor:
        batch = sampler.sample({node_type: (node, at)}, generator=generator)
        model_batch, features = model_inputs(batch, sampler.fetch_features(batch),
                                             worker.shard.num_nodes)
        counts = sampler.activity_counts(node_type, node, at)
        out = model.embed(with_edge_weights(model_batch), features)
        return model.seed_state(node_type, out[node_type][model_batch.seed_local[node_type]],
                                counts)

    times = torch.full_like(nodes, int(at_time))
    return chunked_states(states, nodes, times, batch_size, model.cfg.hidden_dim,
                          steps=lockstep_steps(nodes.numel(), batch_size))


def gather_columns(columns: dict[str, np.ndarray], rank: int) -> dict[str, np.ndarray] | None:
    """Every rank's ``columns`` concatenated on rank 0 (rank order); ``None`` elsewhere."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, columns)
    if rank != 0:
        return None
    return {name: np.concatenate([part[name] for part in gathered]) for name in columns}


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far, bytes (``getrusage``: KiB on Linux,
    bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def gather_peak_rss(rank: int) -> list[int] | None:
    """Every rank's :func:`peak_rss_bytes` on rank 0, in rank order; ``None`` elsewhere
    (collective)."""
    peaks: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(peaks, peak_rss_bytes())
    return [int(p) for p in peaks] if rank == 0 else None


# ---------------------------------------------------------------------- evaluation


def window_sample(store, windows: Windows, window: str, limit: int, generator: torch.Generator,
                  slack_s: int) -> Impressions:
    """The impressions of ``window`` that the one-process evaluation scores: the same
    ``limit`` sample (:func:`trainer.local.subsample`) of the window's impressions in
    :func:`trainer.data.canonical_order`, read from the window's day folders only."""
    from trainer.local import subsample

    table = store.read_edges_arrow(IMPRESSIONS, windows.folders(window, store.days, slack_s),
                                   columns=["src", "dst", "ts_ms", "position", "clicked"])
    impressions = Impressions.from_arrow(table)
    rows = torch.nonzero(windows.mask(window, impressions.time)).view(-1)
    return impressions.take(subsample(rows, limit, generator))


def owned_rows(sample: Impressions, shard: PartitionShard) -> Impressions:
    """The impressions of ``sample`` whose user ``shard``'s part owns, in their order."""
    return sample.take(torch.nonzero(shard.owner("user", sample.user) == shard.part).view(-1))


class DistValidator:
    """Per-epoch validation of distributed training on the workers (collective).

    Every rank draws the validation sample ``--workers 1`` validates on (the validation
    window's impressions, ``train.max_eval_events`` of them with seed ``train.seed + 1``),
    scores those of its users with the model being trained and the distributed sampler,
    and flags its cold users; rank 0 computes the AUCs of the gathered rows
    (:func:`trainer.local.window_aucs`). No rank loads the graph store.

    Args:
        cfg: The run's config.
        shard: This rank's shard.
        store: The graph store (its validation window's impressions are read).
        rank: This rank.
        world_size: Number of ranks.
    """

    def __init__(self, cfg: Config, shard: PartitionShard, store, rank: int, world_size: int):
        t = cfg.train
        windows = split_windows(store.days, t.val_days, t.test_days)
        sample = window_sample(store, windows, "val", t.max_eval_events,
                               torch.Generator().manual_seed(t.seed + 1), cfg.graph.log_day_slack_s)
        self.cfg, self.shard, self.rank, self.world_size = cfg, shard, rank, world_size
        self.owned = owned_rows(sample, shard)
        self.worker: InferenceWorker | None = None

    def __call__(self, model: ClickGNN) -> dict[str, Any] | None:
        """The validation figures on rank 0, ``None`` elsewhere; ``model`` is left in
        the mode it was in."""
        from trainer.local import window_aucs

        t = self.cfg.train
        if self.worker is None:
            self.worker = worker_on(self.shard, t, model, self.rank, self.world_size)
        self.worker.model = model
        was_training = model.training
        model.eval()
        try:
            scores = score_owned(self.worker, self.owned, torch.Generator().manual_seed(t.seed))
        finally:
            model.train(was_training)
        cold_max = self.cfg.evaluate.cold_start_max_interactions
        cold = AsOfCounts(self.worker.sampler, self.shard.edge_types).cold(
            self.owned.user, self.owned.time, cold_max)
        rows = gather_columns({"label": self.owned.clicked.numpy(), "score": scores,
                               "cold": cold.numpy()}, self.rank)
        if rows is None:
            return None
        return window_aucs(rows["label"], rows["score"], rows["cold"], cold_max)


def evaluation_samples(store, cfg: Config) -> tuple[Windows, Impressions, Impressions]:
    """``(windows, fit sample, test sample)``: the impressions the one-process evaluation
    fits its trees on (``evaluate.max_fit_events`` of the validation window, seed
    ``evaluate.seed + 1``) and scores (``evaluate.max_test_events`` of the test window,
    seed ``evaluate.seed``), read from those windows' day folders only.

    Raises:
        InputError: A window has no impressions.
    """
    t, e = cfg.train, cfg.evaluate
    windows = split_windows(store.days, t.val_days, t.test_days)
    fit, test = (window_sample(store, windows, window, limit,
                               torch.Generator().manual_seed(seed), cfg.graph.log_day_slack_s)
                 for window, limit, seed in (("val", e.max_fit_events, e.seed + 1),
                                             ("test", e.max_test_events, e.seed)))
    if len(test) == 0 or len(fit) == 0:
        raise InputError(f"the graph's test window {windows.days['test']} or validation "
                         f"window {windows.days['val']} has no impressions")
    return windows, fit, test


def owned_index(sample: Impressions, shard: PartitionShard) -> Tensor:
    """Positions in ``sample`` of the impressions whose user ``shard``'s part owns."""
    return torch.nonzero(shard.owner("user", sample.user) == shard.part).view(-1)


def day_start_states(worker: InferenceWorker, samples: list[Impressions], batch_size: int,
                     seed: int) -> dict[str, dict[str, np.ndarray]] | None:
    """The embeddings the trees join (:func:`trainer.evaluate.day_start_embeddings`), each
    node embedded by its owner (collective).

    Every rank holds the samples; for each cutoff of their impressions (00:00 UTC of the
    impression's day, :func:`trainer.evaluate.export_cutoff`; the same cutoffs on every
    rank) it embeds the users and contents of those impressions that its part owns, as
    of the cutoff, NaN where the node is not known before it.

    Returns:
        On rank 0, node type -> ``{"cutoff": [M], "node": [M], "state": [M, dim]}`` of
        every rank's nodes; ``None`` elsewhere.
    """
    from trainer.evaluate import export_cutoff

    shard = worker.shard
    cutoffs = export_cutoff(torch.cat([s.time for s in samples]))
    ends = {"user": torch.cat([s.user for s in samples]),
            "content": torch.cat([s.content for s in samples])}
    known = {t: owned_known_from(shard, t) for t in ends}
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {t: [] for t in ends}
    for cutoff in torch.unique(cutoffs).tolist():
        for node_type, nodes in ends.items():
            unique = torch.unique(nodes[cutoffs == cutoff])
            mine = unique[shard.owner(node_type, unique) == shard.part]
            states = embed_owned(worker, node_type, mine, cutoff, batch_size, seed).numpy()
            states[~(known[node_type][shard.local_row(node_type, mine)] < cutoff).numpy()] = np.nan
            parts[node_type].append((np.full(mine.numel(), cutoff, dtype=np.int64),
                                     mine.numpy(), states))
    gathered = {t: gather_columns({name: np.concatenate([p[i] for p in parts[t]])
                                   for i, name in enumerate(("cutoff", "node", "state"))},
                                  worker.rank) for t in ends}
    return None if worker.rank != 0 else gathered


def day_start_features(states: dict[str, dict[str, np.ndarray]], sample: Impressions
                       ) -> np.ndarray:
    """The day-start embedding columns of ``sample``'s impressions from the gathered
    :func:`day_start_states`: user and content vectors and their dot product,
    ``[N, 2 * dim + 1]`` as :func:`trainer.evaluate.day_start_embeddings`."""
    from clickgraph.core.timeline import SECONDS_PER_DAY
    from trainer.evaluate import export_cutoff

    day = (export_cutoff(sample.time) // SECONDS_PER_DAY).numpy()
    blocks = []
    for node_type, nodes in (("user", sample.user.numpy()), ("content", sample.content.numpy())):
        table = states[node_type]
        span = int(max(table["node"].max(initial=0), nodes.max(initial=0))) + 1
        keys = table["cutoff"] // SECONDS_PER_DAY * span + table["node"]
        order = np.argsort(keys, kind="stable")
        wanted = day * span + nodes
        found = order[np.searchsorted(keys[order], wanted).clip(max=max(len(keys) - 1, 0))]
        if len(wanted) and not np.array_equal(keys[found], wanted):
            raise RuntimeError(f"no day-start {node_type} embedding gathered for some "
                               "impressions")  # day_start_states embeds every one
        blocks.append(table["state"][found])
    return np.hstack([*blocks, (blocks[0] * blocks[1]).sum(axis=1, keepdims=True)])


def evaluate_part(plan: InferencePlan, rank: int, world_size: int, log=None
                  ) -> dict[str, Any] | None:
    """One rank's share of the distributed evaluation (collective, module docstring).

    Returns:
        On rank 0 the evaluation written to ``plan.out_url`` (``evaluation.json``,
        ``scores.parquet``, ``_MANIFEST.json``); ``None`` on the others.

    Raises:
        ValueError: ``plan.trees`` is not set, or not of the samples' sizes.
    """
    from clickgraph.core.graph_store import open_graph_store
    from trainer.evaluate import _write, score_trees, summary_line, window_metrics

    log = log if rank == 0 and log is not None else (lambda _: None)
    started = time.perf_counter()
    e, trees = plan.cfg.evaluate, plan.trees
    store = open_graph_store(plan.graph_url)
    windows, fit, sample = evaluation_samples(store, plan.cfg)
    if trees is None or len(trees.fit) != len(fit) or len(trees.test) != len(sample):
        raise ValueError("the plan lacks the trees' feature rows of the evaluation's samples "
                         "(evaluate_distributed computes them)")
    worker = open_worker(plan, rank, world_size)
    index = owned_index(sample, worker.shard)
    owned = sample.take(index)
    load_seconds = time.perf_counter() - started
    log(f"evaluate: {world_size} workers; scoring {len(sample):,} test impressions "
        f"({', '.join(windows.days['test'])}) by their users' parts; rank 0 owns {len(owned):,}")
    mark = time.perf_counter()
    scores = score_owned(worker, owned, torch.Generator().manual_seed(e.seed))
    past = AsOfCounts(worker.sampler, worker.shard.edge_types).interactions(owned.user, owned.time)
    score_seconds = time.perf_counter() - mark
    mark = time.perf_counter()
    log(f"evaluate: day-start embeddings of the {len(fit):,} fit and {len(sample):,} test "
        "impressions' users and contents, each by its owner")
    states = day_start_states(worker, [fit, sample], e.embedding_batch_size, e.seed)
    embedding_seconds = time.perf_counter() - mark
    rows = gather_columns({"row": index.numpy(), "user": owned.user.numpy(),
                           "content": owned.content.numpy(), "time": owned.time.numpy(),
                           "position": owned.position.numpy(), "label": owned.clicked.numpy(),
                           "past": past.numpy(), "gnn": scores,
                           "rank": np.full(len(owned), rank, dtype=np.int32)}, rank)
    if rows is None:
        gather_peak_rss(rank)  # once rank 0 has computed the figures
        return None
    merged = Impressions(*(torch.from_numpy(rows[k]) for k in ("user", "content", "time",
                                                               "position", "label")))
    order = canonical_order(merged).numpy()  # the one-process path's row order
    rows = {name: values[order] for name, values in rows.items()}
    mark = time.perf_counter()
    tree_scores, iterations = score_trees(
        plan.cfg, (trees.fit, day_start_features(states, fit), fit.clicked.numpy()),
        (trees.test[rows["row"]], day_start_features(states, sample.take(
            torch.from_numpy(rows["row"])))), trees.categorical)
    tree_seconds = time.perf_counter() - mark
    result, columns = window_metrics(rows["label"], {"gnn": rows["gnn"], **tree_scores},
                                     rows["past"], rows["time"], rows["user"], rows["content"],
                                     e.cold_start_max_interactions)
    result.update({
        "test_days": windows.days["test"], "test_start": windows.test_start,
        "fit_days": windows.days["val"], "fit_start": windows.val_start,
        "fit_events": len(fit), "baseline_features": trees.names,
        "embedding_dim": int(worker.model.cfg.hidden_dim),
        "embedding_features": e.embedding_features, "trees": iterations,
        "workers": world_size,
        "events_per_worker": np.bincount(rows["rank"], minlength=world_size).tolist(),
        "model": {"checkpoint": plan.checkpoint, "run": plan.meta.get("run"),
                  "global_step": plan.meta.get("global_step"),
                  "last_event_time": plan.meta.get("last_event_time"),
                  "graph_version": plan.meta.get("graph_version")},
        "graph": {"graph_created_at": store.manifest.get("created_at"),
                  "config_hash": store.manifest.get("config_hash"),
                  "format_version": store.manifest.get("format_version")},
        "seconds": {"load": round(load_seconds, 2), "score": round(score_seconds, 2),
                    "embeddings": round(embedding_seconds, 2),
                    "fit_trees": round(tree_seconds, 2),
                    "total": round(time.perf_counter() - started, 2)},
    })
    result["peak_rss_bytes"] = gather_peak_rss(rank)
    out_url = plan.out_url
    _write(out_url, result, columns)
    result["out"] = out_url
    result["scores"] = fs.join(out_url, "scores.parquet")
    log(summary_line(result) + f" -> {out_url}")
    return result


# ---------------------------------------------------------------------- export


def owned_known_from(shard: PartitionShard, node_type: str) -> Tensor:
    """int64 ``[owned]``: when each owned node is known to exist, seconds
    (:func:`clickgraph.core.vocab.known_from`: its creation time, else its first edge).

    The shard holds every edge of an owned node: its in-edges and, through the reverse
    relations, its out-edges.
    """
    from clickgraph.core.vocab import NEVER

    owned = shard.owned[node_type].numel()
    created = shard.features[node_type].created_time
    known = torch.full((owned,), NEVER, dtype=torch.int64)
    if created is not None:
        known = torch.where(created > 0, created.to(torch.int64), known)
    for (_, _, dst), csr in shard.csr.items():
        if dst != node_type or csr.num_edges == 0:
            continue
        degree = csr.indptr[1:] - csr.indptr[:-1]
        row = torch.repeat_interleave(torch.arange(owned), degree)
        known = known.scatter_reduce(0, row, csr.edge_time.to(torch.int64), "amin")
    return known


def owned_raw_ids(graph_url: str, node_type: str, ids: Tensor) -> list[str]:
    """``raw_id`` of dense ids ``ids`` (ascending), reading only their rows of the store's
    node table.

    Raises:
        InputError: Some id is not in the table (the store changed under the export).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from clickgraph.core.graph_store import open_graph_store, read_table

    table = read_table(open_graph_store(graph_url).node_url(node_type), ["id", "raw_id"],
                       pc.field("id").isin(pa.array(ids.numpy(), pa.int64()))).sort_by("id")
    if not np.array_equal(table.column("id").to_numpy(), ids.numpy()):
        raise InputError(f"{graph_url}: node table {node_type!r} lacks some of the ids of the "
                         "shard set; the store changed during the export")
    return table.column("raw_id").to_pylist()


def part_file(node_type: str, rank: int) -> str:
    """Where rank ``rank`` writes its ``node_type`` embeddings in an export folder: one
    parquet dataset folder per type (``user.parquet/``, read whole by pyarrow or Spark)."""
    return f"{node_type}.parquet/part-{rank:05d}.parquet"


def export_part(plan: InferencePlan, rank: int, world_size: int, log=None
                ) -> dict[str, Any] | None:
    """One rank's share of the distributed export to ``plan.out_url`` (collective).

    Rank 0 opens the staging folder (:func:`clickgraph.core.fs.staged_output`) and tells
    the others where it is; every rank writes its own files of each type there; rank 0,
    once all have written, computes the drift and writes the manifest last, then swaps
    the folder into place.

    Returns:
        The manifest on rank 0, ``None`` on the others.
    """
    if rank != 0:
        _export_into(plan, rank, world_size, None, lambda _: None)
        return None
    with fs.staged_output(plan.out_url) as staging:
        return _export_into(plan, rank, world_size, staging, log or (lambda _: None))


def _export_into(plan: InferencePlan, rank: int, world_size: int, staging: str | None, log
                 ) -> dict[str, Any] | None:
    from clickgraph.core.graph_store import open_graph_store
    from clickgraph.core.manifest import write_manifest
    from trainer.inference import model_version

    started = time.perf_counter()
    cutoff, ev = int(plan.cutoff), plan.cfg.evaluate
    store = open_graph_store(plan.graph_url)
    if rank == 0:
        log_model(plan.checkpoint, plan.meta, plan.graph_url, store.days, cutoff, log)
    box = [staging]
    dist.broadcast_object_list(box, src=0)
    staging = box[0]
    worker = open_worker(plan, rank, world_size)
    version, graph = model_version(plan.checkpoint, plan.meta), graph_version_of(plan.graph_url,
                                                                                   store)
    metadata = {"cutoff": cutoff_iso(cutoff), "cutoff_seconds": cutoff, "model": version,
                "graph": graph}
    counts, parts = {}, {}
    for node_type in EXPORTED_TYPES:
        t0 = time.perf_counter()
        ids = worker.shard.owned[node_type][owned_known_from(worker.shard, node_type) < cutoff]
        states = embed_owned(worker, node_type, ids, cutoff, ev.embedding_batch_size, ev.seed)
        if ids.numel():
            url = fs.join(staging, part_file(node_type, rank))
            filesystem, path = fs.filesystem(url)
            filesystem.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            write_parquet(url, embedding_table(ids, owned_raw_ids(plan.graph_url, node_type, ids),
                                               states, cutoff, metadata))
        written: list[Any] = [None] * world_size
        dist.all_gather_object(written, int(ids.numel()))
        counts[node_type] = sum(written)
        if counts[node_type] == 0:  # the same on every rank
            raise InputError(f"no {node_type} exists before cutoff {cutoff_iso(cutoff)} in "
                             f"{plan.graph_url}; pick a later cutoff")
        parts[node_type] = [part_file(node_type, r) for r, n in enumerate(written) if n]
        log(f"export: {node_type}: {counts[node_type]:,} embeddings as of the cutoff, "
            f"{written} per worker ({time.perf_counter() - t0:.1f} s)")
    dist.barrier()  # every part is written before they are read back
    recommendations = export_recommendations(plan, worker, staging, metadata, log)
    if rank != 0:
        gather_peak_rss(rank)
        return None
    controls, controlled, table = recommendations
    write_parquet(fs.join(staging, RECOMMENDATIONS_FILE), table)
    root_url = plan.out_url.rstrip("/").rsplit("/", 1)[0]
    # The drift reads both versions' embeddings (not the graph) on rank 0, when there is
    # a previous version to compare with.
    tables = ({t: read_parquet(fs.join(staging, f"{t}.parquet")) for t in EXPORTED_TYPES}
              if previous_version(root_url, cutoff) is not None else {})
    drift, drift_reason = drift_against_previous(root_url, cutoff, tables, log)
    del tables
    files = {t: f"{t}.parquet" for t in EXPORTED_TYPES}
    files["recommendations"] = RECOMMENDATIONS_FILE
    manifest = export_manifest(
        plan.cfg, DIST_FORMAT_VERSION, cutoff, version, graph, counts=counts,
        dim=int(worker.model.cfg.hidden_dim), files=files, parts=parts, workers=world_size,
        drift=drift, drift_reason=drift_reason, recommendations=controls,
        recommendations_controlled=controlled, peak_rss_bytes=gather_peak_rss(rank))
    write_manifest(staging, manifest)
    log(f"export: wrote {', '.join(f'{n:,} {t}' for t, n in counts.items())} embeddings "
        f"(dim {manifest['dim']}) in {sum(len(p) for p in parts.values())} files -> "
        f"{plan.out_url} in {time.perf_counter() - started:.1f} s")
    return manifest


def owned_category_links(shard: PartitionShard, cutoff: int) -> tuple[np.ndarray, np.ndarray]:
    """``(content, category)`` int64 arrays: the links from content to the categories this
    part owns made before ``cutoff`` (the shard holds every in-edge of an owned category)."""
    from trainer.recommend import CATEGORY_RELATION

    csr = shard.csr.get(CATEGORY_RELATION)
    if csr is None or csr.num_edges == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    degree = csr.indptr[1:] - csr.indptr[:-1]
    category = shard.owned[CATEGORY_RELATION[2]].repeat_interleave(degree)
    visible = csr.edge_time < cutoff
    return (csr.neighbor[visible].to(torch.int64).numpy(),
            category[visible].to(torch.int64).numpy())


@torch.no_grad()
def dist_pair_context(worker: InferenceWorker, users: Tensor, contents: Tensor, cutoff: int,
                      seed: int = 0) -> PairContext | None:
    """The :class:`~trainer.inference.PairContext` of ``users`` and ``contents`` as seeds at
    ``cutoff`` drawn by the distributed sampler (collective: ranks without seeds pass
    empty tensors and serve the others); ``None`` on a rank without seeds. The one-process
    context draws with the same ``seed``."""
    sampler = worker.sampler
    at = {t: torch.full((n.numel(),), int(cutoff), dtype=torch.int64)
          for t, n in (("user", users), ("content", contents))}
    batch = sampler.sample({"user": (users.to(torch.int64), at["user"]),
                            "content": (contents.to(torch.int64), at["content"])},
                           generator=torch.Generator().manual_seed(seed), hops=CONTEXT_HOPS)
    model_batch, features = model_inputs(batch, sampler.fetch_features(batch),
                                         worker.shard.num_nodes)
    if users.numel() + contents.numel() == 0:
        return None
    device = next(worker.model.parameters()).device
    return PairContext.of_sample(worker.model, batch_to(model_batch, device),
                                 {t: f.to(device) for t, f in features.items()})


def _read_rows(url: str, columns: list[str], ids: np.ndarray | None = None):
    """Columns of an export folder's type (all parts), sorted by ``id``; only the rows of
    ``ids`` when given."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    filesystem, path = fs.filesystem(url)
    dataset = ds.dataset(path, filesystem=filesystem, format="parquet")
    where = None if ids is None else ds.field("id").isin(pa.array(ids, pa.int64()))
    return dataset.to_table(columns=columns, filter=where).sort_by("id")


def content_types(graph_url: str, num_content: int) -> list[str]:
    """``content_type`` of every content node, indexed by dense id, from the store's
    content node table (the catalogue's attributes, not the graph).

    Raises:
        InputError: The table's ids are not ``0 .. num_content - 1`` (another store).
    """
    from clickgraph.core.graph_store import open_graph_store, read_table

    table = read_table(open_graph_store(graph_url).node_url("content"),
                       ["id", "content_type"]).sort_by("id")
    if not np.array_equal(table.column("id").to_numpy(), np.arange(num_content)):
        raise InputError(f"{graph_url}: node table 'content' does not hold ids 0..{num_content - 1} "
                         "of the shard set; the store changed during the export")
    return table.column("content_type").to_pylist()


def export_recommendations(plan: InferencePlan, worker: InferenceWorker, staging: str | None,
                           metadata: dict[str, Any], log
                           ) -> tuple[dict[str, Any], dict[str, Any], Any] | None:
    """The one-process export's recommendation controls (:func:`trainer.export.
    recommendation_controls`) after every part is written (collective).

    Rank 0 reads back from the parts in ``staging`` every user id, the sampled users'
    embeddings and the catalogue's; the content types come from the store's content
    node table, the categories from the parts that own them (gathered links); a model
    with history attention scores pairs with a context drawn by the distributed sampler
    (:func:`dist_pair_context`). No rank loads more of the graph than its shard.

    Returns:
        On rank 0 ``(uncontrolled figures, controlled figures, recommendations table)``;
        ``None`` elsewhere.
    """
    from trainer.recommend import PairScorer, lowest_category, sample_users

    cutoff, ev, rank = int(plan.cutoff), plan.cfg.evaluate, worker.rank
    links: list[Any] = [None] * worker.world_size
    dist.all_gather_object(links, owned_category_links(worker.shard, cutoff))
    history = bool(worker.model.history)
    empty = torch.empty(0, dtype=torch.int64)
    if rank != 0:
        if history:
            dist_pair_context(worker, empty, empty, cutoff)
        return None
    num_content = worker.shard.num_nodes["content"]
    category = lowest_category(num_content,
                               torch.from_numpy(np.concatenate([c for c, _ in links])),
                               torch.from_numpy(np.concatenate([k for _, k in links])))
    user_url, content_url = (fs.join(staging, f"{t}.parquet") for t in EXPORTED_TYPES)
    users = torch.from_numpy(_read_rows(user_url, ["id"]).column("id").to_numpy().copy())
    chosen = sample_users(users, ev.recommend_users, ev.seed)
    del users
    sampled = _read_rows(user_url, ["id", "raw_id", "embedding"], chosen.numpy())
    if not np.array_equal(sampled.column("id").to_numpy(), chosen.numpy()):
        raise InputError(f"{user_url}: the parts lack some sampled users' rows")
    catalogue_table = _read_rows(content_url, ["id", "raw_id", "embedding"])
    catalogue = torch.from_numpy(catalogue_table.column("id").to_numpy())
    catalogue_states = torch.from_numpy(embedding_matrix(catalogue_table))
    user_states = torch.from_numpy(embedding_matrix(sampled))
    context = dist_pair_context(worker, chosen, catalogue, cutoff) if history else None
    net = worker.model
    device = next(net.parameters()).device

    def probabilities(user_state: Tensor, content_state: Tensor, position: Tensor,
                      seed_time: Tensor, summaries: list[Tensor]) -> Tensor:
        return torch.sigmoid(net.score(user_state.to(device), content_state.to(device),
                                       position.to(device), seed_time.to(device),
                                       [t.to(device) for t in summaries])).cpu()

    def context_of(users: Tensor, contents: Tensor, _: int) -> PairContext:
        if not (torch.equal(users, chosen) and torch.equal(contents, catalogue)):
            raise ValueError("the recommendation controls scored other seeds than the "
                             "distributed sampler drew their context for")
        return context

    scorer = PairScorer(probabilities, context_of if history else None)
    with torch.no_grad():
        controls, controlled, recs = recommendation_controls(
            scorer, cutoff, chosen, user_states, catalogue, catalogue_states,
            content_types(plan.graph_url, num_content), category, ev, log)
    table = recommendations_table(
        recs, dict(zip(sampled.column("id").to_pylist(), sampled.column("raw_id").to_pylist())),
        dict(zip(catalogue_table.column("id").to_pylist(),
                 catalogue_table.column("raw_id").to_pylist())), metadata)
    return controls, controlled, table


# ---------------------------------------------------------------------- launcher


def evaluate_distributed(cfg: Config, workers: int, baseline_features: BaselineFeatures,
                         graph_url: str | None = None, checkpoint: str | None = None,
                         out_url: str | None = None, log=print,
                         progress_to_stderr: bool = False) -> dict[str, Any]:
    """``clickgraph evaluate --workers N``: the three models' figures on the test window,
    on ``workers`` workers (module docstring); returns ``evaluation.json`` plus ``out``
    and ``scores`` URLs.

    Args:
        baseline_features: Computes the trees' features of the two samples here, before
            the workers start (:data:`BaselineFeatures`; the app runs a Spark job).
        progress_to_stderr: The workers' progress lines go to stderr (stdout is kept
            for ``--json``).
    """
    from clickgraph.core.graph_store import open_graph_store

    plan = plan_inference(cfg, workers, graph_url, checkpoint)
    store = open_graph_store(plan.graph_url)
    plan = dataclasses.replace(plan, out_url=absolute(
        out_url or fs.join(cfg.paths.stage("eval"), sorted(store.days)[-1])))
    mark = time.perf_counter()
    plan = dataclasses.replace(plan, trees=tree_features(plan, baseline_features, log))
    log(f"evaluate: {len(plan.trees.names)} tree features in "
        f"{time.perf_counter() - mark:.1f} s; {plan.checkpoint} on {workers} workers over "
        f"{plan.partitions_url}")
    return run_on_workers(plan, "evaluate", workers, log, progress_to_stderr)


def tree_features(plan: InferencePlan, baseline_features: BaselineFeatures, log=print
                  ) -> TreeFeatures:
    """The trees' feature rows of the evaluation's two samples (:func:`evaluation_samples`),
    computed by ``baseline_features`` in one call, with the shard set's vocabularies
    (the checkpoint's, :func:`plan_inference`)."""
    from clickgraph.core.graph_store import open_graph_store

    _, fit, test = evaluation_samples(open_graph_store(plan.graph_url), plan.cfg)
    log(f"evaluate: the trees' features of {len(fit):,} validation and {len(test):,} test "
        "impressions, as of each impression, from the store's edge tables")
    both = Impressions(*(torch.cat([getattr(fit, f), getattr(test, f)]) for f in
                         ("user", "content", "time", "position", "clicked")))
    x, names, categorical = baseline_features(
        plan.graph_url, fs.read_json(fs.join(plan.partitions_url, VOCAB_FILE)), both)
    if x.shape[0] != len(both):
        raise ValueError(f"baseline_features returned {x.shape[0]} rows for {len(both)} "
                         "impressions")
    return TreeFeatures(fit=x[:len(fit)], test=x[len(fit):], names=names,
                        categorical=categorical)


def export_distributed(cfg: Config, workers: int, cutoff: str | None = None,
                       checkpoint: str | None = None, graph_url: str | None = None,
                       out_url: str | None = None, log=print,
                       progress_to_stderr: bool = False) -> dict[str, Any]:
    """``clickgraph export --workers N``: user and content embeddings as of ``cutoff``
    (default: the end of the store's last day), written by ``workers`` workers; returns
    the manifest. ``progress_to_stderr`` as in :func:`evaluate_distributed`."""
    from clickgraph.core.graph_store import open_graph_store
    from trainer.export import check_cutoff, parse_cutoff, version_name

    cutoff_s = parse_cutoff(cutoff) if cutoff is not None else None  # fail before starting
    plan = plan_inference(cfg, workers, graph_url, checkpoint)
    cutoff_s = check_cutoff(cutoff_s, open_graph_store(plan.graph_url).days, plan.graph_url)
    root_url = (out_url or cfg.paths.stage("embeddings")).rstrip("/")
    plan = dataclasses.replace(plan, cutoff=cutoff_s,
                               out_url=absolute(fs.join(root_url, version_name(cutoff_s))))
    return run_on_workers(plan, "export", workers, log, progress_to_stderr)


def run_on_workers(plan: InferencePlan, task: str, workers: int, log=print,
                   progress_to_stderr: bool = False) -> dict[str, Any]:
    """Runs ``task`` (``"evaluate"`` or ``"export"``) on ``workers`` Ray Train workers,
    one per part; returns rank 0's result. Rank 0's progress lines reach the driver's
    stdout (Ray forwards them), or its stderr with ``progress_to_stderr``."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainer.distributed import find_free_port
    from trainer.ray_launch import choose_placement, connect_ray, own_group_torch_config

    cfg = plan.cfg
    on_loopback = connect_ray(cfg, log)
    # Inference is sampling-bound (CPU): GPUs only when asked for.
    placement = choose_placement("cuda" if cfg.resources.device == "cuda" else "cpu",
                                 float(ray.cluster_resources().get("GPU", 0)), workers)
    rendezvous = ("127.0.0.1", find_free_port("127.0.0.1")) if on_loopback else None
    plan = dataclasses.replace(plan, backend=placement.backend, rendezvous=rendezvous)
    trainer = TorchTrainer(
        _worker_loop, train_loop_config={"plan": plan, "task": task,
                                         "stderr": progress_to_stderr},
        torch_config=(own_group_torch_config(placement.backend) if on_loopback
                      else TorchConfig(backend=placement.backend)),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=placement.use_gpu,
                                     resources_per_worker={
                                         "CPU": cfg.resources.threads_per_worker,
                                         **({"GPU": 1} if placement.use_gpu else {})}),
        # Ray Train's own run records (no checkpoints here) go to a scratch folder
        run_config=RunConfig(name=task, storage_path=tempfile.mkdtemp(prefix="clickgraph-")))
    trainer.fit()
    # What rank 0 wrote, read back from where it went (any machine of the cluster).
    if task == "export":
        return fs.read_json(fs.join(plan.out_url, fs.MANIFEST_NAME))
    result = fs.read_json(fs.join(plan.out_url, "evaluation.json"))
    return {**result, "out": plan.out_url, "scores": fs.join(plan.out_url, "scores.parquet")}


def _worker_loop(config: dict[str, Any]) -> None:
    from trainer.ray_launch import _console, worker_group

    plan: InferencePlan = config["plan"]
    with worker_group(plan.backend, plan.rendezvous) as (rank, world_size, _):
        run = {"evaluate": evaluate_part, "export": export_part}[config["task"]]
        run(plan, rank, world_size, log=_to_stderr if config["stderr"] else _console)


def _to_stderr(line: str) -> None:
    """A worker's progress line on its stderr, which Ray forwards to the driver's."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


