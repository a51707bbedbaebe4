"""Shared fixtures: one local SparkSession per test session, tiny configs."""

from __future__ import annotations

import os
import sys

import pytest

from clickgraph.core.config import load_config

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# Spark's Python workers must use this interpreter (pandas, numpy of the venv)
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def spark():
    """``local[2]`` Spark with few shuffle partitions, UI off, bound to loopback."""
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("clickgraph-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.driver.memory", "3g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def tiny_overrides(root) -> list[str]:
    """A dataset of a few thousand events, written under ``root``."""
    return [
        f"paths.root={root}",
        f"paths.logs={root}/logs",
        f"paths.graph={root}/graph",
        f"paths.partitions={root}/partitions",
        f"paths.train={root}/train",
        f"paths.eval={root}/eval",
        f"paths.embeddings={root}/embeddings",
        f"paths.report={root}/report",
        "generate.num_users=300",
        "generate.num_content=120",
        "generate.num_articles=240",
        "generate.num_brands=24",
        "generate.num_categories=6",
        "generate.num_days=3",
        "generate.num_output_files=2",
    ]


@pytest.fixture
def tiny_cfg(tmp_path):
    """Config for a tiny dataset under ``tmp_path``."""
    return load_config(None, tiny_overrides(tmp_path))


TINY_TRAIN = [
    "generate.num_days=6", "train.val_days=2", "train.test_days=2", "train.epochs=1",
    "train.batch_size=128", "train.max_train_events=2000", "train.max_eval_events=1000",
    "train.fanouts=[4, 2]", "train.relation_fanouts={}", "train.model.hidden_dim=16",
    "train.model.time_dim=8", "evaluate.gbdt_max_iter=20", "evaluate.recommend_users=40",
    "evaluate.top_k=5",
]


@pytest.fixture(scope="session")
def trained_run(spark, tmp_path_factory):
    """A tiny store of 6 days (the 6th generated but not built) with a single-process model
    trained on it: ``(cfg, days)``. Tests must not modify it; copy it first."""
    from spark_jobs import build_graph, generate_logs
    from trainer.local import train_single

    root = tmp_path_factory.mktemp("trained")
    cfg = load_config(None, tiny_overrides(root) + TINY_TRAIN)
    logs = generate_logs.run(spark, cfg, log=lambda *_: None)
    build_graph.run(spark, cfg, days=logs["days"][:5], log=lambda *_: None)
    train_single(cfg, log=lambda *_: None)
    return cfg, logs["days"]


class FakeSparkSession:
    """Stands in for the SparkSession of a pipeline whose Spark stages are faked: it runs no
    Spark stage (its status tracker is idle) and records that it was stopped."""

    stopped = False

    class sparkContext:  # noqa: N801 - SparkSession's attribute name
        class _Idle:
            def getActiveStageIds(self):  # noqa: N802 - pyspark's name
                return []

        @staticmethod
        def statusTracker():  # noqa: N802 - pyspark's name
            return FakeSparkSession.sparkContext._Idle()

    def stop(self):
        type(self).stopped = True
