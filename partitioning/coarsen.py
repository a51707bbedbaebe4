"""Size-constrained label propagation coarsening, and METIS on the coarse graph.

For graphs above an edge budget (what one machine's METIS can hold), the
graph is coarsened in rounds until it fits, the coarsest graph is partitioned
with METIS, and the book is projected back level by level, rebalanced and
refined at each level (:func:`partitioning.refine.refine`).

One coarsening round (numpy reference; :mod:`partitioning.spark_coarsen` runs
the identical rule with DataFrames and produces the same clusters):

1. Every node starts in its own cluster, labelled by the node's *key* (its
   global id at the finest level, its cluster's label afterwards). A label
   names the cluster its node started; that node may itself move on later,
   so a label is an id, not necessarily a member.
2. ``iterations`` label propagation sweeps. In sweep ``t`` (numbered across
   rounds, ``t = round * iterations + i``) only the nodes with
   :func:`is_active` ``(key, t)`` move, so two neighbours rarely swap
   clusters in the same sweep. An active node computes its edge weight to
   every neighbouring cluster; among the other clusters that still have room
   for it (cluster weight plus its own within ``max_cluster_weight``) it picks
   the most connected (ties: smallest cluster key) and moves there when that
   weight is strictly larger than its weight to its current cluster. Moves
   into one cluster are accepted by
   decreasing gain (ties: smallest node key) while the cumulative weight fits;
   cluster weights are those at the start of the sweep.
3. Clusters are contracted: coarse node = cluster, coarse edge weight = sum of
   the fine edge weights between the two clusters (edges inside a cluster
   vanish), coarse vertex weights = sums.

Rounds stop when the coarse graph has at most ``edge_budget`` edges, when a
round removes less than ``min_edge_shrink`` of the edges, or after
``max_rounds``.

Label propagation rather than heavy-edge matching because the homepage graph
is a user-item graph with hub items: a matching contracts at most one user
into each hub per round, label propagation contracts a hub's whole
neighbourhood at once, and it needs only joins and aggregations on Spark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from partitioning.base import Partitioner, fill_empty_parts
from partitioning.graph import PartitionGraph, aggregate_pairs, normalized_vertex_weight
from partitioning.memory import MemoryProbe
from partitioning.metis import metis_assignment
from partitioning.refine import best_per_row, entries_of_rows, node_ranges, refine, row_chunks

# Lehmer (MINSTD) hash shared with the Spark version; all products stay below 2**63.
LEHMER_MODULUS = 2_147_483_647
LEHMER_MULTIPLIER = 48_271
SWEEP_SALT = 16_807


def is_active(node_key: np.ndarray, sweep: int) -> np.ndarray:
    """Whether each node may move in label propagation sweep ``sweep``, bool [n].

    Roughly half the nodes, a different half every sweep, a pure function of
    (key, sweep) so the Spark version picks exactly the same nodes.
    """
    mixed = ((node_key % LEHMER_MODULUS) * LEHMER_MULTIPLIER + (sweep + 1) * SWEEP_SALT) % LEHMER_MODULUS
    mixed = (mixed * LEHMER_MULTIPLIER) % LEHMER_MODULUS
    return mixed % 2 == 0


def label_propagation(
    graph: PartitionGraph,
    node_key: np.ndarray,
    coarsening_weight: np.ndarray,
    max_cluster_weight: float,
    iterations: int,
    first_sweep: int,
) -> np.ndarray:
    """One round of size-constrained label propagation (see the module docstring).

    Args:
        graph: graph of the current level.
        node_key: int64 [n] ascending keys of the level's nodes.
        coarsening_weight: float64 [n] weight counted against the cluster cap.
        max_cluster_weight: cap on a cluster's total coarsening weight.
        iterations: sweeps in this round.
        first_sweep: global number of the round's first sweep.

    Returns:
        int64 [n] cluster of each node, as the index of the node whose key
        is the cluster's label (keys ascend with indices, so ties broken by the
        smallest index are ties broken by the smallest key).
    """
    num_nodes = graph.num_nodes
    label = np.arange(num_nodes, dtype=np.int64)
    has_edges = graph.degrees() > 0
    for sweep in range(first_sweep, first_sweep + iterations):
        cluster_weight = np.bincount(label, weights=coarsening_weight, minlength=num_nodes)
        nodes = np.flatnonzero(is_active(node_key, sweep) & has_edges)
        if nodes.size == 0:
            continue
        # Each node's choice is independent: computed in bounded chunks.
        moves = [(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))]
        for chunk in row_chunks(graph.indptr, nodes):
            chunk_nodes = nodes[chunk]
            local_row, entry = entries_of_rows(graph.indptr, chunk_nodes)
            row, cluster, weight = aggregate_pairs(
                local_row,
                label[graph.indices[entry]],
                graph.edge_weight[entry],
                chunk_nodes.shape[0],
                num_nodes,
            )
            own = cluster == label[chunk_nodes][row]
            internal = np.zeros(chunk_nodes.shape[0])
            internal[row[own]] = weight[own]
            has_room = cluster_weight[cluster] + coarsening_weight[chunk_nodes][row] <= max_cluster_weight
            target, best_weight = best_per_row(row, cluster, weight, ~own & has_room, chunk_nodes.shape[0])
            best_row = np.flatnonzero(target >= 0)
            gain = best_weight[best_row] - internal[best_row]
            candidate = gain > 0
            moves.append((chunk_nodes[best_row][candidate], target[best_row][candidate], gain[candidate]))
        mover, target, gain = (np.concatenate(arrays) for arrays in zip(*moves, strict=True))
        if mover.size == 0:
            continue
        order = np.lexsort((mover, -gain, target))
        mover, target = mover[order], target[order]
        running = np.cumsum(coarsening_weight[mover])
        starts = np.flatnonzero(np.r_[True, target[1:] != target[:-1]])
        before = np.where(starts > 0, running[np.maximum(starts - 1, 0)], 0.0)
        filled = cluster_weight[target] + running - np.repeat(before, np.diff(np.r_[starts, target.shape[0]]))
        accepted = filled <= max_cluster_weight
        label[mover[accepted]] = target[accepted]
    return label


def contract(
    graph: PartitionGraph, label: np.ndarray, node_key: np.ndarray, coarsening_weight: np.ndarray
) -> tuple[PartitionGraph, np.ndarray, np.ndarray, np.ndarray]:
    """Contracts every cluster into one node.

    Args:
        graph: graph of the current level.
        label: int64 [n] cluster of each node (index of the node whose key is
            the cluster's label).
        node_key: int64 [n] keys of the current level.
        coarsening_weight: float64 [n].

    Returns:
        ``(coarse_graph, fine_to_coarse int64 [n], coarse_key int64 [m],
        coarse_coarsening_weight float64 [m])``; coarse nodes are ordered by
        ascending key.
    """
    cluster_index, fine_to_coarse = np.unique(label, return_inverse=True)
    num_coarse = cluster_index.shape[0]
    # Coarse pairs per chunk of fine rows, merged at the end (bounded temporaries).
    pieces = [(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))]
    for start, stop in node_ranges(graph.indptr):
        low, high = graph.indptr[start], graph.indptr[stop]
        src = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(graph.indptr[start : stop + 1]))
        dst = graph.indices[low:high]
        upper = dst > src  # each undirected edge once
        coarse_src, coarse_dst = fine_to_coarse[src[upper]], fine_to_coarse[dst[upper]]
        crossing = coarse_src != coarse_dst
        pieces.append(
            aggregate_pairs(
                np.minimum(coarse_src[crossing], coarse_dst[crossing]),
                np.maximum(coarse_src[crossing], coarse_dst[crossing]),
                graph.edge_weight[low:high][upper][crossing],
                num_coarse,
                num_coarse,
            )
        )
    low, high, pair_weight = aggregate_pairs(
        *(np.concatenate(arrays) for arrays in zip(*pieces, strict=True)), num_coarse, num_coarse
    )
    vertex_weights = np.stack(
        [
            np.bincount(fine_to_coarse, weights=graph.vertex_weights[:, c], minlength=num_coarse)
            for c in range(graph.num_constraints)
        ],
        axis=1,
    )
    coarse = PartitionGraph.from_canonical_pairs(
        num_coarse, low, high, pair_weight, vertex_weights=vertex_weights
    )
    coarse_weight = np.bincount(fine_to_coarse, weights=coarsening_weight, minlength=num_coarse)
    return coarse, fine_to_coarse, node_key[cluster_index], coarse_weight


@dataclass(frozen=True, eq=False)
class CoarseLevel:
    """One contraction.

    Attributes:
        graph: the coarse graph this round produced.
        fine_to_coarse: int64 [nodes of the previous level] coarse node of
            each node of the previous (finer) level.
        node_key: int64 [coarse nodes] key of each coarse node: its cluster's
            label, a global id (see the module docstring), unique per level
            and ascending.
    """

    graph: PartitionGraph
    fine_to_coarse: np.ndarray
    node_key: np.ndarray


@dataclass(frozen=True, eq=False)
class Coarsening:
    """All levels of a coarsening run, finest first.

    Attributes:
        levels: the contractions, the last one is the coarsest.
        reached_budget: whether the coarsest graph is within the edge budget.
    """

    levels: tuple[CoarseLevel, ...]
    reached_budget: bool

    def mapping(self, num_nodes: int) -> np.ndarray:
        """Coarsest node of every original node, int64 [num_nodes]."""
        mapping = np.arange(num_nodes, dtype=np.int64)
        for level in self.levels:
            mapping = level.fine_to_coarse[mapping]
        return mapping

    def cluster_key(self, num_nodes: int) -> np.ndarray:
        """Label (a global id) of every original node's coarsest cluster, int64 [num_nodes]."""
        if not self.levels:
            return np.arange(num_nodes, dtype=np.int64)
        return self.levels[-1].node_key[self.mapping(num_nodes)]


def coarsen_graph(
    graph: PartitionGraph,
    *,
    edge_budget: int,
    max_cluster_weight: float,
    coarsening_weight: np.ndarray | None = None,
    iterations: int = 4,
    max_rounds: int = 10,
    min_edge_shrink: float = 0.05,
) -> Coarsening:
    """Coarsens ``graph`` in label propagation rounds until it fits the budget.

    Args:
        graph: the fine graph; its node ids are the level-0 keys.
        edge_budget: stop once the coarse graph has at most this many
            undirected edges.
        max_cluster_weight: cap on a cluster's coarsening weight.
        coarsening_weight: float [N] weight counted against the cap; by
            default :func:`normalized_vertex_weight` of the vertex weights.
        iterations: label propagation sweeps per round.
        max_rounds: upper bound on rounds.
        min_edge_shrink: stop when a round removes less than this share of
            the edges (the level is still kept).

    Returns:
        The levels, finest first.
    """
    if edge_budget < 0:
        raise ValueError(f"edge_budget must be >= 0, got {edge_budget}")
    if coarsening_weight is None:
        coarsening_weight = normalized_vertex_weight(graph.vertex_weights)
    coarsening_weight = np.asarray(coarsening_weight, dtype=np.float64)
    if coarsening_weight.shape != (graph.num_nodes,):
        raise ValueError(
            f"coarsening_weight must have shape [{graph.num_nodes}], got {coarsening_weight.shape}"
        )
    node_key = np.arange(graph.num_nodes, dtype=np.int64)
    levels: list[CoarseLevel] = []
    current = graph
    for round_index in range(max_rounds):
        if current.num_edges <= edge_budget:
            break
        label = label_propagation(
            current, node_key, coarsening_weight, max_cluster_weight, iterations, round_index * iterations
        )
        coarse, fine_to_coarse, coarse_key, coarse_weight = contract(
            current, label, node_key, coarsening_weight
        )
        if coarse.num_nodes == current.num_nodes:
            break
        levels.append(CoarseLevel(graph=coarse, fine_to_coarse=fine_to_coarse, node_key=coarse_key))
        shrink = 1.0 - coarse.num_edges / max(current.num_edges, 1)
        current, node_key, coarsening_weight = coarse, coarse_key, coarse_weight
        if shrink < min_edge_shrink:
            break
    return Coarsening(levels=tuple(levels), reached_budget=current.num_edges <= edge_budget)


def max_cluster_weight_for(total_weight: float, num_parts: int, cluster_divisor: int) -> float:
    """Cluster cap: a ``1 / cluster_divisor`` share of one part's mean weight."""
    return total_weight / (num_parts * cluster_divisor)


@dataclass(frozen=True)
class CoarsenedMetisPartitioner(Partitioner):
    """Coarsen to ``edge_budget`` edges, METIS, project back and refine.

    Attributes:
        edge_budget: largest graph (undirected edges) given to METIS; a graph
            already within it is partitioned directly.
        cluster_divisor: a cluster weighs at most ``1 / cluster_divisor`` of
            a part's mean weight, so METIS still has at least
            ``num_parts * cluster_divisor`` coarse nodes to balance with.
        lp_iterations: label propagation sweeps per round.
        max_rounds: coarsening rounds at most.
        min_edge_shrink: stop coarsening when a round removes less than this
            share of the edges.
        ufactor: imbalance tolerance in thousandths, for METIS and the
            refinement caps.
        seed: METIS seed.
        niter: METIS refinement iterations.
        ncuts: METIS attempts.
        weight_resolution: integer scaling of float weights for METIS.
        refine_passes: boundary refinement passes per level.
        memory_probe: see :mod:`partitioning.memory`.
    """

    algorithm: ClassVar[str] = "coarsened_metis"

    edge_budget: int = 10_000_000
    cluster_divisor: int = 32
    lp_iterations: int = 4
    max_rounds: int = 10
    min_edge_shrink: float = 0.05
    ufactor: int = 30
    seed: int = 0
    niter: int = 10
    ncuts: int = 1
    weight_resolution: int = 1000
    refine_passes: int = 4
    memory_probe: MemoryProbe = "auto"

    def __post_init__(self) -> None:
        if self.edge_budget < 0:
            raise ValueError(f"edge_budget must be >= 0, got {self.edge_budget}")
        if self.cluster_divisor < 1:
            raise ValueError(f"cluster_divisor must be >= 1, got {self.cluster_divisor}")

    def _assign(self, graph: PartitionGraph, num_parts: int) -> tuple[np.ndarray, dict[str, Any]]:
        coarsening_weight = normalized_vertex_weight(graph.vertex_weights)
        coarsening = coarsen_graph(
            graph,
            edge_budget=self.edge_budget,
            max_cluster_weight=max_cluster_weight_for(
                float(coarsening_weight.sum()), num_parts, self.cluster_divisor
            ),
            coarsening_weight=coarsening_weight,
            iterations=self.lp_iterations,
            max_rounds=self.max_rounds,
            min_edge_shrink=self.min_edge_shrink,
        )
        graphs = [graph] + [level.graph for level in coarsening.levels]
        assignment, info = metis_assignment(
            graphs[-1],
            num_parts,
            ufactor=self.ufactor,
            seed=self.seed,
            niter=self.niter,
            ncuts=self.ncuts,
            weight_resolution=self.weight_resolution,
        )
        info["levels"] = [{"nodes": g.num_nodes, "edges": g.num_edges} for g in graphs]
        info["reached_budget"] = coarsening.reached_budget
        if not coarsening.levels and info["constraints_mode"] != "collapsed":
            return fill_empty_parts(assignment, num_parts), info
        for depth in range(len(coarsening.levels), -1, -1):
            if depth < len(coarsening.levels):
                assignment = assignment[coarsening.levels[depth].fine_to_coarse]
            assignment, refine_info = refine(
                graphs[depth],
                assignment,
                num_parts,
                imbalance=self.ufactor / 1000.0,
                max_passes=self.refine_passes,
            )
        info.update(refine_info)
        return fill_empty_parts(assignment, num_parts), info
