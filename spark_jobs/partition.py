"""METIS-partition the graph store into one shard per training worker.

Run as ``clickgraph partition --num-parts K`` or
``spark-submit spark_jobs/partition.py --config FILE --num-parts K``.

1. Spark aggregates every relation's multi-edges into one weighted undirected adjacency
   over a global id space (node types laid end to end in ``GRAPH_NODE_TYPES`` order),
   with the store's per-edge weights (relation weights from config) summed per pair.
   Vertex weights balance two things: training events (impressions, counted at their
   user) and incident edges.
2. At or under ``partition.edge_budget`` pairs the adjacency is collected and
   partitioned by METIS directly; above it Spark coarsens it first (label propagation,
   ``partitioning.spark_coarsen``) until it fits, METIS partitions the coarse graph and
   Spark projects the book back, and the book is rebalanced and refined with the
   per-edge steps in Spark (``partitioning.spark_graph``). Random (hash) partitioning of
   the same graph is computed in the same run, and both get the same quality report
   (above the budget, too, from Spark). Above the budget the driver holds per-node
   arrays, the coarse graph and O(seeds x fanouts) sampled lookups, never the fine
   adjacency.
3. Spark writes each relation's in-edge CSR per part (forward relations keyed by their
   destination, ``rev_`` relations by their source), one pandas group per part; the
   driver writes the partition book, owned ids and features, then each part's manifest,
   then the shard set's ``_MANIFEST.json`` last. Shard layout: ``clickgraph/core/shards.py``.
   A shard set for an object store (any non-local fsspec URL) is written to a local
   folder first and then uploaded, manifests last (:func:`publish_shard_set`).
4. A run that continues the shard set already at the output (``--place-new``, or the
   same graph lineage) keeps its attribute vocabularies (:func:`vocab_to_keep`), so a
   model trained on it can be continued.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np

from clickgraph.core import fs
from clickgraph.core import shards as fmt
from clickgraph.core.config import GRAPH_NODE_TYPES, Config
from clickgraph.core.errors import InputError
from clickgraph.core.graph_store import IMPRESSIONS
from clickgraph.core.manifest import new_manifest, write_manifest
from clickgraph.core.shards import PARTITIONS_FORMAT_VERSION, PARTITIONS_KIND
from clickgraph.core.timeline import MS_PER_SECOND
from spark_jobs import store_io


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
        edges = store_io.read_edges(spark, store, name)
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
    events = (store_io.read_edges(spark, store, IMPRESSIONS).groupBy("src").count()
              .select((F.col("src") + F.lit(offsets["user"])).alias("node"), "count").toPandas())
    weights[events["node"].to_numpy(), 0] = events["count"].to_numpy()
    degree = (edges.select(F.explode(F.array("src", "dst")).alias("node")).groupBy("node").count()
              .toPandas())
    weights[degree["node"].to_numpy(), 1] = degree["count"].to_numpy()
    return weights


def _collect_pairs(adjacency) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole fine adjacency on the driver (at or under ``partition.edge_budget`` only),
    through Arrow (``collect_frame``), not one Python ``Row`` per pair."""
    from partitioning.spark_graph import collect_frame

    table = collect_frame(adjacency)
    return (table["src"].to_numpy(np.int64), table["dst"].to_numpy(np.int64),
            table["weight"].to_numpy(np.float64))


def load_partition_graph(spark, cfg: Config, store) -> dict[str, Any]:
    """The store as one weighted undirected graph (plus what goes with it).

    See :func:`prepare_partition_graph` for what is collected to the driver; here the
    global id space, node types and vertex weights are added.
    """
    num_nodes = {t: store.num_nodes(t) for t in store.node_types}
    offsets = node_offsets(num_nodes)
    total = sum(num_nodes.values())
    type_names = [t for t in GRAPH_NODE_TYPES if t in num_nodes]
    node_type = np.zeros(total, dtype=np.int16)
    for index, t in enumerate(type_names):
        node_type[offsets[t]:offsets[t] + num_nodes[t]] = index
    edges = global_edges(spark, store, offsets).cache()
    adjacency = weighted_adjacency(edges).cache()
    vweights = vertex_weights(spark, store, edges, offsets, total)
    edges.unpersist()
    g = prepare_partition_graph(cfg, adjacency, vweights, node_type, type_names)
    g.update(num_nodes=num_nodes, offsets=offsets)
    return g


