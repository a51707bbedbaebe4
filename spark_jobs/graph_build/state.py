"""What the existing store holds: its manifest, id maps, node counts and nodes; the
``store_hash`` an incremental run must share with it; removal of run folders its
manifest does not name."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from clickgraph.core import fs
from clickgraph.core.config import (
    GRAPH_NODE_ATTRIBUTES,
    GRAPH_NODE_TYPES,
    Config,
)
from clickgraph.core.graph_store import (
    GraphStore,
    GraphStoreError,
    open_graph_store,
)
from spark_jobs import store_io
from spark_jobs.graph_build.common import GraphBuildError, union


def store_hash(cfg: Config) -> str:
    """Hash of the settings that shape stored data (mapping, weights); incremental runs
    must share it with the store they extend."""
    g = cfg.graph
    ents = {t: None if spec is None else {k: v for k, v in dataclasses.asdict(spec).items()
                                          if k not in ("path", "format")}
            for t in GRAPH_NODE_TYPES for spec in [getattr(g.input.entities, t)]}
    ev = dataclasses.asdict(g.input.events)
    data = {"relation_weights": g.relation_weights, "content_type_weight": g.content_type_weight,
            "events": {k: ev[k] for k in ("columns", "event_types", "timestamp_unit")},
            "entities": ents}
    if ev["clicks_from_labels_after_s"] is not None:  # absent otherwise: older hashes hold
        data["events"]["clicks_from_labels_after_s"] = ev["clicks_from_labels_after_s"]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StoreState:
    """The store a run extends; empty for a new store.

    Attributes:
        manifest: its manifest, None for a new store.
        counts: node type -> number of existing ids (``0 .. n - 1``).
        id_maps: ``(t, raw_id)`` of every existing id, None for a new store.
        nodes: existing node tables of the types that have nodes, each as ``t, id,
            raw_id, first_day, created_ts_ms, attrs`` (map attribute -> value).
    """

    manifest: dict[str, Any] | None
    counts: dict[str, int]
    id_maps: DataFrame | None
    nodes: list[DataFrame]


def read_store_state(spark: SparkSession, cfg: Config, out_url: str) -> StoreState:
    """Open the store at ``out_url`` (if any), check it was built with this mapping, and
    remove the leftovers of runs that died.

    Raises:
        GraphBuildError: the store cannot be opened or was built with another
            ``store_hash``.
    """
    previous = _open_previous(out_url)
    prev_manifest = previous.manifest if previous else None
    if prev_manifest and prev_manifest.get("store_hash") != store_hash(cfg):
        raise GraphBuildError(
            f"{out_url} was built with another graph mapping or weights (store_hash "
            f"{prev_manifest.get('store_hash')} != {store_hash(cfg)}); build into a new folder")
    collect_garbage(out_url, prev_manifest)  # leftovers of runs that died
    prev_counts = {t: previous.num_nodes(t) if previous and t in prev_manifest["node_types"] else 0
                   for t in GRAPH_NODE_TYPES}
    prev_maps, old_nodes = None, []
    if previous:
        prev_maps = union([store_io.read_id_map(spark, previous, t).select(F.lit(t).alias("t"), "raw_id")
                           for t in GRAPH_NODE_TYPES if t in prev_manifest["node_types"]])
        old_nodes = [store_io.read_nodes(spark, previous, t).select(
            F.lit(t).alias("t"), "id", "raw_id", "first_day", "created_ts_ms",
            F.create_map(*[x for a in GRAPH_NODE_ATTRIBUTES[t] for x in (F.lit(a), F.col(a))])
            .alias("attrs")) for t in GRAPH_NODE_TYPES if prev_counts[t]]
    return StoreState(prev_manifest, prev_counts, prev_maps, old_nodes)


def _open_previous(out_url: str) -> GraphStore | None:
    if not fs.exists(fs.join(out_url, fs.MANIFEST_NAME)):
        return None
    try:
        return open_graph_store(out_url, verify="exists")
    except GraphStoreError as err:
        raise GraphBuildError(f"cannot extend the existing graph store: {err}") from None


def _referenced_folders(manifest: dict[str, Any] | None) -> set[str]:
    if manifest is None:
        return set()
    refs = set()
    for node in manifest["node_types"].values():
        refs.update([node["path"], node["id_map_path"]])
    for rel in manifest["relations"].values():
        refs.update(p["path"] for p in rel["partitions"])
    refs.update(manifest["quarantine"]["paths"])
    return refs


_RUN_FOLDER_GLOBS = ("edges/*/day=*/run=*", "nodes/*/run=*", "id_maps/*/run=*",
                     "quarantine/events/day=*/run=*", "quarantine/entities/run=*",
                     "edges/*/_temporary", "quarantine/*/_temporary", "_staging/run=*")


def collect_garbage(out_url: str, manifest: dict[str, Any] | None) -> int:
    """Remove run folders the manifest does not name (replaced days, dead runs).

    Only folders of the store's own layout are touched. Returns how many were removed.
    """
    filesystem, root = fs.filesystem(out_url)
    if not filesystem.exists(root):
        return 0
    keep = _referenced_folders(manifest)
    removed = 0
    for pattern in _RUN_FOLDER_GLOBS:
        for path in filesystem.glob(f"{root.rstrip('/')}/{pattern}"):
            rel = path[len(root.rstrip("/")) + 1:]
            if rel not in keep:
                filesystem.rm(path, recursive=True)
                removed += 1
    for pattern in ("edges/*/day=*", "quarantine/events/day=*"):
        for path in filesystem.glob(f"{root.rstrip('/')}/{pattern}"):
            if filesystem.isdir(path) and not filesystem.ls(path):
                filesystem.rm(path, recursive=True)
    return removed
