"""Spark schemas of every table in the graph store, defined once.

The graph store (``docs/graph-store.md``) holds, per node type, a node table and an id map,
per relation an edge table partitioned by ``day``, and the quarantine. Every writer
selects its columns through :func:`conform` and every test checks the written parquet
against these schemas, so a column cannot drift silently.

Conventions:

* node ids are dense int64 per node type, ``0 .. num_nodes - 1``;
* times are int64 milliseconds since the Unix epoch (UTC), ``ts_ms``; a node or link
  without a known time has time ``0`` ("always existed");
* ``day`` (``YYYY-MM-DD``, UTC) and ``run`` are partition folders, not file columns;
* ``nullable=False`` marks a column the job never leaves null. The nullability flag in
  the parquet footers may differ between runs (Spark keeps it from the query), so
  readers should rely on the names and types here, not on that flag.

Only names and types live here; the names come from :mod:`clickgraph.core.config`
(``GRAPH_NODE_ATTRIBUTES``, ``GRAPH_ENTITY_LINKS``) so that the configuration contract and
the storage contract cannot disagree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from clickgraph.core.config import (
    GRAPH_ENTITY_LINKS,
    GRAPH_NODE_ATTRIBUTES,
    GRAPH_NODE_TYPES,
    GraphInputConfig,
)

NODE_TYPES = GRAPH_NODE_TYPES
DAY_PARTITION = "day"
RUN_PARTITION = "run"


@dataclass(frozen=True)
class Relation:
    """One stored relation ``src_type --relation--> dst_type``.

    Attributes:
        name: table name, ``<src_type>__<relation>__<dst_type>``.
        src_type: source node type.
        relation: relation name; the key of ``graph.relation_weights``.
        dst_type: destination node type.
        source: where edges come from: an event type (``"event:click"``) or an entity
            table's link (``"link:content.brand"``).
        attributes: per-edge attribute columns besides src, dst, ts_ms and weight.
    """

    name: str
    src_type: str
    relation: str
    dst_type: str
    source: str
    attributes: tuple[T.StructField, ...] = ()

    @property
    def edge_type(self) -> tuple[str, str, str]:
        return (self.src_type, self.relation, self.dst_type)


def _relation(src: str, rel: str, dst: str, source: str,
              *attributes: T.StructField) -> Relation:
    return Relation(f"{src}__{rel}__{dst}", src, rel, dst, source, tuple(attributes))


# Event relations: one edge per kept event. Link relations: one edge per entity link.
EVENT_RELATIONS: dict[str, Relation] = {
    "impression": _relation("user", "impressed", "content", "event:impression",
                            T.StructField("clicked", T.BooleanType()),
                            T.StructField("position", T.IntegerType())),
    "click": _relation("user", "clicked", "content", "event:click"),
    "view": _relation("user", "viewed", "content", "event:view",
                      T.StructField("dwell_ms", T.LongType())),
    "brand_like": _relation("user", "likes", "brand", "event:brand_like"),
}
LABEL_CLICKS = dataclasses.replace(EVENT_RELATIONS["click"], source="label:impression.clicked")
"""The clicked relation derived from impression labels
(``graph.input.events.clicks_from_labels_after_s``)."""
LINK_RELATIONS: dict[tuple[str, str], Relation] = {
    (table, link): _relation(table, rel, dst, f"link:{table}.{link}")
    for table, links in GRAPH_ENTITY_LINKS.items() for link, (rel, dst) in links.items()
}
RELATIONS: dict[str, Relation] = {
    r.name: r for r in [*EVENT_RELATIONS.values(), *LINK_RELATIONS.values()]
}



def mapped_relations(inp: GraphInputConfig) -> dict[str, Relation]:
    """The relations a mapping (``graph.input``) gives: those of the event types it maps
    and of the links its entity tables carry. A platform without views or brands, say,
    has no ``user__viewed__content`` or ``content__of__brand``; the store lists only
    these relations (docs/graph-store.md)."""
    events = inp.events.mapped_event_types()
    tables = inp.entities.tables()
    chosen = [EVENT_RELATIONS[e] for e in events]
    if inp.events.clicks_from_labels_after_s is not None:
        chosen.append(LABEL_CLICKS)
    chosen += [
        rel for (table, link), rel in LINK_RELATIONS.items()
        if table in tables and link in tables[table].links]
    return {r.name: r for r in chosen}


EDGE_BASE_FIELDS = (
    T.StructField("src", T.LongType(), nullable=False),
    T.StructField("dst", T.LongType(), nullable=False),
    T.StructField("ts_ms", T.LongType(), nullable=False),
    T.StructField("weight", T.DoubleType(), nullable=False),
)


def edge_schema(relation: str) -> T.StructType:
    """File schema of one relation's edge table (``day`` is the partition folder)."""
    return T.StructType([*EDGE_BASE_FIELDS, *RELATIONS[relation].attributes])


NODE_BASE_FIELDS = (
    T.StructField("id", T.LongType(), nullable=False),
    T.StructField("raw_id", T.StringType(), nullable=False),
    T.StructField("first_day", T.StringType(), nullable=False),
    T.StructField("created_ts_ms", T.LongType(), nullable=False),
)


def node_schema(node_type: str) -> T.StructType:
    """Node table: dense id, raw id, day it entered the store, creation time, attributes.

    ``created_ts_ms`` is 0 for an entity without a creation time. Attributes are static
    strings from the entity table (null where the table has no such column).
    """
    attrs = [T.StructField(a, T.StringType()) for a in GRAPH_NODE_ATTRIBUTES[node_type]]
    return T.StructType([*NODE_BASE_FIELDS, *attrs])


ID_MAP_SCHEMA = T.StructType([
    T.StructField("raw_id", T.StringType(), nullable=False),
    T.StructField("id", T.LongType(), nullable=False),
    T.StructField("first_day", T.StringType(), nullable=False),
])

# Quarantined event rows; partitioned by day, run and reason. ``raw`` is the input line
# (JSON) or the row as JSON (parquet) for row-level reasons, and the parsed fields
# re-serialised under the graph's field names for ``duplicate`` and ``unknown_entity``.
QUARANTINE_EVENTS_SCHEMA = T.StructType([
    T.StructField("event_id", T.StringType()),
    T.StructField("raw", T.StringType()),
])

# Quarantined entity rows (kind "row") and links to unknown entities (kind "link").
QUARANTINE_ENTITIES_SCHEMA = T.StructType([
    T.StructField("table", T.StringType(), nullable=False),
    T.StructField("kind", T.StringType(), nullable=False),
    T.StructField("reason", T.StringType(), nullable=False),
    T.StructField("entity_id", T.StringType()),
    T.StructField("raw", T.StringType()),
])


def conform(df: DataFrame, schema: T.StructType, *extra: str) -> DataFrame:
    """Select ``schema``'s columns in order, cast to its types, then the ``extra`` columns.

    Raises:
        ValueError: a non-nullable column of ``schema`` is missing from ``df``.
    """
    cols = []
    for f in schema.fields:
        if f.name in df.columns:
            cols.append(F.col(f.name).cast(f.dataType).alias(f.name))
        elif f.nullable:
            cols.append(F.lit(None).cast(f.dataType).alias(f.name))
        else:
            raise ValueError(f"column {f.name!r} is required by the schema but missing")
    return df.select(*cols, *extra)
