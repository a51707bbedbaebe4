"""METIS-partition the graph store into one shard per training worker.

Run as ``clickgraph partition --num-parts K`` or
``spark-submit spark_jobs/partition.py --config FILE --num-parts K``.

1. Spark aggregates every relation's multi-edges into one weighted undirected adjacency
   over a global id space (node types laid end to end in ``GRAPH_NODE_TYPES`` order),
   with the store's per-edge weights (relation weights from config) summed per pair.
   Vertex weights balance two things: training events (impressions, counted at their
   user) and incident edges.
2. At or under ``partition.edge_budget`` pairs the adjacency is collected (Arrow) and
   partitioned by METIS directly; above it Spark coarsens it first (label propagation,
   ``partitioning.spark_coarsen``) until it fits, METIS partitions the coarse graph and
   Spark projects the book back. Random (hash) partitioning of the same graph is
   computed in the same run, and both get the same quality report.
3. Spark writes each relation's in-edge CSR per part (forward relations keyed by their
   destination, ``rev_`` relations by their source), one pandas group per part; the
   driver writes the partition book, owned ids and features, then each part's manifest,
   then the shard set's ``_MANIFEST.json`` last. Shard layout: ``trainer/shard.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from typing import Any

import numpy as np

from clickgraph import __version__, fs
from clickgraph.config import GRAPH_NODE_TYPES, Config
from clickgraph.manifest import new_manifest, write_manifest

PARTITIONS_KIND = "partitions"
PARTITIONS_FORMAT_VERSION = 1
IMPRESSIONS = "user__impressed__content"


def node_offsets(num_nodes: dict[str, int]) -> dict[str, int]:
    """Start of each node type in the global id space (types in GRAPH_NODE_TYPES order)."""
    offsets, total = {}, 0
    for node_type in GRAPH_NODE_TYPES:
        if node_type in num_nodes:
            offsets[node_type] = total
            total += num_nodes[node_type]
    return offsets


def global_edges(spark, store, offsets: dict[str, int]):
    """Every stored edge as ``(src, dst, weight)`` in global ids (self loops dropped)."""
    from pyspark.sql import functions as F

    parts = []
    for name, info in store.relations.items():
        edges = store.read_edges(spark, name)
        parts.append(edges.select(
            (F.col("src") + F.lit(offsets[info.src_type])).alias("src"),
            (F.col("dst") + F.lit(offsets[info.dst_type])).alias("dst"),
            F.col("weight").cast("double").alias("weight")))
    out = parts[0]
    for df in parts[1:]:
        out = out.unionByName(df)
    return out.where(F.col("src") != F.col("dst"))


def weighted_adjacency(edges):
    """Undirected pairs ``src < dst`` with summed weights (the multi-edges aggregated)."""
    from pyspark.sql import functions as F

    return (edges.select(F.least("src", "dst").alias("src"), F.greatest("src", "dst").alias("dst"),
                         "weight")
            .groupBy("src", "dst").agg(F.sum("weight").alias("weight")))


def vertex_weights(spark, store, edges, offsets: dict[str, int], num_total: int) -> np.ndarray:
    """``[N, 2]``: training events counted at their user's node, and incident edges."""
    from pyspark.sql import functions as F

    weights = np.zeros((num_total, 2), dtype=np.float64)
    events = (store.read_edges(spark, IMPRESSIONS).groupBy("src").count()
              .select((F.col("src") + F.lit(offsets["user"])).alias("node"), "count").toPandas())
    weights[events["node"].to_numpy(), 0] = events["count"].to_numpy()
    degree = (edges.select(F.explode(F.array("src", "dst")).alias("node")).groupBy("node").count()
              .toPandas())
    weights[degree["node"].to_numpy(), 1] = degree["count"].to_numpy()
    return weights


def _collect_pairs(adjacency) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = adjacency.toPandas()
    return (table["src"].to_numpy(np.int64), table["dst"].to_numpy(np.int64),
            table["weight"].to_numpy(np.float64))


