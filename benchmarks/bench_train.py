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

The pipelined loop (``resources.prefetch_depth``, ``trainer/prefetch.py``): for each depth
of ``--prefetch-depths`` (default 2) the 2-worker METIS run again with prefetching, and one
worker with 2 threads without and with it (the prefetch thread takes one of them). Every
run reports rank 0's **time split** side by side, in seconds: ``sample`` (examples and
neighbour sampling, its all-to-alls included), ``exchange`` (features and activity
counts), ``compute``, ``allreduce``, ``idle`` (the compute waiting for a prefetched batch)
and ``total``; the no-exchange ceiling's processes report theirs too. With prefetching,
``sample`` and ``exchange`` run on the prefetch thread, overlapped with ``compute``, so
the phases add up to more than ``total``. Each run's events/s is also given as a fraction
of the ceiling's two processes at once with the same per-rank batch (the issue's "≥ 0.85×
the no-exchange ceiling").

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
    python benchmarks/bench_train.py --events 20000 --prefetch-depths 1,2,4 --out split.json
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
from dataclasses import dataclass
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
                        help="skip the 1-worker runs (no speed-up ratio then)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="config override for every run, e.g. train.val_days=1 (repeatable)")
    parser.add_argument("--prefetch-depths", type=parse_depths, default=[2], metavar="N,...",
                        help="resources.prefetch_depth of the pipelined runs (default 2; "
                             "0: no pipelined runs)")
    return parser.parse_args(argv)


def parse_depths(text: str) -> list[int]:
    """``1,2,4`` -> ``[1, 2, 4]``; zeros are dropped (0 is the plain loop, run anyway)."""
    try:
        depths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected depths like 1,2,4, got {text!r}") from None
    if any(depth < 0 for depth in depths):
        raise argparse.ArgumentTypeError(f"prefetch depths must be >= 0, got {text!r}")
    return [depth for depth in depths if depth > 0]


@dataclass(frozen=True)
class Run:
    """One training configuration of the benchmark."""

    parts: int
    workers: int
    book: str = "metis"
    hot_cache: dict[str, float] | None = None
    scope: str = "global"
    threads: int = 1
    prefetch_depth: int = 0

    def tag(self) -> str:
        return (f"{self.parts}-{self.workers}-{self.book}"
                + ("-cache" if self.hot_cache else "")
                + ("-per-worker" if self.scope == "worker" else "")
                + (f"-t{self.threads}" if self.threads != 1 else "")
                + (f"-prefetch{self.prefetch_depth}" if self.prefetch_depth else ""))


def loop_split(time_split: dict[str, float]) -> dict[str, float]:
    """A rank's ``time_split`` (``trainer/dist_train.py``) in the benchmark's phases."""
    def get(name: str) -> float:
        return float(time_split.get(name, 0.0))

    return {"sample": round(get("examples") + get("sampling"), 3),
            "exchange": round(get("feature_exchange"), 3), "compute": round(get("compute"), 3),
            "allreduce": round(get("allreduce"), 3), "idle": round(get("idle"), 3),
            "total": round(get("total"), 3)}


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
            scope: str = "global", threads: int = 1, prefetch_depth: int = 0):
    return load_config(None, [
        f"paths.root={work}/{name}", f"paths.graph={os.path.abspath(graph)}",
        f"paths.partitions={work}/shards-{parts}-{book}",
        f"partition.num_parts={parts}", f"partition.shard_book={book}",
        f"resources.workers={workers}", f"resources.threads_per_worker={threads}",
        f"resources.prefetch_depth={prefetch_depth}", f"train.epochs={args.epochs}",
        f"train.max_train_events={args.events}", "train.max_eval_events=2000",
        f"train.batch_scope={scope}", f"ray.num_cpus={max(2, workers * threads)}",
        *args.overrides])


def _solo(cfg, batch_size: int, events: int, barrier) -> dict[str, Any]:
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
    return {"events": result.events_trained, "seconds": result.time_split["total"],
            "time_split": loop_split(result.time_split)}


