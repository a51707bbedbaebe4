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

Two workers against one is measured twice: with ``train.batch_scope=global`` (the
default: the 2 workers split the 1-worker run's batch, so each rank's steps are half as
large and the optimisation is the same) and with ``worker`` (each rank takes the whole
batch, DDP's usual weak scaling). Beside them, in the same run, the **no-exchange
ceiling**: independent single-rank trainings over the 1-part shard set, one alone and
then two at once with the per-rank batch of each 2-worker run (no sampling requests, no
feature or gradient exchange, no waiting). What two at once reach over one alone is what
this machine allows two workers before any distribution cost: read the 2-vs-1 ratios
against it.

``--hot-cache content=0.1,brand=1.0`` adds the two 2-worker runs again with the hot-node
cache (``trainer.dist_sampler.build_hot_cache``: every worker replicates the static
features of that fraction of each type's highest-degree nodes) and reports bytes per
event with the cache over without, per shard book, with the per-kind split. The same
seeds draw the same batches with and without the cache, so the bytes compare exactly;
``--no-single`` skips the 1-worker run when only bytes are wanted.

The runs are sequential in one process and read the machine's load average before and
after: on a shared machine compare figures within one run only.

Usage::

    python benchmarks/bench_train.py --json
    python benchmarks/bench_train.py --graph runs/local/graph --events 60000 --repeats 3
    python benchmarks/bench_train.py --graph /tmp/pipe2/graph --events 10000 --no-single \
        --hot-cache content=0.1,brand=1.0 --json
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

from clickgraph.core.config import load_config


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", default="runs/local/graph", help="graph store to train on")
    parser.add_argument("--events", type=int, default=60_000,
                        help="training impressions per epoch (train.max_train_events)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration (median)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", default=None,
                        help="also write the JSON result to this file (the workers' progress "
                             "lines share stdout)")
    parser.add_argument("--hot-cache", type=parse_fractions, default=None, metavar="TYPE=F,...",
                        help="also run the 2-worker configurations with this hot-node cache, "
                             "e.g. content=0.1,brand=1.0 (fractions of each type's nodes)")
    parser.add_argument("--no-single", action="store_true",
                        help="skip the 1-worker run (no speed-up ratio then)")
    return parser.parse_args(argv)


def parse_fractions(text: str) -> dict[str, float]:
    """``content=0.1,brand=1.0`` -> ``{"content": 0.1, "brand": 1.0}``."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        node_type, _, fraction = item.partition("=")
        try:
            out[node_type.strip()] = float(fraction)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected TYPE=FRACTION, got {item!r}") from None
    return out


def _config(work: str, graph: str, name: str, parts: int, workers: int, args, book: str = "metis",
            scope: str = "global"):
    return load_config(None, [
        f"paths.root={work}/{name}", f"paths.graph={os.path.abspath(graph)}",
        f"paths.partitions={work}/shards-{parts}-{book}",
        f"partition.num_parts={parts}", f"partition.shard_book={book}",
        f"resources.workers={workers}", "resources.threads_per_worker=1", f"train.epochs={args.epochs}",
        f"train.max_train_events={args.events}", "train.max_eval_events=2000",
        f"train.batch_scope={scope}", f"ray.num_cpus={max(2, workers)}"])


def _solo(cfg, batch_size: int, events: int, barrier) -> dict[str, float]:
    """One single-rank training over the 1-part shard set, in its own process group.

    Runs in a child process; ``barrier`` makes concurrent ones start training together.
    """
    import dataclasses

    from clickgraph.core.graph_store import open_graph_store
    from clickgraph.core.timeline import split_windows
    from trainer.dist_train import train_worker
    from trainer.distributed import find_free_port
    from trainer.ray_launch import content_created_times, owned_window_impressions
    from trainer.shard import load_shard

    t = dataclasses.replace(cfg.train, batch_size=batch_size, max_train_events=events)
    shard = load_shard(os.path.join(cfg.paths.stage("partitions"), "part-00000"), mmap=True)
    store = open_graph_store(cfg.paths.stage("graph"))
    windows = split_windows(store.days, t.val_days, t.test_days)
    impressions = owned_window_impressions(store, windows, "train", shard,
                                           cfg.graph.log_day_slack_s)
    content_created = content_created_times(store)
    barrier.wait()
    result = train_worker(0, 1, shard, t, impressions, content_created,
                          master_addr="127.0.0.1", master_port=find_free_port())
    return {"events": result.events_trained, "seconds": result.time_split["total"]}


def no_exchange_ceiling(cfg, processes: int, batch_size: int, events: int) -> float:
    """Events/s of ``processes`` independent single-rank trainings running at once.

    Nothing crosses between them: no sampling requests, no feature or gradient exchange,
    no waiting for another rank. Each trains ``events`` impressions in batches of
    ``batch_size`` on the whole graph. With ``processes=2`` and the 1-worker run's
    per-rank work split in two, this is what two workers on this machine could reach if
    distribution cost nothing: the ceiling to read the 2-vs-1 ratio against.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(processes)
    with ProcessPoolExecutor(processes, mp_context=ctx) as pool:
        runs = list(pool.map(_solo, [cfg] * processes, [batch_size] * processes,
                             [events] * processes, [barrier] * processes))
    return sum(r["events"] for r in runs) / max(r["seconds"] for r in runs)


def main(argv: Sequence[str] | None = None) -> int:
    import ray

    from spark_jobs import partition
    from spark_jobs.session import get_spark
    from trainer.ray_launch import train_distributed

    args = parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix="bench-train-")
    # name -> (parts, workers, shard book, hot cache, train.batch_scope)
    runs = {"1 worker (1 part)": (1, 1, "metis", None, "global"),
            "2 workers, METIS shards": (2, 2, "metis", None, "global"),
            "2 workers, random shards": (2, 2, "random", None, "global"),
            "2 workers, METIS shards, batch per worker": (2, 2, "metis", None, "worker")}
    if args.no_single:
        del runs["1 worker (1 part)"]
        del runs["2 workers, METIS shards, batch per worker"]
    if args.hot_cache:
        runs["2 workers, METIS shards, hot cache"] = (2, 2, "metis", args.hot_cache, "global")
        runs["2 workers, random shards, hot cache"] = (2, 2, "random", args.hot_cache, "global")
    load_before = os.getloadavg()
    spark = get_spark(_config(work, args.graph, "spark", 1, 1, args).spark, "bench-train")
    try:
        for name, (parts, workers, book, _, _) in runs.items():
            cfg = _config(work, args.graph, name.split(",")[0].replace(" ", "_"), parts, workers, args, book)
            if not os.path.exists(os.path.join(cfg.paths.stage("partitions"), "_MANIFEST.json")):
                partition.run(spark, cfg, log=lambda *_: None)
    finally:
        spark.stop()

    results: dict[str, Any] = {}
    for name, (parts, workers, book, hot_cache, scope) in runs.items():
        samples = []
        for repeat in range(args.repeats):
            tag = ("-cache" if hot_cache else "") + ("-per-worker" if scope == "worker" else "")
            cfg = _config(work, args.graph, f"run-{parts}-{workers}-{book}{tag}-{repeat}", parts,
                          workers, args, book, scope)
            try:
                metrics = train_distributed(cfg, log=lambda *_: None, hot_cache=hot_cache or {})
            finally:
                ray.shutdown()
            # Rank 0's bytes sent per kind per event it trained (lockstep: every rank
            # trains the same number of events, padding included).
            rank0_events = max(metrics["events_trained"] / workers, 1)
            samples.append({"events_per_s": metrics["events_per_s"],
                            "bytes_exchanged_per_event": metrics["bytes_exchanged_per_event"],
                            "rank0_sent_per_event_by_kind": {
                                kind: round(sent / rank0_events, 1)
                                for kind, sent in metrics["bytes"]["sent"].items()},
                            "events_trained": metrics["events_trained"],
                            "hot_cache_nodes": metrics.get("hot_cache_nodes", {}),
                            "hot_cache_build_sent_rank0": metrics["bytes"].get("hot_cache_build_sent", 0),
                            "train_seconds": metrics["train_seconds"],
                            "time_split": metrics["time_split"], "val_auc": metrics["val_auc"]})
            print(f"{name} (run {repeat + 1}/{args.repeats}): {metrics['events_per_s']:,.0f} events/s, "
                  f"{metrics['bytes_exchanged_per_event']:,.0f} B/event", file=sys.stderr)
        results[name] = {
            "events_per_s": statistics.median(s["events_per_s"] for s in samples),
            "bytes_exchanged_per_event": statistics.median(s["bytes_exchanged_per_event"] for s in samples),
            "runs": samples}
    metis, rand = results["2 workers, METIS shards"], results["2 workers, random shards"]
    one = results.get("1 worker (1 part)")
    ceiling = {}
    if one:
        # The same training without any distribution cost, in the same run: one process,
        # then two at once with the 2-worker runs' per-rank batch (half of it with a global
        # batch, all of it per worker) and half the events each.
        cfg = _config(work, args.graph, "ceiling", 1, 1, args)
        batch, half = cfg.train.batch_size, args.events // 2
        repeats = range(args.repeats)
        runs_of = {"solo": [no_exchange_ceiling(cfg, 1, batch, args.events) for _ in repeats],
                   "half_batch": [no_exchange_ceiling(cfg, 2, -(-batch // 2), half)
                                  for _ in repeats],
                   "full_batch": [no_exchange_ceiling(cfg, 2, batch, half) for _ in repeats]}
        solo = statistics.median(runs_of["solo"])
        ceiling = {
            "solo_events_per_s": solo,
            "two_at_once_half_batch_over_solo": statistics.median(runs_of["half_batch"]) / solo,
            "two_at_once_full_batch_over_solo": statistics.median(runs_of["full_batch"]) / solo,
            "events_per_s_runs": runs_of}
        print(f"no-exchange ceiling: {ceiling}", file=sys.stderr)
    per_worker = results.get("2 workers, METIS shards, batch per worker")
    summary = {
        "speedup_2_vs_1_workers": (metis["events_per_s"] / one["events_per_s"]) if one else None,
        "speedup_2_vs_1_workers_batch_per_worker": (
            per_worker["events_per_s"] / one["events_per_s"]) if one and per_worker else None,
        "no_exchange_ceiling": ceiling,
        "bytes_per_event_metis_over_random": (metis["bytes_exchanged_per_event"]
                                              / max(rand["bytes_exchanged_per_event"], 1e-9)),
        "hot_cache": args.hot_cache,
        "results": results, "graph": args.graph, "events_per_epoch": args.events,
        "epochs": args.epochs, "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_before": load_before, "load_after": os.getloadavg()},
    }
    if args.hot_cache:
        for book in ("METIS", "random"):
            plain = results[f"2 workers, {book} shards"]["bytes_exchanged_per_event"]
            cached = results[f"2 workers, {book} shards, hot cache"]["bytes_exchanged_per_event"]
            summary[f"bytes_per_event_cache_over_none_{book.lower()}"] = cached / max(plain, 1e-9)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for name, r in results.items():
            print(f"{name:<28} {r['events_per_s']:>10,.0f} events/s  "
                  f"{r['bytes_exchanged_per_event']:>10,.0f} bytes/event")
        if one:
            print(f"2 vs 1 worker: {summary['speedup_2_vs_1_workers']:.2f}x events/s "
                  f"(no-exchange ceiling {ceiling['two_at_once_half_batch_over_solo']:.2f}x); "
                  f"batch per worker {summary['speedup_2_vs_1_workers_batch_per_worker']:.2f}x "
                  f"(ceiling {ceiling['two_at_once_full_batch_over_solo']:.2f}x)")
        print(f"METIS / random bytes per event: {summary['bytes_per_event_metis_over_random']:.2f}")
        for book in ("metis", "random"):
            ratio = summary.get(f"bytes_per_event_cache_over_none_{book}")
            if ratio is not None:
                print(f"{book}: bytes per event with / without the hot cache: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
