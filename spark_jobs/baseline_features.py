"""The tabular baseline's features computed by Spark over the graph store's edge tables.

The columns of :func:`trainer.tabular.baseline_features` (the same names, order and
values) for a sample of impressions, without loading the graph into one process: what
``clickgraph evaluate --workers N`` fits and scores its trees on. The contract (relations
counted, thresholds, smoothing) lives in :mod:`clickgraph.core.baseline`.

As-of counts are window functions: a relation's edges, aggregated per ``(node, second)``,
are stacked with the query rows (``n = 0``) and summed over ``RANGE BETWEEN UNBOUNDED
PRECEDING AND 1 PRECEDING`` on the second, partitioned by node: exactly the edges strictly
before the impression's second (an edge in the same second never counts; flooring
milliseconds to seconds as every reader does, :func:`clickgraph.core.timeline.seconds`).
The ``_24h`` counts use ``RANGE BETWEEN 86400 PRECEDING AND 1 PRECEDING``.

The content's links (brands, categories, articles) are read whole, as the in-memory
baseline reads them: the number of links, the first link's attributes (the link with the
earliest time, then the smallest id: the in-memory CSR's order), and, per link, the as-of
impressions and clicks of every content sharing it, averaged over the content's links.

Floats: rates, means, ``log1p`` and ages are computed in doubles and cast to float32 once,
as the in-memory features are, so both give the same float32 values (a double sum in
another order could only differ where it rounds to a float32 tie; the trees are sensitive
to last-bit differences, which move their bin thresholds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

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
from clickgraph.core.errors import InputError
from clickgraph.core.graph_store import GraphStore, open_graph_store
from clickgraph.core.timeline import MS_PER_SECOND, SECONDS_PER_DAY
from clickgraph.core.vocab import ATTRIBUTE_SKIP
from spark_jobs.store_io import read_edges, read_nodes

QUERY_COLUMNS = ("row", "user", "content", "time", "position")
"""The impressions asked about: ``row`` (any unique int64 key), dense ``user`` and
``content`` ids, ``time`` in seconds since epoch, feed ``position`` (-1 unknown)."""


@dataclass(frozen=True)
class Column:
    """One output column: its name, whether the trees treat it as categorical, and its
    Spark expression over the joined query frame."""

    name: str
    categorical: bool
    expr: object


def seconds_of(ts_ms: str = "ts_ms"):
    """Floored whole seconds of a milliseconds column (also for negative times)."""
    return F.expr(f"({ts_ms} - pmod({ts_ms}, {MS_PER_SECOND})) div {MS_PER_SECOND}")


def _float(expr):
    return expr.cast("float")


def relation_end(store: GraphStore, relation: str, node_type: str) -> tuple[str, str] | None:
    """``(stored relation, its column holding node_type)`` of the relation named
    ``relation`` into ``node_type``: a stored one ending there (``dst``), else one starting
    there (``src``, its reverse), as :meth:`trainer.asof.AsOfCounts.edge_type` picks it;
    ``None`` when the store has none."""
    infos = list(store.relations.values())
    for info in infos:
        if info.relation == relation and info.dst_type == node_type:
            return info.name, "dst"
    for info in infos:
        if info.relation == relation and info.src_type == node_type:
            return info.name, "src"
    return None


def node_events(spark: SparkSession, store: GraphStore, relation: str, node_type: str
                ) -> DataFrame | None:
    """``(node, time)`` of every ``relation`` edge at a ``node_type`` node (seconds)."""
    end = relation_end(store, relation, node_type)
    if end is None:
        return None
    edges = read_edges(spark, store, end[0])
    return edges.select(F.col(end[1]).alias("node"), seconds_of().alias("time"))


def as_of_counts(queries: DataFrame, events: dict[str, DataFrame], recent_s: int | None = None
                 ) -> DataFrame:
    """``queries`` (with ``node`` and ``time`` columns, any others kept) plus, per name of
    ``events`` (frames of ``(node, time)``, each row one event, or ``n`` events with a
    column ``_n``), the node's events strictly before ``time`` and, with ``recent_s``,
    ``<name>_24h``: those in ``[time - recent_s, time)``."""
    stacked = queries.withColumn("_query", F.lit(True))
    for name, frame in events.items():
        n = F.sum("_n") if "_n" in frame.columns else F.count(F.lit(1))
        per_second = (frame.groupBy("node", "time").agg(n.alias("_n"))
                      .withColumn("_kind", F.lit(name)).withColumn("_query", F.lit(False)))
        stacked = stacked.unionByName(per_second, allowMissingColumns=True)
    by_node = Window.partitionBy("node").orderBy("time")
    frames = {"": by_node.rangeBetween(Window.unboundedPreceding, -1)}
    if recent_s is not None:
        frames["_24h"] = by_node.rangeBetween(-recent_s, -1)
    counts = [F.coalesce(F.sum(F.when(F.col("_kind") == name, F.col("_n"))).over(frame),
                         F.lit(0)).alias(name + suffix)
              for name in events for suffix, frame in frames.items()]
    return (stacked.select(*queries.columns, "_query", *counts).where(F.col("_query"))
            .drop("_query"))


def encoded_nodes(spark: SparkSession, store: GraphStore, node_type: str,
                  vocab: dict[str, list[str]]) -> tuple[DataFrame, list[str], list[int]]:
    """The node table as ``(id, created_s, <attribute>...)`` with each attribute as its
    code in ``vocab`` (0: missing or not listed; :mod:`clickgraph.core.vocab`).

    Returns:
        ``(frame, attribute columns in table order, cardinalities)``.

    Raises:
        InputError: ``vocab`` lacks an attribute column of the table.
    """
    nodes = read_nodes(spark, store, node_type)
    columns = [c for c in nodes.columns if c not in ATTRIBUTE_SKIP]
    missing = [c for c in columns if c not in vocab]
    if missing:
        raise InputError(f"{store.url}: the vocabulary of {node_type!r} lacks attribute "
                         f"column(s) {missing} of its node table")
    out = nodes.select("id", seconds_of("created_ts_ms").alias("created_s"), *columns)
    for column in columns:
        codes = spark.createDataFrame([(v, i + 1) for i, v in enumerate(vocab[column])],
                                      "_value string, _code long")
        out = (out.join(F.broadcast(codes), out[column] == codes["_value"], "left")
               .withColumn(column, F.coalesce(F.col("_code"), F.lit(0))).drop("_value", "_code"))
    return out, columns, [len(vocab[c]) + 1 for c in columns]


def has_created_time(nodes: DataFrame) -> bool:
    """Whether any node has a creation time (the in-memory features' ``created_time``)."""
    return bool(nodes.where(F.col("created_s") > 0).limit(1).count())


def content_links(spark: SparkSession, store: GraphStore) -> dict[str, DataFrame]:
    """Linked node type -> ``(content, linked, time)`` of every link of content to it, in
    :func:`trainer.tabular.content_links`' choice: per linked type the first relation
    (forward or reverse) into content, by ``(src, relation, dst)`` name."""
    into_content = []
    for info in store.relations.values():
        if info.dst_type == "content" and info.src_type not in ID_FREE_NODE_TYPES:
            into_content.append(((info.src_type, info.relation, "content"), info.name, "src"))
        if info.src_type == "content" and info.dst_type not in ID_FREE_NODE_TYPES:
            into_content.append(((info.dst_type, "rev_" + info.relation, "content"),
                                 info.name, "dst"))
    out: dict[str, DataFrame] = {}
    for (linked_type, _, _), name, linked_end in sorted(into_content):
        if linked_type in out:
            continue
        content_end = "dst" if linked_end == "src" else "src"
        out[linked_type] = read_edges(spark, store, name).select(
            F.col(content_end).alias("content"), F.col(linked_end).alias("linked"),
            seconds_of().alias("time"))
    return out


def _link_columns(spark: SparkSession, store: GraphStore, vocab: dict, queries: DataFrame,
                  linked_type: str, links: DataFrame, shown: DataFrame, clicks: DataFrame
                  ) -> tuple[DataFrame, list[Column]]:
    """One linked type's columns (:func:`trainer.tabular.link_features`), keyed by ``row``."""
    prefix = f"content_{linked_type}"
    per_content = links.groupBy("content").agg(F.count(F.lit(1)).alias(f"{prefix}_links"))
    first = (links.withColumn("_rank", F.row_number().over(
        Window.partitionBy("content").orderBy("time", "linked"))).where(F.col("_rank") == 1)
        .select("content", "linked"))
    nodes, attributes, cardinalities = encoded_nodes(spark, store, linked_type,
                                                     vocab.get(linked_type, {}))
    kept = [(a, f"{prefix}_attr{i}") for i, (a, card) in enumerate(zip(attributes, cardinalities))
            if is_link_attribute(card, store.num_nodes(linked_type))]
    first = first.join(nodes, first["linked"] == nodes["id"]).select(
        "content", *[F.col(a).alias(name) for a, name in kept])
    # every link of the impression's content, and every event of a content per its links
    asked = queries.select("row", "content", "time").join(links.select("content", "linked"),
                                                         "content")
    def expand(events: DataFrame) -> DataFrame:
        """(node = content, time) events -> (node = linked, time, _n) per link, counted
        per (content, second) first: one row per link and second, not per event."""
        per_second = events.groupBy("node", "time").agg(F.count(F.lit(1)).alias("_n"))
        return per_second.withColumnRenamed("node", "content").join(
            links.select("content", "linked"), "content").select(
            F.col("linked").alias("node"), "time", "_n")

    counts = as_of_counts(asked.select("row", F.col("linked").alias("node"), "time"),
                          {"shown": expand(shown), "clicked": expand(clicks)})
    rate = (F.col("clicked") + PRIOR_CLICKS).cast("double") / (F.col("shown") + PRIOR_SHOWN)
    per_row = counts.groupBy("row").agg(
        F.avg(rate).alias(f"{prefix}_ctr"),
        F.avg(F.log1p(F.col("shown").cast("double"))).alias(f"{prefix}_impressed"))
    frame = (queries.select("row", "content")
             .join(per_content, "content", "left").join(first, "content", "left")
             .join(per_row, "row", "left").drop("content"))
    nan = F.lit(float("nan"))
    columns = [Column(f"{prefix}_links", False, F.coalesce(F.col(f"{prefix}_links"), F.lit(0)))]
    columns += [Column(name, True, F.coalesce(F.col(name), F.lit(0))) for _, name in kept]
    columns += [Column(f"{prefix}_{kind}", False, F.coalesce(F.col(f"{prefix}_{kind}"), nan))
                for kind in ("ctr", "impressed")]
    return frame, columns


def transform(spark: SparkSession, store: GraphStore, queries: DataFrame,
              vocab: dict[str, dict[str, list[str]]]) -> tuple[DataFrame, list[Column]]:
    """The baseline's features of ``queries`` (:data:`QUERY_COLUMNS`).

    Args:
        spark: The session.
        store: The graph store (every day is read, as the in-memory baseline does).
        queries: The impressions asked about.
        vocab: Node type -> attribute -> values: the model's vocabularies (code ``i + 1``
            is ``values[i]``).

    Returns:
        ``(frame, columns)``: ``frame`` has ``row`` and one column per entry of
        ``columns`` (float32, NaN for a link rate of a content without links), in the
        order of :func:`trainer.tabular.baseline_features`.
    """
    missing = [c for c in QUERY_COLUMNS if c not in queries.columns]
    if missing:
        raise InputError(f"the impressions asked about lack column(s) {missing}")
    queries = queries.select(*QUERY_COLUMNS)
    frame, columns = queries, []
    for node_type in ("user", "content"):
        nodes, attributes, cardinalities = encoded_nodes(spark, store, node_type,
                                                         vocab.get(node_type, {}))
        named = nodes.select(F.col("id").alias(node_type), *[
            F.col(a).alias(f"{node_type}_attr{i}") for i, a in enumerate(attributes)],
            F.col("created_s").alias(f"{node_type}_created_s"))
        frame = frame.join(named, node_type, "left")
        columns += [Column(f"{node_type}_attr{i}", is_native_category(card),
                           F.col(f"{node_type}_attr{i}"))
                    for i, card in enumerate(cardinalities)]
        if has_created_time(nodes):
            age = F.greatest(F.col("time") - F.col(f"{node_type}_created_s"), F.lit(0))
            columns.append(Column(f"{node_type}_age_days", False,
                                  age.cast("double") / F.lit(float(SECONDS_PER_DAY))))
    columns += [Column("position", False, F.col("position")),
                Column("hour", True, F.expr(f"pmod(time, {SECONDS_PER_DAY}) div 3600")),
                Column("weekday", True, F.expr(f"pmod(time div {SECONDS_PER_DAY} + 3, 7)"))]

    events = {(r, t): node_events(spark, store, r, t)
              for t, relations in (("user", USER_INTERACTIONS), ("content", CONTENT_COUNTS))
              for r in relations}
    for node_type, relations, recent in (("user", USER_INTERACTIONS, None),
                                         ("content", CONTENT_COUNTS, RECENT_S)):
        present = {r: events[(r, node_type)] for r in relations
                   if events[(r, node_type)] is not None}
        if not present:
            continue
        counts = as_of_counts(queries.select("row", F.col(node_type).alias("node"), "time"),
                              {f"{node_type}_{r}": e for r, e in present.items()}, recent)
        frame = frame.join(counts.drop("node", "time"), "row")
        for r in present:
            columns.append(Column(f"{node_type}_{r}", False, F.col(f"{node_type}_{r}")))
            if recent is not None:
                columns.append(Column(f"{node_type}_{r}_24h", False,
                                      F.col(f"{node_type}_{r}_24h")))
    names = [c.name for c in columns]
    for node_type in ("user", "content"):
        if {f"{node_type}_clicked", f"{node_type}_impressed"} <= set(names):
            rate = ((F.col(f"{node_type}_clicked") + PRIOR_CLICKS).cast("float")
                    / (F.col(f"{node_type}_impressed") + PRIOR_SHOWN).cast("float"))
            columns.append(Column(f"{node_type}_ctr", False, rate))
    shown, clicks = events[("impressed", "content")], events[("clicked", "content")]
    if shown is not None and clicks is not None:
        for linked_type, links in content_links(spark, store).items():
            link_frame, link_columns = _link_columns(spark, store, vocab, queries, linked_type,
                                                     links, shown, clicks)
            frame = frame.join(link_frame, "row", "left")
            columns += link_columns
    out = frame.select("row", *[_float(c.expr).alias(c.name) for c in columns])
    return out, columns


def features_of(spark: SparkSession, store_url: str, vocab: dict[str, dict[str, list[str]]],
                user: np.ndarray, content: np.ndarray, time: np.ndarray, position: np.ndarray
                ) -> tuple[np.ndarray, list[str], list[bool]]:
    """The baseline's features of the impressions ``(user, content, time, position)``
    (each ``[N]``, time in seconds), collected to the driver: the rows asked about only.

    Returns:
        ``(X, names, categorical)`` as :func:`trainer.tabular.baseline_features`: float32
        ``[N, F]`` in the rows' order, column names, and which are categorical codes.
    """
    import pandas as pd

    store = open_graph_store(store_url)
    asked = pd.DataFrame({"row": np.arange(len(user), dtype=np.int64),
                          "user": np.asarray(user, dtype=np.int64),
                          "content": np.asarray(content, dtype=np.int64),
                          "time": np.asarray(time, dtype=np.int64),
                          "position": np.asarray(position, dtype=np.int64)})
    schema = "row long, user long, content long, time long, position long"
    arrow = "spark.sql.execution.arrow.pyspark.enabled"
    before = spark.conf.get(arrow, "false")
    spark.conf.set(arrow, "true")  # the rows cross between pandas and the JVM as Arrow
    try:
        frame, columns = transform(spark, store, spark.createDataFrame(asked, schema), vocab)
        rows = frame.toPandas().sort_values("row")
    finally:
        spark.conf.set(arrow, before)
    names = [c.name for c in columns]
    if len(rows) != len(asked) or not np.array_equal(rows["row"].to_numpy(), asked["row"]):
        raise RuntimeError(f"the baseline features came back for {len(rows)} of "
                           f"{len(asked)} impressions")  # a join lost or doubled rows
    x = rows[names].to_numpy(dtype=np.float32, na_value=np.nan)
    return x, names, [c.categorical for c in columns]
