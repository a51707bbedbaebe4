"""``python -m trainer --config FILE [--workers N] [--continue]``: distributed training.

The entry point for a Ray cluster::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m trainer --config conf/cluster.yaml --workers 4

Inside a Ray job ``RAY_ADDRESS`` is set, so the run attaches to that cluster; run
directly, it attaches to ``ray.address`` or starts a local Ray on loopback. Always uses
Ray Train (also for ``--workers 1``); see :mod:`trainer.ray_launch`.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from clickgraph.core.config import ConfigError, load_config, replace
    from trainer.checkpoint import CheckpointError
    from trainer.ray_launch import train_distributed

    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (default: the embedded conf/local.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override one config value")
    parser.add_argument("--workers", type=int, metavar="N", help="one per partition")
    parser.add_argument("--graph", metavar="URL", help="graph store (default: paths.graph)")
    parser.add_argument("--out", metavar="URL", help="run folder (default: paths.train/<run>)")
    parser.add_argument("--continue", dest="continue_run", action="store_true",
                        help="continue from the latest checkpoint on the events after it")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.workers is not None:
            cfg = replace(cfg, "resources", workers=args.workers)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    try:
        train_distributed(cfg, args.graph, args.out, continue_run=args.continue_run)
    except (CheckpointError, ValueError) as error:
        print(f"python -m trainer: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
