"""METIS partitioning through pymetis.

Integer weights
    METIS only takes positive integer edge weights and non-negative integer
    vertex weights. Integer-valued inputs up to 2**24 are passed unchanged.
    Anything else is scaled so that the median positive weight becomes
    ``resolution`` (default 1000), rounded, and clipped to ``[1, 2**30]``
    for edges (``[0, 2**30]`` for vertices, where a positive weight keeps at
    least 1). Relative precision of typical weights is therefore about
    1/resolution; weights more than ``2**30 / resolution`` times the median
    are clipped.

Multi-constraint balance
    pymetis 2025.2.2 always calls METIS with one constraint (``ncon=1``): a
    vertex weight array of length ``C * N`` is silently read as its first
    ``N`` entries. :func:`pymetis_supports_multi_constraint` probes the
    installed wrapper on a 40-node path. When it cannot, the C constraints
    are collapsed into one (each column scaled to the same total, see
    :func:`partitioning.graph.normalized_vertex_weight`), METIS balances that,
    and :func:`partitioning.refine.refine` then moves nodes until every
    constraint is within the same ``ufactor`` tolerance.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pymetis

from partitioning.base import Partitioner, fill_empty_parts
from partitioning.graph import PartitionGraph, normalized_vertex_weight
from partitioning.memory import MemoryProbe
from partitioning.refine import refine

_EXACT_INTEGER_LIMIT = 2**24
_MAX_INTEGER_WEIGHT = 2**30


def _is_small_integer_valued(weights: np.ndarray) -> bool:
    return bool(
        weights.size == 0 or (np.all(weights == np.rint(weights)) and weights.max() <= _EXACT_INTEGER_LIMIT)
    )


def integer_edge_weights(weights: np.ndarray, resolution: int = 1000) -> np.ndarray:
    """Positive integer edge weights for METIS (see the module docstring).

    Args:
        weights: float [M] positive weights.
        resolution: integer value given to the median weight when scaling.

    Returns:
        int64 [M], every entry in ``[1, 2**30]``.
    """
    if _is_small_integer_valued(weights):
        return np.maximum(weights, 1).astype(np.int64)
    scale = resolution / float(np.median(weights))
    return np.clip(np.rint(weights * scale), 1, _MAX_INTEGER_WEIGHT).astype(np.int64)


def integer_vertex_weights(weights: np.ndarray, resolution: int = 1000) -> np.ndarray:
    """Non-negative integer vertex weights for one constraint column.

    Args:
        weights: float [N] non-negative weights.
        resolution: integer value given to the median positive weight.

    Returns:
        int64 [N]; zero stays zero, positive weights become at least 1.
    """
    if _is_small_integer_valued(weights):
        return weights.astype(np.int64)
    positive = weights > 0
    scale = resolution / float(np.median(weights[positive]))
    scaled = np.clip(np.rint(weights * scale), 1, _MAX_INTEGER_WEIGHT).astype(np.int64)
    return np.where(positive, scaled, 0)


@functools.cache
def pymetis_supports_multi_constraint() -> bool:
    """Whether the installed pymetis passes ``ncon > 1`` to METIS.

    Partitions a 40-node path in two with constraint 0 uniform and
    constraint 1 carried only by nodes 0..9. A single-constraint wrapper cuts
    the path once and leaves nodes 0..9 together; one that honours both
    constraints must split them.
    """
    num_nodes = 40
    neighbours = [[v for v in (u - 1, u + 1) if 0 <= v < num_nodes] for u in range(num_nodes)]
    weights = np.zeros((num_nodes, 2), dtype=np.int64)
    weights[:, 0] = 1
    weights[:10, 1] = 1
    try:
        result = pymetis.part_graph(2, adjacency=neighbours, vweights=weights.ravel(), recursive=False)
    except Exception:  # any failure of the probe means "not supported"
        return False
    first_ten = np.bincount(np.asarray(result.vertex_part)[:10], minlength=2)
    return bool(first_ten.min() >= 3)


def metis_assignment(
    graph: PartitionGraph,
    num_parts: int,
    *,
    ufactor: int = 30,
    seed: int = 0,
    recursive: bool = False,
    niter: int = 10,
    ncuts: int = 1,
    weight_resolution: int = 1000,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Runs METIS once on ``graph`` with its vertex weights.

    Args:
        graph: the graph.
        num_parts: number of parts.
        ufactor: METIS load imbalance tolerance, in thousandths (30 means a
            part may carry 1.03x the mean).
        seed: METIS random seed; the same seed gives the same book.
        recursive: recursive bisection instead of k-way.
        niter: refinement iterations per METIS level.
        ncuts: independent METIS runs, best kept.
        weight_resolution: see :func:`integer_edge_weights`.

    Returns:
        ``(assignment int64 [N], info)``; info holds METIS's cut in scaled
        integer units and how the constraints were passed.
    """
    num_nodes = graph.num_nodes
    if num_parts == 1 or num_nodes == 0:
        return np.zeros(num_nodes, dtype=np.int64), {"constraints_mode": "trivial"}
    active = graph.vertex_weights.sum(axis=0) > 0
    vertex_weights = graph.vertex_weights[:, active]
    if num_nodes <= num_parts or graph.num_edges == 0:
        # Nothing to cut: deal nodes out heaviest first, round robin.
        order = (
            np.argsort(-normalized_vertex_weight(vertex_weights), kind="stable")
            if vertex_weights.size
            else np.arange(num_nodes)
        )
        assignment = np.empty(num_nodes, dtype=np.int64)
        assignment[order] = np.arange(num_nodes) % num_parts
        return assignment, {"constraints_mode": "no_edges"}

    num_constraints = vertex_weights.shape[1]
    if num_constraints == 0:
        vweights, mode = None, "unweighted"
    elif num_constraints == 1:
        vweights, mode = integer_vertex_weights(vertex_weights[:, 0], weight_resolution), "single"
    elif pymetis_supports_multi_constraint():
        columns = [
            integer_vertex_weights(vertex_weights[:, c], weight_resolution) for c in range(num_constraints)
        ]
        vweights, mode = np.stack(columns, axis=1).ravel(), "native"
    else:
        combined = normalized_vertex_weight(vertex_weights)
        vweights, mode = integer_vertex_weights(combined, weight_resolution), "collapsed"

    index_dtype = pymetis.zero_copy_dtype()
    options = pymetis.Options(seed=int(seed), ufactor=int(ufactor), niter=int(niter), ncuts=int(ncuts))
    result = pymetis.part_graph(
        num_parts,
        pymetis.CSRAdjacency(graph.indptr.astype(index_dtype), graph.indices.astype(index_dtype)),
        vweights=None if vweights is None else vweights.astype(index_dtype),
        eweights=integer_edge_weights(graph.edge_weight, weight_resolution).astype(index_dtype),
        options=options,
        recursive=recursive,
    )
    assignment = np.asarray(result.vertex_part, dtype=np.int64)
    return assignment, {"constraints_mode": mode, "metis_edge_cut": int(result.edge_cuts)}


