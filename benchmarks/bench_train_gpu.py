"""The distributed trainer's step on a GPU (NCCL) against the CPU (gloo), one rank.

One rank over one part of a graph store (every node owned, as ``--workers 1`` on a
cluster): the same training impressions, seeds and settings, trained through
:func:`trainer.dist_train.train_worker` twice, on the CPU under gloo with
``--cpu-threads`` threads, then on ``cuda:0`` under NCCL (model and each sampled batch on
the GPU, sampler and shard on the CPU, as the launcher places them). Reports per run:
training impressions per second, the time split (sampling, feature exchange, compute,
all-reduce) and the first step's loss, which must agree between the two devices (same
parameters, same batch; dropout is switched off for that comparison).

No Ray and no Spark: it reads the graph store with pyarrow, so it runs on a machine with
only torch, pyarrow and fsspec (a GPU box). Without CUDA it runs the CPU half only.

Usage::

    python benchmarks/bench_train_gpu.py --graph runs/local/graph --events 20000 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clickgraph.core.config import load_config  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", default="runs/local/graph", help="graph store to train on")
    parser.add_argument("--config", default=None, help="config file (default conf/local.yaml)")
    parser.add_argument("--events", type=int, default=20_000,
                        help="training impressions (train.max_train_events)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="impressions per step (default train.batch_size)")
    parser.add_argument("--cpu-threads", type=int, default=1,
                        help="torch threads of the CPU run (the GPU run's CPU side too)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser.parse_args(argv)


def run(backend: str, device: str, shard, cfg, impressions, content_created,
        threads: int = 1) -> dict:
    from trainer.dist_train import train_worker
    from trainer.distributed import find_free_port

    started = time.perf_counter()
    result = train_worker(0, 1, shard, cfg, impressions, content_created,
                          master_addr="127.0.0.1", master_port=find_free_port(),
                          backend=backend, device=device, threads=threads)
    wall = time.perf_counter() - started
    split = result.time_split
    return {"device": result.device, "backend": result.backend,
            "events": result.events_trained, "steps": len(result.losses),
            "events_per_s": result.events_trained / split["total"],
            "train_seconds": split["total"], "wall_seconds": wall,
            "time_split": {k: round(v, 3) for k, v in split.items()},
            "first_loss": result.losses[0], "last_loss": result.losses[-1]}


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    from clickgraph.core.timeline import split_windows
    from trainer.data import load_graph_data, window_events
    from trainer.dist_train import owned_impressions
    from trainer.shard import split_graph

    cfg = load_config(args.config)
    t = dataclasses.replace(cfg.train, max_train_events=args.events, epochs=1,
                            batch_size=args.batch_size or cfg.train.batch_size,
                            model=dataclasses.replace(cfg.train.model, dropout=0.0))
    started = time.perf_counter()
    from clickgraph.core.graph_store import open_graph_store

    windows = split_windows(open_graph_store(args.graph).days, t.val_days, t.test_days)
    data = load_graph_data(args.graph, fit_before=windows.val_start)
    book = {n: torch.zeros(count, dtype=torch.int32) for n, count in data.graph.num_nodes.items()}
    shard = split_graph(data.graph, data.features, book, num_parts=1)[0]
    impressions = data.impressions.take(window_events(data.impressions, windows, "train"))
    impressions = owned_impressions(impressions, shard)
    load_seconds = time.perf_counter() - started

    runs = {"cpu": run("gloo", "cpu", shard, t, impressions, data.content_created, args.cpu_threads)}
    if torch.cuda.is_available():
        runs["cuda"] = run("nccl", "cuda:0", shard, t, impressions, data.content_created,
                           args.cpu_threads)
    out = {"graph": args.graph, "events": args.events, "batch_size": t.batch_size,
           "cpu_threads": args.cpu_threads, "load_seconds": round(load_seconds, 2),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "torch": torch.__version__,
                       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                       else None},
           "runs": runs}
    if "cuda" in runs:
        out["cuda_over_cpu"] = runs["cuda"]["events_per_s"] / runs["cpu"]["events_per_s"]
        out["first_loss_abs_diff"] = abs(runs["cuda"]["first_loss"] - runs["cpu"]["first_loss"])
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name, r in runs.items():
            print(f"{name:5s} {r['backend']:5s} {r['events_per_s']:9,.0f} events/s  "
                  f"split {r['time_split']}  first loss {r['first_loss']:.6f}")
        if "cuda" in runs:
            print(f"cuda / cpu: {out['cuda_over_cpu']:.2f}x")
    return out


if __name__ == "__main__":
    main()
