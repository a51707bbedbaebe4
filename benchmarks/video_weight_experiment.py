"""Does a video weight of 3 put more video in the top-k, at what cost in AUC?

On one generated dataset, builds the graph store twice, once with
``graph.content_type_weight={}`` (baseline) and once with ``{video: <weight>}`` (video),
and trains the single-process model on each for every seed. In the video arm the weight
acts through weighted neighbour sampling (``train.weighted_sampling``, on by default: a
user's video interactions fill more of the fanout) and, with ``--lever loss`` or ``both``
(the default), as the weight of video impressions in the click loss
(``train.content_type_loss_weight``). Per arm and seed it records: validation and test
ROC-AUC of the GNN (all test impressions), and the export's recommendation controls
(``trainer/recommend.py``) as of the end of the graph's last day, uncontrolled and under
the exposure controls of ``evaluate`` (``trainer/rerank.py``). For the baseline arm it also
sweeps the diversity control (MMR lambda, category cap) on the same candidates, the
measurement behind its default. ``--controls-only`` recomputes the controls and the sweep
from the trained checkpoints (after a change of the controls, without retraining).

The shift of each seed's top-20 video share, video arm minus baseline, in points, is
``video_share_shift_points``; the test-AUC cost, baseline minus video, in points, is
``test_auc_cost_points``.

Usage::

    python benchmarks/video_weight_experiment.py --workdir /tmp/cg-video --seeds 0 1 2 \\
        --json docs/experiments/video-weight.json

Results and their reading: ``docs/experiments/video-weight.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# the dataset: a few thousand users, small enough for a shared 2-core machine
DATASET = [
    "generate.num_users=2000", "generate.num_content=600", "generate.num_articles=1200",
    "generate.num_brands=60", "generate.num_categories=12", "generate.num_days=8",
    "generate.formats=[parquet]", "generate.num_output_files=2",
    "train.val_days=2", "train.test_days=2", "train.epochs=2", "train.batch_size=512",
    "train.max_train_events=12000", "train.max_eval_events=10000", "resources.threads_per_worker=2",
    "resources.device=cpu", "evaluate.recommend_users=500", "evaluate.top_k=20",
    "spark.master=local[2]", "spark.shuffle_partitions=4", "spark.driver_memory=3g",
]


def arm_config(workdir: Path, arm: str, weight: dict[str, float], run: str, extra: list[str]):
    """One arm's config; ``run`` (e.g. ``/seed1``) separates its trainings and exports."""
    from clickgraph.core.config import load_config

    overrides = [f"paths.root={workdir}", f"paths.logs={workdir}/logs",
                 f"paths.graph={workdir}/{arm}/graph", f"paths.train={workdir}/{arm}{run}/train",
                 f"paths.embeddings={workdir}/{arm}{run}/embeddings",
                 f"graph.content_type_weight={json.dumps(weight)}", *DATASET, *extra]
    return load_config(None, overrides)


def controls_of(rec: dict[str, Any]) -> dict[str, Any]:
    """The figures of one set of lists kept in the results."""
    keep = ("video_share_topk", "video_share_catalogue", "video_share_distinct", "coverage",
            "distinct_recommended", "intra_list_diversity", "catalogue_diversity",
            "category_diversity", "users", "top_k", "catalogue_size", "mean_score",
            "content_type_share_topk", "relaxed_slots", "diversity", "target_share")
    return {k: rec[k] for k in keep if k in rec}


def test_auc(model, cfg) -> float | None:
    """ROC-AUC of the GNN's click probabilities on every test-window impression."""
    from clickgraph.core.timeline import split_windows
    from trainer.data import window_events
    from trainer.local import roc_auc

    data = model.data
    windows = split_windows(data.days, cfg.train.val_days, cfg.train.test_days)
    events = window_events(data.impressions, windows, "test")
    scores = model.engine.score(events, torch.Generator().manual_seed(cfg.evaluate.seed))
    return roc_auc(data.impressions.clicked[events].numpy(), scores)


SWEEP = [("mmr", 1.0, 0), ("mmr", 0.7, 0), ("mmr", 0.5, 0), ("mmr", 0.45, 0), ("mmr", 0.4, 0),
         ("mmr", 0.35, 0), ("mmr", 0.3, 0), ("none", 1.0, 2), ("mmr", 0.5, 2)]