@dataclass(frozen=True)
class MetisPartitioner(Partitioner):
    """Direct METIS partitioning of the whole graph.

    Attributes:
        ufactor: allowed imbalance in thousandths of the mean part load, per
            constraint (30 -> 1.03x).
        seed: METIS seed; equal seeds give equal books.
        recursive: recursive bisection instead of k-way.
        niter: METIS refinement iterations.
        ncuts: METIS attempts, best kept.
        weight_resolution: integer scaling of float weights.
        refine_passes: boundary refinement passes after enforcing every
            constraint, used when pymetis could only balance the collapsed
            constraint.
        memory_probe: see :mod:`partitioning.memory`.
    """

    algorithm: ClassVar[str] = "metis"

    ufactor: int = 30
    seed: int = 0
    recursive: bool = False
    niter: int = 10
    ncuts: int = 1
    weight_resolution: int = 1000
    refine_passes: int = 4
    memory_probe: MemoryProbe = "auto"

    def __post_init__(self) -> None:
        if self.ufactor < 1:
            raise ValueError(f"ufactor must be >= 1 (thousandths), got {self.ufactor}")

    def _assign(self, graph: PartitionGraph, num_parts: int) -> tuple[np.ndarray, dict[str, Any]]:
        assignment, info = metis_assignment(
            graph,
            num_parts,
            ufactor=self.ufactor,
            seed=self.seed,
            recursive=self.recursive,
            niter=self.niter,
            ncuts=self.ncuts,
            weight_resolution=self.weight_resolution,
        )
        if info["constraints_mode"] == "collapsed":
            assignment, refine_info = refine(
                graph, assignment, num_parts, imbalance=self.ufactor / 1000.0, max_passes=self.refine_passes
            )
            info.update(refine_info)
        return fill_empty_parts(assignment, num_parts), info
