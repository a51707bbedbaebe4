"""``clickgraph evaluate``: the GNN against the tabular baseline on the test window.

Three models score the test window's impressions (the last ``train.test_days`` days):

* ``gnn``: the trained click model itself, each impression scored at its own time.
* ``baseline``: what a team has without a graph, gradient-boosted trees
  (``sklearn.ensemble.HistGradientBoostingClassifier``) on user and content attributes,
  context (feed position, hour, weekday), **as-of counts and click rates** of the user and
  the content, and the content's links (brands, categories, articles) as as-of click
  rates of everything sharing the link (:mod:`trainer.tabular`), all strictly before the
  impression.
* ``baseline_plus_embeddings``: the same trees with the GNN's user and content
  embeddings added, as a platform would join them from yesterday's export: for an
  impression at time ``t``, the embeddings as of 00:00 UTC of ``t``'s own UTC day
  (:func:`export_cutoff`; nodes created on that day have none: missing values, as in
  production), plus their dot product. The day folder the impression was filed under
  plays no part (docs/architecture.md, "Event time").

Both tree models are fitted on the validation window's impressions, which the GNN never
trained on (embeddings of rows the GNN fitted would look better than they are), and scored
on the test window. Windows are cut by event time (:func:`clickgraph.core.timeline.split_windows`).
Every count, embedding and neighbour used for an impression at time ``t`` comes from
strictly before ``t`` (day-start embeddings: before ``t``'s day's 00:00).

Cold start: impressions whose user had at most ``evaluate.cold_start_max_interactions``
interactions (impressions, clicks, views, brand likes) strictly before the impression
(:mod:`trainer.asof`, the same meaning as training's ``val_auc_cold``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clickgraph.core import fs
from clickgraph.core.config import Config
from clickgraph.core.errors import InputError
from clickgraph.core.progress import RateProgress
from clickgraph.core.timeline import SECONDS_PER_DAY as DAY
from clickgraph.core.timeline import split_windows, utc_day
from trainer.asof import AsOfCounts
from trainer.data import window_events
from trainer.inference import TrainedModel, embed, existing_nodes, load_trained
from trainer.local import roc_auc, subsample
from trainer.tabular import baseline_features

MODELS = ("gnn", "baseline", "baseline_plus_embeddings")
PAST_BUCKETS = ((0, 0), (1, 2), (3, 5), (6, 10), (11, 20), (21, 50), (51, None))
FORMAT_VERSION = 1


def model_counts(model: TrainedModel) -> AsOfCounts:
    """As-of counts on the model's whole graph."""
    return AsOfCounts(model.engine.sampler, model.engine.graph.edge_types)


def export_cutoff(time: Tensor) -> Tensor:
    """The export an impression at ``time`` (seconds) joins: the one as of 00:00 UTC of
    the impression's own UTC day, always at or before ``time``."""
    return time - time % DAY


def day_start_embeddings(model: TrainedModel, events: Tensor, batch_size: int, seed: int,
                         log=None, log_every_s: float = 30.0) -> np.ndarray:
    """User and content embeddings of each impression as of :func:`export_cutoff` of its
    own time (NaN for nodes not known before that cutoff), plus their dot product:
    ``[N, 2 * dim + 1]``. ``log`` gets a progress line every ``log_every_s`` seconds."""
    data = model.data
    imp = data.impressions
    dim = model.engine.model.cfg.hidden_dim
    out = np.full((events.numel(), 2 * dim + 1), np.nan, dtype=np.float32)
    cutoffs = export_cutoff(imp.time[events])
    progress, done = RateProgress(events.numel(), "impressions", log, log_every_s), 0
    for cutoff in torch.unique(cutoffs).tolist():
        rows = torch.nonzero(cutoffs == cutoff).view(-1)
        states = []
        for offset, (node_type, node) in enumerate((("user", imp.user[events[rows]]),
                                                   ("content", imp.content[events[rows]]))):
            unique, inverse = torch.unique(node, return_inverse=True)
            vectors = embed(model, node_type, unique, cutoff, batch_size, seed).numpy()
            known = torch.isin(unique, existing_nodes(data, node_type, cutoff))
            vectors[~known.numpy()] = np.nan  # not in yesterday's export
            block = vectors[inverse.numpy()]
            out[rows.numpy(), offset * dim:(offset + 1) * dim] = block
            states.append(block)
        out[rows.numpy(), 2 * dim] = (states[0] * states[1]).sum(axis=1)
        done += rows.numel()
        progress.update(done, prefix="  day-start embeddings of ")
    return out


