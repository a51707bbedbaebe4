"""The pipeline report: every plot a valid PNG linked from index.html, gaps stated."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clickgraph.app import report

EXPECTED_PNGS = {"roc.png", "auc_by_past_interactions.png", "training.png",
                 "partition_quality.png", "continue_vs_retrain.png"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _scores(path: Path, seed: int) -> str:
    """A scores.parquet in trainer.evaluate's layout, GNN better than the baseline."""
    rng = np.random.default_rng(seed)
    n = 400
    label = (rng.random(n) < 0.3).astype(np.float64)
    table = pa.table({
        "day": pa.array(["2026-03-05"] * (n // 2) + ["2026-03-06"] * (n - n // 2)),
        "user": pa.array(rng.integers(0, 50, n), pa.int64()),
        "content": pa.array(rng.integers(0, 30, n), pa.int64()),
        "label": pa.array(label),
        "past_interactions": pa.array(rng.integers(0, 20, n), pa.int64()),
        "cold": pa.array(rng.random(n) < 0.2),
        "gnn": pa.array(label * 0.8 + rng.random(n)),
        "baseline": pa.array(label * 0.3 + rng.random(n)),
        "baseline_plus_embeddings": pa.array(label * 0.6 + rng.random(n)),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return str(path)


def _three(gnn: float, baseline: float, plus: float) -> dict[str, float]:
    return {"gnn": gnn, "baseline": baseline, "baseline_plus_embeddings": plus}


def _evaluation(scores: str | None) -> dict:
    return {
        "auc": _three(0.74, 0.69, 0.72), "auc_cold": _three(0.70, 0.66, 0.69),
        "auc_warm": _three(0.75, 0.70, 0.73),
        "per_day": [{"day": "2026-03-05", "events": 200, "auc": _three(0.74, 0.69, 0.72),
                     "auc_cold": _three(0.7, 0.6, 0.7), "auc_warm": _three(0.75, 0.7, 0.73)}],
        "auc_by_past_interactions": [
            {"bucket": "0-5", "lo": 0, "hi": 5, "events": 80, "auc": _three(0.70, 0.65, 0.69)},
            {"bucket": "6-20", "lo": 6, "hi": 20, "events": 150, "auc": _three(0.74, 0.7, 0.72)},
            {"bucket": "21+", "lo": 21, "hi": None, "events": 170,
             "auc": _three(0.76, None, 0.74)},  # one model without both classes
        ],
        "events": 400, "cold_events": 80, "test_days": ["2026-03-05", "2026-03-06"],
        "out": "eval/x", "scores": scores,
    }


def _quality(cut: float, rand: float) -> dict:
    def one(value):
        return {"edge_cut_fraction": {"unweighted": value, "weighted": value},
                "remote_fraction_1hop": value, "remote_fraction_2hop": value + 0.1,
                "balance": {"training_events": 1.01}, "wall_s": 0.1}
    return {"metis": one(cut), "random": one(rand)}


def _train(val: list[float], since: int | None = None) -> dict:
    return {"val_auc": val[-1], "val_auc_per_epoch": val, "events_per_s": 1500.0,
            "train_seconds": 30.0 if since else 120.0, "since_time": since,
            "per_rank_events": [{"own_events": 110, "new": 100, "replay": 10}] * 2,
            "epochs": [{"epoch": i + 1, "loss": 0.5 - 0.1 * i, "val_auc": v}
                       for i, v in enumerate(val)]}


@pytest.fixture
def results(tmp_path) -> dict:
    runs = ("day1", "continue", "retrain")
    stage_list = [("generate", None), ("build-graph", "day1"), ("partition", "day1"),
                  ("train", "day1"), ("evaluate", "day1"), ("export", "day1"),
                  ("build-graph", "day2"), ("partition", "day2"), ("train", "continue"),
                  ("evaluate", "continue"), ("export", "continue"), ("train", "retrain"),
                  ("evaluate", "retrain")]
    return {
        "started_at": "2026-03-10T10:00:00+00:00", "total_seconds": 321.5, "workers": 2,
        "config": {"hash": "0123456789abcdef", "source": "conf/local.yaml",
                   "resolved": {"train": {"workers": 2}}},
        "versions": {"clickgraph": "0.1.0", "torch": "2.13.0"},
        "days": {"first": ["2026-03-02", "2026-03-03"], "added": "2026-03-04"},
        "stages": [{"step": i + 1, "of": len(stage_list), "stage": s, "run": r,
                    "seconds": 10.0 + i, "status": "ok"} for i, (s, r) in enumerate(stage_list)],
        "generate": {"events_total": 12345, "days": ["2026-03-02", "2026-03-03", "2026-03-04"]},
        "graph": {d: {"node_counts": {"user": 300, "content": 100}, "edge_counts": {"a": 1000},
                      "rows_quarantined": 0, "built_days": ["2026-03-02"]}
                  for d in ("day1", "day2")},
        "partition": {"day1": {"method": "direct", "num_parts": 2, "quality": _quality(0.31, 0.5)},
                      "day2": {"method": "placement", "num_parts": 2,
                               "quality": _quality(0.33, 0.5),
                               "placement": {"new_nodes": 40, "drift": {"relative": 0.05}}}},
        "train": {"day1": _train([0.70, 0.72]), "continue": _train([0.73], since=1000),
                  "retrain": _train([0.71, 0.735])},
        "evaluate": {run: _evaluation(_scores(tmp_path / "eval" / run / "scores.parquet", i))
                     for i, run in enumerate(runs)},
        "export": {"day1": {"drift": None, "recommendations": {"video_share_topk": 0.3,
                                                               "video_share_catalogue": 0.2,
                                                               "coverage": 0.4}},
                   "continue": {"drift": {"user": {"mean_cosine": 0.93}, "previous": {"url": "x"}},
                                "recommendations": {"video_share_topk": 0.31}}},
        "retrain": {"enabled": True, "note": "retrained from scratch for the comparison"},
    }


def _page(folder: Path) -> str:
    return (folder / "index.html").read_text()


def _linked_images(page: str) -> set[str]:
    return set(re.findall(r'<img src="([^"]+)"', page))


def test_every_plot_is_a_valid_png_linked_from_the_page(results, tmp_path):
    from PIL import Image

    out = tmp_path / "report"
    index = report.write_report(results, str(out))
    assert Path(index) == out / "index.html"
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == EXPECTED_PNGS
    assert _linked_images(_page(out)) == EXPECTED_PNGS  # relative links, all of them
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        with Image.open(out / name) as image:
            image.verify()
            assert image.size[0] > 300 and image.size[1] > 200
    page = _page(out)
    assert "Not available" not in page
    assert "0123456789abcdef" in page and "torch" in page and "2.13.0" in page
    # the summary table holds every stage with its key figures
    for stage in ("generate", "build-graph (day2)", "partition (day1)", "train (continue)",
                  "evaluate (retrain)", "export (continue)"):
        assert f"<td>{stage}</td>" in page
    assert "edge cut METIS 0.310 vs random 0.500" in page
    assert "12,345 events" in page
    assert "drift (mean cosine) user 0.930; video" in page  # node types only, not "previous"
    # the numbers behind the page and a manifest written last
    assert json.loads((out / "pipeline.json").read_text())["config"]["hash"] == "0123456789abcdef"
    manifest = json.loads((out / "_MANIFEST.json").read_text())
    assert manifest["kind"] == "report" and manifest["missing_sections"] == {}
    assert set(manifest["files"]) >= EXPECTED_PNGS


def test_missing_sections_are_stated_not_crashed_on(results, tmp_path):
    partial = copy.deepcopy(results)
    del partial["train"]["retrain"], partial["evaluate"]["retrain"]
    partial["stages"] = [s for s in partial["stages"] if s["run"] != "retrain"]
    del partial["partition"]
    partial["evaluate"]["day1"]["scores"] = str(tmp_path / "nowhere" / "scores.parquet")
    partial["evaluate"]["continue"]["scores"] = None
    partial["train"]["day1"]["epochs"][0]["loss"] = float("nan")
    out = tmp_path / "report"
    report.write_report(partial, str(out))
    page = _page(out)
    assert {p.name for p in out.glob("*.png")} == _linked_images(page)
    # no partition results: the section says so and draws nothing
    assert "partition_quality.png" not in _linked_images(page)
    assert "Not available: no partition quality report in the results" in page
    # no scores file: the ROC section names the missing file
    assert "roc.png" not in _linked_images(page)
    assert f"scores file {tmp_path / 'nowhere' / 'scores.parquet'} does not exist" in page
    assert "the evaluation names no scores file" in page
    # no retrain: the comparison shows the continued run and says why the other is absent
    assert "continue_vs_retrain.png" in _linked_images(page)
    assert "No retrain run in these results" in page
    assert "No training history for: day 2, retrained from scratch" in page
    manifest = json.loads((out / "_MANIFEST.json").read_text())
    assert set(manifest["missing_sections"]) == {"roc", "partition"}
    # NaN becomes null: pipeline.json is strict JSON
    text = (out / "pipeline.json").read_text()
    assert "NaN" not in text and json.loads(text)["train"]["day1"]["epochs"][0]["loss"] is None


def test_empty_results_still_give_a_page_that_says_what_is_missing(tmp_path):
    out = tmp_path / "report"
    report.write_report({}, str(out))
    page = _page(out)
    assert page.count("Not available:") == len(report.SECTIONS)
    assert not list(out.glob("*.png"))


def test_rewrite_replaces_the_folder_and_a_failed_render_keeps_the_old_one(results, tmp_path,
                                                                           monkeypatch):
    out = tmp_path / "report"
    report.write_report(results, str(out))
    (out / "stale.png").write_bytes(PNG_MAGIC)
    del results["partition"]
    report.write_report(results, str(out))
    assert not (out / "stale.png").exists()  # the whole folder was swapped
    assert not (out / "partition_quality.png").exists()
    before = _page(out)

    def broken(results, folder):
        raise RuntimeError("plot failed")

    sections = [(*s[:3], broken) if s[0] == "training" else s for s in report.SECTIONS]
    monkeypatch.setattr(report, "SECTIONS", sections)
    with pytest.raises(RuntimeError, match="plot failed"):
        report.write_report(results, str(out))
    assert _page(out) == before
    assert not list(tmp_path.glob(".report.staging-*"))


def test_summary_text_has_one_row_per_stage_and_the_total(results):
    rows = report.summary_rows(results)
    assert len(rows) == len(results["stages"]) + 1
    assert rows[-1][1:3] == ("total", "321.5")
    continued = next(r for r in rows if r[1] == "train (continue)")
    assert "continued: 200 new + 20 replayed impressions" in continued[3]
    evaluated = next(r for r in rows if r[1] == "evaluate (day1)")
    assert "0.7400 / 0.6900 / 0.7200" in evaluated[3] and "+0.0500" in evaluated[3]
    results["stages"][3].update(status="failed", error="ValueError: boom")
    assert "failed: ValueError: boom" in report.summary_rows(results)[3][3]
    text = report.format_summary(results)
    assert text.splitlines()[0].startswith("step") and "total" in text.splitlines()[-1]


def test_export_figures_put_the_controlled_lists_beside_the_uncontrolled(results):
    plain = {"video_share_topk": 0.2, "coverage": 0.04, "intra_list_diversity": 0.02,
             "catalogue_diversity": 0.11, "mean_score": 0.1}
    steered = {"video_share_topk": 0.3, "coverage": 0.15, "intra_list_diversity": 0.07,
               "catalogue_diversity": 0.11, "mean_score": 0.095,
               "against_uncontrolled": {"predicted_ctr_ratio": 0.95}}
    results["export"]["day1"] = {"drift": None, "recommendations": plain,
                                 "recommendations_controlled": steered}
    line = report.stage_figures(results, "export", "day1")
    assert "uncontrolled: video 0.200, coverage 0.040, diversity 0.020" in line
    assert "controlled: video 0.300, coverage 0.150, diversity 0.070" in line
    assert "predicted CTR 0.0950" in line and "x0.950" in line
    results["export"]["day1"].pop("recommendations_controlled")
    assert "uncontrolled" not in report.stage_figures(results, "export", "day1")


def _gnn_only(evaluation: dict, scores_path: Path) -> dict:
    """``evaluation`` as ``clickgraph evaluate --workers N`` writes it before the trees run
    there: the GNN's figures alone, its scores file without the trees' columns."""
    out = copy.deepcopy(evaluation)
    for key in ("auc", "auc_cold", "auc_warm"):
        out[key] = {"gnn": out[key]["gnn"]}
    for bucket in out["auc_by_past_interactions"]:
        bucket["auc"] = {"gnn": bucket["auc"]["gnn"]}
    out["models_scored"] = ["gnn"]
    out["not_scored"] = {"baseline": "trees: one process", "baseline_plus_embeddings": "as baseline"}
    table = pq.read_table(out["scores"]).drop_columns(["baseline", "baseline_plus_embeddings"])
    pq.write_table(table, scores_path)
    out["scores"] = str(scores_path)
    return out


def test_a_distributed_evaluation_without_the_trees_renders_them_as_not_scored(results, tmp_path):
    dist = copy.deepcopy(results)
    for run in ("day1", "continue"):
        dist["evaluate"][run] = _gnn_only(dist["evaluate"][run], tmp_path / f"{run}-gnn.parquet")
    out = tmp_path / "report"
    report.write_report(dist, str(out))
    page = _page(out)
    assert {"roc.png", "auc_by_past_interactions.png"} <= _linked_images(page)
    assert page.count("not scored") >= 4  # two tree models x two distributed runs
    line = report.stage_figures(dist, "evaluate", "day1")
    assert "0.7400 / not scored / not scored" in line
    # the one-process run (retrain) still shows the trees
    assert "not scored" not in report.stage_figures(dist, "evaluate", "retrain")
