"""Does raising ``graph.content_type_weight`` for video put more video in the top-k?

On one generated dataset, builds the graph store twice, once with
``graph.content_type_weight={}`` and once with ``{video: <weight>}``, trains the
single-process model on each with the same seeds, and runs the export's recommendation
controls (``trainer/recommend.py``) on each as of the end of the graph's last day. Reports,
per arm: validation ROC-AUC, the video share of the top-k lists, the catalogue's video
share, coverage and intra-list diversity.

A third, diagnostic arm separates the two ways the weight can act: the *baseline* model's
parameters applied to the *weighted* store (same ids, same cutoff), i.e. the weight's effect
on message passing alone, without retraining.

Usage::

    python benchmarks/video_weight_experiment.py --workdir /tmp/cg-video \\
        --json docs/experiments/video-weight.json

Results and their reading: ``docs/experiments/video-weight.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

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


def arm_config(workdir: Path, arm: str, weight: dict[str, float], extra: list[str]):
    from clickgraph.core.config import load_config

    overrides = [f"paths.root={workdir}", f"paths.logs={workdir}/logs",
                 f"paths.graph={workdir}/{arm}/graph", f"paths.train={workdir}/{arm}/train",
                 f"paths.embeddings={workdir}/{arm}/embeddings",
                 f"graph.content_type_weight={json.dumps(weight)}", *DATASET, *extra]
    return load_config(None, overrides)


def controls_of(manifest: dict[str, Any]) -> dict[str, Any]:
    rec = manifest["recommendations"]
    keep = ("video_share_topk", "video_share_catalogue", "video_share_distinct", "coverage",
            "distinct_recommended", "intra_list_diversity", "catalogue_diversity",
            "category_diversity", "users", "top_k", "catalogue_size", "mean_score",
            "content_type_share_topk")
    return {k: rec[k] for k in keep}


def baseline_model_on_store(baseline_cfg, weighted_cfg):
    """The baseline checkpoint's parameters on the weighted store (bypassing the lineage
    check on purpose: the stores differ only in the weight column), or ``None`` with a
    reason when the two stores number their nodes differently."""
    from clickgraph.core.graph_store import open_graph_store, read_table
    from trainer import checkpoint as ckpt
    from trainer.data import load_graph_data
    from trainer.engine import ClickEngine
    from trainer.inference import TrainedModel, resolve_checkpoint, train_config_of

    a, b = (open_graph_store(c.paths.stage("graph")) for c in (baseline_cfg, weighted_cfg))
    for node_type in a.node_types:
        ids_a = read_table(a.node_url(node_type)).sort_by("id").column("raw_id")
        ids_b = read_table(b.node_url(node_type)).sort_by("id").column("raw_id")
        if not ids_a.equals(ids_b):
            return None, f"the stores number {node_type} nodes differently"
    url = resolve_checkpoint(baseline_cfg)
    meta = ckpt.read_meta(url)
    data = load_graph_data(weighted_cfg.paths.stage("graph"), vocab=meta["vocab"])
    engine = ClickEngine(data, train_config_of(meta, baseline_cfg.train))
    engine.model.load_state_dict(ckpt.read_state(url)["model"])
    engine.model.eval()
    return TrainedModel(engine=engine, meta=meta, checkpoint=url), None


def cross_controls(model, cfg) -> dict[str, Any]:
    """Recommendation controls of ``model`` at the end of its store's last day."""
    from clickgraph.core.graph_store import open_graph_store, read_table
    from trainer.export import day_end
    from trainer.inference import embed, existing_nodes
    from trainer.recommend import content_categories, control_metrics, recommend

    data = model.data
    cutoff = day_end(data.days[-1])
    ev = cfg.evaluate
    users, content = existing_nodes(data, "user", cutoff), existing_nodes(data, "content", cutoff)
    user_states = embed(model, "user", users, cutoff, ev.embedding_batch_size, ev.seed)
    content_states = embed(model, "content", content, cutoff, ev.embedding_batch_size, ev.seed)
    recs = recommend(model, cutoff, users, user_states, content, content_states, ev.top_k,
                     ev.recommend_users, ev.seed)
    store = open_graph_store(cfg.paths.stage("graph"))
    content_type = read_table(store.node_url("content")).sort_by("id").column("content_type").to_pylist()
    return control_metrics(recs, content, content_states, content_type, content_categories(model, cutoff))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/cg-video-weight", help="scratch folder")
    parser.add_argument("--weight", type=float, default=3.0, help="video weight of the second arm")
    parser.add_argument("--json", default="docs/experiments/video-weight.json",
                        help="where to write the results")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config overrides, applied to both arms")
    args = parser.parse_args(argv)

    from clickgraph.core import fs
    from spark_jobs import build_graph, generate_logs
    from spark_jobs.session import get_spark
    from trainer.export import run_export
    from trainer.local import train_single

    workdir = Path(args.workdir).resolve()
    arms = {"baseline": {}, "video": {"video": args.weight}}
    cfgs = {arm: arm_config(workdir, arm, weight, args.overrides) for arm, weight in arms.items()}
    started = time.perf_counter()
    spark = get_spark(cfgs["baseline"].spark, "video-weight")
    if fs.exists(fs.join(str(workdir / "logs"), fs.MANIFEST_NAME)):
        print(f"logs: reusing {workdir / 'logs'}")
    else:
        generate_logs.run(spark, cfgs["baseline"], log=lambda *_: None)
        print(f"logs: generated in {time.perf_counter() - started:.0f} s")

    results: dict[str, Any] = {"arms": {}}
    for arm, cfg in cfgs.items():
        t0 = time.perf_counter()
        graph = build_graph.run(spark, cfg, log=lambda *_: None)
        t1 = time.perf_counter()
        metrics = train_single(cfg, log=lambda *_: None)
        t2 = time.perf_counter()
        manifest = run_export(cfg, log=lambda *_: None)
        results["arms"][arm] = {
            "content_type_weight": arms[arm], "val_auc": metrics["val_auc"],
            "val_auc_logistic_baseline": metrics["val_auc_logistic_baseline"],
            "train_events_per_s": metrics["events_per_s"], "cutoff": manifest["cutoff"]["iso"],
            **controls_of(manifest),
            "seconds": {"build_graph": round(t1 - t0, 1), "train": round(t2 - t1, 1),
                        "export": round(time.perf_counter() - t2, 1)},
            "graph_rows_kept": graph.get("rows_kept"),
        }
        r = results["arms"][arm]
        print(f"{arm:9s} weight {arms[arm]}: val AUC {r['val_auc']:.4f}, video share top-{r['top_k']} "
              f"{r['video_share_topk']:.3f} vs catalogue {r['video_share_catalogue']:.3f}, coverage "
              f"{r['coverage']:.3f}, diversity {r['intra_list_diversity']:.3f} "
              f"(build {r['seconds']['build_graph']} s, train {r['seconds']['train']} s)")
    spark.stop()

    model, reason = baseline_model_on_store(cfgs["baseline"], cfgs["video"])
    if model is None:
        results["baseline_model_on_video_store"] = {"skipped": reason}
    else:
        cross = cross_controls(model, cfgs["video"])
        results["baseline_model_on_video_store"] = {k: cross[k] for k in (
            "video_share_topk", "video_share_catalogue", "video_share_distinct", "coverage",
            "distinct_recommended", "intra_list_diversity", "catalogue_diversity")}
        print(f"baseline model on the weighted store (no retraining): video share top-{cross['top_k']} "
              f"{cross['video_share_topk']:.3f}, coverage {cross['coverage']:.3f}")
    results["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": os.cpu_count()}
    results["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    results["dataset"] = DATASET + args.overrides
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"results -> {out} ({results['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