def fit_trees(x: np.ndarray, y: np.ndarray, categorical: list[bool], cfg: Config):
    from sklearn.ensemble import HistGradientBoostingClassifier

    e = cfg.evaluate
    model = HistGradientBoostingClassifier(
        max_iter=e.gbdt_max_iter, learning_rate=e.gbdt_learning_rate,
        max_leaf_nodes=e.gbdt_max_leaf_nodes, categorical_features=np.array(categorical),
        early_stopping=True, validation_fraction=0.1, n_iter_no_change=20, random_state=e.seed)
    return model.fit(x, y)


def score_trees(cfg: Config, fit: tuple[np.ndarray, np.ndarray, np.ndarray],
                test: tuple[np.ndarray, np.ndarray], categorical: list[bool]
                ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The two tree models fitted on the validation sample and their test scores: one
    place for the one-process and the distributed evaluation (:mod:`trainer.dist_inference`).

    Args:
        cfg: The config (``evaluate.gbdt_*``, ``evaluate.embedding_features``, ``seed``).
        fit: ``(baseline features [F, K], day-start embeddings [F, 2 * dim + 1], labels [F])``
            of the validation sample (:func:`trainer.tabular.baseline_features`,
            :func:`day_start_embeddings`).
        test: ``(baseline features [N, K], day-start embeddings [N, 2 * dim + 1])`` of
            the test sample.
        categorical: Which baseline columns are categorical codes.

    Returns:
        ``(scores, iterations)``: ``baseline`` and ``baseline_plus_embeddings`` click
        probabilities ``[N]``, and each model's boosting iterations.
    """
    (x_fit, emb_fit, labels_fit), (x_test, emb_test) = fit, test
    if cfg.evaluate.embedding_features == "dot":  # the pair score alone: [N, 1]
        emb_fit, emb_test = emb_fit[:, -1:], emb_test[:, -1:]
    trees = fit_trees(x_fit, labels_fit, categorical, cfg)
    trees_emb = fit_trees(np.hstack([x_fit, emb_fit]), labels_fit,
                          categorical + [False] * emb_fit.shape[1], cfg)
    scores = {"baseline": trees.predict_proba(x_test)[:, 1],
              "baseline_plus_embeddings": trees_emb.predict_proba(
                  np.hstack([x_test, emb_test]))[:, 1]}
    return scores, {"baseline_iterations": int(trees.n_iter_),
                    "baseline_plus_embeddings_iterations": int(trees_emb.n_iter_)}


def aucs(labels: np.ndarray, scores: dict[str, np.ndarray], mask: np.ndarray | None = None
         ) -> dict[str, float | None]:
    """ROC-AUC of each of :data:`MODELS` (``None``: one class only, or a model not scored)."""
    if mask is not None:
        labels = labels[mask]
        scores = {name: s[mask] for name, s in scores.items()}
    return {name: roc_auc(labels, scores[name]) if name in scores else None for name in MODELS}


def _gap(warm: dict, cold: dict) -> dict[str, float | None]:
    return {name: None if warm[name] is None or cold[name] is None else warm[name] - cold[name]
            for name in MODELS}


def run_evaluation(cfg: Config, graph_url: str | None = None, checkpoint: str | None = None,
                   out_url: str | None = None, log=print) -> dict[str, Any]:
    """Evaluate the three models on the test window; write ``evaluation.json`` and
    ``scores.parquet`` to ``out_url`` (default ``<paths.eval>/<last day>``).

    Returns:
        The evaluation (``evaluation.json``) plus ``out`` and ``scores`` URLs.
    """
    t, e = cfg.train, cfg.evaluate
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    model = load_trained(cfg, graph_url, checkpoint)
    data = model.data
    windows = split_windows(data.days, t.val_days, t.test_days)
    trained_until = model.meta.get("last_event_time")
    test_events = subsample(window_events(data.impressions, windows, "test"), e.max_test_events,
                             torch.Generator().manual_seed(e.seed))
    fit_events = subsample(window_events(data.impressions, windows, "val"), e.max_fit_events,
                            torch.Generator().manual_seed(e.seed + 1))
    if trained_until is not None and fit_events.numel() and \
            int(data.impressions.time[fit_events].min()) <= int(trained_until):
        log(f"evaluate: note: the model trained on events up to {trained_until}, inside the "
            "validation window the trees are fitted on")
    if test_events.numel() == 0 or fit_events.numel() == 0:
        raise InputError(f"the graph's test window {windows.days['test']} or validation "
                         f"window {windows.days['val']} has no impressions")
    seconds["load"] = time.perf_counter() - started
    log(f"evaluate: {model.checkpoint}; fitting the baseline on {fit_events.numel():,} "
        f"validation impressions, scoring {test_events.numel():,} test impressions "
        f"({', '.join(windows.days['test'])})")

    mark = time.perf_counter()
    counts = model_counts(model)
    x_fit, names, categorical = baseline_features(data, counts, fit_events)
    x_test, _, _ = baseline_features(data, counts, test_events)
    seconds["features"] = time.perf_counter() - mark
    mark = time.perf_counter()
    every_s = cfg.resources.progress_every_s
    emb_fit = day_start_embeddings(model, fit_events, e.embedding_batch_size, e.seed, log, every_s)
    emb_test = day_start_embeddings(model, test_events, e.embedding_batch_size, e.seed, log, every_s)
    seconds["embeddings"] = time.perf_counter() - mark

    labels_fit = data.impressions.clicked[fit_events].numpy()
    labels = data.impressions.clicked[test_events].numpy()
    mark = time.perf_counter()
    tree_scores, iterations = score_trees(cfg, (x_fit, emb_fit, labels_fit), (x_test, emb_test),
                                          categorical)
    seconds["fit_trees"] = time.perf_counter() - mark
    mark = time.perf_counter()
    scores = {"gnn": model.engine.score(test_events, torch.Generator().manual_seed(e.seed),
                                        log=log, log_every_s=every_s), **tree_scores}
    seconds["score"] = time.perf_counter() - mark

    imp = data.impressions
    past = counts.interactions(imp.user[test_events], imp.time[test_events]).numpy()
    result, columns = window_metrics(labels, scores, past, imp.time[test_events].numpy(),
                                     imp.user[test_events].numpy(),
                                     imp.content[test_events].numpy(),
                                     e.cold_start_max_interactions)
    result.update({
        "test_days": windows.days["test"], "test_start": windows.test_start,
        "fit_days": windows.days["val"], "fit_start": windows.val_start,
        "fit_events": int(fit_events.numel()),
        "baseline_features": names, "embedding_dim": int(model.engine.model.cfg.hidden_dim),
        "embedding_features": e.embedding_features,
        "model": model.version, "graph": data.store_version,
        "trees": iterations,
    })
    seconds["total"] = time.perf_counter() - started
    result["seconds"] = {k: round(v, 2) for k, v in seconds.items()}

    out_url = out_url or fs.join(cfg.paths.stage("eval"), data.days[-1])
    _write(out_url, result, columns)
    result["out"] = out_url
    result["scores"] = fs.join(out_url, "scores.parquet")
    log(summary_line(result) + f" -> {out_url}")
    return result


def window_metrics(labels: np.ndarray, scores: dict[str, np.ndarray], past: np.ndarray,
                   time: np.ndarray, user: np.ndarray, content: np.ndarray,
                   cold_start_max_interactions: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The evaluation's figures of scored impressions, each array ``[N]`` in one order.

    One place for the one-process and the distributed evaluation (:mod:`trainer.dist_inference`
    gathers every worker's rows first: the AUCs are those of the merged arrays, never an
    average of per-worker AUCs).

    Args:
        labels: 1 for a click, else 0.
        scores: Model name (of :data:`MODELS`) -> click probabilities; models absent
            get ``None`` AUCs.
        past: The user's interactions strictly before the impression (:mod:`trainer.asof`).
        time: The impression's time, seconds.
        user: Its user's dense id.
        content: Its content's dense id.
        cold_start_max_interactions: ``evaluate.cold_start_max_interactions``.

    Returns:
        ``(figures, columns)``: the AUCs overall, cold, warm, per day and by past
        interactions with the counts; and the columns of ``scores.parquet`` (``day``,
        ``time``, ``user``, ``content``, ``label``, ``past_interactions``, ``cold``, then
        one per model scored).
    """
    cold = past <= cold_start_max_interactions
    day_number = np.floor_divide(time, DAY)
    day_names = {n: utc_day(n * DAY) for n in np.unique(day_number).tolist()}
    day = np.array([day_names[n] for n in day_number.tolist()], dtype=object)
    result: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "auc": aucs(labels, scores), "auc_cold": aucs(labels, scores, cold),
        "auc_warm": aucs(labels, scores, ~cold),
    }
    result["warm_minus_cold"] = _gap(result["auc_warm"], result["auc_cold"])
    result["per_day"] = [  # by the impression's own UTC day
        {"day": d, "events": int((day == d).sum()),
         "auc": aucs(labels, scores, day == d), "auc_cold": aucs(labels, scores, (day == d) & cold),
         "auc_warm": aucs(labels, scores, (day == d) & ~cold)} for d in sorted(set(day.tolist()))]
    top = past.max() if past.size else 0
    result["auc_by_past_interactions"] = [
        {"bucket": f"{lo}" if lo == hi else (f"{lo}-{hi}" if hi is not None else f">={lo}"),
         "lo": lo, "hi": hi,
         "events": int(((past >= lo) & (past <= (hi if hi is not None else top))).sum()),
         "auc": aucs(labels, scores, (past >= lo) & (past <= (hi if hi is not None else top)))}
        for lo, hi in PAST_BUCKETS]
    result.update({"events": int(labels.size), "cold_events": int(cold.sum()),
                   "click_rate": float(labels.mean()) if labels.size else None,
                   "cold_start_max_interactions": cold_start_max_interactions})
    columns = {"day": day, "time": time, "user": user, "content": content, "label": labels,
               "past_interactions": past, "cold": cold, **scores}
    return result, columns


def _write(out_url: str, result: dict[str, Any], columns: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with fs.staged_output(out_url) as staging:
        filesystem, path = fs.filesystem(staging)
        filesystem.makedirs(path, exist_ok=True)
        with filesystem.open(f"{path}/scores.parquet", "wb") as handle:
            pq.write_table(pa.table(columns), handle)
        fs.write_json(fs.join(staging, "evaluation.json"), result)
        fs.write_json(fs.join(staging, fs.MANIFEST_NAME),
                      {"kind": "evaluation", "format_version": FORMAT_VERSION,
                       "files": ["evaluation.json", "scores.parquet"], "events": result["events"],
                       "test_days": result["test_days"]})


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summary_line(result: dict[str, Any]) -> str:
    auc, gap = result["auc"], result["warm_minus_cold"]
    return ("evaluate: ROC-AUC gnn " + _fmt(auc["gnn"]) + ", baseline " + _fmt(auc["baseline"])
            + ", baseline+embeddings " + _fmt(auc["baseline_plus_embeddings"])
            + "; warm-cold gap gnn " + _fmt(gap["gnn"]) + ", baseline " + _fmt(gap["baseline"])
            + f" ({result['events']:,} test impressions, {result['cold_events']:,} cold)")
