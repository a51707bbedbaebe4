"""``clickgraph build-graph``: logs -> global temporal heterogeneous graph store (Spark)."""

from __future__ import annotations

import argparse
import sys

from clickgraph.core.config import Config

HELP = "build or extend the temporal heterogeneous graph store from logs"
DESCRIPTION = """\
Reads events (JSON lines or parquet) and entity tables from paths.logs (or the tables
named in graph.input) and writes the graph store to paths.graph: node tables and stable
id maps per node type, edge tables per relation partitioned by day, the quarantine of
rejected rows with their reasons, and _MANIFEST.json last. The layout and every field
are described in docs/graph-store.md.

Without --day/--days every day of the input is built. With them, those days are added
to the existing store (new nodes get new ids, existing ids never change); a day already
in the store is replaced, never duplicated.

Exit status: 0 built; 1 missing or unreadable input, or more rows quarantined than
graph.max_quarantine_fraction allows (the previous store is left as it was); 2 bad config.

examples:
  clickgraph build-graph
  clickgraph build-graph --day 2026-03-09
  clickgraph build-graph --days 2026-03-02..2026-03-08 --logs s3a://bucket/logs --out runs/x/graph
  clickgraph build-graph --config my-logs.yaml     # bring your own logs: see graph.input
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--day", action="append", metavar="YYYY-MM-DD",
                       help="add or replace this day (repeatable)")
    group.add_argument("--days", metavar="FIRST..LAST",
                       help="add or replace these days, both ends included")
    parser.add_argument("--logs", metavar="URL", help="logs folder (default: paths.logs)")
    parser.add_argument("--out", metavar="URL", help="graph store folder (default: paths.graph)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from spark_jobs.build_graph import GraphBuildError, parse_days
    from spark_jobs.build_graph import run as build_graph
    from spark_jobs.session import get_spark

    days = parse_days(args.day, args.days)
    spark = get_spark(cfg.spark, "build-graph")
    try:
        manifest = build_graph(spark, cfg, days, args.logs, args.out)
    except GraphBuildError as err:
        print(f"clickgraph build-graph: {err}", file=sys.stderr)
        return 1
    out = args.out or cfg.paths.stage("graph")
    print(f"graph store written to {out} (manifest: {out}/_MANIFEST.json): "
          f"{manifest['rows_read']:,} rows read = {manifest['rows_kept']:,} kept + "
          f"{manifest['rows_quarantined']:,} quarantined "
          f"({', '.join(f'{k}={v:,}' for k, v in manifest['quarantine_by_reason'].items()) or 'none'})")
    return 0
