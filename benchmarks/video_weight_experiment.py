"""Does a video weight of 3 put more video in the top-k, at what cost in AUC?

On one generated dataset, builds the graph store twice, once with
``graph.content_type_weight={}`` (baseline) and once with ``{video: <weight>}`` (video),
and trains the single-process model on each for every seed. In the video arm the weight
acts through weighted neighbour sampling (``train.weighted_sampling``, on by default: a
user's video interactions fill more of the fanout) and, with ``--lever loss`` or ``both``
(the default), as the weight of video impressions in the click loss
(``train.content_type_loss_weight``). Per arm and seed it records: validation and test
ROC-AUC of the GNN (the test impressions ``clickgraph evaluate`` scores), and the
recommendation controls (``trainer/recommend.py``, the export's functions) as of the end of
the graph's last day, uncontrolled and under the exposure controls of ``evaluate``
(``trainer/rerank.py``), plus a sweep of the diversity control (MMR lambda, category cap)
on the same candidates, the measurement behind its default.

The shift of each seed's top-20 video share, video arm minus baseline, in points, is
``video_share_shift_points``; the test-AUC cost, baseline minus video, in points, is
``test_auc_cost_points``.

Each (arm, seed) is written to ``<workdir>/results/<arm>-seed<seed>.json`` as soon as it
ends, and the results file is assembled from those of the seeds whose two arms are done:
``--arms`` runs one arm only (two processes can train the arms side by side), a run that
is cut short keeps its finished seeds, and ``--summarize`` only assembles. Each run also
saves the inputs of the controls (``controls.pt``: every sampled user's candidates and
scores, the catalogue's embeddings, types and categories), so the diversity control can
be swept again without the model (``--controls-only``).

Usage (the default data of ``conf/local.yaml``, logs generated once elsewhere)::

    python benchmarks/video_weight_experiment.py --data default --logs /tmp/cg/logs \\
        --workdir /tmp/cg-video --seeds 0 1 2 --json docs/experiments/video-weight.json

Results and their reading: ``docs/experiments/video-weight.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
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

# runtime settings of every run: what the machine does, not what is learned
RUNTIME = ["resources.device=cpu", "resources.threads_per_worker=1", "spark.master=local[2]",
           "spark.shuffle_partitions=4", "spark.driver_memory=3g", "tracking.enabled=false"]
# --data small: a few thousand users, the first experiment's scale
SMALL = [
    "generate.num_users=2000", "generate.num_content=600", "generate.num_articles=1200",
    "generate.num_brands=60", "generate.num_categories=12", "generate.num_days=8",
    "generate.formats=[parquet]", "generate.num_output_files=2",
    "train.val_days=2", "train.test_days=2", "train.epochs=2", "train.batch_size=512",
    "train.max_train_events=12000", "train.max_eval_events=10000",
]
# --data default: conf/local.yaml's generate, train and evaluate sections unchanged
DATASETS = {"default": [], "small": SMALL}


def arm_config(workdir: Path, arm: str, weight: dict[str, float], run: str, extra: list[str],
               logs: Path | None = None):
    """One arm's config; ``run`` (e.g. ``/seed1``) separates its trainings. ``extra``
    holds the dataset's overrides, then the command line's and the arm's."""
    from clickgraph.core.config import load_config

    overrides = [f"paths.root={workdir}", f"paths.logs={logs or workdir / 'logs'}",
                 f"paths.graph={workdir}/{arm}/graph", f"paths.train={workdir}/{arm}{run}/train",
                 f"paths.embeddings={workdir}/{arm}{run}/embeddings",
                 f"graph.content_type_weight={json.dumps(weight)}", *RUNTIME, *extra]
    return load_config(None, overrides)


def controls_of(rec: dict[str, Any]) -> dict[str, Any]:
    """The figures of one set of lists kept in the results."""
    keep = ("video_share_topk", "video_share_catalogue", "video_share_distinct", "coverage",
            "distinct_recommended", "intra_list_diversity", "catalogue_diversity",
            "category_diversity", "users", "top_k", "catalogue_size", "mean_score",
            "content_type_share_topk", "relaxed_slots", "diversity", "target_share")
    return {k: rec[k] for k in keep if k in rec}


