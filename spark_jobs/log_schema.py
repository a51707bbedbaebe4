"""The homepage log contract: the tables ``clickgraph generate`` writes and
``build-graph`` reads (documented for humans in ``docs/log-schema.md``).

One ``StructType`` per table, defined here once. Timestamps in events are ``ts_ms``,
milliseconds since the Unix epoch (UTC); entity times are Spark timestamps (UTC).
Users bringing their own logs map their columns onto these names in config.
"""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

EVENT_TYPES = ("impression", "click", "view", "brand_like")

EVENTS = StructType([
    StructField("event_id", StringType(), False),
    StructField("event_type", StringType(), False),
    StructField("ts_ms", LongType(), False),
    StructField("user_id", StringType(), False),
    StructField("content_id", StringType(), True),   # impression, click, view
    StructField("brand_id", StringType(), True),     # brand_like
    StructField("position", IntegerType(), True),    # impression, click: 0 = top of feed
    StructField("clicked", BooleanType(), True),     # impression
    StructField("dwell_ms", LongType(), True),       # view
    StructField("session_id", StringType(), True),
])

USERS = StructType([
    StructField("user_id", StringType(), False),
    StructField("country", StringType(), True),
    StructField("language", StringType(), True),
    StructField("device", StringType(), True),
    StructField("age_band", StringType(), True),
    StructField("gender", StringType(), True),
    StructField("signup_time", TimestampType(), True),
])

CONTENT = StructType([
    StructField("content_id", StringType(), False),
    StructField("content_type", StringType(), True),
    StructField("created_time", TimestampType(), True),
    StructField("brand_ids", ArrayType(StringType()), True),
    StructField("article_ids", ArrayType(StringType()), True),
    StructField("category_id", StringType(), True),
])

ARTICLES = StructType([
    StructField("article_id", StringType(), False),
    StructField("brand_id", StringType(), True),
    StructField("category_id", StringType(), True),
    StructField("price_band", StringType(), True),
])

BRANDS = StructType([
    StructField("brand_id", StringType(), False),
    StructField("name", StringType(), True),
    StructField("tier", StringType(), True),
])

CATEGORIES = StructType([
    StructField("category_id", StringType(), False),
    StructField("group", StringType(), True),
])

ENTITY_TABLES = {"users": USERS, "content": CONTENT, "articles": ARTICLES,
                 "brands": BRANDS, "categories": CATEGORIES}
