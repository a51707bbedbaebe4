"""``clickgraph pipeline``: every stage end to end, one more day, and a report."""

from __future__ import annotations

import argparse
import sys

from clickgraph.core.config import Config, replace

HELP = "run every stage end to end, add one more day incrementally, write a report"
DESCRIPTION = """\
Runs the whole job on one machine with one Spark session: generate generate.num_days
days of logs; build the graph store from all days but the last; partition it into one
shard per training worker; train (--workers N: Ray Train with N workers; 1: in this
process); evaluate the GNN against the tabular baseline; export embeddings. Then one more
day: add the last day to the store incrementally, place its new nodes into the existing
shards, continue training from the checkpoint on the events after it, evaluate, export
(with the embedding drift against the first export). With --retrain it also retrains
from scratch on the extended store for the continue-against-retrain comparison (off by
default: it repeats the two longest stages, training and evaluation).

Prints each stage with its step number and the elapsed time, then a summary table, and
writes paths.report/index.html (plots beside it) and pipeline.json with every figure
and stage timing. Every stage writes to its usual folder (paths.logs, paths.graph, ...);
because the first days are built from scratch, the pipeline refuses to start when those
folders hold an earlier run's outputs unless --fresh deletes them (docs/pipeline.md).
Spark's and Ray's own output (routine warnings, Ray's reports) goes to one log file per
step in paths.root/pipeline-logs, named at the end (--verbose: on the terminal instead).

Exit status: 0 done; 1 a stage failed (the report of what finished is still written) or
earlier outputs without --fresh; 2 bad config.

examples:
  clickgraph pipeline --fresh
  clickgraph pipeline --fresh --retrain
  clickgraph pipeline --fresh --workers 1
  clickgraph pipeline --fresh --set generate.num_users=2000 --set generate.num_days=10
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, metavar="N",
                        help="training workers and partitions (same as --set resources.workers=N)")
    parser.add_argument("--retrain", action=argparse.BooleanOptionalAction, default=None,
                        help="also retrain from scratch on the extended store to compare with "
                             "continuing (default: off)")
    parser.add_argument("--fresh", action="store_true",
                        help="delete earlier outputs in paths.graph, partitions, train, eval and "
                             "embeddings first")
    parser.add_argument("--verbose", action="store_true",
                        help="show Spark's and Ray's own output on the terminal instead of one log "
                             "file per step in <paths.root>/pipeline-logs")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from clickgraph.app.pipeline import RETRAIN_BY_DEFAULT, PipelineError, run_pipeline

    if args.workers is not None:
        cfg = replace(cfg, "resources", workers=args.workers)
    retrain = RETRAIN_BY_DEFAULT if args.retrain is None else args.retrain
    try:
        run_pipeline(cfg, retrain_baseline=retrain, fresh=args.fresh, stage_logs=not args.verbose)
    except PipelineError as error:
        print(f"clickgraph pipeline: {error}", file=sys.stderr)
        return 1
    return 0
