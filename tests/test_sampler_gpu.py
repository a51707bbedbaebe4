"""The distributed sampler on a GPU: its shard in GPU memory or in pinned host memory
read by the GPU (``pytest -m gpu``; skipped without CUDA). One GPU is enough.

What must hold (:mod:`trainer.placement`): the GPU-sampled batches equal the CPU-sampled
ones for the same seed. ``most_recent`` is deterministic, so exactly; the uniform draws
come from the caller's generator, so with the same CPU generator they are exactly equal
too, and with a CUDA generator (another random stream) they follow the same law, checked
with chi-square tests; weighted draws follow their law on every placement. Fetched
features and activity counts are equal as well. Ranks: a 1-rank NCCL group in this
process, and 2 gloo ranks (spawned) that both place their part on the one GPU, against
the single-process sampler on the whole graph.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from tests.test_distributed import (
    IMPRESSED,
    NUM_CASES,
    REV_IMPRESSED,
    WORLD_SIZE,
    _single,
    assert_same_subgraph,
    random_case,
    run_ranks,
)
from tests.test_sampler import _chi_square_p_value
from tests.test_sampler_placement import one_part, one_rank_group
from trainer.graph import TemporalCSR, TemporalHeteroGraph, add_reverse
from trainer.model import NodeFeatures

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PLACEMENTS = ("cpu", "cuda", "pinned")
CUDA = torch.device("cuda", 0)


def _to_cpu(batch):
    from trainer.dist_train import batch_to

    return batch_to(batch, torch.device("cpu"))


def _samplers(shard, fanouts, **settings):
    from trainer.dist_sampler import DistTemporalSampler

    return {placement: DistTemporalSampler(shard, fanouts, **settings).place(placement, CUDA)
            for placement in PLACEMENTS}


def _assert_same_inputs(got, want):
    (got_rows, got_counts), (want_rows, want_counts) = got, want
    assert got_rows.keys() == want_rows.keys()
    for node_type, rows in want_rows.items():
        assert torch.equal(got_rows[node_type].categorical.cpu(), rows.categorical)
        if rows.created_time is not None:
            assert torch.equal(got_rows[node_type].created_time.cpu(), rows.created_time)
    for node_type, counts in want_counts.items():
        assert torch.equal(got_counts[node_type].cpu(), counts)


@pytest.mark.parametrize("strategy,replace", [("most_recent", False), ("uniform", False),
                                              ("uniform", True)])
def test_gpu_batches_equal_cpu_batches_for_the_same_seed(strategy, replace):
    """Every random case, both seed sets, on one rank under NCCL: the sample on the GPU
    (GPU memory, pinned host memory) equals the CPU's tensor for tensor, and so do the
    fetched features and activity counts. Uniform draws use the same CPU generator."""
    checked = 0
    with one_rank_group("nccl"):
        for case_seed in range(NUM_CASES):
            case = random_case(case_seed)
            samplers = _samplers(one_part(case), case.fanouts, strategy=strategy,
                                 replace=replace)
            assert samplers["cuda"].shard.csr[IMPRESSED].neighbor.is_cuda
            for seeds in case.seeds:
                out, inputs = {}, {}
                for placement, sampler in samplers.items():
                    generator = torch.Generator().manual_seed(case_seed)
                    out[placement] = sampler.sample(seeds, generator=generator)
                    queries = {t: (node, time) for t, (node, time) in seeds.items()
                               if node.numel()}
                    inputs[placement] = sampler.fetch_inputs(out[placement], queries)
                for placement in ("cuda", "pinned"):
                    assert all(node.device == CUDA for node in out[placement].node.values())
                    assert_same_subgraph(_to_cpu(out[placement]), out["cpu"])
                    _assert_same_inputs(inputs[placement], inputs["cpu"])
                checked += out["cpu"].num_edges
    assert checked > 0


def _fan_in(weights: list[float]):
    """Content 0 impressed by users 0..n-1 at times 1..n, with per-edge ``weights``."""
    count = len(weights)
    graph = add_reverse(TemporalHeteroGraph({"user": count, "content": 1}, {
        IMPRESSED: TemporalCSR.from_edges(
            torch.arange(count), torch.zeros(count, dtype=torch.int64),
            torch.arange(1, count + 1), 1, edge_attr={"weight": torch.tensor(weights)})}))
    features = {"user": NodeFeatures(torch.zeros((count, 1), dtype=torch.int64), [2]),
                "content": NodeFeatures(torch.zeros((1, 1), dtype=torch.int64), [2])}
    book = {"user": torch.zeros(count, dtype=torch.int32),
            "content": torch.zeros(1, dtype=torch.int32)}
    from trainer.shard import split_graph

    return split_graph(graph, features, book, num_parts=1)[0]


SEEDS = 3000


def _content_seeds():
    """Content 0 at SEEDS distinct times after every edge: SEEDS independent rows."""
    return {"content": (torch.zeros(SEEDS, dtype=torch.int64),
                        100 + torch.arange(SEEDS, dtype=torch.int64))}


def _drawn_users(batch) -> list[list[int]]:
    """Per seed row, the users drawn for it (hop 1 of IMPRESSED)."""
    src, dst = (index.cpu() for index in batch.edge_index[IMPRESSED])
    users = batch.node["user"].cpu()
    rows: dict[int, list[int]] = {}
    for s, d in zip(src.tolist(), dst.tolist(), strict=True):
        rows.setdefault(d, []).append(int(users[s]))
    return list(rows.values())


@pytest.mark.parametrize("generator_device", ["cpu", "cuda"])
def test_weighted_gpu_draws_follow_the_weights(generator_device):
    """Fanout 1 among 4 visible edges of weights 1..4: P(user i) = w_i / 10 on every
    placement, with a CPU or a CUDA generator (chi-square, 3 degrees of freedom, fail if
    p < 0.001; fixed seeds, so deterministic)."""
    weights = [1.0, 2.0, 3.0, 4.0]
    fanouts = {IMPRESSED: [1], REV_IMPRESSED: [0]}
    with one_rank_group("nccl"):
        samplers = _samplers(_fan_in(weights), fanouts, strategy="uniform", weighted=True)
        for placement, sampler in samplers.items():
            device = "cpu" if generator_device == "cpu" else CUDA
            generator = torch.Generator(device=device).manual_seed(7)
            rows = _drawn_users(sampler.sample(_content_seeds(), generator=generator))
            assert len(rows) == SEEDS and all(len(row) == 1 for row in rows)
            counts = Counter(row[0] for row in rows)
            expected = [SEEDS * w / sum(weights) for w in weights]
            assert _chi_square_p_value([counts[u] for u in range(4)], expected) > 0.001, \
                (placement, counts)


def test_uniform_gpu_draws_with_a_cuda_generator_follow_the_uniform_law():
    """Fanout 2 among 4 visible edges with a CUDA generator (another stream than the
    CPU's): each of the 6 subsets has probability 1/6 (chi-square, 5 degrees of freedom,
    fail if p < 0.001), in GPU memory and in pinned host memory."""
    fanouts = {IMPRESSED: [2], REV_IMPRESSED: [0]}
    subsets = list(itertools.combinations(range(4), 2))
    with one_rank_group("nccl"):
        samplers = _samplers(_fan_in([1.0] * 4), fanouts, strategy="uniform")
        for placement in ("cuda", "pinned"):
            generator = torch.Generator(device=CUDA).manual_seed(11)
            rows = _drawn_users(samplers[placement].sample(_content_seeds(),
                                                           generator=generator))
            counts = Counter(tuple(sorted(row)) for row in rows)
            assert set(counts) <= set(subsets) and sum(counts.values()) == SEEDS
            assert _chi_square_p_value([counts[s] for s in subsets],
                                       [SEEDS / 6] * 6) > 0.001, (placement, counts)


def gpu_rank_samples(rank: int, placement: str) -> list:
    """On a spawned gloo rank: every random case's most-recent sample of this rank's
    seeds with its part placed on the GPU, and the fetched features."""
    from trainer.dist_sampler import DistTemporalSampler
    from trainer.dist_train import batch_to
    from trainer.shard import split_graph

    out = []
    for case_seed in range(NUM_CASES):
        case = random_case(case_seed)
        shard = split_graph(case.graph, case.features, case.book, num_parts=WORLD_SIZE)[rank]
        sampler = DistTemporalSampler(shard, case.fanouts, strategy="most_recent")
        sampler.place(placement, CUDA)
        batch = sampler.sample(case.seeds[rank])
        rows = sampler.fetch_features(batch)
        out.append((batch_to(batch, torch.device("cpu")),
                    {t: f.categorical.cpu() for t, f in rows.items()}))
    return out


@pytest.mark.parametrize("placement", ["cuda", "pinned"])
def test_two_ranks_on_one_gpu_sample_as_the_single_process_sampler(placement):
    """Two gloo ranks, each with its part on the one GPU (the messages go through the
    host): each rank's most-recent sample equals the single-process sample of its seeds
    on the whole graph, and its fetched features are the global tables' rows."""
    results = run_ranks(gpu_rank_samples, placement, timeout_s=300.0)
    for rank, per_case in enumerate(results):
        for case_seed, (batch, codes) in enumerate(per_case):
            case = random_case(case_seed)
            assert_same_subgraph(batch, _single(case, rank))
            for node_type, node in batch.node.items():
                assert torch.equal(codes[node_type],
                                   case.features[node_type].categorical[node])
