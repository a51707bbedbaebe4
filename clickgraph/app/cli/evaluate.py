"""``clickgraph evaluate``: the GNN against the tabular baseline on the test window."""

from __future__ import annotations

import argparse
import json
import sys

from clickgraph.core.config import Config

HELP = "ROC-AUC of the GNN, the tabular baseline and baseline+embeddings on the test window"
DESCRIPTION = """\
Scores the test window's impressions (the last train.test_days days of the graph) with
three models: the trained GNN (gnn); gradient-boosted trees on user and content attributes,
context and as-of counts (baseline); and the same trees with the GNN's user and content
embeddings as of the day before (baseline_plus_embeddings). The trees are fitted on the
validation window. Figures overall, for cold-start users (at most
evaluate.cold_start_max_interactions earlier interactions) and warm ones, per test day and
by the user's number of past interactions (docs/evaluation.md).

Writes evaluation.json and scores.parquet to paths.eval/<last day of the graph>.

--workers N (N > 1) scores on N workers, one per part of the shard set (paths.partitions,
cut from this store): each loads only its shard and scores the impressions of the users
its part owns; the AUCs are computed over the merged scores. The trees' as-of counts
are computed first by a Spark job over the store's edge tables, for the fit and test
samples only; the workers add the day-start embeddings, each node embedded by its owner
(docs/evaluation.md). No process holds the whole graph.

examples:
  clickgraph evaluate
  clickgraph evaluate --json | jq .auc
  clickgraph evaluate --workers 2              # the GNN on the 2-part shard set
  clickgraph evaluate --checkpoint runs/local/train/checkpoints/<run>/checkpoint_0000600
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", metavar="URL",
                        help="checkpoint folder (default: evaluate.checkpoint, else the latest "
                             "finished training run)")
    parser.add_argument("--graph", metavar="URL", help="graph store (default: paths.graph)")
    parser.add_argument("--out", metavar="URL",
                        help="output folder (default: paths.eval/<last day of the graph>)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="score on N workers, one per part of the shard set, the trees' "
                             "features from a Spark job (default 1: this process, whole store)")
    parser.add_argument("--json", action="store_true",
                        help="print the evaluation as JSON on stdout (progress goes to stderr)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from clickgraph.app.tracking import tracked
    from trainer.evaluate import run_evaluation

    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    workers = getattr(args, "workers", 1) or 1
    if workers > 1:
        from trainer.dist_inference import evaluate_distributed

        result = tracked(cfg, "evaluate", lambda: evaluate_distributed(
            cfg, workers, lambda *query: spark_features(cfg, *query), args.graph,
            args.checkpoint, args.out, log=log, progress_to_stderr=args.json), log)
    else:
        result = tracked(cfg, "evaluate", lambda: run_evaluation(
            cfg, args.graph, args.checkpoint, args.out, log=log), log)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


def spark_features(cfg: Config, graph_url: str, vocab: dict, impressions):
    """The trees' features of ``impressions`` from a Spark job over the store
    (``spark_jobs.baseline_features``); the session is stopped before the workers start."""
    from pyspark.sql import SparkSession

    from spark_jobs.baseline_features import features_of
    from spark_jobs.session import get_spark

    ours = SparkSession.getActiveSession() is None  # else the caller's, left running
    spark = get_spark(cfg.spark, "evaluate-features")
    try:
        return features_of(spark, graph_url, vocab, impressions.user.numpy(),
                           impressions.content.numpy(), impressions.time.numpy(),
                           impressions.position.numpy())
    finally:
        if ours:
            spark.stop()
