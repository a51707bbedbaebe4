"""Quality of a partition book for distributed GNN training.

Remote lookups (the figure that matters for training throughput)
    Training runs one worker per part; the worker that owns a seed's node
    (``assignment[seed]``) builds that seed's sampled computation tree. The
    estimate draws ``num_seeds`` training events uniformly with replacement
    from ``seed_nodes`` (one entry per event, so busy users weigh more) and,
    for each, samples a tree hop by hop: at hop ``h`` every node of the
    previous layer draws ``fanouts[h]`` neighbours uniformly *without*
    replacement (all of them when its degree is at most the fanout), the
    default of PyG's and DGL's neighbour samplers. Every sampled neighbour is
    one lookup; it is *remote* when ``assignment[neighbour]`` differs from
    ``assignment[seed]``, the part of the worker that owns the tree, whatever
    the part of the node it was reached from.

    ``remote_fraction_1hop`` = remote lookups / lookups in layer 1;
    ``remote_fraction_2hop`` = the same over layer 2 only. Trees are counted
    per seed, without the de-duplication a mini-batch does, and the graph is
    static: the "strictly earlier neighbours only" rule of the temporal
    sampler is not applied, so hubs with long histories weigh as in the
    static graph.

Edge cut
    Share of undirected edges (and of their weight) whose two ends are in
    different parts.

Balance
    max over parts / mean over parts (1.0 = perfect), of: node counts per
    node type and overall; edges, where each stored direction ``u -> v`` of
    an undirected edge is owned by the part of its destination ``v`` (so a
    part's edge load is the degree sum of its nodes); training events, owned
    by the part of their user node; and each vertex weight constraint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from partitioning.base import PartitionResult
from partitioning.graph import PartitionGraph, check_node_ids
from partitioning.refine import entries_of_rows


def _check_book(graph: PartitionGraph, assignment: np.ndarray) -> np.ndarray:
    assignment = np.asarray(assignment)
    if assignment.shape != (graph.num_nodes,):
        raise ValueError(f"assignment has shape {assignment.shape}, expected ({graph.num_nodes},)")
    return assignment.astype(np.int64, copy=False)


def edge_cut_fraction(graph: PartitionGraph, assignment: np.ndarray, *, weighted: bool = False) -> float:
    """Share of undirected edges whose ends are in different parts.

    Args:
        graph: the graph.
        assignment: int [N] partition book.
        weighted: share of edge weight instead of edge count.

    Returns:
        A value in [0, 1]; 0.0 for a graph without edges.
    """
    assignment = _check_book(graph, assignment)
    if graph.num_edges == 0:
        return 0.0
    crossing = assignment[graph.row_of_entry()] != assignment[graph.indices]
    if weighted:
        return float(graph.edge_weight[crossing].sum() / graph.edge_weight.sum())
    return float(np.count_nonzero(crossing) / crossing.shape[0])


def sample_neighbours(
    graph: PartitionGraph, nodes: np.ndarray, fanout: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform neighbour sampling without replacement, vectorised.

    Nodes of degree at most ``fanout`` keep all their neighbours; the others
    draw a uniform ``fanout``-subset with Floyd's algorithm run on all rows
    at once (``fanout`` vector steps).

    Args:
        graph: the graph.
        nodes: int64 [M] nodes to sample around (repeats allowed).
        fanout: neighbours per node, >= 1.
        rng: the random generator.

    Returns:
        ``(origin, neighbour)`` int64 [K]: ``neighbour[i]`` was sampled for
        ``nodes[origin[i]]``.
    """
    if fanout < 1:
        raise ValueError(f"fanout must be >= 1, got {fanout}")
    degree = graph.indptr[nodes + 1] - graph.indptr[nodes]
    take_all = np.flatnonzero(degree <= fanout)
    local_row, entry = entries_of_rows(graph.indptr, nodes[take_all])
    origin_all, neighbour_all = take_all[local_row], graph.indices[entry]

    subsample = np.flatnonzero(degree > fanout)
    row_degree = degree[subsample]
    picks = np.empty((subsample.shape[0], fanout), dtype=np.int64)
    for step in range(fanout):
        upper = row_degree - fanout + step  # Floyd: draw from [0, upper], take upper on a repeat
        draw = np.minimum((rng.random(subsample.shape[0]) * (upper + 1)).astype(np.int64), upper)
        if step:
            repeated = (picks[:, :step] == draw[:, None]).any(axis=1)
            draw = np.where(repeated, upper, draw)
        picks[:, step] = draw
    neighbour_sub = graph.indices[(graph.indptr[nodes[subsample]][:, None] + picks).ravel()]
    origin_sub = np.repeat(subsample, fanout)
    return np.concatenate([origin_all, origin_sub]), np.concatenate([neighbour_all, neighbour_sub])


