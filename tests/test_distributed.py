"""Partition shards, cross-partition temporal sampling and lockstep DDP training.

The distributed tests run two gloo ranks on one CPU machine (spawned processes, a free
port, one torch thread each) and compare what the ranks produce with the single-process
sampler on the unpartitioned graph, in the parent process. All scenarios run in one pair
of processes per module (a fixture), because starting two torch + PyG processes costs
more than the scenarios; every test then checks one property of the recorded results.

Graphs are random and small (a handful of nodes per type, times drawn from a narrow range
so ties between edge and seed times are frequent), rebuilt from an integer seed in the
workers and in the parent, split over two parts by a random partition book (some cases
leave one part without any node of a type). The two ranks' seeds use disjoint times
(rank 0 even, rank 1 odd) so that their trees never merge in a joint sample.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.test_sampler import _chi_square_p_value, check_invariants
from trainer.graph import EdgeType, TemporalCSR, TemporalHeteroGraph, add_reverse
from trainer.model import NodeFeatures
from trainer.sampler import SampledSubgraph, TemporalNeighborSampler
from trainer.shard import load_shard, save_shard, split_graph

FORWARD: list[EdgeType] = [("user", "impressed", "content"), ("user", "clicked", "content"),
                           ("content", "of_brand", "brand")]
IMPRESSED: EdgeType = ("user", "impressed", "content")
REV_IMPRESSED: EdgeType = ("content", "rev_impressed", "user")
MODES = [("most_recent", False), ("uniform", False), ("uniform", True)]
NUM_CASES = 14
BASE_TIME = 1_700_000_000
WORLD_SIZE = 2


# ------------------------------------------------------------------------ graph builders


@dataclass(frozen=True)
class Case:
    """One random graph, its features, a two-part partition book and per-rank seeds."""

    graph: TemporalHeteroGraph
    features: dict[str, NodeFeatures]
    book: dict[str, torch.Tensor]
    seeds: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]
    fanouts: dict[EdgeType, list[int]]


def random_case(case_seed: int) -> Case:
    """A random temporal hetero graph (3 forward relations + reverses) and seeds.

    Every fifth case puts all brands on part 1 (part 0 owns none); case 3 mod 7 gives
    rank 1 no seeds at all and case 4 mod 7 gives rank 0 empty seed tensors.
    """
    gen = torch.Generator().manual_seed(case_seed)

    def randint(low: int, high: int, size: tuple[int, ...] = ()) -> torch.Tensor:
        return torch.randint(low, high, size, generator=gen)

    num_nodes = {"user": int(randint(3, 9)), "content": int(randint(3, 8)),
                 "brand": int(randint(1, 4))}
    csr = {}
    for src_type, relation, dst_type in FORWARD:
        num_edges = int(randint(0, 40))
        src = randint(0, num_nodes[src_type], (num_edges,))
        dst = randint(0, num_nodes[dst_type], (num_edges,))
        edge_time = BASE_TIME + randint(0, 12, (num_edges,))
        weight = torch.rand(num_edges, generator=gen)
        csr[(src_type, relation, dst_type)] = TemporalCSR.from_edges(
            src, dst, edge_time, num_nodes[dst_type], weight=float(randint(1, 4)),
            edge_attr={"weight": weight})
    graph = add_reverse(TemporalHeteroGraph(num_nodes=num_nodes, csr=csr))
    features = {
        "user": NodeFeatures(randint(0, 5, (num_nodes["user"], 2)), [5, 300],
                             created_time=BASE_TIME - randint(0, 1000, (num_nodes["user"],))),
        "content": NodeFeatures(randint(0, 40000, (num_nodes["content"], 1)), [40000],
                                created_time=BASE_TIME - randint(0, 9, (num_nodes["content"],))),
        "brand": NodeFeatures(randint(0, 3, (num_nodes["brand"], 1)), [3],
                              learn_id_embedding=True)}
    book = {t: randint(0, WORLD_SIZE, (n,)).to(torch.int32) for t, n in num_nodes.items()}
    if case_seed % 5 == 0:
        book["brand"] = torch.ones(num_nodes["brand"], dtype=torch.int32)
    seeds = []
    for rank in range(WORLD_SIZE):
        per_rank = {}
        types = [["user"], ["user", "content"], ["brand", "content"]][int(randint(0, 3))]
        for node_type in types:
            count = int(randint(1, 6))
            node = randint(0, num_nodes[node_type], (count,))
            seed_time = BASE_TIME + 2 * randint(0, 8, (count,)) + rank
            per_rank[node_type] = (node, seed_time)
        if case_seed % 7 == 3 and rank == 1:
            per_rank = {}
        if case_seed % 7 == 4 and rank == 0:
            empty = torch.empty(0, dtype=torch.int64)
            per_rank = {"user": (empty, empty)}
        seeds.append(per_rank)
    num_hops = int(randint(1, 4))
    fanouts = {et: randint(-1, 4, (num_hops,)).tolist() for et in graph.edge_types}
    return Case(graph, features, book, seeds, fanouts)


def star_case() -> Case:
    """Hand-built graph whose 2-hop uniform sample has a law computable by hand.

    User 0 (part 0) impressed contents 0..3 at 10, 20, 30, 40; the other impressions
    are contents' earlier ones: content 0 by user 1; content 1 by users 2, 3; content 2
    by user 4; content 3 by users 5, 1. Contents 0, 1 live on part 1, contents 2, 3 on
    part 0; users 1, 3, 5 on part 1. Every seed is user 0 at a time after every edge, so
    hop 1 draws a uniform 2-subset of its 4 contents and hop 2 one uniform impresser of
    each (user 0 included): P = 1/6 * 1/deg(a) * 1/deg(b).
    """
    impressions = [(0, 0, 10), (0, 1, 20), (0, 2, 30), (0, 3, 40), (1, 0, 5), (2, 1, 5),
                   (3, 1, 6), (4, 2, 7), (5, 3, 8), (1, 3, 9)]
    src, dst, edge_time = (torch.tensor(column) for column in zip(*impressions, strict=True))
    num_nodes = {"user": 6, "content": 4}
    graph = add_reverse(TemporalHeteroGraph(num_nodes, {IMPRESSED: TemporalCSR.from_edges(
        src, dst, edge_time, 4, edge_attr={"weight": torch.ones(len(impressions))})}))
    features = {t: NodeFeatures(torch.zeros((n, 1), dtype=torch.int64), [2])
                for t, n in num_nodes.items()}
    book = {"user": torch.tensor([0, 1, 0, 1, 0, 1], dtype=torch.int32),
            "content": torch.tensor([1, 1, 0, 0], dtype=torch.int32)}
    return Case(graph, features, book, [], {})


STAR_DEGREE = {0: 2, 1: 3, 2: 2, 3: 3}  # visible impressers of each content
STAR_SEEDS_PER_RANK = 600


def star_seeds(rank: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    seed_time = 1000 + 2 * torch.arange(STAR_SEEDS_PER_RANK) + rank
    return {"user": (torch.zeros(STAR_SEEDS_PER_RANK, dtype=torch.int64), seed_time)}


# ------------------------------------------------------------------------ rank launcher


def _rank_entry(fn, rank: int, world_size: int, port: int, out_dir: str, args: tuple) -> None:
    """Body of one spawned rank: join the group, run ``fn``, save what it returns."""
    torch.set_num_threads(1)
    from trainer.distributed import init_process_group

    init_process_group(rank, world_size, "127.0.0.1", port, backend="gloo", timeout_s=60)
    import torch.distributed as dist

    try:
        result = fn(rank, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:
        Path(out_dir, f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def run_ranks(fn, *args, world_size: int = WORLD_SIZE, timeout_s: float = 120.0,
              may_die: tuple[int, ...] = ()) -> list:
    """Runs ``fn(rank, *args)`` on ``world_size`` gloo ranks; returns their results.

    Fails the test (and kills the ranks it started) if a rank raises or they are not
    done within ``timeout_s``: a hang is a failure, not a stuck test run. The ranks in
    ``may_die`` may end without a result (their result is then ``None``), e.g. a rank
    whose death the test plants.
    """
    import multiprocessing

    from trainer.distributed import find_free_port

    context = multiprocessing.get_context("spawn")
    out_dir = tempfile.mkdtemp(prefix="clickgraph-dist-")
    port = find_free_port()
    processes = [context.Process(target=_rank_entry,
                                 args=(fn, rank, world_size, port, out_dir, args))
                 for rank in range(world_size)]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout_s
    for process in processes:
        process.join(max(deadline - time.monotonic(), 0.0))
    hung = [rank for rank, process in enumerate(processes) if process.is_alive()]
    for rank in hung:
        processes[rank].kill()
        processes[rank].join()
    errors = [Path(out_dir, f"rank{rank}.err").read_text() for rank in range(world_size)
              if Path(out_dir, f"rank{rank}.err").exists()]
    if errors or hung:
        pytest.fail(f"ranks {hung} did not finish in {timeout_s} s; errors:\n"
                    + "\n".join(errors))
    if any(process.exitcode != 0 for rank, process in enumerate(processes)
           if rank not in may_die):
        pytest.fail(f"rank exit codes {[p.exitcode for p in processes]}")
    return [torch.load(os.path.join(out_dir, f"rank{rank}.pt"), weights_only=False)
            if processes[rank].exitcode == 0 else None for rank in range(world_size)]


# ------------------------------------------------------------------ worker scenarios


def sampling_scenarios(rank: int) -> dict:
    """Every sampling scenario on this rank; the parent checks the outputs."""
    from trainer.dist_sampler import DistTemporalSampler
    from trainer.distributed import ByteCounter

    random_cases = []
    for case_seed in range(NUM_CASES):
        case = random_case(case_seed)
        shard = split_graph(case.graph, case.features, case.book, num_parts=WORLD_SIZE)[rank]
        for strategy, replace in MODES:
            counter = ByteCounter()
            sampler = DistTemporalSampler(shard, case.fanouts, strategy, replace,
                                          counter=counter)
            generator = torch.Generator().manual_seed(100 * case_seed + rank)
            out = sampler.sample(case.seeds[rank], generator)
            features = sampler.fetch_features(out)
            random_cases.append({"case": case_seed, "strategy": strategy, "replace": replace,
                                 "out": out, "features": features,
                                 "bytes": dict(counter.as_dict())})
            empty = (torch.empty(0, dtype=torch.int64),) * 2
            random_cases[-1]["counts"] = {
                node_type: sampler.activity_counts(node_type, *case.seeds[rank].get(node_type, empty))
                for node_type in sorted(case.graph.num_nodes)}
            # All types in one pair of exchanges (what a training step does).
            random_cases[-1]["counts_together"] = sampler.activity_counts_of(
                {node_type: case.seeds[rank].get(node_type, empty)
                 for node_type in sorted(case.graph.num_nodes)})
        # Weighted draws (train.weighted_sampling) over the random per-edge weights.
        counter = ByteCounter()
        weighted = DistTemporalSampler(shard, case.fanouts, "uniform", weighted=True,
                                       counter=counter)
        out = weighted.sample(case.seeds[rank], torch.Generator().manual_seed(case_seed))
        random_cases.append({"case": case_seed, "strategy": "weighted", "replace": False,
                             "out": out, "bytes": dict(counter.as_dict())})

    star = star_case()
    shard = split_graph(star.graph, star.features, star.book)[rank]
    no_draws = {et: [0, 0] for et in star.graph.edge_types}
    two_hop = DistTemporalSampler(shard, no_draws | {REV_IMPRESSED: [2, 0], IMPRESSED: [0, 1]},
                                  "uniform")
    star_two_hop = two_hop.sample(star_seeds(rank), torch.Generator().manual_seed(7 + rank))
    with_replacement = DistTemporalSampler(
        shard, {et: [0] for et in star.graph.edge_types} | {REV_IMPRESSED: [3]}, "uniform",
        replace=True)
    star_replace = with_replacement.sample(star_seeds(rank),
                                           torch.Generator().manual_seed(11 + rank))

    # Traffic when every node lives on part 0 and only rank 0 has seeds: framing only,
    # whatever the batch size; against the same batches on a real split.
    case = random_case(1)
    traffic = {}
    for name, book in (("all_on_part_0", {t: torch.zeros_like(b) for t, b in case.book.items()}),
                       ("split", case.book)):
        shard = split_graph(case.graph, case.features, book, num_parts=WORLD_SIZE)[rank]
        for num_seeds in (1, 30):
            counter = ByteCounter()
            sampler = DistTemporalSampler(shard, [2, 2], "most_recent", counter=counter)
            seeds = {}
            if rank == 0:
                node = torch.arange(num_seeds) % case.graph.num_nodes["user"]
                seeds = {"user": (node, BASE_TIME + 20 + torch.arange(num_seeds))}
            sampler.fetch_features(sampler.sample(seeds))
            traffic[(name, num_seeds)] = counter.total_sent + counter.total_received
    # Misconfigured ranks: every rank must raise (not one raise and one hang).
    errors = {}
    case = random_case(2)
    shards = split_graph(case.graph, case.features, case.book, num_parts=WORLD_SIZE)
    for name, shard, fanouts in (("swapped_parts", shards[1 - rank], [1]),
                                 ("different_fanouts", shards[rank], [1 + rank])):
        try:
            DistTemporalSampler(shard, fanouts, "most_recent")
            errors[name] = None
        except ValueError as error:
            errors[name] = str(error)
    return {"random": random_cases, "star_two_hop": star_two_hop,
            "star_replace": star_replace, "traffic": traffic, "errors": errors}


def training_scenarios(rank: int) -> dict:
    """Short DDP runs: unequal events per part, no events at all on rank 1, and the pair
    objective with unequal events."""
    import dataclasses

    from trainer.dist_train import owned_impressions, train_worker

    graph, features, impressions, content_created, books = training_inputs()
    cfg = training_config()
    out = {}
    for name, book in books.items():
        shard = split_graph(graph, features, book, num_parts=WORLD_SIZE)[rank]
        out[name] = train_worker(rank, WORLD_SIZE, shard, cfg,
                                 owned_impressions(impressions, shard), content_created)
    # the pair objective (train.random_negative_loss: pair) on the unequal book
    shard = split_graph(graph, features, books["unequal"], num_parts=WORLD_SIZE)[rank]
    out["unequal_pair"] = train_worker(
        rank, WORLD_SIZE, shard, dataclasses.replace(cfg, random_negative_loss="pair"),
        owned_impressions(impressions, shard), content_created)
    return out


# --------------------------------------------------------------------- training inputs


def training_inputs():
    """A small click graph, its impressions and two partition books.

    ``unequal``: users 0-8 on part 0 and 9-11 on part 1 (about 3x fewer events on rank
    1); ``rank1_empty``: part 1 owns only user 11, who has no impression.
    """
    from trainer.data import Impressions

    gen = torch.Generator().manual_seed(0)
    num_nodes = {"user": 12, "content": 9, "brand": 3}
    t0 = BASE_TIME

    def rel(n_src: int, n_dst: int, n_edges: int, t_low: int, t_high: int):
        return (torch.randint(n_src, (n_edges,), generator=gen),
                torch.randint(n_dst, (n_edges,), generator=gen),
                torch.randint(t_low, t_high, (n_edges,), generator=gen))

    edges = {IMPRESSED: rel(12, 9, 200, t0, t0 + 1000),
             ("user", "clicked", "content"): rel(12, 9, 60, t0, t0 + 1000),
             ("content", "of_brand", "brand"): rel(9, 3, 9, 0, 1)}
    csr = {et: TemporalCSR.from_edges(s, d, t, num_nodes[et[2]],
                                      edge_attr={"weight": torch.rand(len(s), generator=gen)})
           for et, (s, d, t) in edges.items()}
    graph = add_reverse(TemporalHeteroGraph(num_nodes=num_nodes, csr=csr))
    features = {
        "user": NodeFeatures(torch.randint(1, 4, (12, 2), generator=gen), [4, 4],
                             created_time=torch.full((12,), t0 - 10)),
        "content": NodeFeatures(torch.randint(1, 3, (9, 1), generator=gen), [3],
                                created_time=torch.full((9,), t0 - 10)),
        "brand": NodeFeatures(torch.zeros((3, 0), dtype=torch.int64), [],
                              learn_id_embedding=True)}
    num_events = 40
    impressions = Impressions(
        user=torch.randint(11, (num_events,), generator=gen),  # user 11: no impression
        content=torch.randint(9, (num_events,), generator=gen),
        time=t0 + 500 + torch.randint(400, (num_events,), generator=gen),
        position=torch.arange(num_events) % 5,
        clicked=(torch.arange(num_events) % 3 == 0).float())
    content_created = torch.full((9,), t0 - 10)
    unequal = {"user": (torch.arange(12) >= 9).to(torch.int32),
               "content": (torch.arange(9) % 2).to(torch.int32),
               "brand": torch.tensor([0, 1, 1], dtype=torch.int32)}
    rank1_empty = dict(unequal, user=(torch.arange(12) == 11).to(torch.int32))
    return graph, features, impressions, content_created, {"unequal": unequal,
                                                           "rank1_empty": rank1_empty}


def training_config():
    import dataclasses

    from clickgraph.core.config import load_config

    cfg = load_config(None, ["train.fanouts=[3, 2]", "train.relation_fanouts={}",
                             "train.model.hidden_dim=16", "train.model.time_dim=8",
                             "train.batch_size=4", "train.epochs=2",
                             "train.strategy=uniform", "train.random_negative_ratio=0.5",
                             "train.learning_rate=0.01"]).train
    return dataclasses.replace(cfg, max_train_events=0)


# ----------------------------------------------------------------------- comparisons


def _single(case: Case, rank: int, strategy: str = "most_recent", replace: bool = False,
            seed: int = 0) -> SampledSubgraph:
    sampler = TemporalNeighborSampler(case.graph, case.fanouts, strategy=strategy,
                                      replace=replace)
    return sampler.sample(case.seeds[rank], generator=torch.Generator().manual_seed(seed))


def assert_same_subgraph(actual: SampledSubgraph, expected: SampledSubgraph) -> None:
    """Tensor-for-tensor equality of two samples (every field, every type)."""
    for name in ("node", "node_time", "seed_local", "edge_index", "edge_id", "edge_time",
                 "edge_delta_t", "edge_weight"):
        got, want = getattr(actual, name), getattr(expected, name)
        assert set(got) == set(want), name
        for key in want:
            assert torch.equal(got[key], want[key]), (name, key, got[key], want[key])
    assert actual.num_sampled_nodes == expected.num_sampled_nodes
    assert actual.num_sampled_edges == expected.num_sampled_edges
    for edge_type, attrs in expected.edge_attr.items():
        assert set(actual.edge_attr[edge_type]) == set(attrs)
        for name, value in attrs.items():
            assert torch.equal(actual.edge_attr[edge_type][name], value), (edge_type, name)


def edge_set(out: SampledSubgraph) -> set[tuple]:
    """Edges as ``(relation, hop, dst id, root time, src id, edge time, edge id)``."""
    rows = set()
    for edge_type, edge_index in out.edge_index.items():
        src_type, _, dst_type = edge_type
        hops = [hop + 1 for hop, count in enumerate(out.num_sampled_edges[edge_type])
                for _ in range(count)]
        for (src, dst), hop, edge_time, edge_id in zip(
                edge_index.t().tolist(), hops, out.edge_time[edge_type].tolist(),
                out.edge_id[edge_type].tolist(), strict=True):
            rows.add((edge_type, hop, int(out.node[dst_type][dst]),
                      int(out.node_time[dst_type][dst]), int(out.node[src_type][src]),
                      edge_time, edge_id))
    return rows


def node_set(out: SampledSubgraph) -> set[tuple]:
    """Rows as ``(node type, hop, id, root time)``."""
    rows = set()
    for node_type, node in out.node.items():
        hops = [hop for hop, count in enumerate(out.num_sampled_nodes[node_type])
                for _ in range(count)]
        rows |= {(node_type, hop, n, t) for hop, n, t in zip(
            hops, node.tolist(), out.node_time[node_type].tolist(), strict=True)}
    return rows


# ------------------------------------------------------------------- fixtures (ranks)


def all_scenarios(rank: int) -> dict:
    """Both groups of scenarios in one pair of processes (starting two torch + PyG
    processes costs more than the scenarios themselves). A group that raises on every
    rank is reported by its tests without hiding the other group's results."""
    out = {}
    for name, scenarios in (("sampling", sampling_scenarios), ("training", training_scenarios)):
        try:
            out[name] = scenarios(rank)
        except Exception:  # noqa: BLE001 - reported by the tests of this group
            out[name] = {"error": traceback.format_exc()}
    return out


