"""Vectorised temporal neighbour sampling on a :class:`TemporalHeteroGraph`.

What a sample is
----------------
A *seed* is a pair ``(node, seed_time)`` of one node type, ``seed_time`` in seconds since
epoch (for a training example: the user and the time of the impression to predict).

**No-leak rule.** An in-edge ``e`` of node ``v`` is *visible* to a seed at time ``t`` iff
``edge_time[e] < t``, strictly earlier. An edge at exactly ``t`` is not visible, so the
seed impression itself and a click logged in the same second never enter the seed's
neighbourhood. This is the only place the rule is stated; everything below relies on it.

**Multi-hop time rule (TGL/TGN convention).** Every node of a seed's tree carries the
*root* seed's time ``t``: a neighbour sampled at hop ``h`` is expanded at hop ``h + 1``
with the same ``t``, never with its own edge's time. Hence every sampled edge, at every
hop, has ``edge_time < t`` and ``edge_delta_t = t - edge_time >= 1`` second.

**Dedup key: (node, root time).** Sampled nodes are deduplicated per node type on the pair
``(node id, root seed time)``. The same node reached under two different root times has
two different visible neighbourhoods, so it must be two rows of the subgraph: merging
them would either hand the earlier root edges from after its time (a leak) or deny the
later root its newer edges. Seeds that share a time share their trees, which is exact
and saves work. Each
``(node, root time)`` row is expanded once, at the first hop where it appears (as in
PyG's neighbour sampler): meeting it again later only adds an edge to the existing row.

**Per-node draw.** For a frontier row with ``c`` visible in-edges in a relation and
fanout ``k``:

* ``"most_recent"``: the ``min(c, k)`` latest visible edges (ties in time broken by CSR
  position), emitted in ascending time order.
* ``"uniform"``, ``replace=False``: a uniformly random subset of ``min(c, k)`` visible
  edges, all of them (in time order) when ``c <= k``; for ``c > k`` Floyd's algorithm,
  vectorised over rows, in no particular order.
* ``"uniform"``, ``replace=True``: ``k`` independent uniform draws among the ``c``
  visible edges (an edge may repeat), none when ``c == 0`` (PyG's convention).
* ``"uniform"``, ``weighted=True`` (``train.weighted_sampling``): a subset of
  ``min(c, k)`` visible edges drawn without replacement with probability proportional
  to the edges' ``weight`` attribute (the store's relation x content-type weight):
  all of them when ``c <= k``; for ``c > k`` each visible edge gets the exponential key
  ``-log(1 - u) / w`` (``u`` uniform; Efraimidis-Spirakis) and the ``k`` smallest keys
  win, which is successive weighted draws without replacement. Edges of weight 0 come
  last. Only the visible edges get keys, so the no-leak rule holds as for any draw.
* fanout ``-1``: every visible edge; fanout ``0``: none.

**Local numbering.** Per node type the subgraph's rows are: the distinct seeds in order
of first appearance in the seed list (so distinct seeds get ``seed_local == arange(B)``),
then the rows first reached at hop 1, then hop 2, ...; each hop's new rows in ascending
``(node, time)`` order. Edges of a relation are grouped by hop.

Implementation
--------------
Torch tensor ops only, no Python loop over seeds or edges (loops over hops, relations
and the ``k`` steps of Floyd's algorithm), so the same code runs on CUDA tensors. The
visible prefix of every frontier row is found with one ``torch.searchsorted`` on a
per-relation composite key ``dst * span + (edge_time - time_min)``, which is sorted
because rows are sorted by ``(dst, time)``; when ``(num_dst + 1) * span`` would overflow
int64 a vectorised per-row bisection is used instead. Dedup and relabelling use
``torch.unique`` on ``node << time_bits | time_rank`` keys (``time_rank`` indexes the
batch's distinct seed times; int32 when the keys fit, which sorts faster) plus a sorted
table of rows already seen, merged in linear time. One-dimensional gathers use
``index_select``, several times faster on CPU than advanced indexing.

Code layout: the hop loop (seed tables, the ``(node, root time)`` tables, frontiers,
assembly) and the checks of settings and seeds live in :mod:`trainer.sampling_core`, shared
with the distributed sampler (:mod:`trainer.dist_sampler`). This module adds the per-row
draw from a CSR (:class:`VisibleEdgeSearch`, :func:`sample_rows`), which the distributed
sampler's owners run too, and the single-process sampler that draws every hop locally.
:class:`SampledSubgraph` and the ``Fanouts``/``Seeds``/``Strategy`` types are defined in
the core and re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import Tensor

from trainer.graph import EdgeType, TemporalCSR, TemporalHeteroGraph, segment_ids
from trainer.sampling_core import (
    DrawnEdges,
    Fanouts,
    Frontier,
    SampledSubgraph,
    Seeds,
    Strategy,
    check_generator,
    check_strategy,
    expands,
    first_hops,
    normalise_fanouts,
    sample_hops,
    sampling_weights,
    take,
)

__all__ = [
    "ACTIVITY_WINDOW_S", "Fanouts", "SampledSubgraph", "Seeds", "Strategy",
    "TemporalNeighborSampler", "TimeSearch", "VisibleEdgeSearch", "activity_counts",
    "count_relations", "sample_rows", "sample_temporal_neighbors",
]

TimeSearch = Literal["auto", "composite", "bisect"]

_INT64_MAX = 2**63 - 1
_SEARCH_BLOCK = 16


@dataclass(frozen=True)
class VisibleEdgeSearch:
    """Finds the end of the visible (strictly earlier) prefix of CSR rows.

    The composite keys are stored as blocks of ``_SEARCH_BLOCK`` (padded with int64 max)
    plus a "fence" of each block's first key: a query binary-searches the fence (1/16 of
    the size, mostly cache-resident), then the one block it lands in with a batched
    ``searchsorted``. In a one-thread micro-benchmark on a 12M-edge Zipf-degree relation
    like the benchmark's, with sorted distinct-row queries, this took ~115 ns per query
    against ~200 ns for one ``searchsorted`` over the whole key array, whose last
    levels all miss cache.
    """

    indptr: Tensor
    edge_time: Tensor
    key_blocks: Tensor | None
    fence: Tensor | None
    time_min: int
    time_span: int
    bisect_steps: int

    @classmethod
    def build(cls, csr: TemporalCSR, time_search: TimeSearch) -> VisibleEdgeSearch:
        """Indexes one relation's CSR (about 8.5 bytes per edge).

        Args:
            csr: The relation's in-edge CSR, rows sorted by ``(dst, edge_time)``.
            time_search: ``"composite"``, ``"bisect"``, or ``"auto"`` (composite keys
                unless they would overflow int64).

        Raises:
            ValueError: ``"composite"`` for a CSR whose keys would overflow int64.
        """
        if csr.num_edges == 0:
            return cls(csr.indptr, csr.edge_time, None, None, 0, 1, 0)
        time_min = int(csr.edge_time.min())
        time_max = int(csr.edge_time.max())
        time_span = time_max - time_min + 1
        # The query for row num_dst - 1 reaches num_dst * span, and time_max + 1 is the
        # upper clamp of a query time; both must stay representable in int64, below the
        # padding value.
        fits = (csr.num_dst + 1) * time_span < _INT64_MAX and time_max < _INT64_MAX
        if time_search == "composite" and not fits:
            raise ValueError("composite time search would overflow int64 for this CSR")
        key_blocks = fence = None
        if fits and time_search != "bisect":
            key = csr.edge_dst() * time_span + (csr.edge_time - time_min)
            padding = key.new_full(((-key.numel()) % _SEARCH_BLOCK,), _INT64_MAX)
            key_blocks = torch.cat([key, padding]).view(-1, _SEARCH_BLOCK)
            fence = key_blocks[:, 0].contiguous()
        max_degree = int((csr.indptr[1:] - csr.indptr[:-1]).max())
        return cls(csr.indptr, csr.edge_time, key_blocks, fence, time_min, time_span,
                   max_degree.bit_length())

    def visible_range(self, node: Tensor, time: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(start, end)`` int64 ``[Q]``: edges ``start..end-1`` of row
        ``node[i]`` are exactly those with ``edge_time < time[i]``."""
        start = take(self.indptr, node)
        num_edges = self.edge_time.numel()
        if num_edges == 0:
            return start, start
        if self.key_blocks is not None and self.fence is not None:
            # Row v owns keys [v * span, (v + 1) * span); the first key >= the query is
            # the first edge of row v at or after ``time`` (or the next row's start).
            offset = time.clamp(self.time_min, self.time_min + self.time_span)
            query = node * self.time_span + (offset - self.time_min)
            # Last block whose first key is < query: keys >= query start inside it or
            # right after it. (Not <=: equal keys, tied times, may straddle blocks.)
            block = (torch.searchsorted(self.fence, query) - 1).clamp_(min=0)
            within = torch.searchsorted(take(self.key_blocks, block), query.unsqueeze(1))
            # Queries stay below the int64-max padding, so ``end`` never passes num_edges.
            return start, block * _SEARCH_BLOCK + within.squeeze(1)
        # Lower bound of ``time`` in each row: first position whose time is >= time.
        low, high = start, take(self.indptr, node + 1)
        for _ in range(self.bisect_steps):
            active = low < high
            middle = (low + high) // 2
            earlier = active & (take(self.edge_time, middle.clamp(max=num_edges - 1))
                                < time)
            low = torch.where(earlier, middle + 1, low)
            high = torch.where(active & ~earlier, middle, high)
        return start, low