def load_partition_graph(spark, cfg: Config, store) -> dict[str, Any]:
    """The store as one weighted undirected :class:`PartitionGraph` (plus what goes with it)."""
    from partitioning.graph import PartitionGraph

    num_nodes = {t: store.num_nodes(t) for t in store.node_types}
    offsets = node_offsets(num_nodes)
    total = sum(num_nodes.values())
    type_names = [t for t in GRAPH_NODE_TYPES if t in num_nodes]
    node_type = np.zeros(total, dtype=np.int16)
    for index, t in enumerate(type_names):
        node_type[offsets[t]:offsets[t] + num_nodes[t]] = index
    edges = global_edges(spark, store, offsets).cache()
    adjacency = weighted_adjacency(edges).cache()
    num_pairs = adjacency.count()
    vweights = vertex_weights(spark, store, edges, offsets, total)
    seed_users = (store.read_edges(spark, IMPRESSIONS).select("src").toPandas()["src"]
                  .to_numpy(np.int64) + offsets["user"])
    coarse_book = None
    if num_pairs > cfg.partition.edge_budget:
        coarse_book = _coarsened_metis(spark, adjacency, vweights, cfg.partition)
    src, dst, weight = _collect_pairs(adjacency)
    edges.unpersist()
    adjacency.unpersist()
    graph = PartitionGraph.from_coo(total, src, dst, weight, node_type=node_type,
                                    vertex_weights=vweights)
    return {"graph": graph, "num_nodes": num_nodes, "offsets": offsets, "type_names": type_names,
            "seed_users": seed_users, "num_pairs": num_pairs, "coarse_book": coarse_book}


def _report(cfg: Config, g: dict[str, Any], result) -> dict[str, Any]:
    from partitioning import quality as q

    p = cfg.partition
    return q.quality_report(g["graph"], result, g["seed_users"], np.random.default_rng(p.seed),
                            fanouts=p.quality_fanouts, num_seeds=p.quality_seeds,
                            type_names=g["type_names"])


def partition_books(cfg: Config, g: dict[str, Any]) -> dict[str, Any]:
    """METIS and random books of the whole graph, with their quality reports.

    Returns:
        ``{"book": METIS book [N], "random": book [N], "quality": {...}, "method"}``.
    """
    from partitioning.base import PartitionResult
    from partitioning.baseline import RandomPartitioner
    from partitioning.metis import MetisPartitioner

    p = cfg.partition
    if g["coarse_book"] is None:
        method = "direct"
        metis = MetisPartitioner(ufactor=int(round(p.imbalance * 1000)), seed=p.seed).partition(
            g["graph"], p.num_parts)
    else:
        from partitioning.refine import refine

        method = "spark_coarsened"
        book, wall_s = g["coarse_book"]
        t0 = time.perf_counter()
        # the projected book is balanced per cluster; rebalance and refine it on the nodes
        book, refine_info = refine(g["graph"], book, p.num_parts, imbalance=p.imbalance)
        wall_s += time.perf_counter() - t0
        metis = PartitionResult(assignment=book.astype(np.int32), num_parts=p.num_parts,
                                algorithm="spark_coarsened_metis", wall_s=wall_s, peak_rss_bytes=0,
                                peak_rss_delta_bytes=0, memory_probe="not measured",
                                params={"edge_budget": p.edge_budget}, info=refine_info)
    random = RandomPartitioner(seed=p.seed).partition(g["graph"], p.num_parts)
    quality = {"metis": _report(cfg, g, metis), "random": _report(cfg, g, random)}
    return {"book": metis.assignment, "random": random.assignment, "quality": quality,
            "method": method}


