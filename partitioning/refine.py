"""Vectorised boundary refinement and rebalancing of a partition book.

Used after projecting a coarse partition back onto a finer graph, and after
METIS when several balance constraints had to be collapsed into one.

* :func:`rebalance` moves nodes out of parts that exceed their cap in any
  constraint, choosing the nodes that lose the least edge weight per unit of
  excess removed, and making only moves that lower the total excess over the
  caps (so two parts over caps in different constraints can trade nodes).
* :func:`refine_boundary` is an FM-lite pass: every boundary node computes
  its gain for moving to the neighbouring part it is most connected to; moves
  with positive gain are accepted in priority order while the destination
  stays within its caps, then filtered by an "afterburner" that re-evaluates
  each move assuming every higher-priority move has happened (so two
  neighbours do not swap sides and both lose). A pass that does not lower
  the cut is rolled back and ends the refinement.

All work is done on whole arrays, no Python loop over nodes. Work over CSR
entries is done in chunks of at most :data:`CHUNK_ENTRIES` entries, so the
temporaries stay bounded (a few tens of MiB) whatever the graph size and the
peak memory is dominated by the graph itself.

Both loops read the graph through a :class:`partitioning.graph.GraphView`:
:class:`CsrGraphView` here for an in-memory graph, or
:class:`partitioning.spark_graph.SparkGraphView` for an adjacency that stays
in Spark, whose per-node steps (neighbour part weights, best move and gain,
afterburner) run as DataFrame operations while the book, the loads and the
choice of the accepted moves stay on the driver (O(nodes), O(candidates)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from partitioning.graph import EdgeCut, GraphView, PartitionGraph, aggregate_pairs

_RELATIVE_SLACK = 1e-9

#: Largest number of CSR entries processed at once by the chunked loops.
CHUNK_ENTRIES = 1 << 20


def node_ranges(indptr: np.ndarray, max_entries: int = CHUNK_ENTRIES) -> list[tuple[int, int]]:
    """Consecutive node ranges ``[start, stop)`` holding at most ``max_entries`` entries each.

    A node with more entries than ``max_entries`` gets a range of its own.
    """
    num_nodes = indptr.shape[0] - 1
    ranges = []
    start = 0
    while start < num_nodes:
        stop = int(np.searchsorted(indptr, indptr[start] + max_entries, side="right")) - 1
        stop = min(max(stop, start + 1), num_nodes)
        ranges.append((start, stop))
        start = stop
    return ranges


def row_chunks(indptr: np.ndarray, nodes: np.ndarray, max_entries: int = CHUNK_ENTRIES) -> list[slice]:
    """Slices of ``nodes`` whose rows hold at most ``max_entries`` entries each (one node at least)."""
    if nodes.size == 0:
        return []
    ends = np.cumsum(indptr[nodes + 1] - indptr[nodes])
    chunks = []
    start = 0
    while start < nodes.shape[0]:
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + max_entries, side="right")), start + 1)
        chunks.append(slice(start, stop))
        start = stop
    return chunks


def part_loads(vertex_weights: np.ndarray, assignment: np.ndarray, num_parts: int) -> np.ndarray:
    """Sum of vertex weights per part, float64 [num_parts, C]."""
    return np.stack(
        [
            np.bincount(assignment, weights=vertex_weights[:, c], minlength=num_parts)
            for c in range(vertex_weights.shape[1])
        ],
        axis=1,
    )


def balance_caps(vertex_weights: np.ndarray, num_parts: int, imbalance: float) -> np.ndarray:
    """Largest load a part may carry per constraint, float64 [C].

    ``(1 + imbalance) * total / num_parts``, but never below the heaviest
    single node (a hub that alone exceeds the target still has to go
    somewhere).
    """
    totals = vertex_weights.sum(axis=0)
    heaviest = vertex_weights.max(axis=0) if vertex_weights.shape[0] else np.zeros_like(totals)
    return np.maximum((1.0 + imbalance) * totals / num_parts, heaviest)


def max_imbalance(vertex_weights: np.ndarray, assignment: np.ndarray, num_parts: int) -> list[float]:
    """max/mean part load for each constraint (1.0 = perfect balance)."""
    loads = part_loads(vertex_weights, assignment, num_parts)
    means = loads.sum(axis=0) / num_parts
    return [float(loads[:, c].max() / means[c]) if means[c] > 0 else 1.0 for c in range(loads.shape[1])]


def csr_edge_cut(graph: PartitionGraph, assignment: np.ndarray) -> EdgeCut:
    """Pairs across parts and their weight, over CSR chunks (bounded temporaries)."""
    assignment = np.asarray(assignment)
    cut_entries = 0
    weight = 0.0
    for start, stop in node_ranges(graph.indptr):
        low, high = graph.indptr[start], graph.indptr[stop]
        row_part = np.repeat(assignment[start:stop], np.diff(graph.indptr[start : stop + 1]))
        crossing = row_part != assignment[graph.indices[low:high]]
        cut_entries += int(np.count_nonzero(crossing))
        weight += float(graph.edge_weight[low:high][crossing].sum())
    return EdgeCut(
        cut_edges=cut_entries // 2,
        num_edges=graph.num_edges,
        cut_weight=weight / 2.0,
        total_weight=float(graph.edge_weight.sum()) / 2.0,
    )


def cut_weight(graph: PartitionGraph | GraphView, assignment: np.ndarray) -> float:
    """Total weight of undirected edges whose ends lie in different parts."""
    return as_view(graph).edge_cut(assignment).cut_weight


def boundary_nodes(graph: PartitionGraph, assignment: np.ndarray) -> np.ndarray:
    """Nodes with at least one neighbour in another part, ascending int64."""
    found = [np.zeros(0, dtype=np.int64)]
    for start, stop in node_ranges(graph.indptr):
        low, high = graph.indptr[start], graph.indptr[stop]
        rows = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(graph.indptr[start : stop + 1]))
        crossing = assignment[rows] != assignment[graph.indices[low:high]]
        found.append(np.unique(rows[crossing]))
    return np.concatenate(found)


def entries_of_rows(indptr: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR entries of the given rows.

    Args:
        indptr: int64 [N + 1] CSR offsets.
        nodes: int64 [R] rows to gather.

    Returns:
        ``(local_row, entry)``, both int64 [sum of degrees]: entry ``i`` is
        CSR position ``entry[i]`` and belongs to ``nodes[local_row[i]]``.
    """
    starts = indptr[nodes]
    counts = indptr[nodes + 1] - starts
    local_row = np.repeat(np.arange(nodes.shape[0], dtype=np.int64), counts)
    row_offset = np.cumsum(counts) - counts
    entry = np.arange(local_row.shape[0], dtype=np.int64) + np.repeat(starts - row_offset, counts)
    return local_row, entry