def test_auc(model, cfg) -> float | None:
    """ROC-AUC of the GNN's click probabilities on the test-window impressions that
    ``clickgraph evaluate`` scores (``evaluate.max_test_events``, a fixed sample of
    ``evaluate.seed``: the same events in both arms)."""
    from clickgraph.core.timeline import split_windows
    from trainer.data import window_events
    from trainer.local import roc_auc, subsample

    data = model.data
    windows = split_windows(data.days, cfg.train.val_days, cfg.train.test_days)
    events = subsample(window_events(data.impressions, windows, "test"),
                       cfg.evaluate.max_test_events,
                       torch.Generator().manual_seed(cfg.evaluate.seed))
    scores = model.engine.score(events, torch.Generator().manual_seed(cfg.evaluate.seed))
    return roc_auc(data.impressions.clicked[events].numpy(), scores)


# diversity settings swept on every run's candidates: (method, mmr_lambda, category_cap,
# candidates; None: all of evaluate.rerank_candidates, max_item_share: 0 = no item cap)
SWEEP = [*[("mmr", lam, 0, None, 0.0) for lam in (1.0, 0.7, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2)],
         ("none", 1.0, 1, None, 0.0), ("none", 1.0, 2, None, 0.0), ("mmr", 0.5, 2, None, 0.0),
         ("mmr", 0.4, 2, None, 0.0), ("mmr", 0.35, 1, None, 0.0),
         *[("mmr", lam, 0, 100, 0.0) for lam in (0.4, 0.35, 0.3, 0.25)],
         *[("mmr", lam, 0, pool, 0.0) for lam in (1.0, 0.3) for pool in (500, 1000)],
         # the item cap across lists: coverage 0.10 of a 3,000-item catalogue needs >= 300
         # distinct items in 500 lists of 20, so no item in more than 1/30 of the lists
         *[(method, lam, 0, pool, share) for method, lam in (("none", 1.0), ("mmr", 0.3))
           for pool in (200, 500, 1000) for share in (0.1, 0.066, 0.05, 0.03)]]
# candidates saved per user in controls.pt: more than evaluate.rerank_candidates, so that
# controls over larger pools can be measured again without the model (--controls-only)
SAVED_CANDIDATES = 1000


def controls_inputs(model, cfg) -> dict[str, Any]:
    """What the controls of one model read, as of the end of the graph's last day: each
    sampled user's best items (``SAVED_CANDIDATES`` or ``evaluate.rerank_candidates``,
    the larger) and their scores, the
    catalogue's embeddings, content types and categories (the export's steps,
    ``trainer/export.py``, for the sampled users only)."""
    from clickgraph.core.graph_store import open_graph_store, read_table
    from trainer.export import day_end
    from trainer.inference import embed, existing_nodes
    from trainer.recommend import content_categories, recommend, sample_users

    data = model.data
    cutoff = day_end(data.days[-1])
    ev = cfg.evaluate
    users = sample_users(existing_nodes(data, "user", cutoff), ev.recommend_users, ev.seed)
    content = existing_nodes(data, "content", cutoff)
    user_states = embed(model, "user", users, cutoff, ev.embedding_batch_size, ev.seed)
    content_states = embed(model, "content", content, cutoff, ev.embedding_batch_size, ev.seed)
    candidates = recommend(model, cutoff, users, user_states, content, content_states,
                           min(max(ev.rerank_candidates, SAVED_CANDIDATES), content.numel()),
                           ev.recommend_users, ev.seed)
    store = open_graph_store(cfg.paths.stage("graph"))
    content_type = read_table(store.node_url("content")).sort_by("id").column("content_type").to_pylist()
    return {"user": candidates.user, "content": candidates.content, "score": candidates.score,
            "cutoff": candidates.cutoff, "catalogue": content, "catalogue_states": content_states,
            "content_type": content_type, "category": content_categories(model, cutoff)}


