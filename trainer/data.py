"""From the graph store to tensors: the temporal graph, node features and training events.

Reads the store through its manifest with pyarrow (no Spark in a training worker). Times
become int64 **seconds** since epoch by flooring the store's milliseconds; flooring never
makes a later edge visible (``edge_ms >= seed_ms`` implies ``edge_s >= seed_s``), so the
sampler's strictly-earlier rule stays leak-free, only slightly conservative within a
second.

Event time decides everything (docs/architecture.md, "Event time"): an event belongs to
the window its own UTC time falls in, whatever day folder it was filed under; the folder
day is a storage partition only and is not carried into these tensors.

Examples are impressions: the (user, content, time, position) the platform showed and
whether it was clicked. ``clicked`` is the label and is never an edge feature: the click
is logged seconds after the impression, and the sampler sees it only as its own
``clicked`` edge with its own, later time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from trainer.graph import TemporalCSR, TemporalHeteroGraph, add_reverse
from trainer.model import NodeFeatures

IMPRESSIONS = "user__impressed__content"
SMALL_NODE_TYPES = ("brand", "category")
ATTRIBUTE_SKIP = {"id", "raw_id", "first_day", "created_ts_ms", "name"}
SECONDS_PER_DAY = 86_400
NEVER = torch.iinfo(torch.int64).max
"""``known_from`` of a node that no edge and no creation time places in time."""


def day_start(day: str) -> int:
    """``YYYY-MM-DD`` 00:00 UTC in seconds since epoch."""
    return int(dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp())


def utc_day(seconds: int) -> str:
    """The UTC calendar day (``YYYY-MM-DD``) of a time in seconds since epoch."""
    return dt.datetime.fromtimestamp(int(seconds), dt.UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Impressions:
    """Impression events, one row each, sorted by time.

    Attributes:
        user: int64 ``[N]`` dense user ids.
        content: int64 ``[N]`` dense content ids.
        time: int64 ``[N]`` seconds since epoch.
        position: int64 ``[N]`` feed slot (0 = top; -1 unknown).
        clicked: float32 ``[N]`` label, 1.0 when clicked.

    The day folder an impression was filed under is deliberately absent: windows and
    cutoffs come from ``time`` alone.
    """

    user: Tensor
    content: Tensor
    time: Tensor
    position: Tensor
    clicked: Tensor

    def take(self, index: Tensor) -> Impressions:
        return Impressions(*(getattr(self, f)[index] for f in
                             ("user", "content", "time", "position", "clicked")))

    @classmethod
    def from_arrow(cls, table) -> Impressions:
        """From the store's impression columns (``src, dst, ts_ms, position, clicked``), in
        :func:`canonical_order`: the same rows give the same tensors whichever day folders
        and files they were read from."""
        position = table.column("position").to_numpy(zero_copy_only=False).astype(np.float64)
        out = cls(
            user=torch.tensor(table.column("src").to_numpy(), dtype=torch.int64),
            content=torch.tensor(table.column("dst").to_numpy(), dtype=torch.int64),
            time=torch.tensor(table.column("ts_ms").to_numpy(), dtype=torch.int64) // 1000,
            position=torch.as_tensor(np.nan_to_num(position, nan=-1), dtype=torch.int64),
            clicked=torch.as_tensor(
                table.column("clicked").to_numpy(zero_copy_only=False).astype(np.float32)))
        return out.take(canonical_order(out))

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
        days: The store's day folders, ascending (storage partitions; windows are cut
            by event time at these days' 00:00 UTC, :func:`split_windows`).
        known_from: Node type -> int64 ``[num_nodes]`` seconds from which the node is
            known (:func:`known_from`); :data:`NEVER` for none.
        store_version: ``{"graph_created_at", "config_hash", "format_version"}`` of the store.
    """

    graph: TemporalHeteroGraph
    features: dict[str, NodeFeatures]
    vocab: dict[str, dict[str, list[str]]]
    impressions: Impressions
    days: list[str]
    known_from: dict[str, Tensor]
    store_version: dict

    @property
    def content_created(self) -> Tensor:
        """int64 ``[num_content]``: when each content is known to exist, seconds (random
        negatives for an event at ``t`` are drawn from content known before ``t``)."""
        return self.known_from["content"]


def read_table(url: str):
    import pyarrow.dataset as ds

    from clickgraph import fs

    filesystem, path = fs.filesystem(url)
    return ds.dataset(path, filesystem=filesystem, format="parquet",
                      ignore_prefixes=["_", "."]).to_table()


def canonical_order(impressions: Impressions) -> Tensor:
    """Order of impressions by ``(time, user, content, position, clicked)``.

    Rows the store holds in another order (other day folders, files or Spark tasks) come
    out the same; rows equal in every column are interchangeable.
    """
    order = torch.arange(len(impressions))
    for key in (impressions.clicked, impressions.position, impressions.content,
                impressions.user, impressions.time):  # least significant first, stable
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def note_first_seen(first: Tensor, node: Tensor, time: Tensor) -> None:
    """Lowers ``first[node[i]]`` to ``time[i]`` in place (seconds): the earliest edge of
    each node seen so far, at either end of the edge."""
    if node.numel():
        first.scatter_reduce_(0, node, time, reduce="amin")


