"""Build the global temporal heterogeneous graph store from interaction logs.

Run as ``clickgraph build-graph`` or
``spark-submit spark_jobs/build_graph.py --config FILE [--day D | --days A..B]``.

Reads events (JSON lines or parquet) and entity tables from any URL Spark reads, maps
them through ``graph.input`` (bring your own logs: column names, event-type names,
timestamp forms), and writes the store described in ``docs/graph-store.md``:

* every input row is kept or quarantined with a reason (:data:`QUARANTINE_REASONS`), and
  ``rows_read == rows_kept + rows_quarantined`` is recorded in the manifest;
* node ids are dense per type and stable: existing ids never change, new ones are
  appended in (first day seen, raw id) order, so building all days at once and building
  them day by day give the same ids and edges;
* each run writes new ``run=<id>`` folders and commits ``_MANIFEST.json`` last; the
  manifest names the folder of every table, so a run that dies leaves the previous store
  readable and a rerun day replaces its slice instead of adding to it.

The logic is a chain of ``DataFrame -> DataFrame`` functions (:func:`parse_events`,
:func:`mark_duplicates`, :func:`mark_unknown_entities`, :func:`prepare_entities`,
:func:`assign_ids`, ...) behind :func:`run`, which does the I/O.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from clickgraph.core import fs
from clickgraph.core.config import (
    GRAPH_NODE_ATTRIBUTES,
    GRAPH_NODE_TYPES,
    Config,
    ConfigError,
    GraphEntityInput,
    GraphEventsInput,
    parse_time_ms,
)
from clickgraph.core.graph_store import (
    GRAPH_FORMAT_VERSION,
    GRAPH_KIND,
    GraphStore,
    GraphStoreError,
    open_graph_store,
)
from clickgraph.core.manifest import new_manifest, write_manifest
from spark_jobs import store_io
from spark_jobs.schemas import (
    EVENT_RELATIONS,
    ID_MAP_SCHEMA,
    LINK_RELATIONS,
    QUARANTINE_ENTITIES_SCHEMA,
    RELATIONS,
    conform,
    edge_schema,
    node_schema,
)

DAY_MS = 86_400_000
# Checked in this order; a row gets the first that applies.
QUARANTINE_REASONS = ("malformed", "missing_key", "unknown_event_type", "wrong_type",
                      "timestamp_out_of_range", "duplicate", "unknown_entity")
ENTITY_FOLDERS = {"user": "users", "content": "content", "article": "articles",
                  "brand": "brands", "category": "categories"}
# event type -> (raw id column of the non-user end, node type)
EVENT_TARGET = {"impression": ("content_raw", "content"), "click": ("content_raw", "content"),
                "view": ("content_raw", "content"), "brand_like": ("brand_raw", "brand")}
QUARANTINED = "quarantined"  # staging slice of quarantined event rows (others: event type)
UNDATED = "undated"  # quarantine bucket for rows of unpartitioned input without a valid time
BROADCAST_MAX_ROWS = 5_000_000
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class GraphBuildError(RuntimeError):
    """The job cannot build: missing or unreadable input, or too many quarantined rows."""


@dataclass(frozen=True)
class EventSource:
    """Resolved event input.

    Attributes:
        url: folder of the events.
        format: ``"json"`` (JSON lines) or ``"parquet"``.
        day_partition: folder key of day partitions (``dt``), or None if unpartitioned.
        days: days present (partitioned input only), ascending.
    """

    url: str
    format: str
    day_partition: str | None
    days: tuple[str, ...] = ()


@dataclass(frozen=True)
class TimeBounds:
    """Accepted event times, ms since epoch: ``[min_ms, max_ms]``; for day-partitioned
    input also within ``day_slack_ms`` of the partition's day."""

    min_ms: int
    max_ms: int
    day_slack_ms: int


# --------------------------------------------------------------------------- type helpers


def _is_integral(dtype: T.DataType) -> bool:
    return isinstance(dtype, (T.ByteType, T.ShortType, T.IntegerType, T.LongType))


def _is_numeric(dtype: T.DataType) -> bool:
    return isinstance(dtype, T.NumericType)


def _as_string(c: Column, dtype: T.DataType) -> Column:
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
    text = F.trim(_as_string(c, dtype))
    if unit == "iso":
        return F.unix_millis(F.try_to_timestamp(text))
    number = text.try_cast("double")
    if unit == "s":
        return F.round(number * 1000.0).try_cast("long")
    return F.coalesce(text.try_cast("long"), F.round(number).try_cast("long"))


def _blank(c: Column) -> Column:
    return c.isNull() | (F.trim(c) == "")


def _day_of(ms: Column) -> Column:
    """UTC day ``YYYY-MM-DD`` of a time in ms (null outside years 1..9999)."""
    ok = ms.between(-62_135_596_800_000, 253_402_300_799_999)
    # from whole days since the epoch: independent of the session time zone
    return F.when(ok, F.date_from_unix_date(F.floor(ms / DAY_MS).cast("int")).cast("string"))


def _maybe_broadcast(df: DataFrame, rows: int) -> DataFrame:
    return F.broadcast(df) if rows <= BROADCAST_MAX_ROWS else df