def controls_sweep(model, cfg) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """The controls of one model at the config's settings and at the settings of
    :data:`SWEEP`, on the same candidates.

    Returns:
        ``(uncontrolled, controlled, sweep)``: the figures of the plain top-k, of the lists
        under ``evaluate``'s controls, and per sweep setting coverage, intra-list diversity
        (and the catalogue's), video share and predicted CTR against the uncontrolled.
    """
    from clickgraph.core.graph_store import open_graph_store, read_table
    from trainer.export import day_end
    from trainer.inference import embed, existing_nodes
    from trainer.recommend import (
        apply_controls,
        content_categories,
        control_metrics,
        head,
        recommend,
    )

    data = model.data
    cutoff = day_end(data.days[-1])
    ev = cfg.evaluate
    users, content = existing_nodes(data, "user", cutoff), existing_nodes(data, "content", cutoff)
    user_states = embed(model, "user", users, cutoff, ev.embedding_batch_size, ev.seed)
    content_states = embed(model, "content", content, cutoff, ev.embedding_batch_size, ev.seed)
    candidates = recommend(model, cutoff, users, user_states, content, content_states,
                           ev.rerank_candidates, ev.recommend_users, ev.seed)
    store = open_graph_store(cfg.paths.stage("graph"))
    content_type = read_table(store.node_url("content")).sort_by("id").column("content_type").to_pylist()
    category = content_categories(model, cutoff)
    plain = control_metrics(head(candidates, ev.top_k), content, content_states, content_type, category)
    recs, settings = apply_controls(candidates, content, content_states, content_type, category, ev)
    controlled = {**control_metrics(recs, content, content_states, content_type, category), **settings}
    out = []
    for method, mmr_lambda, cap in SWEEP:
        setting = dataclasses.replace(ev, diversity=dataclasses.replace(
            ev.diversity, method=method, mmr_lambda=mmr_lambda, category_cap=cap))
        recs, _ = apply_controls(candidates, content, content_states, content_type, category, setting)
        m = control_metrics(recs, content, content_states, content_type, category)
        out.append({"method": method, "mmr_lambda": mmr_lambda, "category_cap": cap,
                    "coverage": m["coverage"], "intra_list_diversity": m["intra_list_diversity"],
                    "catalogue_diversity": m["catalogue_diversity"],
                    "video_share_topk": m["video_share_topk"],
                    "predicted_ctr_ratio": m["mean_score"] / plain["mean_score"]})
    return plain, controlled, out


