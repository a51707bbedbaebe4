"""Parse and check the events: input rows -> rows in the graph's fields, each kept or
given a quarantine reason (:data:`~.common.QUARANTINE_REASONS`), duplicates and unknown
entities marked; the checked events staged once and counted per day. Also the column
conversions (:func:`to_epoch_ms`, ...) the entity tables share."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from clickgraph.core import fs
from clickgraph.core.config import (
    GRAPH_EVENT_TARGETS,
    ConfigError,
    GraphConfig,
    GraphEventsInput,
    parse_time_ms,
)
from spark_jobs.graph_build.common import (
    DAY_MS,
    QUARANTINED,
    UNDATED,
    GraphBuildError,
    check_share,
    counts_by_reason,
    day_of,
    maybe_broadcast,
)
from spark_jobs.graph_build.inputs import EventSource
from spark_jobs.schemas import EVENT_RELATIONS, LABEL_CLICKS


@dataclass(frozen=True)
class TimeBounds:
    """Accepted event times, ms since epoch: ``[min_ms, max_ms]``; for day-partitioned
    input also within ``day_slack_ms`` of the partition's day."""

    min_ms: int
    max_ms: int
    day_slack_ms: int

    @classmethod
    def from_config(cls, g: GraphConfig, started: float) -> TimeBounds:
        """Bounds of ``graph``: ``max_event_time``, or the run's start (``started``, s
        since epoch) plus ``clock_slack_s``."""
        max_ms = parse_time_ms(g.max_event_time) if g.max_event_time else \
            int(started * 1000) + g.clock_slack_s * 1000
        return cls(parse_time_ms(g.min_event_time), max_ms, g.log_day_slack_s * 1000)


# --------------------------------------------------------------------------- type helpers


def _is_integral(dtype: T.DataType) -> bool:
    return isinstance(dtype, (T.ByteType, T.ShortType, T.IntegerType, T.LongType))


def _is_numeric(dtype: T.DataType) -> bool:
    return isinstance(dtype, T.NumericType)


def as_string(c: Column, dtype: T.DataType) -> Column:
    return c if isinstance(dtype, T.StringType) else c.cast("string")


def _as_long(c: Column, dtype: T.DataType) -> Column:
    """Integral value, or null when the value is not a whole number (wrong type)."""
    if _is_integral(dtype):
        return c.cast("long")
    if isinstance(dtype, T.StringType):
        return F.trim(c).try_cast("long")
    if _is_numeric(dtype):
        return F.when(c == F.floor(c), c.try_cast("long"))
    return F.lit(None).cast("long")


def _as_bool(c: Column, dtype: T.DataType) -> Column:
    if isinstance(dtype, T.BooleanType):
        return c
    if isinstance(dtype, T.StringType):
        return F.trim(c).try_cast("boolean")
    if _is_integral(dtype):
        return F.when(c.isin(0, 1), c == 1)
    return F.lit(None).cast("boolean")


def to_epoch_ms(c: Column, dtype: T.DataType, unit: str, key: str) -> Column:
    """Timestamp column of any supported form -> int64 ms since epoch, null if unparseable.

    Args:
        c: the source column.
        dtype: its Spark type (timestamp and date columns ignore ``unit``).
        unit: ``ms`` or ``s`` (epoch numbers, also as strings) or ``iso`` (ISO-8601).
        key: config key, for the error message.

    Raises:
        ConfigError: ``unit`` is ``iso`` but the column is numeric.
    """
    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType)):
        return F.unix_millis(c.cast("timestamp"))
    if isinstance(dtype, T.DateType):
        return F.unix_millis(c.cast("timestamp"))
    if _is_numeric(dtype):
        if unit == "iso":
            raise ConfigError(f"key '{key}': the column is numeric ({dtype.simpleString()}) "
                              "but its time unit is 'iso'; set ms or s")
        seconds = c.cast("double") * 1000.0 if unit == "s" else c.cast("double")
        return c.cast("long") if unit == "ms" and _is_integral(dtype) else \
            F.round(seconds).try_cast("long")
    text = F.trim(as_string(c, dtype))
    if unit == "iso":
        return F.unix_millis(F.try_to_timestamp(text))
    number = text.try_cast("double")
    if unit == "s":
        return F.round(number * 1000.0).try_cast("long")
    return F.coalesce(text.try_cast("long"), F.round(number).try_cast("long"))


