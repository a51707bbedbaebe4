"""``clickgraph export``: user and content embeddings as of a cutoff, for other models.

One export is a folder ``<root>/<YYYY-MM-DD>/`` (``root``: ``paths.embeddings``; the name
is the cutoff's UTC date) holding

* ``user.parquet``, ``content.parquet``: one row per node that exists before the cutoff
  (:func:`trainer.inference.existing_nodes`): ``id`` (dense id), ``raw_id``,
  ``cutoff_ts_ms`` and ``embedding`` (fixed-size list of float32, the model's state of the
  node as of the cutoff: only edges strictly earlier than the cutoff are sampled);
* ``recommendations.parquet``: the recommendation controls' top-k lists
  (:mod:`trainer.recommend`);
* ``_MANIFEST.json``, written last: cutoff, model and graph versions, counts, dimension,
  drift against the previous version and the recommendation controls.

The folder is written under a staging name and swapped into place
(:func:`clickgraph.core.fs.staged_output`), so an export that dies leaves the previous version
of that date, and a rerun replaces it whole. See ``docs/export.md``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from clickgraph.core import fs
from clickgraph.core.config import Config
from clickgraph.core.errors import InputError
from clickgraph.core.graph_store import open_graph_store, read_table
from clickgraph.core.manifest import ManifestError, new_manifest, read_manifest, write_manifest
from clickgraph.core.timeline import SECONDS_PER_DAY, day_start, milliseconds
from trainer.inference import TrainedModel, embed, existing_nodes, load_trained
from trainer.recommend import (
    PairScorer,
    Recommendations,
    apply_controls,
    compare_controls,
    content_categories,
    control_metrics,
    head,
    recommend,
)

EMBEDDINGS_KIND = "embeddings"
FORMAT_VERSION = 1  # one process: one parquet file per type
# --workers N (trainer.dist_inference): a type's ``files`` entry is a parquet dataset folder
# and ``parts`` names every file in it
DIST_FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (1, 2)
EXPORTED_TYPES = ("user", "content")
RECOMMENDATIONS_FILE = "recommendations.parquet"
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_cutoff(text: str) -> int:
    """Seconds since epoch of ``text``: ``YYYY-MM-DD`` (00:00 UTC) or an ISO-8601 timestamp.

    A timestamp without an offset is UTC. Fractions of a second are dropped (floored):
    edge times are whole seconds floored from milliseconds, so flooring the cutoff never
    makes an edge at or after the exact cutoff visible.

    Raises:
        ValueError: ``text`` is neither form.
    """
    value = text.strip()
    try:
        if _DATE_RE.match(value):
            return day_start(value)
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
    except ValueError:
        raise InputError(f"cutoff {text!r} is neither a date (YYYY-MM-DD, midnight UTC) nor an "
                         "ISO-8601 timestamp (e.g. 2026-03-06T12:00:00+00:00)") from None
    return math.floor(moment.timestamp())


def cutoff_iso(seconds: int) -> str:
    """``seconds`` as an ISO-8601 UTC timestamp."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


def day_end(day: str) -> int:
    """Seconds of 00:00 UTC after ``day`` (``YYYY-MM-DD``): the end of that day."""
    return day_start(day) + SECONDS_PER_DAY


def version_name(cutoff: int) -> str:
    """Folder name of an export as of ``cutoff``: its UTC date."""
    return dt.datetime.fromtimestamp(cutoff, dt.UTC).strftime("%Y-%m-%d")


def embedding_table(ids: torch.Tensor, raw_ids: list[str], states: torch.Tensor, cutoff: int,
                    metadata: dict[str, Any]):
    """One node type's embeddings as a pyarrow table.

    Columns: ``id`` int64, ``raw_id`` string, ``cutoff_ts_ms`` int64 and ``embedding``
    ``fixed_size_list<float32>[D]``; ``metadata`` goes into the schema's metadata as JSON
    under ``clickgraph``.
    """
    import pyarrow as pa

    dim = states.shape[1]
    values = pa.array(states.to(torch.float32).numpy().reshape(-1), pa.float32())
    table = pa.table({
        "id": pa.array(ids.numpy().astype(np.int64), pa.int64()),
        "raw_id": pa.array(raw_ids, pa.string()),
        "cutoff_ts_ms": pa.array(np.full(len(raw_ids), milliseconds(cutoff), dtype=np.int64), pa.int64()),
        "embedding": pa.FixedSizeListArray.from_arrays(values, dim),
    })
    return table.replace_schema_metadata({"clickgraph": json.dumps(metadata, sort_keys=True)})