def neighbour_part_weights(
    graph: PartitionGraph, assignment: np.ndarray, nodes: np.ndarray, num_parts: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edge weight from each node to each part it touches.

    Returns:
        ``(local_row, part, weight)`` sorted by (local_row, part), one entry
        per (node, neighbouring part) pair; ``local_row`` indexes ``nodes``.
    """
    pieces = [(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))]
    for chunk in row_chunks(graph.indptr, nodes):
        local_row, entry = entries_of_rows(graph.indptr, nodes[chunk])
        row, part, weight = aggregate_pairs(
            local_row,
            assignment[graph.indices[entry]],
            graph.edge_weight[entry],
            chunk.stop - chunk.start,
            num_parts,
        )
        pieces.append((row + chunk.start, part, weight))
    return tuple(np.concatenate(arrays) for arrays in zip(*pieces, strict=True))


def best_per_row(
    local_row: np.ndarray, column: np.ndarray, weight: np.ndarray, eligible: np.ndarray, num_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Heaviest eligible column per row, ties to the smallest column.

    Args:
        local_row: int64 [M] row of each entry, entries sorted by (row, column).
        column: int64 [M].
        weight: float64 [M].
        eligible: bool [M] entries that may be chosen.
        num_rows: number of rows.

    Returns:
        ``(best_column int64 [num_rows], best_weight float64 [num_rows])``;
        column -1 and weight 0 for rows without an eligible entry.
    """
    local_row, column, weight = local_row[eligible], column[eligible], weight[eligible]
    best_column = np.full(num_rows, -1, dtype=np.int64)
    best_weight = np.zeros(num_rows, dtype=np.float64)
    if local_row.size == 0:
        return best_column, best_weight
    starts = np.flatnonzero(np.r_[True, local_row[1:] != local_row[:-1]])
    row_max = np.maximum.reduceat(weight, starts)
    is_max = np.flatnonzero(weight == np.repeat(row_max, np.diff(np.r_[starts, local_row.shape[0]])))
    max_rows = local_row[is_max]
    first = is_max[np.r_[True, max_rows[1:] != max_rows[:-1]]]
    best_column[local_row[first]] = column[first]
    best_weight[local_row[first]] = weight[first]
    return best_column, best_weight


def _group_cumsum(group: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum of ``values`` [M, C] within runs of equal ``group``."""
    if group.shape[0] == 0:
        return values.copy()
    running = np.cumsum(values, axis=0)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    before = np.where((starts > 0)[:, None], running[np.maximum(starts - 1, 0)], 0.0)
    return running - np.repeat(before, np.diff(np.r_[starts, group.shape[0]]), axis=0)


def accept_within_capacity(
    nodes: np.ndarray,
    dest: np.ndarray,
    priority: np.ndarray,
    weights: np.ndarray,
    loads: np.ndarray,
    caps: np.ndarray,
) -> np.ndarray:
    """Accepts moves into each destination in priority order until it is full.

    Args:
        nodes: int64 [M] moving nodes (tie-break: lower id first).
        dest: int64 [M] destination part of each move.
        priority: float64 [M] higher moves first.
        weights: float64 [M, C] vertex weights of the moving nodes.
        loads: float64 [num_parts, C] current loads.
        caps: float64 [C] per-part caps.

    Returns:
        bool [M]: the accepted moves. Weights are non-negative, so within a
        destination the moves accepted for each constraint the nodes carry
        are a prefix of the priority order.
    """
    order = np.lexsort((nodes, -priority, dest))
    sorted_dest = dest[order]
    filled = loads[sorted_dest] + _group_cumsum(sorted_dest, weights[order])
    accepted = np.zeros(nodes.shape[0], dtype=bool)
    # A constraint the node carries no weight in cannot be pushed over its cap.
    within = (filled <= caps * (1 + _RELATIVE_SLACK)) | (weights[order] == 0)
    accepted[order] = np.all(within, axis=1)
    return accepted


def _afterburner(
    graph: PartitionGraph, assignment: np.ndarray, nodes: np.ndarray, dest: np.ndarray, priority: np.ndarray
) -> np.ndarray:
    """Keeps the moves still profitable if all higher-priority moves happen first."""
    order = np.lexsort((nodes, -priority))
    rank = np.empty(nodes.shape[0], dtype=np.int64)
    rank[order] = np.arange(nodes.shape[0])
    num_nodes = graph.num_nodes
    rank_of_node = np.full(num_nodes, np.iinfo(np.int64).max, dtype=np.int64)
    rank_of_node[nodes] = rank
    dest_of_node = assignment.copy()
    dest_of_node[nodes] = dest
    keep = np.zeros(nodes.shape[0], dtype=bool)
    for chunk in row_chunks(graph.indptr, nodes):
        local_row, entry = entries_of_rows(graph.indptr, nodes[chunk])
        row = local_row + chunk.start
        neighbour = graph.indices[entry]
        moved_first = rank_of_node[neighbour] < rank[row]
        neighbour_part = np.where(moved_first, dest_of_node[neighbour], assignment[neighbour])
        weight = graph.edge_weight[entry]
        size = chunk.stop - chunk.start
        to_dest = np.bincount(local_row, weights=weight * (neighbour_part == dest[row]), minlength=size)
        to_source = np.bincount(
            local_row, weights=weight * (neighbour_part == assignment[nodes[row]]), minlength=size
        )
        keep[chunk] = to_dest - to_source > 0
    return keep


class CsrGraphView(GraphView):
    """:class:`partitioning.graph.GraphView` of an in-memory :class:`PartitionGraph`.

    Args:
        graph: the graph; read, never copied.
    """

    def __init__(self, graph: PartitionGraph) -> None:
        self.graph = graph

    @property
    def num_nodes(self) -> int:
        return self.graph.num_nodes

    @property
    def vertex_weights(self) -> np.ndarray:
        return self.graph.vertex_weights

    @property
    def node_type(self) -> np.ndarray | None:
        return self.graph.node_type

    def degrees(self) -> np.ndarray:
        return self.graph.degrees()

    def edge_cut(self, assignment: np.ndarray) -> EdgeCut:
        return csr_edge_cut(self.graph, assignment)

    def neighbours_at(self, nodes: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return self.graph.indices[self.graph.indptr[nodes] + positions]

    def neighbour_part_weights(
        self, assignment: np.ndarray, nodes: np.ndarray, num_parts: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return neighbour_part_weights(self.graph, assignment, nodes, num_parts)

    def boundary_moves(
        self, assignment: np.ndarray, num_parts: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boundary = boundary_nodes(self.graph, assignment)
        local_row, part, weight = neighbour_part_weights(self.graph, assignment, boundary, num_parts)
        source = assignment[boundary]
        internal = np.zeros(boundary.shape[0])
        is_own = part == source[local_row]
        internal[local_row[is_own]] = weight[is_own]
        best_part, best_weight = best_per_row(local_row, part, weight, ~is_own, boundary.shape[0])
        gain = best_weight - internal
        candidate = (best_part >= 0) & (gain > 0)
        return boundary[candidate], best_part[candidate], gain[candidate]

    def still_profitable(
        self, assignment: np.ndarray, nodes: np.ndarray, dest: np.ndarray, priority: np.ndarray
    ) -> np.ndarray:
        return _afterburner(self.graph, assignment, nodes, dest, priority)

    def pairs_touching(self, ranges: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        inside = np.zeros(self.num_nodes, dtype=bool)
        for start, stop in ranges:
            inside[start:stop] = True
        src, dst, weight = self.graph.edge_list()
        touching = inside[src] | inside[dst]
        return src[touching], dst[touching], weight[touching]


def as_view(graph: PartitionGraph | GraphView) -> GraphView:
    """``graph`` itself when it is a view, else a :class:`CsrGraphView` of it."""
    return graph if isinstance(graph, GraphView) else CsrGraphView(graph)


def refine_boundary(
    graph: PartitionGraph | GraphView,
    assignment: np.ndarray,
    num_parts: int,
    caps: np.ndarray,
    max_passes: int = 8,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Greedy boundary moves that lower the cut without breaking the caps.

    Args:
        graph: the graph, or a view of it (e.g. one held in Spark).
        assignment: int [N] starting book (not modified).
        num_parts: number of parts.
        caps: float64 [C] per-part load caps (see :func:`balance_caps`).
        max_passes: upper bound on passes; stops earlier when a pass moves
            nothing or would not lower the cut.

    Returns:
        ``(assignment int64 [N], info)`` with the number of passes and moves.
    """
    view = as_view(graph)
    assignment = np.asarray(assignment, dtype=np.int64).copy()
    cut = view.edge_cut(assignment).cut_weight
    moves = 0
    passes = 0
    for _ in range(max_passes):
        nodes, dest, gain = view.boundary_moves(assignment, num_parts)
        if nodes.size == 0:
            break
        loads = part_loads(view.vertex_weights, assignment, num_parts)
        fits = accept_within_capacity(nodes, dest, gain, view.vertex_weights[nodes], loads, caps)
        nodes, dest, gain = nodes[fits], dest[fits], gain[fits]
        if nodes.size == 0:
            break
        keep = view.still_profitable(assignment, nodes, dest, gain)
        nodes, dest = nodes[keep], dest[keep]
        if nodes.size == 0:
            break
        previous = assignment[nodes]
        assignment[nodes] = dest
        new_cut = view.edge_cut(assignment).cut_weight
        passes += 1
        if new_cut >= cut:
            # Simultaneous moves interacted badly: undo this pass and stop.
            assignment[nodes] = previous
            break
        cut = new_cut
        moves += int(nodes.size)
    return assignment, {"refine_passes": passes, "refine_moves": moves}


def _accept_reducing_excess(
    source: np.ndarray,
    dest: np.ndarray,
    priority: np.ndarray,
    nodes: np.ndarray,
    weights: np.ndarray,
    moved_before: np.ndarray,
    loads: np.ndarray,
    caps: np.ndarray,
) -> np.ndarray:
    """Accepts the rebalancing moves that lower the total normalised excess.

    The excess of a part is ``sum_c max(0, load_c - cap_c) / cap_c``. A move
    relieves its source by the part of its weight that still lies above the
    source's caps (after the moves ranked before it in that source) and costs
    its destination the excess its weight adds on top of the moves ranked
    before it there. Both are computed as if every earlier-ranked candidate
    moved, which over-states the cost and under-states the relief, so the
    accepted set lowers the true total excess. Unlike a plain capacity check
    this lets two parts that are each over a cap in a different constraint
    trade nodes (a destination may go over a cap in one constraint if that
    relieves more in another).

    Args:
        source: int64 [M] source parts, candidates grouped by source in
            priority order.
        dest: int64 [M] destination parts.
        priority: float64 [M] higher first.
        nodes: int64 [M] node ids (tie-break).
        weights: float64 [M, C].
        moved_before: float64 [M, C] weight of the candidates ranked before
            each one in its source.
        loads: float64 [num_parts, C].
        caps: float64 [C].

    Returns:
        bool [M].
    """
    scale = np.where(caps > 0, caps, 1.0)
    excess = np.clip(loads - caps, 0.0, None)
    relief = (np.minimum(weights, np.clip(excess[source] - moved_before, 0.0, None)) / scale).sum(axis=1)
    order = np.lexsort((nodes, -priority, dest))
    sorted_dest = dest[order]
    including = loads[sorted_dest] + _group_cumsum(sorted_dest, weights[order])
    excluding = including - weights[order]
    cost = ((np.clip(including - caps, 0.0, None) - np.clip(excluding - caps, 0.0, None)) / scale).sum(axis=1)
    accepted = np.zeros(nodes.shape[0], dtype=bool)
    accepted[order] = cost < relief[order]
    return accepted


def rebalance(
    graph: PartitionGraph | GraphView,
    assignment: np.ndarray,
    num_parts: int,
    caps: np.ndarray,
    max_rounds: int = 20,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Moves nodes out of overloaded parts until every part is within its caps.

    Each round, every node of an overloaded part that carries weight in a
    violated constraint is a candidate. Its destination is the most connected
    part that can take its weight, else the lightest other part; candidates
    are ranked by edge weight lost per unit of normalised weight moved and
    each overloaded part gives up the best-ranked prefix that clears its
    excess. A move is made when it lowers the total normalised excess
    (:func:`_accept_reducing_excess`), so the total excess falls every round.

    Args:
        graph: the graph, or a view of it (e.g. one held in Spark).
        assignment: int [N] starting book (not modified).
        num_parts: number of parts.
        caps: float64 [C] per-part caps.
        max_rounds: upper bound on rounds.

    Returns:
        ``(assignment int64 [N], info)``; ``rebalance_feasible`` is False when
        some part is still over a cap after ``max_rounds``.
    """
    view = as_view(graph)
    assignment = np.asarray(assignment, dtype=np.int64).copy()
    vertex_weights = view.vertex_weights
    slack_caps = caps * (1 + _RELATIVE_SLACK)
    moves = 0
    rounds = 0
    for _ in range(max_rounds):
        loads = part_loads(vertex_weights, assignment, num_parts)
        over = loads > slack_caps
        if not over.any():
            break
        rounds += 1
        over_of_node = over[assignment]
        relevant = (vertex_weights > 0) & over_of_node
        nodes = np.flatnonzero(relevant.any(axis=1))
        source = assignment[nodes]
        node_weights = vertex_weights[nodes]

        local_row, part, weight = view.neighbour_part_weights(assignment, nodes, num_parts)
        is_own = part == source[local_row]
        internal = np.zeros(nodes.shape[0])
        internal[local_row[is_own]] = weight[is_own]
        added = node_weights[local_row]
        has_room = np.all((loads[part] + added <= slack_caps) | (added == 0), axis=1)
        dest, dest_weight = best_per_row(local_row, part, weight, ~is_own & has_room, nodes.shape[0])

        # Fallback destination: the lightest part other than the source.
        fill = (loads / np.where(caps > 0, caps, 1.0)).max(axis=1)
        lightest_two = np.argsort(fill, kind="stable")[:2]
        fallback = np.where(source == lightest_two[0], lightest_two[-1], lightest_two[0])
        no_dest = dest < 0
        dest[no_dest] = fallback[no_dest]
        dest_weight[no_dest] = 0.0
        movable = dest != source

        normalised = np.where(relevant[nodes], node_weights / np.where(caps > 0, caps, 1.0), 0.0).max(axis=1)
        priority = (dest_weight - internal) / np.maximum(normalised, 1e-300)

        # Each overloaded source gives up the best prefix clearing its excess.
        excess = np.clip(loads - caps, 0.0, None)
        nodes, source, dest, priority, node_weights = (
            a[movable] for a in (nodes, source, dest, priority, node_weights)
        )
        order = np.lexsort((nodes, -priority, source))
        nodes, source, dest, priority, node_weights = (
            a[order] for a in (nodes, source, dest, priority, node_weights)
        )
        moved_before = _group_cumsum(source, node_weights) - node_weights
        needed = np.any(over[source] & (moved_before < excess[source]), axis=1)
        nodes, source, dest, priority, node_weights, moved_before = (
            a[needed] for a in (nodes, source, dest, priority, node_weights, moved_before)
        )
        fits = _accept_reducing_excess(source, dest, priority, nodes, node_weights, moved_before, loads, caps)
        if not fits.any():
            break
        assignment[nodes[fits]] = dest[fits]
        moves += int(fits.sum())
    feasible = not (part_loads(vertex_weights, assignment, num_parts) > slack_caps).any()
    return assignment, {"rebalance_rounds": rounds, "rebalance_moves": moves, "rebalance_feasible": feasible}


def refine(
    graph: PartitionGraph | GraphView,
    assignment: np.ndarray,
    num_parts: int,
    *,
    imbalance: float = 0.03,
    max_passes: int = 8,
    max_rebalance_rounds: int = 20,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Rebalances to ``(1 + imbalance)`` caps in every constraint, then refines the cut.

    Args:
        graph: the graph, with its vertex weights as constraints, or a view of it
            (:class:`partitioning.spark_graph.SparkGraphView` for a graph in Spark).
        assignment: int [N] starting book.
        num_parts: number of parts.
        imbalance: allowed excess over the mean load per constraint.
        max_passes: boundary refinement passes.
        max_rebalance_rounds: rebalancing rounds.

    Returns:
        ``(assignment int64 [N], info)`` with move counts, the cut before and
        after, and the achieved max/mean load per constraint.
    """
    view = as_view(graph)
    caps = balance_caps(view.vertex_weights, num_parts, imbalance)
    cut_before = view.edge_cut(np.asarray(assignment)).cut_weight
    assignment, rebalance_info = rebalance(view, assignment, num_parts, caps, max_rebalance_rounds)
    assignment, refine_info = refine_boundary(view, assignment, num_parts, caps, max_passes)
    return assignment, {
        **rebalance_info,
        **refine_info,
        "cut_weight_before": cut_before,
        "cut_weight_after": view.edge_cut(assignment).cut_weight,
        "max_imbalance": max_imbalance(view.vertex_weights, assignment, num_parts),
    }
