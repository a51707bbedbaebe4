"""A trained model outside training: load a checkpoint, embed nodes as of a time, score pairs.

Used by ``clickgraph evaluate``, ``clickgraph export`` and the recommendation controls.
Everything runs in one process on the whole graph store (the single-process sampler), with
the checkpoint's attribute vocabularies, so codes mean what they meant in training.

An embedding "as of" time ``t`` is the model's state of the node with ``t`` as the root
seed time: only edges strictly earlier than ``t`` are sampled and the node's age is taken
at ``t``, so nothing from ``t`` on can reach it (the sampler's rule, docs/training.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from clickgraph.core.config import Config, TrainConfig
from trainer import checkpoint as ckpt
from trainer.data import GraphData, load_graph_data
from trainer.engine import ClickEngine, with_edge_weights
from trainer.scoring import chunked_states


@dataclass
class TrainedModel:
    """A checkpoint's model on a graph store.

    Attributes:
        engine: Single-process engine holding the loaded parameters (eval mode).
        meta: The checkpoint's ``meta.json``.
        checkpoint: URL of the checkpoint folder.
    """

    engine: ClickEngine
    meta: dict[str, Any]
    checkpoint: str

    @property
    def data(self) -> GraphData:
        return self.engine.data

    @property
    def version(self) -> dict[str, Any]:
        """What produced the model: checkpoint, run, step, graph version trained on."""
        return model_version(self.checkpoint, self.meta)


def model_version(checkpoint: str, meta: dict[str, Any]) -> dict[str, Any]:
    """What produced a model: checkpoint, run, step, graph version trained on."""
    return {"checkpoint": checkpoint, "run": meta.get("run"),
            "global_step": meta.get("global_step"),
            "last_event_time": meta.get("last_event_time"),
            "graph_version": meta.get("graph_version")}


def resolve_checkpoint(cfg: Config, checkpoint: str | None = None) -> str:
    """``checkpoint``, else ``evaluate.checkpoint``, else the latest finished run's."""
    return checkpoint or cfg.evaluate.checkpoint or ckpt.find_latest(cfg.paths.stage("train"))


def train_config_of(meta: dict[str, Any], cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the model sizes the checkpoint was trained with (when recorded)."""
    recorded = meta.get("model_config")
    if not recorded:
        return cfg
    known = {f.name for f in dataclasses.fields(cfg.model)}
    # checkpoints from before activity counts existed were trained without them
    recorded = {"activity_counts": False, **recorded}
    model = dataclasses.replace(cfg.model, **{k: v for k, v in recorded.items() if k in known})
    return dataclasses.replace(cfg, model=model)


def check_lineage(url: str, meta: dict[str, Any], graph_url: str, manifest: dict[str, Any]
                  ) -> None:
    """Refuses a store of another lineage than checkpoint ``url`` (``meta``) trained on:
    it must have the same build config and days that extend the checkpoint's.

    Raises:
        CheckpointError: Another ``config_hash``, or days that do not extend the model's.
    """
    trained_on = meta.get("graph_version", {})
    if trained_on.get("config_hash") != manifest.get("config_hash"):
        raise ckpt.CheckpointError(
            f"{url}: trained on a graph built with config_hash {trained_on.get('config_hash')}, "
            f"{graph_url} was built with {manifest.get('config_hash')}")
    days = sorted(manifest.get("days", []))
    if days[:len(trained_on.get("days", []))] != list(trained_on.get("days", [])):
        raise ckpt.CheckpointError(f"{url}: the graph's days {days} do not extend the days the "
                                   f"model was trained on, {trained_on.get('days')}")


def load_trained(cfg: Config, graph_url: str | None = None, checkpoint: str | None = None,
                 device: str = "cpu") -> TrainedModel:
    """Load a checkpoint onto a graph store.

    The store must be of the checkpoint's lineage: the same build config and days that
    extend the checkpoint's (a model of yesterday scores today's store).

    Raises:
        CheckpointError: No checkpoint, an unreadable one, another graph lineage, or
            parameters that do not fit the model the config describes.
    """
    from clickgraph.core.graph_store import open_graph_store

    # As in training: OpenMP threads beyond the cores a worker is given spin against
    # each other (scoring ran several times slower with 2 threads on a busy 2-core VM).
    torch.set_num_threads(cfg.resources.threads_per_worker)
    url = resolve_checkpoint(cfg, checkpoint)
    meta = ckpt.read_meta(url)
    graph_url = graph_url or cfg.paths.stage("graph")
    check_lineage(url, meta, graph_url, open_graph_store(graph_url).manifest)
    state = ckpt.read_state(url)
    data = load_graph_data(graph_url, vocab=meta.get("vocab"))
    engine = ClickEngine(data, train_config_of(meta, cfg.train), device)
    try:
        engine.model.load_state_dict(ckpt.grow_id_tables(engine.model, state["model"])[0])
    except RuntimeError as error:
        raise ckpt.CheckpointError(f"{url}: parameters do not fit the configured model "
                                   f"(train.model): {str(error).splitlines()[0]}") from None
    engine.model.eval()
    return TrainedModel(engine=engine, meta=meta, checkpoint=url)


@torch.no_grad()
def embed(model: TrainedModel, node_type: str, nodes: Tensor, at_time: Tensor | int,
          batch_size: int = 4096, seed: int = 0, log=None, log_every_s: float = 30.0) -> Tensor:
    """States of ``nodes`` (the embeddings) as of ``at_time`` (seconds, scalar or ``[N]``).

    Deterministic for a given ``seed`` (uniform neighbour sampling draws from it). ``log``
    gets a progress line (done, rate, ETA) every ``log_every_s`` seconds.

    Returns:
        float32 ``[N, hidden_dim]`` on the CPU.
    """
    engine = model.engine
    engine.model.eval()
    nodes = nodes.to(torch.int64)
    times = (at_time.to(torch.int64) if isinstance(at_time, Tensor)
             else torch.full_like(nodes, int(at_time)))
    generator = torch.Generator().manual_seed(seed)

    def states(node_chunk: Tensor, time_chunk: Tensor) -> Tensor:
        node_chunk, time_chunk = node_chunk.to(engine.device), time_chunk.to(engine.device)
        batch = engine.sampler.sample({node_type: (node_chunk, time_chunk)}, generator=generator)
        states = engine.model.embed(with_edge_weights(batch), engine.features)
        counts = engine.sampler.activity_counts(node_type, node_chunk, time_chunk)
        return engine.model.seed_state(node_type, states[node_type][batch.seed_local[node_type]],
                                       counts)

    return chunked_states(states, nodes, times, batch_size, engine.model.cfg.hidden_dim,
                          log=log, log_every_s=log_every_s, unit=f"{node_type} nodes")


@torch.no_grad()
def score_pairs(model: TrainedModel, user_state: Tensor, content_state: Tensor,
                position: Tensor, seed_time: Tensor, summaries: list[Tensor] = ()) -> Tensor:
    """Click probabilities from precomputed user and content states (``[B]`` each row)
    and, for a model with history attention, the pairs' summaries (:class:`PairContext`)."""
    engine = model.engine
    logits = engine.model.score(user_state.to(engine.device), content_state.to(engine.device),
                                position.to(engine.device), seed_time.to(engine.device),
                                [t.to(engine.device) for t in summaries])
    return torch.sigmoid(logits).cpu()


