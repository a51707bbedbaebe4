"""Progress lines of long loops at a steady rate: what is done, the rate, and the ETA.

A loop calls :meth:`RateProgress.update` after each unit of work; it prints (through its
``log``) at most one line per ``every_s`` seconds, however fast or slow the units are, so a
long stage stays visible and a short one stays quiet (``resources.progress_every_s``).
The ETA is the remaining work at the rate so far (wall time since the loop started, so time
spent between units, e.g. validation, counts too).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def clock_text(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class RateProgress:
    """Steady-rate progress of ``total`` units of work.

    Args:
        total: Units the loop will do (steps, impressions, nodes).
        unit: Their name in the line (``steps``, ``impressions``).
        log: Where lines go; None: nowhere (the loop needs no ``if``).
        every_s: Seconds between two lines at least; the first comes ``every_s`` after
            the start (a loop shorter than that prints nothing).
        done_at_start: Units done before this loop started (a resumed run): counted in
            ``done``, not in the rate.
        clock: Seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, total: int, unit: str, log: Callable[[str], None] | None,
                 every_s: float = 30.0, done_at_start: int = 0,
                 clock: Callable[[], float] = time.perf_counter):
        if every_s <= 0:
            raise ValueError(f"every_s must be > 0, got {every_s}")
        self.total, self.unit, self.log, self.every_s = max(int(total), 0), unit, log, every_s
        self.done_at_start, self.clock = done_at_start, clock
        self.started = self.last = clock()

    def due(self) -> bool:
        """Whether a line is due now."""
        return self.log is not None and self.clock() - self.last >= self.every_s

    def status(self, done: int) -> str:
        """``done/total unit (p%), rate unit/s, ETA m:ss``."""
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = (done - self.done_at_start) / elapsed
        share = f" ({done / self.total:.0%})" if self.total else ""
        eta = clock_text((self.total - done) / rate) if rate > 0 and self.total >= done else "?"
        return f"{done:,}/{self.total:,} {self.unit}{share}, {rate:,.1f} {self.unit}/s, ETA {eta}"

    def update(self, done: int, prefix: str = "", suffix: str = "") -> bool:
        """Print ``prefix + status + suffix`` if a line is due; returns whether it did.
        (A loop whose prefix costs something to build asks :meth:`due` first.)"""
        if not self.due():
            return False
        self.last = self.clock()
        self.log(f"{prefix}{self.status(done)}{suffix}")
        return True


class BackgroundTicks:
    """A context manager that calls :meth:`tick` every ``interval_s`` seconds in a daemon
    thread while its block runs (memory probes, progress of work done elsewhere). A tick
    that returns False ends the thread."""

    def __init__(self, interval_s: float, name: str):
        self.interval_s, self.name = interval_s, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> bool | None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.tick() is False:
                return

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