def controls_at(inputs: dict[str, Any], ev) -> tuple[dict[str, Any], dict[str, Any]]:
    """The figures of the plain top-k and of the lists under ``ev``'s controls, over each
    user's best ``ev.rerank_candidates`` saved candidates (all of them when fewer)."""
    from trainer.recommend import Recommendations, apply_controls, control_metrics, head

    pool = ev.rerank_candidates
    candidates = Recommendations(user=inputs["user"], content=inputs["content"][:, :pool],
                                 score=inputs["score"][:, :pool], cutoff=inputs["cutoff"])
    args = (inputs["catalogue"], inputs["catalogue_states"], inputs["content_type"],
            inputs["category"])
    plain = control_metrics(head(candidates, ev.top_k), *args)
    recs, settings = apply_controls(candidates, *args, ev)
    return plain, {**control_metrics(recs, *args), **settings}


def diversity_sweep(inputs: dict[str, Any], ev, grid=SWEEP) -> list[dict[str, Any]]:
    """Coverage, intra-list diversity (and the catalogue's), video share and predicted CTR
    against the uncontrolled lists, per diversity setting of ``grid`` (method,
    ``mmr_lambda``, ``category_cap``, candidates: ``None`` for ``evaluate.rerank_candidates``,
    else the best that many of the saved ones, ``max_item_share``), on one run's candidates."""
    out = []
    for method, mmr_lambda, cap, pool, share in grid:
        pool = min(pool or ev.rerank_candidates, int(inputs["content"].shape[1]))
        setting = dataclasses.replace(ev, rerank_candidates=pool, diversity=dataclasses.replace(
            ev.diversity, method=method, mmr_lambda=mmr_lambda, category_cap=cap,
            max_item_share=share))
        plain, m = controls_at(inputs, setting)
        out.append({"method": method, "mmr_lambda": mmr_lambda, "category_cap": cap,
                    "max_item_share": share, "candidates": pool, "coverage": m["coverage"],
                    "relaxed_slots": m["relaxed_slots"],
                    "intra_list_diversity": m["intra_list_diversity"],
                    "catalogue_diversity": m["catalogue_diversity"],
                    "category_diversity": m["category_diversity"],
                    "video_share_topk": m["video_share_topk"],
                    "predicted_ctr_ratio": m["mean_score"] / plain["mean_score"]})
    return out


def run_dir(workdir: Path, arm: str, seed: int) -> Path:
    return workdir / arm / f"seed{seed}"


def redo_controls(path: Path, workdir: Path, overrides: list[str]) -> None:
    """Recomputes every run's controls and the sweep from its saved candidates
    (``controls.pt``; after a change of the controls, without the model) and rewrites the
    results file."""
    from clickgraph.core.config import load_config

    results = json.loads(path.read_text())
    ev = load_config(None, [*RUNTIME, *overrides]).evaluate
    for seed, per_arm in results["seeds"].items():
        for arm in ("baseline", "video"):
            r = per_arm[arm]
            inputs = torch.load(run_dir(workdir, arm, int(seed)) / "controls.pt")
            plain, controlled = controls_at(inputs, ev)
            r["uncontrolled"], r["controlled"] = controls_of(plain), controls_of(controlled)
            r["diversity_sweep"] = diversity_sweep(inputs, ev)
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


