"""Peak resident memory of evaluate and export: one process against N workers (issue 17).

On one graph store, shard set and checkpoint this runs, each in a fresh child process,

* ``floor``: what every process of evaluate and export holds before it reads any of the
  graph: Python, torch, clickgraph's inference modules and the checkpoint's parameters
  (``trainer.checkpoint.read_state``); no graph, no shard;
* ``clickgraph evaluate --workers 1`` and ``clickgraph export --workers 1``: the whole
  graph in one process;
* ``clickgraph evaluate --workers N`` and ``clickgraph export --workers N``: one Ray Train
  worker per part; each rank reports its own peak (``peak_rss_bytes`` of
  ``evaluation.json`` and of the export's manifest, :func:`trainer.dist_inference.
  gather_peak_rss`).

Every figure is a peak resident set size (``getrusage``'s ``ru_maxrss``): a child
reports its own (``RUSAGE_SELF``, printed when the command ends), and ``os.wait4`` gives
the largest over the child and the processes it started and reaped (with N workers: the
driver, Ray's own processes and the workers). The target (issue 17): the largest process
with N = 2 workers, beyond the floor, is at most 0.65x the one process beyond the floor::

    ratio = (max(worker peaks at N, driver at N) - floor) / (one process - floor)

The one-process evaluation also fits and scores the tree baselines, which a distributed
evaluation does not (yet) run: its figure is an upper bound of what the GNN alone needs.
Timings are not reported (the machine may be busy; memory is not disturbed by load).

Usage::

    .venv/bin/python benchmarks/inference_memory.py --graph /tmp/vw/a/baseline/graph \\
        --partitions /tmp/h17b-mem/partitions --checkpoint /tmp/h17b-mem/train/<run>/checkpoints/<step> \\
        --work /tmp/h17b-mem/bench --out /tmp/h17b-mem/inference_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

TARGET = 0.65
PEAK_MARK = "inference_memory: peak_rss_bytes="

# A child: runs the clickgraph CLI (or the floor) and prints its own peak last.
_CHILD = """
import json, resource, sys
argv = json.loads(sys.argv[1])
if argv[0] == "--floor":
    import torch  # noqa: F401
    import trainer.dist_inference, trainer.export  # noqa: F401  (torch, the model, pyarrow)
    from trainer import checkpoint as ckpt
    state = ckpt.read_state(argv[1])
    code = 0
else:
    from clickgraph.app.cli import main
    code = main(argv)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("%s%d" % (%r, peak if sys.platform == "darwin" else peak * 1024), file=sys.stderr)
sys.exit(code)
""".replace("%r", repr(PEAK_MARK))


def run_child(argv: list[str], log_path: str) -> dict[str, int]:
    """Runs one child; returns ``self`` (its own peak, bytes) and ``tree`` (``wait4``: the
    largest over it and its reaped descendants, bytes).

    Raises:
        RuntimeError: The child failed (its output is in ``log_path``).
    """
    with open(log_path, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(argv)],
                                stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = open(log_path).read()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:2]} exited with {proc.returncode}; see {log_path}:\n"
                           + text[-3000:])
    own = [int(line.split("=", 1)[1]) for line in text.splitlines()
           if line.startswith(PEAK_MARK)]
    tree = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
    return {"self": own[-1], "tree": int(tree)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every run; the figures as described in the module docstring."""
    sets = [f"paths.graph={args.graph}", f"paths.partitions={args.partitions}",
            f"evaluate.checkpoint={args.checkpoint}", "tracking.enabled=false",
            f"ray.num_cpus={max(2, args.workers)}", *args.set]
    common = ([] if args.config is None else ["--config", args.config]) + \
        [a for s in sets for a in ("--set", s)]
    work = args.work or tempfile.mkdtemp(prefix="inference-memory-")
    os.makedirs(work, exist_ok=True)
    out: dict[str, Any] = {"graph": args.graph, "partitions": args.partitions,
                           "checkpoint": args.checkpoint, "workers": args.workers,
                           "target_ratio": TARGET, "machine": platform.node(), "work": work}
    print("inference_memory: floor (torch, the inference modules, the checkpoint) ...",
          flush=True)
    out["floor"] = run_child(["--floor", args.checkpoint], os.path.join(work, "floor.log"))
    floor = out["floor"]["self"]
    for task in ("evaluate", "export"):
        result: dict[str, Any] = {}
        for n in (1, args.workers):
            folder = os.path.join(work, f"{task}-{n}")
            print(f"inference_memory: {task} --workers {n} ...", flush=True)
            peaks = run_child([task, *common, "--workers", str(n), "--out", folder],
                              os.path.join(work, f"{task}-{n}.log"))
            if n == 1:
                result["one_process"] = peaks
                continue
            written = (os.path.join(folder, "evaluation.json") if task == "evaluate" else
                       _only_export(folder))
            with open(written) as f:
                ranks = json.load(f)["peak_rss_bytes"]
            largest = max(*ranks, peaks["self"])
            result["workers"] = {"ranks": ranks, "driver": peaks["self"],
                                 "driver_tree": peaks["tree"], "largest": largest}
        single = result["one_process"]["self"]
        largest = result["workers"]["largest"]
        result["ratio"] = (largest - floor) / (single - floor) if single > floor else None
        result["largest_rank_ratio"] = ((max(result["workers"]["ranks"]) - floor)
                                        / (single - floor) if single > floor else None)
        result["meets_target"] = result["ratio"] is not None and result["ratio"] <= TARGET
        out[task] = result
    return out


def _only_export(root: str) -> str:
    """The manifest of the one export version under ``root``."""
    versions = [d for d in sorted(os.listdir(root)) if not d.startswith(".")]
    if len(versions) != 1:
        raise RuntimeError(f"{root}: expected one export version, found {versions}")
    return os.path.join(root, versions[0], "_MANIFEST.json")


def _mib(value: int) -> str:
    return f"{value / 2**20:,.0f} MiB"


def summary(result: dict[str, Any]) -> str:
    """The figures as text."""
    floor = result["floor"]["self"]
    lines = [f"floor (torch + modules + checkpoint, no graph): {_mib(floor)}"]
    for task in ("evaluate", "export"):
        r = result[task]
        w = r["workers"]
        lines.append(
            f"{task}: one process {_mib(r['one_process']['self'])}; {result['workers']} workers: "
            f"ranks {', '.join(_mib(p) for p in w['ranks'])}, driver {_mib(w['driver'])} "
            f"(driver tree {_mib(w['driver_tree'])}); (largest - floor) / (one - floor) = "
            f"{r['ratio']:.2f} (target <= {TARGET}: {'met' if r['meets_target'] else 'NOT met'})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--graph", required=True, help="graph store (read only)")
    parser.add_argument("--partitions", required=True,
                        help="a shard set of --workers parts cut from that store")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of that store's lineage")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--config", help="config file (default: conf/local.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override (repeatable)")
    parser.add_argument("--work", help="folder of the runs' outputs and logs (default: a new "
                                       "temporary folder)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2")
    result = measure(args)
    text = summary(result)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**result, "summary": text.splitlines()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
