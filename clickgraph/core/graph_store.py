"""The graph store's format and its reader (the API every stage reads the store through).

The store (``docs/graph-store.md``) is versioned in place: every build run writes its
tables under new ``run=<run_id>`` folders and then commits ``_MANIFEST.json``, which names
the one folder that holds each node table, id map and (relation, day) edge slice. A reader
reads exactly those folders, so it never sees a half-written run or a replaced day:

    store = open_graph_store("runs/local/graph")
    store.node_types                       # ['user', 'content', ...]
    store.num_nodes("user")                # dense ids are 0 .. num_nodes - 1
    store.edge_urls("user__clicked__content")
    edges = store.read_edges_arrow("user__clicked__content")   # pyarrow, no Spark
    df = spark_jobs.store_io.read_edges(spark, store, "user__clicked__content", reverse=True)

Every relation is stored once, ``src -> dst``; the reverse relation is the same table with
``src`` and ``dst`` swapped (``reverse=True``), which parquet's columnar layout makes free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clickgraph.core import fs
from clickgraph.core.manifest import ManifestError, read_manifest

GRAPH_KIND = "graph"
IMPRESSIONS = "user__impressed__content"
"""The relation of impression events (the training examples; attributes clicked, position)."""
GRAPH_FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)


class GraphStoreError(ManifestError):
    """A graph store that cannot be trusted: no manifest, unknown version, missing files."""


@dataclass(frozen=True)
class RelationInfo:
    """One relation as the manifest describes it.

    Attributes:
        name: ``<src_type>__<relation>__<dst_type>``.
        src_type: source node type; ``src`` holds its dense ids.
        relation: relation name.
        dst_type: destination node type; ``dst`` holds its dense ids.
        count: number of edges over all days.
        partitions: day (``YYYY-MM-DD``) -> store-relative folder of that day's edges;
            days without edges of this relation are absent.
        counts: day -> number of edges in that day's folder.
        attributes: per-edge attribute columns besides src, dst, ts_ms, weight.
    """

    name: str
    src_type: str
    relation: str
    dst_type: str
    count: int
    partitions: dict[str, str]
    counts: dict[str, int]
    attributes: tuple[str, ...]


@dataclass(frozen=True)
class GraphStore:
    """An opened, checked graph store. Paths are URLs under ``url``."""

    url: str
    manifest: dict[str, Any]

    @property
    def format_version(self) -> int:
        return int(self.manifest["format_version"])

    @property
    def days(self) -> list[str]:
        """Days included, ascending (``YYYY-MM-DD``)."""
        return list(self.manifest["days"])

    @property
    def node_types(self) -> list[str]:
        return list(self.manifest["node_types"])

    @property
    def relations(self) -> dict[str, RelationInfo]:
        out = {}
        for name, r in self.manifest["relations"].items():
            out[name] = RelationInfo(
                name=name, src_type=r["src_type"], relation=r["relation"],
                dst_type=r["dst_type"], count=int(r["count"]),
                partitions={p["day"]: p["path"] for p in r["partitions"]},
                counts={p["day"]: int(p["count"]) for p in r["partitions"]},
                attributes=tuple(r["attributes"]))
        return out

    def num_nodes(self, node_type: str) -> int:
        return int(self.manifest["node_types"][node_type]["count"])

    def _abs(self, rel_path: str) -> str:
        return fs.join(self.url, rel_path)

    def node_url(self, node_type: str) -> str:
        """Folder of the node table (schema: ``spark_jobs.schemas.node_schema``)."""
        return self._abs(self.manifest["node_types"][node_type]["path"])

    def id_map_url(self, node_type: str) -> str:
        """Folder of the id map raw_id -> id (``spark_jobs.schemas.ID_MAP_SCHEMA``)."""
        return self._abs(self.manifest["node_types"][node_type]["id_map_path"])

    def edge_urls(self, relation: str, days: list[str] | None = None) -> dict[str, str]:
        """Day -> folder of that day's edges, for ``days`` (default: all) that have any."""
        info = self._relation(relation)
        wanted = info.partitions if days is None else {
            d: p for d, p in info.partitions.items() if d in set(days)}
        return {day: self._abs(path) for day, path in sorted(wanted.items())}

    def _relation(self, relation: str) -> RelationInfo:
        rels = self.relations
        if relation not in rels:
            raise KeyError(f"{self.url}: no relation {relation!r} (has: {', '.join(rels)})")
        return rels[relation]

    # ----------------------------------------------------------------- readers

    def read_nodes_arrow(self, node_type: str):
        """The node table as a ``pyarrow.Table`` in id order (ids are dense ``0..n-1``).

        Raises:
            GraphStoreError: The ids are not dense.
        """
        import numpy as np

        table = read_table(self.node_url(node_type)).sort_by("id")
        ids = table.column("id").to_numpy()
        if len(ids) and not np.array_equal(ids, np.arange(len(ids))):
            raise GraphStoreError(f"{self.url}: node table {node_type!r} ids are not dense 0..n-1")
        return table

    def read_edges_arrow(self, relation: str, days: list[str] | None = None,
                         columns: list[str] | None = None, reverse: bool = False,
                         row_filter=None):
        """Edges of ``relation`` as a ``pyarrow.Table`` with a ``day`` column.

        Args:
            relation: relation name, e.g. ``"user__clicked__content"``.
            days: days to read (default: all in the manifest).
            columns: file columns to read (default: all).
            reverse: swap ``src`` and ``dst`` (the reverse relation).
            row_filter: a ``pyarrow.compute`` expression over the file columns, applied
                while reading, batch by batch (only matching rows are ever held), e.g.
                ``pc.field("src").isin(users)``.
        """
        import pyarrow as pa
        import pyarrow.dataset as ds

        info = self.manifest["relations"][self._relation(relation).name]
        file_schema = pa.schema([(name, _arrow_type(kind)) for name, kind in info["columns"].items()])
        if columns is not None:
            file_schema = pa.schema([file_schema.field(c) for c in columns])
        tables = []
        for day, url in self.edge_urls(relation, days).items():
            filesystem, path = fs.filesystem(url)
            table = ds.dataset(path, filesystem=filesystem, format="parquet",
                               ignore_prefixes=["_", "."]).to_table(columns=file_schema.names,
                                                                   filter=row_filter)
            table = table.cast(file_schema)
            tables.append(table.append_column("day", pa.array([day] * table.num_rows, pa.string())))
        if tables:
            out = pa.concat_tables(tables)
        else:
            out = file_schema.empty_table().append_column("day", pa.array([], pa.string()))
        if reverse:
            names = ["dst" if n == "src" else "src" if n == "dst" else n for n in out.column_names]
            out = out.rename_columns(names)
        return out


