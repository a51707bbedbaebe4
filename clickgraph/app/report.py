"""The pipeline report: one self-contained HTML page with PNG plots beside it.

:func:`write_report` turns the ``results`` that ``clickgraph pipeline``
(:func:`clickgraph.app.pipeline.run_pipeline`) collects into ``<out>/index.html``, one PNG per
figure (relative links, so the folder can be copied or served anywhere), the results
themselves as ``pipeline.json`` and ``_MANIFEST.json`` (kind ``report``). Everything is
rendered into a local temporary folder first and swapped into place by
:func:`clickgraph.core.fs.staged_output`, so a failed render leaves the previous report intact.

A section whose data the results lack (no retrain run, an evaluation without a scores
file) is still on the page, saying what is missing and why, instead of failing the report.

Plots use matplotlib's object API (``Figure`` + Agg canvas), never ``pyplot``, so no global
backend or figure state is touched.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import os
import tempfile
from collections.abc import Callable
from typing import Any

from clickgraph import __version__
from clickgraph.core import fs

REPORT_KIND = "report"
REPORT_FORMAT_VERSION = 1

# Evaluation model keys (trainer/evaluate.py) and how the page names them.
MODELS = ("gnn", "baseline", "baseline_plus_embeddings")
MODEL_LABELS = {"gnn": "temporal GNN", "baseline": "GBDT baseline",
                "baseline_plus_embeddings": "GBDT + GNN embeddings"}
MODEL_COLORS = {"gnn": "#1f77b4", "baseline": "#7f7f7f", "baseline_plus_embeddings": "#ff7f0e"}
# Model runs of a pipeline, in order: trained on the first days, continued on the added day,
# retrained from scratch on all days.
RUNS = ("day1", "continue", "retrain")
RUN_LABELS = {"day1": "day 1 (first days)", "continue": "day 2, continued",
              "retrain": "day 2, retrained from scratch"}
# Data runs: the graph store and shard set before and after the added day.
DATA_RUNS = ("day1", "day2")


class _Missing(Exception):
    """A figure's data is absent from the results; the message says what is missing."""


# --------------------------------------------------------------------------- formatting


