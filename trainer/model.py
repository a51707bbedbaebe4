"""The time-encoded heterogeneous GNN that scores (user, content, time, context) clicks.

Node identity with an inductive fallback: users, content, brands and categories have a
learned vector per node (:data:`clickgraph.core.vocab.ID_EMBEDDING_TYPES`), added to the
representation from their static attributes and their sampled temporal neighbourhood.
The vectors start at zero and a node's row moves only when the node is in a training
batch, so a node created after the checkpoint (an id beyond the table, or a row never
trained) is represented by its attributes and neighbours alone; ``id_dropout`` drops the
vector of a share of training rows so that this fallback is trained too.

The click logit reads the user and content states, their product, the impression's
context, two candidate-aware summaries (:mod:`trainer.history`: the candidate attending
over the user's recent history, the user over the content's recent audience) and, with
``pair_score``, the trained pair term ``u . c / sqrt(hidden_dim)``: the dot product of
the exported vectors (docs/export.md).

Edges enter message passing with two things known at the edge's time: its age
``delta_t = root seed time - edge time`` (through :class:`TimeEncoder`) and its relation
weight from config. Nothing known only later (such as whether an impression was clicked,
which is logged seconds after the impression) is read from an edge: the click is its own
``clicked`` edge with its own time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter, softmax

from clickgraph.core.config import ModelConfig
from trainer.graph import EdgeType
from trainer.history import TargetAttention
from trainer.sampler import SampledSubgraph, count_relations

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class NodeFeatures:
    """Static attributes of one node type, indexed by global node id.

    Attributes:
        categorical: int64 ``[N, C]`` codes, 0 = unknown/missing.
        cardinalities: ``C`` sizes (codes are ``< cardinality``).
        created_time: int64 ``[N]`` seconds since epoch (signup, creation), or ``None``
            for types without one. The model turns it into the node's age at the root
            seed time, which is known at that time.
        learn_id_embedding: Give every node of this type a learnable vector (small
            types only: brands, categories).
    """

    categorical: Tensor
    cardinalities: list[int]
    created_time: Tensor | None = None
    learn_id_embedding: bool = False

    @property
    def num_nodes(self) -> int:
        return self.categorical.shape[0]

    def to(self, device: torch.device | str) -> NodeFeatures:
        return NodeFeatures(self.categorical.to(device), list(self.cardinalities),
                            None if self.created_time is None else self.created_time.to(device),
                            self.learn_id_embedding)


class TimeEncoder(nn.Module):
    """Learnable time encoding of TGAT/TGN: ``cos(omega * delta_t + phi)``.

    ``omega`` starts at ``1 / 10 ** linspace(0, 9, dim)`` (periods from seconds to decades,
    as in TGN), so ages from seconds to years are told apart from the first step.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.omega = nn.Parameter(1.0 / 10 ** torch.linspace(0, 9, dim))
        self.phase = nn.Parameter(torch.zeros(dim))

    def forward(self, delta_t: Tensor) -> Tensor:
        """``delta_t`` float/int ``[E]`` seconds -> ``[E, dim]``."""
        return torch.cos(delta_t.to(torch.float32).unsqueeze(-1) * self.omega + self.phase)


class NodeEncoder(nn.Module):
    """Initial representation of one node type from its static attributes."""

    def __init__(self, features: NodeFeatures, dim: int, id_dropout: float = 0.0):
        super().__init__()
        self.categorical = nn.ModuleList(nn.Embedding(max(2, n), dim) for n in features.cardinalities)
        self.id_embedding = None
        if features.learn_id_embedding:  # zero until trained: untrained ids add nothing
            self.id_embedding = nn.Embedding(features.num_nodes, dim)
            nn.init.zeros_(self.id_embedding.weight)
        self.id_dropout = id_dropout
        self.has_age = features.created_time is not None
        self.age = nn.Linear(1, dim) if self.has_age else None
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, features: NodeFeatures, node: Tensor, node_time: Tensor) -> Tensor:
        x = self.bias.expand(node.numel(), -1)
        codes = features.categorical[node]
        for column, embedding in enumerate(self.categorical):
            x = x + embedding(codes[:, column])
        if self.id_embedding is not None:
            x = x + self.identity(node)
        if self.age is not None:
            age_days = (node_time - features.created_time[node]).clamp(min=0) / SECONDS_PER_DAY
            x = x + self.age(torch.log1p(age_days.to(torch.float32)).unsqueeze(-1))
        return x


    def identity(self, node: Tensor) -> Tensor:
        """The nodes' id vectors: zero for ids beyond the table (nodes newer than the
        model) and, in training, for an ``id_dropout`` share of the rows."""
        size = self.id_embedding.num_embeddings
        vectors = self.id_embedding(node.clamp(max=size - 1))
        keep = node < size
        if self.training and self.id_dropout > 0:
            keep = keep & (torch.rand(node.shape, device=node.device) >= self.id_dropout)
        return vectors * keep.unsqueeze(-1).to(vectors.dtype)