def embedding_matrix(table) -> np.ndarray:
    """The ``embedding`` column of an export table as float32 ``[rows, D]``."""
    import pyarrow as pa

    column = table.column("embedding").combine_chunks()
    if not pa.types.is_fixed_size_list(column.type):
        column = column.cast(pa.list_(pa.float32(), len(column[0]) if len(column) else 0))
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)


def write_parquet(url: str, table) -> None:
    """Writes pyarrow ``table`` as one parquet file at ``url``."""
    import pyarrow.parquet as pq

    filesystem, path = fs.filesystem(url)
    pq.write_table(table, path, filesystem=filesystem)


def read_parquet(url: str):
    """One parquet file, or a folder of them (a distributed export's type), as a table."""
    import pyarrow.parquet as pq

    filesystem, path = fs.filesystem(url)
    return pq.read_table(path, filesystem=filesystem)


def read_version(folder_url: str) -> dict[str, Any]:
    """The manifest of an export folder (refuses a missing, foreign or unknown one)."""
    return read_manifest(folder_url, EMBEDDINGS_KIND, SUPPORTED_FORMAT_VERSIONS)


def previous_version(root_url: str, cutoff: int) -> tuple[str, dict[str, Any]] | None:
    """The export that readers of ``root_url`` see now and that this one follows.

    The version with the latest cutoff not after ``cutoff`` among the date folders that
    hold a valid manifest (ties: the newest ``created_at``). A rerun for the same date
    therefore compares with the version it replaces; a backfill of an older date ignores
    newer versions.

    Returns:
        ``(folder_url, manifest)``, or ``None`` when there is none.
    """
    filesystem, path = fs.filesystem(root_url)
    if not filesystem.exists(path):
        return None
    best = None
    for entry in filesystem.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if not _DATE_RE.match(name):
            continue  # staging folders start with "."; other files are not versions
        folder = fs.join(root_url, name)
        try:
            manifest = read_version(folder)
        except ManifestError:
            continue  # an incomplete or foreign folder is not a version
        seconds = int(manifest["cutoff"]["seconds"])
        if seconds > cutoff:
            continue
        key = (seconds, str(manifest.get("created_at", "")))
        if best is None or key > best[0]:
            best = (key, folder, manifest)
    return None if best is None else (best[1], best[2])


def type_drift(current, previous) -> dict[str, Any]:
    """Drift of one node type between two export tables (pyarrow, joined on ``raw_id``).

    Returns:
        ``current``, ``previous`` (row counts), ``in_both`` (nodes in both versions),
        ``new_share`` (share of current nodes absent before), ``gone`` (previous nodes
        absent now) and ``mean_cosine``: the mean over nodes in both of the cosine
        similarity between a node's two embeddings (``None`` when no node is in both, or
        when the dimension changed, with ``reason``).
    """
    import pyarrow.compute as pc

    position = pc.index_in(current.column("raw_id"), value_set=previous.column("raw_id"))
    found = position.is_valid().to_numpy(zero_copy_only=False)
    in_both = int(found.sum())
    out: dict[str, Any] = {
        "current": current.num_rows, "previous": previous.num_rows, "in_both": in_both,
        "new_share": (current.num_rows - in_both) / current.num_rows if current.num_rows else None,
        "gone": previous.num_rows - in_both, "mean_cosine": None,
    }
    if in_both == 0:
        out["reason"] = "no node is in both versions"
        return out
    now, before = embedding_matrix(current), embedding_matrix(previous)
    if now.shape[1] != before.shape[1]:
        out["reason"] = f"embedding dimension changed from {before.shape[1]} to {now.shape[1]}"
        return out
    rows = position.to_numpy(zero_copy_only=False)[found].astype(np.int64)
    a = now[found].astype(np.float64)
    b = before[rows].astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = (a * b).sum(axis=1) / np.maximum(norms, 1e-12)
    out["mean_cosine"] = float(cosine.mean())
    return out


def embedding_drift(previous_url: str, previous_manifest: dict[str, Any],
                    tables: dict[str, Any]) -> dict[str, Any]:
    """Per exported node type, :func:`type_drift` of ``tables`` against a previous export."""
    out: dict[str, Any] = {
        "previous": {"url": previous_url, "cutoff": previous_manifest["cutoff"],
                     "model": previous_manifest.get("model"),
                     "created_at": previous_manifest.get("created_at")},
    }
    for node_type, table in tables.items():
        name = previous_manifest.get("files", {}).get(node_type, f"{node_type}.parquet")
        out[node_type] = type_drift(table, read_parquet(fs.join(previous_url, name)))
    return out


