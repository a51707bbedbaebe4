"""The video-weight experiment's bookkeeping: which seeds it reports and what it computes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import video_weight_experiment as vw  # noqa: E402


def _write(workdir: Path, arm: str, seed: int, share: float, auc: float) -> None:
    out = workdir / "results" / f"{arm}-seed{seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"arm": arm, "seed": seed, "test_auc": auc,
                               "uncontrolled": {"video_share_topk": share}}))


def test_summarize_keeps_only_seeds_whose_two_arms_finished(tmp_path):
    _write(tmp_path, "baseline", 0, 0.30, 0.780)
    _write(tmp_path, "video", 0, 0.45, 0.778)
    _write(tmp_path, "baseline", 1, 0.32, 0.781)  # its video arm never finished
    out = tmp_path / "out.json"
    vw.summarize(tmp_path, [0, 1], {"data": "default"}, out)
    result = json.loads(out.read_text())
    assert list(result["seeds"]) == ["0"]
    assert abs(result["video_share_shift_points"][0] - 15.0) < 1e-9
    assert abs(result["test_auc_cost_points"][0] - 0.2) < 1e-9
    assert result["data"] == "default"


def test_summarize_writes_nothing_without_a_finished_pair(tmp_path):
    _write(tmp_path, "video", 2, 0.5, 0.7)
    out = tmp_path / "out.json"
    vw.summarize(tmp_path, [2], {}, out)
    assert not out.exists()
