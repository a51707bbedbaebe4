"""Label propagation coarsening as Spark DataFrame operations.

The same rounds as :func:`partitioning.coarsen.coarsen_graph`, for graphs
too large for one machine's memory: every step is a join, an aggregation or
a window over a key, and nothing but row counts reaches the driver. Node ids
are the keys and a cluster is labelled by a node key exactly as in the
reference (the key of the node that started it), so the
clusters, their labels and the coarse edges equal the numpy reference's
exactly when the weights are integers (floating-point sums taken in a
different order can differ in the last bit and flip a tie).

Input tables:
    edges_df: ``src`` long, ``dst`` long, ``weight`` double; either
        orientation, duplicates summed (as
        :meth:`partitioning.graph.PartitionGraph.from_coo` with
        ``combine="sum"``), no self loops.
    vweights_df: ``node`` long, ``weight`` double: every node of the graph
        (isolated ones included) with the coarsening weight counted against
        ``max_cluster_weight``.

Checkpoints:
    Label propagation is iterative, and a DataFrame built from its own
    previous version accumulates lineage. ``localCheckpoint()`` would cut the
    lineage but keeps the optimizer's size estimate of the plan it replaced
    (SPARK-39834), and without cost-based optimisation an inner join is
    estimated at the product of its inputs' sizes, so the estimate is raised
    to a power every sweep; after about six sweeps Spark spends minutes
    multiplying BigIntegers and runs out of heap. Every sweep and round is
    therefore written as parquet under ``checkpoint_dir`` and read back,
    which cuts the lineage and resets the estimate to the files' real size.
    The returned DataFrames read from those files: delete the directory only
    after consuming them. Without ``checkpoint_dir`` the SparkContext's
    checkpoint directory is used, or, with a ``local[...]`` master only, a
    new temporary directory (left in place).

Output tables:
    coarse_edges_df: ``src`` < ``dst`` long cluster keys, ``weight`` double.
    mapping_df: ``node`` long, ``cluster`` long: the coarsest cluster key of
        every input node.
"""

from __future__ import annotations

import tempfile
import uuid

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from partitioning.coarsen import LEHMER_MODULUS, LEHMER_MULTIPLIER, SWEEP_SALT


def is_active_column(node: Column, sweep: int) -> Column:
    """Spark twin of :func:`partitioning.coarsen.is_active`."""
    mixed = F.pmod(
        F.pmod(node, F.lit(LEHMER_MODULUS)) * LEHMER_MULTIPLIER + (sweep + 1) * SWEEP_SALT,
        F.lit(LEHMER_MODULUS),
    )
    mixed = F.pmod(mixed * LEHMER_MULTIPLIER, F.lit(LEHMER_MODULUS))
    return F.pmod(mixed, F.lit(2)) == 0


def symmetric_edges(edges_df: DataFrame) -> DataFrame:
    """Both orientations of every undirected pair, duplicate rows summed.

    Returns:
        ``src``, ``dst``, ``weight``: each pair ``{u, v}`` as ``(u, v)`` and
        ``(v, u)`` with the summed weight.
    """
    pairs = (
        edges_df.select(
            F.least("src", "dst").cast("long").alias("src"),
            F.greatest("src", "dst").cast("long").alias("dst"),
            F.col("weight").cast("double").alias("weight"),
        )
        .groupBy("src", "dst")
        .agg(F.sum("weight").alias("weight"))
    )
    return pairs.unionByName(pairs.select(F.col("dst").alias("src"), F.col("src").alias("dst"), "weight"))


def _materialise(frame: DataFrame, path: str) -> DataFrame:
    """Writes ``frame`` as parquet at ``path`` and reads it back (see the module docstring)."""
    frame.write.mode("overwrite").parquet(path)
    return frame.sparkSession.read.parquet(path)


def _checkpoint_root(frame: DataFrame, checkpoint_dir: str | None) -> str:
    """Directory for the parquet checkpoints (see the module docstring)."""
    if checkpoint_dir is not None:
        return checkpoint_dir.rstrip("/")
    context = frame.sparkSession.sparkContext
    configured = context.getCheckpointDir()
    if configured:
        return f"{configured.rstrip('/')}/coarsen_spark-{uuid.uuid4().hex}"
    if context.master.startswith("local"):
        return tempfile.mkdtemp(prefix="coarsen_spark-")
    raise ValueError(
        "coarsen_spark needs checkpoint_dir (a path all executors can reach) on a cluster, "
        "or a SparkContext checkpoint directory (sparkContext.setCheckpointDir)"
    )


