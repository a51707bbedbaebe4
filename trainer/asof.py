"""As-of counts: how many edges a node had strictly before a time.

One rule for every count a model or a metric reads for an event at time ``t``: only edges
strictly earlier than ``t`` count (the sampler's visibility rule, docs/training.md), so
the event itself, its click and everything after it never do.

``cold`` means one thing everywhere (training's validation, ``clickgraph evaluate``, the
report): the user had at most ``evaluate.cold_start_max_interactions`` interactions
(impressions, clicks, views, brand likes) strictly before the impression.
"""

from __future__ import annotations

from torch import Tensor

from clickgraph.core.baseline import USER_INTERACTIONS
from trainer.graph import EdgeType

__all__ = ["USER_INTERACTIONS", "AsOfCounts"]


class AsOfCounts:
    """Per-(node, time) counts of a node's edges strictly before the time.

    Args:
        sampler: Anything with ``count_before(edge_type, node, time)`` (the temporal
            sampler of the whole graph).
        edge_types: The graph's relations, reverse ones included.
    """

    def __init__(self, sampler, edge_types: list[EdgeType]):
        self.sampler = sampler
        self.edge_types = list(edge_types)

    def edge_type(self, relation: str, node_type: str) -> EdgeType | None:
        """The relation (or its reverse) whose destination is ``node_type``; ``None`` when
        the graph has no such relation (a platform without views, say)."""
        for et in self.edge_types:
            if et[1].removeprefix("rev_") == relation and et[2] == node_type:
                return et
        return None

    def count(self, relation: str, node_type: str, node: Tensor, at: Tensor) -> Tensor:
        """int64 ``[N]`` edges of ``relation`` at ``node[i]`` strictly before ``at[i]``.

        Raises:
            KeyError: The graph has no such relation into ``node_type``.
        """
        edge_type = self.edge_type(relation, node_type)
        if edge_type is None:
            raise KeyError(f"the graph has no relation {relation!r} into {node_type!r}")
        return self.sampler.count_before(edge_type, node, at)

    def interactions(self, user: Tensor, at: Tensor) -> Tensor:
        """Each user's impressions, clicks, views and likes strictly before ``at`` (the
        relations the graph has)."""
        total = user.new_zeros(user.shape)
        for relation in USER_INTERACTIONS:
            if self.edge_type(relation, "user") is not None:
                total = total + self.count(relation, "user", user, at)
        return total

    def cold(self, user: Tensor, at: Tensor, max_interactions: int) -> Tensor:
        """bool ``[N]``: the user had at most ``max_interactions`` interactions before ``at``."""
        return self.interactions(user, at) <= max_interactions