def prepare_partition_graph(cfg: Config, adjacency, vweights: np.ndarray, node_type: np.ndarray | None,
                            type_names: list[str] | None) -> dict[str, Any]:
    """The graph as the books, their refinement and their quality report read it.

    At or under ``partition.edge_budget`` pairs the adjacency is collected and becomes
    an in-memory :class:`partitioning.graph.PartitionGraph`. Above it nothing per edge
    reaches the driver: the adjacency stays persisted in Spark and is read through a
    :class:`partitioning.spark_graph.SparkGraphView` (refinement, quality report and
    ``--place-new`` as DataFrame steps); the driver holds per-node arrays only. Call
    :func:`release_partition_graph` when done.

    Args:
        cfg: the config (``partition.edge_budget``).
        adjacency: persisted DataFrame ``src < dst, weight``, each pair once.
        vweights: float64 [N, 2] vertex weights (training events, incident edges).
        node_type: int16 [N] node type index, or None.
        type_names: node type names by index.

    Returns:
        ``{"graph": PartitionGraph or None (above the budget), "view": GraphView,
        "adjacency": the persisted DataFrame or None, "vertex_weights",
        "events_per_node": int64 [N] training events per node, "num_pairs",
        "type_names"}``.
    """
    from partitioning.graph import PartitionGraph
    from partitioning.refine import CsrGraphView

    num_pairs = adjacency.count()
    events_per_node = vweights[:, 0].astype(np.int64)
    common = {"vertex_weights": vweights, "events_per_node": events_per_node, "num_pairs": num_pairs,
              "type_names": type_names}
    if num_pairs <= cfg.partition.edge_budget:
        src, dst, weight = _collect_pairs(adjacency)
        adjacency.unpersist()
        graph = PartitionGraph.from_coo(len(vweights), src, dst, weight, node_type=node_type,
                                        vertex_weights=vweights)
        return {"graph": graph, "view": CsrGraphView(graph), "adjacency": None, **common}
    from partitioning.spark_graph import SparkGraphView

    return {"graph": None, "view": SparkGraphView(adjacency, vweights, node_type), "adjacency": adjacency,
            **common}


def release_partition_graph(g: dict[str, Any]) -> None:
    """Unpersists what :func:`prepare_partition_graph` left in Spark (above the budget)."""
    if g.get("adjacency") is not None:
        g["view"].close()
        g["adjacency"].unpersist()
        g["adjacency"] = None


def quality_of(cfg: Config, g: dict[str, Any], result) -> dict[str, Any]:
    """The job's quality report of one book (``partitioning.quality.quality_report``).

    Seeds are drawn from the training events per node and their trees sampled once, with
    a generator seeded by ``partition.seed`` (kept in ``g["trees"]`` per seed, number of
    seeds and fanouts), so every book of one run (and of a benchmark using this
    function) is measured on the same lookups.
    Above the edge budget the trees are sampled through the Spark view: the driver holds
    the seeds and the sampled lookups only, and the figures equal the in-memory ones.
    """
    from partitioning import quality as q

    p = cfg.partition
    key = (p.seed, p.quality_seeds, tuple(p.quality_fanouts))
    cache = g.setdefault("trees", {})
    if key not in cache:
        rng = np.random.default_rng(p.seed)
        seeds = q.draw_seeds(g["events_per_node"], p.quality_seeds, rng)
        cache[key] = q.sample_trees(g["view"], seeds, p.quality_fanouts, rng)
    return q.quality_report(g["view"], result, g["events_per_node"], None, type_names=g["type_names"],
                            trees=cache[key])


