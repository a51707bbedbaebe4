"""A measured cost model: every stage at growing sizes, its time, memory and bytes (issue 17).

For each size factor ``s`` (default 1, 4 and 16) this generates ``s`` times the default
data's users (events follow: the generator draws impressions per user and day) and runs the
stages one command each, as a daily schedule would (``clickgraph generate``,
``build-graph``, ``partition --num-parts W``, ``train --workers W``, ``evaluate --workers
W``, ``export --workers W``), each in its own process tree. Per stage it records

* ``seconds``: wall time of the command (and the load average when it ended: the machine
  may be shared, so read times beside it);
* ``peak_rss_mb``: the highest resident memory of the command's whole tree, and per kind of
  process (``driver``: the command itself; ``spark_jvm``: the local Spark driver with its
  executors; ``ray_train_worker``: each training, evaluation or export worker;
  ``ray_actor``: Ray Train's controller and idle workers; ``ray_system``: Ray's own
  servers) the largest single process's peak (:class:`clickgraph.app.pipeline.PeakMemory`,
  sampled every 0.5 s, :func:`clickgraph.app.pipeline.process_role`);
* ``bytes_written``: the size of the stage's output folder afterwards;
* the stage's own figures where it reports them (events, edges, nodes, events/s trained,
  each worker's ``peak_rss_bytes``).

The catalogue (content, articles, brands) stays at the default size: a platform's users and
events grow much faster than its catalogue, and the recommendation controls score every
sampled user against the whole catalogue, a cost that scales with the catalogue and not
with the history (measured once, at the default size). Training draws a fixed number of
impressions (``--train-events``) at every size, so its time is a cost per trained event
plus the time to open the store; what grows with the store is its memory.

Then it fits, per stage, ``seconds = a + b * events`` and the same for the largest
process's peak and the bytes written, and the growth exponent between the two largest sizes
(``log(y2 / y1) / log(e2 / e1)``; 1 is linear). A stage that fails (out of memory, say)
is recorded with its exit code and the tail of its log, and that size's later stages are
skipped.

Usage::

    .venv/bin/python benchmarks/scale.py --workdir /tmp/scale --sizes 1 4 16 \\
        --out docs/experiments/scale.json
    .venv/bin/python benchmarks/scale.py --summarize docs/experiments/scale.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("generate", "build-graph", "partition", "train", "evaluate", "export")
# each stage's output folder under paths.root
OUTPUT = {"generate": "logs", "build-graph": "graph", "partition": "partitions",
          "train": "train", "evaluate": "eval", "export": "embeddings"}


def stage_command(stage: str, workers: int) -> list[str]:
    """The ``clickgraph`` arguments of one stage (before ``--set``)."""
    return {"generate": ["generate"], "build-graph": ["build-graph"],
            "partition": ["partition", "--num-parts", str(workers)],
            "train": ["train", "--workers", str(workers)],
            "evaluate": ["evaluate", "--workers", str(workers), "--json"],
            "export": ["export", "--workers", str(workers), "--json"]}[stage]


def run_argv(arguments: list[str]) -> list[str]:
    """The command line of ``clickgraph <arguments>`` in this Python."""
    return [sys.executable, "-m", "clickgraph", *arguments]


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def run_stage(stage: str, root: Path, overrides: list[str], workers: int) -> dict[str, Any]:
    """Run one stage's command, watching its process tree; its record."""
    from clickgraph.app.pipeline import PeakMemory

    log_path = root / "scale-logs" / f"{stage}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = run_argv([*stage_command(stage, workers), *(a for o in overrides for a in ("--set", o))])
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        with PeakMemory(interval_s=0.5, root_pid=child.pid) as memory:
            _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    record: dict[str, Any] = {
        "stage": stage, "exit_code": code, "seconds": round(seconds, 2),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        **memory.figures(),
        # getrusage of the reaped tree: the largest process that ended, in MiB
        "largest_reaped_process_mb": round(usage.ru_maxrss / 1024, 1),
        "bytes_written": folder_bytes(root / OUTPUT[stage]), "log": str(log_path)}
    text = log_path.read_text(errors="replace")
    if code != 0:
        record["log_tail"] = text[-3000:]
    elif stage in ("evaluate", "export"):
        record["figures"] = _json_figures(text)
    return record


