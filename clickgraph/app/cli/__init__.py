"""The ``clickgraph`` command: one module per subcommand.

Each subcommand module defines ``HELP`` (one line), ``DESCRIPTION``, ``add_arguments(parser)``
and ``run(args, cfg) -> int``. Heavy imports (pyspark, torch, ray) happen inside ``run`` so
``clickgraph --help`` is instant. Every subcommand takes ``--config FILE`` (default: the
embedded ``conf/local.yaml``) and repeatable ``--set section.key=value`` overrides.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from clickgraph import __version__
from clickgraph.core.config import ConfigError, load_config
from clickgraph.core.errors import ClickgraphError

# subcommand name -> module under clickgraph.app.cli
SUBCOMMANDS = {
    "generate": "generate",
    "build-graph": "build_graph",
    "partition": "partition",
    "train": "train",
    "evaluate": "evaluate",
    "export": "export",
    "pipeline": "pipeline",
    "bench": "bench",
}

EPILOG = """\
typical first run (everything under ./runs/local/):
  clickgraph generate                      # synthetic homepage logs -> runs/local/logs
  clickgraph generate --set generate.num_users=2000 --set generate.num_days=7
  clickgraph pipeline --fresh              # every stage, one more day, report in runs/local/report

every subcommand accepts --config FILE and --set section.key=value;
see conf/local.yaml for every key and its default.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clickgraph",
        description="Train a temporal graph neural network on a platform's interaction logs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"clickgraph {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"clickgraph.app.cli.{module_name}")
        sp = sub.add_parser(
            name, help=module.HELP, description=module.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.add_argument("--config", metavar="FILE",
                        help="YAML config (default: the embedded conf/local.yaml)")
        sp.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override one config value, e.g. --set generate.num_days=7")
        module.add_arguments(sp)
        sp.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
        return int(args._module.run(args, cfg) or 0)
    except ConfigError as err:
        print(f"clickgraph {args.command}: configuration error: {err}", file=sys.stderr)
        return 2
    except ClickgraphError as err:  # what the user can fix; anything else is a bug
        print(f"clickgraph {args.command}: {err}", file=sys.stderr)
        return 2
