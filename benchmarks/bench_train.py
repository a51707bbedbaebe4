"""Distributed training: two workers against one, and METIS shards against random ones.

On one graph store (default ``runs/local/graph``, the default dataset) this cuts three
shard sets with the partition job (1 part; 2 parts by METIS; 2 parts by the random hash
book, ``partition.shard_book=random``) and trains on each with Ray Train
(``trainer.ray_launch.train_distributed``), one thread per worker, the same training
settings, and reports per run:

* ``events_per_s``: training impressions per second of training time (sampling, feature
  exchange, compute and all-reduce; the per-epoch validation on rank 0 is excluded, as in
  ``metrics.json``);
* ``bytes_exchanged_per_event``: bytes that crossed partitions per training impression
  (sampling requests/responses, feature fetches, activity counts; gradients excluded).

Then the ratios the issue asks for: events/s of 2 workers over 1 worker (target >= 1.6 on
2 cores) and bytes per event of METIS shards over random ones (target <= 0.6).

The runs are sequential in one process and read the machine's load average before and
after: on a shared machine compare figures within one run only.

Usage::

    python benchmarks/bench_train.py --json
    python benchmarks/bench_train.py --graph runs/local/graph --events 60000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from clickgraph.config import load_config


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", default="runs/local/graph", help="graph store to train on")
    parser.add_argument("--events", type=int, default=60_000,
                        help="training impressions per epoch (train.max_train_events)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration (median)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser.parse_args(argv)


def _config(work: str, graph: str, name: str, parts: int, workers: int, args, book: str = "metis"):
    return load_config(None, [
        f"paths.root={work}/{name}", f"paths.graph={os.path.abspath(graph)}",
        f"paths.partitions={work}/shards-{parts}-{book}",
        f"partition.num_parts={parts}", f"partition.shard_book={book}",
        f"train.workers={workers}", "train.threads_per_worker=1", f"train.epochs={args.epochs}",
        f"train.max_train_events={args.events}", "train.max_eval_events=2000",
        f"ray.num_cpus={max(2, workers)}"])


def main(argv: Sequence[str] | None = None) -> int:
    import ray

    from spark_jobs import partition
    from spark_jobs.session import get_spark
    from trainer.ray_launch import train_distributed

    args = parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix="bench-train-")
    runs = {"1 worker (1 part)": (1, 1, "metis"), "2 workers, METIS shards": (2, 2, "metis"),
            "2 workers, random shards": (2, 2, "random")}
    load_before = os.getloadavg()
    spark = get_spark(_config(work, args.graph, "spark", 1, 1, args).spark, "bench-train")
    try:
        for name, (parts, workers, book) in runs.items():
            cfg = _config(work, args.graph, name.split(",")[0].replace(" ", "_"), parts, workers, args, book)
            if not os.path.exists(os.path.join(cfg.paths.stage("partitions"), "_MANIFEST.json")):
                partition.run(spark, cfg, log=lambda *_: None)
    finally:
        spark.stop()

    results: dict[str, Any] = {}
    for name, (parts, workers, book) in runs.items():
        samples = []
        for repeat in range(args.repeats):
            cfg = _config(work, args.graph, f"run-{parts}-{workers}-{book}-{repeat}", parts, workers,
                          args, book)
            try:
                metrics = train_distributed(cfg, log=lambda *_: None)
            finally:
                ray.shutdown()
            samples.append({"events_per_s": metrics["events_per_s"],
                            "bytes_exchanged_per_event": metrics["bytes_exchanged_per_event"],
                            "train_seconds": metrics["train_seconds"],
                            "time_split": metrics["time_split"], "val_auc": metrics["val_auc"]})
            print(f"{name} (run {repeat + 1}/{args.repeats}): {metrics['events_per_s']:,.0f} events/s, "
                  f"{metrics['bytes_exchanged_per_event']:,.0f} B/event", file=sys.stderr)
        results[name] = {
            "events_per_s": statistics.median(s["events_per_s"] for s in samples),
            "bytes_exchanged_per_event": statistics.median(s["bytes_exchanged_per_event"] for s in samples),
            "runs": samples}
    one, metis, rand = (results[name] for name in runs)
    summary = {
        "speedup_2_vs_1_workers": metis["events_per_s"] / one["events_per_s"],
        "bytes_per_event_metis_over_random": (metis["bytes_exchanged_per_event"]
                                              / max(rand["bytes_exchanged_per_event"], 1e-9)),
        "results": results, "graph": args.graph, "events_per_epoch": args.events,
        "epochs": args.epochs, "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_before": load_before, "load_after": os.getloadavg()},
    }
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for name, r in results.items():
            print(f"{name:<28} {r['events_per_s']:>10,.0f} events/s  "
                  f"{r['bytes_exchanged_per_event']:>10,.0f} bytes/event")
        print(f"2 vs 1 worker: {summary['speedup_2_vs_1_workers']:.2f}x events/s; "
              f"METIS / random bytes per event: {summary['bytes_per_event_metis_over_random']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