def fmt(value: Any, spec: str = ".4f") -> str:
    """``value`` formatted with ``spec``; ``n/a`` for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def _get(data: Any, *keys: Any) -> Any:
    """``data[k1][k2]...`` or None where any level is missing."""
    for key in keys:
        if isinstance(data, dict):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def scored(evaluation: dict[str, Any] | None, model: str) -> bool:
    """Whether ``evaluation`` scored ``model``: a distributed evaluation names the models
    it scored (``models_scored``) and leaves the others out; an evaluation that names
    none scored all of :data:`MODELS`."""
    named = _get(evaluation, "models_scored")
    return model in named if isinstance(named, list) else True


def model_figure(evaluation: dict[str, Any] | None, model: str, *keys: Any,
                 spec: str = ".4f") -> str:
    """``evaluation[key1][model][key2]...`` formatted (:func:`fmt`), or ``not scored`` for
    a model the evaluation did not score."""
    if not scored(evaluation, model):
        return "not scored"
    return fmt(_get(evaluation, keys[0], model, *keys[1:]), spec)


def _gap(evaluation: dict[str, Any] | None, model: str = "gnn") -> float | None:
    """Warm minus cold test AUC of ``model`` (positive: cold-start users score worse)."""
    warm, cold = _get(evaluation, "auc_warm", model), _get(evaluation, "auc_cold", model)
    return None if warm is None or cold is None else warm - cold


def stage_figures(results: dict[str, Any], stage: str, run: str | None) -> str:
    """The key figures of one stage record, as one line for the summary table.

    Args:
        results: The pipeline results (see :func:`write_report`).
        stage: Stage name (``generate``, ``build-graph``, ``partition``, ``train``,
            ``evaluate``, ``export``).
        run: The record's run label (``day1``, ``day2``, ``continue``, ``retrain``).

    Returns:
        A short human-readable summary, or ``""`` when the stage left no results.
    """
    if stage == "generate":
        gen = results.get("generate") or {}
        if not gen:
            return ""
        return f"{fmt(gen.get('events_total'), ',')} events over {len(gen.get('days', []))} days"
    if stage == "build-graph":
        graph = _get(results, "graph", run)
        if not graph:
            return ""
        nodes = sum((graph.get("node_counts") or {}).values())
        edges = sum((graph.get("edge_counts") or {}).values())
        days = graph.get("built_days") or []
        return (f"{fmt(nodes, ',')} nodes, {fmt(edges, ',')} edges, "
                f"{fmt(graph.get('rows_quarantined'), ',')} rows quarantined; built "
                f"{len(days)} day(s)")
    if stage == "partition":
        part = _get(results, "partition", run)
        if not part:
            return ""
        metis = _get(part, "quality", "metis", "edge_cut_fraction", "unweighted")
        rand = _get(part, "quality", "random", "edge_cut_fraction", "unweighted")
        text = (f"edge cut {'placement' if part.get('method') == 'placement' else 'METIS'} "
                f"{fmt(metis, '.3f')} vs random {fmt(rand, '.3f')}; remote 1-hop "
                f"{fmt(_get(part, 'quality', 'metis', 'remote_fraction_1hop'), '.3f')} vs "
                f"{fmt(_get(part, 'quality', 'random', 'remote_fraction_1hop'), '.3f')}")
        placed = _get(part, "placement", "new_nodes")
        if placed is not None:
            text += (f"; {fmt(placed, ',')} new nodes placed, cut drift "
                     f"{fmt(_get(part, 'placement', 'drift', 'relative'), '+.1%')}")
        return text
    if stage == "train":
        train = _get(results, "train", run)
        if not train:
            return ""
        text = (f"val AUC {fmt(train.get('val_auc'))}; {fmt(train.get('events_per_s'), ',.0f')} "
                f"events/s; {fmt(train.get('train_seconds'), '.1f')} s training")
        if train.get("since_time") is not None:
            counts = train.get("per_rank_events") or []
            new = sum(c.get("new", 0) for c in counts)
            replay = sum(c.get("replay", 0) for c in counts)
            text += f"; continued: {new:,} new + {replay:,} replayed impressions"
        return text
    if stage == "evaluate":
        ev = _get(results, "evaluate", run)
        if not ev:
            return ""
        aucs = " / ".join(model_figure(ev, m, "auc") for m in MODELS)
        return (f"test AUC GNN / GBDT / GBDT+emb {aucs}; cold/warm gap (GNN) "
                f"{fmt(_gap(ev), '+.4f')}; {fmt(ev.get('events'), ',')} events "
                f"({fmt(ev.get('cold_events'), ',')} cold)")
    if stage == "export":
        ex = _get(results, "export", run)
        if not ex:
            return ""
        rec = ex.get("recommendations") or {}
        drift = ex.get("drift")
        drift_text = ("none (first export)" if not drift else
                      ", ".join(f"{t} {fmt(_get(d, 'mean_cosine'), '.3f')}"
                                for t, d in sorted(drift.items())
                                if isinstance(d, dict) and "mean_cosine" in d))
        text = (f"drift (mean cosine) {drift_text}; video share top-k "
                f"{fmt(rec.get('video_share_topk'), '.3f')} vs catalogue "
                f"{fmt(rec.get('video_share_catalogue'), '.3f')}; coverage "
                f"{fmt(rec.get('coverage'), '.3f')}")
        steered = ex.get("recommendations_controlled")
        if steered:
            ratio = (steered.get("against_uncontrolled") or {}).get("predicted_ctr_ratio")
            text += (f"; {_lists_text(rec, 'uncontrolled')}; {_lists_text(steered, 'controlled')}, "
                     f"predicted CTR x{fmt(ratio, '.3f')}")
        return text
    if stage == "report":
        return "index.html, plots, pipeline.json"
    return ""


def _lists_text(rec: dict[str, Any], label: str) -> str:
    """One recommendation list set's exposure figures (export manifest controls)."""
    return (f"{label}: video {fmt(rec.get('video_share_topk'), '.3f')}, coverage "
            f"{fmt(rec.get('coverage'), '.3f')}, diversity {fmt(rec.get('intra_list_diversity'), '.3f')} "
            f"(catalogue {fmt(rec.get('catalogue_diversity'), '.3f')}), predicted CTR "
            f"{fmt(rec.get('mean_score'), '.4f')}")


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows ``(step, stage, seconds, key figures)`` of the summary table, in stage order.

    The last row is the total. Used by the printed summary and by the page.
    """
    rows = []
    stages = results.get("stages") or []
    total = len(stages)
    for record in stages:
        name = record["stage"] + (f" ({record['run']})" if record.get("run") else "")
        step = f"{record.get('step', '?')}/{record.get('of', total)}"
        figures = stage_figures(results, record["stage"], record.get("run"))
        if record.get("status") == "running":
            figures = "in progress when this summary was written"
        elif record.get("status", "ok") != "ok":
            figures = f"{record['status']}: {record.get('error', '')}".strip()
        rows.append((step, name, fmt(record.get("seconds"), ".1f"), figures))
    rows.append(("", "total", fmt(results.get("total_seconds"), ".1f"), ""))
    return rows


def format_summary(results: dict[str, Any]) -> str:
    """The summary table as fixed-width text, for the terminal."""
    rows = [("step", "stage", "seconds", "key figures"), *summary_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}" for a, b, c, d in rows]
    lines.insert(1, "-" * min(110, max(len(line) for line in lines)))
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, folder: str, name: str) -> str:
    figure.savefig(os.path.join(folder, name), format="png")
    return name


def _read_scores(url: str):
    """The scores table of one evaluation: the label and the scores of those of
    :data:`MODELS` it holds (a distributed evaluation scores the GNN alone)."""
    import pyarrow.parquet as pq

    if not fs.exists(url):
        raise _Missing(f"scores file {url} does not exist")
    filesystem, path = fs.filesystem(url)
    names = pq.read_schema(path, filesystem=filesystem).names
    table = pq.read_table(path, filesystem=filesystem,
                          columns=["label", *(m for m in MODELS if m in names)])
    return table.to_pandas()


def plot_roc(results: dict[str, Any], folder: str) -> tuple[str, str]:
    """ROC curves of the three models on each evaluated run's test window."""
    import numpy as np
    from sklearn.metrics import roc_curve

    evaluations = [(run, results["evaluate"][run]) for run in RUNS
                   if _get(results, "evaluate", run)]
    if not evaluations:
        raise _Missing("no evaluation in the results")
    panels, skipped = [], []
    for run, ev in evaluations:
        url = ev.get("scores")
        if not url:
            skipped.append(f"{RUN_LABELS[run]}: the evaluation names no scores file")
            continue
        try:
            panels.append((run, ev, _read_scores(url)))
        except _Missing as missing:
            skipped.append(f"{RUN_LABELS[run]}: {missing}")
    if not panels:
        raise _Missing("; ".join(skipped))
    figure = _new_figure(4.2 * len(panels), 4.2)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (run, ev, scores) in zip(axes, panels):
        labels = scores["label"].to_numpy()
        for model in (m for m in MODELS if m in scores.columns):
            values = scores[model].to_numpy(dtype=float)
            keep = ~np.isnan(values)
            if len(np.unique(labels[keep])) < 2:
                continue
            fpr, tpr, _ = roc_curve(labels[keep], values[keep])
            ax.plot(fpr, tpr, color=MODEL_COLORS[model],
                    label=f"{MODEL_LABELS[model]} ({fmt(_get(ev, 'auc', model), '.3f')})")
        ax.plot([0, 1], [0, 1], color="#cccccc", linestyle=":", linewidth=1)
        days = ev.get("test_days") or []
        ax.set_title(f"{RUN_LABELS[run]}\ntest {days[0]}..{days[-1]}" if days else RUN_LABELS[run],
                     fontsize=10)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(loc="lower right", fontsize=8)
    note = ("Skipped: " + "; ".join(skipped) + ".") if skipped else ""
    return _save(figure, folder, "roc.png"), note