@pytest.fixture(scope="module")
def ranks():
    """Every distributed scenario's results, one dict per rank."""
    return run_ranks(all_scenarios)


def _group(ranks, name: str) -> list[dict]:
    errors = [result[name]["error"] for result in ranks if "error" in result[name]]
    if errors:
        pytest.fail(f"the {name} scenarios raised:\n" + "\n".join(errors))
    return [result[name] for result in ranks]


@pytest.fixture
def sampled(ranks):
    """The sampling scenarios' results, one dict per rank."""
    return _group(ranks, "sampling")


@pytest.fixture
def trained(ranks):
    """The training scenarios' results, one dict per rank."""
    return _group(ranks, "training")


def _random_results(sampled, strategy: str, replace: bool):
    for index, entry in enumerate(sampled[0]["random"]):
        if entry["strategy"] == strategy and entry["replace"] == replace:
            yield random_case(entry["case"]), entry, sampled[1]["random"][index]


# ---------------------------------------------------------------------- shard tests


def test_split_puts_every_edge_in_exactly_one_shard_and_every_node_in_one_part():
    for case_seed in range(6):
        case = random_case(case_seed)
        shards = split_graph(case.graph, case.features, case.book, num_parts=WORLD_SIZE)
        for node_type, count in case.graph.num_nodes.items():
            owned = torch.cat([shard.owned[node_type] for shard in shards])
            assert sorted(owned.tolist()) == list(range(count))
            for shard in shards:
                assert bool((case.book[node_type][shard.owned[node_type]] == shard.part).all())
                assert torch.equal(shard.features[node_type].categorical,
                                   case.features[node_type].categorical[shard.owned[node_type]])
        for edge_type, csr in case.graph.csr.items():
            edge_ids = torch.cat([shard.edge_id[edge_type] for shard in shards])
            assert sorted(edge_ids.tolist()) == list(range(csr.num_edges))
            global_dst = csr.edge_dst()
            for shard in shards:
                part_csr, edge_id = shard.csr[edge_type], shard.edge_id[edge_type]
                shard.validate()
                # The shard's edge (row i = owned node) is the same edge as the global one.
                dst = shard.owned[edge_type[2]][part_csr.edge_dst()]
                assert torch.equal(dst, global_dst[edge_id])
                assert torch.equal(part_csr.neighbor, csr.neighbor[edge_id])
                assert torch.equal(part_csr.edge_time, csr.edge_time[edge_id])
                assert torch.equal(part_csr.edge_attr["weight"], csr.edge_attr["weight"][edge_id])
                assert part_csr.weight == csr.weight


