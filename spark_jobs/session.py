"""One way to get a SparkSession, for ``clickgraph`` subcommands and ``spark-submit``."""

from __future__ import annotations

import os
import sys

from clickgraph.core.config import SparkConfig


def get_spark(cfg: SparkConfig, app_suffix: str = ""):
    """Return a SparkSession configured from ``cfg``.

    Under ``spark-submit`` (a JVM gateway already exists) the submitter's master and
    resources win; ``cfg.master`` applies only when we start Spark ourselves. Locally the
    driver binds to ``cfg.bind_address`` (loopback by default) and the web UI is off unless
    ``ui_enabled``.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(f"{cfg.app_name}{'-' + app_suffix if app_suffix else ''}")
    launched_by_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    if not launched_by_submit:
        os.environ.setdefault("SPARK_LOCAL_IP", cfg.bind_address)
        builder = (
            builder.master(cfg.master)
            .config("spark.driver.memory", cfg.driver_memory)
            .config("spark.driver.bindAddress", cfg.bind_address)
            .config("spark.driver.host", cfg.bind_address)
        )
    builder = (
        builder.config("spark.ui.enabled", str(cfg.ui_enabled).lower())
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
        # day-partitioned writes keep one open file per day instead of sorting every row
        .config("spark.sql.maxConcurrentOutputFileWriters", "64")
    )
    if cfg.ui_enabled and not launched_by_submit:
        builder = builder.config("spark.ui.host", cfg.bind_address)
    for key, value in cfg.extra_conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