def redo_controls(path: Path, workdir: Path, overrides: list[str]) -> None:
    """Recomputes every run's controls and the sweep from its checkpoint (after a change
    of the controls, without retraining) and rewrites the results file."""
    from trainer.inference import load_trained

    results = json.loads(path.read_text())
    for seed, per_arm in results["seeds"].items():
        for arm in ("baseline", "video"):
            r = per_arm[arm]
            cfg = arm_config(workdir, arm, r["content_type_weight"], f"/seed{seed}",
                             [*overrides, *r["overrides"], f"train.seed={seed}"])
            plain, controlled, sweep = controls_sweep(load_trained(cfg), cfg)
            r["uncontrolled"], r["controlled"] = controls_of(plain), controls_of(controlled)
            r["diversity_sweep"] = sweep
            c = r["controlled"]
            print(f"seed {seed} {arm:8s}: coverage {plain['coverage']:.3f} -> {c['coverage']:.3f}, "
                  f"diversity {plain['intra_list_diversity']:.3f} -> {c['intra_list_diversity']:.3f} "
                  f"(catalogue {c['catalogue_diversity']:.3f}), predicted CTR "
                  f"x{c['mean_score'] / plain['mean_score']:.3f}", flush=True)
    results["controls_redone_with"] = " ".join([Path(sys.executable).name, *sys.argv])
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max of per-seed values."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
            "min": float(array.min()), "max": float(array.max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/cg-video-weight", help="scratch folder")
    parser.add_argument("--weight", type=float, default=3.0, help="video weight of the second arm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed values")
    parser.add_argument("--lever", choices=["sampling", "loss", "both"], default="both",
                        help="where the video weight acts besides the store's edge weights")
    parser.add_argument("--json", default="docs/experiments/video-weight.json",
                        help="where to write the results")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config overrides, applied to both arms")
    parser.add_argument("--controls-only", action="store_true",
                        help="recompute the controls of the runs in --json from their checkpoints")
    args = parser.parse_args(argv)
    if args.controls_only:
        redo_controls(Path(args.json), Path(args.workdir).resolve(), args.overrides)
        return 0

    from clickgraph.core import fs
    from spark_jobs import build_graph, generate_logs
    from spark_jobs.session import get_spark
    from trainer.export import run_export
    from trainer.inference import load_trained
    from trainer.local import train_single

    workdir = Path(args.workdir).resolve()
    video = {"video": args.weight}
    sampling = "true" if args.lever in ("sampling", "both") else "false"
    loss = json.dumps(video) if args.lever in ("loss", "both") else "{}"
    arms = {"baseline": ({}, [f"train.weighted_sampling={sampling}"]),
            "video": (video, [f"train.weighted_sampling={sampling}",
                              f"train.content_type_loss_weight={loss}"])}
    started = time.perf_counter()
    base_cfg = arm_config(workdir, "baseline", {}, "", args.overrides)
    spark = get_spark(base_cfg.spark, "video-weight")
    if fs.exists(fs.join(str(workdir / "logs"), fs.MANIFEST_NAME)):
        print(f"logs: reusing {workdir / 'logs'}")
    else:
        generate_logs.run(spark, base_cfg, log=lambda *_: None)
        print(f"logs: generated in {time.perf_counter() - started:.0f} s")
    for arm, (weight, _) in arms.items():
        cfg = arm_config(workdir, arm, weight, "", args.overrides)
        if fs.exists(fs.join(cfg.paths.stage("graph"), fs.MANIFEST_NAME)):
            print(f"{arm}: reusing the graph store")
        else:
            build_graph.run(spark, cfg, log=lambda *_: None)
    spark.stop()

    results: dict[str, Any] = {"lever": args.lever, "weight": args.weight, "seeds": {}}
    for seed in args.seeds:
        per_arm = {}
        for arm, (weight, extra) in arms.items():
            cfg = arm_config(workdir, arm, weight, f"/seed{seed}",
                             [*args.overrides, *extra, f"train.seed={seed}"])
            t0 = time.perf_counter()
            metrics = train_single(cfg, log=lambda *_: None)
            t1 = time.perf_counter()
            manifest = run_export(cfg, log=lambda *_: None)
            model = load_trained(cfg)
            r = per_arm[arm] = {
                "content_type_weight": weight, "overrides": extra, "val_auc": metrics["val_auc"],
                "test_auc": test_auc(model, cfg), "cutoff": manifest["cutoff"]["iso"],
                "uncontrolled": controls_of(manifest["recommendations"]),
                "controlled": controls_of(manifest["recommendations_controlled"]),
                "seconds": {"train": round(t1 - t0, 1),
                            "export_and_test": round(time.perf_counter() - t1, 1)}}
            r["diversity_sweep"] = controls_sweep(model, cfg)[2]
            u, c = r["uncontrolled"], r["controlled"]
            print(f"seed {seed} {arm:8s}: val AUC {r['val_auc']:.4f}, test AUC {r['test_auc']:.4f}, "
                  f"video share top-{u['top_k']} {u['video_share_topk']:.3f} (catalogue "
                  f"{u['video_share_catalogue']:.3f}), coverage {u['coverage']:.3f} -> controlled "
                  f"{c['coverage']:.3f}, diversity {u['intra_list_diversity']:.3f} -> "
                  f"{c['intra_list_diversity']:.3f} (catalogue {c['catalogue_diversity']:.3f}), "
                  f"predicted CTR x{c['mean_score'] / u['mean_score']:.3f} (train {r['seconds']['train']} s)",
                  flush=True)
        per_arm["video_share_shift_points"] = 100 * (
            per_arm["video"]["uncontrolled"]["video_share_topk"]
            - per_arm["baseline"]["uncontrolled"]["video_share_topk"])
        per_arm["test_auc_cost_points"] = 100 * (per_arm["baseline"]["test_auc"]
                                                 - per_arm["video"]["test_auc"])
        results["seeds"][str(seed)] = per_arm
    seeds = results["seeds"].values()
    results["video_share_shift_points"] = [s["video_share_shift_points"] for s in seeds]
    results["test_auc_cost_points"] = [s["test_auc_cost_points"] for s in seeds]
    results["summary"] = {
        "video_share_shift_points": spread(results["video_share_shift_points"]),
        "test_auc_cost_points": spread(results["test_auc_cost_points"]),
        **{f"{arm}_{key}": spread([s[arm]["uncontrolled"][key] if key != "test_auc" else s[arm][key]
                                   for s in seeds])
           for arm in arms for key in ("video_share_topk", "test_auc")}}
    results["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": os.cpu_count()}
    results["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    results["dataset"] = DATASET + args.overrides
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    shift = results["summary"]["video_share_shift_points"]
    cost = results["summary"]["test_auc_cost_points"]
    print(f"video share shift {results['video_share_shift_points']} points (mean {shift['mean']:+.2f}, "
          f"sd {shift['std']:.2f}); test AUC cost {cost['mean']:+.2f} points; "
          f"results -> {out} ({results['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
