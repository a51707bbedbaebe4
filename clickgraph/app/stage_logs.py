"""The pipeline's terminal: its own lines on stdout, each stage's library output in a file.

Spark's JVM and Ray print routine warnings by the hundred (parquet's ``WARN MemoryManager
... Scaling row group sizes``, log4j notices, Ray Train's reports, tracebacks of Ray's
internal actors at shutdown), which buried the pipeline's progress lines. While a pipeline
runs, :class:`StageLogs` keeps the terminal for what is printed to ``sys.stdout``: the
pipeline's progress lines, each stage's results, the summary, and the training progress
lines Ray forwards from rank 0's stdout. Everything written to the process's file
descriptors 1 and 2, or to ``sys.stderr``, goes to the log file of the stage running at
that moment, ``<folder>/NN-stage[-run].log``:

- the Spark JVM's log4j output and its own notices (the JVM inherits descriptors 1 and 2
  when the first Spark stage starts it, so it writes to the pipe below);
- Python logging and warnings of Ray and the other libraries (written to ``sys.stderr``);
- what Ray forwards from its workers' and actors' stderr.

How: descriptors 1 and 2 point at a pipe whose reader thread appends what arrives to the
current stage's file; ``sys.stdout`` becomes a stream on a duplicate of the original
descriptor 1, ``sys.stderr`` one on descriptor 2 (logging handlers made earlier keep the
``sys.stderr`` of their time, which in a terminal writes to descriptor 2 as well). A
switch to the next file travels through the pipe as a marker, so what this process wrote
before it lands in the earlier file. Processes started during the run keep the pipe after
it ends: what they write later goes on into the last stage's file.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import IO, BinaryIO

# Sent through the pipe by :meth:`StageLogs.switch`; never written to a file.
SWITCH_MARKER = b"\x00clickgraph-stage-logs-switch\x00"
SWITCH_TIMEOUT_S = 10.0


class StageLogs:
    """Routes library output to one file per stage; use as a context manager.

    Args:
        folder: Local folder for the log files; earlier ``*.log`` files in it are removed.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.written: list[Path] = []        # files that received output, in order
        self._path = self._requested = self.folder / "00-pipeline.log"
        self._next: list[Path] = []          # paths of switches sent, not yet read back
        self._switched = threading.Semaphore(0)
        self._file: BinaryIO | None = None
        self._saved: tuple[int, int] | None = None
        self._streams: tuple[IO[str], IO[str]] | None = None
        self._terminal: IO[str] | None = None
        self._stderr: IO[str] | None = None

    def switch(self, name: str) -> Path:
        """Send what is written from now on to ``<folder>/<name>.log`` (made, empty, now);
        returns that path."""
        path = self.folder / f"{name}.log"
        path.touch()
        self._send_switch(path)
        return path

    def _send_switch(self, path: Path) -> None:
        """Switch to ``path`` once the reader has filed everything this process wrote."""
        self._flush_python_streams()
        self._requested = path
        self._next.append(path)
        os.write(1, SWITCH_MARKER)
        # bounded: a reader that fell behind (a flood of output) must not hang the pipeline
        self._switched.acquire(timeout=SWITCH_TIMEOUT_S)

    def __enter__(self) -> StageLogs:
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("*.log"):
            old.unlink()
        self._flush_python_streams()
        read_end, write_end = os.pipe()
        self._saved = (os.dup(1), os.dup(2))
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        threading.Thread(target=self._forward, args=(read_end,), name="stage-logs", daemon=True).start()
        self._streams = sys.stdout, sys.stderr
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        self._terminal = open(self._saved[0], "w", buffering=1, closefd=False,  # noqa: SIM115
                              encoding=encoding, errors="backslashreplace")
        self._stderr = open(2, "w", buffering=1, closefd=False,  # noqa: SIM115
                            encoding=encoding, errors="backslashreplace")
        sys.stdout, sys.stderr = self._terminal, self._stderr
        return self

    def __exit__(self, *exc: object) -> None:
        self._send_switch(self._requested)    # wait until what we wrote is filed
        assert self._saved is not None and self._streams is not None
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        sys.stdout, sys.stderr = self._streams
        for stream in (self._terminal, self._stderr):
            stream.close()
        for fd in self._saved:
            os.close(fd)
        self._saved = None

    def _forward(self, read_end: int) -> None:
        """Reader thread: append what arrives to the current file; switch at each marker."""
        pending = b""
        while chunk := os.read(read_end, 1 << 16):
            pending += chunk
            while (at := pending.find(SWITCH_MARKER)) >= 0:
                self._append(pending[:at])
                pending = pending[at + len(SWITCH_MARKER):]
                if self._file is not None:
                    self._file.close()
                    self._file = None
                self._path = self._next.pop(0)
                self._switched.release()
            # hold back a tail that may be the start of a marker split across reads
            keep = next((k for k in range(len(SWITCH_MARKER) - 1, 0, -1)
                         if pending.endswith(SWITCH_MARKER[:k])), 0)
            self._append(pending[:len(pending) - keep])
            pending = pending[len(pending) - keep:]
        self._append(pending)
        os.close(read_end)

    def _append(self, data: bytes) -> None:
        if not data:
            return
        if self._file is None:
            self._file = open(self._path, "ab")  # noqa: SIM115 - closed at the next switch
            if self._path not in self.written:
                self.written.append(self._path)
        self._file.write(data)
        self._file.flush()

    @staticmethod
    def _flush_python_streams() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