def _uniform_draws(shape: tuple[int, ...], generator: torch.Generator,
                   device: torch.device) -> Tensor:
    """Float64 uniforms in [0, 1) from ``generator`` (53 bits: exact for big rows)."""
    draws = torch.rand(shape, generator=generator, device=generator.device,
                       dtype=torch.float64)
    return draws.to(device)


def _floyd_offsets(count: Tensor, fanout: int, generator: torch.Generator) -> Tensor:
    """Uniform ``fanout``-subsets of ``range(count[i])`` for every row, vectorised.

    Floyd's algorithm: for ``j = c - k .. c - 1`` draw ``t`` uniform in ``[0, j]`` and
    take ``t``, or ``j`` if ``t`` is already taken. Every k-subset is equally likely.

    Args:
        count: int64 ``[L]``, every entry ``> fanout``.
        fanout: Subset size ``k``.
        generator: Random source.

    Returns:
        int64 ``[L, k]`` distinct offsets per row.
    """
    draws = _uniform_draws((fanout, count.numel()), generator, count.device)
    chosen = torch.empty((fanout, count.numel()), dtype=torch.int64, device=count.device)
    for step in range(fanout):
        upper = count - fanout + step
        pick = torch.minimum((draws[step] * (upper + 1)).long(), upper)
        if step:
            taken = (chosen[:step] == pick).any(0)
            pick = torch.where(taken, upper, pick)
        chosen[step] = pick
    return chosen.t()