def _random_book(cfg: Config, g: dict[str, Any]):
    """The hash book of the same graph (it reads the node count only)."""
    from partitioning.baseline import RandomPartitioner

    return RandomPartitioner(seed=cfg.partition.seed).partition(g["view"], cfg.partition.num_parts)


def partition_books(cfg: Config, g: dict[str, Any]) -> dict[str, Any]:
    """METIS and random books of the whole graph, with their quality reports.

    Returns:
        ``{"book": METIS book [N], "random": book [N], "quality": {...}, "method"}``.
    """
    from partitioning.base import PartitionResult
    from partitioning.metis import MetisPartitioner

    p = cfg.partition
    if g["graph"] is not None:
        method = "direct"
        metis = MetisPartitioner(ufactor=int(round(p.imbalance * 1000)), seed=p.seed).partition(
            g["graph"], p.num_parts)
    else:
        from partitioning.refine import refine

        method = "spark_coarsened"
        adjacency = g["adjacency"]
        book, wall_s = _coarsened_metis(adjacency.sparkSession, adjacency, g["vertex_weights"], p)
        t0 = time.perf_counter()
        # the projected book is balanced per cluster; rebalance and refine it on the nodes,
        # each pass's per-edge work in Spark (partitioning.spark_graph)
        book, refine_info = refine(g["view"], book, p.num_parts, imbalance=p.imbalance)
        wall_s += time.perf_counter() - t0
        metis = PartitionResult(assignment=book.astype(np.int32), num_parts=p.num_parts,
                                algorithm="spark_coarsened_metis", wall_s=wall_s, peak_rss_bytes=0,
                                peak_rss_delta_bytes=0, memory_probe="not measured",
                                params={"edge_budget": p.edge_budget}, info=refine_info)
    random = _random_book(cfg, g)
    quality = {"metis": quality_of(cfg, g, metis), "random": quality_of(cfg, g, random)}
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

    Placement reads the pairs of the new nodes only (``GraphView.pairs_touching``: a
    Spark filter above the edge budget), the book and the vertex weights.
    """
    from partitioning.base import PartitionResult
    from partitioning.placement import edge_cut_drift, place_new_nodes
    from partitioning.refine import part_loads

    p = cfg.partition
    view, offsets, vweights = g["view"], g["offsets"], g["vertex_weights"]
    book = np.full(view.num_nodes, -1, dtype=np.int64)
    new_ids, new_ranges = [], []
    for node_type, n in g["num_nodes"].items():
        old = previous_books.get(node_type, np.zeros(0, dtype=np.int64))
        if len(old) > n:
            raise InputError(f"partition: the graph store has fewer {node_type} nodes ({n}) than the "
                             f"shard set ({len(old)}); it is not a continuation of it")
        book[offsets[node_type]:offsets[node_type] + len(old)] = old
        new_ids.append(np.arange(offsets[node_type] + len(old), offsets[node_type] + n))
        new_ranges.append((offsets[node_type] + len(old), offsets[node_type] + n))
    new_ids = np.concatenate(new_ids)
    t0 = time.perf_counter()
    touching = view.pairs_touching(new_ranges)
    placed_mask = book >= 0
    loads = part_loads(vweights[placed_mask], book[placed_mask], p.num_parts)
    placement = place_new_nodes(book, new_ids, touching, loads, new_node_weights=vweights[new_ids],
                                tolerance=p.placement_tolerance)
    placed = PartitionResult(assignment=placement.assignment.astype(np.int32), num_parts=p.num_parts,
                             algorithm="placement", wall_s=time.perf_counter() - t0, peak_rss_bytes=0,
                             peak_rss_delta_bytes=0, memory_probe="not measured",
                             params={"tolerance": p.placement_tolerance})
    baseline = previous["baseline_edge_cut"]
    drift = edge_cut_drift(view, placed.assignment, baseline)
    log(f"partition: placed {len(new_ids):,} new nodes; edge cut {drift.current:.4f} vs "
        f"{baseline:.4f} at the last full partitioning ({drift.relative:+.1%})")
    random = _random_book(cfg, g)
    out = {"book": placed.assignment, "random": random.assignment, "method": "placement",
           "quality": {"metis": quality_of(cfg, g, placed), "random": quality_of(cfg, g, random)},
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
    from partitioning.spark_graph import collect_frame

    t0 = time.perf_counter()
    weight = normalized_vertex_weight(vweights)
    vw_df = spark.createDataFrame(pd.DataFrame({"node": np.arange(len(weight), dtype=np.int64),
                                                "weight": weight}))
    coarse_edges, mapping = coarsen_spark(
        adjacency, vw_df, edge_budget=p.edge_budget,
        max_cluster_weight=max_cluster_weight_for(float(weight.sum()), p.num_parts, 32))
    mapping = mapping.cache()
    clusters = collect_frame(mapping.select("cluster").distinct())["cluster"].to_numpy(np.int64)
    clusters.sort()

    def index(labels) -> np.ndarray:  # cluster label -> dense coarse id, vectorised
        return np.searchsorted(clusters, labels.to_numpy(np.int64))

    cw = collect_frame(coarse_vertex_weights_spark(vw_df, mapping))
    coarse_w = np.zeros(len(clusters))
    coarse_w[index(cw["cluster"])] = cw["weight"].to_numpy()
    ce = collect_frame(coarse_edges)
    graph = PartitionGraph.from_coo(len(clusters), index(ce["src"]), index(ce["dst"]),
                                    ce["weight"].to_numpy(), vertex_weights=coarse_w)
    coarse = MetisPartitioner(ufactor=int(round(p.imbalance * 1000)), seed=p.seed).partition(
        graph, p.num_parts)
    m = collect_frame(mapping)
    book = np.zeros(len(weight), dtype=np.int32)
    book[m["node"].to_numpy()] = coarse.assignment[index(m["cluster"])]
    mapping.unpersist()
    return book, time.perf_counter() - t0


# --------------------------------------------------------------------------- shards


def _save_csr(folder: str, rel_path: str, indptr: np.ndarray, neighbor: np.ndarray,
              edge_time: np.ndarray, edge_id: np.ndarray, weight: np.ndarray) -> None:
    """One relation's CSR arrays of one part (:mod:`clickgraph.core.shards`)."""
    for array, value in (("indptr", indptr), ("neighbor", neighbor), ("edge_time", edge_time),
                         ("edge_id", edge_id)):
        fmt.save_array(folder, fmt.csr_file(rel_path, array), value)
    fmt.save_array(folder, fmt.attr_file(rel_path, "weight"), weight)


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
    rel_path = fmt.relation_dir((src_type, relation, dst_type))
    book = books[key_type]
    local = np.zeros(len(book), dtype=np.int64)
    owned_count = np.bincount(book, minlength=num_parts)
    for part in range(num_parts):
        members = np.nonzero(book == part)[0]
        local[members] = np.arange(len(members))
    nodes = spark.createDataFrame(pd.DataFrame({"key": np.arange(len(book), dtype=np.int64),
                                                "part": book.astype(np.int32), "local": local}))
    edges = store_io.read_edges(spark, store, name)
    key, other = ("src", "dst") if reverse else ("dst", "src")
    df = (edges.select(F.col(key).alias("key"), F.col(other).alias("neighbor"),
                       F.floor(F.col("ts_ms") / MS_PER_SECOND).cast("long").alias("edge_time"),
                       F.col("weight").cast("float").alias("weight"),
                       F.monotonically_increasing_id().alias("edge_id"))
          .join(F.broadcast(nodes), "key"))
    counts = {int(k): int(v) for k, v in enumerate(owned_count)}

    def write_part(frame: pd.DataFrame) -> pd.DataFrame:
        part = int(frame["part"].iloc[0])
        frame = frame.sort_values(["local", "edge_time", "neighbor", "edge_id"], kind="stable")
        folder = os.path.join(out_dir, fmt.part_folder(part))
        degree = np.bincount(frame["local"].to_numpy(), minlength=counts[part])
        indptr = np.zeros(counts[part] + 1, dtype=np.int64)
        np.cumsum(degree, out=indptr[1:])
        _save_csr(folder, rel_path, indptr, frame["neighbor"].to_numpy(np.int64),
                  frame["edge_time"].to_numpy(np.int64), frame["edge_id"].to_numpy(np.int64),
                  frame["weight"].to_numpy(np.float32))
        return pd.DataFrame({"part": [part], "edges": [len(frame)]})

    written = df.groupBy("part").applyInPandas(write_part, "part int, edges long").toPandas()
    per_part = {int(r.part): int(r.edges) for r in written.itertuples()}
    for part in range(num_parts):  # parts without any edge of this relation
        if part not in per_part:
            empty = np.zeros(0, dtype=np.int64)
            _save_csr(os.path.join(out_dir, fmt.part_folder(part)), rel_path,
                      np.zeros(counts[part] + 1, dtype=np.int64), empty, empty, empty,
                      np.zeros(0, dtype=np.float32))
            per_part[part] = 0
    return per_part, (src_type, relation, dst_type), rel_path


