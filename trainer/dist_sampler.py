"""Cross-partition temporal neighbour sampling with torch.distributed collectives.

Semantics are those of :mod:`trainer.sampler` (read its module docstring): strictly-earlier
visibility, every node of a seed's tree carries the root seed's time, rows deduplicated on
``(node, root time)`` and expanded once, local numbering grouped by hop. The output is
the same :class:`~trainer.sampler.SampledSubgraph`.

Who does what
-------------
Rank ``p`` serves part ``p`` of a :class:`~trainer.shard.PartitionShard`: the in-edges of
the nodes it owns. The *requester* (the rank whose batch it is) keeps all of its
subgraph's bookkeeping (the ``(node, root time)`` table, local ids, hops) in the hop loop
it shares with the single-process sampler (:func:`trainer.sampling_core.sample_hops`).
Only the per-row draw moves: at every hop each frontier row is routed, by the partition
book, to its node's *owner*, which finds the row's visible prefix in its local CSR and
draws from it with the single-process row machinery
(:meth:`~trainer.sampler.VisibleEdgeSearch.visible_range` and
:func:`~trainer.sampler.sample_rows`), then returns the drawn edges. The requester puts
them back in frontier order, so each relation's edges come out grouped by row in the same
order as in the single-process sampler.

Messages of one hop (each message is one flat uint8 buffer per destination, sent with
:func:`trainer.distributed.exchange`: a size all-to-all, then a payload all-to-all)::

    request   requester -> owner   int64 counts[num_node_types]
                                   int64 node[n_t]       for each node type t (global ids)
                                   int64 root_time[n_t]  for each node type t (seconds)
    response  owner -> requester   int64 counts[num_relations]
                                   for each relation r with n_r drawn edges:
                                     int32 query[n_r]     row index in that request's
                                                          node-type-t segment (t = dst of r)
                                     int64 neighbor[n_r]  global source id
                                     int64 edge_time[n_r]
                                     int64 edge_id[n_r]   graph-wide edge id
                                     edge attributes [n_r, ...] (native dtypes)

So a remote frontier row costs 16 bytes and a remote sampled edge 28 bytes plus its
attributes (32 with a float32 weight). A hop whose fanouts are all 0 sends nothing. Only
node types that some relation expands at that hop are requested.

Features (:meth:`DistTemporalSampler.fetch_features`): the categorical codes and
``created_time`` of the subgraph's non-owned nodes are fetched from their owners, each
distinct node once (``int64`` ids out; codes back in the smallest integer type that holds
the type's cardinality, ``created_time`` as int64).

A training step needs the features of its subgraph and the activity counts of its seeds
(:meth:`DistTemporalSampler.activity_counts_of`: ``int64`` ids and times out, counts
back) after sampling; :meth:`DistTemporalSampler.fetch_inputs` sends both in one pair of
exchanges (message kinds ``input_request``/``input_response``): each message is the
feature part followed by the count part, each laid out as when sent alone. A 2-hop step
thus makes 12 all-to-alls instead of 16 (4 per hop, 4 for the inputs), with the same
payload bytes.

Random draws and equality with the single-process sampler
-------------------------------------------------------------
``most_recent`` is deterministic: the distributed sample of a rank's seeds equals the
single-process sample of the same seeds on the unpartitioned graph, tensor for tensor
(``edge_id`` included when the shards come from :func:`trainer.shard.split_graph`).

``uniform`` cannot be equal draw for draw, by design: a row's draw is made by its owner
from the owner's generator, so the random stream of one batch is split over the owners
and interleaved with other ranks' requests. What is preserved is the distribution: each
row's draw is the same choice (Floyd subset, weighted subset, or independent draws with
replacement) over the same visible edges, independent across rows, so every sampled
tree has the law of the single-process sampler's. ``tests/test_distributed.py`` checks
that with chi-square goodness-of-fit tests against the exact law.

Hot-node cache
--------------
Without a cache, a node owned elsewhere is requested again by every batch that reaches
it. :func:`build_hot_cache` replicates on every rank the static features (codes and
``created_time``) of the highest-degree nodes of chosen types (content and brands: the
few that most batches reach); :meth:`DistTemporalSampler.fetch_features` then reads those
locally and requests only the others. The features returned are the same either way;
only the bytes change. Only STATIC features can be cached: activity counts are as-of
counts at each seed's time, and the neighbour draws need the owner's CSR, so both still
go to the owner.

Devices
-------
A sampler works where its shard's arrays are (:attr:`DistTemporalSampler.device`): the
CPU after construction, or a GPU after :meth:`DistTemporalSampler.place` (GPU memory,
or pinned host memory the GPU reads; :mod:`trainer.placement`). Its tables, draws,
messages and feature gathers are then made there: every tensor it creates is created on
that device, and the seeds and count queries it is given are copied there. The messages
hold the same bytes on every device, so ranks may place differently, and
:func:`~trainer.distributed.exchange` moves them where the process group needs them (no
copy for CUDA messages under NCCL, nor for CPU ones under gloo). On the CPU every
``.to(device)`` here is a no-op, so the CPU path is what it was.

Collectives: :meth:`~DistTemporalSampler.sample`, :meth:`~DistTemporalSampler.fetch_features`,
:func:`build_hot_cache` and the constructor are collective: every rank calls them in the
same order, a rank with no seeds too (empty seed tensors or an empty dict).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from torch import Tensor

from trainer.distributed import ByteCounter, comm_device, exchange
from trainer.graph import EdgeType, TemporalCSR, segment_ids
from trainer.model import NodeFeatures
from trainer.placement import Placement, SamplerFootprint, move_tensor, tensor_bytes
from trainer.sampler import (
    Fanouts,
    SampledSubgraph,
    Seeds,
    Strategy,
    TimeSearch,
    VisibleEdgeSearch,
    activity_counts,
    count_relations,
    sample_rows,
)
from trainer.sampling_core import (
    DrawnEdges,
    Frontier,
    check_generator,
    check_strategy,
    first_hops,
    normalise_fanouts,
    sample_hops,
    sampling_weights,
    take,
)
from trainer.shard import PartitionShard

_QUERY_DTYPE = torch.int32


def _route(owner: Tensor, world: int) -> tuple[Tensor, ...]:
    """Positions of the rows each rank owns, per rank, in their original order."""
    order = torch.sort(owner, stable=True).indices
    return torch.split(order, torch.bincount(owner, minlength=world).tolist())


def _as_bytes(tensor: Tensor) -> Tensor:
    """Flat uint8 view of a tensor's contents (C order)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def _pack(parts: list[Tensor], device: torch.device | None = None) -> Tensor:
    """Concatenates tensors' bytes into one uint8 message, on ``device`` when given (a
    part elsewhere is copied there; ``Tensor.to`` of a part already there is a no-op)."""
    if not parts:
        return torch.empty(0, dtype=torch.uint8, device=device)
    if device is not None:
        parts = [part.to(device) for part in parts]
    return torch.cat([_as_bytes(part) for part in parts])


