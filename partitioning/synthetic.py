"""Synthetic heterogeneous graphs with planted communities.

Used by the tests and ``benchmarks/bench_partition.py``: a graph whose good
partition is known (its communities), with a skewed item popularity so that
hubs exist, and with the vertex weights the real job produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from partitioning.graph import PartitionGraph

NODE_TYPES = ("user", "content", "article", "brand", "category")
_TYPE_SHARES = (0.6, 0.25, 0.1, 0.03, 0.02)


@dataclass(frozen=True, eq=False)
class PlantedGraph:
    """A synthetic graph and what was planted in it.

    Attributes:
        graph: the graph; vertex weights are [N, 2] = (training events at the
            node, incident edges).
        community: int64 [N] planted community of each node.
        events_per_node: int64 [N] training events counted at each node (0
            for items), what the quality report draws seeds from.
    """

    graph: PartitionGraph
    community: np.ndarray
    events_per_node: np.ndarray


def planted_community_graph(
    num_nodes: int,
    num_edges: int,
    num_communities: int,
    rng: np.random.Generator,
    *,
    intra_fraction: float = 0.9,
    popularity_shape: float = 2.0,
) -> PlantedGraph:
    """Generates a user-item graph with planted communities.

    Node types are drawn with shares 60/25/10/3/2 % (user, content, article,
    brand, category). Every edge joins a uniformly drawn user to an item
    (non-user) drawn proportionally to a Pareto(``popularity_shape``)
    popularity, from the user's own community with probability
    ``intra_fraction`` and from anywhere otherwise. Duplicate draws merge
    into heavier edges, so the final edge count is slightly below
    ``num_edges``. Each user's training events are its incident edge count.

    Args:
        num_nodes: N.
        num_edges: edges drawn before merging duplicates.
        num_communities: planted communities.
        rng: the random generator.
        intra_fraction: share of edges drawn inside the user's community.
        popularity_shape: Pareto shape of item popularity (smaller = more
            skewed).

    Returns:
        The graph, its communities and its training events per node.
    """
    node_type = rng.choice(len(NODE_TYPES), size=num_nodes, p=_TYPE_SHARES).astype(np.int16)
    node_type[0] = 0  # at least one user and one item
    node_type[-1] = 1
    community = rng.integers(0, num_communities, size=num_nodes)
    users = np.flatnonzero(node_type == 0)
    items = np.flatnonzero(node_type != 0)

    # Items sorted by community, with cumulative popularity for inverse-CDF draws.
    items = items[np.argsort(community[items], kind="stable")]
    popularity = rng.pareto(popularity_shape, size=items.shape[0]) + 1.0
    cumulative = np.cumsum(popularity)
    item_community = community[items]
    first = np.searchsorted(item_community, np.arange(num_communities), side="left")
    last = np.searchsorted(item_community, np.arange(num_communities), side="right")
    before = np.where(first > 0, cumulative[np.maximum(first - 1, 0)], 0.0)
    mass = np.where(last > first, cumulative[np.maximum(last - 1, 0)] - before, 0.0)

    src = users[rng.integers(0, users.shape[0], size=num_edges)]
    user_community = community[src]
    intra = (rng.random(num_edges) < intra_fraction) & (mass[user_community] > 0)
    low = np.where(intra, before[user_community], 0.0)
    span = np.where(intra, mass[user_community], cumulative[-1])
    draw = low + rng.random(num_edges) * span
    dst = items[np.minimum(np.searchsorted(cumulative, draw, side="right"), items.shape[0] - 1)]

    degree = np.bincount(src, minlength=num_nodes) + np.bincount(dst, minlength=num_nodes)
    events = np.where(node_type == 0, np.bincount(src, minlength=num_nodes), 0)
    graph = PartitionGraph.from_coo(
        num_nodes,
        src,
        dst,
        node_type=node_type,
        vertex_weights=np.stack([events, degree], axis=1).astype(np.float64),
    )
    return PlantedGraph(graph=graph, community=community, events_per_node=events.astype(np.int64))