class TemporalRelationConv(nn.Module):
    """Messages of one relation: source state + encoded edge age, scaled by edge weight.

    ``sage``: weighted mean of ``W [x_src || time(delta_t)]``.
    ``attention``: TGAT-style single-head attention of the destination over them, with
    the relation weight added to the logits as ``log(weight)``.
    """

    def __init__(self, dim: int, time_dim: int, conv: str):
        super().__init__()
        self.conv = conv
        self.message = nn.Linear(dim + time_dim, dim)
        if conv == "attention":
            self.query = nn.Linear(dim, dim)
            self.key = nn.Linear(dim + time_dim, dim)

    def forward(self, x_src: Tensor, x_dst: Tensor, edge_index: Tensor, time_code: Tensor,
                edge_weight: Tensor) -> Tensor:
        src, dst = edge_index
        inputs = torch.cat([x_src[src], time_code], dim=-1)
        message = self.message(inputs)
        if self.conv == "attention":
            logits = (self.query(x_dst)[dst] * self.key(inputs)).sum(-1) / math.sqrt(message.shape[-1])
            alpha = softmax(logits + torch.log(edge_weight.clamp(min=1e-6)), dst, num_nodes=x_dst.shape[0])
            return scatter(message * alpha.unsqueeze(-1), dst, 0, dim_size=x_dst.shape[0], reduce="sum")
        weighted = scatter(message * edge_weight.unsqueeze(-1), dst, 0, dim_size=x_dst.shape[0],
                           reduce="sum")
        norm = scatter(edge_weight, dst, 0, dim_size=x_dst.shape[0], reduce="sum")
        return weighted / norm.clamp(min=1e-6).unsqueeze(-1)


