"""``clickgraph export``: user and content embeddings as of a cutoff, with drift and controls."""

from __future__ import annotations

import argparse
import json
import sys

from clickgraph.core.config import Config

HELP = "export user and content embeddings as of a cutoff (with drift and recommendation controls)"
DESCRIPTION = """\
Embeds every user and content piece that exists before the cutoff with the trained model,
as of the cutoff (only edges strictly earlier than it are used), and writes
<paths.embeddings>/<cutoff date>/{user,content}.parquet (id, raw_id, cutoff_ts_ms,
embedding), recommendations.parquet and _MANIFEST.json (written last; a rerun replaces the
date's folder whole). The manifest reports drift against the previous export (mean cosine
similarity of the same node across versions, share of new nodes) and the recommendation
controls: catalogue coverage, intra-list diversity and the video share of the top-k lists
of evaluate.recommend_users sampled users against the catalogue's (docs/export.md).

--workers N (N > 1) embeds on N workers, one per part of the shard set: each embeds the
nodes its part owns and writes its own files (<type>.parquet/part-NNNNN.parquet); the
manifest, written last, names them all. No recommendation lists there (docs/export.md).

--cutoff takes YYYY-MM-DD (00:00 UTC) or an ISO-8601 timestamp; default: the end of the
graph's last day. The model is --checkpoint, else evaluate.checkpoint, else the latest
finished training run's (paths.train/latest_checkpoint.json).

examples:
  clickgraph export                          # as of the end of the graph's last day
  clickgraph export --cutoff 2026-03-20      # as of 2026-03-20 00:00 UTC, for that day's rankers
  clickgraph export --json | jq .drift
  clickgraph export --workers 2              # on the 2-part shard set
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cutoff", metavar="TIME",
                        help="YYYY-MM-DD (midnight UTC) or ISO-8601 timestamp "
                             "(default: end of the graph's last day)")
    parser.add_argument("--checkpoint", metavar="URL",
                        help="checkpoint folder (default: evaluate.checkpoint, else the latest run's)")
    parser.add_argument("--graph", metavar="URL", help="graph store (default: paths.graph)")
    parser.add_argument("--out", metavar="URL",
                        help="root of the export versions (default: paths.embeddings)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="embed on N workers, one per part of the shard set (default 1: "
                             "this process, whole store, with recommendation controls)")
    parser.add_argument("--json", action="store_true",
                        help="print the manifest as JSON on stdout (progress goes to stderr)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from clickgraph.app.tracking import tracked
    from trainer.export import run_export

    as_json = getattr(args, "json", False)
    log = (lambda line: print(line, file=sys.stderr)) if as_json else print
    workers = getattr(args, "workers", 1) or 1
    if workers > 1:
        from trainer.dist_inference import export_distributed

        manifest = tracked(cfg, "export", lambda: export_distributed(
            cfg, workers, cutoff=args.cutoff, checkpoint=args.checkpoint, graph_url=args.graph,
            out_url=args.out, log=log, progress_to_stderr=as_json), log, out_url=args.out)
    else:
        manifest = tracked(cfg, "export", lambda: run_export(
            cfg, cutoff=args.cutoff, checkpoint=args.checkpoint, graph_url=args.graph,
            out_url=args.out, log=log), log, out_url=args.out)
    if as_json:
        print(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return 0
