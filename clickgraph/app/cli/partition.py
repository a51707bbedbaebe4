"""``clickgraph partition``: METIS shards of the graph store, one per training worker."""

from __future__ import annotations

import argparse

from clickgraph.core.config import Config, replace

HELP = "METIS-partition the graph store into one shard per training worker"
DESCRIPTION = """\
Aggregates the graph store (paths.graph) into a weighted undirected graph, partitions it
with METIS balancing training events and edges (coarsening in Spark first above
partition.edge_budget pairs), compares against random partitioning of the same graph, and
writes one shard per part plus _MANIFEST.json with the quality report to paths.partitions.

examples:
  clickgraph partition --num-parts 2
  clickgraph partition --num-parts 8 --set partition.edge_budget=2000000
  clickgraph build-graph --day 2026-03-23 && clickgraph partition --place-new
  clickgraph partition --out s3a://bucket/clickgraph/partitions --staging-dir /mnt/shared/tmp
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-parts", type=int, metavar="K",
                        help="parts (= training workers); same as --set partition.num_parts=K")
    parser.add_argument("--graph", metavar="URL", help="graph store (default: paths.graph)")
    parser.add_argument("--out", metavar="URL",
                        help="shard set folder: a local path or any fsspec/Hadoop URL, e.g. "
                             "s3a://bucket/partitions (default: paths.partitions)")
    parser.add_argument("--place-new", action="store_true",
                        help="after an incremental build-graph --day: keep the existing book and place "
                             "only the new nodes (no METIS run); the edge-cut drift is reported")
    parser.add_argument("--refit-vocab", action="store_true",
                        help="fit the attribute vocabularies again instead of keeping the previous "
                             "shard set's (a continued model no longer fits; retrain from scratch)")
    parser.add_argument("--staging-dir", metavar="DIR",
                        help="local folder, seen by the driver and every executor, where a shard set "
                             "for a remote --out is written before the upload (default: the temp folder)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from spark_jobs.partition import run as partition
    from spark_jobs.session import get_spark

    if args.num_parts is not None:
        cfg = replace(cfg, "partition", num_parts=args.num_parts)
    manifest = partition(get_spark(cfg.spark, "partition"), cfg, args.graph, args.out,
                         place_new_nodes=args.place_new, refit_vocab=args.refit_vocab,
                         staging_dir=args.staging_dir)
    out = args.out or cfg.paths.stage("partitions")
    q = manifest["quality"]
    print(f"{manifest['num_parts']} shards written to {out} (manifest: {out}/_MANIFEST.json); "
          f"remote 1-hop lookups METIS {q['metis']['remote_fraction_1hop']:.3f} vs random "
          f"{q['random']['remote_fraction_1hop']:.3f}")
    return 0