class _Reader:
    """Reads typed arrays back from a uint8 message, in writing order."""

    def __init__(self, message: Tensor) -> None:
        self.message = message
        self.offset = 0

    def take(self, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
        numel = 1
        for size in shape:
            numel *= size
        nbytes = numel * dtype.itemsize
        piece = self.message[self.offset:self.offset + nbytes]
        if piece.numel() != nbytes:
            raise RuntimeError("truncated message: ranks disagree on the message layout")
        self.offset += nbytes
        # clone: a slice at an odd offset cannot be viewed as a wider dtype.
        return piece.clone().view(dtype).reshape(shape)

    def finish(self) -> None:
        if self.offset != self.message.numel():
            raise RuntimeError(f"message has {self.message.numel() - self.offset} unread "
                               "bytes: ranks disagree on the message layout")


def _code_dtype(cardinalities: list[int]) -> torch.dtype:
    """Smallest integer dtype holding codes ``< max(cardinalities)``."""
    largest = max(cardinalities, default=1)
    if largest <= 256:
        return torch.uint8
    if largest <= 2**15:
        return torch.int16
    if largest <= 2**31:
        return torch.int32
    return torch.int64


@dataclass(frozen=True)
class HotNodeCache:
    """Static features of some nodes, the same on every rank (see the module docstring).

    Attributes:
        node: Node type -> int64 ``[k]`` ascending global ids of the cached nodes.
        categorical: Node type -> int64 ``[k, C]`` codes, row ``i`` of ``node[t][i]``.
        created_time: Node type -> int64 ``[k]`` seconds since epoch, or ``None`` for
            types without a creation time.
    """

    node: dict[str, Tensor]
    categorical: dict[str, Tensor]
    created_time: dict[str, Tensor | None]

    def sizes(self) -> dict[str, int]:
        """Node type -> number of cached nodes."""
        return {node_type: int(ids.numel()) for node_type, ids in self.node.items()}

    def find(self, node_type: str, node: Tensor) -> tuple[Tensor, Tensor]:
        """``(hit, slot)``: bool ``[N]`` whether each id is cached, and int64 ``[N]`` its
        row in the cache (meaningful where ``hit``)."""
        cached = self.node.get(node_type)
        if cached is None or cached.numel() == 0 or node.numel() == 0:
            return (torch.zeros(node.numel(), dtype=torch.bool, device=node.device),
                    torch.zeros(node.numel(), dtype=torch.int64, device=node.device))
        slot = torch.searchsorted(cached, node).clamp_(max=cached.numel() - 1)
        return cached.index_select(0, slot) == node, slot


def hot_cache_sizes(fractions: dict[str, float], num_nodes: dict[str, int]) -> dict[str, int]:
    """Nodes to cache per type: ``ceil(fraction * nodes of the type)``.

    Raises:
        ValueError: An unknown node type or a fraction outside ``[0, 1]``.
    """
    sizes = {}
    for node_type, fraction in sorted(fractions.items()):
        if node_type not in num_nodes:
            raise ValueError(f"hot cache: unknown node type {node_type!r}")
        if not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"hot cache: the fraction of {node_type!r} must be in [0, 1], "
                             f"got {fraction}")
        sizes[node_type] = min(math.ceil(float(fraction) * num_nodes[node_type]),
                               num_nodes[node_type])
    return sizes


def owned_degree(shard: PartitionShard, node_type: str) -> Tensor:
    """int64 ``[owned]`` all-time in-degree of each owned node over every relation into
    its type (reverse relations included, so it is the node's total degree)."""
    degree = torch.zeros(shard.owned[node_type].numel(), dtype=torch.int64)
    for (_, _, dst_type), csr in shard.csr.items():
        if dst_type == node_type:
            degree += csr.indptr[1:] - csr.indptr[:-1]
    return degree


