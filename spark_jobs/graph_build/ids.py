"""Ids: the day each entity enters the store, dense stable ids per node type, the node
tables and id maps.

Existing ids never change; new ones are appended in (first day, raw id) order, so
building all days at once and building them day by day give the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from clickgraph.core import fs
from clickgraph.core.config import (
    GRAPH_NODE_ATTRIBUTES,
    GRAPH_NODE_TYPES,
)
from spark_jobs.graph_build.common import QUARANTINED, day_of, union
from spark_jobs.graph_build.state import StoreState
from spark_jobs.schemas import (
    ID_MAP_SCHEMA,
    conform,
    node_schema,
)


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
    created_day = F.coalesce(day_of(F.col("created_ts_ms")), F.lit("0000-00-00"))
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



def entity_refs(kept: DataFrame) -> DataFrame:
    """``(t, raw_id, ref_day)``: the first day each entity is referenced by a kept event.

    The first day is taken as a date: min() of a string is a sort aggregate (a sort of
    two rows per event: the ids phase took 28 s at 10M events), of a date a hash
    aggregate (11 s); days are YYYY-MM-DD, so the date cast back to a string is the
    same day string.

    Args:
        kept: kept events (``user_raw, target_t, target_raw, day``).
    """
    return kept.select(F.explode(F.array(
        F.struct(F.lit("user").alias("t"), F.col("user_raw").alias("raw_id"), F.col("day")),
        F.struct(F.col("target_t").alias("t"), F.col("target_raw").alias("raw_id"), F.col("day")),
    )).alias("r")).select("r.*").where(F.col("t").isNotNull() & F.col("raw_id").isNotNull()) \
        .groupBy("t", "raw_id").agg(F.min(F.to_date("day")).cast("string").alias("ref_day"))


def store_nodes(new_ids: DataFrame, pool: DataFrame, existing: list[DataFrame]) -> DataFrame:
    """The store's nodes after the run: ``t, id, raw_id, first_day, created_ts_ms, attrs``.

    Args:
        new_ids: :func:`assign_ids` output.
        pool: valid entity rows (``t, raw_id, created_ts_ms, attrs``).
        existing: the store's nodes in the same columns (:class:`~.state.StoreState`).
    """
    new_nodes = new_ids.join(pool.select("t", "raw_id", "created_ts_ms", "attrs"),
                             ["t", "raw_id"], "left") \
        .withColumn("created_ts_ms", F.coalesce("created_ts_ms", F.lit(0).cast("long")))
    node_cols = ["t", "id", "raw_id", "first_day", "created_ts_ms", "attrs"]
    return union([*existing, new_nodes.select(*node_cols)])


@dataclass(frozen=True)
class NumberedNodes:
    """The nodes of the store after a run.

    Attributes:
        new_ids: ``(t, raw_id, id, first_day)`` of the raw ids new to the store; persisted.
        nodes: every node (:func:`store_nodes`); persisted.
        counts: node type -> nodes after the run, for the graph's node types.
        added: nodes new in this run.
        new_types: node types whose tables this run writes (new nodes, or none yet).
    """

    new_ids: DataFrame
    nodes: DataFrame
    counts: dict[str, int]
    added: int
    new_types: list[str]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def number_nodes(events: DataFrame, pool: DataFrame, state: StoreState,
                 run_days: list[str], node_types: tuple[str, ...] = GRAPH_NODE_TYPES
                 ) -> NumberedNodes:
    """Entities enter on their creation day or first reference, numbered in
    ``(first_day, raw_id)`` order after the existing ids.

    Args:
        events: the staged checked events (``slice``, see :func:`~.parse.stage_events`).
        pool: valid entity rows.
        state: the store extended.
        run_days: days of this run, ascending.
        node_types: the graph's node types (``GraphEntitiesInput.node_types``); a type
            the mapping leaves out gets no table.
    """
    refs = entity_refs(events.where(F.col("slice") != QUARANTINED))
    new_ids = assign_ids(first_days(pool, refs, run_days), state.id_maps, state.counts) \
        .persist(StorageLevel.MEMORY_AND_DISK)
    added = {r["t"]: r["n"] for r in new_ids.groupBy("t").agg(F.count("*").alias("n")).collect()}
    node_counts = {t: state.counts.get(t, 0) + added.get(t, 0) for t in node_types}
    new_node_types = [t for t in node_types if added.get(t) or not state.counts.get(t)]
    nodes = store_nodes(new_ids, pool, state.nodes).persist(StorageLevel.MEMORY_AND_DISK)
    return NumberedNodes(new_ids, nodes, node_counts, sum(added.values()), new_node_types)


def write_nodes(nodes: NumberedNodes, prev_manifest: dict | None, out_url: str,
                run_id: str) -> dict[str, tuple[str, str]]:
    """Write the node tables and id maps of the types with new nodes into new run folders.

    Returns:
        node type -> ``(node table folder, id map folder)`` relative to the store: the new
        ones, or the previous run's for types without new nodes.
    """
    node_paths = {}
    for ntype in nodes.counts:
        if ntype in nodes.new_types:
            paths = (f"nodes/{ntype}/run={run_id}", f"id_maps/{ntype}/run={run_id}")
            mine = nodes.nodes.where(F.col("t") == ntype)
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
    return node_paths