def read_table(url: str, columns: list[str] | None = None, row_filter=None):
    """A parquet folder (local path or fsspec URL) as one pyarrow table; files whose names
    start with ``_`` or ``.`` are skipped.

    Args:
        columns: Only these columns (default: all).
        row_filter: A ``pyarrow.compute`` expression applied while reading, batch by
            batch, so only matching rows are ever held (e.g. ``pc.field("id").isin(ids)``).
    """
    import pyarrow.dataset as ds

    filesystem, path = fs.filesystem(url)
    return ds.dataset(path, filesystem=filesystem, format="parquet",
                      ignore_prefixes=["_", "."]).to_table(columns=columns, filter=row_filter)


def _arrow_type(spark_type: str):
    """pyarrow type of a Spark simple type name as written in the manifest's ``columns``."""
    import pyarrow as pa

    types = {"bigint": pa.int64(), "int": pa.int32(), "double": pa.float64(),
             "boolean": pa.bool_(), "string": pa.string()}
    if spark_type not in types:
        raise GraphStoreError(f"column type {spark_type!r} in the manifest is not known")
    return types[spark_type]


def _exists(url: str) -> bool:
    try:
        return fs.exists(url)
    except (OSError, ValueError):
        return False


def open_graph_store(url: str, verify: str = "exists") -> GraphStore:
    """Open a graph store through its manifest.

    Args:
        url: the store folder (any URL fsspec reads: local path, ``s3a://``, ``gs://``).
        verify: ``"none"``; ``"exists"`` (default): every folder the manifest names
            exists; ``"counts"``: also the parquet row counts of every node table, id map
            and edge folder equal the manifest's counts (reads parquet footers only).

    Returns:
        The :class:`GraphStore`.

    Raises:
        GraphStoreError: no manifest, another kind, an unknown format version, or files
            that disagree with the manifest.
    """
    if verify not in ("none", "exists", "counts"):
        raise ValueError(f"verify must be none, exists or counts, got {verify!r}")
    try:
        manifest = read_manifest(url, GRAPH_KIND, SUPPORTED_FORMAT_VERSIONS)
    except ManifestError as err:
        raise GraphStoreError(str(err)) from None
    store = GraphStore(url=url.rstrip("/"), manifest=manifest)
    if verify == "none":
        return store
    expected: list[tuple[str, int, str]] = []  # (url, rows, what)
    for ntype in store.node_types:
        n = store.num_nodes(ntype)
        expected.append((store.node_url(ntype), n, f"node table {ntype}"))
        expected.append((store.id_map_url(ntype), n, f"id map {ntype}"))
    for name, info in store.relations.items():
        for day, rel_path in info.partitions.items():
            expected.append((store._abs(rel_path), info.counts[day], f"edges {name} {day}"))
    for folder, rows, what in expected:
        if not _exists(folder):
            raise GraphStoreError(f"{url}: {what} folder {folder} is listed in the manifest "
                                  "but missing (store damaged or partly deleted)")
        if verify == "counts":
            found = _parquet_rows(folder)
            if found != rows:
                raise GraphStoreError(f"{url}: {what} folder {folder} holds {found} rows, "
                                      f"the manifest says {rows}")
    return store


def _parquet_rows(folder: str) -> int:
    """Rows in the parquet files of a folder, from their footers."""
    import pyarrow.dataset as ds

    filesystem, path = fs.filesystem(folder)
    dataset = ds.dataset(path, filesystem=filesystem, format="parquet",
                         exclude_invalid_files=False, ignore_prefixes=["_", "."])
    return dataset.count_rows()