def build_hot_cache(shard: PartitionShard, fractions: dict[str, float],
                    group: dist.ProcessGroup | None = None,
                    counter: ByteCounter | None = None) -> HotNodeCache:
    """Replicates the static features of each type's highest-degree nodes (collective).

    Every rank offers the top ``k`` of its OWN nodes by degree (the global top ``k`` is
    among them), sends the offer to every other rank in one exchange, and keeps the
    global top ``k`` of the union, ties broken by the lower id, so every rank ends with
    the same cache. The degree is static (all time, not as of any event), so it only
    decides what is cached, never what a model sees.

    Args:
        shard: This rank's part.
        fractions: Node type -> fraction of its nodes to cache (see
            :func:`hot_cache_sizes`); the same on every rank.
        group: Process group (default: the world).
        counter: Where to count the one-off bytes (kind ``"hot_cache_build"``).

    Returns:
        The cache.
    """
    sizes = hot_cache_sizes(fractions, shard.num_nodes)
    node_types = list(sizes)
    offer = []
    for node_type in node_types:
        owned, features = shard.owned[node_type], shard.features[node_type]
        degree = owned_degree(shard, node_type)
        order = _by_degree(owned, degree)[:sizes[node_type]]
        offer += [torch.tensor([order.numel()], dtype=torch.int64), take(owned, order),
                  take(degree, order), take(features.categorical, order).long()]
        if features.created_time is not None:
            offer.append(take(features.created_time, order).long())
    message = _pack(offer)
    world = dist.get_world_size(group)
    received = exchange([message] * world, counter, "hot_cache_build", group)
    parts: dict[str, list[list[Tensor]]] = {t: [] for t in node_types}
    for message in received:
        reader = _Reader(message)
        for node_type in node_types:
            features = shard.features[node_type]
            count = int(reader.take(torch.int64, (1,)))
            columns = [reader.take(torch.int64, (count,)), reader.take(torch.int64, (count,)),
                       reader.take(torch.int64, (count, features.categorical.shape[1]))]
            if features.created_time is not None:
                columns.append(reader.take(torch.int64, (count,)))
            parts[node_type].append(columns)
        reader.finish()
    node, categorical, created_time = {}, {}, {}
    for node_type in node_types:
        columns = [torch.cat(column) for column in zip(*parts[node_type], strict=True)]
        keep = _by_degree(columns[0], columns[1])[:sizes[node_type]]
        keep = keep[torch.argsort(take(columns[0], keep))]  # ascending ids, for find()
        node[node_type] = take(columns[0], keep)
        categorical[node_type] = take(columns[2], keep)
        created_time[node_type] = take(columns[3], keep) if len(columns) > 3 else None
    return HotNodeCache(node=node, categorical=categorical, created_time=created_time)


def _by_degree(node: Tensor, degree: Tensor) -> Tensor:
    """Positions ordered by degree, highest first, ties by the lower id."""
    by_id = torch.argsort(node, stable=True)
    return take(by_id, torch.argsort(take(degree, by_id), descending=True, stable=True))


