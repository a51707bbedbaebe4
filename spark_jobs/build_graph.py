"""Build the global temporal heterogeneous graph store from interaction logs.

Run as ``clickgraph build-graph`` or
``spark-submit spark_jobs/build_graph.py --config FILE [--day D | --days A..B]``.

Reads events (JSON lines or parquet) and entity tables from any URL Spark reads, maps
them through ``graph.input`` (bring your own logs: column names, event-type names,
timestamp forms), and writes the store described in ``docs/graph-store.md``:

* every input row is kept or quarantined with a reason (:data:`QUARANTINE_REASONS`), and
  ``rows_read == rows_kept + rows_quarantined`` is recorded in the manifest;
* node ids are dense per type and stable: existing ids never change, new ones are
  appended in (first day seen, raw id) order, so building all days at once and building
  them day by day give the same ids and edges;
* each run writes new ``run=<id>`` folders and commits ``_MANIFEST.json`` last; the
  manifest names the folder of every table, so a run that dies leaves the previous store
  readable and a rerun day replaces its slice instead of adding to it.

The logic is a chain of ``DataFrame -> DataFrame`` functions (:func:`parse_events`,
:func:`mark_duplicates`, :func:`mark_unknown_entities`, :func:`prepare_entities`,
:func:`assign_ids`, ...) in :mod:`spark_jobs.graph_build`, one module per phase; :func:`run`
lists the phases, times them and does the I/O. The names this module re-exports keep
their old import path.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
import uuid
from typing import Any

from pyspark.sql import SparkSession

from clickgraph.core import fs
from clickgraph.core.config import Config, ConfigError
from clickgraph.core.manifest import write_manifest
from spark_jobs.graph_build.common import QUARANTINE_REASONS, GraphBuildError
from spark_jobs.graph_build.edges import find_link_edges, link_edges, write_edges
from spark_jobs.graph_build.entities import (
    check_entity_tables,
    known_entities,
    mark_entity_duplicates,
    prepare_entities,
)
from spark_jobs.graph_build.ids import assign_ids, first_days, number_nodes, write_nodes
from spark_jobs.graph_build.inputs import (
    EventSource,
    days_to_read,
    read_entity_table,
    read_entity_tables,
    read_events,
    requested_days,
    resolve_events,
)
from spark_jobs.graph_build.manifest import BuildStats, build_manifest, write_run_config
from spark_jobs.graph_build.parse import (
    TimeBounds,
    check_events,
    event_targets,
    mark_duplicates,
    mark_unknown_entities,
    parse_events,
    stage_events,
    summarise_events,
    to_epoch_ms,
)
from spark_jobs.graph_build.quarantine import write_quarantine
from spark_jobs.graph_build.state import collect_garbage, read_store_state, store_hash

__all__ = [
    "QUARANTINE_REASONS", "EventSource", "GraphBuildError", "TimeBounds", "assign_ids",
    "collect_garbage", "event_targets", "first_days", "link_edges", "main",
    "mark_duplicates", "mark_entity_duplicates", "mark_unknown_entities", "parse_days",
    "parse_events", "prepare_entities", "read_entity_table", "read_events", "resolve_events",
    "run", "store_hash", "to_epoch_ms",
]


def _run_id() -> str:
    now = dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def run(spark: SparkSession, cfg: Config, days: list[str] | None = None,
        logs_url: str | None = None, out_url: str | None = None, log=print) -> dict[str, Any]:
    """Build or extend the graph store; returns its new manifest.

    Args:
        spark: the session.
        cfg: validated config (``graph`` section).
        days: days to add or replace (``YYYY-MM-DD``); None: every day in the input.
        logs_url: logs folder (default ``paths.logs``).
        out_url: store folder (default ``paths.graph``).
        log: progress printer.

    Raises:
        GraphBuildError: missing/unreadable input, a day without events, a store built
            with another mapping, or a quarantined share above the threshold.
        ConfigError: the mapping names a column the input lacks.
    """
    g = cfg.graph
    started = time.time()
    phase = _PhaseTimer(log)
    logs_url = logs_url or cfg.paths.stage("logs")
    out_url = (out_url or cfg.paths.stage("graph")).rstrip("/")
    run_id = _run_id()
    days = requested_days(days)

    # ---- inputs and store state: what to read, what the store already holds
    source = resolve_events(spark, g.input.events, logs_url)
    state = read_store_state(spark, cfg, out_url)  # also removes leftovers of dead runs
    read_days = days_to_read(source, days)
    bounds = TimeBounds.from_config(g, started)

    # ---- parse and check: the entity tables, then one pass over the events, staged
    entities = check_entity_tables(read_entity_tables(spark, g.input.entities, logs_url),
                                   g.max_quarantine_fraction, g.input.entities.link_only_types())
    known = known_entities(entities.pool, state.id_maps)
    known_rows = entities.rows_kept + sum(state.counts.values())
    phase("entity tables read and checked")
    checked = check_events(read_events(spark, source, read_days), g.input.events, source,
                           bounds, days, known, known_rows)
    staging_url = fs.join(out_url, "_staging", f"run={run_id}")
    events = summarise_events(stage_events(spark, checked, staging_url), source, days,
                              read_days, g.max_quarantine_fraction,
                              g.input.events.clicks_from_labels_after_s is not None)
    phase(f"{events.rows_read:,} event rows read and checked for {len(events.run_days)} day(s), "
          f"{events.rows_quarantined:,} quarantined")

    # ---- ids, then link edges (content -> article/brand/category, article -> brand/category)
    nodes = number_nodes(events.rows, entities.pool, state, events.run_days,
                         g.input.entities.node_types())
    phase(f"ids assigned ({nodes.added:,} new nodes)")
    links = find_link_edges(entities.pool, nodes.nodes, known, nodes.total, g.relation_weights,
                            events.run_days)
    phase("link edges")

    # ---- writes: new run folders only; the manifest switches to them at the end
    entity_q_path = write_quarantine(events, entities, links, out_url, run_id)
    phase("quarantine written")
    write_edges(events, links, nodes, g, out_url, run_id)
    phase("edges written")
    node_paths = write_nodes(nodes, state.manifest, out_url, run_id)
    phase("nodes and id maps written")

    # ---- manifest, written last
    manifest = build_manifest(cfg, state.manifest, BuildStats(
        run_id=run_id, started=started, source=source, entity_urls=entities.urls,
        entity_stats=entities.stats, dangling=links.dangling_counts,
        entity_quarantine_path=entity_q_path, run_days=events.run_days,
        day_stats=events.day_stats, link_counts=links.counts, node_counts=nodes.counts,
        node_paths=node_paths))
    write_run_config(cfg, out_url, run_id)
    write_manifest(out_url, manifest)
    fs.remove(staging_url)
    removed = collect_garbage(out_url, manifest)
    for df in (links.edges, links.dangling, nodes.new_ids, nodes.nodes, entities.rows):
        df.unpersist()
    log(f"build-graph: run {run_id}: {len(manifest['days'])} day(s) in store, "
        f"{sum(manifest['node_counts'].values()):,} nodes, "
        f"{sum(manifest['edge_counts'].values()):,} edges, {manifest['rows_quarantined']:,} "
        f"rows quarantined, {removed} superseded folder(s) removed, "
        f"{time.time() - started:.1f}s -> {out_url}")
    return manifest


class _PhaseTimer:
    """Logs the seconds each phase of the job took."""

    def __init__(self, log):
        self.log, self.last = log, time.time()

    def __call__(self, what: str) -> None:
        now = time.time()
        self.log(f"build-graph:   {what} ({now - self.last:.1f}s)")
        self.last = now



def parse_days(day: list[str] | None, days: str | None) -> list[str] | None:
    """``--day D`` (repeatable) or ``--days A..B`` -> sorted day list, None for all days.

    Raises:
        ConfigError: a malformed day or range.
    """
    if day and days:
        raise ConfigError("give --day or --days, not both")
    if day:
        for d in day:
            try:
                dt.date.fromisoformat(d)
            except ValueError:
                raise ConfigError(f"--day {d!r} is not YYYY-MM-DD") from None
        return sorted(set(day))
    if days:
        if ".." not in days:
            raise ConfigError(f"--days {days!r}: expected FIRST..LAST, e.g. 2026-03-02..2026-03-08")
        first, last = days.split("..", 1)
        try:
            a, b = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
        except ValueError:
            raise ConfigError(f"--days {days!r}: days must be YYYY-MM-DD") from None
        if b < a:
            raise ConfigError(f"--days {days!r}: the last day is before the first")
        return [(a + dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]
    return None


def main(argv: list[str] | None = None) -> int:
    """``spark-submit spark_jobs/build_graph.py --config FILE [--day D | --days A..B]``."""
    import argparse

    from clickgraph.core.config import load_config
    from spark_jobs.session import get_spark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--day", action="append", help="YYYY-MM-DD to add or replace (repeatable)")
    parser.add_argument("--days", help="FIRST..LAST, both included")
    parser.add_argument("--logs", help="logs URL (default: paths.logs)")
    parser.add_argument("--out", help="graph store URL (default: paths.graph)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        days = parse_days(args.day, args.days)
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    spark = get_spark(cfg.spark, "build-graph")
    try:
        run(spark, cfg, days, args.logs, args.out)
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    except GraphBuildError as err:
        print(f"build-graph failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