def plot_auc_by_past_interactions(results: dict[str, Any], folder: str) -> tuple[str, str]:
    """Test AUC of the three models by the user's number of past interactions."""
    import numpy as np

    runs = [run for run in RUNS if _get(results, "evaluate", run, "auc_by_past_interactions")]
    if not runs:
        raise _Missing("no evaluation reports AUC by past interactions")
    figure = _new_figure(max(5.0, 4.6 * len(runs)), 4.0)
    axes = figure.subplots(1, len(runs), squeeze=False, sharey=True)[0]
    for ax, run in zip(axes, runs):
        buckets = results["evaluate"][run]["auc_by_past_interactions"]
        x = np.arange(len(buckets))
        width = 0.8 / len(MODELS)
        for i, model in enumerate(MODELS):
            if not scored(results["evaluate"][run], model):
                continue
            values = [_get(b, "auc", model) for b in buckets]
            heights = [np.nan if v is None else v for v in values]
            ax.bar(x + (i - 1) * width, heights, width, color=MODEL_COLORS[model],
                   label=MODEL_LABELS[model])
        ax.set_xticks(x, [f"{b['bucket']}\n({b.get('events', 0):,})" for b in buckets], fontsize=8)
        ax.set_title(RUN_LABELS[run], fontsize=10)
        ax.set_xlabel("past interactions of the user (test events)")
        lowest = min((v for b in buckets for m in MODELS
                      if (v := _get(b, "auc", m)) is not None), default=0.5)
        ax.set_ylim(min(0.4, lowest - 0.05), 1.0)
        ax.axhline(0.5, color="#cccccc", linestyle=":", linewidth=1)
    axes[0].set_ylabel("test ROC-AUC")
    axes[0].legend(loc="upper left", fontsize=8)
    return _save(figure, folder, "auc_by_past_interactions.png"), ""


