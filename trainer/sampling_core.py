"""The hop loop shared by the temporal neighbour samplers.

:class:`~trainer.sampler.TemporalNeighborSampler` (one process, the whole graph) and
:class:`~trainer.dist_sampler.DistTemporalSampler` (one rank of a partitioned graph) sample
the same thing, with the semantics stated once in the :mod:`trainer.sampler` module
docstring (strictly-earlier visibility, root seed time at every hop, rows deduplicated on
``(node, root time)`` and numbered by hop). They differ only in how one hop's edges are
drawn for the frontier rows: from the local CSR, or by the rows' owners over
``torch.distributed``. Everything else lives here, once:

* the checks of settings and seeds (:func:`check_strategy`, :func:`check_generator`,
  :func:`normalise_fanouts`, :func:`check_seeds`);
* the hop loop (:func:`sample_hops`): seed tables, the per-node-type tables of
  ``(node, root time)`` rows, each hop's frontier, the edge chunks, and the assembly of
  the :class:`SampledSubgraph`.

A sampler hands :func:`sample_hops` a ``draw_hop(hop, frontier, root_time)`` callback that
returns, per relation that expands at that hop (:func:`expands`), the drawn edges as a
:class:`DrawnEdges` record, grouped by frontier row in frontier order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from trainer.graph import EdgeType, TemporalCSR

Strategy = Literal["uniform", "most_recent"]
Fanouts = Sequence[int] | Mapping[EdgeType, Sequence[int]]
Seeds = Mapping[str, tuple[Tensor, Tensor]]

_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
_RESERVED_EDGE_KEYS = frozenset(
    {"edge_index", "e_id", "edge_time", "edge_delta_t", "edge_weight"})


@dataclass(frozen=True)
class SampledSubgraph:
    """Output of both temporal samplers' ``sample``, laid out as PyG expects.

    Node ids are "local" (rows of this subgraph) unless called global. See the
    :mod:`trainer.sampler` module docstring for what is sampled and how rows are numbered.

    Attributes:
        node: Node type -> int64 ``[num_rows]`` global node id of each local row.
        node_time: Node type -> int64 ``[num_rows]`` root seed time of each row (seconds
            since epoch); the row's neighbourhood is restricted to edges before it.
        seed_local: Seed node type -> int64 ``[B]`` local row of each seed, in the
            order the seeds were given (duplicate seeds share a row).
        num_sampled_nodes: Node type -> rows added per hop, ``[seeds, hop 1, ...]``.
        edge_index: Edge type -> int64 ``[2, E]``; row 0 the source (neighbour) local
            id, row 1 the destination local id, so messages flow source -> destination.
        edge_id: Edge type -> int64 ``[E]`` position of each edge in the relation's CSR
            arrays (``neighbor``, ``edge_time``, ``edge_attr``); the distributed sampler
            gives the shard's graph-wide edge id instead.
        edge_time: Edge type -> int64 ``[E]`` edge time, seconds since epoch.
        edge_delta_t: Edge type -> int64 ``[E]`` root seed time minus edge time,
            seconds, always ``>= 1``.
        edge_weight: Edge type -> float32 ``[E]`` the relation weight, broadcast.
        edge_attr: Edge type -> name -> ``[E, ...]`` slices of the CSR edge attributes.
        num_sampled_edges: Edge type -> edges sampled per hop ``[hop 1, hop 2, ...]``.
    """

    node: dict[str, Tensor]
    node_time: dict[str, Tensor]
    seed_local: dict[str, Tensor]
    num_sampled_nodes: dict[str, list[int]]
    edge_index: dict[EdgeType, Tensor]
    edge_id: dict[EdgeType, Tensor]
    edge_time: dict[EdgeType, Tensor]
    edge_delta_t: dict[EdgeType, Tensor]
    edge_weight: dict[EdgeType, Tensor]
    edge_attr: dict[EdgeType, dict[str, Tensor]]
    num_sampled_edges: dict[EdgeType, list[int]]

    @property
    def num_edges(self) -> int:
        """Total number of sampled edges over all relations and hops."""
        return sum(index.shape[1] for index in self.edge_index.values())

    def to_hetero_data(self) -> HeteroData:
        """Builds a :class:`torch_geometric.data.HeteroData`.

        Node stores get ``n_id``, ``node_time``, ``num_nodes`` and, for seed types,
        ``seed_local``; edge stores get ``edge_index``, ``e_id``, ``edge_time``,
        ``edge_delta_t``, ``edge_weight`` and one entry per edge attribute name. Every
        node and edge type of the graph is present, possibly empty, so batches share
        metadata. ``num_sampled_nodes``/``num_sampled_edges`` are set on the object as
        PyG's loaders do.

        Returns:
            The subgraph as ``HeteroData``.

        Raises:
            ValueError: If an edge attribute name collides with a reserved key.
        """
        data = HeteroData()
        for node_type, node in self.node.items():
            store = data[node_type]
            store.n_id = node
            store.node_time = self.node_time[node_type]
            store.num_nodes = node.numel()
            if node_type in self.seed_local:
                store.seed_local = self.seed_local[node_type]
        for edge_type, edge_index in self.edge_index.items():
            store = data[edge_type]
            store.edge_index = edge_index
            store.e_id = self.edge_id[edge_type]
            store.edge_time = self.edge_time[edge_type]
            store.edge_delta_t = self.edge_delta_t[edge_type]
            store.edge_weight = self.edge_weight[edge_type]
            for name, value in self.edge_attr[edge_type].items():
                if name in _RESERVED_EDGE_KEYS:
                    raise ValueError(f"edge attribute {name!r} of {edge_type} collides "
                                     "with a reserved HeteroData key")
                store[name] = value
        data.num_sampled_nodes = dict(self.num_sampled_nodes)
        data.num_sampled_edges = dict(self.num_sampled_edges)
        return data


def take(values: Tensor, index: Tensor) -> Tensor:
    """``values[index]`` along dim 0 via ``index_select``, several times faster than
    advanced indexing on CPU for 1-D int64 gathers."""
    return values.index_select(0, index)


# ------------------------------------------------------------------------------ checks


def check_strategy(strategy: str, replace: bool, weighted: bool = False) -> None:
    """Checks a sampler's draw settings.

    Raises:
        ValueError: An unknown strategy, ``replace`` with ``"most_recent"``, or
            ``weighted`` with anything but ``"uniform"`` without replacement.
    """
    if strategy not in ("uniform", "most_recent"):
        raise ValueError(f"strategy must be 'uniform' or 'most_recent', got "
                         f"{strategy!r}")
    if strategy == "most_recent" and replace:
        raise ValueError("replace=True is only meaningful with strategy='uniform'")
    if weighted and (strategy != "uniform" or replace):
        raise ValueError("weighted sampling (train.weighted_sampling) needs "
                         "strategy='uniform' without replacement")


def sampling_weights(csr: TemporalCSR, edge_type: EdgeType, weighted: bool) -> Tensor | None:
    """The per-edge draw weights of one relation's CSR under weighted sampling.

    Args:
        csr: The relation's in-edges (of the graph or of one rank's part).
        edge_type: The relation, for error messages.
        weighted: Whether the sampler draws by weight.

    Returns:
        float ``[num_edges]`` the CSR's ``weight`` attribute (the store's relation x
        content-type weight), or ``None``: unweighted, a relation without per-edge
        weights, or one whose edges all weigh the same; its draws stay uniform (Floyd,
        O(fanout) per row instead of a key per visible edge), which is the same law.

    Raises:
        ValueError: A negative, NaN or infinite weight.
    """
    weight = csr.edge_attr.get("weight") if weighted else None
    if weight is None:
        return None
    if weight.numel() and not bool((torch.isfinite(weight) & (weight >= 0)).all()):
        raise ValueError(f"edge weights of {edge_type} must be finite and >= 0 for "
                         "weighted sampling")
    if weight.numel() == 0 or bool(weight.min() == weight.max()) and bool(weight.min() > 0):
        return None
    return weight


def check_generator(strategy: Strategy, generator: torch.Generator | None) -> None:
    """Random draws come from an explicit generator, never the global one.

    Raises:
        ValueError: ``"uniform"`` without a generator.
    """
    if strategy == "uniform" and generator is None:
        raise ValueError("strategy='uniform' needs an explicit torch.Generator")


def check_seeds(seeds: Seeds, num_nodes: Mapping[str, int], device: torch.device) -> None:
    """Checks a batch of seeds against the graph.

    Args:
        seeds: Node type -> ``(node_ids, seed_time)``, both int64 ``[B]``.
        num_nodes: Node type -> node count of the (whole) graph.
        device: Where the seeds must be: where the sampler's graph is.

    Raises:
        ValueError: An unknown node type, wrong dtypes or shapes, another device, or
            node ids out of range.
    """
    for node_type, (node, seed_time) in seeds.items():
        if node_type not in num_nodes:
            raise ValueError(f"seed node type {node_type!r} is not in the graph")
        if (node.dtype != torch.int64 or seed_time.dtype != torch.int64
                or node.dim() != 1 or node.shape != seed_time.shape):
            raise ValueError(f"seeds[{node_type!r}] must be two int64 [B] tensors")
        if node.device != device or seed_time.device != device:
            raise ValueError(f"seeds[{node_type!r}] must be on {device}, with the graph")
        if node.numel() and (int(node.min()) < 0 or int(node.max()) >= num_nodes[node_type]):
            raise ValueError(f"seeds[{node_type!r}] node ids out of range")


def first_hops(fanouts: dict[EdgeType, tuple[int, ...]], hops: int | None
               ) -> dict[EdgeType, tuple[int, ...]]:
    """``fanouts`` (normalised) cut to their first ``hops`` hops; all of them for ``None``.

    Raises:
        ValueError: ``hops`` is below 1.
    """
    if hops is None:
        return fanouts
    if hops < 1:
        raise ValueError(f"hops must be at least 1, got {hops}")
    return {edge_type: per_hop[:hops] for edge_type, per_hop in fanouts.items()}


def normalise_fanouts(fanouts: Fanouts, edge_types: list[EdgeType]
                      ) -> dict[EdgeType, tuple[int, ...]]:
    """Expands ``fanouts`` to one tuple per relation and checks it.

    Args:
        fanouts: One list of per-hop fanouts for every relation, or a dict with a list
            for every relation of ``edge_types`` (``-1``: every visible edge; ``0``: none).
        edge_types: The graph's relations.

    Returns:
        Relation -> per-hop fanouts, every tuple of the same, non-zero length.

    Raises:
        ValueError: Relations missing or unknown, unequal hop counts, fanouts below -1.
    """
    if isinstance(fanouts, Mapping):
        missing = [et for et in edge_types if et not in fanouts]
        unknown = [et for et in fanouts if et not in edge_types]
        if missing or unknown:
            raise ValueError(f"fanouts must name every relation exactly: missing "
                             f"{missing}, unknown {unknown}")
        per_relation = {et: tuple(int(k) for k in fanouts[et]) for et in edge_types}
    else:
        hops = tuple(int(k) for k in fanouts)
        per_relation = {et: hops for et in edge_types}
    lengths = {len(hops) for hops in per_relation.values()}
    if len(lengths) > 1 or 0 in lengths:
        raise ValueError(f"every relation needs the same, non-zero number of hops; "
                         f"got lengths {sorted(lengths)}")
    if any(k < -1 for hops in per_relation.values() for k in hops):
        raise ValueError("fanouts must be >= -1 (-1 = all visible edges)")
    return per_relation


# ----------------------------------------------------------------------- the hop loop


@dataclass(frozen=True)
class Frontier:
    """Rows of one node type to expand at the next hop.

    Attributes:
        node: int64 ``[F]`` global node ids.
        time_rank: int64 ``[F]`` index into the batch's sorted distinct root times.
        local: int64 ``[F]`` local row ids.
    """

    node: Tensor
    time_rank: Tensor
    local: Tensor


@dataclass(frozen=True)
class DrawnEdges:
    """Edges one relation drew at one hop, grouped by frontier row in frontier order.

    Within a row the edges keep the order of the draw (see :func:`trainer.sampler.sample_rows`).

    Attributes:
        frontier_position: int64 ``[E]`` the frontier row (index into the destination
            type's :class:`Frontier`) each edge was drawn for, non-decreasing.
        neighbor: int64 ``[E]`` global id of each edge's source node.
        edge_time: int64 ``[E]`` edge time, seconds since epoch.
        edge_id: int64 ``[E]`` the edge's id, reported as :attr:`SampledSubgraph.edge_id`.
        edge_attr: Name -> ``[E, ...]`` the edges' attributes, one entry per attribute of
            the relation's CSR, in its order, with its dtype.
    """

    frontier_position: Tensor
    neighbor: Tensor
    edge_time: Tensor
    edge_id: Tensor
    edge_attr: dict[str, Tensor]


DrawHop = Callable[[int, dict[str, Frontier], Tensor], Mapping[EdgeType, DrawnEdges]]
"""``draw_hop(hop, frontier, root_time)``: a hop's draw (see :func:`sample_hops`)."""


def expands(fanout: int, rows: Frontier | None) -> bool:
    """Whether a relation draws edges at a hop: a non-zero fanout there and at least one
    frontier row of its destination type (``rows``, ``None`` when there is none)."""
    return fanout != 0 and rows is not None and rows.node.numel() > 0


def sample_hops(seeds: Seeds, num_nodes: Mapping[str, int],
                relations: Mapping[EdgeType, TemporalCSR],
                fanouts: Mapping[EdgeType, Sequence[int]], device: torch.device,
                draw_hop: DrawHop) -> SampledSubgraph:
    """Samples the temporal neighbourhood of a batch of seeds, one hop after the other.

    Keeps the subgraph's bookkeeping: the ``(node, root time)`` rows of every node type
    and their local ids, each hop's frontier (the rows first reached at the previous hop),
    the sampled edges, and their assembly into a :class:`SampledSubgraph`. Only the draw
    of a hop's edges is the caller's (``draw_hop``).

    Args:
        seeds: Node type -> ``(node_ids, seed_time)``, int64 ``[B]`` on ``device``,
            global ids, seconds since epoch (checked with :func:`check_seeds`).
        num_nodes: Node type -> node count of the whole graph.
        relations: Relation -> a CSR of its in-edges (of the graph or of this rank's
            part), in the graph's relation order. Only relation-level facts are read:
            ``weight`` (broadcast to ``edge_weight``) and the names, dtypes and trailing
            shapes of ``edge_attr`` (for relations that drew no edge).
        fanouts: Relation -> per-hop fanouts, from :func:`normalise_fanouts`.
        device: Where the seeds are and the subgraph is built.
        draw_hop: ``draw_hop(hop, frontier, root_time)``, called once per hop with the
            frontier (node type -> :class:`Frontier`) and the batch's sorted distinct
            root times (int64 ``[T]``, seconds; ``frontier.time_rank`` indexes them).
            Returns relation -> :class:`DrawnEdges` for at least every relation that
            :func:`expands` at that hop; other entries are ignored.

    Returns:
        The sampled subgraph.
    """
    check_seeds(seeds, num_nodes, device)
    edge_types = list(relations)
    num_hops = len(next(iter(fanouts.values()), ()))
    root_time, tables, seed_local, frontier = _seed_tables(seeds, num_nodes, device)
    # Per relation, one chunk per hop: (drawn edges, source local, destination local,
    # root time rank).
    edge_chunks: dict[EdgeType, list[tuple[DrawnEdges, Tensor, Tensor, Tensor]]] = {
        edge_type: [] for edge_type in edge_types}
    num_sampled_edges: dict[EdgeType, list[int]] = {edge_type: [] for edge_type in edge_types}
    for hop in range(num_hops):
        last_hop = hop == num_hops - 1
        drawn = draw_hop(hop, frontier, root_time)
        # Per source type: (edge type, drawn edges, dst local, root time rank).
        by_source: dict[str, list[tuple[EdgeType, DrawnEdges, Tensor, Tensor]]] = {}
        for edge_type in edge_types:
            src_type, _, dst_type = edge_type
            rows = frontier.get(dst_type)
            if not expands(fanouts[edge_type][hop], rows):
                num_sampled_edges[edge_type].append(0)
                continue
            edges = drawn[edge_type]
            num_sampled_edges[edge_type].append(edges.neighbor.numel())
            by_source.setdefault(src_type, []).append(
                (edge_type, edges, take(rows.local, edges.frontier_position),
                 take(rows.time_rank, edges.frontier_position)))
        frontier = {}
        for node_type, table in tables.items():
            items = by_source.get(node_type)
            if not items:
                table.add_nothing()
                continue
            key = torch.cat([table.key(edges.neighbor, rank) for _, edges, _, rank in items])
            src_local, new_rows = table.add_neighbors(key, expand=not last_hop)
            if new_rows is not None and new_rows.node.numel():
                frontier[node_type] = new_rows
            sizes = [edges.neighbor.numel() for _, edges, _, _ in items]
            for (edge_type, edges, dst_local, rank), local in zip(
                    items, torch.split(src_local, sizes), strict=True):
                edge_chunks[edge_type].append((edges, local, dst_local, rank))
    return _assemble(tables, seed_local, root_time, relations, edge_chunks,
                     num_sampled_edges, device)


class _NodeTable:
    """Per node type: the (node, root time) rows seen so far and their local ids.

    A row's key is ``node << time_bits | time_rank`` (bit operations are much cheaper
    than division when splitting it again), stored as int32 when it fits since int32
    sorts faster. ``node_chunks``/``rank_chunks`` hold one entry per hop (hop 0: seeds).
    """

    def __init__(self, time_bits: int, num_nodes: int, device: torch.device) -> None:
        key_limit = max(num_nodes, 1) << time_bits
        if key_limit - 1 > _INT64_MAX:
            raise ValueError("node ids and seed-time ranks do not fit an int64 key")
        self.time_bits = time_bits
        self.key_dtype = torch.int32 if key_limit - 1 <= _INT32_MAX else torch.int64
        self.device = device
        self.sorted_key = torch.empty(0, dtype=self.key_dtype, device=device)
        self.local_of_sorted = torch.empty(0, dtype=torch.int64, device=device)
        self.num_rows = 0
        self.node_chunks: list[Tensor] = []
        self.rank_chunks: list[Tensor] = []

    def key(self, node: Tensor, time_rank: Tensor) -> Tensor:
        return ((node << self.time_bits) | time_rank).to(self.key_dtype)

    def split_key(self, key: Tensor) -> tuple[Tensor, Tensor]:
        mask = (1 << self.time_bits) - 1
        return (key >> self.time_bits).long(), (key & mask).long()

    def add_nothing(self) -> None:
        """Records that this hop added no rows of this type."""
        empty = torch.empty(0, dtype=torch.int64, device=self.device)
        self.node_chunks.append(empty)
        self.rank_chunks.append(empty)

    def add_seeds(self, node: Tensor, time_rank: Tensor) -> tuple[Tensor, Frontier]:
        """Registers the seeds; returns their local ids and the hop-0 frontier."""
        unique_key, inverse = torch.unique(self.key(node, time_rank), return_inverse=True)
        num_seeds, num_unique = node.numel(), unique_key.numel()
        first_seen = torch.full((num_unique,), num_seeds, dtype=torch.int64,
                                device=node.device)
        first_seen.scatter_reduce_(0, inverse, torch.arange(num_seeds, device=node.device),
                                   reduce="amin")
        order = torch.argsort(first_seen)
        local = torch.empty_like(order).index_copy_(
            0, order, torch.arange(num_unique, device=node.device))
        seed_node, seed_rank = self.split_key(unique_key)
        self.node_chunks.append(take(seed_node, order))
        self.rank_chunks.append(take(seed_rank, order))
        self.sorted_key, self.local_of_sorted, self.num_rows = unique_key, local, num_unique
        return take(local, inverse), Frontier(seed_node, seed_rank, local)

    def add_neighbors(self, key: Tensor, expand: bool) -> tuple[Tensor, Frontier | None]:
        """Maps neighbour keys to local ids, appending rows not seen before.

        Args:
            key: ``[N]`` keys of sampled neighbours (duplicates allowed).
            expand: Whether the new rows form the next hop's frontier (and must be
                remembered for later hops).

        Returns:
            int64 ``[N]`` local ids, and the frontier of new rows when ``expand``.
        """
        unique_key, inverse = torch.unique(key, return_inverse=True)
        seen, seen_local, insert_at = self._lookup(unique_key, need_insert_at=expand)
        is_new = ~seen
        new_rank = torch.cumsum(is_new, 0) - 1
        local_of_unique = torch.where(seen, seen_local, self.num_rows + new_rank)
        new_key = torch.masked_select(unique_key, is_new)
        num_new = new_key.numel()
        new_local = self.num_rows + torch.arange(num_new, device=key.device)
        new_node, new_time_rank = self.split_key(new_key)
        self.node_chunks.append(new_node)
        self.rank_chunks.append(new_time_rank)
        frontier = None
        if expand:
            assert insert_at is not None
            frontier = Frontier(new_node, new_time_rank, new_local)
            self._merge(new_key, torch.masked_select(insert_at, is_new), new_local)
        self.num_rows += num_new
        return take(local_of_unique, inverse), frontier

    def _lookup(self, unique_key: Tensor, need_insert_at: bool
                ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Looks sorted distinct keys up in the table.

        Returns:
            ``(seen, seen_local, insert_at)``, each ``[len(unique_key)]``: whether the
            key is a known row, its local id if so, and (when ``need_insert_at``, else
            None) for unknown keys the number of table keys smaller than it.
        """
        num_seen, num_query = self.sorted_key.numel(), unique_key.numel()
        if num_seen == 0 or num_query == 0:
            zeros = torch.zeros_like(unique_key, dtype=torch.int64)
            return zeros.bool(), zeros, zeros
        if num_query <= num_seen:
            position = torch.searchsorted(self.sorted_key, unique_key)
            clamped = position.clamp(max=num_seen - 1)
            seen = take(self.sorted_key, clamped) == unique_key
            return seen, take(self.local_of_sorted, clamped), position
        # Fewer table keys than queries: binary-search the table in the queries instead.
        position = torch.searchsorted(unique_key, self.sorted_key)
        found = take(unique_key, position.clamp(max=num_query - 1)) == self.sorted_key
        found_at = torch.masked_select(position, found)
        seen = torch.zeros(num_query, dtype=torch.bool, device=unique_key.device)
        seen.index_fill_(0, found_at, True)
        seen_local = torch.zeros(num_query, dtype=torch.int64, device=unique_key.device)
        seen_local.index_copy_(0, found_at, torch.masked_select(self.local_of_sorted, found))
        insert_at = None
        if need_insert_at:
            # Table keys <= query j are those found at a position <= j; for an unknown
            # query that is the count of table keys smaller than it.
            insert_at = torch.cumsum(torch.bincount(position, minlength=num_query + 1),
                                     0)[:num_query]
        return seen, seen_local, insert_at

    def _merge(self, new_key: Tensor, insert_at: Tensor, new_local: Tensor) -> None:
        """Merges sorted ``new_key`` (absent from the table) in linear time."""
        num_seen, num_new = self.sorted_key.numel(), new_key.numel()
        if num_new == 0:
            return
        device = new_key.device
        shift = torch.cumsum(torch.bincount(insert_at, minlength=num_seen + 1), 0)
        seen_slot = torch.arange(num_seen, device=device) + shift[:num_seen]
        new_slot = insert_at + torch.arange(num_new, device=device)
        merged_key = torch.empty(num_seen + num_new, dtype=self.key_dtype, device=device)
        merged_local = torch.empty(num_seen + num_new, dtype=torch.int64, device=device)
        merged_key.index_copy_(0, seen_slot, self.sorted_key)
        merged_key.index_copy_(0, new_slot, new_key)
        merged_local.index_copy_(0, seen_slot, self.local_of_sorted)
        merged_local.index_copy_(0, new_slot, new_local)
        self.sorted_key, self.local_of_sorted = merged_key, merged_local


def _seed_tables(seeds: Seeds, num_nodes: Mapping[str, int], device: torch.device
                 ) -> tuple[Tensor, dict[str, _NodeTable], dict[str, Tensor], dict[str, Frontier]]:
    """Ranks the distinct root times and enters the seeds as hop-0 rows.

    Returns:
        ``(root_time, tables, seed_local, frontier)``: the sorted distinct seed times, a
        node table per type, each seed type's local rows and its hop-0 frontier.
    """
    seed_times = [seeds[node_type][1] for node_type in seeds]
    all_seed_time = (torch.cat(seed_times) if seed_times
                     else torch.empty(0, dtype=torch.int64, device=device))
    root_time, all_rank = torch.unique(all_seed_time, return_inverse=True)
    time_bits = max(root_time.numel() - 1, 0).bit_length()
    tables = {node_type: _NodeTable(time_bits, count, device)
              for node_type, count in num_nodes.items()}
    seed_local: dict[str, Tensor] = {}
    frontier: dict[str, Frontier] = {}
    seed_ranks = torch.split(all_rank, [time.numel() for time in seed_times])
    for node_type, rank in zip(seeds, seed_ranks, strict=True):
        seed_local[node_type], frontier[node_type] = tables[node_type].add_seeds(
            seeds[node_type][0], rank)
    for node_type, table in tables.items():
        if node_type not in seeds:
            table.add_nothing()
    return root_time, tables, seed_local, frontier


def _assemble(tables: dict[str, _NodeTable], seed_local: dict[str, Tensor],
              root_time: Tensor, relations: Mapping[EdgeType, TemporalCSR],
              edge_chunks: dict[EdgeType, list[tuple[DrawnEdges, Tensor, Tensor, Tensor]]],
              num_sampled_edges: dict[EdgeType, list[int]],
              device: torch.device) -> SampledSubgraph:
    """Concatenates the per-hop rows and edge chunks into the subgraph."""
    empty = torch.empty(0, dtype=torch.int64, device=device)
    node, node_time, num_sampled_nodes = {}, {}, {}
    for node_type, table in tables.items():
        node[node_type] = torch.cat(table.node_chunks)
        node_time[node_type] = take(root_time, torch.cat(table.rank_chunks))
        num_sampled_nodes[node_type] = [chunk.numel() for chunk in table.node_chunks]
    edge_index, edge_id, edge_time, edge_delta_t, edge_weight, edge_attr = (
        {}, {}, {}, {}, {}, {})
    for edge_type, chunks in edge_chunks.items():
        attributes = relations[edge_type].edge_attr
        if chunks:
            ids, times, src_local, dst_local, rank = (torch.cat(column) for column in zip(
                *[(edges.edge_id, edges.edge_time, local, dst, rank)
                  for edges, local, dst, rank in chunks], strict=True))
            attrs = {name: torch.cat([edges.edge_attr[name] for edges, _, _, _ in chunks])
                     for name in attributes}
        else:
            ids = times = src_local = dst_local = rank = empty
            attrs = {name: torch.empty((0, *value.shape[1:]), dtype=value.dtype, device=device)
                     for name, value in attributes.items()}
        edge_index[edge_type] = torch.stack([src_local, dst_local])
        edge_id[edge_type] = ids
        edge_time[edge_type] = times
        edge_delta_t[edge_type] = take(root_time, rank) - times
        edge_weight[edge_type] = torch.full((ids.numel(),), relations[edge_type].weight,
                                            dtype=torch.float32, device=device)
        edge_attr[edge_type] = attrs
    return SampledSubgraph(
        node=node, node_time=node_time, seed_local=seed_local,
        num_sampled_nodes=num_sampled_nodes, edge_index=edge_index, edge_id=edge_id,
        edge_time=edge_time, edge_delta_t=edge_delta_t, edge_weight=edge_weight,
        edge_attr=edge_attr, num_sampled_edges=num_sampled_edges)