def _json_figures(text: str) -> dict[str, Any]:
    """The per-worker peaks and headline figures from a ``--json`` command's output."""
    start = 0 if text.startswith("{") else text.find("\n{") + 1
    try:  # Ray's workers may print more after it
        result, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return {}
    keep = ("peak_rss_bytes", "counts", "auc")
    return {k: result[k] for k in keep if k in result}


def data_figures(root: Path) -> dict[str, Any]:
    """Events, edges and nodes of a size's logs and graph store, events/s trained."""
    figures: dict[str, Any] = {}
    logs = root / "logs" / "_MANIFEST.json"
    if logs.exists():
        manifest = json.loads(logs.read_text())
        figures["events"] = manifest["events_total"]
        figures["entities"] = manifest["entity_counts"]
    graph = root / "graph" / "_MANIFEST.json"
    if graph.exists():
        manifest = json.loads(graph.read_text())
        figures["edges"] = sum(manifest["edge_counts"].values())
        figures["nodes"] = sum(manifest["node_counts"].values())
    metrics = sorted((root / "train").glob("*/metrics.json"))
    if metrics:
        trained = json.loads(metrics[-1].read_text())
        figures["train"] = {k: trained[k] for k in ("events_per_s", "train_seconds",
                                                    "events_trained", "bytes_exchanged_per_event")
                            if k in trained}
    return figures


def run_size(factor: int, workdir: Path, workers: int, train_events: int,
             extra: list[str], stages: Sequence[str]) -> dict[str, Any]:
    from clickgraph.core.config import load_config

    base = load_config(None, [])
    root = workdir / f"x{factor}"
    if root.exists() and stages[0] == "generate":
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    overrides = [f"paths.root={root}",
                 f"generate.num_users={base.generate.num_users * factor}",
                 f"train.max_train_events={train_events}", "train.epochs=1",
                 f"resources.workers={workers}", *extra]
    result: dict[str, Any] = {"factor": factor, "root": str(root), "overrides": overrides,
                              "stages": []}
    for stage in stages:
        print(f"scale x{factor}: {stage} ...", flush=True)
        record = run_stage(stage, root, overrides, workers)
        result["stages"].append(record)
        print(f"scale x{factor}: {stage} exit {record['exit_code']} in {record['seconds']:.0f} s, "
              f"tree peak {record['peak_rss_mb'] / 1024:.2f} GiB, "
              f"{record['bytes_written'] / 2**20:.0f} MiB written", flush=True)
        if record["exit_code"] != 0:
            print(record["log_tail"][-1500:], flush=True)
            break
    result.update(data_figures(root))
    return result


# the kinds of process the tables show, each its largest single process
KINDS = ("driver", "spark_jvm", "ray_train_worker")


def largest_process_mb(record: dict[str, Any], kind: str | None = None) -> float:
    """The largest single process's peak, of one kind or of any."""
    peaks = record["peak_rss_mb_by_process"]
    return max([v["largest_mb"] for k, v in peaks.items() if kind in (None, k)] or [0.0])