def _weighted_offsets(start: Tensor, count: Tensor, fanout: int, weight: Tensor,
                      generator: torch.Generator) -> Tensor:
    """Weighted ``fanout``-subsets without replacement of every row's visible edges.

    Efraimidis-Spirakis with exponential keys: edge ``e`` of a row gets
    ``-log(1 - u_e) / weight[e]`` and the row keeps its ``fanout`` smallest keys, the law
    of ``fanout`` successive draws proportional to weight without replacement. Only the
    ``count[i]`` visible edges of a row get a key. Cost: one key per visible edge of
    these rows and two sorts of the keys.

    Args:
        start: int64 ``[L]`` first edge of each row.
        count: int64 ``[L]``, every entry ``> fanout``.
        fanout: Subset size ``k``.
        weight: float ``[num_edges]`` draw weights of the CSR, ``>= 0``.
        generator: Random source.

    Returns:
        int64 ``[L, k]`` distinct offsets per row (smallest key first).
    """
    device = count.device
    first = torch.cumsum(count, 0) - count
    total = int(count.sum())
    row = segment_ids(first, total)
    offset = torch.arange(total, device=device) - take(first, row)
    edge_weight = take(weight, take(start, row) + offset).to(torch.float64)
    exponential = -torch.log1p(-_uniform_draws((total,), generator, device))
    key = torch.where(edge_weight > 0, exponential / edge_weight.clamp(min=1e-300),
                      torch.inf)
    # Sort by key, then (stable) by row: each row's edges in ascending key order.
    by_key = torch.argsort(key)
    order = take(by_key, torch.sort(take(row, by_key), stable=True).indices)
    slot = (first.unsqueeze(1) + torch.arange(fanout, device=device)).reshape(-1)
    return take(offset, take(order, slot)).view(-1, fanout)


