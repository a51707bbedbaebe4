"""The manifest of a run, built from one :class:`BuildStats` the phases collect."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from clickgraph.core import fs
from clickgraph.core.config import (
    GRAPH_NODE_ATTRIBUTES,
    Config,
)
from clickgraph.core.graph_store import (
    GRAPH_FORMAT_VERSION,
    GRAPH_KIND,
)
from clickgraph.core.manifest import new_manifest
from spark_jobs.graph_build.common import ENTITY_FOLDERS, QUARANTINE_REASONS, UNDATED
from spark_jobs.graph_build.inputs import EventSource
from spark_jobs.graph_build.state import store_hash
from spark_jobs.schemas import (
    edge_schema,
    mapped_relations,
)


@dataclass(frozen=True)
class BuildStats:
    """What the phases of one run found and wrote, for its manifest.

    Attributes:
        run_id: the run's id (``YYYYmmddTHHMMSS-xxxxxx``, UTC); names its folders.
        started: when the run started, seconds since epoch (``build_seconds`` counts
            from it).
        source: the event input.
        entity_urls: node type -> URL of its entity table.
        entity_stats: node type -> ``rows_read, rows_kept, rows_quarantined,
            quarantine_by_reason`` of its table.
        dangling: entity folder name (``ENTITY_FOLDERS``) -> links to unknown entities.
        entity_quarantine_path: folder of this run's quarantined entity rows relative to
            the store, None if there are none.
        run_days: the days this run built, ascending.
        day_stats: per run day (and ``UNDATED``): rows read/kept/quarantined, reasons,
            event edges per relation, time range of kept events (ms since epoch).
        link_counts: ``(relation name, day) -> link edges`` of this run.
        node_counts: node type -> nodes in the store after the run, for the graph's node
            types (a type the mapping leaves out is absent).
        node_paths: node type -> ``(node table folder, id map folder)`` relative to the
            store.
    """

    run_id: str
    started: float
    source: EventSource
    entity_urls: dict[str, str]
    entity_stats: dict[str, dict[str, Any]]
    dangling: dict[str, int]
    entity_quarantine_path: str | None
    run_days: list[str]
    day_stats: dict[str, dict[str, Any]]
    link_counts: dict[tuple[str, str], int]
    node_counts: dict[str, int]
    node_paths: dict[str, tuple[str, str]]


def build_manifest(cfg: Config, prev: dict[str, Any] | None, stats: BuildStats) -> dict[str, Any]:
    """The new manifest: previous days not rebuilt, plus this run's days.

    Args:
        cfg: the run's config.
        prev: the manifest of the store extended, None for a new store.
        stats: what this run found and wrote.
    """
    day_index: dict[str, dict[str, Any]] = dict(prev["events"]["by_day"]) if prev else {}
    for day in stats.run_days:
        entry = dict(stats.day_stats[day])
        entry["edges"] = dict(entry["edges"])
        for (rel_name, d), n in stats.link_counts.items():
            if d == day:
                entry["edges"][rel_name] = n
        entry["edges"] = dict(sorted(entry["edges"].items()))
        entry["run"] = stats.run_id
        day_index[day] = entry
    day_index = dict(sorted(day_index.items()))
    undated = (prev or {}).get("events", {}).get("undated")
    if UNDATED in stats.day_stats:
        undated = dict(stats.day_stats[UNDATED], run=stats.run_id)
        undated.pop("edges", None)
    relations = {}
    for name, rel in mapped_relations(cfg.graph.input).items():
        parts = [{"day": d, "count": e["edges"][name],
                  "path": f"edges/{name}/day={d}/run={e['run']}"}
                 for d, e in day_index.items() if e["edges"].get(name)]
        relations[name] = {
            "src_type": rel.src_type, "relation": rel.relation, "dst_type": rel.dst_type,
            "source": rel.source, "weight": cfg.graph.relation_weights.get(rel.relation, 1.0),
            "attributes": [f.name for f in rel.attributes],
            "columns": {f.name: f.dataType.simpleString() for f in edge_schema(name).fields},
            "count": sum(p["count"] for p in parts), "partitions": parts}
    buckets = [*day_index.values(), *([undated] if undated else [])]
    ev_q: dict[str, int] = {}
    for b in buckets:
        for reason, n in b["quarantine_by_reason"].items():
            ev_q[reason] = ev_q.get(reason, 0) + n
    events = {"rows_read": sum(b["rows_read"] for b in buckets),
              "rows_kept": sum(b["rows_kept"] for b in buckets),
              "rows_quarantined": sum(b["rows_quarantined"] for b in buckets),
              "quarantine_by_reason": dict(sorted(ev_q.items())),
              "by_day": day_index, "undated": undated}
    all_q = dict(ev_q)
    for st in stats.entity_stats.values():
        for reason, n in st["quarantine_by_reason"].items():
            all_q[reason] = all_q.get(reason, 0) + n
    q_paths = [f"quarantine/events/day={d}/run={e['run']}" for d, e in day_index.items()
               if e["rows_quarantined"]]
    if undated and undated["rows_quarantined"]:
        q_paths.append(f"quarantine/events/day={UNDATED}/run={undated['run']}")
    if stats.entity_quarantine_path:
        q_paths.append(stats.entity_quarantine_path)
    lo = [e["min_ts_ms"] for e in day_index.values() if e["min_ts_ms"] is not None]
    hi = [e["max_ts_ms"] for e in day_index.values() if e["max_ts_ms"] is not None]
    entity_read = sum(s["rows_read"] for s in stats.entity_stats.values())
    entity_kept = sum(s["rows_kept"] for s in stats.entity_stats.values())
    return new_manifest(
        GRAPH_KIND, GRAPH_FORMAT_VERSION, cfg, ("graph",),
        store_hash=store_hash(cfg),
        run_id=stats.run_id,
        config_file=f"_configs/{stats.run_id}.yaml",
        days=list(day_index),
        time_range={"min_ts_ms": min(lo, default=None), "max_ts_ms": max(hi, default=None)},
        rows_read=events["rows_read"] + entity_read,
        rows_kept=events["rows_kept"] + entity_kept,
        rows_quarantined=events["rows_quarantined"] + entity_read - entity_kept,
        quarantine_by_reason=dict(sorted(all_q.items())),
        events=events,
        entities={t: {**s, "url": stats.entity_urls[t],
                      "dangling_links": stats.dangling.get(ENTITY_FOLDERS[t], 0)}
                  for t, s in stats.entity_stats.items()},
        node_counts=dict(stats.node_counts),
        edge_counts={n: r["count"] for n, r in relations.items()},
        node_types={t: {"count": stats.node_counts[t], "path": stats.node_paths[t][0],
                        "id_map_path": stats.node_paths[t][1],
                        "attributes": list(GRAPH_NODE_ATTRIBUTES[t])} for t in stats.node_counts},
        relations=relations,
        reverse_edges="derived: every relation is stored once as src -> dst; read it with "
                      "src and dst swapped for dst -> src",
        time_semantics="ts_ms: int64 ms since epoch (UTC); an edge is visible to a seed at "
                       "time t only if ts_ms < t (strictly earlier); 0 = always existed",
        quarantine={"max_fraction": cfg.graph.max_quarantine_fraction, "paths": q_paths,
                    "reasons": list(QUARANTINE_REASONS)},
        input={"events_url": stats.source.url, "events_format": stats.source.format,
               "day_partition": stats.source.day_partition, "entities": stats.entity_urls},
        build_seconds=round(time.time() - stats.started, 3),
    )


def write_run_config(cfg: Config, out_url: str, run_id: str) -> None:
    """Save the run's resolved config as ``_configs/<run_id>.yaml`` in the store."""
    config_fs, config_dir = fs.filesystem(fs.join(out_url, "_configs"))
    config_fs.makedirs(config_dir, exist_ok=True)
    fs.write_text(fs.join(out_url, "_configs", f"{run_id}.yaml"), cfg.to_yaml())
