"""Peak resident memory of a block of code, C allocations included.

``tracemalloc`` sees Python objects and numpy buffers but not the arrays METIS
allocates in C. This module reads the kernel's resident set size (RSS)
instead, which counts every page the process touches, whichever library
allocated it.

Two probes:

``"hwm_reset"`` (Linux >= 4.0, default when available)
    Writes ``5`` to ``/proc/self/clear_refs``, which resets the kernel's RSS
    high-water mark of the address space (``VmHWM`` in ``/proc/self/status``)
    to the current RSS; on exit ``VmHWM`` is exactly the peak RSS of the
    process during the block. ``VmHWM`` is read, not ``getrusage().ru_maxrss``:
    in a process started by fork and exec (``multiprocessing`` "spawn",
    ``subprocess``) ``ru_maxrss`` also keeps the peak of the image before the
    exec, i.e. the parent's size at the fork, which no reset clears. Side
    effect: the high-water mark seen by anyone else afterwards (``VmHWM``, and
    ``ru_maxrss`` where no larger pre-exec peak hides it) is lost. Monitors
    nest: a monitor that resets the mark inside another's block first hands
    the peak so far to every enclosing monitor, so an outer block (a whole
    job step around several partitioners) still reports its true peak.
``"sampled"`` (fallback, no side effects)
    A thread samples RSS every ``interval_s`` and ``ru_maxrss`` is compared
    before and after. pymetis holds the GIL while METIS runs, so the thread
    cannot sample then; the peak is only caught if it raises the
    process-lifetime ``ru_maxrss``. A lower bound.

Both measure the whole process: concurrent threads doing other work inflate
the figure.

Freed memory that the C allocator keeps for reuse stays resident, and a block
that reuses it raises RSS by less than it allocates. On glibc the monitor
therefore calls ``malloc_trim(0)`` on entry (``trim_heap=True``), returning
the free heap to the kernel so that the delta counts what the block really
needs on top of the live data.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import threading
from types import TracebackType
from typing import Literal

MemoryProbe = Literal["hwm_reset", "sampled", "auto"]

#: Monitors inside their block, outermost first (see "Monitors nest" above).
_ACTIVE: list[PeakRssMonitor] = []
_ACTIVE_LOCK = threading.Lock()

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def current_rss_bytes() -> int:
    """Resident set size of this process now, in bytes (0 if unknown)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except OSError:
        try:
            import psutil

            return int(psutil.Process().memory_info().rss)
        except ImportError:
            return 0


def _high_water_mark_bytes() -> int:
    """Process-lifetime peak RSS (``ru_maxrss``, KiB on Linux), for the sampled probe."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _resettable_high_water_mark_bytes() -> int:
    """``VmHWM``: peak RSS since the last reset through ``clear_refs`` (0 if unknown)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _trim_heap() -> None:
    """Returns glibc's free heap to the kernel; a no-op elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class PeakRssMonitor:
    """Context manager measuring the peak RSS of the process inside a block.

    Attributes after exit:
        start_rss_bytes: RSS when the block started.
        peak_rss_bytes: peak RSS of the process during the block.
        peak_delta_bytes: ``peak_rss_bytes - start_rss_bytes``, the extra
            memory the block needed on top of what was already resident.
        probe: the probe actually used, ``"hwm_reset"`` or ``"sampled"``.
    """

    def __init__(
        self, probe: MemoryProbe = "auto", interval_s: float = 0.005, trim_heap: bool = True
    ) -> None:
        if probe not in ("hwm_reset", "sampled", "auto"):
            raise ValueError(f"probe must be 'hwm_reset', 'sampled' or 'auto', got {probe!r}")
        self._requested = probe
        self._interval_s = interval_s
        self._trim_heap = trim_heap
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled_peak = 0
        self._hwm_before = 0
        self._nested_peak = 0
        self.probe = "sampled"
        self.start_rss_bytes = 0
        self.peak_rss_bytes = 0
        self.peak_delta_bytes = 0

    def __enter__(self) -> PeakRssMonitor:
        if self._trim_heap:
            _trim_heap()
        self.start_rss_bytes = current_rss_bytes()
        with _ACTIVE_LOCK:
            # The reset below would erase the peak enclosing monitors have not read yet.
            before_reset = _resettable_high_water_mark_bytes()
            for outer in _ACTIVE:
                outer._nested_peak = max(outer._nested_peak, before_reset)
            reset = self._requested in ("hwm_reset", "auto") and _reset_high_water_mark()
            _ACTIVE.append(self)
        if reset:
            self.probe = "hwm_reset"
        elif self._requested == "hwm_reset":
            with _ACTIVE_LOCK:
                _ACTIVE.remove(self)
            raise RuntimeError("/proc/self/clear_refs is not writable; use probe='sampled'")
        else:
            self.probe = "sampled"
            self._hwm_before = _high_water_mark_bytes()
            self._sampled_peak = self.start_rss_bytes
            self._thread = threading.Thread(target=self._sample, name="peak-rss-sampler", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sampled_peak = max(self._sampled_peak, current_rss_bytes())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        end_rss = current_rss_bytes()
        with _ACTIVE_LOCK:
            if self in _ACTIVE:
                _ACTIVE.remove(self)
        if self.probe == "hwm_reset":
            peak = max(_resettable_high_water_mark_bytes(), self._nested_peak)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            hwm_after = _high_water_mark_bytes()
            # A raised lifetime high-water mark was reached inside the block.
            peak = max(self._sampled_peak, hwm_after if hwm_after > self._hwm_before else 0)
        self.peak_rss_bytes = max(peak, end_rss, self.start_rss_bytes)
        self.peak_delta_bytes = self.peak_rss_bytes - self.start_rss_bytes
