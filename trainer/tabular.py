"""The tabular baseline's features: what a platform's own ranking model has without a graph.

For an impression of content ``c`` to user ``u`` at time ``t``, every feature comes from
strictly before ``t`` (the as-of rule of :mod:`trainer.asof`):

* user and content attributes and ages; context (feed position, hour, weekday);
* as-of counts: the user's impressions, clicks, views and likes, the content's impressions,
  clicks and views (all time and in the last 24 hours), and the smoothed click rates of the
  user and of the content;
* **the content's links** (brands, categories, articles, whatever the store links content
  to, multi-valued links included): per linked node type, how many links the content has,
  the first link's own attributes, and the as-of click rate and impressions of all
  content sharing the link (target encoding by time: clicks and impressions strictly
  before ``t`` of every content linked to the same brand, say), averaged over the
  content's links. That is how a team's trees use a brand with 200 values or articles
  with thousands: as rates, not raw ids. Attributes with a value for every other node or
  more are ids, not categories, and are left to the rates too.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from clickgraph.core.baseline import (
    CONTENT_COUNTS,
    ID_FREE_NODE_TYPES,
    PRIOR_CLICKS,
    PRIOR_SHOWN,
    RECENT_S,
    USER_INTERACTIONS,
    is_link_attribute,
    is_native_category,
)
from clickgraph.core.timeline import SECONDS_PER_DAY as DAY
from trainer.asof import AsOfCounts
from trainer.data import GraphData
from trainer.graph import TemporalCSR, expand_ranges


def smoothed_rate(clicks: Tensor, shown: Tensor) -> Tensor:
    """Click rate shrunk towards ~5% for small counts: ``(clicks + 1) / (shown + 20)``."""
    return (clicks + PRIOR_CLICKS) / (shown + PRIOR_SHOWN)


def grouped_count_before(group: Tensor, time: Tensor, query_group: Tensor, query_time: Tensor
                         ) -> Tensor:
    """int64 ``[Q]``: events of ``query_group[i]`` strictly before ``query_time[i]``.

    Events are ``(group, time)`` pairs; one sort of ``group * span + time`` and two binary
    searches per query.
    """
    if group.numel() == 0:
        return torch.zeros(query_group.shape, dtype=torch.int64)
    base = int(min(time.min(), query_time.min())) - 1
    span = int(max(time.max(), query_time.max())) - base + 2
    keys, _ = torch.sort(group * span + (time - base))
    upper = torch.searchsorted(keys, query_group * span + (query_time - base), side="left")
    lower = torch.searchsorted(keys, query_group * span, side="left")
    return upper - lower


def _content_events(data: GraphData, counts: AsOfCounts, relation: str) -> tuple[Tensor, Tensor]:
    """``(content, time)`` of every ``relation`` edge into content (impressions, clicks)."""
    csr: TemporalCSR = data.graph.csr[counts.edge_type(relation, "content")]
    return csr.edge_dst(), csr.edge_time


def content_links(data: GraphData) -> dict[str, TemporalCSR]:
    """Linked node type -> the CSR of its links out of content, indexed by content
    (``neighbor`` = linked node): every non-user relation touching content."""
    out = {}
    for (src, _, dst), csr in sorted(data.graph.csr.items()):
        if dst == "content" and src not in ID_FREE_NODE_TYPES and src not in out:
            out[src] = csr
    return out


def _expand_links(links: TemporalCSR, content: Tensor) -> tuple[Tensor, Tensor]:
    """One row per (row of ``content``, link of that content): ``(row, linked node)``."""
    start = links.indptr[content]
    row, position = expand_ranges(start, links.indptr[content + 1] - start)
    return row, links.neighbor[position]


def _row_mean(row: Tensor, values: Tensor, rows: int) -> Tensor:
    """Mean of ``values`` per ``row`` (NaN for rows with none), in ``values``' dtype."""
    total = torch.zeros(rows, dtype=values.dtype).index_add_(0, row, values)
    return total / torch.zeros(rows, dtype=values.dtype).index_add_(0, row,
                                                                    torch.ones_like(values))


