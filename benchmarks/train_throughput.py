"""Training throughput of this checkout against an earlier revision, side by side in one run.

Issue 15 asks that the new model train at least 0.5x the events/s of the model it
replaced, "on the same data and settings, measured side by side in one run". This runs
``clickgraph train --workers 1`` on one graph store from two code trees: this checkout
and ``--peer-rev`` (checked out with ``git worktree`` under ``--workdir`` and removed
after). The runs alternate (peer, this, peer, this, ...) so that a change of load hits
both, each with ``train.max_train_events=--events``, one epoch, the same seed, and
reads per run:

* ``events_per_s`` from the run's ``metrics.json`` (training impressions per second of
  training time, validation excluded, as the trainer reports it);
* the peak resident memory of the training process (``os.wait4``'s ``ru_maxrss``).

It prints the medians and this / peer ratios, and the load average before and after: on
a shared machine compare figures within one run only.

Usage::

    python benchmarks/train_throughput.py --graph /tmp/cg-q2/graph --peer-rev 5f37251 \\
        --events 20000 --repeats 3 --out /tmp/throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _train(tree: Path, graph: Path, out: Path, events: int, seed: int, log: Path) -> dict:
    """One ``clickgraph train`` with the code of ``tree``; its events/s and peak RSS."""
    root = graph.parent
    command = [sys.executable, "-m", "clickgraph", "train", "--workers=1",
               f"--set=paths.root={root}", f"--set=paths.train={out}",
               f"--set=train.max_train_events={events}", "--set=train.epochs=1",
               "--set=train.max_eval_events=2000", f"--set=train.seed={seed}"]
    if "\ntracking:" in (tree / "conf" / "local.yaml").read_text():
        command.append("--set=tracking.enabled=false")  # older trees have no tracker
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    with log.open("w") as handle:
        child = subprocess.Popen(command, cwd=tree, env=env, stdout=handle,
                                 stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"train failed in {tree}; see {log}")
    metrics = sorted(out.glob("*/metrics.json"))[-1]
    return {"events_per_s": json.loads(metrics.read_text())["events_per_s"],
            "peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": time.perf_counter() - started}


def _peer_tree(rev: str, workdir: Path) -> Path:
    tree = workdir / f"peer-{rev}"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(tree), rev],
                   check=True, capture_output=True)
    return tree


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", required=True, help="graph store both trees train on")
    parser.add_argument("--peer-rev", required=True, help="git revision of the peer model")
    parser.add_argument("--events", type=int, default=20_000, help="training impressions per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    graph = Path(args.graph).resolve()
    if not (graph / "_MANIFEST.json").exists():
        raise SystemExit(f"--graph {graph}: no graph store (_MANIFEST.json missing)")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cg-throughput-"))
    workdir.mkdir(parents=True, exist_ok=True)
    peer = _peer_tree(args.peer_rev, workdir)
    trees = {"peer": peer, "this": REPO}
    runs: dict[str, list[dict]] = {"peer": [], "this": []}
    load_before = os.getloadavg()
    try:
        for repeat in range(args.repeats):
            for name, tree in trees.items():
                out = workdir / f"{name}-{repeat}"
                runs[name].append(_train(tree, graph, out, args.events, args.seed,
                                         workdir / f"{name}-{repeat}.log"))
                print(f"  {name} run {repeat + 1}/{args.repeats}: "
                      f"{runs[name][-1]['events_per_s']:,.0f} events/s, peak RSS "
                      f"{runs[name][-1]['peak_rss_mb']:,.0f} MB", flush=True)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(peer)],
                       capture_output=True)
    median = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
              for name, rs in runs.items()}
    result = {"graph": str(graph), "peer_rev": args.peer_rev, "events": args.events,
              "repeats": args.repeats, "runs": runs, "median": median,
              "ratio_events_per_s": median["this"]["events_per_s"] / median["peer"]["events_per_s"],
              "ratio_peak_rss": median["this"]["peak_rss_mb"] / median["peer"]["peak_rss_mb"],
              "load_average_before_after": [load_before[0], os.getloadavg()[0]],
              "cpu_count": os.cpu_count()}
    print(f"train throughput, {args.events:,} impressions x {args.repeats} runs each (medians): "
          f"this {median['this']['events_per_s']:,.0f} events/s, peer {args.peer_rev} "
          f"{median['peer']['events_per_s']:,.0f}: ratio {result['ratio_events_per_s']:.2f}; "
          f"peak RSS ratio {result['ratio_peak_rss']:.2f}; load {load_before[0]:.1f} -> "
          f"{result['load_average_before_after'][1]:.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
