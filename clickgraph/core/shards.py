"""The shard-set format: what the partition job writes and training workers read.

A shard set is a folder with one sub-folder per part (``part-00000`` ...), the set's
``_MANIFEST.json`` (kind :data:`PARTITIONS_KIND`, written last) and ``vocab.json``.
Every part folder has the layout below; the partition job (``spark_jobs/partition.py``)
and :func:`trainer.shard.save_shard` both write it through this module, and
:func:`trainer.shard.load_shard` reads it, so the format is described once.

File layout (``format_version`` 1)
----------------------------------
One folder per part, plain ``.npy`` files (``numpy.save``, C order, little-endian as
numpy writes it) so a worker maps them with ``numpy.load(mmap_mode=...)`` +
``torch.from_numpy`` and parses nothing::

    <folder>/
      _MANIFEST.json                         written last; see below
      partition_book/<node_type>.npy         int32 or int64 [num_nodes[type]] part of
                                             every GLOBAL node id (the whole book,
                                             identical in every part's folder)
      owned/<node_type>.npy                  int64 [num_owned] ascending global ids of
                                             the nodes this part owns
      features/<node_type>/categorical.npy   int64 [num_owned, C] codes of owned rows
      features/<node_type>/created_time.npy  int64 [num_owned] seconds since epoch
                                             (only for types that have one)
      relations/<src>__<relation>__<dst>/    one folder per relation, in-edges of owned
        indptr.npy                           int64 [num_owned[dst] + 1]; row i is
                                             owned[dst][i]
        neighbor.npy                         int64 [E] GLOBAL source ids
        edge_time.npy                        int64 [E] seconds since epoch, ascending
                                             within a row (ties: a fixed order)
        edge_id.npy                          int64 [E] graph-wide unique edge id
        attr/<name>.npy                      [E, ...] per-edge attributes (e.g.
                                             weight, float32 [E])

``_MANIFEST.json`` (read through :func:`clickgraph.core.manifest.read_manifest`)::

    {"kind": "partition_shard", "format_version": 1, "producer": "clickgraph",
     "producer_version": "...", "created_at": "...", "config_hash": null or "...",
     "part": 0, "num_parts": 2, "node_type_order": ["user", "content", ...],
     "num_nodes": {"user": 10000, ...},                      global counts
     "node_types": {"user": {"num_owned": 5012, "cardinalities": [...],
                             "has_created_time": true, "learn_id_embedding": false}, ...},
     "relations": [{"src_type": "user", "relation": "impressed", "dst_type": "content",
                    "path": "relations/user__impressed__content", "num_edges": 123,
                    "weight": 1.0, "edge_attr": {"weight": {"dtype": "float32",
                                                            "shape": [123]}}}, ...],
     "time_range": [first edge time, last edge time] or null}

``relations`` keeps the relation order, which fixes the order of a sample's relations.
Type and relation names must match ``[A-Za-z0-9_-]+``. The edge id is whatever unique
int64 the producer has; :func:`split_graph` writes the edge's position in the
unpartitioned relation's CSR, so distributed samples carry the same ``edge_id`` as
single-process ones.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import warnings
from typing import Any

import numpy as np

from clickgraph import __version__
from clickgraph.core import fs

PARTITIONS_KIND = "partitions"
PARTITIONS_FORMAT_VERSION = 1
SHARD_KIND = "partition_shard"
SHARD_FORMAT_VERSION = 1
VOCAB_FILE = "vocab.json"
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")

EdgeType = tuple[str, str, str]


def part_folder(part: int) -> str:
    """Folder of one part inside the shard set."""
    return f"part-{part:05d}"


def book_file(node_type: str) -> str:
    return f"partition_book/{node_type}.npy"


def owned_file(node_type: str) -> str:
    return f"owned/{node_type}.npy"


def categorical_file(node_type: str) -> str:
    return f"features/{node_type}/categorical.npy"


def created_time_file(node_type: str) -> str:
    return f"features/{node_type}/created_time.npy"


def relation_dir(edge_type: EdgeType) -> str:
    """Folder of one relation's CSR inside a part."""
    return "relations/" + "__".join(edge_type)


