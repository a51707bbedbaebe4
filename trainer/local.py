"""Single-process training (``clickgraph train --workers 1``) and its evaluation.

Trains the click model on the training window's impressions, reports validation ROC-AUC
per epoch beside a logistic regression on the same per-row features (user attributes,
content type, feed position, hour) fitted in the same run, and writes ``metrics.json``, the
resolved config and a checkpoint into the run folder.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clickgraph.core import fs
from clickgraph.core.config import Config
from clickgraph.core.graph_store import open_graph_store
from clickgraph.core.progress import RateProgress
from clickgraph.core.timeline import split_windows
from trainer import checkpoint as ckpt
from trainer.asof import AsOfCounts
from trainer.data import GraphData, load_graph_data, window_events
from trainer.engine import ClickEngine, prepare_step
from trainer.prefetch import Prefetcher, split_threads


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC-AUC, or ``None`` when only one class is present."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def row_features(data: GraphData, events: Tensor) -> np.ndarray:
    """Per-row features a model without a graph sees: user attributes, content attributes,
    position and hour of the impression (categorical codes, one column each)."""
    imp = data.impressions
    user_codes = data.features["user"].categorical[imp.user[events]]
    content_codes = data.features["content"].categorical[imp.content[events]]
    hour = torch.div(imp.time[events] % 86_400, 3600, rounding_mode="floor")
    return torch.cat([user_codes, content_codes, imp.position[events].unsqueeze(-1),
                      hour.unsqueeze(-1)], dim=1).numpy()


def logistic_baseline(data: GraphData, train: Tensor, evaluate: Tensor) -> np.ndarray:
    """Fit a one-hot logistic regression on ``train`` rows and score ``evaluate`` rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import OneHotEncoder

    encoder = OneHotEncoder(handle_unknown="ignore")
    x_train = encoder.fit_transform(row_features(data, train))
    model = LogisticRegression(max_iter=1000).fit(x_train, data.impressions.clicked[train].numpy())
    return model.predict_proba(encoder.transform(row_features(data, evaluate)))[:, 1]


def subsample(events: Tensor, limit: int, generator: torch.Generator) -> Tensor:
    if limit <= 0 or events.numel() <= limit:
        return events
    return events[torch.randperm(events.numel(), generator=generator)[:limit]].sort().values


def evaluate_window(engine: ClickEngine, events: Tensor, cold_start_max_interactions: int,
                    generator: torch.Generator) -> dict[str, Any]:
    """AUC on a window's impressions, overall, for cold-start users (at most
    ``cold_start_max_interactions`` interactions strictly before the impression,
    :mod:`trainer.asof`) and for the others."""
    data = engine.data
    scores = engine.score(events, generator)
    labels = data.impressions.clicked[events].numpy()
    counts = AsOfCounts(engine.sampler, engine.graph.edge_types)
    cold = counts.cold(data.impressions.user[events], data.impressions.time[events],
                       cold_start_max_interactions).numpy()
    return window_aucs(labels, scores, cold, cold_start_max_interactions)


def window_aucs(labels: np.ndarray, scores: np.ndarray, cold: np.ndarray,
                cold_start_max_interactions: int) -> dict[str, Any]:
    """Validation figures of scored impressions (each ``[N]``): AUC overall, of the cold
    users' impressions and of the others, with the counts. The distributed validation
    (:class:`trainer.dist_inference.DistValidator`) calls it on the gathered rows."""
    return {"auc": roc_auc(labels, scores), "auc_cold": roc_auc(labels[cold], scores[cold]),
            "auc_warm": roc_auc(labels[~cold], scores[~cold]), "events": int(labels.size),
            "cold_events": int(cold.sum()), "cold_start_max_interactions": cold_start_max_interactions}