def _sweep(labels: DataFrame, adjacency: DataFrame, sweep: int, max_cluster_weight: float) -> DataFrame:
    """One label propagation sweep; returns the new ``node, label, cw`` table (not materialised)."""
    cluster_weight = labels.groupBy(F.col("label").alias("target")).agg(F.sum("cw").alias("target_weight"))
    active = labels.filter(is_active_column(F.col("node"), sweep)).select(
        F.col("node").alias("src"), F.col("label").alias("own"), "cw"
    )
    neighbour_label = labels.select(F.col("node").alias("dst"), F.col("label").alias("target"))
    connection = (
        adjacency.join(active, "src")
        .join(neighbour_label, "dst")
        .groupBy("src", "own", "cw", "target")
        .agg(F.sum("weight").alias("conn"))
    )
    internal = connection.filter(F.col("target") == F.col("own")).select(
        "src", F.col("conn").alias("internal")
    )
    by_connection = Window.partitionBy("src").orderBy(F.col("conn").desc(), F.col("target").asc())
    best = (
        connection.filter(F.col("target") != F.col("own"))
        .join(cluster_weight, "target")
        .filter(F.col("target_weight") + F.col("cw") <= F.lit(max_cluster_weight))
        .withColumn("rank", F.row_number().over(by_connection))
        .filter(F.col("rank") == 1)
        .join(internal, "src", "left")
        .withColumn("gain", F.col("conn") - F.coalesce(F.col("internal"), F.lit(0.0)))
        .filter(F.col("gain") > 0)
    )
    by_gain = (
        Window.partitionBy("target")
        .orderBy(F.col("gain").desc(), F.col("src").asc())
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    accepted = (
        best.withColumn("filled", F.col("target_weight") + F.sum("cw").over(by_gain))
        .filter(F.col("filled") <= F.lit(max_cluster_weight))
        .select(F.col("src").alias("node"), F.col("target").alias("new_label"))
    )
    return labels.join(accepted, "node", "left").select(
        "node", F.coalesce("new_label", "label").alias("label"), "cw"
    )


def coarsen_spark(
    edges_df: DataFrame,
    vweights_df: DataFrame,
    *,
    max_cluster_weight: float,
    edge_budget: int | None = None,
    checkpoint_dir: str | None = None,
    max_rounds: int = 10,
    iterations: int = 4,
    min_edge_shrink: float = 0.05,
) -> tuple[DataFrame, DataFrame]:
    """Coarsens a graph held in DataFrames (see the module docstring).

    Rounds stop under the same rules as the numpy reference: the coarse graph
    has at most ``edge_budget`` undirected edges (never, when None), a round
    merged nothing, a round removed less than ``min_edge_shrink`` of the
    edges, or ``max_rounds`` were run.

    Args:
        edges_df: ``src``, ``dst``, ``weight``.
        vweights_df: ``node``, ``weight``.
        max_cluster_weight: cap on a cluster's total weight.
        checkpoint_dir: scratch directory (any Hadoop path every executor
            can reach) for the per-sweep parquet checkpoints; see the module
            docstring for the default.
        edge_budget: target number of undirected edges.
        max_rounds: rounds at most.
        iterations: label propagation sweeps per round.
        min_edge_shrink: smallest useful share of edges removed by a round.

    Returns:
        ``(coarse_edges_df, mapping_df)``.
    """
    checkpoint_dir = _checkpoint_root(edges_df, checkpoint_dir)
    adjacency = _materialise(symmetric_edges(edges_df), f"{checkpoint_dir}/round0/adjacency")
    labels = vweights_df.select(F.col("node").cast("long"), F.col("weight").cast("double").alias("cw"))
    mapping = labels.select("node", F.col("node").alias("cluster"))
    num_edges = adjacency.count() // 2
    num_nodes = labels.count()
    for round_index in range(max_rounds):
        if edge_budget is not None and num_edges <= edge_budget:
            break
        round_labels = labels.select("node", F.col("node").alias("label"), "cw")
        for sweep in range(round_index * iterations, (round_index + 1) * iterations):
            round_labels = _materialise(
                _sweep(round_labels, adjacency, sweep, max_cluster_weight),
                f"{checkpoint_dir}/round{round_index}/sweep{sweep}",
            )
        num_clusters = round_labels.select("label").distinct().count()
        if num_clusters == num_nodes:
            break
        cluster_of = round_labels.select("node", "label")
        coarse_adjacency = (
            adjacency.join(
                cluster_of.withColumnRenamed("node", "src").withColumnRenamed("label", "src_cluster"), "src"
            )
            .join(
                cluster_of.withColumnRenamed("node", "dst").withColumnRenamed("label", "dst_cluster"), "dst"
            )
            .filter(F.col("src_cluster") != F.col("dst_cluster"))
            .groupBy(F.col("src_cluster").alias("src"), F.col("dst_cluster").alias("dst"))
            .agg(F.sum("weight").alias("weight"))
        )
        coarse_adjacency = _materialise(
            coarse_adjacency, f"{checkpoint_dir}/round{round_index + 1}/adjacency"
        )
        # Both read materialised tables and grow by one step per round: no checkpoint needed.
        labels = round_labels.groupBy(F.col("label").alias("node")).agg(F.sum("cw").alias("cw"))
        mapping = mapping.join(cluster_of.withColumnRenamed("node", "cluster"), "cluster").select(
            "node", F.col("label").alias("cluster")
        )
        coarse_edges = coarse_adjacency.count() // 2
        shrink = 1.0 - coarse_edges / max(num_edges, 1)
        adjacency, num_edges, num_nodes = coarse_adjacency, coarse_edges, num_clusters
        if shrink < min_edge_shrink:
            break
    coarse_edges_df = adjacency.filter(F.col("src") < F.col("dst"))
    return coarse_edges_df, mapping


def coarse_vertex_weights_spark(vweights_df: DataFrame, mapping_df: DataFrame) -> DataFrame:
    """Sums any numeric vertex weight columns per coarse cluster.

    Args:
        vweights_df: ``node`` plus weight columns.
        mapping_df: ``node``, ``cluster`` from :func:`coarsen_spark`.

    Returns:
        ``cluster`` plus the summed weight columns.
    """
    weight_columns = [name for name in vweights_df.columns if name != "node"]
    return (
        vweights_df.join(mapping_df, "node")
        .groupBy("cluster")
        .agg(*[F.sum(name).alias(name) for name in weight_columns])
    )
