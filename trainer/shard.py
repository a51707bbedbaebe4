"""What one training worker holds of a partitioned temporal graph, and its files.

A partition book assigns every node of every type to exactly one part; worker ``p``
(rank ``p``) owns the nodes of part ``p``. Its :class:`PartitionShard` holds, for every
relation (reverse ``rev_`` relations included), the in-edges of the destination nodes it
owns, so every edge of the graph lies in exactly one shard: its destination's owner's. A
sampler expands a frontier row on the row's owner (:mod:`trainer.dist_sampler`).

The files: :mod:`clickgraph.core.shards` (one description of the format for the
partition job that writes it and the workers that read it).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from clickgraph.core import shards as fmt
from trainer.graph import EdgeType, TemporalCSR, TemporalHeteroGraph, validate_relations
from trainer.model import NodeFeatures

SHARD_KIND = fmt.SHARD_KIND
FORMAT_VERSION = fmt.SHARD_FORMAT_VERSION


@dataclass(frozen=True)
class PartitionShard:
    """One part of a partitioned temporal heterogeneous graph.

    Attributes:
        part: This part's index, the rank that serves it.
        num_parts: Number of parts (= world size when training).
        num_nodes: Node type -> GLOBAL number of nodes (ids ``0 .. n - 1``).
        partition_book: Node type -> int32/int64 ``[num_nodes[type]]`` part of every
            global node id (the whole book: any rank can route any node).
        owned: Node type -> int64 ``[num_owned]`` ascending global ids owned here.
        csr: Relation -> in-edges of the OWNED destination nodes: row ``i`` is node
            ``owned[dst_type][i]``; ``neighbor`` holds GLOBAL source ids; rows sorted by
            time as in :class:`TemporalCSR`; ``edge_attr`` e.g. ``{"weight": float32}``.
        edge_id: Relation -> int64 ``[num_edges]`` graph-wide unique id of each edge, in
            CSR order (for :func:`split_graph`: the position in the global CSR).
        features: Node type -> static attributes of the OWNED rows, row ``i`` of node
            ``owned[type][i]`` (``cardinalities`` are the global vocabulary sizes).
    """

    part: int
    num_parts: int
    num_nodes: dict[str, int]
    partition_book: dict[str, Tensor]
    owned: dict[str, Tensor]
    csr: dict[EdgeType, TemporalCSR]
    edge_id: dict[EdgeType, Tensor]
    features: dict[str, NodeFeatures]

    def __post_init__(self) -> None:
        # Cheap shape checks; validate() does the O(nodes + edges) ones.
        if not 0 <= self.part < self.num_parts:
            raise ValueError(f"part {self.part} is not in [0, {self.num_parts})")
        for node_type, count in self.num_nodes.items():
            for name, table in (("partition_book", self.partition_book),
                                ("owned", self.owned), ("features", self.features)):
                if node_type not in table:
                    raise ValueError(f"PartitionShard.{name} lacks node type {node_type!r}")
            book = self.partition_book[node_type]
            if book.dim() != 1 or book.numel() != count or book.dtype not in (torch.int32,
                                                                              torch.int64):
                raise ValueError(f"partition_book[{node_type!r}] must be int32/int64 "
                                 f"[{count}], got {book.dtype} {tuple(book.shape)}")
            owned = self.owned[node_type]
            if owned.dtype != torch.int64 or owned.dim() != 1:
                raise ValueError(f"owned[{node_type!r}] must be a 1-D int64 tensor")
            features = self.features[node_type]
            if features.num_nodes != owned.numel():
                raise ValueError(f"features[{node_type!r}] has {features.num_nodes} rows, "
                                 f"expected one per owned node ({owned.numel()})")
            if features.created_time is not None and \
                    features.created_time.numel() != owned.numel():
                raise ValueError(f"features[{node_type!r}].created_time must have "
                                 f"{owned.numel()} entries")
        for edge_type, csr in self.csr.items():
            src_type, _, dst_type = edge_type
            if src_type not in self.num_nodes or dst_type not in self.num_nodes:
                raise ValueError(f"relation {edge_type} uses an unknown node type")
            if csr.num_dst != self.owned[dst_type].numel():
                raise ValueError(f"relation {edge_type}: {csr.num_dst} CSR rows, expected "
                                 f"one per owned {dst_type!r} ({self.owned[dst_type].numel()})")
            edge_id = self.edge_id.get(edge_type)
            if edge_id is None or edge_id.dtype != torch.int64 or \
                    edge_id.shape != (csr.num_edges,):
                raise ValueError(f"edge_id[{edge_type}] must be int64 [{csr.num_edges}]")

    @property
    def node_types(self) -> list[str]:
        """Node type names."""
        return list(self.num_nodes)

    @property
    def edge_types(self) -> list[EdgeType]:
        """Relations in shard order (reverse relations included)."""
        return list(self.csr)

    def owner(self, node_type: str, node: Tensor) -> Tensor:
        """Part of each global id in ``node``, int64 ``[N]``."""
        return self.partition_book[node_type].index_select(0, node).long()

    def local_row(self, node_type: str, node: Tensor) -> Tensor:
        """Row of each owned global id in ``node`` (its index in ``owned``).

        Raises:
            ValueError: If an id is not owned by this part.
        """
        owned = self.owned[node_type]
        if node.numel() == 0:
            return torch.empty(0, dtype=torch.int64, device=node.device)
        if owned.numel() == 0:
            raise ValueError(f"part {self.part} owns no {node_type!r} node, asked for "
                             f"{node[:5].tolist()}")
        row = torch.searchsorted(owned, node).clamp_(max=owned.numel() - 1)
        if not bool((owned.index_select(0, row) == node).all()):
            missing = node[owned.index_select(0, row) != node]
            raise ValueError(f"part {self.part} does not own {node_type!r} nodes "
                             f"{missing[:5].tolist()} (partition book out of sync?)")
        return row

    def validate(self) -> None:
        """Checks the shard in O(nodes + edges).

        Raises:
            ValueError: Unsorted or foreign ``owned``, a book entry out of range, an
                invalid CSR, or a neighbour id outside the source type's global range.
        """
        for node_type, owned in self.owned.items():
            book = self.partition_book[node_type]
            if book.numel() and (int(book.min()) < 0 or int(book.max()) >= self.num_parts):
                raise ValueError(f"partition_book[{node_type!r}] has parts outside "
                                 f"[0, {self.num_parts})")
            expected = torch.nonzero(book == self.part).view(-1)
            if not torch.equal(owned, expected):
                raise ValueError(f"owned[{node_type!r}] is not the ascending list of "
                                 f"nodes the partition book gives part {self.part}")
        validate_relations(self.csr, self.num_nodes)  # neighbours are global ids


def _check_partition_book(graph: TemporalHeteroGraph, partition_book: dict[str, Tensor],
                          num_parts: int | None) -> int:
    parts_seen = 0
    for node_type, count in graph.num_nodes.items():
        book = partition_book.get(node_type)
        if book is None:
            raise ValueError(f"partition_book lacks node type {node_type!r}")
        if book.dim() != 1 or book.numel() != count or book.dtype not in (torch.int32,
                                                                          torch.int64):
            raise ValueError(f"partition_book[{node_type!r}] must be int32/int64 [{count}]")
        if count and int(book.min()) < 0:
            raise ValueError(f"partition_book[{node_type!r}] has negative parts")
        if count:
            parts_seen = max(parts_seen, int(book.max()) + 1)
    if num_parts is None:
        return max(parts_seen, 1)
    if parts_seen > num_parts:
        raise ValueError(f"partition_book uses part {parts_seen - 1} >= num_parts {num_parts}")
    return num_parts


def split_graph(graph: TemporalHeteroGraph, features: dict[str, NodeFeatures],
                partition_book: dict[str, Tensor], num_parts: int | None = None
                ) -> list[PartitionShard]:
    """Cuts a graph held in one process into one shard per part.

    Every edge goes to the part owning its destination (in-edge CSRs), keeping the
    global CSR's order (so most-recent tie-breaking by CSR position is unchanged), and
    gets its global CSR position as ``edge_id``. For tests and small graphs: the
    cluster path writes the same files from Spark.

    Args:
        graph: The whole graph, reverse relations included.
        features: Node type -> features indexed by global id.
        partition_book: Node type -> int32/int64 ``[num_nodes]`` part of each node.
        num_parts: Number of parts; default ``max part + 1``.

    Returns:
        ``num_parts`` shards, shard ``p`` for part ``p``.
    """
    num_parts = _check_partition_book(graph, partition_book, num_parts)
    for node_type, count in graph.num_nodes.items():
        if node_type not in features or features[node_type].num_nodes != count:
            raise ValueError(f"features[{node_type!r}] must have one row per node ({count})")
    owned = {node_type: [torch.nonzero(book == part).view(-1) for part in range(num_parts)]
             for node_type, book in ((t, partition_book[t]) for t in graph.num_nodes)}
    shard_csr: list[dict[EdgeType, TemporalCSR]] = [{} for _ in range(num_parts)]
    shard_edge_id: list[dict[EdgeType, Tensor]] = [{} for _ in range(num_parts)]
    for edge_type, csr in graph.csr.items():
        dst_type = edge_type[2]
        degree = csr.indptr[1:] - csr.indptr[:-1]
        edge_part = partition_book[dst_type].index_select(0, csr.edge_dst()).long()
        for part in range(num_parts):
            rows = owned[dst_type][part]
            indptr = torch.zeros(rows.numel() + 1, dtype=torch.int64)
            torch.cumsum(degree.index_select(0, rows), 0, out=indptr[1:])
            # Owned rows are ascending and the global CSR is grouped by ascending dst, so
            # the part's edges, taken in global order, are already grouped by its rows.
            position = torch.nonzero(edge_part == part).view(-1)
            shard_csr[part][edge_type] = TemporalCSR(
                indptr=indptr, neighbor=csr.neighbor.index_select(0, position),
                edge_time=csr.edge_time.index_select(0, position), weight=csr.weight,
                edge_attr={name: value.index_select(0, position)
                           for name, value in csr.edge_attr.items()})
            shard_edge_id[part][edge_type] = position
    shards = []
    for part in range(num_parts):
        part_features = {}
        for node_type, node_features in features.items():
            if node_type not in graph.num_nodes:
                continue
            rows = owned[node_type][part]
            part_features[node_type] = NodeFeatures(
                categorical=node_features.categorical.index_select(0, rows),
                cardinalities=list(node_features.cardinalities),
                created_time=(None if node_features.created_time is None
                              else node_features.created_time.index_select(0, rows)),
                learn_id_embedding=node_features.learn_id_embedding)
        shards.append(PartitionShard(
            part=part, num_parts=num_parts, num_nodes=dict(graph.num_nodes),
            partition_book={t: partition_book[t] for t in graph.num_nodes},
            owned={t: owned[t][part] for t in graph.num_nodes}, csr=shard_csr[part],
            edge_id=shard_edge_id[part], features=part_features))
    return shards


# ------------------------------------------------------------------------------- files


def _save(folder: str, relative: str, tensor: Tensor) -> None:
    fmt.save_array(folder, relative, tensor.detach().cpu().contiguous().numpy())


def save_shard(shard: PartitionShard, folder: str, config_hash: str | None = None) -> None:
    """Writes a shard in the format of :mod:`clickgraph.core.shards`, manifest last.

    Args:
        shard: The shard.
        folder: Local folder (created; existing files of the same names are replaced).
        config_hash: Hash of the config that produced the shard, stored in the manifest.
    """
    for node_type in shard.node_types:
        fmt.check_name(node_type, "node type")
    for edge_type in shard.edge_types:
        for name in edge_type:
            fmt.check_name(name, "relation part")
        for name in shard.csr[edge_type].edge_attr:
            fmt.check_name(name, "edge attribute")
    os.makedirs(folder, exist_ok=True)
    node_types = {}
    for node_type in shard.node_types:
        features = shard.features[node_type]
        _save(folder, fmt.book_file(node_type), shard.partition_book[node_type])
        _save(folder, fmt.owned_file(node_type), shard.owned[node_type])
        _save(folder, fmt.categorical_file(node_type), features.categorical)
        if features.created_time is not None:
            _save(folder, fmt.created_time_file(node_type), features.created_time)
        node_types[node_type] = fmt.node_type_entry(
            shard.owned[node_type].numel(), int(features.categorical.shape[1]),
            features.cardinalities, features.created_time is not None,
            features.learn_id_embedding)
    relations, time_min, time_max = [], None, None
    for edge_type, csr in shard.csr.items():
        path = fmt.relation_dir(edge_type)
        for array, value in (("indptr", csr.indptr), ("neighbor", csr.neighbor),
                             ("edge_time", csr.edge_time), ("edge_id", shard.edge_id[edge_type])):
            _save(folder, fmt.csr_file(path, array), value)
        for name, value in csr.edge_attr.items():
            _save(folder, fmt.attr_file(path, name), value)
        if csr.num_edges:
            low, high = int(csr.edge_time.min()), int(csr.edge_time.max())
            time_min = low if time_min is None else min(time_min, low)
            time_max = high if time_max is None else max(time_max, high)
        relations.append(fmt.relation_entry(
            edge_type, csr.num_edges, csr.weight,
            {name: (str(value.detach().cpu().numpy().dtype), list(value.shape))
             for name, value in csr.edge_attr.items()}))
    fmt.write_part_manifest(folder, fmt.part_manifest(
        shard.part, shard.num_parts, shard.node_types, shard.num_nodes, node_types, relations,
        None if time_min is None else [time_min, time_max], config_hash))


def _load(folder: str, relative: str, mmap: bool, dtype: str | None = None,
          shape: list[int] | tuple[int, ...] | None = None) -> Tensor:
    array = fmt.load_array(folder, relative, mmap, dtype, shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def load_shard(folder: str, mmap: bool = True) -> PartitionShard:
    """Reads a shard written by :func:`save_shard` (or by the Spark job, same format).

    Args:
        folder: Local shard folder.
        mmap: Map the arrays (lazy, shared page cache) instead of reading them.

    Returns:
        The shard; its tensors are views of the files when ``mmap``.

    Raises:
        clickgraph.core.manifest.ManifestError: No manifest, or another kind or version.
        ValueError: An array whose dtype or shape disagrees with the manifest.
    """
    manifest = fmt.read_part_manifest(folder)
    # JSON objects are written with sorted keys; node_type_order keeps the shard's order.
    num_nodes = {t: int(manifest["num_nodes"][t]) for t in manifest["node_type_order"]}
    book, owned, features = {}, {}, {}
    for node_type in num_nodes:
        info = manifest["node_types"][node_type]
        num_owned = int(info["num_owned"])
        book[node_type] = _load(folder, fmt.book_file(node_type), mmap,
                                shape=[num_nodes[node_type]])
        owned[node_type] = _load(folder, fmt.owned_file(node_type), mmap, "int64", [num_owned])
        created = None
        if info["has_created_time"]:
            created = _load(folder, fmt.created_time_file(node_type), mmap, "int64", [num_owned])
        features[node_type] = NodeFeatures(
            categorical=_load(folder, fmt.categorical_file(node_type), mmap, "int64",
                              [num_owned, int(info["num_columns"])]),
            cardinalities=[int(c) for c in info["cardinalities"]], created_time=created,
            learn_id_embedding=bool(info["learn_id_embedding"]))
    csr, edge_id = {}, {}
    for relation in manifest["relations"]:
        edge_type = (relation["src_type"], relation["relation"], relation["dst_type"])
        path, num_edges = relation["path"], int(relation["num_edges"])
        num_rows = int(manifest["node_types"][edge_type[2]]["num_owned"])
        csr[edge_type] = TemporalCSR(
            indptr=_load(folder, fmt.csr_file(path, "indptr"), mmap, "int64", [num_rows + 1]),
            neighbor=_load(folder, fmt.csr_file(path, "neighbor"), mmap, "int64", [num_edges]),
            edge_time=_load(folder, fmt.csr_file(path, "edge_time"), mmap, "int64", [num_edges]),
            weight=float(relation["weight"]),
            edge_attr={name: _load(folder, fmt.attr_file(path, name), mmap, info["dtype"],
                                   info["shape"])
                       for name, info in relation["edge_attr"].items()})
        edge_id[edge_type] = _load(folder, fmt.csr_file(path, "edge_id"), mmap, "int64",
                                   [num_edges])
    return PartitionShard(part=int(manifest["part"]), num_parts=int(manifest["num_parts"]),
                          num_nodes=num_nodes, partition_book=book, owned=owned, csr=csr,
                          edge_id=edge_id, features=features)
