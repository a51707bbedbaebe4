"""How low can the remote-lookup share go on the generated dataset? METIS vs an oracle.

The generator (``spark_jobs/generate_logs.py``) plants the structure a partitioner can
find: every user has a taste community, content, brands (and, through their brand,
articles) carry a style. But only ``generate.targeted_feed_share`` of impressions show
content of the user's taste; the rest show content of a uniformly random community, so
even a partition that keeps every community whole cuts about ``1 - 1/K`` of those.

This script measures that floor on a graph store built from generated logs, with the
partition job's own graph (``spark_jobs.partition.load_partition_graph``) and quality
report (``partitioning.quality``: edge cut, remote share of sampled 1- and 2-hop
lookups, balance, same random seed as the job), side by side for:

* ``random``: the job's hash book;
* ``metis``: the job's METIS book (``partition_books``, as ``clickgraph partition``
  computes it);
* ``oracle_community``: the generator's latent community of every user (its community
  before any drift), content, brand and article (its brand's style), recomputed with the
  generator's own ``LatentModel`` for the config's seed and mapped to dense ids through the
  store's id maps; whole communities are dealt to parts, heaviest in training events
  first, to the lightest part. Categories have no community: majority of neighbours;
* ``oracle_users_content``: users and content from the oracle, articles, brands and
  categories each placed in the part holding most of their weighted neighbours;
* ``oracle_refined``: ``oracle_community`` rebalanced to ``partition.imbalance`` and
  boundary-refined on the weighted cut (``partitioning.refine.refine``);
* ``metis_sampling_weights``: METIS on the same graph with each pair weighted by the
  expected number of first-hop lookups of it per training event (``events(u) *
  min(1, fanout / degree(u))`` summed over both ends, plus a small floor so pairs between
  non-seed nodes keep a positive weight): the edge cut METIS minimises is then the
  number of remote first-hop lookups.

It also regenerates every impression with the generator's code (``impressions_df``) to
report the share that was untargeted, the share showing content of another community
than the user's, the share the community oracle puts across parts, and the analytical
bound for any book that balances training events: untargeted impressions draw their
content independently of the user, so a book whose parts hold at most ``(1 + e) / K`` of
the events each puts at least ``1 - (1 + e) / K`` of them across parts (ignoring that
users active on different days see slightly different content pools).

The machine's load average is recorded before and after; timings are not the point here.

Usage::

    .venv/bin/python benchmarks/partition_floor.py --set paths.root=/tmp/pipe2 \\
        --out /tmp/partition_floor.json
    .venv/bin/python benchmarks/partition_floor.py --config conf/local.yaml --num-parts 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from clickgraph.core.config import Config, load_config, replace
from partitioning.base import PartitionResult
from partitioning.graph import PartitionGraph
from partitioning.refine import entries_of_rows
from spark_jobs import store_io

#: generator id formats and latent functions per node type of the graph store
_RAW_ID = {"user": "USER_ID", "content": "CONTENT_ID", "article": "ARTICLE_ID",
           "brand": "BRAND_ID", "category": "CATEGORY_ID"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML config (default: the embedded conf/local.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="section.key=value, e.g. paths.root=/tmp/pipe2")
    parser.add_argument("--graph", help="graph store URL (default: paths.graph)")
    parser.add_argument("--num-parts", type=int, help="parts (default: partition.num_parts)")
    parser.add_argument("--out", help="write the JSON summary to this file")
    parser.add_argument("--json", action="store_true", help="print the JSON summary, not the table")
    parser.add_argument("--no-generator-check", action="store_true",
                        help="skip the check that the logs were generated with this config")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- latent truth


def latent_communities(spark, cfg: Config, store) -> dict[str, np.ndarray]:
    """The generator's community of every node of the store, by dense id.

    Recomputed with :class:`spark_jobs.generate_logs.LatentModel` (a pure function of the
    seed and the generator's entity id) and joined to the store's id maps on the raw id
    the generator wrote.

    Returns:
        Node type -> int64 ``[num_nodes]`` community, ``-1`` for types without one
        (categories) and for store nodes the generator did not make.
    """
    from pyspark.sql import functions as F

    from spark_jobs import generate_logs as gen

    m = gen.LatentModel(cfg.generate)
    g = cfg.generate
    ident = F.col("id")
    expressions = {
        "user": (g.num_users, m.user_community(ident)),
        "content": (g.num_content, m.content_style(ident)),
        "article": (g.num_articles, m.brand_style(m.article_brand(ident))),
        "brand": (g.num_brands, m.brand_style(ident)),
    }
    out = {}
    for node_type in store.node_types:
        community = np.full(store.num_nodes(node_type), -1, dtype=np.int64)
        if node_type in expressions:
            count, expression = expressions[node_type]
            prefix, width = getattr(gen, _RAW_ID[node_type])
            latent = spark.range(count).select(gen._fmt(prefix, width, ident).alias("raw_id"),
                                               expression.cast("long").alias("community"))
            joined = (store_io.read_id_map(spark, store, node_type).join(latent, "raw_id")
                      .select("id", "community").toPandas())
            community[joined["id"].to_numpy()] = joined["community"].to_numpy()
        out[node_type] = community
    return out


def deal_communities(events: np.ndarray, num_parts: int) -> np.ndarray:
    """Whole communities to parts: heaviest first, each to the currently lightest part.

    Args:
        events: float [num_communities] training events of each community's users.
        num_parts: K.

    Returns:
        int64 [num_communities] part of each community.
    """
    part = np.zeros(events.shape[0], dtype=np.int64)
    load = np.zeros(num_parts)
    for community in np.argsort(-events, kind="stable"):
        part[community] = int(np.argmin(load))
        load[part[community]] += events[community]
    return part


def majority_parts(graph: PartitionGraph, book: np.ndarray, nodes: np.ndarray,
                   num_parts: int) -> np.ndarray:
    """Part holding most of each node's edge weight to placed nodes (``book >= 0``).

    Ties and nodes without a placed neighbour go to the lowest part id.

    Returns:
        int64 ``[len(nodes)]``.
    """
    local_row, entry = entries_of_rows(graph.indptr, nodes)
    part = book[graph.indices[entry]]
    placed = part >= 0
    score = np.zeros((nodes.shape[0], num_parts))
    np.add.at(score, (local_row[placed], part[placed]), graph.edge_weight[entry][placed])
    return np.argmax(score, axis=1).astype(np.int64)


def place_by_majority(graph: PartitionGraph, book: np.ndarray, nodes: np.ndarray,
                      num_parts: int, rounds: int = 3) -> np.ndarray:
    """``book`` with ``nodes`` set by :func:`majority_parts`, repeated ``rounds`` times.

    The first round sees only the nodes placed beforehand; later rounds also see the
    other ``nodes`` (articles next to brands and categories, say).
    """
    book = book.copy()
    book[nodes] = -1
    for _ in range(rounds):
        book[nodes] = majority_parts(graph, book, nodes, num_parts)
    return book


def oracle_books(graph: PartitionGraph, g: dict[str, Any], communities: dict[str, np.ndarray],
                 num_parts: int, imbalance: float) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """The oracle books of the module docstring, over the job's global id space.

    Returns:
        name -> ``(book int64 [N], info)``.
    """
    from partitioning.refine import refine

    offsets, num_nodes = g["offsets"], g["num_nodes"]
    global_community = np.full(graph.num_nodes, -1, dtype=np.int64)
    for node_type, community in communities.items():
        global_community[offsets[node_type]:offsets[node_type] + num_nodes[node_type]] = community
    known = global_community >= 0
    num_communities = int(global_community.max()) + 1
    events = np.bincount(global_community[known], weights=graph.vertex_weights[known, 0],
                         minlength=num_communities)
    part_of = deal_communities(events, num_parts)
    info = {"community_part": part_of.tolist(), "community_events": events.tolist()}

    community_book = np.where(known, part_of[np.maximum(global_community, 0)], -1)
    unknown = np.flatnonzero(~known)
    community_book = place_by_majority(graph, community_book, unknown, num_parts)

    def of_types(*types: str) -> np.ndarray:
        return np.concatenate([np.arange(offsets[t], offsets[t] + num_nodes[t]) for t in types
                               if t in offsets])

    users_content = community_book.copy()
    rest = of_types("article", "brand", "category")
    users_content[rest] = -1
    users_content = place_by_majority(graph, users_content, rest, num_parts)

    refined, refine_info = refine(graph, community_book, num_parts, imbalance=imbalance)
    refine_info = {k: v for k, v in refine_info.items() if k != "max_imbalance"}

    def moved(book: np.ndarray) -> dict[str, int]:
        return {"nodes_not_in_oracle_community_part": int(np.count_nonzero(book != community_book))}

    return {"oracle_community": (community_book, info),
            "oracle_users_content": (users_content, {**info, **moved(users_content)}),
            "oracle_refined": (refined, {**info, **refine_info, **moved(refined)})}


def sampling_weight_graph(graph: PartitionGraph, fanout: int, floor: float = 1e-3) -> PartitionGraph:
    """The graph with each pair weighted by its expected first-hop lookups per event.

    A seed ``u`` with ``events(u)`` training events and degree ``d`` looks each neighbour
    up ``events(u) * min(1, fanout / d)`` times; a pair's weight is that summed over its
    two ends, plus ``floor`` times the mean of those weights so no pair weighs zero.
    """
    events = graph.vertex_weights[:, 0]
    degree = np.maximum(graph.degrees(), 1)
    per_lookup = events * np.minimum(1.0, fanout / degree)
    rows = graph.row_of_entry()
    weight = per_lookup[rows] + per_lookup[graph.indices]
    weight = weight + floor * float(weight.mean())
    return dataclasses.replace(graph, edge_weight=weight)


# --------------------------------------------------------------------------- impressions


def impression_mix(spark, cfg: Config, community_part: np.ndarray) -> dict[str, Any]:
    """Regenerate every impression with the generator's code and count what it showed.

    Args:
        spark: the session.
        cfg: the config the logs were generated with.
        community_part: int [num_communities] part of each community under the oracle.

    Returns:
        ``impressions``, ``untargeted_share_planned`` (``1 - targeted_feed_share``),
        ``untargeted_share`` (realised), ``other_community_share`` (content style is not
        the user's community), ``other_taste_share`` (not the user's taste that day,
        after drift), ``oracle_cross_part_share`` (style and user community in
        different parts of the oracle), ``untargeted_cross_part_share`` (same, among
        untargeted impressions).
    """
    from pyspark.sql import functions as F

    from spark_jobs import generate_logs as gen

    g = cfg.generate
    m = gen.LatentModel(g)
    imp = gen.impressions_df(spark, m)
    eid, uid, cid, day = F.col("eid"), F.col("uid"), F.col("cid"), F.col("day")
    parts = F.array(*[F.lit(int(p)) for p in community_part])

    def part_of(community):
        return F.element_at(parts, (community + 1).cast("int"))

    targeted = m.r.u("imp.targeted", eid) < g.targeted_feed_share
    style = m.content_style(cid)
    cross = part_of(style) != part_of(m.user_community(uid))
    row = imp.select(
        F.count(F.lit(1)).alias("impressions"),
        F.avg((~targeted).cast("double")).alias("untargeted_share"),
        F.avg((style != m.user_community(uid)).cast("double")).alias("other_community_share"),
        F.avg((style != m.user_taste(uid, day)).cast("double")).alias("other_taste_share"),
        F.avg(cross.cast("double")).alias("oracle_cross_part_share"),
        (F.sum((cross & ~targeted).cast("double")) / F.sum((~targeted).cast("double")))
        .alias("untargeted_cross_part_share"),
    ).collect()[0].asDict()
    row["impressions"] = int(row["impressions"])
    row["untargeted_share_planned"] = 1.0 - g.targeted_feed_share
    return row


def balanced_book_bound(untargeted_share: float, num_parts: int, imbalance: float) -> float:
    """Least cross-part share of impressions for a book within the event imbalance.

    Untargeted impressions pick content independently of the user: with ``m_p`` the
    share of that content in part ``p`` and ``e_p <= (1 + imbalance) / K`` the share of
    events owned by part ``p``, the cross share is ``1 - sum_p e_p m_p >= 1 - (1 +
    imbalance) / K``. Targeted impressions can all be kept local.
    """
    return untargeted_share * max(0.0, 1.0 - (1.0 + imbalance) / num_parts)


# --------------------------------------------------------------------------- the run


def _as_result(book: np.ndarray, num_parts: int, name: str, wall_s: float,
               info: dict[str, Any]) -> PartitionResult:
    return PartitionResult(assignment=np.asarray(book, dtype=np.int32), num_parts=num_parts,
                           algorithm=name, params={}, wall_s=wall_s, peak_rss_bytes=0,
                           peak_rss_delta_bytes=0, memory_probe="not measured", info=info)


def check_generator_config(cfg: Config) -> None:
    """Refuse logs generated with another ``generate`` section: the oracle would be wrong."""
    from clickgraph.core import fs

    url = fs.join(cfg.paths.stage("logs"), fs.MANIFEST_NAME)
    if not fs.exists(url):
        raise SystemExit(f"{url} not found: cannot check the logs were generated with this config "
                         "(pass --no-generator-check to skip)")
    logs = fs.read_json(url)
    if logs.get("config_hash") != cfg.section_hash("generate"):
        raise SystemExit(f"{url}: the logs' generate config_hash {logs.get('config_hash')} is not "
                         f"this config's {cfg.section_hash('generate')}; pass the config the logs "
                         "were generated with")


def run(cfg: Config, graph_url: str | None = None, check_generator: bool = True,
        log=print) -> dict[str, Any]:
    """Partition the store every way listed in the module docstring; every figure as JSON."""
    from clickgraph.core.graph_store import open_graph_store
    from partitioning.metis import MetisPartitioner
    from spark_jobs import partition
    from spark_jobs.session import get_spark

    load_before = os.getloadavg()
    started = time.perf_counter()
    if check_generator:
        check_generator_config(cfg)
    p = cfg.partition
    graph_url = graph_url or cfg.paths.stage("graph")
    spark = get_spark(cfg.spark, "partition_floor")
    store = open_graph_store(graph_url)
    g = partition.load_partition_graph(spark, cfg, store)
    graph = g["graph"]
    log(f"graph: {graph.num_nodes:,} nodes, {graph.num_edges:,} pairs ({g['num_pairs']:,} in Spark)")
    job = partition.partition_books(cfg, g)
    reports = {"random": job["quality"]["random"], "metis": job["quality"]["metis"]}

    communities = latent_communities(spark, cfg, store)
    for node_type, community in communities.items():
        if node_type != "category" and (community < 0).any():
            log(f"warning: {int((community < 0).sum())} {node_type} nodes have no latent community")
    books = oracle_books(graph, g, communities, p.num_parts, p.imbalance)
    infos = {}
    for name, (book, info) in books.items():
        reports[name] = partition.quality_of(cfg, g, _as_result(book, p.num_parts, name, 0.0, info))
        infos[name] = info

    t0 = time.perf_counter()
    weighted = sampling_weight_graph(graph, int(p.quality_fanouts[0]))
    metis = MetisPartitioner(ufactor=int(round(p.imbalance * 1000)), seed=p.seed).partition(
        weighted, p.num_parts)
    result = dataclasses.replace(metis, algorithm="metis_sampling_weights",
                                 wall_s=time.perf_counter() - t0)
    reports["metis_sampling_weights"] = partition.quality_of(cfg, g, result)

    mix = impression_mix(spark, cfg, np.asarray(infos["oracle_community"]["community_part"]))
    mix["store_impressions"] = int(store.relations[partition.IMPRESSIONS].count)
    mix["balanced_book_bound"] = balanced_book_bound(mix["untargeted_share"], p.num_parts,
                                                     p.imbalance)
    mix["balanced_book_bound_planned"] = balanced_book_bound(mix["untargeted_share_planned"],
                                                             p.num_parts, p.imbalance)
    random_1hop = reports["random"]["remote_fraction_1hop"]
    return {
        "benchmark": "partition_floor",
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "wall_s": time.perf_counter() - started,
        "graph": {"url": graph_url, "created_at": store.manifest.get("created_at"),
                  "config_hash": store.manifest.get("config_hash"), "num_nodes": g["num_nodes"],
                  "num_pairs": int(g["num_pairs"]), "method": job["method"]},
        "params": {"num_parts": p.num_parts, "imbalance": p.imbalance, "seed": p.seed,
                   "fanouts": list(p.quality_fanouts), "num_seeds": p.quality_seeds,
                   "generate_seed": cfg.generate.seed,
                   "num_communities": cfg.generate.num_communities,
                   "targeted_feed_share": cfg.generate.targeted_feed_share},
        "impressions": mix,
        "oracle": infos,
        "results": reports,
        "remote_1hop_over_random": {name: r["remote_fraction_1hop"] / random_1hop
                                    for name, r in reports.items()},
    }


def format_table(summary: dict[str, Any]) -> str:
    """The main figures, one row per book."""
    params, mix = summary["params"], summary["impressions"]
    lines = [
        f"graph {summary['graph']['url']} ({summary['graph']['num_pairs']:,} pairs), "
        f"{params['num_parts']} parts, imbalance {params['imbalance']}, fanouts {params['fanouts']}, "
        f"{params['num_seeds']:,} seeds",
        f"load average before/after: {summary['machine']['load_average_before']} / "
        f"{summary['machine']['load_average_after']} on {summary['machine']['cpus']} CPUs",
        f"{'book':<24}{'cut':>8}{'cut(w)':>8}{'remote1':>9}{'/random':>9}{'remote2':>9}"
        f"{'bal ev':>8}{'bal edges':>10}{'bal vw1':>9}",
    ]
    for name, r in summary["results"].items():
        lines.append(
            f"{name:<24}{r['edge_cut_fraction']['unweighted']:>8.4f}"
            f"{r['edge_cut_fraction']['weighted']:>8.4f}{r['remote_fraction_1hop']:>9.4f}"
            f"{summary['remote_1hop_over_random'][name]:>9.3f}{r['remote_fraction_2hop']:>9.4f}"
            f"{r['balance']['training_events']:>8.3f}{r['balance']['edges']:>10.3f}"
            f"{r['balance'].get('vertex_weight/1', float('nan')):>9.3f}")
    lines.append(
        f"impressions regenerated {mix['impressions']:,} (store {mix['store_impressions']:,}): "
        f"untargeted {mix['untargeted_share']:.4f} "
        f"(planned {mix['untargeted_share_planned']:.2f}), other community "
        f"{mix['other_community_share']:.4f}, other taste {mix['other_taste_share']:.4f}, "
        f"across the oracle's parts {mix['oracle_cross_part_share']:.4f} "
        f"(untargeted ones {mix['untargeted_cross_part_share']:.4f}); any event-balanced book "
        f">= {mix['balanced_book_bound']:.4f} across parts")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.num_parts is not None:
        cfg = replace(cfg, "partition", num_parts=args.num_parts)
    summary = run(cfg, args.graph, check_generator=not args.no_generator_check,
                  log=lambda *a: print(*a, file=sys.stderr))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(summary, handle, indent=2, default=str)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
