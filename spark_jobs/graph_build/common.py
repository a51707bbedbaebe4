"""What the phases of the graph build share: constants, the job's error, small helpers."""

from __future__ import annotations

import re

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from clickgraph.core.errors import ClickgraphError

DAY_MS = 86_400_000
# Checked in this order; a row gets the first that applies.
QUARANTINE_REASONS = ("malformed", "missing_key", "unknown_event_type", "wrong_type",
                      "timestamp_out_of_range", "duplicate", "unknown_entity")
ENTITY_FOLDERS = {"user": "users", "content": "content", "article": "articles",
                  "brand": "brands", "category": "categories"}
QUARANTINED = "quarantined"  # staging slice of quarantined event rows (others: event type)
UNDATED = "undated"  # quarantine bucket for rows of unpartitioned input without a valid time
BROADCAST_MAX_ROWS = 5_000_000
DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class GraphBuildError(ClickgraphError, RuntimeError):
    """The job cannot build: missing or unreadable input, or too many quarantined rows."""


def day_of(ms: Column) -> Column:
    """UTC day ``YYYY-MM-DD`` of a time in ms (null outside years 1..9999)."""
    ok = ms.between(-62_135_596_800_000, 253_402_300_799_999)
    # from whole days since the epoch: independent of the session time zone
    return F.when(ok, F.date_from_unix_date(F.floor(ms / DAY_MS).cast("int")).cast("string"))


def maybe_broadcast(df: DataFrame, rows: int) -> DataFrame:
    return F.broadcast(df) if rows <= BROADCAST_MAX_ROWS else df


def union(frames: list[DataFrame]) -> DataFrame:
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def counts_by_reason(rows: list[tuple[str | None, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for reason, n in rows:
        if reason is not None:
            out[reason] = out.get(reason, 0) + n
    return dict(sorted(out.items()))


def check_share(what: str, read: int, quarantined: int, by_reason: dict[str, int],
                limit: float) -> None:
    if read and quarantined / read > limit:
        raise GraphBuildError(
            f"{what}: {quarantined:,} of {read:,} rows quarantined ({quarantined / read:.1%}), "
            f"above graph.max_quarantine_fraction={limit:g}; by reason: "
            + ", ".join(f"{k}={v:,}" for k, v in by_reason.items()) + "; nothing was written")