def run_arm(workdir: Path, arm: str, weight: dict[str, float], seed: int, extra: list[str],
            logs: Path | None) -> dict[str, Any]:
    """Trains one arm with one seed, measures it and writes ``results/<arm>-seed<seed>.json``."""
    from trainer.inference import load_trained
    from trainer.local import train_single

    cfg = arm_config(workdir, arm, weight, f"/seed{seed}", [*extra, f"train.seed={seed}"], logs)
    t0 = time.perf_counter()
    latest = Path(cfg.paths.stage("train")) / "latest_checkpoint.json"
    if latest.exists():  # trained before the measurement failed or was cut short: reuse it
        checkpoint = Path(json.loads(latest.read_text())["checkpoint"])
        metrics = json.loads((checkpoint.parent / "metrics.json").read_text())
        print(f"seed {seed} {arm}: reusing the trained {checkpoint}", flush=True)
    else:
        metrics = train_single(cfg, log=lambda *_: None)
    t1 = time.perf_counter()
    model = load_trained(cfg)
    inputs = controls_inputs(model, cfg)
    torch.save(inputs, run_dir(workdir, arm, seed) / "controls.pt")
    plain, controlled = controls_at(inputs, cfg.evaluate)
    r = {"arm": arm, "seed": seed, "content_type_weight": weight, "overrides": extra,
         "val_auc": metrics["val_auc"], "test_auc": test_auc(model, cfg),
         "test_events": cfg.evaluate.max_test_events,
         "cutoff": dt.datetime.fromtimestamp(inputs["cutoff"], dt.UTC).isoformat(),
         "uncontrolled": controls_of(plain), "controlled": controls_of(controlled),
         "diversity_sweep": diversity_sweep(inputs, cfg.evaluate)}
    r["seconds"] = {"train": round(t1 - t0, 1), "controls_and_test": round(time.perf_counter() - t1, 1)}
    out = workdir / "results" / f"{arm}-seed{seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2, sort_keys=True) + "\n")
    u, c = r["uncontrolled"], r["controlled"]
    print(f"seed {seed} {arm:8s}: val AUC {r['val_auc']:.4f}, test AUC {r['test_auc']:.4f}, "
          f"video share top-{u['top_k']} {u['video_share_topk']:.3f} (catalogue "
          f"{u['video_share_catalogue']:.3f}), coverage {u['coverage']:.3f} -> controlled "
          f"{c['coverage']:.3f}, diversity {u['intra_list_diversity']:.3f} -> "
          f"{c['intra_list_diversity']:.3f} (catalogue {c['catalogue_diversity']:.3f}), "
          f"predicted CTR x{c['mean_score'] / u['mean_score']:.3f} (train {r['seconds']['train']} s)",
          flush=True)
    return r