class DistTemporalSampler:
    """Temporal neighbour sampler over a partitioned graph (see the module docstring).

    Construction is collective: the ranks check that they serve parts ``0 .. P-1`` of
    one partitioning with the same relations, attributes and sampler settings.

    Args:
        shard: The part this rank serves (rank ``r`` must hold part ``r``).
        fanouts: As for :class:`~trainer.sampler.TemporalNeighborSampler`.
        strategy: ``"uniform"`` or ``"most_recent"``.
        replace: Uniform sampling with replacement.
        weighted: Draws weighted by the per-edge ``weight`` attribute, as for the
            single-process sampler; each owner draws from its own CSR's weights.
        time_search: Visible-prefix search, as for the single-process sampler.
        group: Process group (default: the world); its size must equal the parts.
        counter: Where to count bytes that cross partitions (a new one by default).
        hot_cache: Replicated static features that :meth:`fetch_features` reads
            locally instead of requesting them (:func:`build_hot_cache`); ``None``: none.
    """

    def __init__(self, shard: PartitionShard, fanouts: Fanouts,
                 strategy: Strategy = "uniform", replace: bool = False,
                 time_search: TimeSearch = "auto", group: dist.ProcessGroup | None = None,
                 counter: ByteCounter | None = None,
                 hot_cache: HotNodeCache | None = None, weighted: bool = False) -> None:
        check_strategy(strategy, replace, weighted)
        self.shard = shard
        self.strategy: Strategy = strategy
        self.replace = replace
        self.weighted = weighted
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.counter = counter if counter is not None else ByteCounter()
        self.hot_cache = hot_cache
        # Where the shard's arrays are, hence where the draws and messages run: the CPU
        # until place() moves them (see trainer.placement).
        self.placement: Placement = "cpu"
        self.device = torch.device("cpu")
        self.node_types = shard.node_types
        self.edge_types = shard.edge_types
        self.fanouts = normalise_fanouts(fanouts, self.edge_types)
        self.num_hops = len(next(iter(self.fanouts.values()), ()))
        self._attr_schema = {
            edge_type: [(name, value.dtype, tuple(value.shape[1:]))
                        for name, value in csr.edge_attr.items()]
            for edge_type, csr in shard.csr.items()}
        self._code_dtype = {t: _code_dtype(f.cardinalities) for t, f in shard.features.items()}
        # Validate before the collective check and fail on every rank together, so a
        # bad shard on one rank cannot leave the others waiting in the first sample().
        problem = None
        try:
            self._validate_shard()
            self._search = {edge_type: VisibleEdgeSearch.build(csr, time_search)
                            for edge_type, csr in shard.csr.items()}
            self._weight = {edge_type: sampling_weights(csr, edge_type, weighted)
                            for edge_type, csr in shard.csr.items()}
        except ValueError as error:
            problem = str(error)
        self._check_consistent(valid=problem is None)
        if problem is not None:
            raise ValueError(problem)

    # ------------------------------------------------------------------- consistency

    def _validate_shard(self) -> None:
        self.shard.validate()
        for node_type, features in self.shard.features.items():
            codes = features.categorical
            if codes.numel() and (int(codes.min()) < 0 or bool(
                    (codes >= torch.tensor(features.cardinalities)).any())):
                raise ValueError(f"features[{node_type!r}] has codes outside "
                                 "[0, cardinality)")

    def _check_consistent(self, valid: bool) -> None:
        """All ranks agree on the schema and settings, serve their own part, and hold a
        valid shard; raises on every rank otherwise."""
        shard = self.shard
        schema = {
            "num_parts": shard.num_parts, "num_nodes": shard.num_nodes,
            "relations": [[list(et), shard.csr[et].weight,
                           [[n, str(d), list(s)] for n, d, s in self._attr_schema[et]]]
                          for et in self.edge_types],
            "features": {t: [f.cardinalities, f.created_time is not None,
                             f.learn_id_embedding, int(f.categorical.shape[1])]
                         for t, f in shard.features.items()},
            "fanouts": [[list(et), list(hops)] for et, hops in self.fanouts.items()],
            "strategy": self.strategy, "replace": self.replace, "weighted": self.weighted,
            # Ranks must agree on what is cached: a node one rank reads from its cache
            # and another requests would make their messages disagree.
            "hot_cache": ({t: [int(ids.numel()), int(ids.sum())]
                           for t, ids in sorted(self.hot_cache.node.items())}
                          if self.hot_cache is not None else None)}
        digest = hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()
        value = int(digest[:15], 16)
        serves_own_part = int(shard.part == self.rank and shard.num_parts == self.world_size)
        # One MAX-reduction gives max(hash), -min(hash), -min(ok) and -min(valid).
        probe = torch.tensor([value, -value, -serves_own_part, -int(valid)],
                             dtype=torch.int64, device=comm_device(self.group))
        dist.all_reduce(probe, op=dist.ReduceOp.MAX, group=self.group)
        probe = probe.cpu()
        if valid and int(probe[3]) != -1:
            raise ValueError("another rank's shard failed validation (see its error)")
        if int(probe[2]) != -1:
            raise ValueError(f"rank r must serve part r of a {self.world_size}-part shard "
                             f"set; this rank {self.rank} holds part {shard.part} of "
                             f"{shard.num_parts} (or another rank is misassigned)")
        if int(probe[0]) != -int(probe[1]):
            raise ValueError("ranks disagree on the shard schema (node types, relations, "
                             "edge attributes, features) or the sampler settings")

    # ---------------------------------------------------------------------- placement

    def footprint(self) -> SamplerFootprint:
        """Bytes of the arrays :meth:`place` moves (each distinct tensor once: the search
        index and the draw weights share the CSR's ``edge_time``/``indptr``/``weight``)."""
        sizes = {"edge": 0, "node": 0}

        def count(tensor: Tensor, kind: str) -> Tensor:
            sizes[kind] += tensor_bytes(tensor)
            return tensor

        self._map_arrays(count)
        num_edges = sum(csr.num_edges for csr in self.shard.csr.values())
        return SamplerFootprint(sizes["edge"], sizes["node"], num_edges)

    def place(self, placement: Placement, device: torch.device | str | None = None
              ) -> DistTemporalSampler:
        """Moves the shard's arrays, search index, draw weights and hot-node cache
        (:mod:`trainer.placement`; local, not collective). ``"cpu"`` leaves them as
        they are. The other ranks may place theirs differently: the messages are the
        same bytes wherever they are made.

        Args:
            placement: ``"cpu"``, ``"cuda"`` (GPU memory) or ``"pinned"`` (page-locked
                host memory read from the GPU).
            device: The CUDA device (default: the current one); ignored for ``"cpu"``.

        Returns:
            This sampler.
        """
        if self.placement != "cpu":
            raise ValueError(f"the sampler is placed already ({self.placement})")
        if placement == "cpu":
            return self
        target = torch.device("cuda", torch.cuda.current_device()) if device is None \
            else torch.device(device)
        if target.type != "cuda":
            raise ValueError(f"placement {placement} needs a CUDA device, got {target}")
        if target.index is None:
            target = torch.device("cuda", torch.cuda.current_device())
        shard, search, weight, cache = self._map_arrays(
            lambda tensor, _kind: move_tensor(tensor, placement, target))
        self.shard, self._search, self._weight, self.hot_cache = shard, search, weight, cache
        self.placement, self.device = placement, target
        return self

    def _map_arrays(self, move: Callable[[Tensor, str], Tensor]
                    ) -> tuple[PartitionShard, dict[EdgeType, VisibleEdgeSearch],
                               dict[EdgeType, Tensor | None], HotNodeCache | None]:
        """The sampler's arrays rebuilt from ``move(tensor, kind)`` (kind ``"edge"``:
        one entry per edge, ``"node"``: per node), each distinct tensor moved once."""
        moved: dict[int, Tensor] = {}

        def put(tensor: Tensor | None, kind: str) -> Tensor | None:
            if tensor is None:
                return None
            if id(tensor) not in moved:
                moved[id(tensor)] = move(tensor, kind)
            return moved[id(tensor)]

        shard = self.shard
        csr = {edge_type: TemporalCSR(
            indptr=put(c.indptr, "node"), neighbor=put(c.neighbor, "edge"),
            edge_time=put(c.edge_time, "edge"), weight=c.weight,
            edge_attr={name: put(value, "edge") for name, value in c.edge_attr.items()})
            for edge_type, c in shard.csr.items()}
        features = {node_type: NodeFeatures(
            categorical=put(f.categorical, "node"), cardinalities=list(f.cardinalities),
            created_time=put(f.created_time, "node"), learn_id_embedding=f.learn_id_embedding)
            for node_type, f in shard.features.items()}
        placed = PartitionShard(
            part=shard.part, num_parts=shard.num_parts, num_nodes=dict(shard.num_nodes),
            partition_book={t: put(b, "node") for t, b in shard.partition_book.items()},
            owned={t: put(o, "node") for t, o in shard.owned.items()}, csr=csr,
            edge_id={et: put(e, "edge") for et, e in shard.edge_id.items()},
            features=features)
        search = {edge_type: dataclasses.replace(
            index, indptr=put(index.indptr, "node"), edge_time=put(index.edge_time, "edge"),
            key_blocks=put(index.key_blocks, "edge"), fence=put(index.fence, "edge"))
            for edge_type, index in self._search.items()}
        weight = {edge_type: put(value, "edge") for edge_type, value in self._weight.items()}
        cache = self.hot_cache
        if cache is not None:
            cache = HotNodeCache(
                node={t: put(v, "node") for t, v in cache.node.items()},
                categorical={t: put(v, "node") for t, v in cache.categorical.items()},
                created_time={t: put(v, "node") for t, v in cache.created_time.items()})
        return placed, search, weight, cache

    # ----------------------------------------------------------------------- sampling

    def sample(self, seeds: Seeds, generator: torch.Generator | None = None,
               hops: int | None = None) -> SampledSubgraph:
        """Samples the temporal neighbourhood of this rank's seeds (collective; every
        rank passes the same ``hops``: only the first ``hops`` hops, default all, as for
        :meth:`trainer.sampler.TemporalNeighborSampler.sample`).

        Args:
            seeds: Node type -> ``(node_ids, seed_time)``, int64 ``[B]`` tensors, global
                ids, seconds since epoch (copied to :attr:`device` when elsewhere). May
                be empty on some ranks.
            generator: This rank's random source for ``"uniform"`` (required there); it
                draws for every row this rank OWNS, whichever rank asked for it. On the
                CPU or on :attr:`device` (a CPU generator gives the same draws on every
                placement: see :mod:`trainer.placement`).

        Returns:
            The sampled subgraph, laid out as by the single-process sampler, on
            :attr:`device`.
        """
        check_generator(self.strategy, generator)
        device = self.device
        seeds = {t: (node.to(device), time.to(device)) for t, (node, time) in seeds.items()}
        return sample_hops(
            seeds, self.shard.num_nodes, self.shard.csr, first_hops(self.fanouts, hops), device,
            partial(self._draw_hop, generator=generator))

    def _draw_hop(self, hop: int, frontier: dict[str, Frontier], root_time: Tensor,
                  generator: torch.Generator | None) -> dict[EdgeType, DrawnEdges]:
        """Routes the frontier to its owners, serves the other ranks' rows, and returns
        this rank's drawn edges per relation, in frontier order (two exchanges)."""
        active = [et for et in self.edge_types if self.fanouts[et][hop] != 0]
        if not active:  # the same on every rank: skip the exchanges altogether
            return {}
        expanded = {et[2] for et in active}
        world = self.world_size
        # Requests: per destination, per node type, the frontier positions it owns.
        positions: list[dict[str, Tensor]] = [{} for _ in range(world)]
        empty = torch.empty(0, dtype=torch.int64, device=self.device)
        for node_type in self.node_types:
            rows = frontier.get(node_type)
            if node_type not in expanded or rows is None or rows.node.numel() == 0:
                for destination in range(world):
                    positions[destination][node_type] = empty
                continue
            for destination, chunk in enumerate(_route(self.shard.owner(node_type, rows.node), world)):
                positions[destination][node_type] = chunk
        requests = []
        for destination in range(world):
            counts = torch.tensor([positions[destination][t].numel() for t in self.node_types],
                                  dtype=torch.int64)
            nodes, times = [], []
            for node_type in self.node_types:
                position = positions[destination][node_type]
                if position.numel():
                    rows = frontier[node_type]
                    nodes.append(take(rows.node, position))
                    times.append(take(root_time, take(rows.time_rank, position)))
            requests.append(_pack([counts, *nodes, *times], self.device))
        received = exchange(requests, self.counter, "sample_request", self.group)
        responses = self._serve(hop, received, generator)
        answers = exchange(responses, self.counter, "sample_response", self.group)
        return self._collect(answers, positions)

    def _serve(self, hop: int, requests: list[Tensor], generator: torch.Generator | None
               ) -> list[Tensor]:
        """Owner side: draws edges for every rank's rows it owns; one message per rank."""
        world, num_types = self.world_size, len(self.node_types)
        query_node: dict[str, list[Tensor]] = {t: [] for t in self.node_types}
        query_time: dict[str, list[Tensor]] = {t: [] for t in self.node_types}
        per_source_counts = torch.zeros((world, num_types), dtype=torch.int64,
                                        device=self.device)
        for source, message in enumerate(requests):
            reader = _Reader(message)
            counts = reader.take(torch.int64, (num_types,))
            total = int(counts.sum())
            nodes, times = reader.take(torch.int64, (total,)), reader.take(torch.int64, (total,))
            reader.finish()
            per_source_counts[source] = counts
            sizes = counts.tolist()
            for node_type, node, time in zip(self.node_types, torch.split(nodes, sizes),
                                             torch.split(times, sizes), strict=True):
                query_node[node_type].append(node)
                query_time[node_type].append(time)
        # Queries of a type are concatenated by source rank: source s's rows start at
        # query_offset[s] and keep their order within it.
        query_offset = torch.cumsum(per_source_counts, 0) - per_source_counts
        segments: list[list[Tensor]] = [[] for _ in range(world)]
        headers = torch.zeros((world, len(self.edge_types)), dtype=torch.int64,
                              device=self.device)
        for index, edge_type in enumerate(self.edge_types):
            fanout = self.fanouts[edge_type][hop]
            type_index = self.node_types.index(edge_type[2])
            node = torch.cat(query_node[edge_type[2]])
            if fanout == 0 or node.numel() == 0:
                continue
            time = torch.cat(query_time[edge_type[2]])
            local = self.shard.local_row(edge_type[2], node)
            start, end = self._search[edge_type].visible_range(local, time)
            edge_pos, query = sample_rows(start, end - start, fanout, self.strategy,
                                          self.replace, generator, self._weight[edge_type])
            # sample_rows groups edges by query in query order, hence by source too.
            query_source = segment_ids(query_offset[:, type_index].contiguous(),
                                       node.numel())
            source = take(query_source, query)
            in_source = query - take(query_offset[:, type_index].contiguous(), source)
            counts = torch.bincount(source, minlength=world)
            headers[:, index] = counts
            csr = self.shard.csr[edge_type]
            columns = [in_source.to(_QUERY_DTYPE), take(csr.neighbor, edge_pos),
                       take(csr.edge_time, edge_pos),
                       take(self.shard.edge_id[edge_type], edge_pos)]
            columns += [take(csr.edge_attr[name], edge_pos)
                        for name, _, _ in self._attr_schema[edge_type]]
            split = [torch.split(column, counts.tolist()) for column in columns]
            for destination in range(world):
                segments[destination].extend(parts[destination] for parts in split)
        return [_pack([headers[destination], *segments[destination]], self.device)
                for destination in range(world)]

    def _collect(self, answers: list[Tensor], positions: list[dict[str, Tensor]]
                 ) -> dict[EdgeType, DrawnEdges]:
        """Requester side: merges the owners' answers into frontier order."""
        parts: dict[EdgeType, list[tuple[Tensor, ...]]] = {et: [] for et in self.edge_types}
        for owner, message in enumerate(answers):
            reader = _Reader(message)
            counts = reader.take(torch.int64, (len(self.edge_types),)).tolist()
            for edge_type, count in zip(self.edge_types, counts, strict=True):
                if not count:
                    continue
                query = reader.take(_QUERY_DTYPE, (count,)).long()
                neighbor = reader.take(torch.int64, (count,))
                edge_time = reader.take(torch.int64, (count,))
                edge_id = reader.take(torch.int64, (count,))
                attrs = tuple(reader.take(dtype, (count, *shape))
                              for _, dtype, shape in self._attr_schema[edge_type])
                frontier_position = take(positions[owner][edge_type[2]], query)
                parts[edge_type].append((frontier_position, neighbor, edge_time, edge_id,
                                         *attrs))
            reader.finish()
        drawn = {}
        for edge_type, chunks in parts.items():
            schema = self._attr_schema[edge_type]
            if chunks:
                columns = [torch.cat(column) for column in zip(*chunks, strict=True)]
            else:
                columns = [torch.empty(0, dtype=torch.int64, device=self.device)] * 4 + [
                    torch.empty((0, *shape), dtype=dtype, device=self.device)
                    for _, dtype, shape in schema]
            # A row has one owner, so a stable sort on the frontier position restores
            # the single-process order: rows in frontier order, each row's edges in the
            # order its owner drew them.
            order = torch.sort(columns[0], stable=True).indices
            columns = [column.index_select(0, order) for column in columns]
            drawn[edge_type] = DrawnEdges(
                frontier_position=columns[0], neighbor=columns[1], edge_time=columns[2],
                edge_id=columns[3],
                edge_attr={name: value for (name, _, _), value in zip(schema, columns[4:],
                                                                       strict=True)})
        return drawn

    # ----------------------------------------------------------------------- features

    def fetch_features(self, subgraph: SampledSubgraph) -> dict[str, NodeFeatures]:
        """Static attributes of every row of ``subgraph`` (collective).

        Owned rows and rows of the hot-node cache are read locally; each other distinct
        non-owned node is fetched once from its owner (two exchanges for all node types
        together).

        Args:
            subgraph: A sample of this rank (global ids in ``subgraph.node``).

        Returns:
            Node type -> :class:`NodeFeatures` indexed by LOCAL row of ``subgraph``
            (``categorical`` ``[rows, C]``, ``created_time`` ``[rows]``); cardinalities
            and flags as in the shard. See :func:`model_inputs` to feed the model.
        """
        return self.fetch_inputs(subgraph, None)[0]

    def fetch_inputs(self, subgraph: SampledSubgraph,
                     count_queries: dict[str, tuple[Tensor, Tensor]] | None
                     ) -> tuple[dict[str, NodeFeatures], dict[str, Tensor] | None]:
        """:meth:`fetch_features` of ``subgraph`` and :meth:`activity_counts_of` of
        ``count_queries`` in ONE pair of exchanges (collective): each message carries the
        feature part, then the count part. A training step needs both after sampling, so
        this halves its post-sampling exchanges (2 instead of 4), and with them the points
        where the ranks wait for each other; the results are those of the two calls.

        Collective: every rank passes ``count_queries`` or every rank passes ``None``
        (then no count part travels, as in :meth:`fetch_features`), with the same node
        types in the same order.

        Returns:
            ``(features, counts)``: as :meth:`fetch_features` returns, and as
            :meth:`activity_counts_of` returns (``None`` when ``count_queries`` is).
        """
        features = _FeatureQuery.of(self, subgraph)
        counts = _CountQuery.of(self, count_queries) if count_queries is not None else None
        kind = "feature" if counts is None else "input"
        requests = [_pack(features.request(destination)
                          + (counts.request(destination) if counts is not None else []),
                          self.device)
                    for destination in range(self.world_size)]
        received = exchange(requests, self.counter, f"{kind}_request", self.group)
        responses = []
        for message in received:
            reader = _Reader(message)
            columns = self._serve_features(reader)
            if counts is not None:
                columns += self._serve_counts(reader, counts.types)
            reader.finish()
            responses.append(_pack(columns, self.device))
        answers = exchange(responses, self.counter, f"{kind}_response", self.group)
        readers = [_Reader(message) for message in answers]
        out = features.read(readers)
        count_out = counts.read(readers) if counts is not None else None
        for reader in readers:
            reader.finish()
        return out, count_out

    def _serve_features(self, reader: _Reader) -> list[Tensor]:
        """Owner side: the feature columns of one requester's ids, read from ``reader``."""
        counts = reader.take(torch.int64, (len(self.node_types),)).tolist()
        ids = [reader.take(torch.int64, (count,)) for count in counts]
        return [column for node_type, node in zip(self.node_types, ids, strict=True)
                for column in self._feature_columns(node_type, node)]

    def _serve_counts(self, reader: _Reader, types: list[str]) -> list[Tensor]:
        """Owner side: the activity counts of one requester's rows, read from ``reader``."""
        sizes = reader.take(torch.int64, (len(types),)).tolist()
        columns = []
        for node_type, rows in zip(types, sizes, strict=True):
            ids, times = reader.take(torch.int64, (rows,)), reader.take(torch.int64, (rows,))
            local = self.shard.local_row(node_type, ids)
            columns.append(activity_counts(self._count_local,
                                           count_relations(self.edge_types, node_type),
                                           local, times))
        return columns

    def activity_counts(self, node_type: str, node: Tensor, time: Tensor) -> Tensor:
        """:func:`~trainer.sampler.activity_counts` of ``node`` at ``time`` (collective).

        Each row goes to its node's owner, which counts the visible in-edges in its CSR
        (16 bytes out, ``16 * relations`` back per remote row); every rank calls this the
        same number of times, with empty tensors when it has no rows.

        Returns:
            int64 ``[len(node), 2 * relations]``, in the single-process sampler's columns.
        """
        return self.activity_counts_of({node_type: (node, time)})[node_type]

    def activity_counts_of(self, queries: dict[str, tuple[Tensor, Tensor]]
                           ) -> dict[str, Tensor]:
        """:meth:`activity_counts` of several node types in one pair of exchanges.

        Collective: every rank passes the same node types, in the same order (empty
        tensors when it has no rows of a type). A training step asks for its user and
        content seeds together, with its features (:meth:`fetch_inputs`).

        Args:
            queries: Node type -> ``(node, time)``, int64 ``[n]`` global ids and seconds.

        Returns:
            Node type -> int64 ``[n, 2 * relations of that type]``.
        """
        counts = _CountQuery.of(self, queries)
        requests = [_pack(counts.request(destination), self.device)
                    for destination in range(self.world_size)]
        received = exchange(requests, self.counter, "count_request", self.group)
        responses = []
        for message in received:
            reader = _Reader(message)
            responses.append(_pack(self._serve_counts(reader, counts.types), self.device))
            reader.finish()
        answers = exchange(responses, self.counter, "count_response", self.group)
        readers = [_Reader(message) for message in answers]
        out = counts.read(readers)
        for reader in readers:
            reader.finish()
        return out

    def count_before(self, edge_type: EdgeType, node: Tensor, time: Tensor) -> Tensor:
        """:meth:`TemporalNeighborSampler.count_before` for nodes this rank OWNS (local,
        not collective): ``edge_type`` edges into ``node[i]`` strictly before ``time[i]``.
        With it :class:`~trainer.asof.AsOfCounts` counts the owned users' interactions.

        Runs on :attr:`device`; the counts come back on ``node``'s device.

        Raises:
            ValueError: A node of ``node`` is not owned here.
        """
        local = self.shard.local_row(edge_type[2], node.to(self.device))
        return self._count_local(edge_type, local, time.to(self.device)).to(node.device)

    def _count_local(self, edge_type: EdgeType, row: Tensor, time: Tensor) -> Tensor:
        """Visible in-edges of owned LOCAL rows (``count_before`` of this shard)."""
        start, end = self._search[edge_type].visible_range(row, time)
        return end - start

    def _feature_columns(self, node_type: str, node: Tensor) -> list[Tensor]:
        """Codes (wire dtype) and created_time of owned global ids ``node``."""
        features = self.shard.features[node_type]
        row = self.shard.local_row(node_type, node)
        columns = [take(features.categorical, row).to(self._code_dtype[node_type])]
        if features.created_time is not None:
            columns.append(take(features.created_time, row))
        return columns


