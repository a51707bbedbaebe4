"""Incremental placement of new nodes into an existing partition book.

Between full repartitions, each day's new users and items are streamed into
the parts chosen by the last full run (whose book is reused, never refitted).
The rule is Fennel's (Tsourakakis et al., WSDM 2014) with a normalised load
penalty and a hard cap:

    score(v, p) = sum of w(v, u) over placed neighbours u in part p
                  - alpha * gamma * fill_p ** (gamma - 1)

    fill_p = max over constraints c of load[p, c] / mean_c,
    mean_c = (current total + new nodes' total of constraint c) / num_parts.

``v`` goes to the highest-scoring part (ties: lowest part id) that stays
within ``cap_c = max((1 + tolerance) * mean_c, mean_c + heaviest new node)``
in every constraint the node carries weight in; the second term of the max
guarantees a part with room exists for a single constraint. With loads counted in nodes, ``alpha = m / n``
(edge weight per node) is exactly Fennel's ``m k^(gamma-1) / n^gamma``; by
default it is estimated from the new nodes' own edges as half their mean
weighted degree.

New nodes are processed in stream order, in batches: a batch's nodes see the
nodes placed by earlier batches (and the existing book) but not each other,
and its penalties use the loads at the batch start, while the cap is checked
exactly, node by node in stream order. ``batch_size=1`` is the exact
sequential stream; larger batches trade that for vectorisation (one Python
iteration per batch plus a few per contested part).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from partitioning.graph import GraphView, PartitionGraph, check_node_ids
from partitioning.quality import edge_cut_fraction


@dataclass(frozen=True, eq=False)
class Placement:
    """Outcome of :func:`place_new_nodes`.

    Attributes:
        assignment: int32 [N] the book with the new nodes filled in.
        part_loads: float64 [num_parts, C] loads after placement.
        caps: float64 [C] per-part caps that were enforced.
        num_over_cap: new nodes that fitted in no part and went to the least
            filled one (possible only with several constraints).
    """

    assignment: np.ndarray
    part_loads: np.ndarray
    caps: np.ndarray
    num_over_cap: int


def _as_2d(values: np.ndarray, rows: int, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] != rows:
        raise ValueError(f"{name} must have shape [{rows}] or [{rows}, C], got {values.shape}")
    if values.size and not (np.all(np.isfinite(values)) and values.min() >= 0):
        raise ValueError(f"{name} must be finite and >= 0")
    return values


def place_new_nodes(
    assignment: np.ndarray,
    new_node_ids: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    part_loads: np.ndarray,
    *,
    new_node_weights: np.ndarray | None = None,
    tolerance: float = 0.05,
    gamma: float = 1.5,
    alpha: float | None = None,
    batch_size: int = 1024,
) -> Placement:
    """Streams new nodes into the parts of an existing book (module docstring).

    Args:
        assignment: int [N] existing book over the whole id space, ``-1`` for
            nodes not placed yet.
        new_node_ids: int [n_new] nodes to place, in stream order (e.g. first
            seen time); each must be ``-1`` in ``assignment``.
        edges: ``(src, dst, weight)`` edges touching new nodes, either
            orientation; weight None means 1. Edges whose other end is not
            placed yet count only once it is placed (earlier batch).
        part_loads: float [num_parts] or [num_parts, C] current loads of the
            placed nodes, in the units of ``new_node_weights``.
        new_node_weights: float [n_new] or [n_new, C]; 1 per node when None.
        tolerance: allowed excess over the mean load after placement.
        gamma: Fennel exponent, > 1.
        alpha: penalty scale in edge weight units; None estimates it.
        batch_size: nodes decided together, >= 1.

    Returns:
        The completed book, loads and caps.

    Raises:
        ValueError: on ids out of range, new nodes already placed, repeated
            new nodes, or inconsistent shapes.
    """
    book = np.asarray(assignment)
    if book.ndim != 1 or (book.size and not np.issubdtype(book.dtype, np.integer)):
        raise ValueError(f"assignment must be a 1-D integer array, got {book.dtype} {book.shape}")
    book = book.astype(np.int64, copy=True)
    num_nodes = book.shape[0]
    loads = _as_2d(part_loads, np.asarray(part_loads).shape[0], "part_loads").copy()
    num_parts = loads.shape[0]
    if num_parts < 1:
        raise ValueError("part_loads must describe at least one part")
    if book.size and book.max() >= num_parts:
        raise ValueError(f"assignment holds part {int(book.max())} but part_loads has {num_parts} parts")
    if book.size and book.min() < -1:
        raise ValueError(f"assignment holds part {int(book.min())}; use -1 for unplaced nodes")
    new_node_ids = np.asarray(new_node_ids, dtype=np.int64)
    check_node_ids(new_node_ids, num_nodes, "new_node_ids")
    if np.unique(new_node_ids).shape[0] != new_node_ids.shape[0]:
        raise ValueError("new_node_ids contains repeated ids")
    already = new_node_ids[book[new_node_ids] >= 0]
    if already.size:
        raise ValueError(f"new node {int(already[0])} is already placed in part {int(book[already[0]])}")
    if gamma <= 1:
        raise ValueError(f"gamma must be > 1, got {gamma}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    num_new = new_node_ids.shape[0]
    weights = np.ones((num_new, loads.shape[1])) if new_node_weights is None else new_node_weights
    weights = _as_2d(weights, num_new, "new_node_weights")
    if weights.shape[1] != loads.shape[1]:
        raise ValueError(f"new_node_weights has {weights.shape[1]} constraints, part_loads {loads.shape[1]}")

    # Adjacency of each new node (row = stream position) to any node.
    src, dst, edge_weight = edges
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    edge_weight = np.ones(src.shape[0]) if edge_weight is None else np.asarray(edge_weight, dtype=np.float64)
    if not (src.shape == dst.shape == edge_weight.shape):
        raise ValueError(f"edge arrays differ in shape: {src.shape}, {dst.shape}, {edge_weight.shape}")
    check_node_ids(src, num_nodes, "edges src")
    check_node_ids(dst, num_nodes, "edges dst")
    position = np.full(num_nodes, -1, dtype=np.int64)
    position[new_node_ids] = np.arange(num_new)
    from_src, from_dst = position[src] >= 0, position[dst] >= 0
    adjacency = sp.csr_array(
        (
            np.concatenate([edge_weight[from_src], edge_weight[from_dst]]),
            (
                np.concatenate([position[src[from_src]], position[dst[from_dst]]]),
                np.concatenate([dst[from_src], src[from_dst]]),
            ),
        ),
        shape=(num_new, num_nodes),
    )
    if alpha is None:
        mean_degree = adjacency.data.sum() / max(num_new, 1)
        alpha = 0.5 * mean_degree if mean_degree > 0 else 1.0

    totals = loads.sum(axis=0) + weights.sum(axis=0)
    means = totals / num_parts
    heaviest = weights.max(axis=0) if num_new else np.zeros(loads.shape[1])
    caps = np.maximum((1.0 + tolerance) * means, means + heaviest)
    safe_means = np.where(means > 0, means, 1.0)
    num_over_cap = 0

    for start in range(0, num_new, batch_size):
        stop = min(start + batch_size, num_new)
        batch = adjacency[start:stop].tocoo()
        neighbour_part = book[batch.col]
        placed = neighbour_part >= 0
        connection = np.zeros((stop - start, num_parts))
        np.add.at(connection, (batch.row[placed], neighbour_part[placed]), batch.data[placed])
        fill = (loads / safe_means).max(axis=1)
        score = connection - alpha * gamma * fill ** (gamma - 1.0)
        batch_weights = weights[start:stop]
        pending = np.arange(stop - start)
        full = np.zeros_like(score, dtype=bool)
        while pending.size:
            # A part is full for a node if the node's weight would push it over a
            # cap; constraints the node carries no weight in never block it.
            added = batch_weights[pending][:, None, :]
            full[pending] |= np.any((loads[None, :, :] + added > caps) & (added > 0), axis=2)
            stuck = full[pending].all(axis=1)
            if stuck.any():
                # Fits nowhere (several constraints): least filled part, counted.
                for row in pending[stuck]:
                    part = int(np.argmin(((loads + batch_weights[row]) / safe_means).max(axis=1)))
                    book[new_node_ids[start + row]] = part
                    loads[part] += batch_weights[row]
                    num_over_cap += 1
                pending = pending[~stuck]
                continue
            choice = np.argmax(np.where(full[pending], -np.inf, score[pending]), axis=1)
            # Accept, per chosen part and in stream order, the nodes that fit on top
            # of every node before them (accepted or not): conservative, exact
            # for batch_size=1.
            order = np.lexsort((pending, choice))
            chosen_part, rows = choice[order], pending[order]
            running = np.cumsum(batch_weights[rows], axis=0)
            starts = np.flatnonzero(np.r_[True, chosen_part[1:] != chosen_part[:-1]])
            before = np.where((starts > 0)[:, None], running[np.maximum(starts - 1, 0)], 0.0)
            filled = (
                loads[chosen_part]
                + running
                - np.repeat(before, np.diff(np.r_[starts, rows.shape[0]]), axis=0)
            )
            accepted = np.all((filled <= caps) | (batch_weights[rows] == 0), axis=1)
            book[new_node_ids[start + rows[accepted]]] = chosen_part[accepted]
            np.add.at(loads, chosen_part[accepted], batch_weights[rows[accepted]])
            pending = np.sort(rows[~accepted])

    result = book.astype(np.int32)
    result.setflags(write=False)
    return Placement(assignment=result, part_loads=loads, caps=caps, num_over_cap=num_over_cap)


@dataclass(frozen=True)
class CutDrift:
    """How far the edge cut has moved since the last full partitioning.

    Attributes:
        baseline: cut fraction recorded by the last full run.
        current: cut fraction of the current book on the current graph.
        absolute: ``current - baseline``.
        relative: ``current / baseline - 1`` (inf when the baseline is 0 and
            the cut is not).
    """

    baseline: float
    current: float
    absolute: float
    relative: float

    def exceeds(self, max_relative: float) -> bool:
        """Whether a full repartition is due under a relative-drift threshold."""
        return self.relative > max_relative


def edge_cut_drift(
    graph: PartitionGraph | GraphView,
    assignment: np.ndarray,
    baseline_cut_fraction: float,
    *,
    weighted: bool = False,
) -> CutDrift:
    """Edge cut of the incrementally extended book against the last full run's.

    Args:
        graph: today's graph (new nodes and edges included), or a view of it
            (e.g. held in Spark).
        assignment: int [N] book after :func:`place_new_nodes`.
        baseline_cut_fraction: :func:`partitioning.quality.edge_cut_fraction`
            of the last full partitioning, saved with its book.
        weighted: compare weighted cut shares instead of edge counts.

    Returns:
        The drift; repartition when ``drift.exceeds(threshold)``.
    """
    current = edge_cut_fraction(graph, assignment, weighted=weighted)
    if baseline_cut_fraction > 0:
        relative = current / baseline_cut_fraction - 1.0
    else:
        relative = 0.0 if current == 0 else float("inf")
    return CutDrift(
        baseline=float(baseline_cut_fraction),
        current=current,
        absolute=current - float(baseline_cut_fraction),
        relative=relative,
    )
