"""In-memory temporal heterogeneous graph: one time-sorted in-edge CSR per relation.

A relation is an edge type ``(src_type, relation, dst_type)``. Its edges are stored
indexed by *destination* node (in-edges), so the neighbours of a destination node ``v``
are ``neighbor[indptr[v]:indptr[v + 1]]`` and the row is sorted by ``edge_time``
ascending. That layout lets the sampler find, for a seed at time ``t``, the prefix of a
row that is strictly earlier than ``t`` with a binary search.

Node ids are dense per node type: ``0 .. num_nodes[type] - 1``. Times are int64 seconds
since the Unix epoch. Reverse relations are ordinary entries (for example
``("content", "rev_impressed", "user")``), built by :func:`add_reverse`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

EdgeType = tuple[str, str, str]
"""``(src_type, relation, dst_type)``."""

REVERSE_PREFIX = "rev_"


def segment_ids(segment_start: Tensor, total: int) -> Tensor:
    """Segment index of each of ``total`` positions, given where segments start.

    Equivalent to ``repeat_interleave(arange(S), lengths)`` for the lengths implied by
    ``segment_start``, but built from ``bincount`` + ``cumsum``: linear, and on CPU it
    avoids ``repeat_interleave``'s grain-1 ``parallel_for``, which stalls on tiny inputs
    when the cores are busy.

    Args:
        segment_start: int64 ``[S]`` non-decreasing start offsets in ``[0, total]``;
            empty segments repeat the next start.
        total: Number of positions.

    Returns:
        int64 ``[total]``.
    """
    starts_at = torch.bincount(segment_start, minlength=total + 1)[:total]
    return torch.cumsum(starts_at, 0) - 1


def expand_ranges(start: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """Every position of the ranges ``start[i] .. start[i] + count[i] - 1``, range by range.

    Returns:
        ``(range, position)``, each int64 ``[count.sum()]``: which range a position is
        in, and the position itself.
    """
    first = torch.cumsum(count, 0) - count
    which = segment_ids(first, int(count.sum()))
    return which, start[which] + torch.arange(which.numel(), device=count.device) - first[which]


@dataclass(frozen=True)
class TemporalCSR:
    """In-edges of one relation, grouped by destination and sorted by time.

    Attributes:
        indptr: int64 ``[num_dst + 1]``; row ``v`` holds edges ``indptr[v]:indptr[v+1]``.
        neighbor: int64 ``[num_edges]``; source node id of each edge, in the source
            type's id space.
        edge_time: int64 ``[num_edges]``; event time in seconds since epoch, ascending
            within each row (equal times by source id, :meth:`from_edges`).
        weight: Per-relation weight from the training config, broadcast to every
            sampled edge of this relation.
        edge_attr: Optional per-edge features, name -> tensor ``[num_edges, ...]``, in
            the same order as ``neighbor``.
    """

    indptr: Tensor
    neighbor: Tensor
    edge_time: Tensor
    weight: float = 1.0
    edge_attr: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Cheap structural checks only; the O(num_edges) sortedness check lives in
        # validate() so that .to(device) stays cheap.
        for name in ("indptr", "neighbor", "edge_time"):
            tensor = getattr(self, name)
            if tensor.dtype != torch.int64 or tensor.dim() != 1:
                raise ValueError(f"TemporalCSR.{name} must be a 1-D int64 tensor, got "
                                 f"{tensor.dtype} with shape {tuple(tensor.shape)}")
        if self.indptr.numel() < 1:
            raise ValueError("TemporalCSR.indptr must have num_dst + 1 >= 1 entries")
        if self.neighbor.numel() != self.edge_time.numel():
            raise ValueError("TemporalCSR.neighbor and edge_time differ in length: "
                             f"{self.neighbor.numel()} != {self.edge_time.numel()}")
        for name, attr in self.edge_attr.items():
            if attr.dim() < 1 or attr.shape[0] != self.num_edges:
                raise ValueError(f"TemporalCSR.edge_attr[{name!r}] has leading size "
                                 f"{tuple(attr.shape)[:1]}, expected {self.num_edges}")

    @property
    def num_dst(self) -> int:
        """Number of destination nodes (rows)."""
        return self.indptr.numel() - 1

    @property
    def num_edges(self) -> int:
        """Number of edges."""
        return self.neighbor.numel()

    @property
    def device(self) -> torch.device:
        """Device holding the arrays."""
        return self.indptr.device

    def edge_dst(self) -> Tensor:
        """Destination node id of every edge, int64 ``[num_edges]``."""
        return segment_ids(self.indptr[:-1], self.num_edges)

    def validate(self) -> None:
        """Checks the CSR invariants in O(num_edges).

        Raises:
            ValueError: If ``indptr`` is not a non-decreasing offset array ending at
                ``num_edges`` or a row is not sorted by ``edge_time``.
        """
        if int(self.indptr[0]) != 0 or int(self.indptr[-1]) != self.num_edges:
            raise ValueError("TemporalCSR.indptr must start at 0 and end at num_edges "
                             f"({self.num_edges}), got {int(self.indptr[0])} .. "
                             f"{int(self.indptr[-1])}")
        if bool((self.indptr[1:] < self.indptr[:-1]).any()):
            raise ValueError("TemporalCSR.indptr must be non-decreasing")
        if self.num_edges > 1:
            dst = self.edge_dst()
            same_row = dst[1:] == dst[:-1]
            if bool((same_row & (self.edge_time[1:] < self.edge_time[:-1])).any()):
                raise ValueError("TemporalCSR rows must be sorted by edge_time ascending")

    @classmethod
    def from_edges(cls, src: Tensor, dst: Tensor, time: Tensor, num_dst: int,
                   weight: float = 1.0,
                   edge_attr: dict[str, Tensor] | None = None) -> TemporalCSR:
        """Builds the CSR from an unsorted edge list.

        Args:
            src: int64 ``[num_edges]`` source node ids.
            dst: int64 ``[num_edges]`` destination node ids in ``[0, num_dst)``.
            time: int64 ``[num_edges]`` edge times, seconds since epoch.
            num_dst: Number of destination nodes.
            weight: Relation weight.
            edge_attr: Optional per-edge features, each ``[num_edges, ...]``.

        Returns:
            The CSR, rows ordered by ``(dst, time, src)``: the same edges give the same CSR
            whatever order they arrive in (day folders, files, Spark tasks), so sampling
            and training do not depend on how a store was laid out. Edges equal in
            ``(dst, time, src)`` keep their input order.
        """
        src, dst, time = (torch.as_tensor(x, dtype=torch.int64) for x in (src, dst, time))
        if not (src.shape == dst.shape == time.shape) or src.dim() != 1:
            raise ValueError("src, dst and time must be 1-D tensors of the same length")
        if dst.numel() and (int(dst.min()) < 0 or int(dst.max()) >= num_dst):
            raise ValueError(f"dst ids must lie in [0, {num_dst})")
        # Three stable sorts (src, time, then dst) give (dst, time, src) order without
        # building a composite key that could overflow int64 for wide time ranges.
        order = torch.sort(src, stable=True).indices
        order = order[torch.sort(time[order], stable=True).indices]
        order = order[torch.sort(dst[order], stable=True).indices]
        degree = torch.bincount(dst, minlength=num_dst)
        indptr = torch.zeros(num_dst + 1, dtype=torch.int64, device=dst.device)
        torch.cumsum(degree, 0, out=indptr[1:])
        attrs = {name: value[order] for name, value in (edge_attr or {}).items()}
        return cls(indptr=indptr, neighbor=src[order], edge_time=time[order],
                   weight=float(weight), edge_attr=attrs)

    def to(self, device: torch.device | str) -> TemporalCSR:
        """Returns a copy on ``device``."""
        return TemporalCSR(
            indptr=self.indptr.to(device), neighbor=self.neighbor.to(device),
            edge_time=self.edge_time.to(device), weight=self.weight,
            edge_attr={name: value.to(device) for name, value in self.edge_attr.items()})


@dataclass(frozen=True)
class TemporalHeteroGraph:
    """A heterogeneous temporal graph: node counts per type and one CSR per relation.

    Attributes:
        num_nodes: Node type -> number of nodes (ids are dense, ``0 .. n - 1``).
        csr: Edge type ``(src_type, relation, dst_type)`` -> in-edge CSR indexed by the
            destination type's ids, whose ``neighbor`` holds source type ids.
    """

    num_nodes: dict[str, int]
    csr: dict[EdgeType, TemporalCSR]

    def __post_init__(self) -> None:
        for edge_type, csr in self.csr.items():
            src_type, _, dst_type = edge_type
            for node_type in (src_type, dst_type):
                if node_type not in self.num_nodes:
                    raise ValueError(f"relation {edge_type} uses node type {node_type!r}"
                                     " missing from num_nodes")
            if csr.num_dst != self.num_nodes[dst_type]:
                raise ValueError(f"relation {edge_type}: CSR has {csr.num_dst} rows but "
                                 f"num_nodes[{dst_type!r}] = {self.num_nodes[dst_type]}")

    @property
    def node_types(self) -> list[str]:
        """Node type names."""
        return list(self.num_nodes)

    @property
    def edge_types(self) -> list[EdgeType]:
        """Relations, including reverse ones."""
        return list(self.csr)

    @property
    def device(self) -> torch.device:
        """Device of the CSR arrays (CPU for a graph without relations)."""
        for csr in self.csr.values():
            return csr.device
        return torch.device("cpu")

    def validate(self) -> None:
        """Checks every CSR's invariants and that neighbour ids are in range.

        Raises:
            ValueError: On the first violated invariant, naming the relation.
        """
        validate_relations(self.csr, self.num_nodes)

    def to(self, device: torch.device | str) -> TemporalHeteroGraph:
        """Returns a copy with every CSR on ``device``."""
        return TemporalHeteroGraph(
            num_nodes=dict(self.num_nodes),
            csr={edge_type: csr.to(device) for edge_type, csr in self.csr.items()})


def validate_relations(csr: dict[EdgeType, TemporalCSR], num_nodes: dict[str, int]) -> None:
    """Checks every CSR's invariants and that neighbour (source) ids lie in
    ``[0, num_nodes[src_type])``.

    Raises:
        ValueError: On the first violated invariant, naming the relation.
    """
    for edge_type, relation in csr.items():
        try:
            relation.validate()
        except ValueError as error:
            raise ValueError(f"relation {edge_type}: {error}") from error
        num_src = num_nodes[edge_type[0]]
        if relation.num_edges and (int(relation.neighbor.min()) < 0
                                   or int(relation.neighbor.max()) >= num_src):
            raise ValueError(f"relation {edge_type}: neighbour ids must lie in [0, {num_src})")


def reverse_edge_type(edge_type: EdgeType) -> EdgeType:
    """Returns ``(dst, "rev_" + relation, src)`` for ``(src, relation, dst)``."""
    src_type, relation, dst_type = edge_type
    return (dst_type, REVERSE_PREFIX + relation, src_type)


def add_reverse(graph: TemporalHeteroGraph) -> TemporalHeteroGraph:
    """Adds the reverse of every relation whose name does not start with ``"rev_"``.

    The reverse of ``(s, r, d)`` is ``(d, "rev_" + r, s)`` with the same edge times,
    weight and edge attributes, indexed by the original source nodes.

    Args:
        graph: Graph holding forward relations.

    Returns:
        A new graph with the forward and the reverse relations.

    Raises:
        ValueError: If a reverse relation to be built is already present.
    """
    csr = dict(graph.csr)
    for edge_type, forward in graph.csr.items():
        if edge_type[1].startswith(REVERSE_PREFIX):
            continue
        reverse = reverse_edge_type(edge_type)
        if reverse in graph.csr:
            raise ValueError(f"reverse relation {reverse} already exists")
        csr[reverse] = TemporalCSR.from_edges(
            src=forward.edge_dst(), dst=forward.neighbor, time=forward.edge_time,
            num_dst=graph.num_nodes[edge_type[0]], weight=forward.weight,
            edge_attr=forward.edge_attr)
    return TemporalHeteroGraph(num_nodes=dict(graph.num_nodes), csr=csr)