def write_shards(spark, cfg: Config, store, books: dict[str, np.ndarray], out_dir: str,
                 config_hash: str, previous_vocab: dict[str, dict[str, list[str]]] | None = None
                 ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Write every part's shard under ``out_dir/part-XXXXX`` (layout: clickgraph/core/shards.py).

    Args:
        spark: the session; its tasks write the relation files, so ``out_dir`` must be
            a folder the driver and every executor see.
        cfg: the config.
        store: the graph store.
        books: node type -> int [num_nodes] part of every node.
        out_dir: local folder of the shard set.
        config_hash: recorded in every part's manifest.
        previous_vocab: ``vocab.json`` of the shard set this one continues. Its
            vocabularies are kept as they are: codes and cardinalities stay those the
            model was trained with, and values it does not list get code 0 (unknown).
            Node types or columns it lacks are fitted here, on the nodes known before
            the training window ends (``train.val_days``/``train.test_days`` of ``cfg``:
            nothing first seen in the validation or test window gets a code). ``None``
            fits all that way.

    Returns:
        ``(per-part summaries, vocab info)``; vocab info holds ``source`` (``"fitted"``
        or ``"previous"``), ``fit_before`` (seconds) and ``unseen`` (node type ->
        column -> distinct values encoded as unknown).
    """
    from clickgraph.core.timeline import split_windows
    from clickgraph.core.vocab import (
        ID_EMBEDDING_TYPES,
        created_seconds,
        encode_attributes,
        first_seen_in_store,
        known_from,
        unseen_values,
        vocab_rows,
    )

    num_parts = cfg.partition.num_parts
    node_types = [t for t in GRAPH_NODE_TYPES if t in books]
    node_meta: list[dict[str, Any]] = [{} for _ in range(num_parts)]
    vocab = {}
    unseen: dict[str, dict[str, int]] = {}
    fit_before = split_windows(store.days, cfg.train.val_days, cfg.train.test_days).val_start
    to_fit = [t for t in node_types if (previous_vocab or {}).get(t) is None]
    first_seen = first_seen_in_store(store, to_fit) if to_fit else {}
    for node_type in node_types:
        table = store.read_nodes_arrow(node_type)
        kept = (previous_vocab or {}).get(node_type)
        created = created_seconds(table)
        fit_rows = None if kept is not None else vocab_rows(
            known_from(created, first_seen[node_type]), fit_before)
        encoded = encode_attributes(table, kept, fit_rows)
        vocab[node_type] = encoded.vocab
        new_values = unseen_values(table, vocab[node_type])
        if new_values:
            unseen[node_type] = new_values
        has_created = bool((created > 0).any())
        book = books[node_type]
        for part in range(num_parts):
            folder = os.path.join(out_dir, fmt.part_folder(part))
            owned = np.nonzero(book == part)[0].astype(np.int64)
            fmt.save_array(folder, fmt.book_file(node_type), book.astype(np.int32))
            fmt.save_array(folder, fmt.owned_file(node_type), owned)
            fmt.save_array(folder, fmt.categorical_file(node_type), encoded.codes[owned])
            if has_created:
                fmt.save_array(folder, fmt.created_time_file(node_type), created[owned])
            node_meta[part][node_type] = fmt.node_type_entry(
                len(owned), encoded.codes.shape[1], encoded.cardinalities, has_created,
                node_type in ID_EMBEDDING_TYPES)
    relations: list[list[dict[str, Any]]] = [[] for _ in range(num_parts)]
    for name, info in store.relations.items():
        for reverse in (False, True):
            per_part, edge_type, _ = _write_relation_csr(
                spark, store, name, info, reverse, books, out_dir, num_parts)
            for part, count in per_part.items():
                relations[part].append(fmt.relation_entry(
                    edge_type, count, 1.0, {"weight": ("float32", [count])}))
    summaries = []
    for part in range(num_parts):
        fmt.write_part_manifest(os.path.join(out_dir, fmt.part_folder(part)), fmt.part_manifest(
            part, num_parts, node_types, {t: len(books[t]) for t in node_types},
            node_meta[part], relations[part], None, config_hash))
        summaries.append({"part": part, "path": fmt.part_folder(part),
                          "owned": {t: m["num_owned"] for t, m in node_meta[part].items()},
                          "edges": sum(r["num_edges"] for r in relations[part])})
    with open(os.path.join(out_dir, fmt.VOCAB_FILE), "w") as handle:
        json.dump(vocab, handle)
    return summaries, {"source": "fitted" if previous_vocab is None else "previous",
                       "fit_before": fit_before, "unseen": unseen}


# --------------------------------------------------------------------------- the job


def read_npy(url: str) -> np.ndarray:
    """One ``.npy`` file from a local path or any fsspec URL, read whole."""
    filesystem, path = fs.filesystem(url)
    with filesystem.open(path, "rb") as handle:
        return np.load(io.BytesIO(handle.read()), allow_pickle=False)


def previous_shard_set(out_url: str, required: bool) -> dict[str, Any] | None:
    """The manifest of the shard set at ``out_url``, or None when there is no usable one.

    Raises:
        clickgraph.core.manifest.ManifestError: ``required`` and no complete shard set of a
            known format version is there.
    """
    from clickgraph.core.manifest import ManifestError, read_manifest

    if not required and not fs.exists(fs.join(out_url, fs.MANIFEST_NAME)):
        return None
    try:
        return read_manifest(out_url, PARTITIONS_KIND, (PARTITIONS_FORMAT_VERSION,))
    except ManifestError:
        if required:
            raise
        return None


def vocab_to_keep(previous: dict[str, Any] | None, out_url: str, store, place_new_nodes: bool,
                  log=print) -> dict[str, dict[str, list[str]]] | None:
    """The previous shard set's ``vocab.json`` when this run continues that set, else None.

    A model trained on the previous shards has one embedding row per code, so a
    continued checkpoint stays loadable only if codes and cardinalities stay as they
    were. The previous vocabularies are kept for ``--place-new`` and for a full run on a
    graph store of the same lineage (same build config, the previous set's days a
    prefix of the store's): the graph ``clickgraph train --continue`` accepts.
    """
    if previous is None:
        return None
    old = previous.get("graph", {})
    old_days = list(old.get("days") or [])
    continues = place_new_nodes or (old.get("config_hash") == store.manifest.get("config_hash")
                                    and store.days[:len(old_days)] == old_days)
    url = fs.join(out_url, fmt.VOCAB_FILE)
    if not continues:
        log(f"partition: the shard set at {out_url} was cut from another graph lineage; "
            "vocabularies fitted again")
        return None
    if not fs.exists(url):
        log(f"partition: {url} not found; vocabularies fitted again")
        return None
    return fs.read_json(url)


def upload_order(local_dir: str) -> list[str]:
    """Files under ``local_dir`` (relative, ``/``-separated) in the order they are uploaded.

    Data files first, then every part's ``_MANIFEST.json``, then the shard set's: a
    manifest is never visible before the files it describes.
    """
    files = []
    for root, _, names in os.walk(local_dir):
        for name in names:
            files.append(os.path.relpath(os.path.join(root, name), local_dir).replace(os.sep, "/"))
    return fs.manifests_last(files)


def publish_shard_set(local_dir: str, out_url: str) -> None:
    """Upload a shard set written under ``local_dir`` to ``out_url`` (any fsspec URL).

    The files go into ``fs.staged_output``'s staging folder beside ``out_url`` in
    :func:`upload_order` (data, then each part's manifest, then the set's), and the stage
    is swapped into place with manifests last. A crash during the upload leaves the
    previous shard set untouched (``--place-new`` can still extend it); a crash during
    the swap leaves a folder without manifest, which every reader refuses.

    Args:
        local_dir: the complete shard set, manifests included.
        out_url: final folder, e.g. ``s3a://bucket/clickgraph/partitions``.
    """
    parent, name = posixpath.split(fs.filesystem(out_url)[1].rstrip("/"))
    if not parent or not name:
        raise InputError(f"partition: {out_url} must be a folder below a bucket or root")
    with fs.staged_output(out_url) as stage:
        filesystem, stage_path = fs.filesystem(stage)
        for rel in upload_order(local_dir):
            target = f"{stage_path}/{rel}"
            filesystem.makedirs(posixpath.dirname(target), exist_ok=True)
            filesystem.put_file(os.path.join(local_dir, *rel.split("/")), target)


def run(spark, cfg: Config, graph_url: str | None = None, out_url: str | None = None,
        place_new_nodes: bool = False, refit_vocab: bool = False, staging_dir: str | None = None,
        log=print) -> dict[str, Any]:
    """Partition the graph store and write the shard set; returns its manifest.

    With ``place_new_nodes`` the previous shard set's book is kept and only nodes the
    graph store gained since (an incremental build) are placed; the shards are then
    written again from the store, so they hold the new edges too.

    ``out_url`` is a local path or any fsspec URL (``s3a://`` is read as ``s3://``). A
    local shard set is staged beside its folder and renamed into place
    (``fs.staged_output``). Any other is written to a local folder under ``staging_dir``
    (default: the system's temporary folder; Spark tasks write there, so on a cluster
    it must be a folder the driver and every executor share) and then uploaded by
    :func:`publish_shard_set`, manifests last.

    Vocabularies: a run that continues the shard set at ``out_url`` (see
    :func:`vocab_to_keep`) keeps its ``vocab.json``, so a continued model's embedding
    tables still fit; attribute values it does not list are encoded as unknown (0) and
    counted in the manifest's ``vocab.unseen``. ``refit_vocab`` fits them again (the
    model must then be trained from scratch).
    """
    from clickgraph.core.graph_store import open_graph_store

    graph_url = graph_url or cfg.paths.stage("graph")
    out_url = out_url or cfg.paths.stage("partitions")
    if place_new_nodes and cfg.partition.shard_book != "metis":
        raise InputError("partition: --place-new extends a METIS shard set; partition.shard_book "
                         f"is {cfg.partition.shard_book!r}")
    store = open_graph_store(graph_url)
    previous = previous_shard_set(out_url, required=place_new_nodes)
    if place_new_nodes and previous["num_parts"] != cfg.partition.num_parts:
        raise InputError(f"partition: the shard set at {out_url} has {previous['num_parts']} parts, "
                         f"partition.num_parts is {cfg.partition.num_parts}")
    t0 = time.perf_counter()
    g = load_partition_graph(spark, cfg, store)
    try:
        if place_new_nodes:
            first = fs.join(out_url, previous["parts"][0]["path"])
            previous_books = {t: read_npy(fs.join(first, "partition_book", f"{t}.npy"))
                              for t in previous["num_nodes"]}
            result = place_new(cfg, g, previous, previous_books, log)
        else:
            result = partition_books(cfg, g)
    finally:
        release_partition_graph(g)
    previous_vocab = None if refit_vocab else vocab_to_keep(previous, out_url, store,
                                                            place_new_nodes, log)
    offsets, num_nodes = g["offsets"], g["num_nodes"]
    chosen = result["book"] if cfg.partition.shard_book == "metis" else result["random"]
    books = {t: chosen[offsets[t]:offsets[t] + n] for t, n in num_nodes.items()}
    _print_quality(result["quality"], log)
    baseline = (result["drift"]["baseline_edge_cut"] if result["method"] == "placement"
                else result["quality"]["metis"]["edge_cut_fraction"]["unweighted"])

    def write_set(local: str) -> dict[str, Any]:
        os.makedirs(local, exist_ok=True)
        parts, vocab = write_shards(spark, cfg, store, books, local,
                                    cfg.section_hash("partition", "graph"), previous_vocab)
        for node_type, columns in vocab["unseen"].items():
            if vocab["source"] == "previous":
                log(f"partition: kept the previous vocabularies; new {node_type} values encoded "
                    f"as unknown (0): {columns} (refit them and retrain from scratch to learn them)")
            else:
                log(f"partition: {node_type} values first seen after the training window encoded "
                    f"as unknown (0): {columns}")
        np.save(os.path.join(local, "book.npy"), result["book"].astype(np.int32))
        np.save(os.path.join(local, "book_random.npy"), result["random"].astype(np.int32))
        fs.write_text(os.path.join(local, "_config.yaml"), cfg.to_yaml())
        manifest = new_manifest(
            PARTITIONS_KIND, PARTITIONS_FORMAT_VERSION, cfg, ("partition", "graph"),
            num_parts=cfg.partition.num_parts, method=result["method"],
            shard_book=cfg.partition.shard_book,
            graph={"url": graph_url, "created_at": store.manifest.get("created_at"),
                   "config_hash": store.manifest.get("config_hash"), "days": store.days},
            num_nodes=num_nodes, global_offsets=offsets, num_pairs=g["num_pairs"],
            parts=parts, quality=result["quality"], baseline_edge_cut=baseline,
            placement={k: result[k] for k in ("new_nodes", "num_over_cap", "drift") if k in result},
            vocab=vocab, wall_s=round(time.perf_counter() - t0, 2),
            shard_format=f"clickgraph/core/shards.py format_version {fmt.SHARD_FORMAT_VERSION}")
        write_manifest(local, manifest)
        return manifest

    if fs.is_local(out_url):
        with fs.staged_output(out_url) as stage:
            return write_set(stage.removeprefix("file://"))
    local = tempfile.mkdtemp(prefix="clickgraph-partitions-", dir=staging_dir)
    try:
        manifest = write_set(local)
        publish_shard_set(local, out_url)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    log(f"partition: shard set uploaded to {out_url}")
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

    from clickgraph.core.config import ConfigError, load_config, replace
    from spark_jobs.session import get_spark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--num-parts", type=int)
    parser.add_argument("--place-new", action="store_true",
                        help="keep the existing book, place only new nodes (after build-graph --day)")
    parser.add_argument("--refit-vocab", action="store_true",
                        help="fit the attribute vocabularies again instead of keeping the previous "
                             "shard set's (a continued model no longer fits; retrain from scratch)")
    parser.add_argument("--staging-dir", help="local folder, seen by the driver and every executor, "
                                              "where a shard set for a remote paths.partitions is "
                                              "written before the upload (default: the temp folder)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.num_parts is not None:
            cfg = replace(cfg, "partition", num_parts=args.num_parts)
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    run(get_spark(cfg.spark, "partition"), cfg, place_new_nodes=args.place_new,
        refit_vocab=args.refit_vocab, staging_dir=args.staging_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