def place_new(cfg: Config, g: dict[str, Any], previous: dict[str, Any], previous_books: dict[str, np.ndarray],
              log=print) -> dict[str, Any]:
    """Extend the previous book to today's nodes without running METIS (Fennel-style).

    New nodes (ids past the previous counts, in first-seen order) go to the part holding
    most of their weighted neighbours, with a load penalty and a hard cap that keep the
    balance within ``partition.placement_tolerance``. The edge cut's drift from the last
    full partitioning is tracked; past ``partition.max_cut_drift`` the job recommends a
    full re-partition, or runs one (``on_drift: repartition``).
    """
    from partitioning.base import PartitionResult
    from partitioning.baseline import RandomPartitioner
    from partitioning.placement import edge_cut_drift, place_new_nodes
    from partitioning.refine import part_loads

    p = cfg.partition
    graph, offsets = g["graph"], g["offsets"]
    book = np.full(graph.num_nodes, -1, dtype=np.int64)
    new_ids = []
    for node_type, n in g["num_nodes"].items():
        old = previous_books.get(node_type, np.zeros(0, dtype=np.int64))
        if len(old) > n:
            raise ValueError(f"partition: the graph store has fewer {node_type} nodes ({n}) than the "
                             f"shard set ({len(old)}); it is not a continuation of it")
        book[offsets[node_type]:offsets[node_type] + len(old)] = old
        new_ids.append(np.arange(offsets[node_type] + len(old), offsets[node_type] + n))
    new_ids = np.concatenate(new_ids)
    t0 = time.perf_counter()
    src, dst, weight = graph.edge_list()
    touching = (book[src] < 0) | (book[dst] < 0)
    placed_mask = book >= 0
    loads = part_loads(graph.vertex_weights[placed_mask], book[placed_mask], p.num_parts)
    placement = place_new_nodes(book, new_ids, (src[touching], dst[touching], weight[touching]), loads,
                                new_node_weights=graph.vertex_weights[new_ids],
                                tolerance=p.placement_tolerance)
    placed = PartitionResult(assignment=placement.assignment.astype(np.int32), num_parts=p.num_parts,
                             algorithm="placement", wall_s=time.perf_counter() - t0, peak_rss_bytes=0,
                             peak_rss_delta_bytes=0, memory_probe="not measured",
                             params={"tolerance": p.placement_tolerance})
    baseline = previous["baseline_edge_cut"]
    drift = edge_cut_drift(graph, placed.assignment, baseline)
    log(f"partition: placed {len(new_ids):,} new nodes; edge cut {drift.current:.4f} vs "
        f"{baseline:.4f} at the last full partitioning ({drift.relative:+.1%})")
    random = RandomPartitioner(seed=p.seed).partition(graph, p.num_parts)
    out = {"book": placed.assignment, "random": random.assignment, "method": "placement",
           "quality": {"metis": _report(cfg, g, placed), "random": _report(cfg, g, random)},
           "new_nodes": int(len(new_ids)), "num_over_cap": int(placement.num_over_cap),
           "drift": {"baseline_edge_cut": baseline, "current_edge_cut": drift.current,
                     "relative": drift.relative, "threshold": p.max_cut_drift,
                     "repartition_recommended": drift.exceeds(p.max_cut_drift)}}
    if drift.exceeds(p.max_cut_drift):
        if p.on_drift == "repartition":
            log("partition: edge cut drifted past partition.max_cut_drift; re-partitioning with METIS")
            return partition_books(cfg, g)
        log("partition: edge cut drifted past partition.max_cut_drift; a full re-partition "
            "(clickgraph partition without --place-new) is recommended")
    return out


def _coarsened_metis(spark, adjacency, vweights: np.ndarray, p) -> tuple[np.ndarray, float]:
    """Coarsen in Spark to the edge budget, METIS the coarse graph, project back.

    Returns:
        ``(book [N], wall seconds)``.
    """
    import pandas as pd

    from partitioning.coarsen import max_cluster_weight_for
    from partitioning.graph import PartitionGraph, normalized_vertex_weight
    from partitioning.metis import MetisPartitioner
    from partitioning.spark_coarsen import coarse_vertex_weights_spark, coarsen_spark

    t0 = time.perf_counter()
    weight = normalized_vertex_weight(vweights)
    vw_df = spark.createDataFrame(pd.DataFrame({"node": np.arange(len(weight), dtype=np.int64),
                                                "weight": weight}))
    coarse_edges, mapping = coarsen_spark(
        adjacency, vw_df, edge_budget=p.edge_budget,
        max_cluster_weight=max_cluster_weight_for(float(weight.sum()), p.num_parts, 32))
    mapping = mapping.cache()
    clusters = mapping.select("cluster").distinct().toPandas()["cluster"].to_numpy(np.int64)
    clusters.sort()
    index = {c: i for i, c in enumerate(clusters)}
    cw = coarse_vertex_weights_spark(vw_df, mapping).toPandas()
    coarse_w = np.zeros(len(clusters))
    coarse_w[[index[c] for c in cw["cluster"]]] = cw["weight"].to_numpy()
    ce = coarse_edges.toPandas()
    graph = PartitionGraph.from_coo(len(clusters), np.array([index[c] for c in ce["src"]]),
                                    np.array([index[c] for c in ce["dst"]]),
                                    ce["weight"].to_numpy(), vertex_weights=coarse_w)
    coarse = MetisPartitioner(ufactor=int(round(p.imbalance * 1000)), seed=p.seed).partition(
        graph, p.num_parts)
    m = mapping.toPandas()
    book = np.zeros(len(weight), dtype=np.int32)
    book[m["node"].to_numpy()] = coarse.assignment[[index[c] for c in m["cluster"]]]
    mapping.unpersist()
    return book, time.perf_counter() - t0


