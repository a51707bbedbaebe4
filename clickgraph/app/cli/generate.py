"""``clickgraph generate``: synthetic homepage logs (a Spark job)."""

from __future__ import annotations

import argparse

from clickgraph.core.config import Config, replace

HELP = "generate synthetic homepage logs (users, content, impressions, clicks, ...)"
DESCRIPTION = """\
Writes homepage logs that look like a large fashion platform's: entity tables (users,
content, articles, brands, categories) and events (impressions, clicks, views, brand
likes) over generate.num_days days, as JSON lines and/or parquet, with a _MANIFEST.json
written last. Deterministic for generate.seed. The schema is docs/log-schema.md.

examples:
  clickgraph generate
  clickgraph generate --bad-row-fraction 0.02
  clickgraph generate --set generate.num_users=1000000 --set generate.num_days=90
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bad-row-fraction", type=float, metavar="F",
                        help="share of JSON event lines that are realistic bad records "
                             "(same as --set generate.bad_row_fraction=F)")
    parser.add_argument("--out", metavar="URL", help="output folder (default: paths.logs)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from spark_jobs.generate_logs import run as generate
    from spark_jobs.session import get_spark

    if args.bad_row_fraction is not None:
        cfg = replace(cfg, "generate", bad_row_fraction=args.bad_row_fraction)
    spark = get_spark(cfg.spark, "generate")
    manifest = generate(spark, cfg, args.out)
    out = args.out or cfg.paths.stage("logs")
    print(f"logs written to {out} (manifest: {out}/_MANIFEST.json, "
          f"{manifest['events_total']:,} events)")
    return 0
