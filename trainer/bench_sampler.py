"""Throughput of the temporal neighbour sampler on a synthetic homepage-like graph.

Builds a heterogeneous temporal graph (users, content, articles, brands, categories;
five event relations plus their reverses; Zipf-like degrees on both ends; edge times
uniform over 30 days), then times :meth:`TemporalNeighborSampler.sample` for batches of
seed impressions ``(user, impression time)`` drawn from the impression edges, dedup and
relabel included. The figure is sampled edges (all hops, all relations) per second of
wall time, divided by the number of threads.

When PyG's own ``NeighborSampler`` can run (it needs ``pyg-lib`` or ``torch-sparse``) it
is timed on the same graph without time as a peer; otherwise the peer is reported as
unavailable.

Usage::

    clickgraph bench sampler --json
    clickgraph bench sampler --num-nodes 100000 --num-edges 2000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Sequence

import torch

from trainer.graph import EdgeType, TemporalCSR, TemporalHeteroGraph, add_reverse
from trainer.sampler import Strategy, TemporalNeighborSampler

NODE_SHARE = {"user": 0.6, "content": 0.3, "article": 0.06, "brand": 0.03,
              "category": 0.01}
EDGE_SHARE: dict[EdgeType, float] = {
    ("user", "impressed", "content"): 0.6,
    ("user", "clicked", "content"): 0.15,
    ("content", "mentions", "article"): 0.1,
    ("content", "of_brand", "brand"): 0.1,
    ("content", "in_category", "category"): 0.05,
}
RELATION_WEIGHT = {"impressed": 1.0, "clicked": 3.0, "mentions": 1.0, "of_brand": 1.0,
                   "in_category": 0.5}
TIME_START = 1_700_000_000
TIME_WINDOW_S = 30 * 86_400
ZIPF_EXPONENT = 0.9


def _zipf_ids(num_nodes: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """Node ids whose frequencies follow rank^-ZIPF_EXPONENT, ranks randomly permuted."""
    weight = torch.arange(1, num_nodes + 1, dtype=torch.float64).pow_(-ZIPF_EXPONENT)
    cdf = torch.cumsum(weight, 0)
    cdf /= cdf[-1].item()
    rank = torch.searchsorted(cdf, torch.rand(count, generator=generator,
                                              dtype=torch.float64))
    rank.clamp_(max=num_nodes - 1)
    return torch.randperm(num_nodes, generator=generator)[rank]


def build_synthetic_graph(num_nodes: int, num_edges: int, seed: int = 0
                          ) -> TemporalHeteroGraph:
    """Builds the benchmark graph.

    Args:
        num_nodes: Total nodes over all types (split by ``NODE_SHARE``).
        num_edges: Total forward (event) edges, split by ``EDGE_SHARE``; the reverse
            relations double the number of stored CSR edges.
        seed: Random seed.

    Returns:
        The graph with forward and reverse relations.
    """
    generator = torch.Generator().manual_seed(seed)
    counts = {node_type: max(1, int(share * num_nodes))
              for node_type, share in NODE_SHARE.items()}
    csr = {}
    for edge_type, share in EDGE_SHARE.items():
        src_type, relation, dst_type = edge_type
        size = int(share * num_edges)
        src = _zipf_ids(counts[src_type], size, generator)
        dst = _zipf_ids(counts[dst_type], size, generator)
        edge_time = TIME_START + torch.randint(0, TIME_WINDOW_S, (size,),
                                               generator=generator)
        csr[edge_type] = TemporalCSR.from_edges(src, dst, edge_time, counts[dst_type],
                                                weight=RELATION_WEIGHT[relation])
        del src, dst, edge_time
    return add_reverse(TemporalHeteroGraph(num_nodes=counts, csr=csr))


def _seed_impressions(graph: TemporalHeteroGraph, batch_size: int,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random impression events as seeds: ``(user ids, impression times)``."""
    impressions = graph.csr[("user", "impressed", "content")]
    position = torch.randint(0, impressions.num_edges, (batch_size,), generator=generator,
                             device=generator.device)
    position = position.to(impressions.device)
    return impressions.neighbor[position], impressions.edge_time[position]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pyg_peer(graph: TemporalHeteroGraph, fanouts: Sequence[int], batch_size: int,
              num_batches: int, seed: int) -> dict[str, object]:
    """Times PyG's (non-temporal) NeighborSampler on the same graph, if it can run."""
    import torch_geometric.typing as pyg_typing

    if not (pyg_typing.WITH_PYG_LIB or pyg_typing.WITH_TORCH_SPARSE):
        return {"status": "unavailable: neither pyg-lib nor torch-sparse is importable"}
    from torch_geometric.data import HeteroData
    from torch_geometric.sampler import NeighborSampler, NodeSamplerInput

    data = HeteroData()
    for node_type, count in graph.num_nodes.items():
        data[node_type].num_nodes = count
    for edge_type, csr in graph.csr.items():
        data[edge_type].edge_index = torch.stack([csr.neighbor, csr.edge_dst()])
    sampler = NeighborSampler(data, num_neighbors=list(fanouts))
    generator = torch.Generator().manual_seed(seed)
    seconds, edges = [], []
    for batch in range(num_batches + 2):
        users, _ = _seed_impressions(graph, batch_size, generator)
        begin = time.perf_counter()
        out = sampler.sample_from_nodes(
            NodeSamplerInput(input_id=None, node=users, input_type="user"))
        elapsed = time.perf_counter() - begin
        if batch >= 2:
            seconds.append(elapsed)
            edges.append(sum(row.numel() for row in out.row.values()))
    median = statistics.median(seconds)
    return {"status": "ok", "sampled_edges_per_batch": statistics.median(edges),
            "batch_seconds": median,
            "sampled_edges_per_s": statistics.median(edges) / median}