# --------------------------------------------------------------------------- shards


def _write_relation_csr(spark, store, name: str, info, reverse: bool, books: dict[str, np.ndarray],
                        out_dir: str, num_parts: int) -> tuple[dict[int, int], tuple[str, str, str], str]:
    """One relation's in-edge CSR per part, written by Spark tasks.

    Returns:
        ``(edges per part, edge type, folder relative to a part)``.
    """
    import pandas as pd
    from pyspark.sql import functions as F

    key_type = info.src_type if reverse else info.dst_type
    relation = ("rev_" + info.relation) if reverse else info.relation
    src_type, dst_type = (info.dst_type, info.src_type) if reverse else (info.src_type, info.dst_type)
    rel_path = f"relations/{src_type}__{relation}__{dst_type}"
    book = books[key_type]
    local = np.zeros(len(book), dtype=np.int64)
    owned_count = np.bincount(book, minlength=num_parts)
    for part in range(num_parts):
        members = np.nonzero(book == part)[0]
        local[members] = np.arange(len(members))
    nodes = spark.createDataFrame(pd.DataFrame({"key": np.arange(len(book), dtype=np.int64),
                                                "part": book.astype(np.int32), "local": local}))
    edges = store.read_edges(spark, name)
    key, other = ("src", "dst") if reverse else ("dst", "src")
    df = (edges.select(F.col(key).alias("key"), F.col(other).alias("neighbor"),
                       F.floor(F.col("ts_ms") / 1000).cast("long").alias("edge_time"),
                       F.col("weight").cast("float").alias("weight"),
                       F.monotonically_increasing_id().alias("edge_id"))
          .join(F.broadcast(nodes), "key"))
    counts = {int(k): int(v) for k, v in enumerate(owned_count)}

    def write_part(frame: pd.DataFrame) -> pd.DataFrame:
        part = int(frame["part"].iloc[0])
        frame = frame.sort_values(["local", "edge_time", "neighbor", "edge_id"], kind="stable")
        folder = os.path.join(out_dir, f"part-{part:05d}", rel_path)
        os.makedirs(os.path.join(folder, "attr"), exist_ok=True)
        degree = np.bincount(frame["local"].to_numpy(), minlength=counts[part])
        indptr = np.zeros(counts[part] + 1, dtype=np.int64)
        np.cumsum(degree, out=indptr[1:])
        np.save(os.path.join(folder, "indptr.npy"), indptr)
        np.save(os.path.join(folder, "neighbor.npy"), frame["neighbor"].to_numpy(np.int64))
        np.save(os.path.join(folder, "edge_time.npy"), frame["edge_time"].to_numpy(np.int64))
        np.save(os.path.join(folder, "edge_id.npy"), frame["edge_id"].to_numpy(np.int64))
        np.save(os.path.join(folder, "attr", "weight.npy"), frame["weight"].to_numpy(np.float32))
        return pd.DataFrame({"part": [part], "edges": [len(frame)]})

    written = df.groupBy("part").applyInPandas(write_part, "part int, edges long").toPandas()
    per_part = {int(r.part): int(r.edges) for r in written.itertuples()}
    for part in range(num_parts):  # parts without any edge of this relation
        if part not in per_part:
            folder = os.path.join(out_dir, f"part-{part:05d}", rel_path)
            os.makedirs(os.path.join(folder, "attr"), exist_ok=True)
            np.save(os.path.join(folder, "indptr.npy"), np.zeros(counts[part] + 1, dtype=np.int64))
            for file, dtype in (("neighbor", np.int64), ("edge_time", np.int64), ("edge_id", np.int64),
                                ("attr/weight", np.float32)):
                np.save(os.path.join(folder, f"{file}.npy"), np.zeros(0, dtype=dtype))
            per_part[part] = 0
    return per_part, (src_type, relation, dst_type), rel_path


