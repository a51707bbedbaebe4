"""The tabular baseline's feature contract, shared by its two implementations.

``trainer.tabular.baseline_features`` computes the baseline's columns in memory, over a
loaded graph; ``spark_jobs.baseline_features`` computes the same columns in Spark, over
the graph store's edge tables, for ``clickgraph evaluate --workers N``. Both read the
relations, thresholds and smoothing from here, and a test holds them equal
(``tests/test_baseline_features_spark.py``).

Every count is of edges strictly before the impression's time, in whole seconds
(:func:`clickgraph.core.timeline.seconds`): an edge in the impression's own second never
counts (:mod:`trainer.asof`).
"""

from __future__ import annotations

from clickgraph.core.timeline import SECONDS_PER_DAY

USER_INTERACTIONS = ("impressed", "clicked", "viewed", "likes")
"""A user's interactions: the as-of counts of the baseline and the meaning of ``cold``."""
CONTENT_COUNTS = ("impressed", "clicked", "viewed")
"""The content's as-of counts (all time and in the last :data:`RECENT_S` seconds)."""
RECENT_S = SECONDS_PER_DAY
"""The recent window of the ``_24h`` counts: edges in ``[t - RECENT_S, t)``."""
MAX_NATIVE_CATEGORIES = 255
"""HistGradientBoosting's ``max_bins``: attribute codes below it are native categories."""
PRIOR_CLICKS, PRIOR_SHOWN = 1, 20
"""Smoothed click rate ``(clicks + 1) / (shown + 20)``: ~5 % for small counts."""
ID_FREE_NODE_TYPES = ("user", "content")
"""Node types that are never a content's link (the link features' ``linked`` end)."""


def is_native_category(cardinality: int) -> bool:
    """A user or content attribute with ``cardinality`` codes is a categorical column."""
    return cardinality <= MAX_NATIVE_CATEGORIES


def is_link_attribute(cardinality: int, num_nodes: int) -> bool:
    """A linked node's attribute is a column at all: a category, not an id (a brand's name
    has a value for every other brand or more)."""
    return cardinality <= MAX_NATIVE_CATEGORIES and 2 * (cardinality - 1) < num_nodes