@dataclass(frozen=True)
class _FeatureQuery:
    """Requester side of a feature fetch: which distinct nodes go to which owner, and
    how the answers scatter back (:meth:`DistTemporalSampler.fetch_inputs`).

    Attributes:
        sampler: The requesting rank's sampler.
        unique: Node type -> int64 distinct global ids of the subgraph's rows.
        inverse: Node type -> each row's index into ``unique``.
        positions: Per owner rank, node type -> positions in ``unique`` it serves.
        cached: Node type -> positions in ``unique`` read from the hot-node cache.
        cache_slot: Node type -> each ``unique`` id's row in the cache (where cached).
    """

    sampler: DistTemporalSampler
    unique: dict[str, Tensor]
    inverse: dict[str, Tensor]
    positions: list[dict[str, Tensor]]
    cached: dict[str, Tensor]
    cache_slot: dict[str, Tensor]

    @classmethod
    def of(cls, sampler: DistTemporalSampler, subgraph: SampledSubgraph) -> _FeatureQuery:
        world, shard = sampler.world_size, sampler.shard
        unique, inverse, positions = {}, {}, [{} for _ in range(world)]
        cached, cache_slot = {}, {}
        for node_type in sampler.node_types:
            node = subgraph.node.get(node_type, torch.empty(0, dtype=torch.int64,
                                                            device=sampler.device))
            node = node.to(sampler.device)
            unique[node_type], inverse[node_type] = torch.unique(node, return_inverse=True)
            owner = shard.owner(node_type, unique[node_type])
            if sampler.hot_cache is not None:
                # Cached non-owned rows go to a pseudo-destination ``world``: not sent.
                hit, cache_slot[node_type] = sampler.hot_cache.find(node_type,
                                                                    unique[node_type])
                owner = torch.where(hit & (owner != sampler.rank), world, owner)
            routes = _route(owner, world + 1)
            cached[node_type] = routes[world]
            for destination, chunk in enumerate(routes[:world]):
                positions[destination][node_type] = chunk
        return cls(sampler, unique, inverse, positions, cached, cache_slot)

    def request(self, destination: int) -> list[Tensor]:
        """The feature part of the message to ``destination``: int64 counts per node
        type, then the ids (nothing asked of this rank itself: read locally)."""
        node_types = self.sampler.node_types
        if destination == self.sampler.rank:
            return [torch.zeros(len(node_types), dtype=torch.int64)]
        wanted = [take(self.unique[t], self.positions[destination][t]) for t in node_types]
        return [torch.tensor([ids.numel() for ids in wanted], dtype=torch.int64), *wanted]

    def read(self, readers: list[_Reader]) -> dict[str, NodeFeatures]:
        """Features per row of the subgraph: owned and cached rows read locally, the
        others from each owner's answer (its feature part, read from ``readers``)."""
        sampler, shard = self.sampler, self.sampler.shard
        out = {}
        for node_type in sampler.node_types:
            features = shard.features[node_type]
            num_unique, num_columns = self.unique[node_type].numel(), features.categorical.shape[1]
            codes = torch.zeros((num_unique, num_columns), dtype=torch.int64,
                                device=sampler.device)
            created = (torch.zeros(num_unique, dtype=torch.int64, device=sampler.device)
                       if features.created_time is not None else None)
            own = self.positions[sampler.rank][node_type]
            row = shard.local_row(node_type, take(self.unique[node_type], own))
            codes.index_copy_(0, own, take(features.categorical, row))
            if created is not None:
                created.index_copy_(0, own, take(features.created_time, row))
            hits = self.cached[node_type]
            if hits.numel():
                slot = take(self.cache_slot[node_type], hits)
                codes.index_copy_(0, hits, take(sampler.hot_cache.categorical[node_type], slot))
                if created is not None:
                    created.index_copy_(0, hits, take(sampler.hot_cache.created_time[node_type],
                                                       slot))
            out[node_type] = (codes, created)
        for owner, reader in enumerate(readers):
            if owner == sampler.rank:  # asked nothing of itself: its feature part is empty
                continue
            for node_type in sampler.node_types:
                codes, created = out[node_type]
                position = self.positions[owner][node_type]
                count, num_columns = position.numel(), codes.shape[1]
                codes.index_copy_(0, position, reader.take(
                    sampler._code_dtype[node_type], (count, num_columns)).long())
                if created is not None:
                    created.index_copy_(0, position, reader.take(torch.int64, (count,)))
        result = {}
        for node_type, (codes, created) in out.items():
            features = shard.features[node_type]
            result[node_type] = NodeFeatures(
                categorical=take(codes, self.inverse[node_type]),
                cardinalities=list(features.cardinalities),
                created_time=None if created is None else take(created, self.inverse[node_type]),
                learn_id_embedding=features.learn_id_embedding)
        return result