def plot_training(results: dict[str, Any], folder: str) -> tuple[str, str]:
    """Loss and validation AUC per epoch of every training run."""
    runs = [run for run in RUNS if _get(results, "train", run, "epochs")]
    if not runs:
        raise _Missing("no training run with per-epoch history")
    figure = _new_figure(9.0, 3.8)
    loss_ax, auc_ax = figure.subplots(1, 2)
    colors = {"day1": "#1f77b4", "continue": "#2ca02c", "retrain": "#d62728"}
    day1_epochs = len(_get(results, "train", "day1", "epochs") or [])
    for run in runs:
        epochs = results["train"][run]["epochs"]
        # the continued run carries on from the day-1 model: its epochs follow day 1's
        offset = day1_epochs if run == "continue" else 0
        numbers = [offset + e.get("epoch", i + 1) for i, e in enumerate(epochs)]
        losses = [e.get("loss") for e in epochs]
        aucs = [e.get("val_auc") for e in epochs]
        loss_ax.plot(numbers, [math.nan if v is None else v for v in losses], marker="o",
                     color=colors[run], label=RUN_LABELS[run])
        auc_ax.plot(numbers, [math.nan if v is None else v for v in aucs], marker="o",
                    color=colors[run], label=RUN_LABELS[run])
    loss_ax.set_title("training loss (epoch mean)", fontsize=10)
    auc_ax.set_title("validation ROC-AUC (GNN)", fontsize=10)
    for ax in (loss_ax, auc_ax):
        ax.set_xlabel("epoch (the continued run's follow day 1's)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    missing = [RUN_LABELS[r] for r in RUNS if r not in runs]
    note = ("No training history for: " + ", ".join(missing) + ".") if missing else ""
    return _save(figure, folder, "training.png"), note


def plot_partition(results: dict[str, Any], folder: str) -> tuple[str, str]:
    """Edge cut and remote lookup shares, METIS (or placement) against random."""
    import numpy as np

    runs = [run for run in DATA_RUNS if _get(results, "partition", run, "quality")]
    if not runs:
        raise _Missing("no partition quality report in the results")
    metrics = [("edge cut", lambda q: _get(q, "edge_cut_fraction", "unweighted")),
               ("remote 1-hop", lambda q: _get(q, "remote_fraction_1hop")),
               ("remote 2-hop", lambda q: _get(q, "remote_fraction_2hop"))]
    figure = _new_figure(4.6 * len(runs), 3.8)
    axes = figure.subplots(1, len(runs), squeeze=False, sharey=True)[0]
    for ax, run in zip(axes, runs):
        part = results["partition"][run]
        quality = part["quality"]
        ours = "new nodes placed" if part.get("method") == "placement" else "METIS"
        x = np.arange(len(metrics))
        for offset, key, label, color in ((-0.2, "metis", ours, "#1f77b4"),
                                          (0.2, "random", "random", "#7f7f7f")):
            values = [get(quality.get(key)) for _, get in metrics]
            bars = ax.bar(x + offset, [np.nan if v is None else v for v in values], 0.4,
                          color=color, label=label)
            ax.bar_label(bars, labels=[fmt(v, ".3f") for v in values], fontsize=7)
        ax.set_xticks(x, [name for name, _ in metrics])
        ax.set_title(f"{'after the added day' if run == 'day2' else 'first days'} "
                     f"({part.get('num_parts', '?')} parts)", fontsize=10)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("fraction")
    return _save(figure, folder, "partition_quality.png"), ""


def _test_auc(results: dict[str, Any], run: str) -> float | None:
    return _get(results, "evaluate", run, "auc", "gnn")


def _stage_seconds(results: dict[str, Any], stage: str, run: str) -> float | None:
    for record in results.get("stages") or []:
        if record["stage"] == stage and record.get("run") == run:
            return record.get("seconds")
    return None


def plot_continue_vs_retrain(results: dict[str, Any], folder: str) -> tuple[str, str]:
    """Compute seconds and test AUC of continuing the day-1 model against retraining."""
    runs = [run for run in ("continue", "retrain") if _get(results, "train", run)]
    if "continue" not in runs:
        raise _Missing("no continued training run in the results")
    note = ""
    if "retrain" not in runs:
        note = ("No retrain run in these results (the pipeline ran without retraining from "
                "scratch, its default), so only the continued run is shown; rerun the pipeline "
                "with --retrain for the comparison.")
    labels = [RUN_LABELS[r].replace("day 2, ", "") for r in runs]
    train_s = [results["train"][r].get("train_seconds") for r in runs]
    wall_s = [_stage_seconds(results, "train", r) for r in runs]
    aucs = [_test_auc(results, r) for r in runs]
    figure = _new_figure(8.5, 3.6)
    time_ax, auc_ax = figure.subplots(1, 2)
    x = list(range(len(runs)))
    bars = time_ax.bar([i - 0.2 for i in x], [math.nan if v is None else v for v in train_s], 0.4,
                       color="#2ca02c", label="training loop")
    time_ax.bar_label(bars, labels=[fmt(v, ".0f") for v in train_s], fontsize=8)
    bars = time_ax.bar([i + 0.2 for i in x], [math.nan if v is None else v for v in wall_s], 0.4,
                       color="#98df8a", label="train stage (wall)")
    time_ax.bar_label(bars, labels=[fmt(v, ".0f") for v in wall_s], fontsize=8)
    time_ax.set_xticks(x, labels)
    time_ax.set_ylabel("seconds")
    time_ax.set_title("compute", fontsize=10)
    time_ax.legend(fontsize=8)
    bars = auc_ax.bar(x, [math.nan if v is None else v for v in aucs], 0.5, color="#1f77b4")
    auc_ax.bar_label(bars, labels=[fmt(v, ".4f") for v in aucs], fontsize=8)
    baseline = _get(results, "evaluate", "continue", "auc", "baseline")
    if baseline is not None:
        auc_ax.axhline(baseline, color=MODEL_COLORS["baseline"], linestyle="--", linewidth=1,
                       label=f"GBDT baseline ({baseline:.4f})")
        auc_ax.legend(fontsize=8, loc="lower right")
    auc_ax.set_xticks(x, labels)
    shown = [v for v in (*aucs, baseline) if v is not None]
    if shown:  # zoomed: the runs differ by a few thousandths
        auc_ax.set_ylim(max(0.0, min(shown) - 0.05), min(1.0, max(shown) + 0.03))
    auc_ax.set_title("test ROC-AUC (GNN)", fontsize=10)
    return _save(figure, folder, "continue_vs_retrain.png"), note


# section id, title, what it shows, figure function
SECTIONS: list[tuple[str, str, str, Callable[[dict[str, Any], str], tuple[str, str]]]] = [
    ("roc", "ROC curves on the test window",
     "Temporal GNN against the gradient-boosted-tree baseline and the baseline with GNN "
     "embeddings as extra features, on the test days of each evaluated model (AUC in the "
     "legend).", plot_roc),
    ("past", "AUC by the user's number of past interactions",
     "Test impressions bucketed by how many interactions the user had before the impression; "
     "the leftmost buckets are cold-start users.", plot_auc_by_past_interactions),
    ("training", "Training curves",
     "Mean training loss and validation ROC-AUC per epoch, for the run on the first days, the "
     "run continued on the added day and, when present, the run retrained from scratch.",
     plot_training),
    ("partition", "Partition quality",
     "Share of cut edges and of neighbour lookups that leave the worker's shard (sampled, 1 "
     "and 2 hops), METIS against random partitioning of the same graph; after the added day "
     "the new nodes are placed into the existing parts without running METIS again.",
     plot_partition),
    ("continue", "Continue against retrain",
     "Continuing the day-1 model on the added day's events (plus a replay sample) against "
     "training from scratch on the whole extended graph: training seconds and test AUC.",
     plot_continue_vs_retrain),
]


# --------------------------------------------------------------------------- page

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; }
.missing { background: #fff6e0; border-left: 4px solid #f0ad4e; padding: 0.5em 1em; }
.note { color: #555; font-size: 0.9em; }
pre { background: #f8f8f8; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
"""


def _table(header: list[str], rows: list[list[str]], numeric: frozenset[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    cell = '<td class="num">{}</td>', "<td>{}</td>"
    body = "".join(
        "<tr>" + "".join(cell[i not in numeric].format(html.escape(str(c))) for i, c in enumerate(row))
        + "</tr>"
        for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _model_table(results: dict[str, Any]) -> str:
    rows = []
    for run in RUNS:
        ev = _get(results, "evaluate", run)
        if not ev:
            continue
        for model in MODELS:
            if not scored(ev, model):
                rows.append([RUN_LABELS[run], MODEL_LABELS[model], "not scored", "", "", ""])
                continue
            rows.append([RUN_LABELS[run], MODEL_LABELS[model], fmt(_get(ev, "auc", model)),
                         fmt(_get(ev, "auc_cold", model)), fmt(_get(ev, "auc_warm", model)),
                         fmt(_gap(ev, model), "+.4f")])
    if not rows:
        return '<p class="missing">No evaluation in these results.</p>'
    return _table(["model run", "model", "test AUC", "cold", "warm", "warm - cold"], rows,
                  numeric=frozenset({2, 3, 4, 5}))


def _render(results: dict[str, Any], figures: dict[str, tuple[str | None, str]]) -> str:
    config = results.get("config") or {}
    versions = results.get("versions") or {}
    summary = summary_rows(results)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>clickgraph pipeline report</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>clickgraph pipeline report</h1>",
        f"<p class=\"note\">Started {html.escape(str(results.get('started_at', 'n/a')))}; "
        f"total {html.escape(fmt(results.get('total_seconds'), '.1f'))} s; "
        f"{html.escape(str(results.get('workers', 'n/a')))} training worker(s); "
        f"first days {html.escape(', '.join(_get(results, 'days', 'first') or []) or 'n/a')}, "
        f"added day {html.escape(str(_get(results, 'days', 'added') or 'n/a'))}.</p>",
        "<h2>Summary</h2>",
        _table(["step", "stage", "seconds", "key figures"], [list(r) for r in summary],
               numeric=frozenset({2})),
        "<h2>Test ROC-AUC by model</h2>", _model_table(results),
    ]
    for section_id, title, description, _ in SECTIONS:
        image, note = figures[section_id]
        parts.append(f'<h2 id="{section_id}">{html.escape(title)}</h2>')
        parts.append(f"<p>{html.escape(description)}</p>")
        if image is None:
            parts.append(f'<p class="missing">Not available: {html.escape(note)}</p>')
            continue
        parts.append(f'<p><img src="{html.escape(image)}" alt="{html.escape(title)}"></p>')
        if note:
            parts.append(f'<p class="missing">{html.escape(note)}</p>')
    retrain = results.get("retrain") or {}
    if retrain.get("note"):
        parts.append(f"<p class=\"note\">{html.escape(retrain['note'])}</p>")
    parts.append("<h2>Configuration and versions</h2>")
    rows = [["config hash (all sections)", str(config.get("hash", "n/a"))],
            ["config source", str(config.get("source", "n/a"))],
            *[[name, str(version)] for name, version in sorted(versions.items())]]
    parts.append(_table(["", ""], rows))
    resolved = config.get("resolved")
    if resolved:
        import yaml

        parts.append("<details><summary>resolved configuration</summary><pre>"
                     + html.escape(yaml.safe_dump(resolved, sort_keys=False)) + "</pre></details>")
    parts.append('<p class="note">The numbers behind this page: '
                 '<a href="pipeline.json">pipeline.json</a>.</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def json_safe(value: Any) -> Any:
    """NaN and infinities to None, so ``pipeline.json`` is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_report(results: dict[str, Any], out_url: str) -> str:
    """Write the pipeline report into ``out_url``; returns the URL of its ``index.html``.

    ``results`` is what :func:`clickgraph.app.pipeline.run_pipeline` collects. Every key is
    optional; a figure whose data is missing is replaced by a note saying so.

    * ``started_at`` (ISO-8601 str), ``total_seconds`` (float), ``workers`` (int).
    * ``config``: ``{"hash": 16 hex chars of Config.section_hash(), "source": file and
      overrides, "resolved": Config.to_dict()}``; ``versions``: ``{package: version}``.
    * ``days``: ``{"first": [days built first], "added": the day added incrementally}``.
    * ``stages``: records in run order, each ``{"step": i, "of": N, "stage": name, "run":
      label or None, "seconds": wall seconds, "status": "ok" | "failed", "error": message
      when failed, "peak_rss_mb": peak resident memory of this process tree}``. Stage names:
      ``generate``, ``build-graph``, ``partition``, ``train``, ``evaluate``, ``export``,
      ``report``.
    * ``generate``: the logs manifest's ``events_total``, ``event_counts`` and ``days``.
    * ``graph``: ``{"day1" | "day2": {"node_counts", "edge_counts", "rows_kept",
      "rows_quarantined", "built_days", "days"}}`` from the graph store manifests.
    * ``partition``: ``{"day1" | "day2": {"method", "num_parts", "quality": {"metis",
      "random"}, "placement", "wall_s"}}`` from the shard set manifests (``quality`` as in
      ``spark_jobs/partition.py``: ``edge_cut_fraction.unweighted``,
      ``remote_fraction_1hop``, ``remote_fraction_2hop``, ``balance``).
    * ``train``: ``{"day1" | "continue" | "retrain": metrics}``, the ``metrics.json`` of
      each run (``val_auc``, ``epochs`` with per-epoch ``loss`` and ``val_auc``,
      ``events_per_s``, ``train_seconds``, ``since_time``, ``per_rank_events``, ...).
    * ``evaluate``: ``{run: evaluation}``, the dict of ``trainer.evaluate.run_evaluation``
      (``auc``, ``auc_cold``, ``auc_warm`` per model, ``auc_by_past_interactions``,
      ``scores``: URL of the parquet file read for the ROC curves, ...).
    * ``export``: ``{"day1" | "continue": manifest}`` of ``trainer.export.run_export``
      (``drift``, ``recommendations``, ``counts``).
    * ``retrain``: ``{"enabled": bool, "note": why it ran or did not}``.

    Args:
        results: The pipeline results described above.
        out_url: The report folder (a local path or fsspec URL); replaced as a whole.

    Returns:
        URL of the written ``index.html``.
    """
    from clickgraph.core.manifest import write_manifest

    safe = json_safe(results)
    with tempfile.TemporaryDirectory(prefix="clickgraph-report-") as local:
        figures: dict[str, tuple[str | None, str]] = {}
        for section_id, _, _, plot in SECTIONS:
            try:
                figures[section_id] = plot(safe, local)
            except _Missing as missing:
                figures[section_id] = (None, str(missing))
        page = _render(safe, figures)
        with open(os.path.join(local, "index.html"), "w", encoding="utf-8") as handle:
            handle.write(page)
        images = sorted(image for image, _ in figures.values() if image)
        manifest = {
            "kind": REPORT_KIND, "format_version": REPORT_FORMAT_VERSION, "producer": "clickgraph",
            "producer_version": __version__,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "config_hash": _get(safe, "config", "hash"),
            "files": ["index.html", "pipeline.json", *images],
            "missing_sections": {k: note for k, (image, note) in figures.items() if image is None},
        }
        with fs.staged_output(out_url) as stage:
            filesystem, stage_path = fs.filesystem(stage)
            filesystem.makedirs(stage_path, exist_ok=True)
            for name in ("index.html", *images):
                filesystem.put_file(os.path.join(local, name), f"{stage_path.rstrip('/')}/{name}")
            fs.write_json(fs.join(stage, "pipeline.json"), safe)
            write_manifest(stage, manifest)
    return fs.join(out_url, "index.html")
