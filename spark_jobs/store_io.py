"""The graph store read as Spark DataFrames (the format and manifest reader live in
:mod:`clickgraph.core.graph_store`; this module adds only the Spark side)."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from clickgraph.core import fs
from clickgraph.core.graph_store import GraphStore
from spark_jobs.schemas import edge_schema


def read_nodes(spark: SparkSession, store: GraphStore, node_type: str) -> DataFrame:
    """The node table as a Spark DataFrame."""
    return spark.read.parquet(fs.spark_url(store.node_url(node_type)))


def read_id_map(spark: SparkSession, store: GraphStore, node_type: str) -> DataFrame:
    """The id map (raw_id, id, first_day) as a Spark DataFrame."""
    return spark.read.parquet(fs.spark_url(store.id_map_url(node_type)))


def read_edges(spark: SparkSession, store: GraphStore, relation: str,
               days: list[str] | None = None, reverse: bool = False) -> DataFrame:
    """Edges of ``relation`` as a Spark DataFrame with a string ``day`` column.

    Only manifest-listed folders are read. With ``reverse`` the ``src`` and ``dst``
    columns are swapped, giving ``dst_type --relation--> src_type`` edges.
    """
    schema = edge_schema(relation)
    frames = []
    for day, url in store.edge_urls(relation, days).items():
        frames.append(spark.read.schema(schema).parquet(fs.spark_url(url))
                      .withColumn("day", F.lit(day)))
    if not frames:
        df = spark.createDataFrame([], schema).withColumn("day", F.lit(None).cast("string"))
    else:
        df = frames[0]
        for frame in frames[1:]:
            df = df.unionByName(frame)
    if reverse:
        df = df.select(F.col("dst").alias("src"), F.col("src").alias("dst"),
                       *[c for c in df.columns if c not in ("src", "dst")])
    return df
