"""The quarantine written: event rows with a reason (``quarantine/events``, per day and
reason) and entity rows with a reason or links to unknown entities
(``quarantine/entities``), each in a new run folder."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from clickgraph.core import fs
from spark_jobs.graph_build.common import ENTITY_FOLDERS, QUARANTINED, UNDATED
from spark_jobs.graph_build.edges import LinkEdges
from spark_jobs.graph_build.entities import CheckedEntities
from spark_jobs.graph_build.parse import CheckedEvents
from spark_jobs.schemas import (
    QUARANTINE_ENTITIES_SCHEMA,
    conform,
)


def event_quarantine(events: DataFrame, run_id: str) -> DataFrame:
    """Quarantined rows of the staged events: ``event_id, raw, day, reason, run``
    (``day``: :data:`~.common.UNDATED` for rows without one)."""
    return events.where(F.col("slice") == QUARANTINED).select(
        "event_id", "raw", F.coalesce("day", F.lit(UNDATED)).alias("day"), "reason",
        F.lit(run_id).alias("run"))


def entity_quarantine(entities: DataFrame, dangling: DataFrame) -> DataFrame:
    """Entity rows with a reason, then links to unknown entities, in the columns of
    QUARANTINE_ENTITIES_SCHEMA (``table`` is the entity folder name)."""
    table_name = F.create_map(*[F.lit(x) for kv in ENTITY_FOLDERS.items() for x in kv])
    return entities.where(F.col("reason").isNotNull()).select(
        F.element_at(table_name, F.col("t")).alias("table"), F.lit("row").alias("kind"),
        "reason", F.col("raw_id").alias("entity_id"), "raw").unionByName(dangling)


def write_quarantine(events: CheckedEvents, entities: CheckedEntities, links: LinkEdges,
                     out_url: str, run_id: str) -> str | None:
    """Write the quarantined rows of this run.

    Returns:
        The folder of the quarantined entity rows relative to the store, None if none.
    """
    if events.rows_quarantined:
        event_quarantine(events.rows, run_id).write.mode("append") \
            .partitionBy("day", "run", "reason") \
            .parquet(fs.spark_url(fs.join(out_url, "quarantine", "events")))
    n_entity_q = entities.rows_quarantined + sum(links.dangling_counts.values())
    entity_q_path = f"quarantine/entities/run={run_id}"
    if not n_entity_q:
        return None
    conform(entity_quarantine(entities.rows, links.dangling), QUARANTINE_ENTITIES_SCHEMA) \
        .coalesce(1).write.parquet(fs.spark_url(fs.join(out_url, entity_q_path)))
    return entity_q_path
