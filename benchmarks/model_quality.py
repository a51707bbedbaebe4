"""The quality benchmark: does the graph pay? Several seeds, all test impressions.

On one generated store (generated and built once under ``--workdir``, reused after), for
each seed: ``clickgraph train`` (``train.seed`` and ``evaluate.seed`` set to it) and
``clickgraph evaluate`` on **all** test impressions (``evaluate.max_test_events=0``).
Prints mean ± sd over the seeds of the ROC-AUC of ``gnn``, ``baseline`` and
``baseline_plus_embeddings``, of the warm − cold gap of each, and of the lifts the
product is judged by (``gnn - baseline``, ``baseline_plus_embeddings - baseline``, the
gnn's gap minus the trees'), beside the generator's true click probability with and
without its user x content terms (``benchmarks/oracle_auc.py``: the ceiling, and the part
of it that needs no pair signal). Every model change is kept only when this says so;
record each tried change in ``docs/experiments/``.

Usage::

    python benchmarks/model_quality.py --workdir /tmp/cg-quality --seeds 0 1 2 \\
        --out docs/experiments/quality-<name>.json
    python benchmarks/model_quality.py ... --set train.random_negative_ratio=0   # a variant

``--set`` applies to training and evaluation (not to generation or the build, so every
variant sees the same store); ``--data-set`` applies to generation and the build.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

MODELS = ("gnn", "baseline", "baseline_plus_embeddings")


def _run(command: list[str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}; see {log}")
    return time.perf_counter() - started


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def summarise(evaluations: list[dict]) -> dict:
    """Mean ± sd over seeds of every AUC, gap and lift of ``evaluation.json`` files."""
    out: dict = {"auc": {}, "warm_minus_cold": {}, "lift": {}}
    for model in MODELS:
        out["auc"][model] = _stats([e["auc"][model] for e in evaluations])
        out["warm_minus_cold"][model] = _stats([e["warm_minus_cold"][model] for e in evaluations])
    out["lift"]["gnn_minus_baseline"] = _stats(
        [e["auc"]["gnn"] - e["auc"]["baseline"] for e in evaluations])
    out["lift"]["embeddings_minus_baseline"] = _stats(
        [e["auc"]["baseline_plus_embeddings"] - e["auc"]["baseline"] for e in evaluations])
    out["lift"]["gap_gnn_minus_baseline"] = _stats(
        [e["warm_minus_cold"]["gnn"] - e["warm_minus_cold"]["baseline"] for e in evaluations])
    return out


def _fmt(stat: dict) -> str:
    return f"{stat['mean']:.4f} ± {stat['sd']:.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/cg-quality")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=1, help="training workers (1: one process)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="train/evaluate override of this variant")
    parser.add_argument("--data-set", dest="data_overrides", action="append", default=[],
                        help="generate/build override (a different store)")
    parser.add_argument("--name", default="default", help="the variant's folder name")
    parser.add_argument("--no-oracle", action="store_true")
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args(argv)
    if len(args.seeds) < 3:
        print("note: fewer than 3 seeds; the brief keeps a model change only on >= 3")
    py = sys.executable
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    data = [f"--set=paths.root={root}", "--set=spark.master=local[2]",
            *[f"--set={o}" for o in args.data_overrides]]
    if not (root / "graph" / "_MANIFEST.json").exists():
        print("quality: generating and building the store (once) ...", flush=True)
        _run([py, "-m", "clickgraph", "generate", *data], root / "generate.log")
        _run([py, "-m", "clickgraph", "build-graph", *data], root / "build.log")
        if args.workers > 1:
            _run([py, "-m", "clickgraph", "partition", *data, f"--num-parts={args.workers}"],
                 root / "partition.log")
    variant = root / args.name
    evaluations, seconds = [], {}
    for seed in args.seeds:
        run = variant / f"seed{seed}"
        common = [*data, f"--set=train.seed={seed}", f"--set=evaluate.seed={seed}",
                  "--set=evaluate.max_test_events=0", f"--set=paths.train={run}/train",
                  f"--set=paths.eval={run}/eval", f"--workers={args.workers}",
                  *[f"--set={o}" for o in args.overrides]]
        run.mkdir(parents=True, exist_ok=True)
        print(f"quality [{args.name}] seed {seed}: train ...", flush=True)
        train_s = _run([py, "-m", "clickgraph", "train", *common], run / "train.log")
        print(f"quality [{args.name}] seed {seed}: evaluate on all test impressions ...",
              flush=True)
        eval_s = _run([py, "-m", "clickgraph", "evaluate", *[c for c in common if c !=
                       f"--workers={args.workers}"], f"--out={run}/eval/result"],
                      run / "evaluate.log")
        evaluation = json.loads((run / "eval" / "result" / "evaluation.json").read_text())
        evaluations.append(evaluation)
        metrics = sorted((run / "train").glob("*/metrics.json"))
        seconds[seed] = {"train": round(train_s, 1), "evaluate": round(eval_s, 1),
                         "events_per_s": json.loads(metrics[-1].read_text())["events_per_s"]
                         if metrics else None}
        print(f"  seed {seed}: gnn {evaluation['auc']['gnn']:.4f}, baseline "
              f"{evaluation['auc']['baseline']:.4f}, baseline+emb "
              f"{evaluation['auc']['baseline_plus_embeddings']:.4f} "
              f"({evaluation['events']:,} test impressions)", flush=True)
    result = {"variant": args.name, "overrides": args.overrides, "data_overrides": args.data_overrides,
              "seeds": args.seeds, "workers": args.workers, **summarise(evaluations),
              "events": evaluations[0]["events"], "cold_events": evaluations[0]["cold_events"],
              "seconds": seconds}
    if not args.no_oracle:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from oracle_auc import oracle_aucs

        from clickgraph.core.config import load_config

        oracle = oracle_aucs(load_config(None, [o.removeprefix("--set=") for o in data]))
        result["oracle"] = {k: oracle[k] for k in ("auc_truth", "auc_truth_no_pair", "events")}
    print(f"\nquality [{args.name}], {len(args.seeds)} seeds, {result['events']:,} test impressions "
          f"({result['cold_events']:,} cold): mean ± sd")
    for model in MODELS:
        print(f"  {model:26s} AUC {_fmt(result['auc'][model])}   warm-cold "
              f"{_fmt(result['warm_minus_cold'][model])}")
    for name, stat in result["lift"].items():
        print(f"  {name:26s} {stat['mean'] * 100:+.2f} ± {stat['sd'] * 100:.2f} points")
    if "oracle" in result:
        print(f"  oracle (true p_click) AUC {result['oracle']['auc_truth']:.4f}; without its "
              f"user x content terms {result['oracle']['auc_truth_no_pair']:.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
