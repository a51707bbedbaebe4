"""From the graph store to tensors: the temporal graph, node features and training events.

Reads the store through its manifest with pyarrow (no Spark in a training worker). Times
become int64 **seconds** since epoch by flooring the store's milliseconds; flooring never
makes a later edge visible (``edge_ms >= seed_ms`` implies ``edge_s >= seed_s``), so the
sampler's strictly-earlier rule stays leak-free, only slightly conservative within a
second.

Examples are impressions: the (user, content, time, position) the platform showed and
whether it was clicked. ``clicked`` is the label and is never an edge feature: the click
is logged seconds after the impression, and the sampler sees it only as its own
``clicked`` edge with its own, later time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from trainer.graph import TemporalCSR, TemporalHeteroGraph, add_reverse
from trainer.model import NodeFeatures

IMPRESSIONS = "user__impressed__content"
SMALL_NODE_TYPES = ("brand", "category")
ATTRIBUTE_SKIP = {"id", "raw_id", "first_day", "created_ts_ms", "name"}


@dataclass(frozen=True)
class Impressions:
    """Impression events, one row each, sorted by time.

    Attributes:
        user: int64 ``[N]`` dense user ids.
        content: int64 ``[N]`` dense content ids.
        time: int64 ``[N]`` seconds since epoch.
        position: int64 ``[N]`` feed slot (0 = top; -1 unknown).
        clicked: float32 ``[N]`` label, 1.0 when clicked.
        day: int64 ``[N]`` index into :attr:`GraphData.days`.
    """

    user: Tensor
    content: Tensor
    time: Tensor
    position: Tensor
    clicked: Tensor
    day: Tensor

    def take(self, index: Tensor) -> Impressions:
        return Impressions(*(getattr(self, f)[index] for f in
                             ("user", "content", "time", "position", "clicked", "day")))

    def __len__(self) -> int:
        return self.user.numel()


@dataclass(frozen=True)
class GraphData:
    """Everything a trainer needs from one graph store.

    Attributes:
        graph: Every stored relation and its reverse (``rev_`` prefix).
        features: Node type -> static attribute codes.
        vocab: Node type -> attribute -> values; code ``i + 1`` is ``values[i]``, 0 unknown.
        impressions: All impressions in the store.
        days: The store's days, ascending; ``Impressions.day`` indexes them.
        user_first_day: int64 ``[num_users]`` index of the day the user entered the store
            (``-1`` when before the first day).
        content_created: int64 ``[num_content]`` creation time, seconds (0 unknown).
        store_version: ``{"graph_created_at", "config_hash", "format_version"}`` of the store.
    """

    graph: TemporalHeteroGraph
    features: dict[str, NodeFeatures]
    vocab: dict[str, dict[str, list[str]]]
    impressions: Impressions
    days: list[str]
    user_first_day: Tensor
    content_created: Tensor
    store_version: dict


def read_table(url: str):
    import pyarrow.dataset as ds

    from clickgraph import fs

    filesystem, path = fs.filesystem(url)
    return ds.dataset(path, filesystem=filesystem, format="parquet",
                      ignore_prefixes=["_", "."]).to_table()


def encode_nodes(table, node_type: str, vocab: dict[str, list[str]] | None = None
                 ) -> tuple[NodeFeatures, dict[str, list[str]]]:
    """Dictionary-encode a node table's attribute columns (rows must be sorted by id).

    Args:
        table: pyarrow table of the node type (``spark_jobs.schemas.node_schema``).
        node_type: Its type name.
        vocab: Values fitted by an earlier run (reused as they are; new values get code
            0, unknown). ``None`` fits them here.

    Returns:
        ``(features, vocab)``.
    """
    columns = [c for c in table.column_names if c not in ATTRIBUTE_SKIP]
    fitted = dict(vocab or {})
    codes = []
    for column in columns:
        values = table.column(column).to_pylist()
        if column not in fitted:
            fitted[column] = sorted({v for v in values if v is not None})
        index = {v: i + 1 for i, v in enumerate(fitted[column])}
        codes.append([index.get(v, 0) for v in values])
    n = table.num_rows
    categorical = (torch.tensor(codes, dtype=torch.int64).T.contiguous() if codes
                   else torch.zeros((n, 0), dtype=torch.int64))
    created = torch.tensor(table.column("created_ts_ms").to_numpy(), dtype=torch.int64) // 1000
    has_time = bool((created > 0).any())
    features = NodeFeatures(
        categorical=categorical,
        cardinalities=[len(fitted[c]) + 1 for c in columns],
        created_time=created if has_time else None,
        learn_id_embedding=node_type in SMALL_NODE_TYPES,
    )
    return features, {c: fitted[c] for c in columns}


def load_graph_data(store_url: str, vocab: dict[str, dict[str, list[str]]] | None = None,
                    days: list[str] | None = None) -> GraphData:
    """Load a graph store for training.

    Args:
        store_url: Graph store folder (local path or fsspec URL).
        vocab: Attribute vocabularies from a checkpoint, to encode exactly as before.
        days: Restrict edges to these days (default: all in the manifest).

    Returns:
        The :class:`GraphData`.
    """
    from spark_jobs.graph_store import open_graph_store

    store = open_graph_store(store_url)
    all_days = sorted(store.days)
    num_nodes, features, fitted, tables = {}, {}, {}, {}
    for node_type in store.node_types:
        table = read_table(store.node_url(node_type)).sort_by("id")
        ids = table.column("id").to_numpy()
        if len(ids) and not np.array_equal(ids, np.arange(len(ids))):
            raise ValueError(f"{store_url}: node table {node_type!r} ids are not dense 0..n-1")
        num_nodes[node_type] = table.num_rows
        features[node_type], fitted[node_type] = encode_nodes(
            table, node_type, (vocab or {}).get(node_type))
        tables[node_type] = table

    csr = {}
    for name, info in store.relations.items():
        edges = store.read_edges_arrow(name, days, columns=["src", "dst", "ts_ms", "weight"])
        src = torch.tensor(edges.column("src").to_numpy(), dtype=torch.int64)
        dst = torch.tensor(edges.column("dst").to_numpy(), dtype=torch.int64)
        time = torch.tensor(edges.column("ts_ms").to_numpy(), dtype=torch.int64) // 1000
        weight = torch.tensor(edges.column("weight").to_numpy(), dtype=torch.float32)
        csr[(info.src_type, info.relation, info.dst_type)] = TemporalCSR.from_edges(
            src, dst, time, num_nodes[info.dst_type], weight=1.0, edge_attr={"weight": weight})
    graph = add_reverse(TemporalHeteroGraph(num_nodes=num_nodes, csr=csr))

    imp = store.read_edges_arrow(IMPRESSIONS, days,
                                 columns=["src", "dst", "ts_ms", "position", "clicked"])
    day_index = {d: i for i, d in enumerate(all_days)}
    time = torch.tensor(imp.column("ts_ms").to_numpy(), dtype=torch.int64) // 1000
    order = torch.argsort(time, stable=True)
    position = imp.column("position").to_numpy(zero_copy_only=False)
    impressions = Impressions(
        user=torch.tensor(imp.column("src").to_numpy(), dtype=torch.int64),
        content=torch.tensor(imp.column("dst").to_numpy(), dtype=torch.int64),
        time=time,
        position=torch.as_tensor(np.nan_to_num(position.astype(np.float64), nan=-1), dtype=torch.int64),
        clicked=torch.as_tensor(imp.column("clicked").to_numpy(zero_copy_only=False).astype(np.float32)),
        day=torch.as_tensor([day_index[d] for d in imp.column("day").to_pylist()], dtype=torch.int64),
    ).take(order)

    first = tables["user"].column("first_day").to_pylist()
    user_first_day = torch.tensor([day_index.get(d, -1) for d in first], dtype=torch.int64)
    content_created = torch.tensor(tables["content"].column("created_ts_ms").to_numpy(),
                                      dtype=torch.int64) // 1000
    m = store.manifest
    return GraphData(graph=graph, features=features, vocab=fitted, impressions=impressions,
                     days=all_days, user_first_day=user_first_day, content_created=content_created,
                     store_version={"graph_created_at": m.get("created_at"),
                                    "config_hash": m.get("config_hash"),
                                    "format_version": m.get("format_version")})


@dataclass(frozen=True)
class Windows:
    """Day indices of the temporal split: ``train < val < test``, no overlap."""

    train: list[int]
    val: list[int]
    test: list[int]


def split_windows(num_days: int, val_days: int, test_days: int) -> Windows:
    """The last ``test_days`` days test, the ``val_days`` before them validation."""
    if num_days < val_days + test_days + 1:
        raise ValueError(f"the graph has {num_days} days; need more than val_days + test_days "
                         f"= {val_days + test_days} to leave a training window")
    test = list(range(num_days - test_days, num_days))
    val = list(range(num_days - test_days - val_days, num_days - test_days))
    return Windows(train=list(range(0, val[0])), val=val, test=test)


def window_events(data: GraphData, days: list[int]) -> Tensor:
    """Indices of impressions on ``days``."""
    mask = torch.isin(data.impressions.day, torch.tensor(days, dtype=torch.int64))
    return torch.nonzero(mask).squeeze(-1)


def cold_start_mask(data: GraphData, events: Tensor, window_start_day: int) -> Tensor:
    """True for events whose user's first interaction falls inside the window."""
    return data.user_first_day[data.impressions.user[events]] >= window_start_day


class NegativeSampler:
    """Random negatives that respect time: content created strictly before the event."""

    def __init__(self, content_created: Tensor):
        self.created_sorted, self.order = torch.sort(content_created, stable=True)

    def sample(self, time: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """One random content per entry of ``time`` (seconds).

        Returns:
            ``(valid, content)``: ``valid`` is False where no content existed yet.
        """
        available = torch.searchsorted(self.created_sorted, time, right=False)
        draw = torch.rand(time.numel(), generator=generator)
        pick = (draw * available).long().clamp(max=max(self.order.numel() - 1, 0))
        return available > 0, self.order[pick]
