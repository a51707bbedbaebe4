"""The least any Spark job must do with the logs: the peer of the graph-build benchmark.

Reads the same event input as ``clickgraph build-graph`` (JSON lines, or the parquet
copy), parses every line against the same string schema, and writes it back as parquet
partitioned by log day: no validation, no duplicates, no ids, no joins. Its time bounds
what any build on this Spark and these cores can reach; ``bench_build_graph.py --peer``
runs it in the same run as the build, on the same input.

Usage::

    python benchmarks/spark_floor.py --events /tmp/cg-bench/10m/logs/events/json --out /tmp/x
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
    rows.write.partitionBy("dt").parquet(args.out)
    seconds = time.time() - started
    n = spark.read.parquet(args.out).count()
    print(json.dumps({"rows": n, "seconds": round(seconds, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