def no_exchange_ceiling(cfg, processes: int, batch_size: int, events: int
                        ) -> tuple[float, dict[str, float]]:
    """Events/s of ``processes`` independent single-rank trainings running at once, and
    the first one's time split (:func:`loop_split`).

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
    return sum(r["events"] for r in runs) / max(r["seconds"] for r in runs), runs[0]["time_split"]


def main(argv: Sequence[str] | None = None) -> int:
    import ray

    from spark_jobs import partition
    from spark_jobs.session import get_spark
    from trainer.ray_launch import train_distributed

    args = parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix="bench-train-")
    runs = {"1 worker (1 part)": Run(1, 1),
            "2 workers, METIS shards": Run(2, 2),
            "2 workers, random shards": Run(2, 2, "random"),
            "2 workers, METIS shards, batch per worker": Run(2, 2, scope="worker")}
    for depth in args.prefetch_depths:
        runs[f"2 workers, METIS shards, pipelined (depth {depth})"] = Run(2, 2, prefetch_depth=depth)
    if args.prefetch_depths:
        runs["1 worker, 2 threads"] = Run(1, 1, threads=2)
    for depth in args.prefetch_depths:
        runs[f"1 worker, 2 threads, pipelined (depth {depth})"] = Run(1, 1, threads=2,
                                                                       prefetch_depth=depth)
    if args.no_single:
        runs = {name: run for name, run in runs.items()
                if run.workers > 1 and run.scope == "global"}
    if args.hot_cache:
        runs["2 workers, METIS shards, hot cache"] = Run(2, 2, "metis", args.hot_cache)
        runs["2 workers, random shards, hot cache"] = Run(2, 2, "random", args.hot_cache)
    load_before = os.getloadavg()
    spark = get_spark(_config(work, args.graph, "spark", 1, 1, args).spark, "bench-train")
    try:
        for name, run in runs.items():
            cfg = _config(work, args.graph, name.split(",")[0].replace(" ", "_"), run.parts,
                          run.workers, args, run.book)
            if not os.path.exists(os.path.join(cfg.paths.stage("partitions"), "_MANIFEST.json")):
                partition.run(spark, cfg, log=lambda *_: None)
    finally:
        spark.stop()

    results: dict[str, Any] = {}
    for name, run in runs.items():
        samples = []
        for repeat in range(args.repeats):
            cfg = _config(work, args.graph, f"run-{run.tag()}-{repeat}", run.parts, run.workers,
                          args, run.book, run.scope, run.threads, run.prefetch_depth)
            try:
                metrics = train_distributed(cfg, log=lambda *_: None,
                                            hot_cache=run.hot_cache or {})
            finally:
                ray.shutdown()
            # Rank 0's bytes sent per kind per event it trained (lockstep: every rank
            # trains the same number of events, padding included).
            rank0_events = max(metrics["events_trained"] / run.workers, 1)
            samples.append({"events_per_s": metrics["events_per_s"],
                            "bytes_exchanged_per_event": metrics["bytes_exchanged_per_event"],
                            "rank0_sent_per_event_by_kind": {
                                kind: round(sent / rank0_events, 1)
                                for kind, sent in metrics["bytes"]["sent"].items()},
                            "events_trained": metrics["events_trained"],
                            "hot_cache_nodes": metrics.get("hot_cache_nodes", {}),
                            "hot_cache_build_sent_rank0": metrics["bytes"].get("hot_cache_build_sent", 0),
                            "train_seconds": metrics["train_seconds"],
                            "time_split": metrics["time_split"],
                            "loop_split": loop_split(metrics["time_split"]),
                            "val_auc": metrics["val_auc"]})
            print(f"{name} (run {repeat + 1}/{args.repeats}): {metrics['events_per_s']:,.0f} events/s, "
                  f"{metrics['bytes_exchanged_per_event']:,.0f} B/event", file=sys.stderr)
        middle = sorted(samples, key=lambda sample: sample["events_per_s"])[len(samples) // 2]
        results[name] = {
            "events_per_s": statistics.median(s["events_per_s"] for s in samples),
            "bytes_exchanged_per_event": statistics.median(s["bytes_exchanged_per_event"] for s in samples),
            "threads_per_worker": run.threads, "prefetch_depth": run.prefetch_depth,
            "per_rank_batch": "half" if run.workers > 1 and run.scope == "global" else "full",
            "loop_split": middle["loop_split"],  # of the median run (by events/s)
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
        rates = {kind: [rate for rate, _ in measured] for kind, measured in runs_of.items()}
        medians = {kind: statistics.median(values) for kind, values in rates.items()}
        solo = medians["solo"]
        ceiling = {
            "solo_events_per_s": solo,
            "two_at_once_half_batch_events_per_s": medians["half_batch"],
            "two_at_once_full_batch_events_per_s": medians["full_batch"],
            "two_at_once_half_batch_over_solo": medians["half_batch"] / solo,
            "two_at_once_full_batch_over_solo": medians["full_batch"] / solo,
            "loop_split": {kind: sorted(measured, key=lambda m: m[0])[len(measured) // 2][1]
                           for kind, measured in runs_of.items()},
            "events_per_s_runs": rates}
        print(f"no-exchange ceiling: {ceiling}", file=sys.stderr)
        for name, result in results.items():
            if name.startswith("2 workers"):
                peer = ceiling["two_at_once_" + result["per_rank_batch"] + "_batch_events_per_s"]
                result["fraction_of_no_exchange_ceiling"] = result["events_per_s"] / peer
    pipelined = {}
    plain_two = results.get("1 worker, 2 threads")
    for depth in args.prefetch_depths:
        two = results.get(f"2 workers, METIS shards, pipelined (depth {depth})")
        solo_pipelined = results.get(f"1 worker, 2 threads, pipelined (depth {depth})")
        pipelined[depth] = {
            "speedup_2_vs_1_workers": two["events_per_s"] / one["events_per_s"]
            if one and two else None,
            "two_workers_over_plain_two_workers": two["events_per_s"] / metis["events_per_s"]
            if two else None,
            "one_worker_2_threads_over_1_thread_plain": (
                solo_pipelined["events_per_s"] / one["events_per_s"])
            if one and solo_pipelined else None,
            "one_worker_2_threads_over_2_threads_plain": (
                solo_pipelined["events_per_s"] / plain_two["events_per_s"])
            if plain_two and solo_pipelined else None}
    per_worker = results.get("2 workers, METIS shards, batch per worker")
    summary = {
        "speedup_2_vs_1_workers": (metis["events_per_s"] / one["events_per_s"]) if one else None,
        "speedup_2_vs_1_workers_batch_per_worker": (
            per_worker["events_per_s"] / one["events_per_s"]) if one and per_worker else None,
        "no_exchange_ceiling": ceiling,
        "pipelined": pipelined,
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
        phases = ("sample", "exchange", "compute", "allreduce", "idle", "total")
        print(f"{'run':<46} {'events/s':>9} {'bytes/event':>11} {'of ceiling':>10}  "
              + " ".join(f"{phase:>9}" for phase in phases) + "  (rank 0, s)")
        rows = [(name, r["events_per_s"], r["bytes_exchanged_per_event"],
                 r.get("fraction_of_no_exchange_ceiling"), r["loop_split"])
                for name, r in results.items()]
        if ceiling:
            rows += [(f"ceiling: {kind.replace('_', ' ')}", rate, 0.0, None,
                      ceiling["loop_split"][kind])
                     for kind, rate in (("solo", ceiling["solo_events_per_s"]),
                                        ("half_batch", ceiling["two_at_once_half_batch_events_per_s"]),
                                        ("full_batch", ceiling["two_at_once_full_batch_events_per_s"]))]
        for name, rate, sent, fraction, split in rows:
            share = f"{fraction:.2f}" if fraction is not None else ""
            print(f"{name:<46} {rate:>9,.0f} {sent:>11,.0f} {share:>10}  "
                  + " ".join(f"{split[phase]:>9.2f}" for phase in phases))
        if one:
            print(f"2 vs 1 worker: {summary['speedup_2_vs_1_workers']:.2f}x events/s "
                  f"(no-exchange ceiling {ceiling['two_at_once_half_batch_over_solo']:.2f}x); "
                  f"batch per worker {summary['speedup_2_vs_1_workers_batch_per_worker']:.2f}x "
                  f"(ceiling {ceiling['two_at_once_full_batch_over_solo']:.2f}x)")
        for depth, ratios in pipelined.items():
            print(f"pipelined, depth {depth}: " + ", ".join(
                f"{key.replace('_', ' ')} {value:.2f}x" for key, value in ratios.items()
                if value is not None))
        print(f"METIS / random bytes per event: {summary['bytes_per_event_metis_over_random']:.2f}")
        for book in ("metis", "random"):
            ratio = summary.get(f"bytes_per_event_cache_over_none_{book}")
            if ratio is not None:
                print(f"{book}: bytes per event with / without the hot cache: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