def blank(c: Column) -> Column:
    return c.isNull() | (F.trim(c) == "")


# --------------------------------------------------------------------------- events

EVENT_TYPE_FIELDS = {"brand_id": ("brand_like",), "dwell_ms": ("view",)}
"""Event fields read for some event types only: left unread (the column need not exist)
when the mapping has none of them."""


def parse_events(raw: DataFrame, ev: GraphEventsInput, fmt: str, bounds: TimeBounds,
                 partitioned: bool, source_url: str = "<events>") -> DataFrame:
    """Map raw events to the graph's fields and mark row-level problems.

    Args:
        raw: JSON lines (column ``value``) or a parquet table in the source's columns;
            with ``partitioned``, also ``_part_day`` (``YYYY-MM-DD``).
        ev: the events mapping (``graph.input.events``).
        fmt: ``json`` or ``parquet``.
        bounds: accepted event times.
        partitioned: whether rows carry their log day in ``_part_day``.
        source_url: for error messages.

    Returns:
        Columns ``event_id, etype`` (canonical type), ``ts_ms, user_raw, content_raw,
        brand_raw, position, clicked, dwell_ms, day, reason`` (null: so far kept),
        ``raw`` (the input row, set for rows with a reason) and ``row_hash``.
        ``day`` is the log day, or for unpartitioned input the UTC day of a valid time.

    Raises:
        ConfigError: a configured column is absent from a parquet input.
    """
    mapped = ev.mapped_event_types()
    # a field only one event type carries is not read when the platform has no such events
    unused = {f for f, types in EVENT_TYPE_FIELDS.items() if not set(types) & set(mapped)}
    columns = {k: v for k, v in dataclasses.asdict(ev.columns).items()
               if v is not None and k not in unused}
    if fmt == "json":
        names = list(dict.fromkeys(columns.values()))
        schema = T.StructType([T.StructField(n, T.StringType()) for n in names]
                              + [T.StructField("_corrupt_record", T.StringType())])
        parsed = raw.withColumn("_j", F.from_json(
            "value", schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt_record"}))
        src = {k: F.col("_j").getField(v) for k, v in columns.items()}
        types = {k: T.StringType() for k in columns}
        malformed = (F.col("_j._corrupt_record").isNotNull() | F.col("_j").isNull()
                     | (F.trim(F.col("value")) == ""))
        raw_text = F.col("value")
        row_hash = F.xxhash64("value")
    else:
        missing = [k for k, v in columns.items() if v not in raw.columns]
        if missing:
            k = missing[0]
            raise ConfigError(f"key 'graph.input.events.columns.{k}': column {columns[k]!r} is "
                              f"not in {source_url} (columns: {', '.join(raw.columns)})")
        parsed = raw
        src = {k: F.col(v) for k, v in columns.items()}
        types = {k: raw.schema[v].dataType for k, v in columns.items()}
        malformed = F.lit(False)
        source_cols = [c for c in raw.columns if c != "_part_day"]
        raw_text = F.to_json(F.struct(*[F.col(c) for c in source_cols]))
        row_hash = F.xxhash64(*[F.col(c) for c in source_cols])

    def text(key: str) -> Column:
        if key not in src:
            return F.lit(None).cast("string")
        return F.trim(as_string(src[key], types[key]))

    def typed(key: str, convert) -> tuple[Column, Column]:
        """(value, wrong-type flag) of an optional typed field."""
        if key not in src:
            return F.lit(None), F.lit(False)
        value = convert(src[key], types[key])
        return value, src[key].isNotNull() & value.isNull()

    type_map = F.create_map(*[F.lit(x) for name, sources in mapped.items()
                              for s in sources for x in (s, name)])
    etype_src = text("event_type")
    etype = F.try_element_at(type_map, etype_src)
    ts_ms = to_epoch_ms(src["timestamp"], types["timestamp"], ev.timestamp_unit,
                        "graph.input.events.timestamp_unit")
    ts_missing = src["timestamp"].isNull() | (
        F.trim(as_string(src["timestamp"], types["timestamp"])) == "")
    position, bad_position = typed("position", _as_long)
    clicked, bad_clicked = typed("clicked", _as_bool)
    dwell, bad_dwell = typed("dwell_ms", _as_long)
    user, content, brand = text("user_id"), text("content_id"), text("brand_id")
    targets_of = {node: [e for e, (_, t) in GRAPH_EVENT_TARGETS.items() if t == node]
                  for node in ("content", "brand")}
    wrong_type = (
        (~ts_missing & ts_ms.isNull())
        | ((etype == "impression") & (bad_position | bad_clicked))
        | ((etype == "view") & bad_dwell))
    lo, hi = F.lit(bounds.min_ms), F.lit(bounds.max_ms)
    if partitioned:
        day_start = F.unix_date(F.to_date(F.col("_part_day"))).cast("long") * DAY_MS
        lo = F.greatest(lo, day_start - bounds.day_slack_ms)
        hi = F.least(hi, day_start + DAY_MS + bounds.day_slack_ms - 1)
    in_range = ts_ms.between(lo, hi)
    reason = (
        F.when(malformed, "malformed")
        .when(blank(text("event_id")) | blank(etype_src) | ts_missing | blank(user),
              "missing_key")
        .when(etype.isNull(), "unknown_event_type")
        .when((etype.isin(*targets_of["content"]) & blank(content))
              | (etype.isin(*targets_of["brand"]) & blank(brand)),
              "missing_key")
        .when(wrong_type, "wrong_type")
        .when(~in_range, "timestamp_out_of_range"))
    if partitioned:
        day = F.col("_part_day")
    else:
        day = F.when(ts_ms.isNotNull() & in_range, day_of(ts_ms))
    out = parsed.select(
        text("event_id").alias("event_id"), etype.alias("etype"), ts_ms.alias("ts_ms"),
        user.alias("user_raw"), content.alias("content_raw"), brand.alias("brand_raw"),
        position.cast("int").alias("position"), clicked.cast("boolean").alias("clicked"),
        dwell.cast("long").alias("dwell_ms"), day.alias("day"), reason.alias("reason"),
        raw_text.alias("_raw_text"), row_hash.alias("row_hash"))
    # keep the (large) raw text only where a reason already applies
    return out.withColumn("raw", F.when(F.col("reason").isNotNull(), F.col("_raw_text"))) \
        .drop("_raw_text")


def mark_duplicates(events: DataFrame) -> DataFrame:
    """Mark all but one row of each ``(day, event_id)`` among rows without a reason.

    The row kept is the one with the smallest ``(ts_ms, row_hash)``, a rule that does not
    depend on file order; exact duplicate lines are identical, so which copy is kept does
    not matter. Duplicates are looked for within a day (see docs/graph-store.md).
    """
    ok = F.col("reason").isNull()
    window = Window.partitionBy("day", "event_id", ok).orderBy("ts_ms", "row_hash")
    rank = F.row_number().over(window)
    return events.withColumn("reason", F.when(ok & (rank > 1), F.lit("duplicate"))
                             .otherwise(F.col("reason")))


def event_targets(events: DataFrame) -> DataFrame:
    """Add ``target_t``/``target_raw``: the node type and raw id of an event's non-user
    end (content for impressions, clicks and views; brand for brand likes)."""
    target_t = F.try_element_at(F.create_map(*[
        F.lit(x) for etype, (_, node) in GRAPH_EVENT_TARGETS.items() for x in (etype, node)]),
        F.col("etype"))
    target_raw = F.when(target_t == "content", F.col("content_raw")) \
        .when(target_t == "brand", F.col("brand_raw"))
    return events.withColumn("target_t", target_t).withColumn("target_raw", target_raw)


def mark_unknown_entities(events: DataFrame, known: DataFrame, known_rows: int) -> DataFrame:
    """Mark kept rows whose user or target entity is not known.

    Args:
        events: output of :func:`mark_duplicates` passed through :func:`event_targets`.
        known: ``(t, raw_id)`` of every known entity: valid entity-table rows and the
            store's id maps.
        known_rows: row count of ``known`` (decides broadcasting).
    """
    users = known.where(F.col("t") == "user").select(
        F.col("raw_id").alias("user_raw"), F.lit(True).alias("_user_known"))
    targets = known.where(F.col("t") != "user").select(
        F.col("t").alias("target_t"), F.col("raw_id").alias("target_raw"),
        F.lit(True).alias("_target_known"))
    events = events.join(maybe_broadcast(users, known_rows), "user_raw", "left") \
        .join(maybe_broadcast(targets, known_rows), ["target_t", "target_raw"], "left")
    unknown = ~F.coalesce(F.col("_user_known"), F.lit(False)) | (
        F.col("target_t").isNotNull() & ~F.coalesce(F.col("_target_known"), F.lit(False)))
    reason = F.when(F.col("reason").isNull() & unknown, F.lit("unknown_entity")) \
        .otherwise(F.col("reason"))
    return events.withColumn("reason", reason).drop("_user_known", "_target_known")


def _reserialised(events: DataFrame) -> Column:
    """The parsed fields as JSON (graph field names), for rows quarantined after parsing."""
    return F.to_json(F.struct(
        F.col("event_id"), F.col("etype").alias("event_type"), F.col("ts_ms"),
        F.col("user_raw").alias("user_id"), F.col("content_raw").alias("content_id"),
        F.col("brand_raw").alias("brand_id"), F.col("position"), F.col("clicked"),
        F.col("dwell_ms")))


def check_events(raw: DataFrame, ev: GraphEventsInput, source: EventSource, bounds: TimeBounds,
                 days: list[str] | None, known: DataFrame, known_rows: int) -> DataFrame:
    """Raw events -> checked rows: parsed, limited to ``days`` (unpartitioned input),
    duplicates and unknown entities marked.

    Args:
        raw: rows of :func:`~.inputs.read_events`.
        ev: the events mapping (``graph.input.events``).
        source: the event input.
        bounds: accepted event times.
        days: days of this run, None for every day in the input.
        known: ``(t, raw_id)`` of known entities (:func:`~.entities.known_entities`).
        known_rows: row count of ``known`` (decides broadcasting).

    Returns:
        The columns of :func:`parse_events` and :func:`event_targets`; ``raw`` is set on
        every row with a reason (the parsed fields as JSON where the input row was not kept).
    """
    partitioned = source.day_partition is not None
    events = parse_events(raw, ev, source.format, bounds, partitioned, source.url)
    if not partitioned and days is not None:
        events = events.where(F.col("day").isNull() | F.col("day").isin(days))
    checked = mark_unknown_entities(event_targets(mark_duplicates(events)), known, known_rows)
    return checked.withColumn("raw", F.when(
        F.col("reason").isNotNull(), F.coalesce(F.col("raw"), _reserialised(checked))))


def stage_events(spark: SparkSession, checked: DataFrame, staging_url: str) -> DataFrame:
    """Write the checked events under ``staging_url`` and read them back, with ``slice``:
    the event type of a kept row, :data:`~.common.QUARANTINED` for the others.

    Staged once as parquet, one folder per event type and one for quarantined rows:
    every later pass reads only the columns and the slice it needs (a cache of these
    wide string rows cost ~17 s per scan at 10M rows, a pruned parquet scan ~2 s).
    """
    staged_url = fs.spark_url(fs.join(staging_url, "events"))
    checked.drop("row_hash").withColumn(
        "slice", F.when(F.col("reason").isNull(), F.col("etype")).otherwise(F.lit(QUARANTINED))) \
        .write.partitionBy("slice").parquet(staged_url)
    return spark.read.parquet(staged_url)


@dataclass(frozen=True)
class CheckedEvents:
    """The checked events of a run and their counts.

    Attributes:
        rows: the staged rows (:func:`stage_events`).
        rows_read: input rows read.
        rows_quarantined: of them, rows with a reason.
        run_days: the days this run builds, ascending.
        day_stats: per run day (and :data:`~.common.UNDATED`), see :func:`_day_stats`.
    """

    rows: DataFrame
    rows_read: int
    rows_quarantined: int
    run_days: list[str]
    day_stats: dict[str, dict[str, Any]]


def summarise_events(checked: DataFrame, source: EventSource, days: list[str] | None,
                     read_days: list[str] | None, max_fraction: float,
                     clicks_from_labels: bool = False) -> CheckedEvents:
    """Count the checked events per day, reason and event type; decide the run's days.

    Args:
        checked: the staged rows (:func:`stage_events`).
        source: the event input.
        days: days requested, None for every day in the input.
        read_days: day partitions read (partitioned input), else None.
        max_fraction: ``graph.max_quarantine_fraction``.
        clicks_from_labels: clicked edges are derived from clicked impressions
            (``graph.input.events.clicks_from_labels_after_s``); counted per day too.

    Raises:
        GraphBuildError: no rows, a requested day without a valid event (unpartitioned
            input), or too many rows quarantined.
    """
    stats = checked.groupBy(F.coalesce("day", F.lit(UNDATED)).alias("day"), "reason", "etype") \
        .agg(F.count("*").alias("n"), F.min("ts_ms").alias("lo"), F.max("ts_ms").alias("hi"),
             F.count(F.when(F.col("clicked"), True)).alias("clicked")) \
        .collect()
    read_n = sum(r["n"] for r in stats)
    q_by_reason = counts_by_reason([(r["reason"], r["n"]) for r in stats])
    quarantined = sum(q_by_reason.values())
    if read_n == 0:
        raise GraphBuildError(f"no event rows read from {source.url}"
                              + (f" for {', '.join(days)}" if days else ""))
    if source.day_partition is not None:
        run_days = list(read_days or [])
    else:
        found = sorted({r["day"] for r in stats if r["day"] != UNDATED})
        run_days = days if days is not None else found
        empty = [d for d in run_days if d not in found]
        if empty or not run_days:
            raise GraphBuildError(f"no events for day {empty[0] if empty else '(any)'} with a "
                                  f"valid time in {source.url}")
    check_share(f"events {source.url}", read_n, quarantined, q_by_reason, max_fraction)
    return CheckedEvents(checked, read_n, quarantined, run_days,
                         _day_stats(stats, run_days, clicks_from_labels))


def _day_stats(stats: list, run_days: list[str], clicks_from_labels: bool = False
               ) -> dict[str, dict[str, Any]]:
    """Per day (and UNDATED): rows read/kept/quarantined, reasons, edges (with clicks
    derived from labels: the kept clicked impressions), time range."""
    out: dict[str, dict[str, Any]] = {}
    for day in [*run_days, UNDATED]:
        rows = [r for r in stats if r["day"] == day]
        if day == UNDATED and not rows:
            continue
        by_reason = counts_by_reason([(r["reason"], r["n"]) for r in rows])
        kept = [r for r in rows if r["reason"] is None]
        edges = {EVENT_RELATIONS[r["etype"]].name: r["n"] for r in kept}
        if clicks_from_labels:
            edges[LABEL_CLICKS.name] = sum(r["clicked"] for r in kept if r["etype"] == "impression")
        read_n = sum(r["n"] for r in rows)
        out[day] = {
            "rows_read": read_n, "rows_kept": read_n - sum(by_reason.values()),
            "rows_quarantined": sum(by_reason.values()), "quarantine_by_reason": by_reason,
            "edges": edges,
            "min_ts_ms": min((r["lo"] for r in kept), default=None),
            "max_ts_ms": max((r["hi"] for r in kept), default=None),
        }
    return out

