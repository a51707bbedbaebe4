"""Hash partitioning, the baseline every other algorithm is measured against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from partitioning.base import Partitioner, fill_empty_parts
from partitioning.graph import PartitionGraph
from partitioning.memory import MemoryProbe


def splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a fixed, well-mixed 64-bit hash, uint64 [n]."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_part(node_ids: np.ndarray, num_parts: int, seed: int = 0) -> np.ndarray:
    """Part of each global node id under the seeded hash, int64 [n].

    A pure function of (id, seed, num_parts), so a node keeps its part across
    runs and new nodes can be placed without the rest of the graph.
    """
    mixed = splitmix64(np.asarray(node_ids, dtype=np.uint64) ^ splitmix64(np.array([seed], dtype=np.uint64)))
    return (mixed % np.uint64(num_parts)).astype(np.int64)


@dataclass(frozen=True)
class RandomPartitioner(Partitioner):
    """Assigns node ``v`` to ``splitmix64(v ^ h(seed)) % num_parts``.

    Ignores edges and weights. On tiny graphs a part can come out empty; it
    is then given one node from the largest part (see
    :func:`partitioning.base.fill_empty_parts`), the only case where a node's
    part is not its hash.

    Attributes:
        seed: selects the hash; equal seeds give equal books.
        memory_probe: see :mod:`partitioning.memory`.
    """

    algorithm: ClassVar[str] = "random"

    seed: int = 0
    memory_probe: MemoryProbe = "auto"

    def _assign(self, graph: PartitionGraph, num_parts: int) -> tuple[np.ndarray, dict[str, Any]]:
        assignment = hash_part(np.arange(graph.num_nodes, dtype=np.int64), num_parts, self.seed)
        return fill_empty_parts(assignment, num_parts), {}