class ClickGNN(nn.Module):
    """Heterogeneous temporal GNN with a click head.

    Args:
        features: Node type -> its :class:`NodeFeatures` (defines encoders).
        edge_types: Relations the sampler produces (reverse relations included).
        cfg: Sizes and the message-passing choice.
    """

    def __init__(self, features: dict[str, NodeFeatures], edge_types: list[EdgeType],
                 cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.edge_types = list(edge_types)
        dim = cfg.hidden_dim
        self.encoders = nn.ModuleDict({t: NodeEncoder(f, dim, cfg.id_dropout)
                                       for t, f in features.items()})
        self.time = TimeEncoder(cfg.time_dim)
        self.layers = nn.ModuleList()
        for _ in range(cfg.num_layers):
            self.layers.append(nn.ModuleDict({
                "__".join(et): TemporalRelationConv(dim, cfg.time_dim, cfg.conv) for et in self.edge_types
            }))
        self.self_loops = nn.ModuleList(
            nn.ModuleDict({t: nn.Linear(dim, dim) for t in features}) for _ in range(cfg.num_layers))
        self.norms = nn.ModuleList(
            nn.ModuleDict({t: nn.LayerNorm(dim) for t in features}) for _ in range(cfg.num_layers))
        self.position = nn.Embedding(cfg.num_positions + 1, cfg.context_dim)
        self.hour = nn.Embedding(24, cfg.context_dim)
        # candidate-aware summaries: the candidate over the user's hop-1 neighbours, the
        # user over the content's
        self.history = nn.ModuleDict({
            t: TargetAttention(dim, cfg.time_dim, sorted(et for et in self.edge_types if et[2] == t),
                               match=cfg.history_match)
            for t in ("user", "content")} if cfg.history_attention else {})
        summary_dim = sum(dim + h.out_dim_extra for h in self.history.values())
        self.head = nn.Sequential(
            nn.Linear(3 * dim + summary_dim + 2 * cfg.context_dim, dim), nn.ReLU(),
            nn.Dropout(cfg.dropout), nn.Linear(dim, 1))
        self.dropout = nn.Dropout(cfg.dropout)
        # A weighted mean of neighbour messages cannot tell 3 neighbours from 3,000; as-of
        # counts of the seeds' edges per relation (log-scaled) give the seed states the
        # popularity and activity a mean loses.
        self.count_relations = ({t: count_relations(self.edge_types, t) for t in ("user", "content")}
                                if cfg.activity_counts else {})
        self.activity = nn.ModuleDict({t: nn.Linear(2 * len(rel), dim)
                                       for t, rel in self.count_relations.items() if rel})

    def seed_state(self, node_type: str, state: Tensor, counts: Tensor | None) -> Tensor:
        """A seed's final state: its message-passing state plus its activity counts
        (``sampler.activity_counts`` at the seed time; ignored when the model has none)."""
        if node_type not in self.activity:
            return state
        if counts is None:
            raise ValueError(f"this model reads {node_type} activity counts "
                             "(train.model.activity_counts); pass counts")
        return state + self.activity[node_type](torch.log1p(counts.to(state.dtype)))

    def embed(self, batch: SampledSubgraph, features: dict[str, NodeFeatures]) -> dict[str, Tensor]:
        """Node states after message passing, per node type (:meth:`states`)."""
        return self.states(batch, features)[0]

    def states(self, batch: SampledSubgraph, features: dict[str, NodeFeatures]
               ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[EdgeType, Tensor]]:
        """Node states after message passing, per node type, with the initial states
        and the edges' age codes.

        Layer ``l`` (of ``L``) updates only the rows within ``L - 1 - l`` hops of a seed,
        from the edges of hops ``1 .. L - l`` (rows and edges are grouped by hop), as
        PyG's ``trim_to_layer`` does: the last layer computes the seeds alone.

        Returns:
            ``(states, initial, time_codes)``: node type -> ``[rows, hidden_dim]`` after
            message passing (the first rows of each type are the seeds') and before it;
            edge type -> ``[edges, time_dim]``.
        """
        x, time_codes = self.initial_states(batch, features)
        initial = x
        num_layers = len(self.layers)
        for index, (layer, self_loop, norm) in enumerate(zip(self.layers, self.self_loops, self.norms,
                                                            strict=True)):
            hops = num_layers - index  # edges of hops 1..hops feed this layer
            keep = {t: sum(batch.num_sampled_nodes[t][:hops]) for t in x}
            out = {t: self_loop[t](h[:keep[t]]) for t, h in x.items()}
            for et, edge_index in batch.edge_index.items():
                n_edges = sum(batch.num_sampled_edges[et][:hops])
                if n_edges == 0:
                    continue
                src_type, _, dst_type = et
                out[dst_type] = out[dst_type] + layer["__".join(et)](
                    x[src_type], x[dst_type][:keep[dst_type]], edge_index[:, :n_edges],
                    time_codes[et][:n_edges],
                    batch.edge_weight[et][:n_edges])
            x = {t: self.dropout(torch.relu(norm[t](h))) for t, h in out.items()}
        return x, initial, time_codes

    def initial_states(self, batch: SampledSubgraph, features: dict[str, NodeFeatures]
                       ) -> tuple[dict[str, Tensor], dict[EdgeType, Tensor]]:
        """The rows' states before message passing (attributes, identity, seed time) and
        the edges' age codes: all that :meth:`summaries` reads of a sample."""
        x = {t: self.encoders[t](features[t], batch.node[t], batch.node_time[t]) for t in batch.node}
        return x, {et: self.time(batch.edge_delta_t[et]) for et in batch.edge_index}

    def summaries(self, user: Tensor, content: Tensor, user_rows: Tensor, content_rows: Tensor,
                  batch: SampledSubgraph, initial: dict[str, Tensor],
                  time_codes: dict[EdgeType, Tensor]) -> list[Tensor]:
        """The candidate-aware summaries of pairs ``[B]`` (none without
        ``history_attention``): the content state ``content`` attending over the hop-1
        neighbours of the user seed rows ``user_rows`` of ``batch``, and the user state
        over the content seed rows' (:meth:`states` gives ``initial`` and ``time_codes``)."""
        return [self.history[t](query, rows, batch, initial, time_codes)
                for t, query, rows in (("user", content, user_rows), ("content", user, content_rows))
                if t in self.history]

    def score(self, user_state: Tensor, content_state: Tensor, position: Tensor,
              seed_time: Tensor, summaries: list[Tensor] = ()) -> Tensor:
        """Click logits ``[B]`` from user and content states, the candidate-aware
        ``summaries`` and the impression context."""
        pos = position.clamp(min=-1, max=self.cfg.num_positions - 1) + 1  # -1 = unknown -> 0
        hour = torch.div(seed_time % 86_400, 3600, rounding_mode="floor")
        context = torch.cat([self.position(pos), self.hour(hour)], dim=-1)
        pair = torch.cat([user_state, content_state, user_state * content_state, *summaries,
                          context], dim=-1)
        logits = self.head(pair).squeeze(-1)
        if self.cfg.pair_score:
            logits = logits + pair_logits(user_state, content_state)
        return logits

    def forward(self, batch: SampledSubgraph, features: dict[str, NodeFeatures], user_local: Tensor,
                content_local: Tensor, position: Tensor, seed_time: Tensor,
                counts: dict[str, Tensor] | None = None, with_pair: bool = False
                ) -> Tensor | tuple[Tensor, Tensor]:
        """Click logits ``[B]``; ``counts``: ``{"user": [B, .], "content": [B, .]}`` activity
        counts of each row's user and content at its seed time (models that read them).
        With ``with_pair`` also the pair logits ``[B]``: ``u . c / sqrt(hidden_dim)`` of
        the same states, the score the exported vectors' dot product carries."""
        states, initial, time_codes = self.states(batch, features)
        counts = counts or {}
        user = self.seed_state("user", states["user"][user_local], counts.get("user"))
        content = self.seed_state("content", states["content"][content_local], counts.get("content"))
        summaries = self.summaries(user, content, user_local, content_local, batch, initial,
                                   time_codes)
        logits = self.score(user, content, position, seed_time, summaries)
        if not with_pair:
            return logits
        return logits, pair_logits(user, content)


def pair_logits(user: Tensor, content: Tensor) -> Tensor:
    """The pair term ``u . c / sqrt(dim)`` of user and content states ``[B, dim]``: what the
    exported vectors' dot product carries."""
    return (user * content).sum(-1) / math.sqrt(user.shape[-1])
