"""Attribute vocabularies and when a node is known: one rule for every stage.

A node table's attribute columns are strings; models read them as integer codes. A
vocabulary lists each column's values: code ``i + 1`` is ``values[i]``, code 0 is
"unknown" (missing, or a value the vocabulary does not list). Vocabularies are fitted on
the nodes **known before the training window ends** (:func:`vocab_rows`), so no value
first seen in the validation or test window gets a code of its own, and they are reused
as they are by later runs (continued checkpoints keep their embedding tables).

A node is **known from** its creation time or, where the store has none (``created_time:
null`` in the mapping, stored as 0), its first edge (:func:`known_from`).

Arrays are numpy; times are int64 seconds since epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clickgraph.core.timeline import seconds

ATTRIBUTE_SKIP = {"id", "raw_id", "first_day", "created_ts_ms", "name"}
ID_EMBEDDING_TYPES = ("user", "content", "brand", "category")
"""Node types whose ids are model inputs too: a learned vector per node (who likes what),
zero until the node is trained on, so a node created after the checkpoint is represented
by its attributes and neighbours alone (trainer/model.py, "Node identity")."""
NEVER = np.iinfo(np.int64).max
"""``known_from`` of a node that no edge and no creation time places in time."""

Vocab = dict[str, list[str]]
"""Attribute column -> values (code ``i + 1`` is ``values[i]``)."""


@dataclass(frozen=True)
class EncodedAttributes:
    """A node table's attributes as codes.

    Attributes:
        codes: int64 ``[num_rows, num_columns]``.
        cardinalities: Codes per column, the unknown code 0 included.
        vocab: The vocabulary used (given columns kept, missing ones fitted).
    """

    codes: np.ndarray
    cardinalities: list[int]
    vocab: Vocab


def attribute_columns(table) -> list[str]:
    """A node table's attribute columns (``clickgraph.core.graph_store`` node schema)."""
    return [c for c in table.column_names if c not in ATTRIBUTE_SKIP]


def encode_attributes(table, vocab: Vocab | None = None, fit_rows: np.ndarray | None = None
                      ) -> EncodedAttributes:
    """Dictionary-encode a node table's attribute columns (rows in id order).

    Args:
        table: pyarrow node table.
        vocab: Values fitted by an earlier run, reused as they are (their values keep
            their codes; others get 0). Columns it lacks are fitted here.
        fit_rows: bool ``[num_rows]``: the rows whose values are fitted (:func:`vocab_rows`);
            ``None``: every row.
    """
    columns = attribute_columns(table)
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
    array = (np.asarray(codes, dtype=np.int64).T.copy() if codes
             else np.zeros((n, 0), dtype=np.int64))
    return EncodedAttributes(codes=array, cardinalities=[len(fitted[c]) + 1 for c in columns],
                             vocab={c: fitted[c] for c in columns})


def unseen_values(table, vocab: Vocab) -> dict[str, int]:
    """Distinct non-null values per attribute column that ``vocab`` does not list.

    Returns:
        column -> number of distinct values that get code 0 (unknown), for columns with any.
    """
    out = {}
    for column, values in vocab.items():
        if column in table.column_names:
            known = set(values)
            new = {v for v in table.column(column).to_pylist() if v is not None and v not in known}
            if new:
                out[column] = len(new)
    return out


def created_seconds(table) -> np.ndarray:
    """int64 ``[num_rows]`` creation times of a node table, seconds (0 = unknown)."""
    return seconds(table.column("created_ts_ms").to_numpy().astype(np.int64))


def note_first_seen(first: np.ndarray, node: np.ndarray, time: np.ndarray) -> None:
    """Lowers ``first[node[i]]`` to ``time[i]`` in place (seconds): the earliest edge of
    each node seen so far, at either end of the edge."""
    if len(node):
        np.minimum.at(first, node, time)


def known_from(created: np.ndarray, first_seen: np.ndarray) -> np.ndarray:
    """When each node is known to exist, seconds: the earlier of its creation time (0 =
    unknown, ignored) and its first edge; :data:`NEVER` with neither."""
    stated = np.where(created > 0, created, NEVER)
    return np.minimum(stated, first_seen)


def first_seen_in_store(store, node_types: list[str]) -> dict[str, np.ndarray]:
    """Per node type, each node's earliest edge in the store, seconds (:data:`NEVER` for
    none); reads one (relation, day) slice at a time, columns ``src, dst, ts_ms`` only.

    Args:
        store: A :class:`clickgraph.core.graph_store.GraphStore`.
        node_types: The types wanted.
    """
    first = {t: np.full(store.num_nodes(t), NEVER, dtype=np.int64) for t in node_types}
    for name, info in store.relations.items():
        if info.src_type not in first and info.dst_type not in first:
            continue
        for day in store.edge_urls(name):
            edges = store.read_edges_arrow(name, [day], columns=["src", "dst", "ts_ms"])
            time = seconds(edges.column("ts_ms").to_numpy())
            for end, node_type in (("src", info.src_type), ("dst", info.dst_type)):
                if node_type in first:
                    note_first_seen(first[node_type], edges.column(end).to_numpy(), time)
    return first


def vocab_rows(known: np.ndarray, fit_before: int) -> np.ndarray:
    """Rows whose attribute values a vocabulary may be fitted on: nodes known strictly
    before ``fit_before`` (seconds; the training window's end, ``Windows.val_start``)."""
    return np.asarray(known) < fit_before
