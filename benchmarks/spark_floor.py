"""The least any Spark job must do with the logs: the peer of the graph-build benchmark.

Reads the same event input as ``clickgraph build-graph`` (JSON lines, or the parquet
copy), parses every line against the same string schema, and writes it back as parquet
partitioned by log day: no validation, no duplicates, no ids, no joins. Its time bounds
what any build on this Spark and these cores can reach; ``bench_build_graph.py --peer``
runs it in the same run as the build, on the same input.

``--core`` adds the work no graph build can skip, and nothing else: drop rows without
an event id or user, drop duplicate ``(day, event_id)`` rows (first by time), number the
users and the event targets (content or brand) densely, and write one edge table per
event type (source id, target id, time) partitioned by day, from a staged parquet copy
of the deduplicated rows, as the job does. No checks, no quarantine, no entity tables,
no stable-id bookkeeping across runs, no manifest: a lower bound on the build's time on
this Spark and these cores that is closer than parse-and-rewrite.

Usage::

    python benchmarks/spark_floor.py --events /tmp/cg-bench/10m/logs/events/json --out /tmp/x
    python benchmarks/spark_floor.py --events /tmp/cg-bench/10m/logs/events/json --out /tmp/x --core
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

FIELDS = ("event_id", "event_type", "ts_ms", "user_id", "content_id", "brand_id", "position",
          "clicked", "dwell_ms", "session_id")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", required=True, help="events folder, dt=YYYY-MM-DD/ inside")
    parser.add_argument("--format", default="json", choices=["json", "parquet"])
    parser.add_argument("--out", required=True, help="output folder (replaced)")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="8g")
    parser.add_argument("--core", action="store_true",
                        help="also dedup, number the nodes and write one edge table per type")
    args = parser.parse_args()

    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    spark = (SparkSession.builder.master(args.master).appName("clickgraph-spark-floor")
             .config("spark.driver.memory", args.driver_memory)
             .config("spark.sql.shuffle.partitions", "8").config("spark.ui.enabled", "false")
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.sql.maxConcurrentOutputFileWriters", "64").getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    shutil.rmtree(args.out, ignore_errors=True)
    started = time.time()
    reader = spark.read.option("basePath", args.events)
    if args.format == "json":
        schema = T.StructType([T.StructField(n, T.StringType()) for n in FIELDS])
        rows = reader.text(args.events).select(F.from_json("value", schema).alias("j"), "dt") \
            .select("j.*", "dt")
    else:
        rows = reader.parquet(args.events)
    if not args.core:
        rows.write.partitionBy("dt").parquet(args.out)
        seconds = time.time() - started
        n = spark.read.parquet(args.out).count()
        print(json.dumps({"rows": n, "seconds": round(seconds, 1)}))
        return 0
    etypes = core(spark, rows, args.out)
    seconds = time.time() - started
    n = sum(spark.read.parquet(f"{args.out}/edges/{etype}").count() for etype in etypes)
    print(json.dumps({"rows": n, "seconds": round(seconds, 1), "core": True}))
    return 0


def core(spark, rows, out: str) -> list[str]:
    """Dedup, dense ids, one edge table per event type (see the module docstring);
    returns the event types written."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    first = Window.partitionBy("dt", "event_id").orderBy("ts", "user_id")
    staged = f"{out}/staged"
    rows.where(F.col("event_id").isNotNull() & F.col("user_id").isNotNull()) \
        .withColumn("ts", F.col("ts_ms").try_cast("long")).where(F.col("ts").isNotNull()) \
        .withColumn("target", F.coalesce("content_id", "brand_id")) \
        .withColumn("t", F.when(F.col("event_type") == "brand_like", "brand")
                    .otherwise("content")) \
        .withColumn("n", F.row_number().over(first)).where(F.col("n") == 1) \
        .select("dt", "event_type", "ts", "user_id", "t", "target") \
        .write.partitionBy("event_type").parquet(staged)
    events = spark.read.parquet(staged)
    numbered = Window.partitionBy("t").orderBy("raw")
    ids = events.select(F.lit("user").alias("t"), F.col("user_id").alias("raw")) \
        .union(events.select("t", F.col("target").alias("raw"))) \
        .where(F.col("raw").isNotNull()).distinct() \
        .withColumn("id", F.row_number().over(numbered) - 1).cache()
    users = F.broadcast(ids.where(F.col("t") == "user").select(
        F.col("raw").alias("user_id"), F.col("id").alias("src")))
    targets = F.broadcast(ids.where(F.col("t") != "user").select(
        "t", F.col("raw").alias("target"), F.col("id").alias("dst")))
    etypes = [r[0] for r in events.select("event_type").distinct().collect()]
    for etype in etypes:
        events.where(F.col("event_type") == etype).join(users, "user_id").join(targets, ["t", "target"]) \
            .select("src", "dst", "ts", "dt").write.partitionBy("dt") \
            .parquet(f"{out}/edges/{etype}")
    return etypes


if __name__ == "__main__":
    sys.exit(main())
