"""Base class shared by every partitioning algorithm, and its result.

:meth:`Partitioner.partition` is the one public entry point: it validates the
request, runs the algorithm's :meth:`Partitioner._assign` under a wall clock
and a peak-RSS monitor, then checks the partition book before returning it.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from partitioning.graph import PartitionGraph
from partitioning.memory import MemoryProbe, PeakRssMonitor


@dataclass(frozen=True, eq=False)
class PartitionResult:
    """A partition book and how it was obtained.

    Attributes:
        assignment: int32 [N] read-only partition book: ``assignment[v]`` is
            the part (training worker) that owns global node id ``v``.
        num_parts: number of parts requested.
        algorithm: name of the partitioner, e.g. ``"metis"``.
        params: the partitioner's parameters, JSON-serialisable.
        wall_s: wall-clock seconds of the algorithm (validation excluded).
        peak_rss_bytes: peak resident memory of the whole process while the
            algorithm ran (see :mod:`partitioning.memory`).
        peak_rss_delta_bytes: ``peak_rss_bytes`` minus the RSS when the
            algorithm started: the extra memory the algorithm needed.
        memory_probe: how the peak was measured, ``"hwm_reset"`` (exact) or
            ``"sampled"`` (lower bound).
        info: algorithm-specific diagnostics (METIS's own cut, coarsening
            levels, refinement moves, achieved imbalance...).
    """

    assignment: np.ndarray
    num_parts: int
    algorithm: str
    params: Mapping[str, Any]
    wall_s: float
    peak_rss_bytes: int
    peak_rss_delta_bytes: int
    memory_probe: str
    info: Mapping[str, Any] = field(default_factory=dict)

    def part_sizes(self) -> np.ndarray:
        """Number of nodes in each part, int64 [num_parts]."""
        return np.bincount(self.assignment, minlength=self.num_parts)


def check_num_parts(num_parts: int) -> int:
    """Returns ``num_parts`` as int, raising ValueError unless it is an integer >= 1."""
    if isinstance(num_parts, bool) or not isinstance(num_parts, (int, np.integer)):
        raise ValueError(f"num_parts must be an integer, got {type(num_parts).__name__}")
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    return int(num_parts)


def validate_partition_book(assignment: np.ndarray, num_nodes: int, num_parts: int) -> np.ndarray:
    """Checks a partition book and returns it as a read-only int32 array.

    A valid book assigns every node exactly once (one entry per global id), to
    a part in ``[0, num_parts)``, and leaves no part empty when
    ``num_nodes >= num_parts``.

    Args:
        assignment: int [num_nodes] part of each node.
        num_nodes: N.
        num_parts: number of parts.

    Returns:
        int32 [num_nodes], not writeable.

    Raises:
        ValueError: naming the first violated rule.
    """
    assignment = np.asarray(assignment)
    if assignment.shape != (num_nodes,):
        raise ValueError(
            f"partition book has shape {assignment.shape}, expected ({num_nodes},): one part per node"
        )
    if assignment.size and not np.issubdtype(assignment.dtype, np.integer):
        raise ValueError(f"partition book must hold integer part ids, got {assignment.dtype}")
    if assignment.size:
        low, high = int(assignment.min()), int(assignment.max())
        if low < 0 or high >= num_parts:
            bad = low if low < 0 else high
            raise ValueError(f"partition book holds part id {bad} outside [0, {num_parts})")
    if num_nodes >= num_parts:
        sizes = np.bincount(assignment, minlength=num_parts)
        empty = np.flatnonzero(sizes == 0)
        if empty.size:
            raise ValueError(
                f"parts {empty[:10].tolist()} are empty although N={num_nodes} >= {num_parts} parts"
            )
    book = assignment.astype(np.int32, copy=True)
    book.setflags(write=False)
    return book


def fill_empty_parts(assignment: np.ndarray, num_parts: int) -> np.ndarray:
    """Gives every empty part one node taken from the currently largest part.

    METIS and hashing can leave a part empty on tiny or skewed inputs; a
    training worker with no nodes would idle, so the book is repaired. The
    node moved is the highest id of the largest part (deterministic).

    Args:
        assignment: int [N] part per node, modified copy returned.
        num_parts: number of parts.

    Returns:
        int64 [N] with no empty part when ``N >= num_parts``.
    """
    assignment = np.asarray(assignment, dtype=np.int64).copy()
    if assignment.shape[0] < num_parts:
        return assignment
    sizes = np.bincount(assignment, minlength=num_parts)
    for empty_part in np.flatnonzero(sizes == 0):
        donor = int(np.argmax(sizes))
        node = int(np.flatnonzero(assignment == donor)[-1])
        assignment[node] = empty_part
        sizes[donor] -= 1
        sizes[empty_part] += 1
    return assignment


class Partitioner(abc.ABC):
    """Base class of the pluggable partitioning algorithms.

    Subclasses are frozen dataclasses whose fields are their parameters; they
    implement :meth:`_assign`. Callers use :meth:`partition` only.
    """

    algorithm: ClassVar[str] = "abstract"
    memory_probe: MemoryProbe

    def params(self) -> dict[str, Any]:
        """The partitioner's parameters as a plain dict."""
        if dataclasses.is_dataclass(self):
            return dataclasses.asdict(self)
        return {}

    @abc.abstractmethod
    def _assign(self, graph: PartitionGraph, num_parts: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Computes the assignment.

        Args:
            graph: the validated graph.
            num_parts: number of parts, >= 1.

        Returns:
            ``(assignment int [N], info dict)``.
        """

    def partition(self, graph: PartitionGraph, num_parts: int) -> PartitionResult:
        """Partitions ``graph`` into ``num_parts`` parts and checks the book.

        Args:
            graph: graph built with :meth:`PartitionGraph.from_coo`.
            num_parts: number of parts (training workers), >= 1.

        Returns:
            The validated partition book with wall time and peak memory.

        Raises:
            ValueError: on ``num_parts < 1`` or an invalid book.
        """
        num_parts = check_num_parts(num_parts)
        with PeakRssMonitor(getattr(self, "memory_probe", "auto")) as monitor:
            start = time.perf_counter()
            assignment, info = self._assign(graph, num_parts)
            wall_s = time.perf_counter() - start
        book = validate_partition_book(assignment, graph.num_nodes, num_parts)
        return PartitionResult(
            assignment=book,
            num_parts=num_parts,
            algorithm=self.algorithm,
            params=self.params(),
            wall_s=wall_s,
            peak_rss_bytes=monitor.peak_rss_bytes,
            peak_rss_delta_bytes=monitor.peak_delta_bytes,
            memory_probe=monitor.probe,
            info=info,
        )
