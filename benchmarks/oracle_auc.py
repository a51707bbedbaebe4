"""The ceiling of click prediction on the synthetic data: the generator's own p_click.

Regenerates the impressions of a config with their true click probability (the generator
is deterministic: the same seed gives the same impressions and labels as the logs the
graph was built from) and reports the ROC-AUC of ``p_click`` on the test window (the last
``train.test_days`` days), overall and per day. ``clickgraph evaluate`` figures are read
against it: no model can beat the truth, so a gap between two models can never exceed
the room the ceiling leaves. ``auc_truth_no_pair`` is the same probability without its
user x content terms (taste, favourite brand, brand style, video affinity): the part of the
ceiling that needs no pair signal, so the gap between the two is the headroom a graph of
who-likes-what can reach.

Usage::

    python benchmarks/oracle_auc.py                       # the default dataset
    python benchmarks/oracle_auc.py --set generate.num_users=2000 --json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from clickgraph.core.config import load_config


def oracle_aucs(cfg) -> dict:
    """ROC-AUC of the generator's true click probability on the test window, with and
    without its user x content terms, overall and per day."""
    from pyspark.sql import functions as F
    from sklearn.metrics import roc_auc_score

    from spark_jobs import generate_logs
    from spark_jobs.session import get_spark

    g, t = cfg.generate, cfg.train
    spark = get_spark(cfg.spark, "oracle")
    try:
        model = generate_logs.LatentModel(g)
        first_test_day = g.num_days - t.test_days
        rows = (generate_logs.impressions_df(spark, model, with_truth=True)
                .where(F.col("day") >= first_test_day)
                .select("day", F.col("clicked").cast("int").alias("y"), "p_click",
                        "p_click_no_pair").toPandas())
    finally:
        spark.stop()
    return {"auc_truth": float(roc_auc_score(rows.y, rows.p_click)),
            "auc_truth_no_pair": float(roc_auc_score(rows.y, rows.p_click_no_pair)),
            "events": len(rows), "click_rate": float(rows.y.mean()),
            "per_day": {int(d): float(roc_auc_score(part.y, part.p_click))
                        for d, part in rows.groupby("day")},
            "test_days": t.test_days, "num_users": g.num_users, "num_days": g.num_days}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = oracle_aucs(load_config(args.config, args.overrides))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"true p_click ROC-AUC on the last {result['test_days']} days: "
              f"{result['auc_truth']:.4f}, without its user x content terms "
              f"{result['auc_truth_no_pair']:.4f} ({result['events']:,} impressions, "
              f"click rate {result['click_rate']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