@dataclass(frozen=True)
class _CountQuery:
    """Requester side of an activity-count query: which rows go to which owner
    (:meth:`DistTemporalSampler.activity_counts_of`, :meth:`~DistTemporalSampler.fetch_inputs`).

    Attributes:
        sampler: The requesting rank's sampler.
        queries: Node type -> ``(node, time)``, int64 ``[n]``.
        routes: Node type -> per owner rank, the positions of the rows it owns.
    """

    sampler: DistTemporalSampler
    queries: dict[str, tuple[Tensor, Tensor]]
    routes: dict[str, tuple[Tensor, ...]]

    @property
    def types(self) -> list[str]:
        return list(self.queries)

    @classmethod
    def of(cls, sampler: DistTemporalSampler, queries: dict[str, tuple[Tensor, Tensor]]
           ) -> _CountQuery:
        device = sampler.device
        queries = {t: (node.to(device), time.to(device)) for t, (node, time) in queries.items()}
        routes = {t: _route(sampler.shard.owner(t, node), sampler.world_size)
                  for t, (node, _) in queries.items()}
        return cls(sampler, queries, routes)

    def request(self, destination: int) -> list[Tensor]:
        """The count part of the message to ``destination``: int64 rows per node type,
        then per type the ids and the times."""
        picked = [(take(node, self.routes[t][destination]), take(time, self.routes[t][destination]))
                  for t, (node, time) in self.queries.items()]
        counts = torch.tensor([ids.numel() for ids, _ in picked], dtype=torch.int64)
        return [counts, *(column for pair in picked for column in pair)]

    def read(self, readers: list[_Reader]) -> dict[str, Tensor]:
        """Counts per queried row, from each owner's answer (its count part)."""
        edge_types = self.sampler.edge_types
        out = {t: torch.zeros((node.numel(), 2 * len(count_relations(edge_types, t))),
                              dtype=torch.int64, device=node.device)
               for t, (node, _) in self.queries.items()}
        for owner, reader in enumerate(readers):
            for node_type, counts in out.items():
                route = self.routes[node_type][owner]
                counts.index_copy_(0, route, reader.take(torch.int64,
                                                         (route.numel(), counts.shape[1])))
        return out