def train_epoch(engine: ClickEngine, batches: Sequence[Tensor], generator: torch.Generator,
                prefetch_depth: int = 0, sampling_threads: int = 1,
                progress: Callable[[int, list[float]], None] | None = None) -> list[float]:
    """One optimisation step per batch of impression indices; returns each step's loss.

    The batches are prepared (negatives, neighbours, inputs: :func:`prepare_step`) in
    order from ``generator``, up to ``prefetch_depth`` ahead on a background thread with
    ``sampling_threads`` torch threads (:class:`~trainer.prefetch.Prefetcher`; 0: one
    after another on this thread), all of them before this returns, so the caller's next
    draws from ``generator`` come where the plain loop's would: the losses are the same
    for every depth. The time the steps waited for a batch adds to
    ``engine.times.other["idle"]``.

    Args:
        engine: The worker's engine.
        batches: int64 impression indices, one tensor per step.
        generator: Random source of the negatives and neighbour draws.
        prefetch_depth: ``resources.prefetch_depth``.
        sampling_threads: torch threads of the prefetch thread.
        progress: Called after every step with its index and the losses so far.
    """
    losses: list[float] = []
    with Prefetcher(batches, partial(prepare_step, engine, generator=generator),
                    prefetch_depth, name="train-prefetch",
                    on_start=partial(torch.set_num_threads, sampling_threads)) as prepared:
        for step, batch in enumerate(prepared):
            losses.append(engine.train_prepared(batch))
            if progress is not None:
                progress(step, losses)
    engine.times.other["idle"] = engine.times.other.get("idle", 0.0) + prepared.waited_s
    return losses


def train_single(cfg: Config, graph_url: str | None = None, out_url: str | None = None,
                 log=print) -> dict[str, Any]:
    """Train in this process; returns the metrics written to ``metrics.json``."""
    t = cfg.train
    torch.manual_seed(t.seed)
    r = cfg.resources
    compute_threads, sampling_threads = split_threads(r.threads_per_worker, r.prefetch_depth)
    torch.set_num_threads(compute_threads)
    device = "cuda" if r.device == "cuda" or (r.device == "auto" and torch.cuda.is_available()) else "cpu"
    graph_url = graph_url or cfg.paths.stage("graph")
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    out_url = out_url or fs.join(cfg.paths.stage("train"), run_id)

    t0 = time.perf_counter()
    windows = split_windows(open_graph_store(graph_url).days, t.val_days, t.test_days)
    data = load_graph_data(graph_url, fit_before=windows.val_start)
    load_s = time.perf_counter() - t0
    generator = torch.Generator().manual_seed(t.seed)
    train_events = window_events(data.impressions, windows, "train")
    val_events = subsample(window_events(data.impressions, windows, "val"), t.max_eval_events,
                            torch.Generator().manual_seed(t.seed + 1))
    log(f"train: {len(data.impressions):,} impressions over {len(data.days)} days; "
        f"train {train_events.numel():,}, validation {val_events.numel():,} (loaded in {load_s:.1f} s)")

    baseline_rows = subsample(train_events, 200_000, torch.Generator().manual_seed(t.seed + 2))
    val_labels = data.impressions.clicked[val_events].numpy()
    lr_auc = roc_auc(val_labels, logistic_baseline(data, baseline_rows, val_events))

    engine = ClickEngine(data, t, device)
    epochs, trained_events, train_time, step_losses = [], 0, 0.0, []
    rate_progress = None
    for epoch in range(t.epochs):
        epoch_events = subsample(train_events, t.max_train_events, generator)
        epoch_events = epoch_events[torch.randperm(epoch_events.numel(), generator=generator)]
        start = time.perf_counter()
        batches = torch.split(epoch_events, t.batch_size)
        if rate_progress is None:   # every epoch has the same number of steps
            rate_progress = RateProgress(t.epochs * len(batches), "steps", log,
                                         cfg.resources.progress_every_s)

        def progress(step: int, losses: list[float], epoch: int = epoch, start: float = start,
                     steps: int = len(batches), rate_progress: RateProgress = rate_progress) -> None:
            if rate_progress.due():
                rate = (step + 1) * t.batch_size / max(time.perf_counter() - start, 1e-9)
                rate_progress.update(epoch * steps + step + 1,
                                     prefix=f"  epoch {epoch + 1}/{t.epochs} step {step + 1}/{steps} "
                                            f"loss {np.mean(losses[-50:]):.4f} {rate:,.0f} events/s | ")

        losses = train_epoch(engine, batches, generator, r.prefetch_depth, sampling_threads,
                             progress)
        elapsed = time.perf_counter() - start
        train_time += elapsed
        step_losses += losses
        trained_events += epoch_events.numel()
        val = evaluate_window(engine, val_events, cfg.evaluate.cold_start_max_interactions,
                              torch.Generator().manual_seed(t.seed))
        epochs.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val": val,
                       "val_auc": val["auc"], "events": int(epoch_events.numel()),
                       "events_per_s": epoch_events.numel() / elapsed})
        log(f"  epoch {epoch + 1}: val ROC-AUC {val['auc']:.4f} (cold {val['auc_cold']}, "
            f"warm {val['auc_warm']}); logistic regression on per-row features {lr_auc:.4f}")

    metrics = {
        "run": run_id, "workers": 1, "device": device,
        "val_auc": epochs[-1]["val"]["auc"], "val_auc_per_epoch": [e["val"]["auc"] for e in epochs],
        "val_auc_logistic_baseline": lr_auc, "val_auc_cold": epochs[-1]["val"]["auc_cold"],
        "val_auc_warm": epochs[-1]["val"]["auc_warm"],
        "events_per_s": trained_events / train_time, "train_seconds": train_time,
        "time_split": engine.times.as_dict(), "epochs": epochs, "loss_per_step": step_losses,
        "windows": windows.days, "window_starts": {"val": windows.val_start,
                                                   "test": windows.test_start},
        "graph": data.store_version,
        "last_event_time": int(data.impressions.time[train_events].max()),
    }
    fs.filesystem(out_url)[0].makedirs(fs.filesystem(out_url)[1], exist_ok=True)
    fs.write_text(fs.join(out_url, "_config.yaml"), cfg.to_yaml())
    checkpoint_url = fs.join(out_url, "checkpoint")
    store_manifest = open_graph_store(graph_url).manifest
    save_checkpoint(checkpoint_url, engine, metrics, cfg, store_manifest, t.epochs,
                    sum(math.ceil(e["events"] / t.batch_size) for e in epochs))
    metrics["checkpoint"] = checkpoint_url
    fs.write_json(fs.join(out_url, "metrics.json"), metrics)
    metrics["out"] = out_url  # the run folder, for the caller (not in metrics.json)
    ckpt.write_latest(cfg.paths.stage("train"), checkpoint_url, ckpt.read_meta(checkpoint_url))
    log(f"train: validation ROC-AUC {metrics['val_auc']:.4f} vs logistic regression {lr_auc:.4f}; "
        f"{metrics['events_per_s']:,.0f} training events/s -> {out_url}")
    return metrics