def known_from(created: Tensor, first_seen: Tensor) -> Tensor:
    """When each node is known to exist, seconds: the earlier of its creation time (0 =
    unknown, ignored) and its first edge. A store without creation times (``created_time:
    null`` in the mapping) falls back to the first edge, so nothing is known before it
    happens; a node with neither is :data:`NEVER` known."""
    stated = torch.where(created > 0, created, torch.full_like(created, NEVER))
    return torch.minimum(stated, first_seen)


def first_seen_in_store(store, node_types: list[str]) -> dict[str, Tensor]:
    """Per node type, each node's earliest edge in the store, seconds (:data:`NEVER` for
    none); reads one (relation, day) slice at a time, columns ``src, dst, ts_ms`` only."""
    first = {t: torch.full((store.num_nodes(t),), NEVER, dtype=torch.int64) for t in node_types}
    for name, info in store.relations.items():
        if info.src_type not in first and info.dst_type not in first:
            continue
        for day in store.edge_urls(name):
            edges = store.read_edges_arrow(name, [day], columns=["src", "dst", "ts_ms"])
            time = torch.tensor(edges.column("ts_ms").to_numpy(), dtype=torch.int64) // 1000
            for end, node_type in (("src", info.src_type), ("dst", info.dst_type)):
                if node_type in first:
                    note_first_seen(first[node_type], torch.tensor(
                        edges.column(end).to_numpy(), dtype=torch.int64), time)
    return first


def encode_nodes(table, node_type: str, vocab: dict[str, list[str]] | None = None,
                 fit_rows: np.ndarray | None = None
                 ) -> tuple[NodeFeatures, dict[str, list[str]]]:
    """Dictionary-encode a node table's attribute columns (rows must be sorted by id).

    Args:
        table: pyarrow table of the node type (``spark_jobs.schemas.node_schema``).
        node_type: Its type name.
        vocab: Values fitted by an earlier run (reused as they are; new values get code
            0, unknown). ``None`` fits them here.
        fit_rows: bool ``[num_rows]``: the rows whose values are fitted (the nodes the
            training window can see, :func:`vocab_rows`); values only other rows hold get
            code 0. ``None``: every row.

    Returns:
        ``(features, vocab)``.
    """
    columns = [c for c in table.column_names if c not in ATTRIBUTE_SKIP]
    fitted = dict(vocab or {})
    codes = []
    for column in columns:
        values = table.column(column).to_pylist()
        if column not in fitted:
            seen = values if fit_rows is None else [v for v, keep in zip(values, fit_rows) if keep]
            fitted[column] = sorted({v for v in seen if v is not None})
        index = {v: i + 1 for i, v in enumerate(fitted[column])}
        codes.append([index.get(v, 0) for v in values])
    n = table.num_rows
    categorical = (torch.tensor(codes, dtype=torch.int64).T.contiguous() if codes
                   else torch.zeros((n, 0), dtype=torch.int64))
    created = created_seconds(table)
    has_time = bool((created > 0).any())
    features = NodeFeatures(
        categorical=categorical,
        cardinalities=[len(fitted[c]) + 1 for c in columns],
        created_time=created if has_time else None,
        learn_id_embedding=node_type in SMALL_NODE_TYPES,
    )
    return features, {c: fitted[c] for c in columns}


def created_seconds(table) -> Tensor:
    """int64 ``[num_rows]`` creation times of a node table, seconds (0 = unknown)."""
    return torch.tensor(table.column("created_ts_ms").to_numpy(), dtype=torch.int64) // 1000


def vocab_rows(known: Tensor, fit_before: int) -> np.ndarray:
    """Rows whose attribute values a vocabulary may be fitted on: nodes known strictly
    before ``fit_before`` (seconds; the training window's end), so no value first seen in
    the validation or test window gets a code of its own."""
    return (known < fit_before).numpy()