def model_inputs(subgraph: SampledSubgraph, row_features: dict[str, NodeFeatures],
                 num_nodes: dict[str, int]) -> tuple[SampledSubgraph, dict[str, NodeFeatures]]:
    """Adapts a distributed sample to :class:`~trainer.model.ClickGNN`.

    The model reads ``features[t].categorical[batch.node[t]]`` (and ``created_time``),
    and, for types with a learned id embedding, ``id_embedding(batch.node[t])``. Per type:

    * no id embedding: ``node`` becomes ``arange(rows)`` and the features are the
      fetched per-row ones, so nothing global is needed;
    * id embedding (small types: brands, categories): ``node`` keeps the global ids
      and the fetched rows are scattered into a dense ``[num_nodes, C]`` table, cheap
      for such types.

    Args:
        subgraph: The sample (global ids).
        row_features: From :meth:`DistTemporalSampler.fetch_features`.
        num_nodes: Global node counts (``shard.num_nodes``).

    Returns:
        ``(batch, features)`` to pass to the model.
    """
    node, features = {}, {}
    for node_type, ids in subgraph.node.items():
        rows = row_features[node_type]
        if not rows.learn_id_embedding:
            node[node_type] = torch.arange(ids.numel(), device=ids.device)
            features[node_type] = rows
            continue
        count = num_nodes[node_type]
        codes = torch.zeros((count, rows.categorical.shape[1]), dtype=torch.int64,
                            device=ids.device).index_copy_(0, ids, rows.categorical)
        created = None
        if rows.created_time is not None:
            created = torch.zeros(count, dtype=torch.int64, device=ids.device).index_copy_(
                0, ids, rows.created_time)
        node[node_type] = ids
        features[node_type] = NodeFeatures(codes, list(rows.cardinalities), created, True)
    return dataclasses.replace(subgraph, node=node), features
