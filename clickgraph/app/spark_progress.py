"""Progress of a pipeline step that runs Spark jobs: a line at a steady rate with the Spark
stages running, their tasks done and an ETA each.

Spark's own console progress bar goes to the step's log file with the rest of its output
(:mod:`clickgraph.app.stage_logs`), so the terminal would show nothing between a Spark
step's start and end lines; this reads the same figures from the driver's status tracker
(``SparkContext.statusTracker()``) in a background thread. A stage's ETA is its remaining
tasks at its task rate since this thread first saw it (Spark does not say how many stages
a job will have, so there is no ETA of the whole step). The line fills silences only: it
comes when nothing was printed for ``every_s`` seconds (the Spark jobs print their own
phases, e.g. build-graph's), so the terminal gets a line at least that often, not more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from clickgraph.core.progress import BackgroundTicks, clock_text


class TimedLog:
    """A log function that remembers when it last printed (``at``, seconds of ``clock``)."""

    def __init__(self, log: Callable[[str], None], clock: Callable[[], float] = time.perf_counter):
        self.log, self.clock = log, clock
        self.at = clock()

    def __call__(self, line: str) -> None:
        self.at = self.clock()
        self.log(line)


class SparkProgress(BackgroundTicks):
    """While the block runs, one line through ``log`` whenever it has been silent for
    ``every_s`` seconds and Spark runs a stage.

    Args:
        spark: The SparkSession the step uses.
        name: The step's name in the line (``partition (day1)``).
        log: Where the lines go, and when the last one went.
        every_s: Seconds of silence before a line.
        clock: Seconds, monotonic, the one ``log`` uses (tests pass a fake one).
    """

    def __init__(self, spark: Any, name: str, log: TimedLog, every_s: float,
                 clock: Callable[[], float] = time.perf_counter):
        super().__init__(min(every_s, 5.0), "spark-progress")
        self.tracker = spark.sparkContext.statusTracker()
        self.step, self.log, self.every_s, self.clock = name, log, every_s, clock
        self.started = clock()
        self.first_seen: dict[int, tuple[float, int]] = {}  # stage id -> (time, tasks done)

    def line(self) -> str | None:
        """The progress line now, or None when no Spark stage is running."""
        now = self.clock()
        stages = []
        for stage_id in sorted(self.tracker.getActiveStageIds()):
            info = self.tracker.getStageInfo(stage_id)
            if info is None:   # finished between the two calls
                continue
            done, total = info.numCompletedTasks, info.numTasks
            seen_at, done_then = self.first_seen.setdefault(stage_id, (now, done))
            rate = (done - done_then) / (now - seen_at) if now > seen_at else 0.0
            eta = f", ETA {clock_text((total - done) / rate)}" if rate > 0 else ""
            stages.append(f"stage {stage_id} {done}/{total} tasks{eta}")
        if not stages:
            return None
        return (f"  spark: {self.step} running {clock_text(now - self.started)}; "
                + "; ".join(stages))

    def tick(self) -> bool:
        try:
            text = self.line()
        except Exception:  # the status tracker of a stopping session: no line, not a failure
            return False
        if text and self.clock() - self.log.at >= self.every_s:
            self.log(text)
        return True

    def __enter__(self) -> SparkProgress:
        self.line()   # note the stages already running, so their rates start now
        return super().__enter__()