# --------------------------------------------------------------------------- events


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
    columns = {k: v for k, v in dataclasses.asdict(ev.columns).items() if v is not None}
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
        return F.trim(_as_string(src[key], types[key]))

    def typed(key: str, convert) -> tuple[Column, Column]:
        """(value, wrong-type flag) of an optional typed field."""
        if key not in src:
            return F.lit(None), F.lit(False)
        value = convert(src[key], types[key])
        return value, src[key].isNotNull() & value.isNull()

    type_map = F.create_map(*[F.lit(x) for name, sources in ev.event_types.items()
                              for s in sources for x in (s, name)])
    etype_src = text("event_type")
    etype = F.try_element_at(type_map, etype_src)
    ts_ms = to_epoch_ms(src["timestamp"], types["timestamp"], ev.timestamp_unit,
                        "graph.input.events.timestamp_unit")
    ts_missing = src["timestamp"].isNull() | (
        F.trim(_as_string(src["timestamp"], types["timestamp"])) == "")
    position, bad_position = typed("position", _as_long)
    clicked, bad_clicked = typed("clicked", _as_bool)
    dwell, bad_dwell = typed("dwell_ms", _as_long)
    user, content, brand = text("user_id"), text("content_id"), text("brand_id")
    needs_content = etype.isin("impression", "click", "view")
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
        .when(_blank(text("event_id")) | _blank(etype_src) | ts_missing | _blank(user),
              "missing_key")
        .when(etype.isNull(), "unknown_event_type")
        .when((needs_content & _blank(content)) | ((etype == "brand_like") & _blank(brand)),
              "missing_key")
        .when(wrong_type, "wrong_type")
        .when(~in_range, "timestamp_out_of_range"))
    if partitioned:
        day = F.col("_part_day")
    else:
        day = F.when(ts_ms.isNotNull() & in_range, _day_of(ts_ms))
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
    etype = F.col("etype")
    target_t = F.when(etype.isin("impression", "click", "view"), F.lit("content")) \
        .when(etype == "brand_like", F.lit("brand"))
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
    events = events.join(_maybe_broadcast(users, known_rows), "user_raw", "left") \
        .join(_maybe_broadcast(targets, known_rows), ["target_t", "target_raw"], "left")
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


# --------------------------------------------------------------------------- entities

ENTITY_COLUMNS = ("t", "raw_id", "created_ts_ms", "attrs", "links", "reason", "raw")


def prepare_entities(raw: DataFrame, ntype: str, spec: GraphEntityInput,
                     source_url: str = "<entities>") -> DataFrame:
    """Map one entity table to the common entity shape and mark row-level problems.

    Returns:
        :data:`ENTITY_COLUMNS`: node type ``t``, ``raw_id``, ``created_ts_ms`` (null:
        unknown), ``attrs`` (map attribute -> string, GRAPH_NODE_ATTRIBUTES names),
        ``links`` (map link name -> array of raw ids), ``reason`` (``missing_key``,
        ``wrong_type`` or null) and ``raw`` (the row as JSON). Duplicates are marked
        afterwards, on all tables at once (:func:`mark_entity_duplicates`).

    Raises:
        ConfigError: a configured column is not in the table.
    """
    prefix = f"graph.input.entities.{ntype}"
    wanted = {"id": spec.id}
    if spec.created_time:
        wanted["created_time"] = spec.created_time
    wanted.update({f"attributes.{a}": c for a, c in spec.attributes.items()})
    wanted.update({f"links.{k}": c for k, c in spec.links.items()})
    for key, column in wanted.items():
        if column not in raw.columns:
            raise ConfigError(f"key '{prefix}.{key}': column {column!r} is not in {source_url} "
                              f"(columns: {', '.join(raw.columns)})")
    dtype = {c: raw.schema[c].dataType for c in raw.columns}
    raw_id = F.trim(_as_string(F.col(spec.id), dtype[spec.id]))
    if spec.created_time:
        c = F.col(spec.created_time)
        created = to_epoch_ms(c, dtype[spec.created_time], spec.time_unit, f"{prefix}.time_unit")
        bad_time = c.isNotNull() & created.isNull()
    else:
        created, bad_time = F.lit(None).cast("long"), F.lit(False)
    attr_items = [x for a, c in spec.attributes.items()
                  for x in (F.lit(a), _as_string(F.col(c), dtype[c]))]
    attrs = F.create_map(*attr_items) if attr_items else \
        F.create_map().cast("map<string,string>")
    delimiter = re.escape(spec.list_delimiter)
    link_items = []
    for link, column in spec.links.items():
        c = F.col(column)
        if isinstance(dtype[column], T.ArrayType):
            values = F.transform(c, lambda x: F.trim(x.cast("string")))
        else:
            # a lambda, not F.trim: transform() would pass the index as trim's 2nd arg
            values = F.transform(F.split(_as_string(c, dtype[column]), delimiter),
                                 lambda x: F.trim(x))
        values = F.filter(F.coalesce(values, F.array().cast("array<string>")),
                          lambda x: x.isNotNull() & (x != ""))
        link_items += [F.lit(link), F.array_distinct(values)]
    links = F.create_map(*link_items) if link_items else \
        F.create_map().cast("map<string,array<string>>")
    source = list(dict.fromkeys(wanted.values()))
    raw_json = F.to_json(F.struct(*[F.col(c) for c in source]))
    reason = F.when(_blank(raw_id), "missing_key").when(bad_time, "wrong_type")
    return raw.select(F.lit(ntype).alias("t"), raw_id.alias("raw_id"),
                      created.alias("created_ts_ms"), attrs.alias("attrs"), links.alias("links"),
                      reason.alias("reason"), raw_json.alias("raw"))


def mark_entity_duplicates(entities: DataFrame) -> DataFrame:
    """Mark all but one valid row per ``(t, raw_id)``: the earliest created, then the
    smallest hash of the row (independent of file order)."""
    ok = F.col("reason").isNull()
    window = Window.partitionBy("t", "raw_id", ok).orderBy(
        F.col("created_ts_ms").asc_nulls_last(), F.xxhash64("raw"))
    return entities.withColumn("reason", F.when(ok & (F.row_number().over(window) > 1),
                                                F.lit("duplicate")).otherwise(F.col("reason")))


# --------------------------------------------------------------------------- ids


def first_days(pool: DataFrame, refs: DataFrame, run_days: list[str]) -> DataFrame:
    """Day each entity enters the store in this run: ``(t, raw_id, first_day)``.

    An entity enters on the first run day on which it exists (created on or before that
    day, or created at an unknown time) or on which a kept event references it,
    whichever is earlier; entities with neither in the run's days are left out.

    Args:
        pool: valid entity rows (``t, raw_id, created_ts_ms``).
        refs: ``(t, raw_id, ref_day)``: first run day each entity is referenced.
        run_days: the days of this run, ascending.
    """
    days = F.array(*[F.lit(d) for d in run_days])
    created_day = F.coalesce(_day_of(F.col("created_ts_ms")), F.lit("0000-00-00"))
    created = F.when(F.col("created_ts_ms").isNull(), F.lit(run_days[0])).otherwise(
        F.array_min(F.filter(days, lambda d: d >= created_day)))
    return pool.select("t", "raw_id", created.alias("_created_day")) \
        .join(refs, ["t", "raw_id"], "left") \
        .select("t", "raw_id", F.least("_created_day", "ref_day").alias("first_day")) \
        .where(F.col("first_day").isNotNull())