@dataclass(frozen=True)
class RemoteLookups:
    """Remote share of sampled-neighbour lookups per hop.

    Attributes:
        remote_fraction: remote / total lookups of each hop, [len(fanouts)];
            NaN for a hop without lookups.
        lookups: lookups per hop.
        num_seeds: training events sampled.
    """

    remote_fraction: tuple[float, ...]
    lookups: tuple[int, ...]
    num_seeds: int


def remote_lookups(
    graph: PartitionGraph,
    assignment: np.ndarray,
    seed_nodes: np.ndarray,
    fanouts: Sequence[int],
    rng: np.random.Generator,
    *,
    num_seeds: int | None = 10_000,
) -> RemoteLookups:
    """Estimates the remote share of neighbour lookups (see the module docstring).

    Args:
        graph: the graph.
        assignment: int [N] partition book.
        seed_nodes: int [num_events] user node of every training event.
        fanouts: neighbours sampled per node at each hop, e.g. ``(10, 5)``.
        rng: the random generator.
        num_seeds: events drawn with replacement; None uses every event once.

    Returns:
        Remote fraction and lookup count per hop.
    """
    assignment = _check_book(graph, assignment)
    seed_nodes = np.asarray(seed_nodes, dtype=np.int64)
    check_node_ids(seed_nodes, graph.num_nodes, "seed_nodes")
    if seed_nodes.size == 0:
        raise ValueError("seed_nodes is empty: no training events to sample")
    if num_seeds is not None:
        seed_nodes = seed_nodes[rng.integers(0, seed_nodes.shape[0], size=num_seeds)]
    owner_part = assignment[seed_nodes]
    frontier, frontier_owner = seed_nodes, owner_part
    fractions: list[float] = []
    lookups: list[int] = []
    for fanout in fanouts:
        origin, neighbour = sample_neighbours(graph, frontier, int(fanout), rng)
        neighbour_owner = frontier_owner[origin]
        remote = np.count_nonzero(assignment[neighbour] != neighbour_owner)
        lookups.append(int(neighbour.shape[0]))
        fractions.append(float(remote / neighbour.shape[0]) if neighbour.shape[0] else float("nan"))
        frontier, frontier_owner = neighbour, neighbour_owner
    return RemoteLookups(
        remote_fraction=tuple(fractions), lookups=tuple(lookups), num_seeds=int(seed_nodes.shape[0])
    )


def remote_fraction_1hop(
    graph: PartitionGraph,
    assignment: np.ndarray,
    seed_nodes: np.ndarray,
    rng: np.random.Generator,
    *,
    fanout: int = 10,
    num_seeds: int | None = 10_000,
) -> float:
    """Remote share of the first hop's lookups (see the module docstring)."""
    return remote_lookups(graph, assignment, seed_nodes, (fanout,), rng, num_seeds=num_seeds).remote_fraction[
        0
    ]


def remote_fraction_2hop(
    graph: PartitionGraph,
    assignment: np.ndarray,
    seed_nodes: np.ndarray,
    rng: np.random.Generator,
    *,
    fanouts: tuple[int, int] = (10, 5),
    num_seeds: int | None = 10_000,
) -> float:
    """Remote share of the second hop's lookups (see the module docstring)."""
    return remote_lookups(graph, assignment, seed_nodes, fanouts, rng, num_seeds=num_seeds).remote_fraction[1]