def sample_rows(start: Tensor, count: Tensor, fanout: int, strategy: Strategy,
                replace: bool, generator: torch.Generator | None,
                weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Draws edges from CSR row prefixes ``start[i] .. start[i] + count[i] - 1``.

    Args:
        start: int64 ``[Q]`` first edge of each queried row.
        count: int64 ``[Q]`` number of visible edges of each row.
        fanout: ``k`` per row, ``-1`` for all.
        strategy: ``"uniform"`` or ``"most_recent"``.
        replace: Uniform draws with replacement.
        generator: Random source, required for ``"uniform"``.
        weight: float ``[num_edges]`` per-edge draw weights of the CSR
            (:func:`~trainer.sampling_core.sampling_weights`) for weighted draws
            without replacement; ``None``: uniform. Only read with ``"uniform"``,
            ``replace=False``.

    Returns:
        ``(edge_pos, query)``: int64 ``[E]`` CSR positions and the row index in
        ``[0, Q)`` each was drawn for, grouped by row.
    """
    device = start.device
    num_rows = count.numel()
    with_replacement = fanout >= 0 and strategy == "uniform" and replace
    if fanout < 0:
        num_taken = count
    elif with_replacement:
        num_taken = torch.where(count > 0, fanout, 0)
    else:
        num_taken = count.clamp(max=fanout)
    cumulative = torch.cumsum(num_taken, 0)
    total = int(cumulative[-1]) if num_rows else 0
    first_slot = cumulative - num_taken
    query = segment_ids(first_slot, total)
    if with_replacement:
        row_count = take(count, query)
        draws = _uniform_draws((total,), generator, device)
        offset = torch.minimum((draws * row_count).long(), row_count - 1)
        return take(start, query) + offset, query
    # Slot j of row i reads edge base[i] + j, with base chosen so that a row's slots
    # cover its first (take all) or its last (most recent) visible edges.
    if fanout >= 0 and strategy == "most_recent":
        base = start + count - cumulative
    else:
        base = start - first_slot
    edge_pos = torch.arange(total, device=device) + take(base, query)
    if fanout > 0 and strategy == "uniform":
        large = torch.nonzero(count > fanout).view(-1)
        if large.numel():
            if weight is None:
                chosen = _floyd_offsets(take(count, large), fanout, generator)
            else:
                chosen = _weighted_offsets(take(start, large), take(count, large), fanout,
                                           weight, generator)
            slot = take(first_slot, large).unsqueeze(1) + torch.arange(fanout,
                                                                         device=device)
            drawn = take(start, large).unsqueeze(1) + chosen
            edge_pos.index_copy_(0, slot.reshape(-1), drawn.reshape(-1))
    return edge_pos, query


class TemporalNeighborSampler:
    """Multi-hop temporal neighbour sampler (semantics in the module docstring).

    Args:
        graph: The graph; its CSRs are validated (O(num_edges)) and indexed once here
            (the search index costs about 8.5 bytes per edge).
        fanouts: Neighbours per hop, either one list for every relation or a dict with
            a list for every relation of the graph (``[0, ...]`` disables one). All
            lists have the number of hops as length; ``-1`` takes every visible edge.
        strategy: ``"uniform"`` or ``"most_recent"``.
        replace: Uniform sampling with replacement (not allowed with most_recent).
        weighted: Uniform draws without replacement weighted by the CSRs' per-edge
            ``weight`` attribute (relations without one draw uniformly).
        time_search: ``"auto"`` (composite-key ``searchsorted`` unless it would
            overflow int64, then per-row bisection), or force ``"composite"`` /
            ``"bisect"`` (for tests and benchmarks).
    """

    def __init__(self, graph: TemporalHeteroGraph, fanouts: Fanouts,
                 strategy: Strategy = "uniform", replace: bool = False,
                 time_search: TimeSearch = "auto", weighted: bool = False) -> None:
        check_strategy(strategy, replace, weighted)
        if time_search not in ("auto", "composite", "bisect"):
            raise ValueError(f"time_search must be auto, composite or bisect, got "
                             f"{time_search!r}")
        graph.validate()
        self.graph = graph
        self.strategy: Strategy = strategy
        self.replace = replace
        self.weighted = weighted
        self._weight = {edge_type: sampling_weights(csr, edge_type, weighted)
                        for edge_type, csr in graph.csr.items()}
        self.fanouts = normalise_fanouts(fanouts, graph.edge_types)
        self.num_hops = len(next(iter(self.fanouts.values()), ()))
        self._search = {edge_type: VisibleEdgeSearch.build(csr, time_search)
                        for edge_type, csr in graph.csr.items()}

    def sample(self, seeds: Seeds, generator: torch.Generator | None = None,
               hops: int | None = None) -> SampledSubgraph:
        """Samples the temporal neighbourhood of a batch of seeds.

        Args:
            seeds: Node type -> ``(node_ids, seed_time)``, both int64 ``[B]`` on the
                graph's device; seed_time in seconds since epoch.
            generator: Random source for ``"uniform"`` (required there); best on the
                graph's device, otherwise draws are copied over.
            hops: Sample only the first ``hops`` hops (default: all); those hops are
                drawn as in a full sample (same edges, same random stream).

        Returns:
            The sampled subgraph.
        """
        check_generator(self.strategy, generator)
        return sample_hops(
            seeds, self.graph.num_nodes, self.graph.csr, first_hops(self.fanouts, hops),
            self.graph.device, partial(self._draw_hop, generator=generator))

    def _draw_hop(self, hop: int, frontier: dict[str, Frontier], root_time: Tensor,
                  generator: torch.Generator | None) -> dict[EdgeType, DrawnEdges]:
        """One hop's draw from the local CSRs, relation by relation (in graph order, so
        the random stream is consumed in a fixed order)."""
        drawn = {}
        for edge_type, csr in self.graph.csr.items():
            fanout, rows = self.fanouts[edge_type][hop], frontier.get(edge_type[2])
            if not expands(fanout, rows):
                continue
            start, end = self._search[edge_type].visible_range(
                rows.node, take(root_time, rows.time_rank))
            edge_pos, query = sample_rows(start, end - start, fanout, self.strategy,
                                          self.replace, generator, self._weight[edge_type])
            drawn[edge_type] = DrawnEdges(
                frontier_position=query, neighbor=take(csr.neighbor, edge_pos),
                edge_time=take(csr.edge_time, edge_pos), edge_id=edge_pos,
                edge_attr={name: take(value, edge_pos) for name, value in csr.edge_attr.items()})
        return drawn

    def activity_counts(self, node_type: str, node: Tensor, time: Tensor) -> Tensor:
        """:func:`activity_counts` of ``node`` at ``time`` on this graph."""
        return activity_counts(self.count_before, count_relations(self.graph.edge_types, node_type),
                               node, time)

    def count_before(self, edge_type: EdgeType, node: Tensor, time: Tensor) -> Tensor:
        """How many ``edge_type`` edges into ``node[i]`` are strictly earlier than
        ``time[i]`` (as-of counts: the same visibility rule as sampling).

        Args:
            edge_type: A relation of the graph (reverse relations count edges out of
                the original source: ``rev_clicked`` into a user = the user's clicks).
            node: int64 ``[Q]`` destination node ids, on the graph's device.
            time: int64 ``[Q]`` seconds since epoch.

        Returns:
            int64 ``[Q]``.
        """
        start, end = self._search[edge_type].visible_range(node, time)
        return end - start


ACTIVITY_WINDOW_S = 86_400


def count_relations(edge_types: Sequence[EdgeType], node_type: str) -> list[EdgeType]:
    """The relations into ``node_type``, sorted (not in graph order, which differs between
    a shard and a loaded store): the columns of
    :func:`activity_counts` (the model and every sampler use this one order)."""
    return sorted(edge_type for edge_type in edge_types if edge_type[2] == node_type)


def activity_counts(count_before, relations: Sequence[EdgeType], node: Tensor, time: Tensor
                    ) -> Tensor:
    """As-of activity of nodes: per relation, its edges into ``node[i]`` strictly before
    ``time[i]``, all time and within the last ``ACTIVITY_WINDOW_S`` seconds.

    Args:
        count_before: ``(edge_type, node, time) -> int64 [Q]`` visible-edge counts.
        relations: From :func:`count_relations`.
        node: int64 ``[Q]``.
        time: int64 ``[Q]`` seconds.

    Returns:
        int64 ``[Q, 2 * len(relations)]``: (all time, last window) per relation.
    """
    columns = []
    for edge_type in relations:
        total = count_before(edge_type, node, time)
        columns += [total, total - count_before(edge_type, node, time - ACTIVITY_WINDOW_S)]
    if not columns:
        return torch.zeros((node.numel(), 0), dtype=torch.int64, device=node.device)
    return torch.stack(columns, dim=1)


def sample_temporal_neighbors(graph: TemporalHeteroGraph, seeds: Seeds,
                              fanouts: Fanouts, strategy: Strategy = "uniform",
                              replace: bool = False,
                              generator: torch.Generator | None = None,
                              weighted: bool = False) -> SampledSubgraph:
    """One-off convenience wrapper; build a :class:`TemporalNeighborSampler` to reuse
    its per-relation search index across batches."""
    sampler = TemporalNeighborSampler(graph, fanouts, strategy=strategy, replace=replace,
                                      weighted=weighted)
    return sampler.sample(seeds, generator=generator)
