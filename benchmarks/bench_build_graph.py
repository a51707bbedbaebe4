"""Benchmark of ``clickgraph build-graph``: events/s end to end on ``local[2]``.

For each size, generates logs (not timed; reused when present), then runs the job in a
fresh process exactly as a user would (``python -m clickgraph build-graph``) and reports:

* events/s over the job's own time (``build_seconds`` in the manifest: from the first
  read to the manifest commit) and over the process's wall time (adds JVM start);
* peak resident memory of the Spark JVM (driver and executor are one JVM in local mode)
  and of the Python driver process, sampled every 0.2 s;
* time(10M) / time(1M).

Usage::

    python benchmarks/bench_build_graph.py --sizes 1m 10m --workdir /tmp/cg-bench
    python benchmarks/bench_build_graph.py --sizes 1m --format parquet
    python benchmarks/bench_build_graph.py --sizes 1m 10m --peer   # + the parse-and-rewrite peer

The peer (``benchmarks/spark_floor.py``) parses the same input and rewrites it as parquet,
nothing else: the floor any Spark job on these cores sits on. The core peer
(``spark_floor.py --core``) also drops duplicates, numbers users and targets densely and
writes one edge table per event type: the work no build can skip, without checks,
quarantine, entity tables or stable-id bookkeeping. ``--peer`` runs both after the job.

Targets (issue 3): >= 150k events/s on 2 cores; time(10M) / time(1M) <= 12.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

# users over 21 days; the generator makes ~4.3 events per user-day (impressions, clicks,
# views, likes), with 60 % of users present from day 0
SIZES = {"1m": 11_100, "10m": 111_000, "100k": 1_110}
NUM_DAYS = 21


def _run(cmd: list[str], log: Path) -> tuple[int, float, int, int]:
    """Run ``cmd``; returns (exit code, wall seconds, peak JVM RSS, peak Python RSS)."""
    peaks: dict[int, tuple[str, int]] = {}  # pid -> (executable, peak RSS)
    with open(log, "w") as out:
        start = time.time()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            parent = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    for p in [parent, *parent.children(recursive=True)]:
                        exe = (p.cmdline() or [p.name()])[0]
                        peaks[p.pid] = (exe, max(peaks.get(p.pid, ("", 0))[1], p.memory_info().rss))
                except psutil.Error:
                    pass
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        wall = time.time() - start
        done.set()
        sampler.join()
    jvm = max((rss for exe, rss in peaks.values() if exe.endswith("java")), default=0)
    driver = peaks.get(proc.pid, ("", 0))[1]
    return code, wall, jvm, driver


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["1m", "10m"], choices=sorted(SIZES))
    parser.add_argument("--workdir", default="/tmp/cg-bench")
    parser.add_argument("--format", default="json", choices=["json", "parquet"],
                        help="event input the job reads (json: the raw log, with bad lines)")
    parser.add_argument("--bad-row-fraction", type=float, default=0.02)
    parser.add_argument("--driver-memory", default="8g")
    parser.add_argument("--peer", action="store_true",
                        help="also run benchmarks/spark_floor.py (parse and rewrite only) on "
                             "the same input, after each build")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    py = sys.executable
    results = []
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        root = Path(args.workdir) / size
        common = [f"--set=paths.root={root}", f"--set=paths.logs={root}/logs",
                  "--set=spark.master=local[2]", f"--set=spark.driver_memory={args.driver_memory}",
                  "--set=spark.shuffle_partitions=8"]
        if not (root / "logs" / "_MANIFEST.json").exists():
            gen = [py, "-m", "clickgraph", "generate", *common,
                   f"--set=generate.num_users={SIZES[size]}", f"--set=generate.num_days={NUM_DAYS}",
                   f"--bad-row-fraction={args.bad_row_fraction}"]
            print(f"[{size}] generating logs ...", flush=True)
            code, wall, _, _ = _run(gen, root.parent / f"{size}-generate.log")
            if code:
                print(f"generation failed, see {root.parent}/{size}-generate.log")
                return 1
        logs = json.loads((root / "logs" / "_MANIFEST.json").read_text())
        graph = root / f"graph-{args.format}"
        subprocess.run(["rm", "-rf", str(graph)], check=True)
        build = [py, "-m", "clickgraph", "build-graph", *common, f"--out={graph}",
                 f"--set=graph.input.events.format={args.format}"]
        print(f"[{size}] build-graph on {logs['events_total']:,} events ({args.format}) ...",
              flush=True)
        code, wall, jvm_peak, py_peak = _run(build, root.parent / f"{size}-build-{args.format}.log")
        if code:
            print(f"build-graph failed, see {root.parent}/{size}-build-{args.format}.log")
            return 1
        manifest = json.loads((graph / "_MANIFEST.json").read_text())
        rows = manifest["events"]["rows_read"]
        job = manifest["build_seconds"]
        results.append({
            "size": size, "format": args.format, "event_rows_read": rows,
            "events_total": logs["events_total"], "job_seconds": round(job, 1),
            "wall_seconds": round(wall, 1), "events_per_s_job": round(rows / job),
            "events_per_s_wall": round(rows / wall),
            "peak_jvm_rss_gib": round(jvm_peak / 2**30, 2),
            "peak_python_rss_gib": round(py_peak / 2**30, 2),
        })
        # peer: parse and rewrite; core_peer: + dedup, dense ids, edge tables
        for name, extra, what in (("peer", [], "parse and rewrite only"),
                                  ("core_peer", ["--core"], "dedup, ids and edge tables only")):
            if not args.peer:
                break
            floor_out = root / f"floor-{args.format}"
            events_dir = root / "logs" / "events" / args.format
            floor = [py, str(Path(__file__).with_name("spark_floor.py")), "--events", str(events_dir),
                     "--format", args.format, "--out", str(floor_out),
                     f"--driver-memory={args.driver_memory}", *extra]
            print(f"[{size}] {name}: {what} ...", flush=True)
            log = root.parent / f"{size}-floor{'-'.join(['', *extra])}-{args.format}.log"
            code, floor_wall, floor_jvm, _ = _run(floor, log)
            if code:
                print(f"{name} failed, see {log}")
                return 1
            peer = json.loads(log.read_text().strip().splitlines()[-1])
            subprocess.run(["rm", "-rf", str(floor_out)], check=True)
            results[-1].update({
                f"{name}_seconds": peer["seconds"], f"{name}_wall_seconds": round(floor_wall, 1),
                f"{name}_events_per_s": round(rows / peer["seconds"]),
                f"{name}_peak_jvm_rss_gib": round(floor_jvm / 2**30, 2),
                f"job_over_{name}": round(job / peer["seconds"], 2)})
        results[-1]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
        print(json.dumps(results[-1]), flush=True)
    by_size = {r["size"]: r for r in results}
    summary = {"machine": f"{platform.node()} {os.cpu_count()} cpus, "
                          f"{psutil.virtual_memory().total / 2**30:.0f} GiB, local[2]",
               "load_average_1m": os.getloadavg()[0], "results": results}
    if "1m" in by_size and "10m" in by_size:
        for kind in ("job", "wall"):
            ratio = by_size["10m"][f"{kind}_seconds"] / by_size["1m"][f"{kind}_seconds"]
            summary[f"ratio_10m_1m_{kind}"] = round(ratio, 2)
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