def _max_over_mean(per_part: np.ndarray) -> float:
    mean = per_part.sum() / per_part.shape[0]
    return float(per_part.max() / mean) if mean > 0 else 1.0


def balance(
    graph: PartitionGraph,
    assignment: np.ndarray,
    num_parts: int,
    *,
    seed_nodes: np.ndarray | None = None,
    type_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """max/mean load over parts for each quantity (see the module docstring).

    Args:
        graph: the graph.
        assignment: int [N] partition book.
        num_parts: number of parts.
        seed_nodes: int [num_events] user node of each training event; adds
            ``"training_events"`` when given.
        type_names: names of node types by id, for the ``"nodes/<type>"``
            keys; the numeric id is used otherwise.

    Returns:
        Keys ``"nodes"``, ``"nodes/<type>"`` for every type present,
        ``"edges"``, ``"training_events"``, ``"vertex_weight/<c>"``.
    """
    assignment = _check_book(graph, assignment)
    result = {"nodes": _max_over_mean(np.bincount(assignment, minlength=num_parts))}
    if graph.node_type is not None:
        for node_type in np.unique(graph.node_type):
            name = type_names[node_type] if type_names is not None else str(int(node_type))
            counts = np.bincount(assignment[graph.node_type == node_type], minlength=num_parts)
            result[f"nodes/{name}"] = _max_over_mean(counts)
    result["edges"] = _max_over_mean(np.bincount(assignment, weights=graph.degrees(), minlength=num_parts))
    if seed_nodes is not None:
        seed_nodes = np.asarray(seed_nodes, dtype=np.int64)
        check_node_ids(seed_nodes, graph.num_nodes, "seed_nodes")
        result["training_events"] = _max_over_mean(np.bincount(assignment[seed_nodes], minlength=num_parts))
    for column in range(graph.num_constraints):
        weights = graph.vertex_weights[:, column]
        result[f"vertex_weight/{column}"] = _max_over_mean(
            np.bincount(assignment, weights=weights, minlength=num_parts)
        )
    return result


def quality_report(
    graph: PartitionGraph,
    result: PartitionResult,
    seed_nodes: np.ndarray,
    rng: np.random.Generator,
    *,
    fanouts: Sequence[int] = (10, 5),
    num_seeds: int | None = 10_000,
    type_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """All quality figures of one partition book, JSON-serialisable.

    Args:
        graph: the graph that was partitioned.
        result: the partitioner's result.
        seed_nodes: int [num_events] user node of each training event.
        rng: the random generator for the lookup estimate.
        fanouts: at least two hops, e.g. ``(10, 5)``.
        num_seeds: events sampled for the lookup estimate.
        type_names: node type names by id.

    Returns:
        ``edge_cut_fraction`` ({"unweighted", "weighted"}),
        ``remote_fraction_1hop``, ``remote_fraction_2hop``, ``balance``
        (dict), ``wall_s``, ``peak_rss_bytes``, plus ``algorithm``,
        ``num_parts``, ``peak_rss_delta_bytes``, ``lookups`` and
        ``num_seeds``.
    """
    if len(fanouts) < 2:
        raise ValueError(f"fanouts needs at least two hops, got {list(fanouts)}")
    lookups = remote_lookups(graph, result.assignment, seed_nodes, fanouts, rng, num_seeds=num_seeds)
    return {
        "algorithm": result.algorithm,
        "num_parts": result.num_parts,
        "edge_cut_fraction": {
            "unweighted": edge_cut_fraction(graph, result.assignment),
            "weighted": edge_cut_fraction(graph, result.assignment, weighted=True),
        },
        "remote_fraction_1hop": lookups.remote_fraction[0],
        "remote_fraction_2hop": lookups.remote_fraction[1],
        "lookups": {f"hop{hop + 1}": count for hop, count in enumerate(lookups.lookups)},
        "num_seeds": lookups.num_seeds,
        "balance": balance(
            graph, result.assignment, result.num_parts, seed_nodes=seed_nodes, type_names=type_names
        ),
        "wall_s": result.wall_s,
        "peak_rss_bytes": result.peak_rss_bytes,
        "peak_rss_delta_bytes": result.peak_rss_delta_bytes,
    }
