"""In-memory graph contract shared by every partitioning algorithm.

The graph store job hands the partitioner one global node id space ``0..N-1``
(each node type's dense ids offset into it) and a weighted undirected adjacency
given as COO rows ``(u, v, w)``. :meth:`PartitionGraph.from_coo` validates that
input once and turns it into a symmetric CSR with one entry per direction of
each undirected pair, which is what METIS, the refiners and the quality metrics
read. :class:`GraphView` is the narrower interface the refiners, the placement and
the quality report read, so that they also run on a graph held in Spark.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

# lo * N + hi must fit in int64 for the dedupe key.
_MAX_NUM_NODES = 3_037_000_499


@dataclass(frozen=True, eq=False)
class PartitionGraph:
    """Symmetric weighted graph in CSR form.

    Every undirected pair ``{u, v}`` is stored twice, once in row ``u`` and
    once in row ``v``, with the same weight; rows hold their columns in
    ascending order and there are no self loops.

    Attributes:
        indptr: int64 [N + 1] row offsets into ``indices``.
        indices: int64 [2 * num_edges] neighbour node ids.
        edge_weight: float64 [2 * num_edges] weight of each stored direction;
            the weight of the undirected pair (both entries are equal).
        vertex_weights: float64 [N, C] non-negative balance constraints, e.g.
            column 0 = training events counted at the node, column 1 = incident
            edges. ``C >= 1``; unit weights when the caller gave none.
        node_type: int16 [N] node type of each global id, or None for coarse
            graphs whose nodes are clusters of several types.
    """

    indptr: np.ndarray
    indices: np.ndarray
    edge_weight: np.ndarray
    vertex_weights: np.ndarray
    node_type: np.ndarray | None = None

    @property
    def num_nodes(self) -> int:
        """Number of nodes N."""
        return int(self.indptr.shape[0] - 1)

    @property
    def num_edges(self) -> int:
        """Number of undirected pairs (half the stored CSR entries)."""
        return int(self.indices.shape[0] // 2)

    @property
    def num_constraints(self) -> int:
        """Number of vertex weight columns C."""
        return int(self.vertex_weights.shape[1])

    def degrees(self) -> np.ndarray:
        """Unweighted degree of every node, int64 [N]."""
        return np.diff(self.indptr)

    def row_of_entry(self) -> np.ndarray:
        """Source node of every stored CSR entry, int64 [2 * num_edges]."""
        return np.repeat(np.arange(self.num_nodes, dtype=np.int64), self.degrees())

    def edge_list(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each undirected pair once, as ``(src, dst, weight)`` with ``src < dst``."""
        rows = self.row_of_entry()
        upper = self.indices > rows
        return rows[upper], self.indices[upper], self.edge_weight[upper]

    @classmethod
    def from_coo(
        cls,
        num_nodes: int,
        src: np.ndarray,
        dst: np.ndarray,
        weight: np.ndarray | None = None,
        *,
        node_type: np.ndarray | None = None,
        vertex_weights: np.ndarray | None = None,
        combine: Literal["sum", "max"] = "sum",
    ) -> PartitionGraph:
        """Builds the symmetric CSR from a COO edge list in either orientation.

        Rows that name the same unordered pair are merged: ``combine="sum"``
        adds their weights (so a caller that emits both ``(u, v, w)`` and
        ``(v, u, w)`` gets ``2w`` on every pair, which leaves partitions and
        every fraction metric unchanged because they are scale invariant, but
        mixing one-way and two-way rows would bias the weights);
        ``combine="max"`` keeps the largest, for callers that emit both
        directions of an already aggregated pair.

        Args:
            num_nodes: N, the size of the global id space.
            src: int [num_rows] one end of each row, in ``[0, N)``.
            dst: int [num_rows] the other end, ``!= src``.
            weight: float [num_rows] positive finite weights; 1.0 when None.
            node_type: int [N] node type per global id, optional.
            vertex_weights: float [N] or [N, C] non-negative balance weights;
                unit weights when None.
            combine: how duplicate rows of one unordered pair are merged.

        Returns:
            The validated graph.

        Raises:
            ValueError: on ids out of range, self loops, non-positive or
                non-finite weights, or arrays of the wrong shape.
        """
        num_nodes = int(num_nodes)
        if num_nodes < 0:
            raise ValueError(f"num_nodes must be >= 0, got {num_nodes}")
        if num_nodes > _MAX_NUM_NODES:
            raise ValueError(f"num_nodes={num_nodes} exceeds the supported {_MAX_NUM_NODES}")
        src = np.asarray(src)
        dst = np.asarray(dst)
        if src.ndim != 1 or src.shape != dst.shape:
            raise ValueError(f"src and dst must be 1-D of equal length, got {src.shape} and {dst.shape}")
        if src.size and not (np.issubdtype(src.dtype, np.integer) and np.issubdtype(dst.dtype, np.integer)):
            raise ValueError(f"src and dst must be integer node ids, got {src.dtype} and {dst.dtype}")
        src = src.astype(np.int64, copy=False)
        dst = dst.astype(np.int64, copy=False)
        check_node_ids(src, num_nodes, "src")
        check_node_ids(dst, num_nodes, "dst")
        loops = int(np.count_nonzero(src == dst))
        if loops:
            first = int(src[np.argmax(src == dst)])
            raise ValueError(
                f"{loops} self loops in the edge list (first at node {first}); the contract is u != v"
            )
        if weight is None:
            weight = np.ones(src.shape[0], dtype=np.float64)
        else:
            weight = np.asarray(weight, dtype=np.float64)
            if weight.shape != src.shape:
                raise ValueError(f"weight has shape {weight.shape}, expected {src.shape}")
            if weight.size and not (np.all(np.isfinite(weight)) and weight.min() > 0):
                raise ValueError("edge weights must be finite and > 0")
        if combine not in ("sum", "max"):
            raise ValueError(f"combine must be 'sum' or 'max', got {combine!r}")

        lo = np.minimum(src, dst)
        hi = np.maximum(src, dst)
        if combine == "sum":
            lo, hi, pair_weight = aggregate_pairs(lo, hi, weight, num_nodes, num_nodes)
        else:
            pair_key, inverse = np.unique(lo * num_nodes + hi, return_inverse=True)
            pair_weight = np.zeros(pair_key.shape[0], dtype=np.float64)
            np.maximum.at(pair_weight, inverse, weight)
            lo, hi = pair_key // max(num_nodes, 1), pair_key % max(num_nodes, 1)
        return cls.from_canonical_pairs(
            num_nodes, lo, hi, pair_weight, node_type=node_type, vertex_weights=vertex_weights
        )

    @classmethod
    def from_canonical_pairs(
        cls,
        num_nodes: int,
        lo: np.ndarray,
        hi: np.ndarray,
        weight: np.ndarray,
        *,
        node_type: np.ndarray | None = None,
        vertex_weights: np.ndarray | None = None,
    ) -> PartitionGraph:
        """Builds the CSR from already deduplicated pairs with ``lo < hi``.

        Internal fast path for :meth:`from_coo` and graph contraction; ids and
        weights are trusted.
        """
        upper = sp.csr_array(
            (np.asarray(weight, dtype=np.float64), (np.asarray(lo), np.asarray(hi))),
            shape=(num_nodes, num_nodes),
        )
        symmetric = (upper + upper.T).tocsr()
        symmetric.sort_indices()
        return cls(
            indptr=symmetric.indptr.astype(np.int64),
            indices=symmetric.indices.astype(np.int64),
            edge_weight=symmetric.data.astype(np.float64, copy=False),
            vertex_weights=_check_vertex_weights(vertex_weights, num_nodes),
            node_type=_check_node_type(node_type, num_nodes),
        )