def fit(xs: list[float], ys: list[float]) -> dict[str, float | None]:
    """Least squares ``y = a + b x`` and the growth exponent between the last two points."""
    n = len(xs)
    if n < 2:
        return {"intercept": None, "slope": None, "exponent": None}
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    exponent = (math.log(ys[-1] / ys[-2]) / math.log(xs[-1] / xs[-2])
                if ys[-2] > 0 and ys[-1] > 0 and xs[-1] != xs[-2] else None)
    return {"intercept": my - slope * mx, "slope": slope, "exponent": exponent}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Per stage: the fits of seconds, largest process and bytes against events."""
    sizes = [s for s in results["sizes"] if "events" in s]
    fits: dict[str, Any] = {}
    for stage in STAGES:
        points = [(s["events"], r) for s in sizes for r in s["stages"]
                  if r["stage"] == stage and r["exit_code"] == 0]
        if not points:
            continue
        events = [float(e) for e, _ in points]
        fits[stage] = {
            "events": events,
            "seconds": fit(events, [r["seconds"] for _, r in points]),
            "largest_process_mb": fit(events, [largest_process_mb(r) for _, r in points]),
            "bytes_written": fit(events, [float(r["bytes_written"]) for _, r in points]),
            "largest_mb_by_kind": {
                kind: fit(events, [largest_process_mb(r, kind) for _, r in points])
                for kind in KINDS if all(kind in r["peak_rss_mb_by_process"] for _, r in points)},
        }
    return fits


def print_table(results: dict[str, Any]) -> None:
    print("| size | events | stage | exit | s | load | tree peak MiB | largest MiB: "
          + " / ".join(KINDS) + " | MiB written |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for size in results["sizes"]:
        for r in size["stages"]:
            kinds = " / ".join(f"{largest_process_mb(r, k):,.0f}"
                               if k in r["peak_rss_mb_by_process"] else "-" for k in KINDS)
            print(f"| x{size['factor']} | {size.get('events', 0):,} | {r['stage']} | "
                  f"{r['exit_code']} | {r['seconds']:.0f} | {r['load_average_at_end'][0]:.1f} | "
                  f"{r['peak_rss_mb']:,.0f} | {kinds} | {r['bytes_written'] / 2**20:,.1f} |")
    print()
    print("Per million events (slope of the least-squares line) and growth exponent between "
          "the two largest sizes (1 = linear):")
    print()
    print("| stage | s | exp. | largest process MiB (kind) | exp. | bytes written per event "
          "| exp. |")
    print("|---|---:|---:|---|---:|---:|---:|")

    def cell(f: dict[str, float | None], scale: float, digits: int) -> str:
        return "-" if f["slope"] is None else f"{f['slope'] * scale:,.{digits}f}"

    def exp(f: dict[str, float | None]) -> str:
        return "-" if f["exponent"] is None else f"{f['exponent']:.2f}"

    for stage, f in results["fits"].items():
        by_kind = f.get("largest_mb_by_kind") or {}
        memory = "; ".join(f"{cell(v, 1e6, 0)} ({k}, exp. {exp(v)})" for k, v in by_kind.items())
        print(f"| {stage} | {cell(f['seconds'], 1e6, 1)} | {exp(f['seconds'])} | "
              f"{memory or '-'} | {exp(f['largest_process_mb'])} | "
              f"{cell(f['bytes_written'], 1, 1)} | {exp(f['bytes_written'])} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="where each size's data goes (x1, x4, ...)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--train-events", type=int, default=20000,
                        help="impressions trained at every size (train.max_train_events)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES,
                        help="a suffix of the stages (to resume a size; earlier outputs kept)")
    parser.add_argument("--set", dest="extra", action="append", default=[],
                        help="another config override for every stage")
    parser.add_argument("--out", type=Path, help="JSON of the results (appended per size)")
    parser.add_argument("--summarize", type=Path, metavar="JSON",
                        help="print the tables of an earlier run's JSON and exit")
    args = parser.parse_args(argv)
    if args.summarize:
        results = json.loads(args.summarize.read_text())
        results["fits"] = summarize(results)
        print_table(results)
        return 0
    if args.workdir is None:
        parser.error("--workdir is required")
    results: dict[str, Any] = {"machine": f"{platform.node()}, {os.cpu_count()} cores",
                               "python": platform.python_version(), "sizes": []}
    if args.out and args.out.exists():
        results = json.loads(args.out.read_text())
    for factor in args.sizes:
        size = run_size(factor, args.workdir, args.workers, args.train_events, args.extra,
                        args.stages)
        earlier = next((s for s in results["sizes"] if s["factor"] == factor), None)
        if earlier is not None and args.stages != list(STAGES):
            # resumed: the earlier records of the stages not rerun stay
            size["stages"] = [r for r in earlier["stages"] if r["stage"] not in args.stages
                              ] + size["stages"]
        results["sizes"] = [s for s in results["sizes"] if s["factor"] != factor] + [size]
        results["sizes"].sort(key=lambda s: s["factor"])
        results["fits"] = summarize(results)
        if args.out:
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