def write_shards(spark, cfg: Config, store, books: dict[str, np.ndarray], out_dir: str,
                 config_hash: str) -> list[dict[str, Any]]:
    """Write every part's shard under ``out_dir/part-XXXXX`` (layout: trainer/shard.py)."""
    from trainer.data import encode_nodes, read_table
    from trainer.shard import FORMAT_VERSION, SHARD_KIND

    num_parts = cfg.partition.num_parts
    node_types = [t for t in GRAPH_NODE_TYPES if t in books]
    node_meta: list[dict[str, Any]] = [{} for _ in range(num_parts)]
    vocab = {}
    for node_type in node_types:
        table = read_table(store.node_url(node_type)).sort_by("id")
        features, vocab[node_type] = encode_nodes(table, node_type)
        book = books[node_type]
        for part in range(num_parts):
            folder = os.path.join(out_dir, f"part-{part:05d}")
            owned = np.nonzero(book == part)[0].astype(np.int64)
            for rel, array in ((f"partition_book/{node_type}.npy", book.astype(np.int32)),
                               (f"owned/{node_type}.npy", owned),
                               (f"features/{node_type}/categorical.npy",
                                features.categorical.numpy()[owned])):
                os.makedirs(os.path.dirname(os.path.join(folder, rel)), exist_ok=True)
                np.save(os.path.join(folder, rel), array)
            if features.created_time is not None:
                np.save(os.path.join(folder, f"features/{node_type}/created_time.npy"),
                        features.created_time.numpy()[owned])
            node_meta[part][node_type] = {
                "num_owned": int(len(owned)), "num_columns": int(features.categorical.shape[1]),
                "cardinalities": [int(c) for c in features.cardinalities],
                "has_created_time": features.created_time is not None,
                "learn_id_embedding": bool(features.learn_id_embedding)}
    relations: list[list[dict[str, Any]]] = [[] for _ in range(num_parts)]
    for name, info in store.relations.items():
        for reverse in (False, True):
            per_part, edge_type, rel_path = _write_relation_csr(
                spark, store, name, info, reverse, books, out_dir, num_parts)
            for part, count in per_part.items():
                relations[part].append({
                    "src_type": edge_type[0], "relation": edge_type[1], "dst_type": edge_type[2],
                    "path": rel_path, "num_edges": count, "weight": 1.0,
                    "edge_attr": {"weight": {"dtype": "float32", "shape": [count]}}})
    summaries = []
    for part in range(num_parts):
        folder = os.path.join(out_dir, f"part-{part:05d}")
        manifest = {
            "kind": SHARD_KIND, "format_version": FORMAT_VERSION, "producer": "clickgraph",
            "producer_version": __version__,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "config_hash": config_hash, "part": part, "num_parts": num_parts,
            "node_type_order": node_types,
            "num_nodes": {t: int(len(books[t])) for t in node_types},
            "node_types": node_meta[part], "relations": relations[part], "time_range": None}
        fs.write_json(os.path.join(folder, fs.MANIFEST_NAME), manifest)
        summaries.append({"part": part, "path": f"part-{part:05d}",
                          "owned": {t: m["num_owned"] for t, m in node_meta[part].items()},
                          "edges": sum(r["num_edges"] for r in relations[part])})
    with open(os.path.join(out_dir, "vocab.json"), "w") as handle:
        json.dump(vocab, handle)
    return summaries


# --------------------------------------------------------------------------- the job


