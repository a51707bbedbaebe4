"""Inputs of the graph build: the event source (folder, format, day partitions) and the
entity tables, found and read from any URL Spark reads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from clickgraph.core import fs
from clickgraph.core.config import (
    ConfigError,
    GraphEntitiesInput,
    GraphEntityInput,
    GraphEventsInput,
)
from spark_jobs.graph_build.common import DAY_RE, ENTITY_FOLDERS, GraphBuildError


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
        bad = [v for v in values if not DAY_RE.match(v)]
        if bad:
            raise GraphBuildError(f"{url}: partition folder {key}{bad[0]} is not {key}YYYY-MM-DD")
        if not values:
            raise GraphBuildError(f"{url}: no {key}YYYY-MM-DD folders; for an unpartitioned "
                                  "table set graph.input.events.day_partition: null")
        days = tuple(sorted(values))
    return EventSource(url=url, format=fmt, day_partition=ev.day_partition, days=days)


def requested_days(days: list[str] | None) -> list[str] | None:
    """The days asked for, checked, without repeats and ascending; None: every day.

    Raises:
        ConfigError: a day is not ``YYYY-MM-DD``.
    """
    if days is not None:
        bad = [d for d in days if not DAY_RE.match(d)]
        if bad:
            raise ConfigError(f"--day {bad[0]!r} is not YYYY-MM-DD")
        days = sorted(set(days))
    return days


def days_to_read(source: EventSource, days: list[str] | None) -> list[str] | None:
    """Day partitions to read: ``days``, or every day present; None for unpartitioned
    input (read whole, filtered by event time).

    Raises:
        GraphBuildError: a requested day has no partition.
    """
    if source.day_partition is None:
        return None
    if days is not None:
        absent = [d for d in days if d not in source.days]
        if absent:
            raise GraphBuildError(f"no events for day {absent[0]} under {source.url} "
                                  f"(days present: {source.days[0]} .. {source.days[-1]})")
    return days or list(source.days)


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


def read_entity_tables(spark: SparkSession, entities: GraphEntitiesInput, logs_url: str
                       ) -> Iterator[tuple[str, GraphEntityInput, DataFrame, str]]:
    """``(node type, spec, raw table, url)`` of every node type with a table, read one at a time as
    the caller advances (a table is read after the previous one has been checked).

    Raises:
        GraphBuildError: a table is missing or unreadable.
    """
    for ntype, spec in entities.tables().items():  # types left out (null) have none
        raw, url = read_entity_table(spark, ntype, spec, logs_url)
        yield ntype, spec, raw, url


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
