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

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from clickgraph.core.graph_store import IMPRESSIONS, open_graph_store
from clickgraph.core.timeline import Windows, seconds
from clickgraph.core.vocab import (
    ID_EMBEDDING_TYPES,
    NEVER,
    Vocab,
    created_seconds,
    encode_attributes,
    known_from,
    note_first_seen,
    vocab_rows,
)
from trainer.graph import TemporalCSR, TemporalHeteroGraph, add_reverse
from trainer.model import NodeFeatures


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
            time=torch.tensor(seconds(table.column("ts_ms").to_numpy()), dtype=torch.int64),
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
            by event time at these days' 00:00 UTC, :func:`clickgraph.core.timeline.split_windows`).
        known_from: Node type -> int64 ``[num_nodes]`` seconds from which the node is
            known (:func:`clickgraph.core.vocab.known_from`); :data:`NEVER` for none.
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


def encode_nodes(table, node_type: str, vocab: Vocab | None = None,
                 fit_rows: np.ndarray | None = None) -> tuple[NodeFeatures, Vocab]:
    """A node table's static features for the model (rows in id order).

    Args:
        table: pyarrow node table.
        node_type: Its type name (brands and categories also get id embeddings).
        vocab: Values fitted by an earlier run, reused as they are
            (:func:`clickgraph.core.vocab.encode_attributes`).
        fit_rows: bool ``[num_rows]``: the rows vocabularies are fitted on
            (:func:`clickgraph.core.vocab.vocab_rows`); ``None``: every row.

    Returns:
        ``(features, vocab)``.
    """
    encoded = encode_attributes(table, vocab, fit_rows)
    created = torch.from_numpy(created_seconds(table))
    features = NodeFeatures(
        categorical=torch.from_numpy(encoded.codes),
        cardinalities=encoded.cardinalities,
        created_time=created if bool((created > 0).any()) else None,
        learn_id_embedding=node_type in ID_EMBEDDING_TYPES,
    )
    return features, encoded.vocab


def load_graph_data(store_url: str, vocab: dict[str, Vocab] | None = None,
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
    store = open_graph_store(store_url)
    tables = {t: store.read_nodes_arrow(t) for t in store.node_types}
    num_nodes = {t: table.num_rows for t, table in tables.items()}
    first_seen = {t: np.full(n, NEVER, dtype=np.int64) for t, n in num_nodes.items()}
    csr = {}
    for name, info in store.relations.items():
        edges = store.read_edges_arrow(name, days, columns=["src", "dst", "ts_ms", "weight"])
        src, dst = edges.column("src").to_numpy(), edges.column("dst").to_numpy()
        time = seconds(edges.column("ts_ms").to_numpy())
        note_first_seen(first_seen[info.src_type], src, time)
        note_first_seen(first_seen[info.dst_type], dst, time)
        weight = torch.tensor(edges.column("weight").to_numpy(), dtype=torch.float32)
        csr[(info.src_type, info.relation, info.dst_type)] = TemporalCSR.from_edges(
            torch.tensor(src, dtype=torch.int64), torch.tensor(dst, dtype=torch.int64),
            torch.tensor(time, dtype=torch.int64), num_nodes[info.dst_type], weight=1.0,
            edge_attr={"weight": weight})
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
                     impressions=Impressions.from_arrow(imp), days=sorted(store.days),
                     known_from={t: torch.from_numpy(k) for t, k in known.items()},
                     store_version={"graph_created_at": m.get("created_at"),
                                    "config_hash": m.get("config_hash"),
                                    "format_version": m.get("format_version")})


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
