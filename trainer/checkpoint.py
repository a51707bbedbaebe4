"""Training checkpoints: what they hold, where they live, when one may be used.

A checkpoint is a folder (Ray Train's checkpoint unit) with two files:

* ``checkpoint.pt``: ``torch.save`` of plain containers and tensors only, read back with
  ``torch.load(weights_only=True)`` (no pickled code runs on load)::

      {"format_version": 1, "model": state_dict, "optimizer": state_dict,
       "scheduler": None (no LR schedule is used), "generators": [uint8 state per rank],
       "epoch": int, "step": int (steps done in that epoch), "global_step": int}

* ``meta.json``: everything needed to decide whether the checkpoint fits a run, readable
  without torch::

      {"format_version": 1, "epoch", "step", "global_step", "epoch_done": bool,
       "world_size", "last_event_time" (seconds since epoch, the latest impression
       trained on), "graph_version": {"created_at", "config_hash", "days"},
       "id_map_version": {node_type: {"path", "count"}}, "vocab": {...},
       "history": [per-epoch metrics so far], "since_time": int or null,
       "model_config": the train.model section the parameters were built with}

Ray Train writes each checkpoint folder to ``<resources.checkpoint_url>/<run>/<name>`` through
pyarrow (local path, ``s3://``, ``gs://``) and only registers it once uploaded, so a
worker that dies mid-upload leaves the previous checkpoint as the latest. The driver
records the newest one of a finished run in ``<paths.train>/latest_checkpoint.json``,
which ``clickgraph train --continue`` reads.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

import torch

from clickgraph.core import fs
from clickgraph.core.errors import ClickgraphError

FORMAT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.pt"
META_FILE = "meta.json"
LATEST_FILE = "latest_checkpoint.json"


class CheckpointError(ClickgraphError, ValueError):
    """A checkpoint that cannot be used for this run, or storage that cannot be used."""


def graph_version(partitions_manifest: dict[str, Any]) -> dict[str, Any]:
    """The graph store version a shard set was cut from (its manifest's ``graph``)."""
    graph = partitions_manifest.get("graph", {})
    return {"created_at": graph.get("created_at"), "config_hash": graph.get("config_hash"),
            "days": list(graph.get("days", []))}


def id_map_version(store_manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per node type, the id map's folder and row count in a graph store manifest."""
    return {node_type: {"path": info.get("id_map_path"), "count": int(info.get("count", 0))}
            for node_type, info in sorted(store_manifest.get("node_types", {}).items())}


def write_checkpoint_dir(folder: str, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``checkpoint.pt`` and ``meta.json`` into a LOCAL folder (each file renamed
    into place, so a reader never sees half a file)."""
    os.makedirs(folder, exist_ok=True)
    for name, write in ((CHECKPOINT_FILE, lambda h: torch.save(state, h)),
                        (META_FILE, lambda h: h.write(json.dumps(meta, default=str).encode()))):
        tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, os.path.join(folder, name))


def read_meta(checkpoint_url: str) -> dict[str, Any]:
    """``meta.json`` of a checkpoint folder (local path or fsspec URL)."""
    url = fs.join(checkpoint_url, META_FILE)
    try:
        return fs.read_json(url)
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint_url}: no {META_FILE}; not a clickgraph "
                              "checkpoint (or an incomplete one)") from None
    except OSError as error:
        raise CheckpointError(f"{checkpoint_url}: cannot read the checkpoint ({error})") from None


def read_state(checkpoint_url: str) -> dict[str, Any]:
    """``checkpoint.pt`` of a checkpoint folder, deserialised with ``weights_only=True``."""
    filesystem, path = fs.filesystem(fs.join(checkpoint_url, CHECKPOINT_FILE))
    try:
        with filesystem.open(path, "rb") as handle:
            blob = handle.read()
    except OSError as error:
        raise CheckpointError(f"{checkpoint_url}: cannot read {CHECKPOINT_FILE} ({error})") \
            from None
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{checkpoint_url}: checkpoint format_version "
                              f"{state.get('format_version')!r}, this trainer reads "
                              f"{FORMAT_VERSION}")
    return state


def check_storage(url: str) -> None:
    """Fail early, naming the URL, when checkpoints cannot be written there."""
    probe = fs.join(url, f".probe-{uuid.uuid4().hex[:8]}")
    try:
        filesystem, path = fs.filesystem(url)
        filesystem.makedirs(path, exist_ok=True)
        fs.write_text(probe, "ok")
        fs.remove(probe)
    except Exception as error:  # noqa: BLE001 - any failure means "unusable storage"
        raise CheckpointError(f"checkpoint storage {url} is not writable ({type(error).__name__}: "
                              f"{error}); set resources.checkpoint_url to a reachable location") \
            from None


def check_resume(meta: dict[str, Any], *, graph: dict[str, Any], world_size: int,
                 where: str) -> None:
    """A checkpoint resumed within a run must come from the same graph and world size."""
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{where}: checkpoint format_version {meta.get('format_version')!r}, "
                              f"this trainer reads {FORMAT_VERSION}")
    if meta.get("graph_version") != graph:
        raise CheckpointError(f"{where}: checkpoint is from graph version "
                              f"{meta.get('graph_version')}, the shards are from {graph}")
    if int(meta.get("world_size", -1)) != world_size:
        raise CheckpointError(f"{where}: checkpoint was written by {meta.get('world_size')} "
                              f"workers; this run has {world_size}")


def check_continue(meta: dict[str, Any], *, graph: dict[str, Any],
                   id_maps: dict[str, dict[str, Any]], vocab: dict[str, Any],
                   where: str) -> None:
    """A checkpoint continued on a newer graph must be of the same lineage.

    The new graph must extend the old one (its days a prefix of the new days, the same
    build config), the id maps may only have grown (ids are reused, never reassigned),
    and the attribute vocabularies must be the checkpoint's: codes baked into the
    shards index the model's embeddings, so a refitted vocabulary would silently mean
    other values.
    """
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{where}: checkpoint format_version {meta.get('format_version')!r}, "
                              f"this trainer reads {FORMAT_VERSION}")
    old = meta.get("graph_version", {})
    if old.get("config_hash") != graph.get("config_hash"):
        raise CheckpointError(f"{where}: checkpoint graph config_hash {old.get('config_hash')} "
                              f"differs from the shards' {graph.get('config_hash')}: another graph, "
                              "not a continuation")
    old_days = list(old.get("days", []))
    if graph.get("days", [])[:len(old_days)] != old_days:
        raise CheckpointError(f"{where}: the graph's days {graph.get('days')} do not extend the "
                              f"checkpoint's {old_days}")
    for node_type, info in meta.get("id_map_version", {}).items():
        new = id_maps.get(node_type)
        if new is None or new["count"] < info["count"]:
            raise CheckpointError(f"{where}: id map of {node_type!r} shrank or vanished "
                                  f"({info} -> {new}); ids must be reused, not reassigned")
    if meta.get("vocab") != vocab:
        changed = sorted(t for t in set(vocab) | set(meta.get("vocab", {}))
                         if vocab.get(t) != meta.get("vocab", {}).get(t))
        raise CheckpointError(f"{where}: the shard set's vocab.json differs from the "
                              f"checkpoint's for node types {changed}; the vocabularies must be "
                              "reused, not refitted (re-partition with the checkpoint's vocab "
                              "or retrain from scratch)")


def write_latest(train_root: str, checkpoint_url: str, meta: dict[str, Any]) -> None:
    """Record a finished run's newest checkpoint for ``--continue``."""
    fs.write_json(fs.join(train_root, LATEST_FILE),
                  {"checkpoint": checkpoint_url, "global_step": meta.get("global_step"),
                   "last_event_time": meta.get("last_event_time")})


def find_latest(train_root: str) -> str:
    """URL of the newest finished run's checkpoint under ``train_root``."""
    url = fs.join(train_root, LATEST_FILE)
    if not fs.exists(url):
        raise CheckpointError(f"{url} not found: no finished distributed run to continue from")
    return fs.read_json(url)["checkpoint"]


def grow_id_tables(model: torch.nn.Module, state: dict[str, Any],
                   optimizer_state: dict[str, Any] | None = None
                   ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A checkpoint's model (and Adam) state fitted to ``model`` built on a graph with
    more nodes: the id-vector tables (``*.id_embedding.weight``) and their optimiser
    moments gain zero rows for the new nodes, which the model then represents by their
    attributes and neighbours alone (trainer/model.py). Other shapes are left to
    ``load_state_dict`` to check.

    Raises:
        CheckpointError: A table has more rows than the graph has nodes (a graph that
            shrank is another graph).
    """
    current = model.state_dict()
    grown, rows_added = dict(state), {}
    for key, value in state.items():
        if not key.endswith("id_embedding.weight") or key not in current:
            continue
        want = current[key].shape[0]
        if value.shape[0] > want:
            raise CheckpointError(f"{key}: the checkpoint has {value.shape[0]} nodes, the graph "
                                  f"{want}; ids are reused, never removed")
        if value.shape[0] < want:
            grown[key] = torch.cat([value, value.new_zeros((want - value.shape[0], *value.shape[1:]))])
            rows_added[tuple(value.shape)] = want
    if optimizer_state is None or not rows_added:
        return grown, optimizer_state
    shapes = [tuple(p.shape) for p in model.parameters()]
    moments = {}
    for index, entry in optimizer_state["state"].items():
        entry = dict(entry)
        for name, moment in entry.items():
            if torch.is_tensor(moment) and tuple(moment.shape) in rows_added and \
                    tuple(moment.shape) != shapes[int(index)]:
                want = shapes[int(index)][0]
                entry[name] = torch.cat([moment, moment.new_zeros((want - moment.shape[0],
                                                                   *moment.shape[1:]))])
        moments[index] = entry
    return grown, {**optimizer_state, "state": moments}