def _raw_ids(model: TrainedModel, graph_url: str, node_type: str, columns: list[str]) -> dict:
    """Columns of a node table, ordered by dense id, checked against the loaded graph."""
    from clickgraph.core.graph_store import open_graph_store

    table = read_table(open_graph_store(graph_url).node_url(node_type)).sort_by("id")
    expected = model.data.graph.num_nodes[node_type]
    if table.num_rows != expected:
        raise InputError(f"{graph_url}: node table {node_type!r} has {table.num_rows} rows, the "
                         f"loaded graph {expected}; the store changed during the export")
    return {c: table.column(c).to_pylist() for c in columns}


def run_export(cfg: Config, cutoff: str | None = None, checkpoint: str | None = None,
               graph_url: str | None = None, out_url: str | None = None, log=print) -> dict[str, Any]:
    """Export user and content embeddings as of ``cutoff`` with drift and recommendation controls.

    Args:
        cfg: Validated config (``evaluate``: ``embedding_batch_size``, ``seed``, ``top_k``,
            ``recommend_users``, ``checkpoint``; ``paths``).
        cutoff: ``YYYY-MM-DD`` (00:00 UTC) or an ISO-8601 timestamp; default: the end of
            the graph's last day (00:00 UTC of the next day).
        checkpoint: Checkpoint folder; default ``evaluate.checkpoint``, else the latest
            finished training run's.
        graph_url: Graph store; default ``paths.graph``.
        out_url: Root of the export versions; default ``paths.embeddings``. The export goes
            to ``<out_url>/<cutoff date>/``.
        log: Progress printer.

    Returns:
        The manifest written to ``_MANIFEST.json``.

    Raises:
        CheckpointError: No usable checkpoint.
        GraphStoreError: The graph store has no valid manifest.
        ValueError: A malformed cutoff, a cutoff after the end of the graph's last day, or
            no user or content existing before it.
    """
    started = time.perf_counter()
    graph_url = graph_url or cfg.paths.stage("graph")
    root_url = (out_url or cfg.paths.stage("embeddings")).rstrip("/")
    cutoff_s = parse_cutoff(cutoff) if cutoff is not None else None  # fail before loading
    model = load_trained(cfg, graph_url, checkpoint)
    data = model.data
    cutoff_s = check_cutoff(cutoff_s, data.days, graph_url)
    name = version_name(cutoff_s)
    folder_url = fs.join(root_url, name)
    log_model(model.checkpoint, model.meta, graph_url, data.days, cutoff_s, log)

    ev = cfg.evaluate
    model_version = model.version
    graph_version = graph_version_of(graph_url, open_graph_store(graph_url))
    file_metadata = {"cutoff": cutoff_iso(cutoff_s), "cutoff_seconds": cutoff_s,
                     "model": model_version, "graph": graph_version}
    nodes, states, tables, raw = {}, {}, {}, {}
    for node_type in EXPORTED_TYPES:
        t0 = time.perf_counter()
        nodes[node_type] = existing_nodes(data, node_type, cutoff_s)
        if nodes[node_type].numel() == 0:
            raise InputError(f"no {node_type} exists before cutoff {cutoff_iso(cutoff_s)} in "
                             f"{graph_url}; pick a later cutoff")
        columns = ["raw_id", "content_type"] if node_type == "content" else ["raw_id"]
        raw[node_type] = _raw_ids(model, graph_url, node_type, columns)
        states[node_type] = embed(model, node_type, nodes[node_type], cutoff_s,
                                  batch_size=ev.embedding_batch_size, seed=ev.seed, log=log,
                                  log_every_s=cfg.resources.progress_every_s)
        ids = nodes[node_type]
        tables[node_type] = embedding_table(ids, [raw[node_type]["raw_id"][i] for i in ids.tolist()],
                                            states[node_type], cutoff_s, file_metadata)
        log(f"export: {node_type}: {ids.numel():,} embeddings as of the cutoff "
            f"({time.perf_counter() - t0:.1f} s)")

    controls, controlled, recs = recommendation_controls(
        model, cutoff_s, nodes["user"], states["user"], nodes["content"], states["content"],
        raw["content"]["content_type"], content_categories(model, cutoff_s), ev, log)

    drift, drift_reason = drift_against_previous(root_url, cutoff_s, tables, log)
    files = {t: f"{t}.parquet" for t in EXPORTED_TYPES}
    files["recommendations"] = RECOMMENDATIONS_FILE
    manifest = export_manifest(
        cfg, FORMAT_VERSION, cutoff_s, model_version, graph_version,
        counts={t: int(nodes[t].numel()) for t in EXPORTED_TYPES},
        dim=int(states["user"].shape[1]), files=files, drift=drift, drift_reason=drift_reason,
        recommendations=controls, recommendations_controlled=controlled)
    recommendations = recommendations_table(recs, raw["user"]["raw_id"], raw["content"]["raw_id"],
                                            file_metadata)
    with fs.staged_output(folder_url) as staging:
        filesystem, staging_path = fs.filesystem(staging)
        filesystem.makedirs(staging_path, exist_ok=True)
        for node_type in EXPORTED_TYPES:
            write_parquet(fs.join(staging, files[node_type]), tables[node_type])
        write_parquet(fs.join(staging, RECOMMENDATIONS_FILE), recommendations)
        write_manifest(staging, manifest)
    log(f"export: wrote {', '.join(f'{n:,} {t}' for t, n in manifest['counts'].items())} embeddings "
        f"(dim {manifest['dim']}) -> {folder_url} in {time.perf_counter() - started:.1f} s")
    return manifest