def summarize(workdir: Path, seeds: list[int], meta: dict[str, Any], out: Path) -> None:
    """The results file from the seeds whose two arms have finished."""
    results: dict[str, Any] = {**meta, "seeds": {}}
    for seed in seeds:
        files = {arm: workdir / "results" / f"{arm}-seed{seed}.json" for arm in ("baseline", "video")}
        if not all(f.exists() for f in files.values()):
            print(f"seed {seed}: not both arms finished; left out")
            continue
        per_arm = {arm: json.loads(f.read_text()) for arm, f in files.items()}
        per_arm["video_share_shift_points"] = 100 * (
            per_arm["video"]["uncontrolled"]["video_share_topk"]
            - per_arm["baseline"]["uncontrolled"]["video_share_topk"])
        per_arm["test_auc_cost_points"] = 100 * (per_arm["baseline"]["test_auc"]
                                                 - per_arm["video"]["test_auc"])
        results["seeds"][str(seed)] = per_arm
    if not results["seeds"]:
        print("no seed with both arms finished: nothing written")
        return
    runs = results["seeds"].values()
    results["video_share_shift_points"] = [s["video_share_shift_points"] for s in runs]
    results["test_auc_cost_points"] = [s["test_auc_cost_points"] for s in runs]
    results["summary"] = {
        "video_share_shift_points": spread(results["video_share_shift_points"]),
        "test_auc_cost_points": spread(results["test_auc_cost_points"]),
        **{f"{arm}_{key}": spread([s[arm]["uncontrolled"][key] if key != "test_auc" else s[arm][key]
                                   for s in runs])
           for arm in ("baseline", "video") for key in ("video_share_topk", "test_auc")}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    shift = results["summary"]["video_share_shift_points"]
    cost = results["summary"]["test_auc_cost_points"]
    print(f"video share shift {[round(x, 2) for x in results['video_share_shift_points']]} points "
          f"(mean {shift['mean']:+.2f}, sd {shift['std']:.2f}); test AUC cost "
          f"{[round(x, 2) for x in results['test_auc_cost_points']]} points (mean "
          f"{cost['mean']:+.2f}); results -> {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/cg-video-weight", help="scratch folder")
    parser.add_argument("--data", choices=sorted(DATASETS), default="default",
                        help="default: conf/local.yaml's data and training; small: 2,000 users, 8 days")
    parser.add_argument("--logs", default=None,
                        help="generated logs to read (of the same --data); default: generate "
                             "them into <workdir>/logs")
    parser.add_argument("--weight", type=float, default=3.0, help="video weight of the second arm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed values")
    parser.add_argument("--arms", nargs="+", choices=["baseline", "video"],
                        default=["baseline", "video"], help="the arms this process trains")
    parser.add_argument("--lever", choices=["sampling", "loss", "both"], default="both",
                        help="where the video weight acts besides the store's edge weights")
    parser.add_argument("--json", default="docs/experiments/video-weight.json",
                        help="where to write the results")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config overrides, applied to both arms")
    parser.add_argument("--build-only", action="store_true",
                        help="generate the logs and build the --arms' graph stores, then stop")
    parser.add_argument("--summarize", action="store_true",
                        help="only assemble --json from the finished runs in --workdir")
    parser.add_argument("--controls-only", action="store_true",
                        help="recompute the controls of the runs in --json from their saved candidates")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    logs = Path(args.logs).resolve() if args.logs else None
    extra = [*DATASETS[args.data], *args.overrides]
    if args.controls_only:
        redo_controls(Path(args.json), workdir, extra)
        return 0
    video = {"video": args.weight}
    sampling = "true" if args.lever in ("sampling", "both") else "false"
    loss = json.dumps(video) if args.lever in ("loss", "both") else "{}"
    arms = {"baseline": ({}, [f"train.weighted_sampling={sampling}"]),
            "video": (video, [f"train.weighted_sampling={sampling}",
                              f"train.content_type_loss_weight={loss}"])}
    meta = {"lever": args.lever, "weight": args.weight, "data": args.data,
            "dataset": [*DATASETS[args.data], *RUNTIME, *args.overrides],
            "logs": str(logs or workdir / "logs"),
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpus": os.cpu_count()}}
    if args.summarize:
        summarize(workdir, args.seeds, meta, Path(args.json))
        return 0

    from clickgraph.core import fs
    from spark_jobs import build_graph, generate_logs
    from spark_jobs.session import get_spark

    started = time.perf_counter()
    base_cfg = arm_config(workdir, "baseline", {}, "", extra, logs)
    spark = None
    if fs.exists(fs.join(base_cfg.paths.stage("logs"), fs.MANIFEST_NAME)):
        print(f"logs: reusing {base_cfg.paths.stage('logs')}")
    else:
        spark = get_spark(base_cfg.spark, "video-weight")
        generate_logs.run(spark, base_cfg, log=lambda *_: None)
        print(f"logs: generated in {time.perf_counter() - started:.0f} s")
    for arm in args.arms:
        cfg = arm_config(workdir, arm, arms[arm][0], "", extra, logs)
        if fs.exists(fs.join(cfg.paths.stage("graph"), fs.MANIFEST_NAME)):
            print(f"{arm}: reusing the graph store")
        else:
            spark = spark or get_spark(base_cfg.spark, "video-weight")
            build_graph.run(spark, cfg, log=lambda *_: None)
            print(f"{arm}: graph store built ({time.perf_counter() - started:.0f} s)")
    if spark is not None:
        spark.stop()
    if args.build_only:
        return 0
    for seed in args.seeds:
        for arm in args.arms:
            weight, arm_extra = arms[arm]
            run_arm(workdir, arm, weight, seed, [*extra, *arm_extra], logs)
    meta["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    meta["total_seconds"] = round(time.perf_counter() - started, 1)
    summarize(workdir, args.seeds, meta, Path(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