def link_features(data: GraphData, counts: AsOfCounts, content: Tensor, at: Tensor
                  ) -> list[tuple[str, Tensor, bool]]:
    """The content's links as tree features: ``(name, values, categorical)`` per column
    (module docstring). Rows without a link of a type get NaN rates."""
    if counts.edge_type("impressed", "content") is None or \
            counts.edge_type("clicked", "content") is None:
        return []
    shown_content, shown_time = _content_events(data, counts, "impressed")
    click_content, click_time = _content_events(data, counts, "clicked")
    out: list[tuple[str, Tensor, bool]] = []
    for node_type, links in content_links(data).items():
        per_content = links.indptr[1:] - links.indptr[:-1]
        out.append((f"content_{node_type}_links", per_content[content].to(torch.float32), False))
        first = torch.where(per_content[content] > 0, links.neighbor[
            links.indptr[content].clamp(max=max(links.neighbor.numel() - 1, 0))], -1)
        feats = data.features[node_type]
        for column, cardinality in enumerate(feats.cardinalities):
            # an attribute with a value per node (a brand's name) is an id, not a category
            if is_link_attribute(cardinality, feats.num_nodes):
                codes = torch.where(first >= 0, feats.categorical[first.clamp(min=0), column], 0)
                out.append((f"content_{node_type}_attr{column}", codes.to(torch.float32), True))
        # every event of a content counts for each node it links to; rates and means in
        # float64, cast to float32 once (add()), as the Spark job computes them
        q_row, q_group = _expand_links(links, content)
        shown, clicks = (
            grouped_count_before(group, ev_time[event_row], q_group, at[q_row]).to(torch.float64)
            for event_row, group, ev_time in (
                (*_expand_links(links, shown_content), shown_time),
                (*_expand_links(links, click_content), click_time)))
        out.append((f"content_{node_type}_ctr",
                    _row_mean(q_row, smoothed_rate(clicks, shown), content.numel()), False))
        out.append((f"content_{node_type}_impressed",
                    _row_mean(q_row, torch.log1p(shown), content.numel()), False))
    return out


def baseline_features(data: GraphData, counts: AsOfCounts, events: Tensor
                      ) -> tuple[np.ndarray, list[str], list[bool]]:
    """The tabular baseline's features of impressions ``events`` (module docstring).

    Returns:
        ``(X, names, categorical)``: float32 ``[N, F]``, column names, and which columns
        are categorical codes.
    """
    imp = data.impressions
    user, content, at = imp.user[events], imp.content[events], imp.time[events]
    columns: list[Tensor] = []
    names: list[str] = []
    categorical: list[bool] = []

    def add(name: str, values: Tensor, is_categorical: bool = False) -> None:
        columns.append(values.to(torch.float32))
        names.append(name)
        categorical.append(is_categorical)

    for node_type, node in (("user", user), ("content", content)):
        feats = data.features[node_type]
        for column, cardinality in enumerate(feats.cardinalities):
            add(f"{node_type}_attr{column}", feats.categorical[node, column],
                is_native_category(cardinality))
        created = feats.created_time
        if created is not None:
            add(f"{node_type}_age_days",
                (at - created[node]).clamp(min=0).to(torch.float64) / DAY)
    add("position", imp.position[events], False)
    add("hour", torch.div(at % DAY, 3600, rounding_mode="floor"), True)
    add("weekday", (torch.div(at, DAY, rounding_mode="floor") + 3) % 7, True)  # 0 = Monday
    for relation in USER_INTERACTIONS:
        if counts.edge_type(relation, "user") is not None:
            add(f"user_{relation}", counts.count(relation, "user", user, at))
    for relation in CONTENT_COUNTS:
        if counts.edge_type(relation, "content") is None:
            continue
        total = counts.count(relation, "content", content, at)
        recent = total - counts.count(relation, "content", content, at - RECENT_S)
        add(f"content_{relation}", total)
        add(f"content_{relation}_24h", recent)
    for node_type in ("user", "content"):
        if {f"{node_type}_clicked", f"{node_type}_impressed"} <= set(names):
            clicks, shown = (columns[names.index(f"{node_type}_{r}")] for r in ("clicked", "impressed"))
            add(f"{node_type}_ctr", smoothed_rate(clicks, shown))
    for name, values, is_categorical in link_features(data, counts, content, at):
        add(name, values, is_categorical)
    return torch.stack(columns, dim=1).numpy(), names, categorical