def csr_file(relation: str, array: str) -> str:
    """``indptr``, ``neighbor``, ``edge_time`` or ``edge_id`` of a relation folder."""
    return f"{relation}/{array}.npy"


def attr_file(relation: str, name: str) -> str:
    """A per-edge attribute array of a relation folder."""
    return f"{relation}/attr/{name}.npy"


def check_name(name: str, what: str) -> None:
    """Type, relation and attribute names become file names.

    Raises:
        ValueError: ``name`` is not ``[A-Za-z0-9_-]+``.
    """
    if not _NAME.match(name):
        raise ValueError(f"{what} {name!r} must match [A-Za-z0-9_-]+ to be a file name")


def node_type_entry(num_owned: int, num_columns: int, cardinalities: list[int],
                    has_created_time: bool, learn_id_embedding: bool) -> dict[str, Any]:
    """One ``node_types`` entry of a part's manifest."""
    return {"num_owned": int(num_owned), "num_columns": int(num_columns),
            "cardinalities": [int(c) for c in cardinalities],
            "has_created_time": bool(has_created_time),
            "learn_id_embedding": bool(learn_id_embedding)}


def relation_entry(edge_type: EdgeType, num_edges: int, weight: float,
                   edge_attr: dict[str, tuple[str, list[int]]]) -> dict[str, Any]:
    """One ``relations`` entry of a part's manifest; ``edge_attr``: name -> (dtype, shape)."""
    return {"src_type": edge_type[0], "relation": edge_type[1], "dst_type": edge_type[2],
            "path": relation_dir(edge_type), "num_edges": int(num_edges), "weight": float(weight),
            "edge_attr": {name: {"dtype": dtype, "shape": list(shape)}
                          for name, (dtype, shape) in edge_attr.items()}}


def part_manifest(part: int, num_parts: int, node_types: list[str], num_nodes: dict[str, int],
                  node_entries: dict[str, dict[str, Any]], relations: list[dict[str, Any]],
                  time_range: list[int] | None, config_hash: str | None) -> dict[str, Any]:
    """A part's ``_MANIFEST.json`` (``node_types`` keeps its order in ``node_type_order``)."""
    return {"kind": SHARD_KIND, "format_version": SHARD_FORMAT_VERSION, "producer": "clickgraph",
            "producer_version": __version__,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "config_hash": config_hash, "part": int(part), "num_parts": int(num_parts),
            "node_type_order": list(node_types),
            "num_nodes": {t: int(num_nodes[t]) for t in node_types},
            "node_types": node_entries, "relations": relations, "time_range": time_range}


def write_part_manifest(folder: str, manifest: dict[str, Any]) -> None:
    """Writes a part's manifest; call it after every array is written."""
    fs.write_json(os.path.join(folder, fs.MANIFEST_NAME), manifest)


def read_part_manifest(folder: str) -> dict[str, Any]:
    """A part's manifest, checked for kind and version.

    Raises:
        clickgraph.core.manifest.ManifestError: No manifest, another kind or version.
    """
    from clickgraph.core.manifest import read_manifest

    return read_manifest(folder, SHARD_KIND, (SHARD_FORMAT_VERSION,))


def save_array(folder: str, relative: str, array: np.ndarray) -> None:
    """One ``.npy`` file of a part (parents created)."""
    path = os.path.join(folder, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def load_array(folder: str, relative: str, mmap: bool, dtype: str | None = None,
               shape: list[int] | tuple[int, ...] | None = None) -> np.ndarray:
    """One ``.npy`` file of a part, checked against the manifest's dtype and shape.

    Raises:
        ValueError: dtype or shape disagree with the manifest.
    """
    path = os.path.join(folder, relative)
    # Copy-on-write mapping: pages are shared and read lazily like mode "r", but the
    # array is writable, so torch.from_numpy does not warn and an accidental in-place
    # write changes this process's copy instead of faulting on a read-only page.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        array = np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)
    if dtype is not None and str(array.dtype) != dtype:
        raise ValueError(f"{path}: dtype {array.dtype}, manifest says {dtype}")
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise ValueError(f"{path}: shape {array.shape}, manifest says {tuple(shape)}")
    return array