def assign_ids(candidates: DataFrame, existing: DataFrame | None,
               existing_counts: dict[str, int]) -> DataFrame:
    """Ids for the raw ids new to the store; existing ids are never touched.

    Args:
        candidates: ``(t, raw_id, first_day)``: node type, raw id and the day the
            entity enters the store (:func:`first_days`).
        existing: the store's id maps ``(t, raw_id)``, or None for a new store.
        existing_counts: node type -> number of existing ids (``0 .. n - 1``).

    Returns:
        ``(t, raw_id, id, first_day)`` for new raw ids only, numbered per type from
        ``existing_counts[t]`` in ``(first_day, raw_id)`` order: the same ids whether
        the days are built at once or one by one.
    """
    new = candidates
    if existing is not None:
        new = candidates.join(existing.select("t", "raw_id"), ["t", "raw_id"], "left_anti")
    base = F.create_map(*[F.lit(x) for kv in existing_counts.items() for x in kv])
    rank = F.row_number().over(Window.partitionBy("t").orderBy("first_day", "raw_id"))
    ids = F.coalesce(F.try_element_at(base, F.col("t")), F.lit(0)) + rank - 1
    return new.select("t", "raw_id", ids.cast("long").alias("id"), "first_day")


# --------------------------------------------------------------------------- input


