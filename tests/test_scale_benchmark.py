"""``benchmarks/scale.py``: a stage's command is watched as a process tree, its output
folder measured, and the fits recover a known linear cost."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import scale  # noqa: E402


def test_a_stage_is_measured_with_its_children_and_its_output(tmp_path, monkeypatch):
    # the "stage": a parent that writes 3 MiB into the stage's folder and starts a child
    # holding 300 MiB
    child = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); import time; time.sleep(2)"
    parent = (f"import pathlib, subprocess, sys; p = pathlib.Path({str(tmp_path)!r}) / 'graph'; "
              "p.mkdir(); (p / 'part.bin').write_bytes(bytes(3 * 2**20)); "
              f"subprocess.run([sys.executable, '-c', {child!r}], check=True)")
    monkeypatch.setattr(scale, "run_argv", lambda argv: [sys.executable, "-c", parent])
    record = scale.run_stage("build-graph", tmp_path, [], 2)
    assert record["exit_code"] == 0
    assert record["bytes_written"] == 3 * 2**20
    assert record["peak_rss_mb"] > 300
    assert record["peak_rss_mb_by_process"]["other"]["largest_mb"] > 290  # the child
    assert record["peak_rss_mb_by_process"]["driver"]["largest_mb"] < 200
    assert record["largest_reaped_process_mb"] > 290


def test_a_failing_stage_keeps_its_exit_code_and_log(tmp_path, monkeypatch):
    monkeypatch.setattr(scale, "run_argv",
                        lambda argv: [sys.executable, "-c", "import sys; print('no room'); sys.exit(3)"])
    record = scale.run_stage("train", tmp_path, [], 2)
    assert record["exit_code"] == 3
    assert "no room" in record["log_tail"]


def test_fits_recover_a_linear_cost_and_its_exponent():
    events = [1e6, 4e6, 16e6]
    f = scale.fit(events, [5 + 2e-5 * e for e in events])
    assert f["slope"] == pytest.approx(2e-5)
    assert f["intercept"] == pytest.approx(5)
    assert f["exponent"] == pytest.approx(math.log(325 / 85) / math.log(4))  # a fixed cost bends it
    quadratic = scale.fit(events, [1e-12 * e * e for e in events])
    assert quadratic["exponent"] == pytest.approx(2.0)


def test_summarize_reads_a_results_file(tmp_path, capsys):
    def stage(name, seconds, mb, written):
        return {"stage": name, "exit_code": 0, "seconds": seconds, "load_average_at_end": [1, 1, 1],
                "peak_rss_mb": mb + 100, "peak_rss_mb_by_process": {"driver": {"largest_mb": mb,
                                                                              "processes": 1}},
                "bytes_written": written}

    results = {"sizes": [{"factor": f, "events": f * 1_000_000,
                          "stages": [stage("generate", 10 * f, 100 * f, 50 * f * 1_000_000)]}
                         for f in (1, 4)]}
    path = tmp_path / "scale.json"
    path.write_text(json.dumps(results))
    assert scale.main(["--summarize", str(path)]) == 0
    out = capsys.readouterr().out
    # 10 s, 100 MiB and 50 bytes per million events... per event
    assert "| generate | 10.0 | 1.00 | 100 (driver, exp. 1.00) | 1.00 | 50.0 | 1.00 |" in out