def load_graph_data(store_url: str, vocab: dict[str, dict[str, list[str]]] | None = None,
                    days: list[str] | None = None, fit_before: int | None = None) -> GraphData:
    """Load a graph store for training.

    Args:
        store_url: Graph store folder (local path or fsspec URL).
        vocab: Attribute vocabularies from a checkpoint or shard set, to encode exactly as
            before (node types it lacks are fitted).
        days: Restrict edges to these day folders (default: all in the manifest).
        fit_before: Seconds; vocabularies are fitted on the nodes known strictly before
            it (the end of the training window, :attr:`Windows.val_start`). Required
            unless ``vocab`` covers every node type.

    Returns:
        The :class:`GraphData`.
    """
    from spark_jobs.graph_store import open_graph_store

    store = open_graph_store(store_url)
    all_days = sorted(store.days)
    tables = {t: read_table(store.node_url(t)).sort_by("id") for t in store.node_types}
    num_nodes = {}
    for node_type, table in tables.items():
        ids = table.column("id").to_numpy()
        if len(ids) and not np.array_equal(ids, np.arange(len(ids))):
            raise ValueError(f"{store_url}: node table {node_type!r} ids are not dense 0..n-1")
        num_nodes[node_type] = table.num_rows

    first_seen = {t: torch.full((n,), NEVER, dtype=torch.int64) for t, n in num_nodes.items()}
    csr = {}
    for name, info in store.relations.items():
        edges = store.read_edges_arrow(name, days, columns=["src", "dst", "ts_ms", "weight"])
        src = torch.tensor(edges.column("src").to_numpy(), dtype=torch.int64)
        dst = torch.tensor(edges.column("dst").to_numpy(), dtype=torch.int64)
        time = torch.tensor(edges.column("ts_ms").to_numpy(), dtype=torch.int64) // 1000
        weight = torch.tensor(edges.column("weight").to_numpy(), dtype=torch.float32)
        note_first_seen(first_seen[info.src_type], src, time)
        note_first_seen(first_seen[info.dst_type], dst, time)
        csr[(info.src_type, info.relation, info.dst_type)] = TemporalCSR.from_edges(
            src, dst, time, num_nodes[info.dst_type], weight=1.0, edge_attr={"weight": weight})
    graph = add_reverse(TemporalHeteroGraph(num_nodes=num_nodes, csr=csr))
    known = {t: known_from(created_seconds(tables[t]), first_seen[t]) for t in tables}

    features, fitted = {}, {}
    for node_type, table in tables.items():
        kept = (vocab or {}).get(node_type)
        if kept is None and fit_before is None:
            raise ValueError(f"{store_url}: no vocabulary for {node_type!r} and no fit_before "
                             "to fit one on the training window")
        features[node_type], fitted[node_type] = encode_nodes(
            table, node_type, kept,
            None if kept is not None else vocab_rows(known[node_type], fit_before))

    imp = store.read_edges_arrow(IMPRESSIONS, days,
                                 columns=["src", "dst", "ts_ms", "position", "clicked"])
    m = store.manifest
    return GraphData(graph=graph, features=features, vocab=fitted,
                     impressions=Impressions.from_arrow(imp), days=all_days, known_from=known,
                     store_version={"graph_created_at": m.get("created_at"),
                                    "config_hash": m.get("config_hash"),
                                    "format_version": m.get("format_version")})


WINDOWS = ("train", "val", "test")


@dataclass(frozen=True)
class Windows:
    """The temporal split, by event time (UTC seconds), never by the day folder.

    ``train``: ``time < val_start``; ``val``: ``val_start <= time < test_start``;
    ``test``: ``time >= test_start``. The boundaries are 00:00 UTC of store days, so an
    event filed late under the next day's folder stays in its own window.

    Attributes:
        days: Window name -> the store days whose calendar day it covers.
        val_start: First second of the validation window.
        test_start: First second of the test window.
    """

    days: dict[str, list[str]]
    val_start: int
    test_start: int

    def bounds(self, window: str) -> tuple[int | None, int | None]:
        """``[start, end)`` seconds of a window; ``None`` where it is open."""
        return {"train": (None, self.val_start), "val": (self.val_start, self.test_start),
                "test": (self.test_start, None)}[window]

    def mask(self, window: str, time: Tensor) -> Tensor:
        """bool ``[N]``: which event times fall in ``window``."""
        lo, hi = self.bounds(window)
        inside = torch.ones_like(time, dtype=torch.bool)
        if lo is not None:
            inside &= time >= lo
        if hi is not None:
            inside &= time < hi
        return inside

    def folders(self, window: str, store_days: list[str], slack_s: int) -> list[str]:
        """The day folders that may hold the window's events when an event may be filed up
        to ``slack_s`` seconds outside its folder's day (``graph.log_day_slack_s``)."""
        lo, hi = self.bounds(window)
        return [d for d in store_days
                if (hi is None or day_start(d) - slack_s < hi)
                and (lo is None or day_start(d) + SECONDS_PER_DAY + slack_s > lo)]


def split_windows(days: list[str], val_days: int, test_days: int) -> Windows:
    """The last ``test_days`` store days test, the ``val_days`` before them validation,
    the rest training; cut at those days' 00:00 UTC (:class:`Windows`).

    Raises:
        ValueError: Too few days to leave a training window.
    """
    days = sorted(days)
    if len(days) < val_days + test_days + 1:
        raise ValueError(f"the graph has {len(days)} days; need more than val_days + test_days "
                         f"= {val_days + test_days} to leave a training window")
    test = days[len(days) - test_days:]
    val = days[len(days) - test_days - val_days:len(days) - test_days]
    train = days[:len(days) - test_days - val_days]
    return Windows(days={"train": train, "val": val, "test": test},
                   val_start=day_start(val[0]) if val else day_start(test[0]),
                   test_start=day_start(test[0]))


def window_events(impressions: Impressions, windows: Windows, window: str) -> Tensor:
    """Indices of the impressions whose own time falls in ``window``."""
    return torch.nonzero(windows.mask(window, impressions.time)).view(-1)


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
