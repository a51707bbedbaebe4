"""``clickgraph train``: train the temporal GNN click model on the graph store."""

from __future__ import annotations

import argparse
import sys

from clickgraph.core.config import Config, replace

HELP = "train the temporal GNN click model (reports validation ROC-AUC)"
DESCRIPTION = """\
Trains the click model: impressions of the training window are the examples (clicked =
positive, not clicked = hard negative, plus random negatives from content created before
each impression); the last train.test_days days are held out for testing and the
train.val_days before them for validation.

--workers 1 trains in this process on the graph store (paths.graph). --workers N > 1
trains with Ray Train, one worker per shard of the shard set (paths.partitions, N parts),
attaching to ray.address or RAY_ADDRESS or starting a local Ray on loopback; checkpoints
go to resources.checkpoint_url (default paths.train/checkpoints) and --continue carries on
from the latest one, training only on events after its last trained time
(docs/training.md). Writes metrics.json and the resolved config to paths.train/<run>/.

examples:
  clickgraph train --workers 1
  clickgraph train --workers 2
  clickgraph train --workers 2 --continue      # after build-graph --day + partition --place-new
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, metavar="N",
                        help="training workers, one per partition (same as --set resources.workers=N)")
    parser.add_argument("--graph", metavar="URL", help="graph store (default: paths.graph)")
    parser.add_argument("--out", metavar="URL", help="run folder (default: paths.train/<run>)")
    parser.add_argument("--continue", dest="continue_run", action="store_true",
                        help="continue from the latest checkpoint on the events after it "
                             "(distributed runs only)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.workers is not None:
        cfg = replace(cfg, "resources", workers=args.workers)
    from clickgraph.app.tracking import tracked

    continue_run = getattr(args, "continue_run", False)
    if cfg.resources.workers == 1 and not continue_run:
        from trainer.local import train_single

        tracked(cfg, "train", lambda: train_single(cfg, args.graph, args.out))
        return 0
    if cfg.resources.workers == 1:
        print("clickgraph train: --continue needs the distributed trainer; its checkpoints "
              "are written by --workers N >= 2 runs (python -m trainer --workers 1 also works)",
              file=sys.stderr)
        return 2
    from trainer.ray_launch import train_distributed

    tracked(cfg, "train", lambda: train_distributed(cfg, args.graph, args.out,
                                                    continue_run=continue_run))
    return 0
