"""Event time: units and the temporal split, one rule for every stage.

Every window, cutoff and "as of" is decided by the event's own time (UTC), never by the
day folder a log row was filed under; the folder day is a storage partition only
(docs/architecture.md, "Event time"). The store keeps milliseconds (``ts_ms``); every
reader converts them to whole seconds with :func:`seconds`, by flooring, which never
makes a later edge visible (``edge_ms >= seed_ms`` implies ``edge_s >= seed_s``).

The functions here work on numpy arrays and torch tensors alike.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

SECONDS_PER_DAY = 86_400
MS_PER_SECOND = 1000
_OPEN = 2 ** 62  # stands for an open end of a window in comparisons with int64 times


def seconds(ts_ms: Any) -> Any:
    """Whole seconds since epoch of milliseconds since epoch (floored; array or scalar)."""
    return ts_ms // MS_PER_SECOND


def milliseconds(second: Any) -> Any:
    """Milliseconds since epoch of seconds since epoch (array or scalar)."""
    return second * MS_PER_SECOND


def day_start(day: str) -> int:
    """``YYYY-MM-DD`` 00:00 UTC in seconds since epoch."""
    return int(dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp())


def utc_day(second: int) -> str:
    """The UTC calendar day (``YYYY-MM-DD``) of a time in seconds since epoch."""
    return dt.datetime.fromtimestamp(int(second), dt.UTC).strftime("%Y-%m-%d")


WINDOWS = ("train", "val", "test")


@dataclass(frozen=True)
class Windows:
    """The temporal split, by event time (UTC seconds), never by the day folder.

    ``train``: ``time < val_start``; ``val``: ``val_start <= time < test_start``;
    ``test``: ``time >= test_start``. The boundaries are 00:00 UTC of store days, so an
    event filed late under the next day's folder stays in its own window.

    Attributes:
        days: Window name -> the store days whose calendar day it covers.
        val_start: First second of the validation window.
        test_start: First second of the test window.
    """

    days: dict[str, list[str]]
    val_start: int
    test_start: int

    def bounds(self, window: str) -> tuple[int | None, int | None]:
        """``[start, end)`` seconds of a window; ``None`` where it is open."""
        return {"train": (None, self.val_start), "val": (self.val_start, self.test_start),
                "test": (self.test_start, None)}[window]

    def mask(self, window: str, time: Any) -> Any:
        """Which event times (int64 array or tensor ``[N]``, seconds) fall in ``window``."""
        lo, hi = self.bounds(window)
        return (time >= (-_OPEN if lo is None else lo)) & (time < (_OPEN if hi is None else hi))

    def folders(self, window: str, store_days: list[str], slack_s: int) -> list[str]:
        """The day folders that may hold the window's events when an event may be filed up
        to ``slack_s`` seconds outside its folder's day (``graph.log_day_slack_s``)."""
        lo, hi = self.bounds(window)
        return [d for d in store_days
                if (hi is None or day_start(d) - slack_s < hi)
                and (lo is None or day_start(d) + SECONDS_PER_DAY + slack_s > lo)]


def split_windows(days: list[str], val_days: int, test_days: int) -> Windows:
    """The last ``test_days`` store days test, the ``val_days`` before them validation,
    the rest training; cut at those days' 00:00 UTC (:class:`Windows`).

    Raises:
        InputError: Too few days to leave a training window.
    """
    from clickgraph.core.errors import InputError

    days = sorted(days)
    if len(days) < val_days + test_days + 1:
        raise InputError(f"the graph has {len(days)} days; need more than train.val_days + "
                         f"train.test_days = {val_days + test_days} to leave a training window")
    test = days[len(days) - test_days:]
    val = days[len(days) - test_days - val_days:len(days) - test_days]
    train = days[:len(days) - test_days - val_days]
    return Windows(days={"train": train, "val": val, "test": test},
                   val_start=day_start(val[0]) if val else day_start(test[0]),
                   test_start=day_start(test[0]))
