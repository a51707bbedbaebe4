"""Edges: event edges (user -> content or brand, one per kept event) and link edges
(content -> article/brand/category, article -> brand/category, from the entity tables),
with their weights."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from clickgraph.core import fs
from clickgraph.core.config import GraphConfig
from spark_jobs.graph_build.common import ENTITY_FOLDERS, maybe_broadcast
from spark_jobs.graph_build.ids import NumberedNodes
from spark_jobs.graph_build.parse import CheckedEvents
from spark_jobs.schemas import (
    EVENT_RELATIONS,
    LINK_RELATIONS,
    conform,
    edge_schema,
)


def event_weight(g: GraphConfig) -> Column:
    """Weight of an event edge: ``graph.relation_weights`` of its relation, for content
    targets times ``graph.content_type_weight`` of the content's type (column ``_ctype``)."""
    rel_weight = F.create_map(*[x for etype, rel in EVENT_RELATIONS.items() for x in (
        F.lit(etype), F.lit(float(g.relation_weights.get(rel.relation, 1.0))))])
    weight = F.element_at(rel_weight, F.col("etype"))
    if g.content_type_weight:
        type_weight = F.create_map(*[F.lit(x) for kv in g.content_type_weight.items() for x in kv])
        weight = weight * F.when(F.col("target_t") == "content", F.coalesce(
            F.try_element_at(type_weight, F.col("_ctype")), F.lit(1.0))).otherwise(1.0)
    return weight


def node_id_lookups(nodes: DataFrame, node_rows: int) -> tuple[DataFrame, DataFrame]:
    """``(user_raw -> src, (target_t, target_raw) -> dst with _ctype)`` from the store's
    nodes, broadcast when small (``node_rows``)."""
    user_ids = nodes.where(F.col("t") == "user").select(
        F.col("raw_id").alias("user_raw"), F.col("id").alias("src"))
    target_ids = nodes.where(F.col("t") != "user").select(
        F.col("t").alias("target_t"), F.col("raw_id").alias("target_raw"), F.col("id").alias("dst"),
        F.col("attrs").getItem("content_type").alias("_ctype"))
    return maybe_broadcast(user_ids, node_rows), maybe_broadcast(target_ids, node_rows)


def event_edges(events: DataFrame, user_ids: DataFrame, target_ids: DataFrame,
                weight: Column) -> DataFrame:
    """Kept events with their ends' ids (``src``, ``dst``) and ``weight``
    (:func:`event_weight`); lookups from :func:`node_id_lookups`."""
    return events.join(user_ids, "user_raw") \
        .join(target_ids, ["target_t", "target_raw"]).withColumn("weight", weight)


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
    joined = pairs.join(maybe_broadcast(src, node_rows), ["src_t", "src_raw"]) \
        .join(maybe_broadcast(dst, node_rows), ["dst_t", "dst_raw"])
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


@dataclass(frozen=True)
class LinkEdges:
    """Link edges of a run and links to unknown entities.

    Attributes:
        edges: :func:`link_edges`' edges; persisted.
        dangling: links to unknown entities (QUARANTINE_ENTITIES_SCHEMA); persisted.
        counts: ``(relation name, day) -> edges``.
        dangling_counts: entity folder name (``ENTITY_FOLDERS``) -> dangling links.
    """

    edges: DataFrame
    dangling: DataFrame
    counts: dict[tuple[str, str], int]
    dangling_counts: dict[str, int]


def find_link_edges(pool: DataFrame, nodes: DataFrame, known: DataFrame, node_rows: int,
                    weights: dict[str, float], run_days: list[str]) -> LinkEdges:
    """:func:`link_edges`, cached and counted (arguments as there)."""
    links, dangling = link_edges(pool, nodes, known, node_rows, weights, run_days)
    links = links.persist(StorageLevel.MEMORY_AND_DISK)
    link_counts = {(r["relation"], r["day"]): r["n"] for r in
                   links.groupBy("relation", "day").agg(F.count("*").alias("n")).collect()}
    dangling = dangling.persist(StorageLevel.MEMORY_AND_DISK)
    n_dangling = {r["table"]: r["n"] for r in
                  dangling.groupBy("table").agg(F.count("*").alias("n")).collect()}
    return LinkEdges(links, dangling, link_counts, n_dangling)


def write_edges(events: CheckedEvents, links: LinkEdges, nodes: NumberedNodes, g: GraphConfig,
                out_url: str, run_id: str) -> None:
    """Append this run's edges as ``edges/<relation>/day=<day>/run=<run_id>`` folders;
    relations without edges on the run's days are not written."""
    user_ids, target_ids = node_id_lookups(nodes.nodes, nodes.total)
    weight = event_weight(g)
    for etype, rel in EVENT_RELATIONS.items():
        if not any(events.day_stats[d]["edges"].get(rel.name) for d in events.run_days):
            continue
        # one relation's slice of the staged events: a pruned scan, not a filter of all
        if etype == "click" and g.input.events.clicks_from_labels_after_s is not None:
            rows = label_clicks(events.rows, g.input.events.clicks_from_labels_after_s)
        else:
            rows = events.rows.where(F.col("slice") == etype)
        _append(event_edges(rows, user_ids, target_ids, weight), rel.name, out_url, run_id)
    for rel in LINK_RELATIONS.values():
        if not any(links.counts.get((rel.name, d)) for d in events.run_days):
            continue
        _append(links.edges.where(F.col("relation") == rel.name), rel.name, out_url, run_id)


def label_clicks(staged: DataFrame, after_s: int) -> DataFrame:
    """Click events derived from the staged impressions' labels: one per kept clicked
    impression, at its time plus ``after_s`` seconds (when the platform knows the label;
    ``graph.input.events.clicks_from_labels_after_s``), in the impression's day folder."""
    return staged.where((F.col("slice") == "impression") & F.col("clicked")) \
        .withColumn("etype", F.lit("click")) \
        .withColumn("ts_ms", F.col("ts_ms") + F.lit(int(after_s) * 1000))


def _append(edges: DataFrame, relation: str, out_url: str, run_id: str) -> None:
    """Append one relation's edges to ``edges/<relation>`` under ``day=.../run=<run_id>``."""
    conform(edges, edge_schema(relation), "day").withColumn("run", F.lit(run_id)) \
        .write.mode("append").partitionBy("day", "run") \
        .parquet(fs.spark_url(fs.join(out_url, "edges", relation)))