def test_split_rejects_a_partition_book_that_misses_nodes():
    case = random_case(0)
    short = dict(case.book, user=case.book["user"][:-1])
    with pytest.raises(ValueError, match="partition_book"):
        split_graph(case.graph, case.features, short)


@pytest.mark.parametrize("mmap", [True, False])
def test_save_and_load_round_trip(tmp_path, mmap):
    case = random_case(5)  # part 0 owns no brand: empty arrays round-trip too
    shards = split_graph(case.graph, case.features, case.book, num_parts=WORLD_SIZE)
    for shard in shards:
        folder = str(tmp_path / f"part-{shard.part}")
        save_shard(shard, folder, config_hash="abc")
        loaded = load_shard(folder, mmap=mmap)
        assert (loaded.part, loaded.num_parts) == (shard.part, shard.num_parts)
        assert loaded.num_nodes == shard.num_nodes
        assert list(loaded.num_nodes) == list(shard.num_nodes)
        assert loaded.edge_types == shard.edge_types
        for node_type in shard.node_types:
            assert torch.equal(loaded.partition_book[node_type], shard.partition_book[node_type])
            assert loaded.partition_book[node_type].dtype == torch.int32
            assert torch.equal(loaded.owned[node_type], shard.owned[node_type])
            got, want = loaded.features[node_type], shard.features[node_type]
            assert torch.equal(got.categorical, want.categorical)
            assert got.cardinalities == want.cardinalities
            assert got.learn_id_embedding == want.learn_id_embedding
            assert (got.created_time is None) == (want.created_time is None)
            if want.created_time is not None:
                assert torch.equal(got.created_time, want.created_time)
        for edge_type, csr in shard.csr.items():
            got = loaded.csr[edge_type]
            for name in ("indptr", "neighbor", "edge_time"):
                assert torch.equal(getattr(got, name), getattr(csr, name))
            assert got.weight == csr.weight
            assert torch.equal(got.edge_attr["weight"], csr.edge_attr["weight"])
            assert torch.equal(loaded.edge_id[edge_type], shard.edge_id[edge_type])
        loaded.validate()