def recommendation_controls(model: TrainedModel | PairScorer, cutoff_s: int, users: torch.Tensor,
                            user_states: torch.Tensor, catalogue: torch.Tensor,
                            catalogue_states: torch.Tensor, content_type: list[str],
                            category: torch.Tensor, ev, log
                            ) -> tuple[dict[str, Any], dict[str, Any], Recommendations]:
    """The recommendation controls of an export (:mod:`trainer.recommend`): the
    uncontrolled top-``evaluate.top_k`` lists of ``evaluate.recommend_users`` sampled
    ``users`` and the lists the exposure controls make of their best
    ``evaluate.rerank_candidates``, each with its figures; logs both.

    Args:
        model: The loaded model, or the :class:`~trainer.recommend.PairScorer` of one.
        cutoff_s: The cutoff, seconds; every state is as of it.
        users: int64 ``[N]`` users to sample from (ascending or not); ``user_states``
            ``[N, D]`` their embeddings (only the sampled users' rows are read).
        user_states: As above.
        catalogue: int64 ``[C]`` the content existing before the cutoff, ascending;
            ``catalogue_states`` ``[C, D]`` their embeddings.
        catalogue_states: As above.
        content_type: Content type per dense content id.
        category: int64 ``[num_content]`` category per dense content id (``-1`` none).
        ev: The ``evaluate`` section.
        log: Progress printer.

    Returns:
        ``(uncontrolled figures, controlled figures, controlled lists)``.
    """
    t0 = time.perf_counter()
    candidates = recommend(model, cutoff_s, users, user_states, catalogue, catalogue_states,
                           ev.rerank_candidates, ev.recommend_users, ev.seed)
    controls = control_metrics(head(candidates, ev.top_k), catalogue, catalogue_states,
                               content_type, category)
    recs, settings = apply_controls(candidates, catalogue, catalogue_states, content_type,
                                    category, ev)
    controlled = {**control_metrics(recs, catalogue, catalogue_states, content_type, category),
                  **settings}
    controlled["against_uncontrolled"] = compare_controls(controls, controlled)
    for label, c in (("uncontrolled", controls), ("controlled", controlled)):
        log(f"export: {label} recommendations for {c['users']} users, top {c['top_k']}: coverage "
            f"{_fmt(c['coverage'])}, intra-list diversity {_fmt(c['intra_list_diversity'])} "
            f"(catalogue {_fmt(c['catalogue_diversity'])}), video share {_fmt(c['video_share_topk'])} "
            f"vs catalogue {_fmt(c['video_share_catalogue'])}, predicted CTR {_fmt(c['mean_score'])}")
    log(f"export: controls cost {_fmt(controlled['against_uncontrolled']['predicted_ctr_ratio'])}x "
        f"the predicted CTR ({time.perf_counter() - t0:.1f} s)")
    return controls, controlled, recs


def check_cutoff(cutoff_s: int | None, days: list[str], graph_url: str) -> int:
    """``cutoff_s``, or by default the end of the store's last day.

    Raises:
        InputError: A cutoff after the end of the last day (no events past it are stored,
            so the embeddings would not be as of the cutoff).
    """
    last_day = sorted(days)[-1]
    if cutoff_s is None:
        return day_end(last_day)
    if cutoff_s > day_end(last_day):
        raise InputError(f"cutoff {cutoff_iso(cutoff_s)} is after the end of {graph_url}'s last day "
                         f"{last_day} ({cutoff_iso(day_end(last_day))}); the store has no events "
                         "past it, so the embeddings would not be as of the cutoff")
    return cutoff_s


