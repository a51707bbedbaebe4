"""Partitioning algorithms: METIS, coarsened METIS, hashing, incremental placement.

Pure numpy / scipy / pymetis code on in-memory arrays; the Spark job that
reads the graph store and writes the shards calls it. The DataFrame versions
of the coarsening rounds (:mod:`partitioning.spark_coarsen`) and of the graph
view that refinement and the quality report read
(:mod:`partitioning.spark_graph`) are not imported here, so this package does
not need pyspark.

Typical use::

    graph = PartitionGraph.from_coo(num_nodes, src, dst, weight,
                                    node_type=node_type, vertex_weights=vertex_weights)
    result = MetisPartitioner(ufactor=30, seed=0).partition(graph, num_parts=8)
    report = quality_report(graph, result, events_per_node, np.random.default_rng(0))
"""

from partitioning.base import (
    Partitioner,
    PartitionResult,
    check_num_parts,
    fill_empty_parts,
    validate_partition_book,
)
from partitioning.baseline import RandomPartitioner, hash_part
from partitioning.coarsen import CoarseLevel, CoarsenedMetisPartitioner, Coarsening, coarsen_graph
from partitioning.graph import EdgeCut, GraphView, PartitionGraph, normalized_vertex_weight
from partitioning.memory import PeakRssMonitor
from partitioning.metis import MetisPartitioner, metis_assignment, pymetis_supports_multi_constraint
from partitioning.placement import CutDrift, Placement, edge_cut_drift, place_new_nodes
from partitioning.quality import (
    RemoteLookups,
    SampledTrees,
    balance,
    draw_seeds,
    edge_cut_fraction,
    quality_report,
    remote_fraction_1hop,
    remote_fraction_2hop,
    remote_lookups,
    remote_lookups_of,
    sample_trees,
)
from partitioning.refine import CsrGraphView, as_view, refine

__all__ = [
    "CoarseLevel",
    "CoarsenedMetisPartitioner",
    "Coarsening",
    "CsrGraphView",
    "CutDrift",
    "EdgeCut",
    "GraphView",
    "MetisPartitioner",
    "PartitionGraph",
    "PartitionResult",
    "Partitioner",
    "PeakRssMonitor",
    "Placement",
    "RandomPartitioner",
    "RemoteLookups",
    "SampledTrees",
    "as_view",
    "balance",
    "check_num_parts",
    "coarsen_graph",
    "draw_seeds",
    "edge_cut_drift",
    "edge_cut_fraction",
    "fill_empty_parts",
    "hash_part",
    "metis_assignment",
    "normalized_vertex_weight",
    "place_new_nodes",
    "pymetis_supports_multi_constraint",
    "quality_report",
    "refine",
    "remote_fraction_1hop",
    "remote_fraction_2hop",
    "remote_lookups",
    "remote_lookups_of",
    "sample_trees",
    "validate_partition_book",
]