def test_load_refuses_an_unknown_format_version(tmp_path):
    import json

    from clickgraph.core.manifest import ManifestError

    case = random_case(2)
    folder = tmp_path / "part-0"
    save_shard(split_graph(case.graph, case.features, case.book, num_parts=2)[0], str(folder))
    manifest = json.loads((folder / "_MANIFEST.json").read_text())
    manifest["format_version"] = 2
    (folder / "_MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="format_version 2"):
        load_shard(str(folder))


# ------------------------------------------------------------- distributed sampling


@pytest.mark.distributed
def test_most_recent_distributed_sample_equals_single_process(sampled):
    """Each rank's distributed sample is tensor-for-tensor the single-process sample of
    its seeds on the unpartitioned graph (edge ids, attributes and hop layout included)."""
    checked = 0
    for case, *per_rank in _random_results(sampled, "most_recent", False):
        for rank, entry in enumerate(per_rank):
            assert_same_subgraph(entry["out"], _single(case, rank))
            checked += entry["out"].num_edges
    assert checked > 200  # the random cases do sample something


@pytest.mark.distributed
def test_union_of_rank_samples_equals_the_joint_single_process_sample(sampled):
    """With disjoint seed times per rank, the joint single-process sample of all seeds
    is the union of the ranks' distributed samples, as sets of
    (relation, hop, dst, root time, src, edge time, edge id) and of rows."""
    for case, first, second in _random_results(sampled, "most_recent", False):
        joint_seeds: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for per_rank in case.seeds:
            for node_type, (node, seed_time) in per_rank.items():
                old_node, old_time = joint_seeds.get(
                    node_type, (torch.empty(0, dtype=torch.int64),) * 2)
                joint_seeds[node_type] = (torch.cat([old_node, node]),
                                          torch.cat([old_time, seed_time]))
        joint = TemporalNeighborSampler(case.graph, case.fanouts, "most_recent").sample(
            joint_seeds)
        assert edge_set(first["out"]) | edge_set(second["out"]) == edge_set(joint)
        assert node_set(first["out"]) | node_set(second["out"]) == node_set(joint)


@pytest.mark.distributed
@pytest.mark.parametrize("strategy,replace", [*MODES, ("weighted", False)])
def test_no_distributed_sampled_edge_reaches_its_root_time(sampled, strategy, replace):
    """Every invariant of the single-process tests (strictly earlier edges at every
    hop, per-row counts, edge ids in the right global CSR row, no repeats without
    replacement, most-recent = latest visible) holds for the distributed samples,
    weighted draws included."""
    results = list(_random_results(sampled, strategy, replace))
    assert results
    for case, *per_rank in results:
        for rank, entry in enumerate(per_rank):
            out = entry["out"]
            check_invariants(case.graph, case.seeds[rank], case.fanouts, out,
                             "uniform" if strategy == "weighted" else strategy, replace)
            for edge_type, edge_time in out.edge_time.items():
                dst_local = out.edge_index[edge_type][1]
                assert bool((edge_time < out.node_time[edge_type[2]][dst_local]).all())


@pytest.mark.distributed
def test_a_rank_without_seeds_takes_part_and_gets_an_empty_sample(sampled):
    """Cases 3 and 10 give rank 1 no seeds, cases 4 and 11 give rank 0 empty tensors;
    the run finished (a hang fails the fixture) and the other rank's sample is exact."""
    empty_cases = {3, 10, 4, 11}
    seen = set()
    for case, *per_rank in _random_results(sampled, "most_recent", False):
        for rank, entry in enumerate(per_rank):
            if not any(node.numel() for node, _ in case.seeds[rank].values()):
                seen.add(entry["case"])
                assert entry["out"].num_edges == 0
                assert all(n.numel() == 0 for n in entry["out"].node.values())
                assert_same_subgraph(per_rank[1 - rank]["out"], _single(case, 1 - rank))
    assert seen == empty_cases


@pytest.mark.distributed
def test_fetched_features_are_the_rows_of_the_global_tables(sampled):
    for case, *per_rank in itertools.chain(*(_random_results(sampled, s, r) for s, r in MODES)):
        for entry in per_rank:
            out, fetched = entry["out"], entry["features"]
            for node_type, node in out.node.items():
                want = case.features[node_type]
                got = fetched[node_type]
                assert torch.equal(got.categorical, want.categorical[node])
                if want.created_time is None:
                    assert got.created_time is None
                else:
                    assert torch.equal(got.created_time, want.created_time[node])


@pytest.mark.distributed
def test_activity_counts_are_the_single_process_counts(sampled):
    """Seeds' as-of counts (the model's activity features) gathered from the owners equal
    the single-process sampler's on the whole graph, and see only strictly earlier edges."""
    from trainer.sampler import count_relations

    checked = 0
    for case, *per_rank in _random_results(sampled, "most_recent", False):
        single = TemporalNeighborSampler(case.graph, case.fanouts)
        for rank, entry in enumerate(per_rank):
            assert entry["counts_together"].keys() == entry["counts"].keys()
            for node_type, counts in entry["counts"].items():
                assert torch.equal(entry["counts_together"][node_type], counts)
                node, at = case.seeds[rank].get(node_type, (torch.empty(0, dtype=torch.int64),) * 2)
                assert torch.equal(counts, single.activity_counts(node_type, node, at))
                for column, edge_type in enumerate(count_relations(case.graph.edge_types, node_type)):
                    csr = case.graph.csr[edge_type]
                    dst, edge_time = csr.edge_dst(), csr.edge_time
                    brute = torch.tensor([int(((dst == n) & (edge_time < t)).sum())
                                          for n, t in zip(node.tolist(), at.tolist())], dtype=torch.int64)
                    assert torch.equal(counts[:, 2 * column], brute)
                    checked += int(brute.sum())
    assert checked > 0


@pytest.mark.distributed
def test_uniform_two_hop_trees_follow_the_exact_law(sampled):
    """Chi-square goodness of fit of whole 2-hop trees against their exact law.

    Draw for draw equality with the single-process sampler is impossible by design (a
    row is drawn by its owner's generator); the law is what must match. On
    :func:`star_case`, 1200 seeds (600 per rank, each its own root time) each give one
    independent tree: a uniform 2-subset {a, b} of user 0's four contents (hop 1, drawn
    on part 0) and one uniform visible impresser of each (hop 2, drawn on both parts).
    The 37 possible trees have probability 1/6 / (deg a * deg b); fail if p < 0.001
    (36 degrees of freedom). Generator seeds are fixed, so the test is deterministic.
    """
    counts: Counter = Counter()
    for result in sampled:
        out = result["star_two_hop"]
        content = out.node["content"]
        users = out.node["user"]
        hop1_src, hop1_dst = out.edge_index[REV_IMPRESSED]
        hop2_src, hop2_dst = out.edge_index[IMPRESSED]
        impresser = {int(dst): int(users[src]) for src, dst in zip(hop2_src, hop2_dst,
                                                                     strict=True)}
        assert len(impresser) == hop2_dst.numel()  # one impresser per content row
        tree: dict[int, list] = {}
        for src, dst in zip(hop1_src.tolist(), hop1_dst.tolist(), strict=True):
            tree.setdefault(dst, []).append((int(content[src]), impresser[src]))
        assert len(tree) == STAR_SEEDS_PER_RANK
        counts.update(tuple(sorted(pairs)) for pairs in tree.values())
    outcomes, expected = [], []
    impressers = {0: [0, 1], 1: [0, 2, 3], 2: [0, 4], 3: [0, 5, 1]}
    for a, b in itertools.combinations(range(4), 2):
        for user_a in impressers[a]:
            for user_b in impressers[b]:
                outcomes.append(((a, user_a), (b, user_b)))
                expected.append(2 * STAR_SEEDS_PER_RANK / 6 / (STAR_DEGREE[a] * STAR_DEGREE[b]))
    assert set(counts) <= set(outcomes) and len(outcomes) == 37
    assert _chi_square_p_value([counts[o] for o in outcomes], expected) > 0.001


@pytest.mark.distributed
def test_uniform_with_replacement_draws_edges_uniformly(sampled):
    """Fanout 3 with replacement from user 0's 4 visible impressions, 1200 rows drawn
    by part 0's generator (for rank 1's seeds too): 3600 independent uniform draws, 900
    expected per edge, chi-square with 3 degrees of freedom, fail if p < 0.001; and
    repeats do occur."""
    counts: Counter = Counter()
    repeats = 0
    for result in sampled:
        out = result["star_replace"]
        content = out.node["content"][out.edge_index[REV_IMPRESSED][0]]
        counts.update(content.tolist())
        per_row = content.view(STAR_SEEDS_PER_RANK, 3)
        repeats += int((per_row[:, 0] == per_row[:, 1]).sum())
    assert sum(counts.values()) == 3 * 2 * STAR_SEEDS_PER_RANK
    assert _chi_square_p_value([counts[c] for c in range(4)], [900.0] * 4) > 0.001
    assert repeats > 0


@pytest.mark.distributed
def test_bytes_sent_by_one_rank_are_the_bytes_the_other_received(sampled):
    for first, second in zip(sampled[0]["random"], sampled[1]["random"], strict=True):
        assert first["bytes"]["sent"] == second["bytes"]["received"]
        assert first["bytes"]["received"] == second["bytes"]["sent"]
    total = sum(sum(entry["bytes"]["sent"].values()) for entry in sampled[0]["random"])
    assert total > 0


@pytest.mark.distributed
def test_local_only_batches_cost_only_framing(sampled):
    """With every node on part 0, rank 0's traffic is the fixed message framing,
    the same for 1 or 30 seeds; on a real split it grows with the batch."""
    traffic = sampled[0]["traffic"]
    assert traffic[("all_on_part_0", 1)] == traffic[("all_on_part_0", 30)]
    assert traffic[("split", 30)] > traffic[("split", 1)] > traffic[("all_on_part_0", 1)]


@pytest.mark.distributed
def test_misconfigured_ranks_all_raise_instead_of_hanging(sampled):
    for result in sampled:
        assert "must serve part" in result["errors"]["swapped_parts"]
        assert "disagree" in result["errors"]["different_fanouts"]


# -------------------------------------------------------------------------- training


@pytest.mark.distributed
def test_the_pair_objective_trains_in_lockstep_with_identical_replicas(trained):
    first, second = (per_rank["unequal_pair"] for per_rank in trained)
    assert first.steps_per_epoch == second.steps_per_epoch
    for name, value in first.model_state.items():
        assert torch.equal(value, second.model_state[name]), name
    assert all(math.isfinite(loss) for loss in first.losses + second.losses)
    plain = trained[0]["unequal"]
    assert first.losses != plain.losses  # another objective, other losses


@pytest.mark.distributed
@pytest.mark.parametrize("scenario", ["unequal", "rank1_empty"])
def test_ddp_ranks_run_equal_steps_and_end_with_identical_parameters(trained, scenario):
    from trainer.dist_train import build_model

    first, second = (per_rank[scenario] for per_rank in trained)
    graph, features, impressions, _, books = training_inputs()
    cfg = training_config()
    owner = books[scenario]["user"][impressions.user]
    own_events = [int((owner == part).sum()) for part in range(WORLD_SIZE)]
    own_batches = [math.ceil(n / cfg.batch_size) for n in own_events]
    assert [first.own_events, second.own_events] == own_events
    assert own_batches[0] != own_batches[1]  # the scenario is unbalanced
    assert first.steps_per_epoch == second.steps_per_epoch == [max(own_batches)] * cfg.epochs
    assert first.min_batches_per_epoch == [min(own_batches)] * cfg.epochs
    assert len(first.losses) == len(second.losses) == max(own_batches) * cfg.epochs
    # Padding: every rank with events trains steps * batch_size of them per epoch.
    for result, events in zip((first, second), own_events, strict=True):
        expected = max(own_batches) * cfg.batch_size * cfg.epochs if events else 0
        assert result.events_trained == expected
    # DDP kept the replicas identical, and training moved them.
    initial = build_model(split_graph(graph, features, books[scenario], 2)[0], cfg).state_dict()
    assert first.model_state.keys() == second.model_state.keys() == initial.keys()
    for name, value in first.model_state.items():
        assert torch.equal(value, second.model_state[name]), name
    assert any(not torch.equal(value, initial[name])
               for name, value in first.model_state.items())
    assert all(math.isfinite(loss) for loss in first.losses)
    for result in (first, second):
        split = result.time_split
        assert split["allreduce"] > 0 and split["sampling"] > 0 and split["compute"] > 0
        assert result.bytes["gradient_allreduce_bytes"] > 0
    assert first.bytes_per_event > 0
    assert first.bytes_per_event_global == second.bytes_per_event_global > 0