def save_checkpoint(url: str, engine: ClickEngine, metrics: dict[str, Any], cfg: Config,
                    store_manifest: dict[str, Any], epochs: int, steps: int) -> None:
    """A checkpoint folder in the distributed trainer's format (``trainer/checkpoint.py``,
    world size 1), so evaluate, export and ``--continue`` read either kind."""
    import dataclasses
    import tempfile

    from trainer import checkpoint as ckpt

    meta = {"format_version": ckpt.FORMAT_VERSION, "epoch": epochs, "step": 0,
            "global_step": steps, "epoch_done": True, "world_size": 1,
            "last_event_time": metrics["last_event_time"],
            "graph_version": {"created_at": store_manifest.get("created_at"),
                              "config_hash": store_manifest.get("config_hash"),
                              "days": sorted(store_manifest.get("days", []))},
            "id_map_version": ckpt.id_map_version(store_manifest), "vocab": engine.data.vocab,
            "history": metrics["epochs"], "since_time": None, "run": metrics["run"],
            "model_config": dataclasses.asdict(cfg.train.model)}
    body = {"format_version": ckpt.FORMAT_VERSION,
            "model": {k: v.detach().cpu() for k, v in engine.model.state_dict().items()},
            "optimizer": engine.optimizer.state_dict(), "scheduler": None, "generators": [],
            "epoch": epochs, "step": 0, "global_step": steps}
    filesystem, path = fs.filesystem(url)
    if fs.is_local(url):
        ckpt.write_checkpoint_dir(path, body, meta)
        return
    with tempfile.TemporaryDirectory() as folder:
        ckpt.write_checkpoint_dir(folder, body, meta)
        filesystem.makedirs(path, exist_ok=True)
        for name in (ckpt.CHECKPOINT_FILE, ckpt.META_FILE):  # meta.json last: it marks it complete
            filesystem.put_file(f"{folder}/{name}", f"{path}/{name}")