# hops a PairContext samples: the history attention reads the seeds' hop-1 edges only
CONTEXT_HOPS = 1


class PairContext:
    """What a model with history attention needs to score many ``(user, content)`` pairs
    as of one time: one sampled neighbourhood of the users and the contents as seeds at
    ``cutoff`` (strictly earlier edges only, as every sample), from which each pair's
    candidate-aware summaries are computed (:meth:`ClickGNN.summaries`).

    The summaries read only the seeds' hop-1 edges and their sources' initial states, so
    the context samples one hop (:data:`CONTEXT_HOPS`) and runs no message passing: the
    same summaries as a full sample, at a fraction of its memory (the seeds are a
    whole catalogue)."""

    def __init__(self, model: TrainedModel, users: Tensor, contents: Tensor, cutoff: int,
                 seed: int = 0):
        engine = model.engine
        at = {t: torch.full((n.numel(),), int(cutoff), dtype=torch.int64, device=engine.device)
              for t, n in (("user", users), ("content", contents))}
        batch = engine.sampler.sample({"user": (users.to(engine.device), at["user"]),
                                       "content": (contents.to(engine.device), at["content"])},
                                      generator=torch.Generator().manual_seed(seed),
                                      hops=CONTEXT_HOPS)
        self._set(engine.model, batch, engine.features)

    @classmethod
    def of_sample(cls, net, batch, features) -> PairContext:
        """The context of a sample already drawn (the users' and contents' seeds at the
        cutoff, in that order, :data:`CONTEXT_HOPS` hops), e.g. by the distributed
        sampler, with its ``features``."""
        context = cls.__new__(cls)
        context._set(net, batch, features)
        return context

    def _set(self, net, batch, features) -> None:
        self.net = net
        self.batch = with_edge_weights(batch)
        self.initial, self.time_codes = self.net.initial_states(self.batch, features)

    def summaries(self, user_state: Tensor, content_state: Tensor, user_index: Tensor,
                  content_index: Tensor) -> list[Tensor]:
        """Summaries of pairs ``(users[user_index[i]], contents[content_index[i]])`` with
        their states ``user_state[i]``, ``content_state[i]``."""
        device = self.batch.seed_local["user"].device
        return self.net.summaries(user_state.to(device), content_state.to(device),
                                  self.batch.seed_local["user"][user_index.to(device)],
                                  self.batch.seed_local["content"][content_index.to(device)],
                                  self.batch, self.initial, self.time_codes)


def existing_nodes(data: GraphData, node_type: str, cutoff: int) -> Tensor:
    """Nodes of ``node_type`` known strictly before ``cutoff`` (seconds): created before it,
    or, without a creation time, with an edge before it (:func:`trainer.data.known_from`).
    """
    if node_type not in ("user", "content"):
        raise ValueError(f"embeddings are exported for user and content, not {node_type!r}")
    return torch.nonzero(data.known_from[node_type] < cutoff).view(-1)