def run(spark, cfg: Config, graph_url: str | None = None, out_url: str | None = None,
        place_new_nodes: bool = False, log=print) -> dict[str, Any]:
    """Partition the graph store and write the shard set; returns its manifest.

    With ``place_new_nodes`` the previous shard set's book is kept and only nodes the
    graph store gained since (an incremental build) are placed; the shards are then
    written again from the store, so they hold the new edges too.
    """
    from clickgraph.manifest import read_manifest
    from spark_jobs.graph_store import open_graph_store

    graph_url = graph_url or cfg.paths.stage("graph")
    out_url = out_url or cfg.paths.stage("partitions")
    if "://" in out_url and not out_url.startswith("file://"):
        raise ValueError(f"partition: shards are written to a local or mounted path for now; "
                         f"got {out_url} (copy them to object storage afterwards)")
    store = open_graph_store(graph_url)
    t0 = time.perf_counter()
    g = load_partition_graph(spark, cfg, store)
    if place_new_nodes and cfg.partition.shard_book != "metis":
        raise ValueError("partition: --place-new extends a METIS shard set; partition.shard_book "
                         f"is {cfg.partition.shard_book!r}")
    if place_new_nodes:
        previous = read_manifest(out_url, PARTITIONS_KIND, (PARTITIONS_FORMAT_VERSION,))
        if previous["num_parts"] != cfg.partition.num_parts:
            raise ValueError(f"partition: the shard set at {out_url} has {previous['num_parts']} parts, "
                             f"partition.num_parts is {cfg.partition.num_parts}")
        first = fs.join(out_url, previous["parts"][0]["path"]).removeprefix("file://")
        previous_books = {t: np.load(os.path.join(first, "partition_book", f"{t}.npy"))
                          for t in previous["num_nodes"]}
        result = place_new(cfg, g, previous, previous_books, log)
    else:
        result = partition_books(cfg, g)
    offsets, num_nodes = g["offsets"], g["num_nodes"]
    chosen = result["book"] if cfg.partition.shard_book == "metis" else result["random"]
    books = {t: chosen[offsets[t]:offsets[t] + n] for t, n in num_nodes.items()}
    _print_quality(result["quality"], log)
    baseline = (result["drift"]["baseline_edge_cut"] if result["method"] == "placement"
                else result["quality"]["metis"]["edge_cut_fraction"]["unweighted"])
    with fs.staged_output(out_url) as stage:
        local = stage.removeprefix("file://")
        os.makedirs(local, exist_ok=True)
        parts = write_shards(spark, cfg, store, books, local, cfg.section_hash("partition", "graph"))
        np.save(os.path.join(local, "book.npy"), result["book"].astype(np.int32))
        np.save(os.path.join(local, "book_random.npy"), result["random"].astype(np.int32))
        fs.write_text(fs.join(stage, "_config.yaml"), cfg.to_yaml())
        manifest = new_manifest(
            PARTITIONS_KIND, PARTITIONS_FORMAT_VERSION, cfg, ("partition", "graph"),
            num_parts=cfg.partition.num_parts, method=result["method"],
            shard_book=cfg.partition.shard_book,
            graph={"url": graph_url, "created_at": store.manifest.get("created_at"),
                   "config_hash": store.manifest.get("config_hash"), "days": store.days},
            num_nodes=num_nodes, global_offsets=offsets, num_pairs=g["num_pairs"],
            parts=parts, quality=result["quality"], baseline_edge_cut=baseline,
            placement={k: result[k] for k in ("new_nodes", "num_over_cap", "drift") if k in result},
            wall_s=round(time.perf_counter() - t0, 2),
            shard_format="trainer/shard.py format_version 1")
        write_manifest(stage, manifest)
    return manifest


def _print_quality(quality: dict[str, Any], log) -> None:
    log("partition quality            METIS      random")
    rows = [("edge-cut fraction", lambda r: r["edge_cut_fraction"]["unweighted"]),
            ("remote lookups, 1 hop", lambda r: r["remote_fraction_1hop"]),
            ("remote lookups, 2 hops", lambda r: r["remote_fraction_2hop"]),
            ("wall time (s)", lambda r: r["wall_s"])]
    for label, get in rows:
        log(f"  {label:<24} {get(quality['metis']):>9.4f}  {get(quality['random']):>9.4f}")
    for key in quality["metis"]["balance"]:
        m, r = quality["metis"]["balance"][key], quality["random"]["balance"][key]
        if isinstance(m, (int, float)):
            log(f"  balance {key:<16} {m:>9.3f}  {r:>9.3f}")


def main(argv: list[str] | None = None) -> int:
    """``spark-submit spark_jobs/partition.py --config FILE --num-parts K``."""
    import argparse

    from clickgraph.config import ConfigError, load_config, replace
    from spark_jobs.session import get_spark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--num-parts", type=int)
    parser.add_argument("--place-new", action="store_true",
                        help="keep the existing book, place only new nodes (after build-graph --day)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.num_parts is not None:
            cfg = replace(cfg, "partition", num_parts=args.num_parts)
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    run(get_spark(cfg.spark, "partition"), cfg, place_new_nodes=args.place_new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