def _hadoop_path(spark: SparkSession, url: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(url)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def _input_exists(spark: SparkSession, url: str) -> bool:
    try:
        hfs, path = _hadoop_path(spark, fs.spark_url(url))
        return bool(hfs.exists(path))
    except Exception as err:  # noqa: BLE001 - any filesystem error means unreadable
        raise GraphBuildError(f"cannot access input {url}: {err}") from None


def _list_dirs(spark: SparkSession, url: str) -> list[str]:
    hfs, path = _hadoop_path(spark, fs.spark_url(url))
    return sorted(s.getPath().getName() for s in hfs.listStatus(path) if s.isDirectory())


def _has_parquet(spark: SparkSession, url: str) -> bool:
    hfs, path = _hadoop_path(spark, fs.spark_url(url))
    files = hfs.listFiles(path, True)
    while files.hasNext():
        name = files.next().getPath().getName()
        if not name.startswith(("_", ".")):
            return name.endswith(".parquet")
    return False


def resolve_events(spark: SparkSession, ev: GraphEventsInput, logs_url: str) -> EventSource:
    """Find the events folder and format, and for partitioned input the days present.

    Raises:
        GraphBuildError: no events where configured, or no day partitions.
    """
    if ev.path:
        url = ev.path
        if not _input_exists(spark, url):
            raise GraphBuildError(f"events input {url} does not exist "
                                  "(key graph.input.events.path)")
        fmt = ev.format if ev.format != "auto" else ("parquet" if _has_parquet(spark, url) else "json")
    else:
        base = fs.join(logs_url, "events")
        formats = ["json", "parquet"] if ev.format == "auto" else [ev.format]
        found = [f for f in formats if _input_exists(spark, fs.join(base, f))]
        if not found:
            looked = " and ".join(f + "/" for f in formats)
            raise GraphBuildError(f"no events under {base} (looked for {looked}); run clickgraph "
                                  "generate, or set paths.logs / graph.input.events.path")
        fmt, url = found[0], fs.join(base, found[0])
    days: tuple[str, ...] = ()
    if ev.day_partition:
        key = ev.day_partition + "="
        values = [n[len(key):] for n in _list_dirs(spark, url) if n.startswith(key)]
        bad = [v for v in values if not _DAY_RE.match(v)]
        if bad:
            raise GraphBuildError(f"{url}: partition folder {key}{bad[0]} is not {key}YYYY-MM-DD")
        if not values:
            raise GraphBuildError(f"{url}: no {key}YYYY-MM-DD folders; for an unpartitioned "
                                  "table set graph.input.events.day_partition: null")
        days = tuple(sorted(values))
    return EventSource(url=url, format=fmt, day_partition=ev.day_partition, days=days)


def read_events(spark: SparkSession, source: EventSource, days: list[str] | None) -> DataFrame:
    """Raw event rows of ``days`` (partitioned input) or of the whole table.

    Raises:
        GraphBuildError: the input cannot be read.
    """
    base = fs.spark_url(source.url)
    try:
        if source.day_partition:
            paths = [f"{base}/{source.day_partition}={d}" for d in days or source.days]
            reader = spark.read.option("basePath", base)
        else:
            paths, reader = [base], spark.read
        df = reader.text(paths) if source.format == "json" else reader.parquet(*paths)
    except Exception as err:  # noqa: BLE001 - AnalysisException and Py4J errors alike
        raise GraphBuildError(f"cannot read events at {source.url}: {_first_line(err)}") from None
    if source.day_partition:
        df = df.withColumn("_part_day", F.col(source.day_partition).cast("string")) \
            .drop(source.day_partition)
    return df


def read_entity_table(spark: SparkSession, ntype: str, spec: GraphEntityInput,
                      logs_url: str) -> tuple[DataFrame, str]:
    """Raw entity table and its URL.

    Raises:
        GraphBuildError: the table is missing or unreadable.
    """
    url = spec.path or fs.join(logs_url, "entities", ENTITY_FOLDERS[ntype])
    if not _input_exists(spark, url):
        raise GraphBuildError(f"entity table for {ntype} nodes not found at {url} "
                              f"(key graph.input.entities.{ntype}.path)")
    try:
        reader = spark.read.format(spec.format)
        if spec.format == "csv":
            reader = reader.option("header", "true")
        return reader.load(fs.spark_url(url)), url
    except Exception as err:  # noqa: BLE001
        raise GraphBuildError(f"cannot read entity table {url}: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


# --------------------------------------------------------------------------- store state


def store_hash(cfg: Config) -> str:
    """Hash of the settings that shape stored data (mapping, weights); incremental runs
    must share it with the store they extend."""
    g = cfg.graph
    ents = {t: {k: v for k, v in dataclasses.asdict(getattr(g.input.entities, t)).items()
                if k not in ("path", "format")} for t in GRAPH_NODE_TYPES}
    ev = dataclasses.asdict(g.input.events)
    data = {"relation_weights": g.relation_weights, "content_type_weight": g.content_type_weight,
            "events": {k: ev[k] for k in ("columns", "event_types", "timestamp_unit")},
            "entities": ents}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _open_previous(out_url: str) -> GraphStore | None:
    if not fs.exists(fs.join(out_url, fs.MANIFEST_NAME)):
        return None
    try:
        return open_graph_store(out_url, verify="exists")
    except GraphStoreError as err:
        raise GraphBuildError(f"cannot extend the existing graph store: {err}") from None


def _referenced_folders(manifest: dict[str, Any] | None) -> set[str]:
    if manifest is None:
        return set()
    refs = set()
    for node in manifest["node_types"].values():
        refs.update([node["path"], node["id_map_path"]])
    for rel in manifest["relations"].values():
        refs.update(p["path"] for p in rel["partitions"])
    refs.update(manifest["quarantine"]["paths"])
    return refs


_RUN_FOLDER_GLOBS = ("edges/*/day=*/run=*", "nodes/*/run=*", "id_maps/*/run=*",
                     "quarantine/events/day=*/run=*", "quarantine/entities/run=*",
                     "edges/*/_temporary", "quarantine/*/_temporary", "_staging/run=*")


def collect_garbage(out_url: str, manifest: dict[str, Any] | None) -> int:
    """Remove run folders the manifest does not name (replaced days, dead runs).

    Only folders of the store's own layout are touched. Returns how many were removed.
    """
    filesystem, root = fs.filesystem(out_url)
    if not filesystem.exists(root):
        return 0
    keep = _referenced_folders(manifest)
    removed = 0
    for pattern in _RUN_FOLDER_GLOBS:
        for path in filesystem.glob(f"{root.rstrip('/')}/{pattern}"):
            rel = path[len(root.rstrip("/")) + 1:]
            if rel not in keep:
                filesystem.rm(path, recursive=True)
                removed += 1
    for pattern in ("edges/*/day=*", "quarantine/events/day=*"):
        for path in filesystem.glob(f"{root.rstrip('/')}/{pattern}"):
            if filesystem.isdir(path) and not filesystem.ls(path):
                filesystem.rm(path, recursive=True)
    return removed


# --------------------------------------------------------------------------- the job


def _counts_by_reason(rows: list[tuple[str | None, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for reason, n in rows:
        if reason is not None:
            out[reason] = out.get(reason, 0) + n
    return dict(sorted(out.items()))


def _check_share(what: str, read: int, quarantined: int, by_reason: dict[str, int],
                 limit: float) -> None:
    if read and quarantined / read > limit:
        raise GraphBuildError(
            f"{what}: {quarantined:,} of {read:,} rows quarantined ({quarantined / read:.1%}), "
            f"above graph.max_quarantine_fraction={limit:g}; by reason: "
            + ", ".join(f"{k}={v:,}" for k, v in by_reason.items()) + "; nothing was written")


def _run_id() -> str:
    now = dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def _union(frames: list[DataFrame]) -> DataFrame:
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def run(spark: SparkSession, cfg: Config, days: list[str] | None = None,
        logs_url: str | None = None, out_url: str | None = None, log=print) -> dict[str, Any]:
    """Build or extend the graph store; returns its new manifest.

    Args:
        spark: the session.
        cfg: validated config (``graph`` section).
        days: days to add or replace (``YYYY-MM-DD``); None: every day in the input.
        logs_url: logs folder (default ``paths.logs``).
        out_url: store folder (default ``paths.graph``).
        log: progress printer.

    Raises:
        GraphBuildError: missing/unreadable input, a day without events, a store built
            with another mapping, or a quarantined share above the threshold.
        ConfigError: the mapping names a column the input lacks.
    """
    g = cfg.graph
    started = time.time()
    phase = _PhaseTimer(log)
    logs_url = logs_url or cfg.paths.stage("logs")
    out_url = (out_url or cfg.paths.stage("graph")).rstrip("/")
    run_id = _run_id()
    if days is not None:
        bad = [d for d in days if not _DAY_RE.match(d)]
        if bad:
            raise ConfigError(f"--day {bad[0]!r} is not YYYY-MM-DD")
        days = sorted(set(days))

    source = resolve_events(spark, g.input.events, logs_url)
    previous = _open_previous(out_url)
    prev_manifest = previous.manifest if previous else None
    if prev_manifest and prev_manifest.get("store_hash") != store_hash(cfg):
        raise GraphBuildError(
            f"{out_url} was built with another graph mapping or weights (store_hash "
            f"{prev_manifest.get('store_hash')} != {store_hash(cfg)}); build into a new folder")
    collect_garbage(out_url, prev_manifest)  # leftovers of runs that died

    partitioned = source.day_partition is not None
    read_days: list[str] | None = None
    if partitioned:
        if days is not None:
            absent = [d for d in days if d not in source.days]
            if absent:
                raise GraphBuildError(f"no events for day {absent[0]} under {source.url} "
                                      f"(days present: {source.days[0]} .. {source.days[-1]})")
        read_days = days or list(source.days)
    max_ms = parse_time_ms(g.max_event_time) if g.max_event_time else \
        int(started * 1000) + g.clock_slack_s * 1000
    bounds = TimeBounds(parse_time_ms(g.min_event_time), max_ms, g.log_day_slack_s * 1000)

    # ---- entities: the five tables in one frame, checked and cached
    frames, entity_urls = [], {}
    for ntype in GRAPH_NODE_TYPES:
        spec = getattr(g.input.entities, ntype)
        raw, url = read_entity_table(spark, ntype, spec, logs_url)
        frames.append(prepare_entities(raw, ntype, spec, url))
        entity_urls[ntype] = url
    entities = mark_entity_duplicates(_union(frames)).persist(StorageLevel.MEMORY_AND_DISK)
    rows = entities.groupBy("t", "reason").agg(F.count("*").alias("n")).collect()
    entity_stats: dict[str, dict[str, Any]] = {}
    for ntype, url in entity_urls.items():
        mine = [(r["reason"], r["n"]) for r in rows if r["t"] == ntype]
        by_reason = _counts_by_reason(mine)
        read_n = sum(n for _, n in mine)
        if read_n == 0:
            raise GraphBuildError(f"entity table for {ntype} nodes at {url} has no rows")
        quarantined = sum(by_reason.values())
        _check_share(f"entity table {url}", read_n, quarantined, by_reason,
                     g.max_quarantine_fraction)
        entity_stats[ntype] = {"rows_read": read_n, "rows_kept": read_n - quarantined,
                               "rows_quarantined": quarantined, "quarantine_by_reason": by_reason}
    pool = entities.where(F.col("reason").isNull()).drop("reason", "raw")
    prev_counts = {t: previous.num_nodes(t) if previous and t in prev_manifest["node_types"] else 0
                   for t in GRAPH_NODE_TYPES}
    prev_maps = None
    if previous:
        prev_maps = _union([store_io.read_id_map(spark, previous, t).select(F.lit(t).alias("t"), "raw_id")
                            for t in GRAPH_NODE_TYPES if t in prev_manifest["node_types"]])
    known = pool.select("t", "raw_id")
    if prev_maps is not None:
        known = known.unionByName(prev_maps).distinct()
    known_rows = sum(s["rows_kept"] for s in entity_stats.values()) + sum(prev_counts.values())
    phase("entity tables read and checked")

    # ---- events: one pass over the input; everything after reads the cached rows
    raw_events = read_events(spark, source, read_days)
    events = parse_events(raw_events, g.input.events, source.format, bounds, partitioned,
                          source.url)
    if not partitioned and days is not None:
        events = events.where(F.col("day").isNull() | F.col("day").isin(days))
    checked = mark_unknown_entities(event_targets(mark_duplicates(events)), known, known_rows)
    checked = checked.withColumn("raw", F.when(
        F.col("reason").isNotNull(), F.coalesce(F.col("raw"), _reserialised(checked))))
    # Staged once as parquet, one folder per event type and one for quarantined rows:
    # every later pass reads only the columns and the slice it needs (a cache of these
    # wide string rows cost ~17 s per scan at 10M rows, a pruned parquet scan ~2 s).
    staging_url = fs.join(out_url, "_staging", f"run={run_id}")
    staged_url = fs.spark_url(fs.join(staging_url, "events"))
    checked.drop("row_hash").withColumn(
        "slice", F.when(F.col("reason").isNull(), F.col("etype")).otherwise(F.lit(QUARANTINED))) \
        .write.partitionBy("slice").parquet(staged_url)
    checked = spark.read.parquet(staged_url)
    stats = checked.groupBy(F.coalesce("day", F.lit(UNDATED)).alias("day"), "reason", "etype") \
        .agg(F.count("*").alias("n"), F.min("ts_ms").alias("lo"), F.max("ts_ms").alias("hi")) \
        .collect()
    read_n = sum(r["n"] for r in stats)
    q_by_reason = _counts_by_reason([(r["reason"], r["n"]) for r in stats])
    quarantined = sum(q_by_reason.values())
    if read_n == 0:
        raise GraphBuildError(f"no event rows read from {source.url}"
                              + (f" for {', '.join(days)}" if days else ""))
    if partitioned:
        run_days = list(read_days or [])
    else:
        found = sorted({r["day"] for r in stats if r["day"] != UNDATED})
        run_days = days if days is not None else found
        empty = [d for d in run_days if d not in found]
        if empty or not run_days:
            raise GraphBuildError(f"no events for day {empty[0] if empty else '(any)'} with a "
                                  f"valid time in {source.url}")
    _check_share(f"events {source.url}", read_n, quarantined, q_by_reason,
                 g.max_quarantine_fraction)
    day_stats = _day_stats(stats, run_days)
    phase(f"{read_n:,} event rows read and checked for {len(run_days)} day(s), "
          f"{quarantined:,} quarantined")

    # ---- ids: entities enter on their creation day or first reference, numbered in
    # (first_day, raw_id) order after the existing ids. The first day is taken as a
    # date: min() of a string is a sort aggregate (a sort of two rows per event: the
    # ids phase took 28 s at 10M events), of a date a hash aggregate (11 s); days are
    # YYYY-MM-DD, so the date cast back to a string is the same day string.
    kept = checked.where(F.col("slice") != QUARANTINED)
    refs = kept.select(F.explode(F.array(
        F.struct(F.lit("user").alias("t"), F.col("user_raw").alias("raw_id"), F.col("day")),
        F.struct(F.col("target_t").alias("t"), F.col("target_raw").alias("raw_id"), F.col("day")),
    )).alias("r")).select("r.*").where(F.col("t").isNotNull() & F.col("raw_id").isNotNull()) \
        .groupBy("t", "raw_id").agg(F.min(F.to_date("day")).cast("string").alias("ref_day"))
    new_ids = assign_ids(first_days(pool, refs, run_days), prev_maps, prev_counts) \
        .persist(StorageLevel.MEMORY_AND_DISK)
    added = {r["t"]: r["n"] for r in new_ids.groupBy("t").agg(F.count("*").alias("n")).collect()}
    node_counts = {t: prev_counts[t] + added.get(t, 0) for t in GRAPH_NODE_TYPES}
    new_node_types = [t for t in GRAPH_NODE_TYPES if added.get(t) or not prev_counts[t]]
    new_nodes = new_ids.join(pool.select("t", "raw_id", "created_ts_ms", "attrs"),
                             ["t", "raw_id"], "left") \
        .withColumn("created_ts_ms", F.coalesce("created_ts_ms", F.lit(0).cast("long")))
    node_cols = ["t", "id", "raw_id", "first_day", "created_ts_ms", "attrs"]
    nodes = new_nodes.select(*node_cols)
    if previous:
        old = [store_io.read_nodes(spark, previous, t).select(
            F.lit(t).alias("t"), "id", "raw_id", "first_day", "created_ts_ms",
            F.create_map(*[x for a in GRAPH_NODE_ATTRIBUTES[t] for x in (F.lit(a), F.col(a))])
            .alias("attrs")) for t in GRAPH_NODE_TYPES if prev_counts[t]]
        nodes = _union([*old, nodes])
    nodes = nodes.persist(StorageLevel.MEMORY_AND_DISK)
    node_total = sum(node_counts.values())
    phase(f"ids assigned ({sum(added.values()):,} new nodes)")

    # ---- link edges (content -> article/brand/category, article -> brand/category)
    links, dangling = link_edges(pool, nodes, known, node_total, g.relation_weights, run_days)
    links = links.persist(StorageLevel.MEMORY_AND_DISK)
    link_counts = {(r["relation"], r["day"]): r["n"] for r in
                   links.groupBy("relation", "day").agg(F.count("*").alias("n")).collect()}
    dangling = dangling.persist(StorageLevel.MEMORY_AND_DISK)
    n_dangling = {r["table"]: r["n"] for r in
                  dangling.groupBy("table").agg(F.count("*").alias("n")).collect()}
    phase("link edges")

    # ---- writes: new run folders only; the manifest switches to them at the end
    run_col = F.lit(run_id)
    if quarantined:
        q = checked.where(F.col("slice") == QUARANTINED).select(
            "event_id", "raw", F.coalesce("day", F.lit(UNDATED)).alias("day"), "reason",
            run_col.alias("run"))
        q.write.mode("append").partitionBy("day", "run", "reason") \
            .parquet(fs.spark_url(fs.join(out_url, "quarantine", "events")))
    table_name = F.create_map(*[F.lit(x) for kv in ENTITY_FOLDERS.items() for x in kv])
    entity_q = entities.where(F.col("reason").isNotNull()).select(
        F.element_at(table_name, F.col("t")).alias("table"), F.lit("row").alias("kind"),
        "reason", F.col("raw_id").alias("entity_id"), "raw").unionByName(dangling)
    n_entity_q = sum(s["rows_quarantined"] for s in entity_stats.values()) + sum(n_dangling.values())
    entity_q_path = f"quarantine/entities/run={run_id}"
    if n_entity_q:
        conform(entity_q, QUARANTINE_ENTITIES_SCHEMA).coalesce(1).write.parquet(
            fs.spark_url(fs.join(out_url, entity_q_path)))
    phase("quarantine written")

    user_ids = nodes.where(F.col("t") == "user").select(
        F.col("raw_id").alias("user_raw"), F.col("id").alias("src"))
    target_ids = nodes.where(F.col("t") != "user").select(
        F.col("t").alias("target_t"), F.col("raw_id").alias("target_raw"), F.col("id").alias("dst"),
        F.col("attrs").getItem("content_type").alias("_ctype"))
    rel_weight = F.create_map(*[x for etype, rel in EVENT_RELATIONS.items() for x in (
        F.lit(etype), F.lit(float(g.relation_weights.get(rel.relation, 1.0))))])
    weight = F.element_at(rel_weight, F.col("etype"))
    if g.content_type_weight:
        type_weight = F.create_map(*[F.lit(x) for kv in g.content_type_weight.items() for x in kv])
        weight = weight * F.when(F.col("target_t") == "content", F.coalesce(
            F.try_element_at(type_weight, F.col("_ctype")), F.lit(1.0))).otherwise(1.0)
    user_ids = _maybe_broadcast(user_ids, node_total)
    target_ids = _maybe_broadcast(target_ids, node_total)
    edges_root = fs.join(out_url, "edges")
    for etype, rel in EVENT_RELATIONS.items():
        if not any(day_stats[d]["edges"].get(rel.name) for d in run_days):
            continue
        # one relation's slice of the staged events: a pruned scan, not a filter of all
        edges = checked.where(F.col("slice") == etype).join(user_ids, "user_raw") \
            .join(target_ids, ["target_t", "target_raw"]).withColumn("weight", weight)
        conform(edges, edge_schema(rel.name), "day").withColumn("run", run_col) \
            .write.mode("append").partitionBy("day", "run") \
            .parquet(fs.spark_url(fs.join(edges_root, rel.name)))
    for rel in LINK_RELATIONS.values():
        if not any(link_counts.get((rel.name, d)) for d in run_days):
            continue
        part = conform(links.where(F.col("relation") == rel.name), edge_schema(rel.name), "day")
        part.withColumn("run", run_col).write.mode("append").partitionBy("day", "run") \
            .parquet(fs.spark_url(fs.join(edges_root, rel.name)))
    phase("edges written")

    node_paths = {}
    for ntype in GRAPH_NODE_TYPES:
        if ntype in new_node_types:
            paths = (f"nodes/{ntype}/run={run_id}", f"id_maps/{ntype}/run={run_id}")
            mine = nodes.where(F.col("t") == ntype)
            table = mine.select("id", "raw_id", "first_day", "created_ts_ms", *[
                F.col("attrs").getItem(a).alias(a) for a in GRAPH_NODE_ATTRIBUTES[ntype]])
            for frame, schema, path in ((table, node_schema(ntype), paths[0]),
                                        (mine, ID_MAP_SCHEMA, paths[1])):
                conform(frame, schema).coalesce(1).sortWithinPartitions("id").write.parquet(
                    fs.spark_url(fs.join(out_url, path)))
        else:
            prev_node = prev_manifest["node_types"][ntype]
            paths = (prev_node["path"], prev_node["id_map_path"])
        node_paths[ntype] = paths
    phase("nodes and id maps written")

    manifest = _build_manifest(
        cfg, run_id, prev_manifest, run_days, day_stats, link_counts, node_counts, node_paths,
        entity_stats, n_dangling, entity_q_path if n_entity_q else None, source,
        entity_urls, started)
    config_fs, config_dir = fs.filesystem(fs.join(out_url, "_configs"))
    config_fs.makedirs(config_dir, exist_ok=True)
    fs.write_text(fs.join(out_url, "_configs", f"{run_id}.yaml"), cfg.to_yaml())
    write_manifest(out_url, manifest)
    fs.remove(staging_url)
    removed = collect_garbage(out_url, manifest)
    for df in (links, dangling, new_ids, nodes, entities):
        df.unpersist()
    log(f"build-graph: run {run_id}: {len(manifest['days'])} day(s) in store, "
        f"{sum(manifest['node_counts'].values()):,} nodes, "
        f"{sum(manifest['edge_counts'].values()):,} edges, {manifest['rows_quarantined']:,} "
        f"rows quarantined, {removed} superseded folder(s) removed, "
        f"{time.time() - started:.1f}s -> {out_url}")
    return manifest


class _PhaseTimer:
    """Logs the seconds each phase of the job took."""

    def __init__(self, log):
        self.log, self.last = log, time.time()

    def __call__(self, what: str) -> None:
        now = time.time()
        self.log(f"build-graph:   {what} ({now - self.last:.1f}s)")
        self.last = now


def _day_stats(stats: list, run_days: list[str]) -> dict[str, dict[str, Any]]:
    """Per day (and UNDATED): rows read/kept/quarantined, reasons, edges, time range."""
    out: dict[str, dict[str, Any]] = {}
    for day in [*run_days, UNDATED]:
        rows = [r for r in stats if r["day"] == day]
        if day == UNDATED and not rows:
            continue
        by_reason = _counts_by_reason([(r["reason"], r["n"]) for r in rows])
        kept = [r for r in rows if r["reason"] is None]
        edges = {EVENT_RELATIONS[r["etype"]].name: r["n"] for r in kept}
        read_n = sum(r["n"] for r in rows)
        out[day] = {
            "rows_read": read_n, "rows_kept": read_n - sum(by_reason.values()),
            "rows_quarantined": sum(by_reason.values()), "quarantine_by_reason": by_reason,
            "edges": edges,
            "min_ts_ms": min((r["lo"] for r in kept), default=None),
            "max_ts_ms": max((r["hi"] for r in kept), default=None),
        }
    return out


def link_edges(pool: DataFrame, nodes: DataFrame, known: DataFrame, node_rows: int,
               weights: dict[str, float], run_days: list[str]) -> tuple[DataFrame, DataFrame]:
    """Link edges of this run's days, and links to unknown entities.

    A link edge's day is the later of its two nodes' first days (both exist from then
    on) and its time the later of their creation times (0 = unknown, always existed).

    Args:
        pool: valid entity rows (``t, raw_id, links``).
        nodes: the store's nodes after this run (``t, raw_id, id, first_day, created_ts_ms``).
        known: ``(t, raw_id)`` of known entities.
        node_rows: row count of ``nodes`` (decides broadcasting).
        weights: ``graph.relation_weights``.
        run_days: days of this run.

    Returns:
        ``(edges, dangling)``: edges with ``relation, day, src, dst, ts_ms, weight``;
        links to unknown entities in QUARANTINE_ENTITIES_SCHEMA's columns.
    """
    keyed = {f"{table}.{link}": rel for (table, link), rel in LINK_RELATIONS.items()}
    as_map = lambda pairs: F.create_map(*[F.lit(x) for kv in pairs for x in kv])  # noqa: E731
    relation = as_map((k, r.name) for k, r in keyed.items())
    dst_type = as_map((k, r.dst_type) for k, r in keyed.items())
    weight = as_map((r.name, float(weights.get(r.relation, 1.0))) for r in keyed.values())
    key = F.concat(F.col("src_t"), F.lit("."), F.col("link"))
    pairs = pool.select(F.col("t").alias("src_t"), F.col("raw_id").alias("src_raw"),
                        F.explode("links").alias("link", "targets")) \
        .select("src_t", "src_raw", "link", F.explode("targets").alias("dst_raw")) \
        .withColumn("relation", F.element_at(relation, key)) \
        .withColumn("dst_t", F.element_at(dst_type, key)).distinct()
    src = nodes.select(F.col("t").alias("src_t"), F.col("raw_id").alias("src_raw"),
                       F.col("id").alias("src"), F.col("first_day").alias("src_day"),
                       F.col("created_ts_ms").alias("src_ts"))
    dst = nodes.select(F.col("t").alias("dst_t"), F.col("raw_id").alias("dst_raw"),
                       F.col("id").alias("dst"), F.col("first_day").alias("dst_day"),
                       F.col("created_ts_ms").alias("dst_ts"))
    joined = pairs.join(_maybe_broadcast(src, node_rows), ["src_t", "src_raw"]) \
        .join(_maybe_broadcast(dst, node_rows), ["dst_t", "dst_raw"])
    day = F.greatest("src_day", "dst_day")
    edges = joined.where(day.isin(run_days)).select(
        "relation", day.alias("day"), "src", "dst",
        F.greatest("src_ts", "dst_ts").alias("ts_ms"),
        F.element_at(weight, F.col("relation")).alias("weight"))
    table_name = as_map(ENTITY_FOLDERS.items())
    targets = known.select(F.col("t").alias("dst_t"), F.col("raw_id").alias("dst_raw"))
    dangling = pairs.join(targets, ["dst_t", "dst_raw"], "left_anti").select(
        F.element_at(table_name, F.col("src_t")).alias("table"), F.lit("link").alias("kind"),
        F.lit("unknown_entity").alias("reason"), F.col("src_raw").alias("entity_id"),
        F.to_json(F.struct("link", F.col("dst_raw").alias("target"))).alias("raw"))
    return edges, dangling


def _build_manifest(cfg: Config, run_id: str, prev: dict[str, Any] | None, run_days: list[str],
                    day_stats: dict[str, dict[str, Any]], link_counts: dict[tuple[str, str], int],
                    node_counts: dict[str, int], node_paths: dict[str, tuple[str, str]],
                    entity_stats: dict[str, dict[str, Any]], dangling: dict[str, int],
                    entity_q_path: str | None, source: EventSource, entity_urls: dict[str, str],
                    started: float) -> dict[str, Any]:
    """The new manifest: previous days not rebuilt, plus this run's days."""
    day_index: dict[str, dict[str, Any]] = dict(prev["events"]["by_day"]) if prev else {}
    for day in run_days:
        entry = dict(day_stats[day])
        entry["edges"] = dict(entry["edges"])
        for (rel_name, d), n in link_counts.items():
            if d == day:
                entry["edges"][rel_name] = n
        entry["edges"] = dict(sorted(entry["edges"].items()))
        entry["run"] = run_id
        day_index[day] = entry
    day_index = dict(sorted(day_index.items()))
    undated = (prev or {}).get("events", {}).get("undated")
    if UNDATED in day_stats:
        undated = dict(day_stats[UNDATED], run=run_id)
        undated.pop("edges", None)
    relations = {}
    for name, rel in RELATIONS.items():
        parts = [{"day": d, "count": e["edges"][name],
                  "path": f"edges/{name}/day={d}/run={e['run']}"}
                 for d, e in day_index.items() if e["edges"].get(name)]
        relations[name] = {
            "src_type": rel.src_type, "relation": rel.relation, "dst_type": rel.dst_type,
            "source": rel.source, "weight": cfg.graph.relation_weights.get(rel.relation, 1.0),
            "attributes": [f.name for f in rel.attributes],
            "columns": {f.name: f.dataType.simpleString() for f in edge_schema(name).fields},
            "count": sum(p["count"] for p in parts), "partitions": parts}
    buckets = [*day_index.values(), *([undated] if undated else [])]
    ev_q: dict[str, int] = {}
    for b in buckets:
        for reason, n in b["quarantine_by_reason"].items():
            ev_q[reason] = ev_q.get(reason, 0) + n
    events = {"rows_read": sum(b["rows_read"] for b in buckets),
              "rows_kept": sum(b["rows_kept"] for b in buckets),
              "rows_quarantined": sum(b["rows_quarantined"] for b in buckets),
              "quarantine_by_reason": dict(sorted(ev_q.items())),
              "by_day": day_index, "undated": undated}
    all_q = dict(ev_q)
    for st in entity_stats.values():
        for reason, n in st["quarantine_by_reason"].items():
            all_q[reason] = all_q.get(reason, 0) + n
    q_paths = [f"quarantine/events/day={d}/run={e['run']}" for d, e in day_index.items()
               if e["rows_quarantined"]]
    if undated and undated["rows_quarantined"]:
        q_paths.append(f"quarantine/events/day={UNDATED}/run={undated['run']}")
    if entity_q_path:
        q_paths.append(entity_q_path)
    lo = [e["min_ts_ms"] for e in day_index.values() if e["min_ts_ms"] is not None]
    hi = [e["max_ts_ms"] for e in day_index.values() if e["max_ts_ms"] is not None]
    entity_read = sum(s["rows_read"] for s in entity_stats.values())
    entity_kept = sum(s["rows_kept"] for s in entity_stats.values())
    return new_manifest(
        GRAPH_KIND, GRAPH_FORMAT_VERSION, cfg, ("graph",),
        store_hash=store_hash(cfg),
        run_id=run_id,
        config_file=f"_configs/{run_id}.yaml",
        days=list(day_index),
        time_range={"min_ts_ms": min(lo, default=None), "max_ts_ms": max(hi, default=None)},
        rows_read=events["rows_read"] + entity_read,
        rows_kept=events["rows_kept"] + entity_kept,
        rows_quarantined=events["rows_quarantined"] + entity_read - entity_kept,
        quarantine_by_reason=dict(sorted(all_q.items())),
        events=events,
        entities={t: {**s, "url": entity_urls[t], "dangling_links": dangling.get(ENTITY_FOLDERS[t], 0)}
                  for t, s in entity_stats.items()},
        node_counts=dict(node_counts),
        edge_counts={n: r["count"] for n, r in relations.items()},
        node_types={t: {"count": node_counts[t], "path": node_paths[t][0],
                        "id_map_path": node_paths[t][1],
                        "attributes": list(GRAPH_NODE_ATTRIBUTES[t])} for t in GRAPH_NODE_TYPES},
        relations=relations,
        reverse_edges="derived: every relation is stored once as src -> dst; read it with "
                      "src and dst swapped for dst -> src",
        time_semantics="ts_ms: int64 ms since epoch (UTC); an edge is visible to a seed at "
                       "time t only if ts_ms < t (strictly earlier); 0 = always existed",
        quarantine={"max_fraction": cfg.graph.max_quarantine_fraction, "paths": q_paths,
                    "reasons": list(QUARANTINE_REASONS)},
        input={"events_url": source.url, "events_format": source.format,
               "day_partition": source.day_partition, "entities": entity_urls},
        build_seconds=round(time.time() - started, 3),
    )


def parse_days(day: list[str] | None, days: str | None) -> list[str] | None:
    """``--day D`` (repeatable) or ``--days A..B`` -> sorted day list, None for all days.

    Raises:
        ConfigError: a malformed day or range.
    """
    if day and days:
        raise ConfigError("give --day or --days, not both")
    if day:
        for d in day:
            try:
                dt.date.fromisoformat(d)
            except ValueError:
                raise ConfigError(f"--day {d!r} is not YYYY-MM-DD") from None
        return sorted(set(day))
    if days:
        if ".." not in days:
            raise ConfigError(f"--days {days!r}: expected FIRST..LAST, e.g. 2026-03-02..2026-03-08")
        first, last = days.split("..", 1)
        try:
            a, b = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
        except ValueError:
            raise ConfigError(f"--days {days!r}: days must be YYYY-MM-DD") from None
        if b < a:
            raise ConfigError(f"--days {days!r}: the last day is before the first")
        return [(a + dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]
    return None


def main(argv: list[str] | None = None) -> int:
    """``spark-submit spark_jobs/build_graph.py --config FILE [--day D | --days A..B]``."""
    import argparse

    from clickgraph.core.config import load_config
    from spark_jobs.session import get_spark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--day", action="append", help="YYYY-MM-DD to add or replace (repeatable)")
    parser.add_argument("--days", help="FIRST..LAST, both included")
    parser.add_argument("--logs", help="logs URL (default: paths.logs)")
    parser.add_argument("--out", help="graph store URL (default: paths.graph)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        days = parse_days(args.day, args.days)
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    spark = get_spark(cfg.spark, "build-graph")
    try:
        run(spark, cfg, days, args.logs, args.out)
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    except GraphBuildError as err:
        print(f"build-graph failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