def aggregate_pairs(
    row: np.ndarray, col: np.ndarray, weight: np.ndarray, num_rows: int, num_cols: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sums the weights of equal ``(row, col)`` pairs.

    A sparse-matrix build, several times faster than ``np.unique`` on a
    combined key.

    Args:
        row: int [M] in ``[0, num_rows)``.
        col: int [M] in ``[0, num_cols)``.
        weight: float [M].
        num_rows: row bound.
        num_cols: column bound.

    Returns:
        ``(row, col, weight)`` int64, int64, float64, one entry per distinct
        pair, sorted by row then column.
    """
    matrix = sp.csr_array((np.asarray(weight, dtype=np.float64), (row, col)), shape=(num_rows, num_cols))
    matrix.sum_duplicates()
    rows = np.repeat(np.arange(num_rows, dtype=np.int64), np.diff(matrix.indptr))
    return rows, matrix.indices.astype(np.int64), matrix.data.astype(np.float64, copy=False)


def check_node_ids(node_ids: np.ndarray, num_nodes: int, name: str) -> None:
    """Raises ValueError naming ``name`` when an id is outside ``[0, num_nodes)``."""
    if node_ids.size == 0:
        return
    low, high = int(node_ids.min()), int(node_ids.max())
    if low < 0 or high >= num_nodes:
        bad = low if low < 0 else high
        raise ValueError(f"{name} contains node id {bad} outside [0, {num_nodes})")


def _check_vertex_weights(vertex_weights: np.ndarray | None, num_nodes: int) -> np.ndarray:
    if vertex_weights is None:
        return np.ones((num_nodes, 1), dtype=np.float64)
    weights = np.asarray(vertex_weights, dtype=np.float64)
    if weights.ndim == 1:
        weights = weights[:, None]
    if weights.ndim != 2 or weights.shape[0] != num_nodes or weights.shape[1] < 1:
        raise ValueError(
            f"vertex_weights must have shape [{num_nodes}] or [{num_nodes}, C], got {weights.shape}"
        )
    if weights.size and not (np.all(np.isfinite(weights)) and weights.min() >= 0):
        raise ValueError("vertex_weights must be finite and >= 0")
    return weights


def _check_node_type(node_type: np.ndarray | None, num_nodes: int) -> np.ndarray | None:
    if node_type is None:
        return None
    node_type = np.asarray(node_type)
    if node_type.shape != (num_nodes,):
        raise ValueError(f"node_type must have shape [{num_nodes}], got {node_type.shape}")
    if node_type.size and not np.issubdtype(node_type.dtype, np.integer):
        raise ValueError(f"node_type must be integer, got {node_type.dtype}")
    return node_type.astype(np.int16, copy=False)


def normalized_vertex_weight(vertex_weights: np.ndarray) -> np.ndarray:
    """Collapses C balance constraints into one weight per node.

    Each column is divided by its total so that every constraint contributes
    the same total mass (1.0), then the columns are summed. Columns that sum
    to zero are dropped. This is the single weight used where only one
    constraint can be honoured (pymetis, cluster size caps).

    Args:
        vertex_weights: float [N, C].

    Returns:
        float64 [N]; sums to the number of non-zero columns.
    """
    totals = vertex_weights.sum(axis=0)
    keep = totals > 0
    if not np.any(keep):
        return np.zeros(vertex_weights.shape[0], dtype=np.float64)
    return (vertex_weights[:, keep] / totals[keep]).sum(axis=1)


@dataclass(frozen=True)
class EdgeCut:
    """Undirected edges (pairs) whose two ends lie in different parts.

    Attributes:
        cut_edges: pairs across parts.
        num_edges: all pairs.
        cut_weight: summed weight of the pairs across parts.
        total_weight: summed weight of all pairs.
    """

    cut_edges: int
    num_edges: int
    cut_weight: float
    total_weight: float

    def fraction(self, *, weighted: bool = False) -> float:
        """Share of pairs (or of their weight) across parts; 0.0 without edges."""
        if weighted:
            return self.cut_weight / self.total_weight if self.total_weight > 0 else 0.0
        return self.cut_edges / self.num_edges if self.num_edges else 0.0


class GraphView(abc.ABC):
    """What refinement, placement and the quality report read from a partitioned graph.

    Two implementations: :class:`partitioning.refine.CsrGraphView` over an in-memory
    :class:`PartitionGraph`, and :class:`partitioning.spark_graph.SparkGraphView`
    over an adjacency DataFrame that stays in Spark (the graph past one machine's
    memory). Per-node arrays (vertex weights, degrees, books) live in memory in both;
    every method returns at most one row per node or per requested item, never the
    edge list, except :meth:`pairs_touching` (the pairs of the nodes asked for).

    Neighbours of a node are ordered by ascending id (the CSR order), so
    :meth:`neighbours_at` names the same neighbour in both implementations.
    """

    @property
    @abc.abstractmethod
    def num_nodes(self) -> int:
        """Number of nodes N."""

    @property
    @abc.abstractmethod
    def vertex_weights(self) -> np.ndarray:
        """float64 [N, C] balance constraints."""

    @property
    @abc.abstractmethod
    def node_type(self) -> np.ndarray | None:
        """int16 [N] node type per id, or None."""

    @property
    def num_constraints(self) -> int:
        """Number of vertex weight columns C."""
        return int(self.vertex_weights.shape[1])

    @abc.abstractmethod
    def degrees(self) -> np.ndarray:
        """Distinct neighbours of every node, int64 [N]."""

    @abc.abstractmethod
    def edge_cut(self, assignment: np.ndarray) -> EdgeCut:
        """Pairs, and their weight, across the parts of ``assignment`` (int [N])."""

    @abc.abstractmethod
    def neighbours_at(self, nodes: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """The ``positions[i]``-th neighbour (0-based, ascending ids) of ``nodes[i]``.

        Args:
            nodes: int64 [M], repeats allowed.
            positions: int64 [M], each below its node's degree.

        Returns:
            int64 [M] neighbour ids.
        """

    @abc.abstractmethod
    def neighbour_part_weights(
        self, assignment: np.ndarray, nodes: np.ndarray, num_parts: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Edge weight from each of ``nodes`` (distinct) to each part it touches.

        Returns:
            ``(local_row, part, weight)`` sorted by (local_row, part), one entry per
            (node, neighbouring part); ``local_row`` indexes ``nodes``.
        """

    @abc.abstractmethod
    def boundary_moves(
        self, assignment: np.ndarray, num_parts: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every boundary node's best single move, where it lowers the cut.

        A boundary node's move goes to the other part it has most edge weight to
        (ties: lowest part); its gain is that weight minus the weight to its own part.

        Returns:
            ``(nodes, dest, gain)`` for the moves with gain > 0, nodes ascending.
        """

    @abc.abstractmethod
    def still_profitable(
        self, assignment: np.ndarray, nodes: np.ndarray, dest: np.ndarray, priority: np.ndarray
    ) -> np.ndarray:
        """Moves that still lower the cut if every higher-priority move happens first.

        Args:
            assignment: int [N] book before the moves.
            nodes: int64 [M] distinct moving nodes (ties in priority: lower id first).
            dest: int64 [M] destination of each move.
            priority: float64 [M] higher first.

        Returns:
            bool [M].
        """

    @abc.abstractmethod
    def pairs_touching(self, ranges: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs with at least one end in one of the id ranges ``[start, stop)``.

        Returns:
            ``(src, dst, weight)`` int64, int64, float64, each pair once with
            ``src < dst``.
        """
