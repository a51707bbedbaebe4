"""Parse and check the entity tables: rows in the common entity shape
(:data:`ENTITY_COLUMNS`), each kept or given a quarantine reason, duplicates marked."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from clickgraph.core.config import (
    ConfigError,
    GraphEntityInput,
)
from spark_jobs.graph_build.common import (
    GraphBuildError,
    check_share,
    counts_by_reason,
    union,
)
from spark_jobs.graph_build.parse import as_string, blank, to_epoch_ms

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
    raw_id = F.trim(as_string(F.col(spec.id), dtype[spec.id]))
    if spec.created_time:
        c = F.col(spec.created_time)
        created = to_epoch_ms(c, dtype[spec.created_time], spec.time_unit, f"{prefix}.time_unit")
        bad_time = c.isNotNull() & created.isNull()
    else:
        created, bad_time = F.lit(None).cast("long"), F.lit(False)
    attr_items = [x for a, c in spec.attributes.items()
                  for x in (F.lit(a), as_string(F.col(c), dtype[c]))]
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
            values = F.transform(F.split(as_string(c, dtype[column]), delimiter),
                                 lambda x: F.trim(x))
        values = F.filter(F.coalesce(values, F.array().cast("array<string>")),
                          lambda x: x.isNotNull() & (x != ""))
        link_items += [F.lit(link), F.array_distinct(values)]
    links = F.create_map(*link_items) if link_items else \
        F.create_map().cast("map<string,array<string>>")
    source = list(dict.fromkeys(wanted.values()))
    raw_json = F.to_json(F.struct(*[F.col(c) for c in source]))
    reason = F.when(blank(raw_id), "missing_key").when(bad_time, "wrong_type")
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


@dataclass(frozen=True)
class CheckedEntities:
    """The entity tables, checked.

    Attributes:
        rows: every row of every table in :data:`ENTITY_COLUMNS` (``reason`` null: kept);
            persisted.
        pool: the kept rows (``t, raw_id, created_ts_ms, attrs, links``).
        urls: node type -> URL of its table.
        stats: node type -> ``rows_read, rows_kept, rows_quarantined,
            quarantine_by_reason``.
    """

    rows: DataFrame
    pool: DataFrame
    urls: dict[str, str]
    stats: dict[str, dict[str, Any]]

    @property
    def rows_kept(self) -> int:
        return sum(s["rows_kept"] for s in self.stats.values())

    @property
    def rows_quarantined(self) -> int:
        return sum(s["rows_quarantined"] for s in self.stats.values())


def check_entity_tables(tables: Iterable[tuple[str, GraphEntityInput, DataFrame, str]],
                        max_fraction: float,
                        link_only: dict[str, list[tuple[str, str]]] | None = None
                        ) -> CheckedEntities:
    """The entity tables in one frame, checked, cached and counted.

    Args:
        tables: ``(node type, spec, raw table, url)`` per node type with a table
            (:func:`~.inputs.read_entity_tables`).
        max_fraction: ``graph.max_quarantine_fraction``, per table.
        link_only: node type without a table -> ``(table, link)`` of the links naming it
            (``GraphEntitiesInput.link_only_types``): its nodes, the ids those links hold,
            join the pool (not the rows: they were not read from any input).

    Raises:
        GraphBuildError: a table without rows, or with too many quarantined.
        ConfigError: the mapping names a column a table lacks.
    """
    frames, entity_urls = [], {}
    for ntype, spec, raw, url in tables:
        frames.append(prepare_entities(raw, ntype, spec, url))
        entity_urls[ntype] = url
    entities = mark_entity_duplicates(union(frames)).persist(StorageLevel.MEMORY_AND_DISK)
    rows = entities.groupBy("t", "reason").agg(F.count("*").alias("n")).collect()
    entity_stats: dict[str, dict[str, Any]] = {}
    for ntype, url in entity_urls.items():
        mine = [(r["reason"], r["n"]) for r in rows if r["t"] == ntype]
        by_reason = counts_by_reason(mine)
        read_n = sum(n for _, n in mine)
        if read_n == 0:
            raise GraphBuildError(f"entity table for {ntype} nodes at {url} has no rows")
        quarantined = sum(by_reason.values())
        check_share(f"entity table {url}", read_n, quarantined, by_reason, max_fraction)
        entity_stats[ntype] = {"rows_read": read_n, "rows_kept": read_n - quarantined,
                               "rows_quarantined": quarantined, "quarantine_by_reason": by_reason}
    pool = entities.where(F.col("reason").isNull()).drop("reason", "raw")
    if link_only:
        pool = pool.unionByName(linked_entities(pool, link_only))
    return CheckedEntities(entities, pool, entity_urls, entity_stats)


def linked_entities(pool: DataFrame, link_only: dict[str, list[tuple[str, str]]]) -> DataFrame:
    """Entities of node types without a table: every distinct id their links hold, in the
    pool's columns, without creation time (always existed), attributes or links.

    Args:
        pool: valid entity rows (``t, raw_id, created_ts_ms, attrs, links``).
        link_only: node type -> ``(table, link)`` of the links naming it.
    """
    frames = []
    for ntype, sources in link_only.items():
        for table, link in sources:
            frames.append(pool.where(F.col("t") == table).select(
                F.explode(F.col("links").getItem(link)).alias("raw_id"))
                .select(F.lit(ntype).alias("t"), "raw_id"))
    return union(frames).distinct().select(
        "t", "raw_id", F.lit(None).cast("long").alias("created_ts_ms"),
        F.create_map().cast("map<string,string>").alias("attrs"),
        F.create_map().cast("map<string,array<string>>").alias("links"))


def known_entities(pool: DataFrame, id_maps: DataFrame | None) -> DataFrame:
    """``(t, raw_id)`` of every known entity: valid entity-table rows and the store's
    id maps (``id_maps``, None for a new store)."""
    known = pool.select("t", "raw_id")
    if id_maps is not None:
        known = known.unionByName(id_maps).distinct()
    return known