def log_model(checkpoint: str, meta: dict[str, Any], graph_url: str, days: list[str],
              cutoff_s: int, log) -> None:
    """Logs what is exported, with a warning when the model trained on events at or
    after the cutoff (``model_trained_after_cutoff``)."""
    trained_until = meta.get("last_event_time")
    after_cutoff = trained_until is not None and int(trained_until) >= cutoff_s
    days = sorted(days)
    log(f"export: model {checkpoint} (global step {meta.get('global_step')}); "
        f"graph {graph_url} days {days[0]}..{days[-1]}; cutoff {cutoff_iso(cutoff_s)}")
    if after_cutoff:
        log(f"export: warning: the model was trained on events up to {cutoff_iso(int(trained_until))}, "
            "at or after the cutoff; the embeddings use no later edge, but the parameters learned "
            "from later events (recorded as model_trained_after_cutoff)")


def graph_version_of(graph_url: str, store) -> dict[str, Any]:
    """The ``graph`` entry of an export's manifest and files: the version of ``store``
    (:class:`clickgraph.core.graph_store.GraphStore`) at ``graph_url``."""
    m = store.manifest
    return {"url": graph_url, "created_at": m.get("created_at"),
            "config_hash": m.get("config_hash"), "format_version": m.get("format_version"),
            "days": sorted(store.days)}


def drift_against_previous(root_url: str, cutoff_s: int, tables: dict[str, Any], log
                           ) -> tuple[dict[str, Any] | None, str | None]:
    """``(drift, reason)``: :func:`embedding_drift` of ``tables`` against the export
    :func:`previous_version` finds, or ``(None, why not)``."""
    previous = previous_version(root_url, cutoff_s)
    if previous is None:
        reason = f"no earlier export with a manifest under {root_url}"
        log(f"export: drift: none ({reason})")
        return None, reason
    drift = embedding_drift(previous[0], previous[1], tables)
    log("export: drift against " + previous[0] + ": " + "; ".join(
        f"{t} mean cosine {_fmt(drift[t]['mean_cosine'])}, {drift[t]['in_both']:,} in both, "
        f"new {_fmt(drift[t]['new_share'])}" for t in EXPORTED_TYPES))
    return drift, None


def export_manifest(cfg: Config, format_version: int, cutoff_s: int, model: dict[str, Any],
                    graph: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """An export's ``_MANIFEST.json`` (docs/export.md): cutoff, model and graph versions,
    whether the model trained past the cutoff, the seed, and ``fields`` (counts, dim,
    files, drift, recommendation controls, ...)."""
    trained_until = model.get("last_event_time")
    return new_manifest(
        EMBEDDINGS_KIND, format_version, cfg, ("train", "evaluate"),
        cutoff={"iso": cutoff_iso(cutoff_s), "seconds": cutoff_s, "date": version_name(cutoff_s)},
        model=model, model_trained_until=trained_until,
        model_trained_after_cutoff=trained_until is not None and int(trained_until) >= cutoff_s,
        graph=graph, seed=cfg.evaluate.seed, **fields)


def recommendations_table(recs, user_raw_ids: Sequence[str] | Mapping[int, str],
                          content_raw_ids: Sequence[str] | Mapping[int, str],
                          metadata: dict[str, Any]):
    """The top-k lists as a pyarrow table, one row per (user, rank); ``user_raw_ids`` and
    ``content_raw_ids`` give the ``raw_id`` of a dense id (a list indexed by it, or a
    mapping holding at least the listed ids).

    Columns: ``user_id`` int64, ``user_raw_id`` string, ``rank`` int32 (1 = best),
    ``content_id`` int64, ``content_raw_id`` string, ``score`` float32 (click probability).
    """
    import pyarrow as pa

    num_users, k = recs.content.shape
    user = recs.user.repeat_interleave(k).numpy()
    content = recs.content.reshape(-1).numpy()
    table = pa.table({
        "user_id": pa.array(user, pa.int64()),
        "user_raw_id": pa.array([user_raw_ids[i] for i in user.tolist()], pa.string()),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), num_users), pa.int32()),
        "content_id": pa.array(content, pa.int64()),
        "content_raw_id": pa.array([content_raw_ids[i] for i in content.tolist()], pa.string()),
        "score": pa.array(recs.score.reshape(-1).numpy(), pa.float32()),
    })
    return table.replace_schema_metadata({"clickgraph": json.dumps(metadata, sort_keys=True)})


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
