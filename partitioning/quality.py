"""Quality of a partition book for distributed GNN training.

Remote lookups (the figure that matters for training throughput)
    Training runs one worker per part; the worker that owns a seed's node
    (``assignment[seed]``) builds that seed's sampled computation tree. The
    estimate draws ``num_seeds`` training events uniformly with replacement,
    i.e. seed nodes with probability proportional to ``events_per_node``
    (training events counted at each node, so busy users weigh more:
    :func:`draw_seeds`), and, for each, samples a tree hop by hop: at hop
    ``h`` every node of the previous layer draws ``fanouts[h]`` neighbours
    uniformly *without* replacement (all of them when its degree is at most
    the fanout), the default of PyG's and DGL's neighbour samplers. Every
    sampled neighbour is one lookup; it is *remote* when
    ``assignment[neighbour]`` differs from ``assignment[seed]``, the part of
    the worker that owns the tree, whatever the part of the node it was
    reached from.

    The trees do not depend on the book, so one set of trees
    (:func:`sample_trees`) measures every book of a run on the same lookups.
    Sampling needs the degree of every node and the neighbours at the drawn
    positions only (:meth:`partitioning.graph.GraphView.neighbours_at`): on a
    graph held in Spark the positions are drawn on the driver exactly as in
    memory and only the picked neighbours are collected, so for the same
    generator both give the same trees and the same figures, and the driver
    holds O(nodes + lookups), not the edges.

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
from partitioning.graph import GraphView, PartitionGraph
from partitioning.refine import as_view, entries_of_rows


def _check_book(graph: PartitionGraph | GraphView, assignment: np.ndarray) -> np.ndarray:
    assignment = np.asarray(assignment)
    if assignment.shape != (graph.num_nodes,):
        raise ValueError(f"assignment has shape {assignment.shape}, expected ({graph.num_nodes},)")
    return assignment.astype(np.int64, copy=False)


def check_events_per_node(events_per_node: np.ndarray, num_nodes: int) -> np.ndarray:
    """``events_per_node`` as int64 [N], or ValueError naming what is wrong.

    Args:
        events_per_node: [N] training events counted at each node (non-negative
            integers, in any numeric dtype; e.g. the job's vertex weight column 0).
        num_nodes: N.
    """
    events = np.asarray(events_per_node)
    if events.shape != (num_nodes,):
        raise ValueError(f"events_per_node has shape {events.shape}, expected ({num_nodes},)")
    counts = events.astype(np.int64)
    if events.size and (counts.min() < 0 or not np.array_equal(counts, events)):
        raise ValueError("events_per_node must hold non-negative integer event counts")
    return counts


def draw_seeds(events_per_node: np.ndarray, num_seeds: int | None, rng: np.random.Generator) -> np.ndarray:
    """Seed nodes of training events drawn uniformly with replacement.

    A node is drawn with probability ``events_per_node[v] / total``: the same
    estimator as drawing events from the list of every event's node, without
    that list (8 B per event). For ids listed in ascending order, the draws
    are exactly those of ``np.repeat(np.arange(N), events_per_node)[
    rng.integers(0, total, num_seeds)]``.

    Args:
        events_per_node: int [N] training events counted at each node.
        num_seeds: draws; None returns every event's node once, ascending
            (memory in proportion to the events: for small graphs and tests).
        rng: the random generator.

    Returns:
        int64 [num_seeds] (or [total]) seed nodes.

    Raises:
        ValueError: on negative or fractional counts, or no events at all.
    """
    events = np.asarray(events_per_node)
    if events.ndim != 1:
        raise ValueError(f"events_per_node must be 1-D [N], got shape {events.shape}")
    counts = check_events_per_node(events, events.shape[0])
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1]) if cumulative.size else 0
    if total == 0:
        raise ValueError("events_per_node sums to 0: no training events to sample")
    if num_seeds is None:
        return np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)
    event = rng.integers(0, total, size=num_seeds)
    return np.searchsorted(cumulative, event, side="right").astype(np.int64)


def edge_cut_fraction(
    graph: PartitionGraph | GraphView, assignment: np.ndarray, *, weighted: bool = False
) -> float:
    """Share of undirected edges whose ends are in different parts.

    Args:
        graph: the graph, or a view of it (e.g. held in Spark).
        assignment: int [N] partition book.
        weighted: share of edge weight instead of edge count.

    Returns:
        A value in [0, 1]; 0.0 for a graph without edges.
    """
    assignment = _check_book(graph, assignment)
    return as_view(graph).edge_cut(assignment).fraction(weighted=weighted)


def sample_positions(
    degree: np.ndarray, fanout: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of uniformly sampled neighbours, without replacement, vectorised.

    Rows of degree at most ``fanout`` keep every position; the others draw a
    uniform ``fanout``-subset with Floyd's algorithm run on all rows at once
    (``fanout`` vector steps). Only the degrees are read, so the draws are the
    same wherever the graph lives.

    Args:
        degree: int64 [M] degree of each row (of each node to sample around).
        fanout: neighbours per row, >= 1.
        rng: the random generator.

    Returns:
        ``(origin, position)`` int64 [K]: the ``position[i]``-th neighbour
        (ascending ids) of row ``origin[i]``. Rows taking every neighbour come
        first, in row order, then the subsampled rows' picks.
    """
    if fanout < 1:
        raise ValueError(f"fanout must be >= 1, got {fanout}")
    degree = np.asarray(degree, dtype=np.int64)
    take_all = np.flatnonzero(degree <= fanout)
    offsets = np.zeros(take_all.shape[0] + 1, dtype=np.int64)
    np.cumsum(degree[take_all], out=offsets[1:])
    local_row, entry = entries_of_rows(offsets, np.arange(take_all.shape[0], dtype=np.int64))
    origin_all, position_all = take_all[local_row], entry - offsets[local_row]

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
    origin_sub = np.repeat(subsample, fanout)
    return np.concatenate([origin_all, origin_sub]), np.concatenate([position_all, picks.ravel()])


def sample_neighbours(
    graph: PartitionGraph | GraphView,
    nodes: np.ndarray,
    fanout: int,
    rng: np.random.Generator,
    *,
    degrees: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform neighbour sampling without replacement (:func:`sample_positions`).

    Args:
        graph: the graph, or a view of it (e.g. held in Spark).
        nodes: int64 [M] nodes to sample around (repeats allowed).
        fanout: neighbours per node, >= 1.
        rng: the random generator.
        degrees: int64 [N] degree of every node, when the caller has it.

    Returns:
        ``(origin, neighbour)`` int64 [K]: ``neighbour[i]`` was sampled for
        ``nodes[origin[i]]``.
    """
    view = as_view(graph)
    nodes = np.asarray(nodes, dtype=np.int64)
    degree = (view.degrees() if degrees is None else degrees)[nodes]
    origin, position = sample_positions(degree, fanout, rng)
    return origin, view.neighbours_at(nodes[origin], position)


@dataclass(frozen=True, eq=False)
class SampledTrees:
    """Sampled computation trees of training-event seeds (module docstring).

    Attributes:
        seeds: int64 [S] seed node of each tree.
        neighbours: per hop, int64 [L_h] the node of every lookup.
        roots: per hop, int64 [L_h] index into ``seeds`` of the tree each
            lookup belongs to.
    """

    seeds: np.ndarray
    neighbours: tuple[np.ndarray, ...]
    roots: tuple[np.ndarray, ...]


def sample_trees(
    graph: PartitionGraph | GraphView, seeds: np.ndarray, fanouts: Sequence[int], rng: np.random.Generator
) -> SampledTrees:
    """Samples every seed's tree hop by hop (module docstring).

    Args:
        graph: the graph, or a view of it (e.g. held in Spark).
        seeds: int64 [S] seed nodes (:func:`draw_seeds`).
        fanouts: neighbours sampled per node at each hop, e.g. ``(10, 5)``.
        rng: the random generator.

    Returns:
        The trees; lookups per hop.
    """
    view = as_view(graph)
    seeds = np.asarray(seeds, dtype=np.int64)
    degrees = view.degrees()
    frontier, roots = seeds, np.arange(seeds.shape[0], dtype=np.int64)
    hop_neighbours: list[np.ndarray] = []
    hop_roots: list[np.ndarray] = []
    for fanout in fanouts:
        origin, neighbour = sample_neighbours(view, frontier, int(fanout), rng, degrees=degrees)
        frontier, roots = neighbour, roots[origin]
        hop_neighbours.append(neighbour)
        hop_roots.append(roots)
    return SampledTrees(seeds=seeds, neighbours=tuple(hop_neighbours), roots=tuple(hop_roots))


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


def remote_lookups_of(trees: SampledTrees, assignment: np.ndarray) -> RemoteLookups:
    """Remote share of the lookups of sampled trees under one book.

    Args:
        trees: from :func:`sample_trees`.
        assignment: int [N] partition book.

    Returns:
        Remote fraction and lookup count per hop.
    """
    assignment = np.asarray(assignment, dtype=np.int64)
    owner_part = assignment[trees.seeds]
    fractions: list[float] = []
    lookups: list[int] = []
    for neighbour, root in zip(trees.neighbours, trees.roots, strict=True):
        remote = np.count_nonzero(assignment[neighbour] != owner_part[root])
        lookups.append(int(neighbour.shape[0]))
        fractions.append(float(remote / neighbour.shape[0]) if neighbour.shape[0] else float("nan"))
    return RemoteLookups(
        remote_fraction=tuple(fractions), lookups=tuple(lookups), num_seeds=int(trees.seeds.shape[0])
    )


def remote_lookups(
    graph: PartitionGraph | GraphView,
    assignment: np.ndarray,
    events_per_node: np.ndarray,
    fanouts: Sequence[int],
    rng: np.random.Generator,
    *,
    num_seeds: int | None = 10_000,
) -> RemoteLookups:
    """Estimates the remote share of neighbour lookups (see the module docstring).

    Args:
        graph: the graph, or a view of it (e.g. held in Spark).
        assignment: int [N] partition book.
        events_per_node: int [N] training events counted at each node.
        fanouts: neighbours sampled per node at each hop, e.g. ``(10, 5)``.
        rng: the random generator.
        num_seeds: events drawn with replacement; None uses every event once.

    Returns:
        Remote fraction and lookup count per hop.
    """
    assignment = _check_book(graph, assignment)
    events = check_events_per_node(events_per_node, graph.num_nodes)
    trees = sample_trees(graph, draw_seeds(events, num_seeds, rng), fanouts, rng)
    return remote_lookups_of(trees, assignment)


def remote_fraction_1hop(
    graph: PartitionGraph | GraphView,
    assignment: np.ndarray,
    events_per_node: np.ndarray,
    rng: np.random.Generator,
    *,
    fanout: int = 10,
    num_seeds: int | None = 10_000,
) -> float:
    """Remote share of the first hop's lookups (see the module docstring)."""
    return remote_lookups(
        graph, assignment, events_per_node, (fanout,), rng, num_seeds=num_seeds
    ).remote_fraction[0]


def remote_fraction_2hop(
    graph: PartitionGraph | GraphView,
    assignment: np.ndarray,
    events_per_node: np.ndarray,
    rng: np.random.Generator,
    *,
    fanouts: tuple[int, int] = (10, 5),
    num_seeds: int | None = 10_000,
) -> float:
    """Remote share of the second hop's lookups (see the module docstring)."""
    return remote_lookups(
        graph, assignment, events_per_node, fanouts, rng, num_seeds=num_seeds
    ).remote_fraction[1]


def _max_over_mean(per_part: np.ndarray) -> float:
    mean = per_part.sum() / per_part.shape[0]
    return float(per_part.max() / mean) if mean > 0 else 1.0


def balance(
    graph: PartitionGraph | GraphView,
    assignment: np.ndarray,
    num_parts: int,
    *,
    events_per_node: np.ndarray | None = None,
    type_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """max/mean load over parts for each quantity (see the module docstring).

    Args:
        graph: the graph, or a view of it (e.g. held in Spark).
        assignment: int [N] partition book.
        num_parts: number of parts.
        events_per_node: int [N] training events counted at each node; adds
            ``"training_events"`` when given.
        type_names: names of node types by id, for the ``"nodes/<type>"``
            keys; the numeric id is used otherwise.

    Returns:
        Keys ``"nodes"``, ``"nodes/<type>"`` for every type present,
        ``"edges"``, ``"training_events"``, ``"vertex_weight/<c>"``.
    """
    graph = as_view(graph)
    assignment = _check_book(graph, assignment)
    result = {"nodes": _max_over_mean(np.bincount(assignment, minlength=num_parts))}
    if graph.node_type is not None:
        for node_type in np.unique(graph.node_type):
            name = type_names[node_type] if type_names is not None else str(int(node_type))
            counts = np.bincount(assignment[graph.node_type == node_type], minlength=num_parts)
            result[f"nodes/{name}"] = _max_over_mean(counts)
    result["edges"] = _max_over_mean(np.bincount(assignment, weights=graph.degrees(), minlength=num_parts))
    if events_per_node is not None:
        events = check_events_per_node(events_per_node, graph.num_nodes)
        result["training_events"] = _max_over_mean(
            np.bincount(assignment, weights=events, minlength=num_parts)
        )
    for column in range(graph.num_constraints):
        weights = graph.vertex_weights[:, column]
        result[f"vertex_weight/{column}"] = _max_over_mean(
            np.bincount(assignment, weights=weights, minlength=num_parts)
        )
    return result


def quality_report(
    graph: PartitionGraph | GraphView,
    result: PartitionResult,
    events_per_node: np.ndarray,
    rng: np.random.Generator | None,
    *,
    fanouts: Sequence[int] = (10, 5),
    num_seeds: int | None = 10_000,
    type_names: Sequence[str] | None = None,
    trees: SampledTrees | None = None,
) -> dict[str, Any]:
    """All quality figures of one partition book, JSON-serialisable.

    Args:
        graph: the graph that was partitioned, or a view of it (e.g. held in
            Spark: :class:`partitioning.spark_graph.SparkGraphView`).
        result: the partitioner's result.
        events_per_node: int [N] training events counted at each node.
        rng: the random generator for the lookup estimate (None only with ``trees``).
        fanouts: at least two hops, e.g. ``(10, 5)``.
        num_seeds: events sampled for the lookup estimate.
        type_names: node type names by id.
        trees: trees already sampled for this graph (:func:`sample_trees`),
            so that several books are measured on the same lookups without
            sampling again; ``rng``, ``fanouts`` and ``num_seeds`` are then
            not used for sampling.

    Returns:
        ``edge_cut_fraction`` ({"unweighted", "weighted"}),
        ``remote_fraction_1hop``, ``remote_fraction_2hop``, ``balance``
        (dict), ``wall_s``, ``peak_rss_bytes``, plus ``algorithm``,
        ``num_parts``, ``peak_rss_delta_bytes``, ``lookups`` and
        ``num_seeds``.
    """
    view = as_view(graph)
    assignment = _check_book(view, result.assignment)
    events = check_events_per_node(events_per_node, view.num_nodes)
    if trees is None:
        if rng is None:
            raise ValueError("quality_report needs rng unless trees are given")
        if len(fanouts) < 2:
            raise ValueError(f"fanouts needs at least two hops, got {list(fanouts)}")
        trees = sample_trees(view, draw_seeds(events, num_seeds, rng), fanouts, rng)
    elif len(trees.neighbours) < 2:
        raise ValueError(f"trees need at least two hops, got {len(trees.neighbours)}")
    lookups = remote_lookups_of(trees, assignment)
    cut = view.edge_cut(assignment)
    return {
        "algorithm": result.algorithm,
        "num_parts": result.num_parts,
        "edge_cut_fraction": {
            "unweighted": cut.fraction(),
            "weighted": cut.fraction(weighted=True),
        },
        "remote_fraction_1hop": lookups.remote_fraction[0],
        "remote_fraction_2hop": lookups.remote_fraction[1],
        "lookups": {f"hop{hop + 1}": count for hop, count in enumerate(lookups.lookups)},
        "num_seeds": lookups.num_seeds,
        "balance": balance(view, assignment, result.num_parts, events_per_node=events, type_names=type_names),
        "wall_s": result.wall_s,
        "peak_rss_bytes": result.peak_rss_bytes,
        "peak_rss_delta_bytes": result.peak_rss_delta_bytes,
    }
