"""``clickgraph train``: train the temporal GNN click model on the graph store."""

from __future__ import annotations

import argparse
import sys

from clickgraph.config import Config, replace

HELP = "train the temporal GNN click model (reports validation ROC-AUC)"
DESCRIPTION = """\
Trains the click model on the graph store (paths.graph): impressions of the training
window are the examples (clicked = positive, not clicked = hard negative, plus random
negatives from content created before each impression); the last train.test_days days are
held out for testing and the train.val_days before them for validation. Writes
metrics.json, the resolved config and a checkpoint to paths.train/<run>/.

examples:
  clickgraph train --workers 1
  clickgraph train --workers 1 --set train.epochs=3 --set train.model.conv=attention
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, metavar="N",
                        help="training workers, one per partition (same as --set train.workers=N)")
    parser.add_argument("--graph", metavar="URL", help="graph store (default: paths.graph)")
    parser.add_argument("--out", metavar="URL", help="run folder (default: paths.train/<run>)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.workers is not None:
        cfg = replace(cfg, "train", workers=args.workers)
    if cfg.train.workers != 1:
        print("clickgraph train: only --workers 1 (single process) is implemented so far; "
              "distributed training over partitions is tracked in issue 6", file=sys.stderr)
        return 2
    from trainer.local import train_single

    train_single(cfg, args.graph, args.out)
    return 0
