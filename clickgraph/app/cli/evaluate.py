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

examples:
  clickgraph evaluate
  clickgraph evaluate --json | jq .auc
  clickgraph evaluate --checkpoint runs/local/train/checkpoints/<run>/checkpoint_0000600
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", metavar="URL",
                        help="checkpoint folder (default: evaluate.checkpoint, else the latest "
                             "finished training run)")
    parser.add_argument("--graph", metavar="URL", help="graph store (default: paths.graph)")
    parser.add_argument("--out", metavar="URL",
                        help="output folder (default: paths.eval/<last day of the graph>)")
    parser.add_argument("--json", action="store_true",
                        help="print the evaluation as JSON on stdout (progress goes to stderr)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from clickgraph.app.tracking import tracked
    from trainer.evaluate import run_evaluation

    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    result = tracked(cfg, "evaluate", lambda: run_evaluation(cfg, args.graph, args.checkpoint,
                                                             args.out, log=log), log)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0