def run_sampler_bench(num_nodes: int = 1_000_000, num_edges: int = 20_000_000,
                      fanouts: Sequence[int] = (15, 10, 5), batch_size: int = 1024,
                      device: str = "cpu", threads: int = 1, seed: int = 0,
                      strategy: Strategy = "uniform", replace: bool = False,
                      num_batches: int = 7, warmup: int = 2,
                      with_peer: bool = True) -> dict[str, object]:
    """Builds the synthetic graph and times the sampler.

    Args:
        num_nodes: Total nodes.
        num_edges: Forward edges (stored CSR edges are twice this, with reverses).
        fanouts: Fanout per hop, same for every relation.
        batch_size: Seed impressions per batch.
        device: ``"cpu"`` or ``"cuda"``.
        threads: ``torch.set_num_threads`` during timing.
        seed: Seeds the graph, the seed batches and the sampler's generator.
        strategy: Sampler strategy.
        replace: Uniform sampling with replacement.
        num_batches: Timed batches (the median is reported).
        warmup: Untimed batches first.
        with_peer: Also try PyG's NeighborSampler.

    Returns:
        Figures, among them ``sampled_edges_per_s_per_core`` and ``batches_per_s``.
    """
    build_begin = time.perf_counter()
    graph = build_synthetic_graph(num_nodes, num_edges, seed)
    build_seconds = time.perf_counter() - build_begin
    target = torch.device(device)
    graph_on_device = graph.to(target)
    index_begin = time.perf_counter()
    sampler = TemporalNeighborSampler(graph_on_device, list(fanouts), strategy=strategy,
                                      replace=replace)
    index_seconds = time.perf_counter() - index_begin

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seed_generator = torch.Generator(device=target).manual_seed(seed + 1)
        sample_generator = torch.Generator(device=target).manual_seed(seed + 2)
        seconds, cpu_seconds, edges, nodes = [], [], [], []
        for batch in range(warmup + num_batches):
            users, seed_time = _seed_impressions(graph_on_device, batch_size,
                                                 seed_generator)
            _synchronize(target)
            begin, cpu_begin = time.perf_counter(), time.process_time()
            sample = sampler.sample({"user": (users, seed_time)},
                                    generator=sample_generator)
            _synchronize(target)
            elapsed = time.perf_counter() - begin
            if batch >= warmup:
                seconds.append(elapsed)
                cpu_seconds.append(time.process_time() - cpu_begin)
                edges.append(sample.num_edges)
                nodes.append(sum(node.numel() for node in sample.node.values()))
        peer = ({"status": "skipped"} if not with_peer or target.type != "cpu"
                else _pyg_peer(graph, fanouts, batch_size, num_batches, seed))
    finally:
        torch.set_num_threads(previous_threads)

    rates = [count / elapsed for count, elapsed in zip(edges, seconds, strict=True)]
    median_seconds = statistics.median(seconds)
    return {
        "device": str(target),
        "threads": threads,
        "strategy": strategy,
        "replace": replace,
        "fanouts": list(fanouts),
        "batch_size": batch_size,
        "num_nodes": sum(graph.num_nodes.values()),
        "num_forward_edges": sum(csr.num_edges for et, csr in graph.csr.items()
                                 if not et[1].startswith("rev_")),
        "num_csr_edges": sum(csr.num_edges for csr in graph.csr.values()),
        "num_relations": len(graph.csr),
        "graph_build_seconds": round(build_seconds, 2),
        "sampler_index_seconds": round(index_seconds, 2),
        "sampled_edges_per_batch": statistics.median(edges),
        "sampled_nodes_per_batch": statistics.median(nodes),
        "batch_seconds_median": median_seconds,
        "batches_per_s": 1.0 / median_seconds,
        "sampled_edges_per_s": statistics.median(rates),
        "sampled_edges_per_s_per_core": statistics.median(rates) / threads,
        # CPU seconds of this process: immune to waiting for a busy machine's cores.
        "sampled_edges_per_cpu_s": statistics.median(
            count / cpu for count, cpu in zip(edges, cpu_seconds, strict=True)),
        "load_average_1min": os.getloadavg()[0],
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "pyg_neighbor_sampler": peer,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-nodes", type=int, default=1_000_000)
    parser.add_argument("--num-edges", type=int, default=20_000_000,
                        help="forward edges; reverses double the stored edges")
    parser.add_argument("--fanouts", type=int, nargs="+", default=[15, 10, 5])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", choices=["uniform", "most_recent"], default="uniform")
    parser.add_argument("--replace", action="store_true")
    parser.add_argument("--num-batches", type=int, default=7)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    result = run_sampler_bench(
        num_nodes=args.num_nodes, num_edges=args.num_edges, fanouts=args.fanouts,
        batch_size=args.batch_size, device=args.device, threads=args.threads,
        seed=args.seed, strategy=args.strategy, replace=args.replace,
        num_batches=args.num_batches, with_peer=not args.no_peer)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, value in result.items():
            print(f"{name:32s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
