"""Bounded prefetching on a background thread: the next steps' batches are prepared while
the current step computes.

:class:`Prefetcher` runs ``produce(item)`` for the items of a sequence, in order, on one
background thread and hands the results to the consumer in the same order. At most
``depth`` finished results wait in its queue (plus the one the thread is making, blocked
until there is room), so memory stays bounded. ``depth = 0`` produces each result on the
consumer's thread when it is asked for: the plain loop, with no thread at all.

Order and randomness: one thread makes the results one after another, so a ``produce``
that draws from a ``torch.Generator`` draws in the same order as the plain loop does, as
long as nothing else draws from that generator meanwhile; the training loops keep it that
way (:func:`trainer.engine.compute_step` draws nothing from it).

Failures: an exception raised by ``produce`` (or by iterating the items) is re-raised to
the consumer, the same exception object with its traceback, at the point where the
consumer asks for the result that failed; results made before it are still handed over
first. :meth:`Prefetcher.close` (also on leaving a ``with`` block, whatever the reason)
stops the thread: it is told to stop, the queue is drained so that a thread blocked on a
full queue wakes up, and it is joined. A thread stuck inside ``produce`` (a collective
whose peer is gone and whose timeout has not yet fired) cannot be interrupted from Python;
``close`` then warns and returns ``False``, and the thread, a daemon, does not keep the
process alive.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

_POLL_S = 0.05  # how often a blocked producer or consumer checks for a stop or a death


class Prefetcher(Generic[Item, Result]):
    """``produce(item)`` for each item, made up to ``depth`` results ahead on a thread.

    Args:
        items: What to produce, in order (iterated on the producer's thread).
        produce: Makes one result from one item.
        depth: Results that may wait ready ahead of the consumer; 0: none, each result
            is made on the consumer's thread when asked for.
        name: The thread's name (for debuggers and error messages).
        on_start: Called once on the producer's thread before the first item (e.g.
            ``torch.set_num_threads``); not called when ``depth`` is 0.

    Attributes:
        waited_s: Seconds the consumer spent blocked waiting for a result that was not
            ready yet (0 with ``depth`` 0: the making is then the consumer's own time).
    """

    def __init__(self, items: Iterable[Item], produce: Callable[[Item], Result], depth: int,
                 name: str = "prefetch", on_start: Callable[[], None] | None = None) -> None:
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self.depth = depth
        self.name = name
        self.waited_s = 0.0
        self._items = iter(items)
        self._produce = produce
        self._finished = False
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._thread = threading.Thread(target=self._run, args=(on_start,), name=name,
                                            daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the producer thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------- producer side

    def _run(self, on_start: Callable[[], None] | None) -> None:
        try:
            if on_start is not None:
                on_start()
            for item in self._items:
                if self._stop.is_set():
                    return
                if not self._put(("result", self._produce(item))):
                    return
            self._put(("done", None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, re-raised there
            self._put(("error", error))

    def _put(self, entry: tuple[str, object]) -> bool:
        """Puts ``entry`` once there is room; ``False`` when told to stop first."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    # ------------------------------------------------------------------- consumer side

    def __iter__(self) -> Iterator[Result]:
        return self

    def __next__(self) -> Result:
        if self._finished:
            raise StopIteration
        if self._thread is None:
            try:
                return self._produce(next(self._items))
            except StopIteration:
                self._finished = True
                raise
        start = time.perf_counter()
        try:
            while True:
                try:
                    kind, value = self._queue.get(timeout=_POLL_S)
                    break
                except queue.Empty:
                    if not self._thread.is_alive() and self._queue.empty():
                        self._finished = True
                        raise RuntimeError(f"{self.name}: the producer thread ended without "
                                           "a result or an error") from None
        finally:
            self.waited_s += time.perf_counter() - start
        if kind == "result":
            return value
        self._finished = True
        if kind == "error":
            raise value
        raise StopIteration

    def close(self, timeout_s: float = 60.0) -> bool:
        """Stops the producer and waits for its thread (at most ``timeout_s``).

        Results not yet consumed are dropped. Returns ``True`` when no thread is left
        running, ``False`` (with a warning) when it is still inside ``produce``.
        """
        self._finished = True
        if self._thread is None:
            return True
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive() and time.monotonic() < deadline:
            self._drain()
            self._thread.join(_POLL_S)
        self._drain()
        if self._thread.is_alive():
            warnings.warn(f"{self.name}: the producer thread is still running after "
                          f"{timeout_s:.0f} s (blocked in a collective?); left as a daemon",
                          RuntimeWarning, stacklevel=2)
            return False
        return True

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def __enter__(self) -> Prefetcher[Item, Result]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def split_threads(threads_per_worker: int, depth: int) -> tuple[int, int]:
    """torch intra-op threads of ``(the consumer, the producer)`` of one worker.

    Without prefetching (``depth`` 0) the worker's one thread of control uses all of
    ``threads_per_worker``. With it, the producer thread takes one (sampling is index
    work that gains little from more) and the consumer (forward, backward) the others,
    at least one: ``threads_per_worker`` 2 gives one to each, so that one worker keeps two
    cores busy; 1 runs both on one thread each (the producer then mostly waits on its
    peers' messages in a distributed run, or competes with the compute for the core).
    """
    if depth == 0:
        return threads_per_worker, 0
    return max(1, threads_per_worker - 1), 1
