"""The core peer of the graph-build benchmark does the work it claims, and only that:
duplicates dropped (first by time), users and targets numbered densely per type, one
edge table per event type (``benchmarks/spark_floor.py --core``)."""

from __future__ import annotations

import pytest

from benchmarks.spark_floor import FIELDS, core

pytestmark = pytest.mark.spark


def test_core_peer_dedups_numbers_and_writes_one_table_per_event_type(spark, tmp_path):
    def row(event_id, etype, ts, user, content=None, brand=None, dt="2026-03-02"):
        values = {"event_id": event_id, "event_type": etype, "ts_ms": ts, "user_id": user,
                  "content_id": content, "brand_id": brand}
        return (*(values.get(name) for name in FIELDS), dt)

    rows = spark.createDataFrame([
        row("e1", "impression", "1000", "u1", content="c1"),
        row("e1", "impression", "900", "u2", content="c2"),      # duplicate, earlier: kept
        row("e1", "impression", "950", "u3", content="c1", dt="2026-03-03"),  # other day
        row("e2", "click", "1100", "u1", content="c2"),
        row("e3", "brand_like", "1200", "u2", brand="c1"),        # a brand named like content
        row("e4", "view", "1300", None, content="c1"),            # no user: dropped
        row("e5", "view", "bad", "u1", content="c1"),             # no time: dropped
    ], ", ".join(f"{name} string" for name in (*FIELDS, "dt")))
    etypes = core(spark, rows, str(tmp_path))

    assert sorted(etypes) == ["brand_like", "click", "impression"]
    edges = {e: sorted((r.src, r.dst, r.ts, str(r.dt)) for r in spark.read.parquet(f"{tmp_path}/edges/{e}")
                       .select("src", "dst", "ts", "dt").collect()) for e in etypes}
    # users u1, u2, u3 -> 0, 1, 2; content c1, c2 -> 0, 1; brand c1 -> 0
    assert edges["impression"] == [(1, 1, 900, "2026-03-02"), (2, 0, 950, "2026-03-03")]
    assert edges["click"] == [(0, 1, 1100, "2026-03-02")]
    assert edges["brand_like"] == [(1, 0, 1200, "2026-03-02")]
