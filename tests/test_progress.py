"""Progress lines at a steady rate with the ETA (clickgraph.core.progress), on a fake clock."""

from __future__ import annotations

import pytest

from clickgraph.core.progress import RateProgress, clock_text


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_come_at_most_once_per_period_with_rate_and_eta():
    clock, lines = FakeClock(), []
    progress = RateProgress(800, "steps", lines.append, every_s=10, clock=clock)
    for done in range(1, 801):         # one step every 1/8 s: 100 s in all
        clock.now += 0.125
        progress.update(done, prefix="  train ")
    assert len(lines) == 10            # at 10 s, 20 s, ... 100 s; not one per step
    assert lines[0] == "  train 80/800 steps (10%), 8.0 steps/s, ETA 1:30"
    assert lines[-1] == "  train 800/800 steps (100%), 8.0 steps/s, ETA 0:00"


def test_a_short_loop_prints_nothing_and_no_log_costs_nothing():
    clock, lines = FakeClock(), []
    progress = RateProgress(5, "impressions", lines.append, every_s=15, clock=clock)
    clock.now += 14
    assert not progress.update(5) and lines == []
    silent = RateProgress(5, "impressions", None, every_s=1, clock=clock)
    clock.now += 10
    assert not silent.due() and not silent.update(3)


def test_a_resumed_run_counts_its_earlier_steps_in_done_not_in_the_rate():
    clock, lines = FakeClock(), []
    progress = RateProgress(100, "steps", lines.append, every_s=5, done_at_start=50, clock=clock)
    clock.now += 10
    progress.update(60)                # 10 steps in 10 s since the resume, 40 to go
    assert lines == ["60/100 steps (60%), 1.0 steps/s, ETA 0:40"]


def test_clock_text_and_a_bad_period():
    assert clock_text(59.6) == "1:00" and clock_text(3725) == "1:02:05" and clock_text(-3) == "0:00"
    with pytest.raises(ValueError, match="every_s"):
        RateProgress(10, "steps", print, every_s=0)


class ScriptedTracker:
    """A Spark status tracker whose stages advance as the test says."""

    def __init__(self):
        self.stages: dict[int, tuple[int, int]] = {}   # id -> (done, total)

    def getActiveStageIds(self):  # noqa: N802 - pyspark's name
        return list(self.stages)

    def getStageInfo(self, stage_id):  # noqa: N802 - pyspark's name
        from types import SimpleNamespace

        if stage_id not in self.stages:
            return None
        done, total = self.stages[stage_id]
        return SimpleNamespace(numCompletedTasks=done, numTasks=total)


def test_spark_progress_names_running_stages_with_tasks_and_eta_and_fills_silences_only():
    from types import SimpleNamespace

    from clickgraph.app.spark_progress import SparkProgress, TimedLog

    tracker, clock, lines = ScriptedTracker(), FakeClock(), []
    spark = SimpleNamespace(sparkContext=SimpleNamespace(statusTracker=lambda: tracker))
    log = TimedLog(lines.append, clock=clock)
    progress = SparkProgress(spark, "partition (day1)", log, every_s=30, clock=clock)
    assert progress.line() is None                     # no stage running: no line
    tracker.stages = {7: (10, 40)}
    progress.line()                                    # first seen: 10 tasks done at 0 s
    clock.now += 30
    tracker.stages = {7: (25, 40), 9: (0, 8)}
    assert progress.line() == ("  spark: partition (day1) running 0:30; stage 7 25/40 tasks, "
                               "ETA 0:30; stage 9 0/8 tasks")
    progress.tick()                                    # 30 s of silence: a line
    assert lines == [progress.line()]
    clock.now += 20
    log("build-graph:   edges written (3.1s)")         # the job's own line
    clock.now += 20
    progress.tick()                                    # 20 s after it: not yet
    assert len(lines) == 2
    clock.now += 10
    progress.tick()
    assert len(lines) == 3 and lines[-1].startswith("  spark: partition (day1) running 1:20")
