"""Partition quality, time and memory: METIS vs hashing, direct vs coarsened METIS.

Builds a synthetic user-item graph with planted communities
(:func:`partitioning.synthetic.planted_community_graph`: 60 % users, items with
Pareto popularity, ``--intra`` of each user's edges inside its community,
vertex weights = (training events, incident edges)), then partitions it with

* ``random``: :class:`RandomPartitioner` (hash of the global id), the baseline;
* ``metis``: :class:`MetisPartitioner` on the whole graph;
* ``coarsened_metis``: :class:`CoarsenedMetisPartitioner` with
  ``--edge-budget`` (default a tenth of the edges), i.e. label propagation
  coarsening, METIS on the coarse graph, projection and refinement.

Each partitioner runs in a forked child process, so that its peak resident
memory is measured from the child's own start (``peak_rss_delta_bytes``:
peak RSS minus RSS at the call, C allocations of METIS included; see
:mod:`partitioning.memory`). The quality report of every book (edge cut,
remote share of sampled 1- and 2-hop lookups from training-event seeds,
balance) is computed in the parent with the same random generator seed.

With ``--job`` the same graph also goes through the partition job's own two
paths (``spark_jobs.partition``: :func:`prepare_partition_graph` then
:func:`partition_books`, quality reports of the METIS and random books
included), each in a fresh spawned process with its own local Spark, reading
the pairs from parquet:

* ``direct``: ``edge_budget`` above the pair count, so the driver collects the
  adjacency, builds the CSR, runs METIS, and measures in memory;
* ``spark_coarsened``: ``--edge-budget``, so Spark coarsens, METIS gets the
  coarse graph, and refinement and the quality report run in Spark
  (:mod:`partitioning.spark_graph`).

For each it reports the *driver's* peak RSS over that step, minus its RSS
before it (Spark started, pairs cached in Spark, pandas/Arrow conversions
loaded by a warm-up; nested partitioner monitors accounted for, see
:mod:`partitioning.memory`), per undirected edge and per node. That is the
Python driver process: in ``local`` mode the JVM is driver and executors at
once, so its memory is not the driver's and is not counted. The quality
report's sampled lookups cost the driver O(seeds x fanouts) on both paths
(about 33 MiB for 10,000 seeds and fanouts (10, 5)); ``--num-seeds`` lowers
that fixed part so the per-edge part shows on a small graph.

The machine's load average is recorded before and after: timings from a
shared machine are only comparable within one run.

Usage::

    python benchmarks/bench_partition.py --json
    python benchmarks/bench_partition.py --large          # 1M nodes / 10M edges
    python benchmarks/bench_partition.py --num-nodes 50000 --num-edges 500000 --parts 4
    python benchmarks/bench_partition.py --num-nodes 20000 --num-edges 200000 --parts 4 \
        --num-seeds 1000 --job
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from partitioning import (
    CoarsenedMetisPartitioner,
    MetisPartitioner,
    Partitioner,
    PartitionGraph,
    PartitionResult,
    RandomPartitioner,
    quality_report,
)
from partitioning.synthetic import NODE_TYPES, planted_community_graph


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-nodes", type=int, default=200_000)
    parser.add_argument(
        "--num-edges", type=int, default=2_000_000, help="edges drawn before merging duplicates"
    )
    parser.add_argument("--communities", type=int, default=64)
    parser.add_argument(
        "--intra", type=float, default=0.9, help="share of a user's edges inside its community"
    )
    parser.add_argument("--parts", type=int, default=8)
    parser.add_argument(
        "--edge-budget", type=int, default=None, help="coarsened METIS budget (default edges/10)"
    )
    parser.add_argument("--ufactor", type=int, default=30)
    parser.add_argument("--fanouts", type=int, nargs="+", default=[10, 5])
    parser.add_argument("--num-seeds", type=int, default=10_000, help="training events sampled for lookups")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--large", action="store_true", help="1M nodes / 10M edges / 256 communities")
    parser.add_argument("--no-fork", action="store_true", help="run partitioners in this process")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--job",
        action="store_true",
        help="also run the Spark job's direct and coarsened paths (driver memory)",
    )
    parser.add_argument("--spark-master", default="local[2]", help="Spark master of the --job runs")
    args = parser.parse_args(argv)
    if args.large:
        args.num_nodes, args.num_edges, args.communities = 1_000_000, 10_000_000, 256
    return args


def _run_in_child(partitioner: Partitioner, graph: PartitionGraph, num_parts: int, conn) -> None:
    try:
        result = partitioner.partition(graph, num_parts)
        conn.send(("ok", result))
    except BaseException as error:  # report anything to the parent, which raises
        conn.send(("error", repr(error)))
    finally:
        conn.close()


def run_partitioner(
    partitioner: Partitioner, graph: PartitionGraph, num_parts: int, fork: bool
) -> PartitionResult:
    """Runs one partitioner, in a forked child when ``fork`` (clean peak-memory baseline)."""
    if not fork:
        return partitioner.partition(graph, num_parts)
    return _call_in_child("fork", _run_in_child, (partitioner, graph, num_parts),
                          f"{partitioner.algorithm} in the child process")


def _call_in_child(method: str, target, args: tuple, what: str):
    """Run ``target(*args, conn)`` in a child process (``fork`` or ``spawn``); returns what
    it sends as ``("ok", payload)``, raises on ``("error", message)``."""
    context = multiprocessing.get_context(method)
    parent_end, child_end = context.Pipe(duplex=False)
    process = context.Process(target=target, args=(*args, child_end))
    process.start()
    child_end.close()
    status, payload = parent_end.recv()
    process.join()
    if status != "ok":
        raise RuntimeError(f"{what} failed: {payload}")
    return payload


def _job_config(args: argparse.Namespace, edge_budget: int):
    from clickgraph.core.config import load_config

    fanouts = ", ".join(str(f) for f in args.fanouts)
    return load_config(
        None,
        [
            f"spark.master={args.spark_master}",
            "spark.shuffle_partitions=4",
            f"partition.num_parts={args.parts}",
            f"partition.edge_budget={edge_budget}",
            f"partition.imbalance={args.ufactor / 1000}",
            f"partition.seed={args.seed}",
            f"partition.quality_seeds={args.num_seeds}",
            f"partition.quality_fanouts=[{fanouts}]",
        ],
    )


def _job_child(args: argparse.Namespace, folder: str, edge_budget: int, conn) -> None:
    """One path of the partition job on the pairs under ``folder``, in a fresh process."""
    try:
        from partitioning.memory import PeakRssMonitor
        from partitioning.spark_graph import collect_frame
        from spark_jobs import partition
        from spark_jobs.session import get_spark

        cfg = _job_config(args, edge_budget)
        spark = get_spark(cfg.spark, "bench_partition")
        adjacency = spark.read.parquet(os.path.join(folder, "pairs")).cache()
        adjacency.count()
        vertex_weights = np.load(os.path.join(folder, "vertex_weights.npy"))
        node_type = np.load(os.path.join(folder, "node_type.npy"))
        # Load what both paths use once (pandas and Arrow conversions, a pandas UDF), so
        # the figure is what the step needs, not the libraries' first import.
        collect_frame(spark.range(10))
        spark.range(10).toPandas()
        spark.range(10).mapInPandas(lambda batches: batches, "id long").count()
        with PeakRssMonitor() as monitor:
            start = time.perf_counter()
            g = partition.prepare_partition_graph(cfg, adjacency, vertex_weights, node_type, list(NODE_TYPES))
            books = partition.partition_books(cfg, g)
            partition.release_partition_graph(g)
            wall_s = time.perf_counter() - start
        metis = books["quality"]["metis"]
        conn.send(
            (
                "ok",
                {
                    "method": books["method"],
                    "edge_budget": edge_budget,
                    "wall_s": wall_s,
                    "driver_peak_rss_delta_bytes": monitor.peak_delta_bytes,
                    "driver_peak_rss_bytes": monitor.peak_rss_bytes,
                    "driver_start_rss_bytes": monitor.start_rss_bytes,
                    "memory_probe": monitor.probe,
                    "arrow_enabled": spark.conf.get("spark.sql.execution.arrow.pyspark.enabled", "false"),
                    "edge_cut_fraction": metis["edge_cut_fraction"],
                    "remote_fraction_1hop": metis["remote_fraction_1hop"],
                    "remote_fraction_2hop": metis["remote_fraction_2hop"],
                    "balance_training_events": metis["balance"]["training_events"],
                    "balance_edges": metis["balance"]["edges"],
                    "random_remote_fraction_1hop": books["quality"]["random"]["remote_fraction_1hop"],
                },
            )
        )
        spark.stop()
    except BaseException as error:  # report anything to the parent, which raises
        conn.send(("error", repr(error)))
    finally:
        conn.close()


def run_job_paths(args: argparse.Namespace, graph: PartitionGraph, edge_budget: int) -> dict[str, Any]:
    """The job's direct and Spark-coarsened paths on ``graph``; driver peak memory of each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src, dst, weight = graph.edge_list()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_partition-") as folder:
        os.makedirs(os.path.join(folder, "pairs"))
        pq.write_table(
            pa.table({"src": src, "dst": dst, "weight": weight}),
            os.path.join(folder, "pairs", "part-0.parquet"),
        )
        np.save(os.path.join(folder, "vertex_weights.npy"), graph.vertex_weights)
        np.save(os.path.join(folder, "node_type.npy"), graph.node_type)
        for budget in (graph.num_edges, edge_budget):
            payload = _call_in_child("spawn", _job_child, (args, folder, budget),
                                     f"the job path with edge budget {budget}")
            payload["driver_peak_rss_delta_bytes_per_edge"] = payload["driver_peak_rss_delta_bytes"] / max(
                graph.num_edges, 1
            )
            payload["driver_peak_rss_delta_bytes_per_node"] = payload["driver_peak_rss_delta_bytes"] / max(
                graph.num_nodes, 1
            )
            results[payload["method"]] = payload
    direct, coarse = results["direct"], results["spark_coarsened"]
    results["comparison"] = {
        "driver_peak_coarsened_over_direct": coarse["driver_peak_rss_delta_bytes"]
        / max(direct["driver_peak_rss_delta_bytes"], 1),
        "wall_coarsened_over_direct": coarse["wall_s"] / direct["wall_s"],
        "edge_cut_coarsened_over_direct": coarse["edge_cut_fraction"]["unweighted"]
        / direct["edge_cut_fraction"]["unweighted"],
        "remote_1hop_coarsened_over_direct": coarse["remote_fraction_1hop"] / direct["remote_fraction_1hop"],
    }
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark and returns every figure as a JSON-serialisable dict."""
    load_before = os.getloadavg()
    start = time.perf_counter()
    planted = planted_community_graph(
        args.num_nodes,
        args.num_edges,
        args.communities,
        np.random.default_rng(args.seed),
        intra_fraction=args.intra,
    )
    graph = planted.graph
    generate_s = time.perf_counter() - start
    edge_budget = args.edge_budget if args.edge_budget is not None else graph.num_edges // 10
    partitioners: list[Partitioner] = [
        RandomPartitioner(seed=args.seed),
        MetisPartitioner(ufactor=args.ufactor, seed=args.seed),
        CoarsenedMetisPartitioner(edge_budget=edge_budget, ufactor=args.ufactor, seed=args.seed),
    ]
    reports: dict[str, Any] = {}
    for partitioner in partitioners:
        result = run_partitioner(partitioner, graph, args.parts, fork=not args.no_fork)
        report = quality_report(
            graph,
            result,
            planted.events_per_node,
            np.random.default_rng(args.seed),
            fanouts=args.fanouts,
            num_seeds=args.num_seeds,
            type_names=NODE_TYPES,
        )
        report["peak_rss_delta_bytes_per_edge"] = result.peak_rss_delta_bytes / max(graph.num_edges, 1)
        report["memory_probe"] = result.memory_probe
        report["info"] = {key: value for key, value in result.info.items() if key != "max_imbalance"}
        report["max_imbalance_per_constraint"] = result.info.get("max_imbalance")
        reports[result.algorithm] = report

    metis, random, coarse = reports["metis"], reports["random"], reports["coarsened_metis"]
    job = run_job_paths(args, graph, edge_budget) if args.job else None
    return {
        "benchmark": "bench_partition",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "versions": {"numpy": np.__version__, "pymetis": _pymetis_version()},
        "graph": {
            "num_nodes": graph.num_nodes,
            "num_edges": graph.num_edges,
            "communities": args.communities,
            "intra_fraction": args.intra,
            "training_events": int(planted.events_per_node.sum()),
            "generate_s": generate_s,
        },
        "params": {
            "num_parts": args.parts,
            "edge_budget": edge_budget,
            "ufactor": args.ufactor,
            "fanouts": list(args.fanouts),
            "num_seeds": args.num_seeds,
            "seed": args.seed,
            "forked": not args.no_fork,
        },
        "results": reports,
        "comparison": {
            "remote_1hop_metis_over_random": metis["remote_fraction_1hop"] / random["remote_fraction_1hop"],
            "remote_2hop_metis_over_random": metis["remote_fraction_2hop"] / random["remote_fraction_2hop"],
            "edge_cut_coarsened_over_direct": coarse["edge_cut_fraction"]["unweighted"]
            / metis["edge_cut_fraction"]["unweighted"],
            "wall_coarsened_over_direct": coarse["wall_s"] / metis["wall_s"],
            "peak_rss_delta_coarsened_over_direct": coarse["peak_rss_delta_bytes"]
            / max(metis["peak_rss_delta_bytes"], 1),
        },
        "job": job,
    }


def _pymetis_version() -> str:
    from importlib import metadata

    return metadata.version("pymetis")


def format_table(summary: dict[str, Any]) -> str:
    """A human-readable table of the main figures."""
    graph, params = summary["graph"], summary["params"]
    lines = [
        f"graph: {graph['num_nodes']:,} nodes, {graph['num_edges']:,} edges, "
        f"{graph['communities']} communities, {params['num_parts']} parts, "
        f"edge budget {params['edge_budget']:,}",
        f"load average before/after: {summary['machine']['load_average_before']} / "
        f"{summary['machine']['load_average_after']} on {summary['machine']['cpus']} CPUs",
        f"{'algorithm':<16}{'cut':>8}{'cut(w)':>8}{'remote1':>9}{'remote2':>9}{'wall s':>9}"
        f"{'peak MiB':>10}{'B/edge':>8}{'bal ev':>8}{'bal edges':>10}",
    ]
    for name, report in summary["results"].items():
        lines.append(
            f"{name:<16}{report['edge_cut_fraction']['unweighted']:>8.4f}"
            f"{report['edge_cut_fraction']['weighted']:>8.4f}"
            f"{report['remote_fraction_1hop']:>9.4f}{report['remote_fraction_2hop']:>9.4f}"
            f"{report['wall_s']:>9.2f}{report['peak_rss_delta_bytes'] / 2**20:>10.1f}"
            f"{report['peak_rss_delta_bytes_per_edge']:>8.1f}"
            f"{report['balance']['training_events']:>8.3f}{report['balance']['edges']:>10.3f}"
        )
    lines.append("comparison: " + ", ".join(f"{k}={v:.3f}" for k, v in summary["comparison"].items()))
    job = summary.get("job")
    if job:
        lines.append(
            f"job paths (driver process){'':<4}{'cut':>8}{'remote1':>9}{'remote2':>9}{'wall s':>9}"
            f"{'drv MiB':>9}{'B/edge':>8}{'B/node':>8}{'bal ev':>8}"
        )
        for name in ("direct", "spark_coarsened"):
            report = job[name]
            lines.append(
                f"{name:<30}{report['edge_cut_fraction']['unweighted']:>8.4f}"
                f"{report['remote_fraction_1hop']:>9.4f}{report['remote_fraction_2hop']:>9.4f}"
                f"{report['wall_s']:>9.2f}{report['driver_peak_rss_delta_bytes'] / 2**20:>9.1f}"
                f"{report['driver_peak_rss_delta_bytes_per_edge']:>8.1f}"
                f"{report['driver_peak_rss_delta_bytes_per_node']:>8.1f}"
                f"{report['balance_training_events']:>8.3f}"
            )
        lines.append("job comparison: " + ", ".join(f"{k}={v:.3f}" for k, v in job["comparison"].items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    summary = run(args)
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
