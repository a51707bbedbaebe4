"""The replicated hot-node feature cache of the distributed sampler.

Two gloo ranks (the launcher of ``tests/test_distributed.py``) build caches on the random
graphs of that module and on its training graph, and the parent checks: both ranks hold
the same cache, the cache is the global top-k by degree (checked on the whole graph),
features fetched through the cache are the global rows, cached nodes are not requested,
and training with the cache is bit-for-bit training without it.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_distributed import (
    NUM_CASES,
    WORLD_SIZE,
    random_case,
    run_ranks,
    training_config,
    training_inputs,
)
from trainer.dist_sampler import HotNodeCache, hot_cache_sizes
from trainer.graph import TemporalHeteroGraph
from trainer.shard import split_graph

FRACTIONS = {"content": 0.5, "brand": 1.0}


def global_degree(graph: TemporalHeteroGraph, node_type: str) -> torch.Tensor:
    """All-time in-degree of every node of ``node_type`` over every relation into it."""
    degree = torch.zeros(graph.num_nodes[node_type], dtype=torch.int64)
    for (_, _, dst_type), csr in graph.csr.items():
        if dst_type == node_type:
            degree += csr.indptr[1:] - csr.indptr[:-1]
    return degree


# ------------------------------------------------------------------ worker scenarios


def cache_scenarios(rank: int) -> dict:
    from trainer.dist_sampler import DistTemporalSampler, build_hot_cache
    from trainer.dist_train import owned_impressions, train_worker
    from trainer.distributed import ByteCounter

    cases = []
    for case_seed in range(NUM_CASES):
        case = random_case(case_seed)
        shard = split_graph(case.graph, case.features, case.book, num_parts=WORLD_SIZE)[rank]
        entry = {"case": case_seed}
        for name, fractions in (("none", None), ("half", FRACTIONS),
                                ("all", {t: 1.0 for t in case.graph.num_nodes})):
            cache = build_hot_cache(shard, fractions) if fractions else None
            counter = ByteCounter()
            sampler = DistTemporalSampler(shard, case.fanouts, "most_recent", counter=counter,
                                          hot_cache=cache)
            out = sampler.sample(case.seeds[rank])
            entry[name] = {"cache": cache, "out": out, "features": sampler.fetch_features(out),
                           "bytes": counter.as_dict()}
        cases.append(entry)

    graph, features, impressions, content_created, books = training_inputs()
    cfg = training_config()
    shard = split_graph(graph, features, books["unequal"], num_parts=WORLD_SIZE)[rank]
    own = owned_impressions(impressions, shard)
    trained = {name: train_worker(rank, WORLD_SIZE, shard, cfg, own, content_created,
                                  hot_cache=fractions)
               for name, fractions in (("none", None), ("cached", FRACTIONS))}
    return {"cases": cases, "trained": trained}


@pytest.fixture(scope="module")
def ranks():
    return run_ranks(cache_scenarios)


def _feature_bytes(entry: dict) -> int:
    sent = entry["bytes"]["sent"]
    return sent.get("feature_request", 0) + sent.get("feature_response", 0)


# ------------------------------------------------------------------------ pure tests


def test_cache_sizes_round_up_and_check_their_input():
    assert hot_cache_sizes({"content": 0.1, "brand": 1.0}, {"content": 25, "brand": 3}) == \
        {"brand": 3, "content": 3}
    assert hot_cache_sizes({"content": 0.0}, {"content": 25}) == {"content": 0}
    with pytest.raises(ValueError, match="unknown node type"):
        hot_cache_sizes({"article": 0.1}, {"content": 25})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        hot_cache_sizes({"content": 1.5}, {"content": 25})


def test_find_tells_cached_ids_and_their_rows():
    cache = HotNodeCache(node={"content": torch.tensor([2, 5, 9])},
                         categorical={"content": torch.tensor([[20], [50], [90]])},
                         created_time={"content": None})
    hit, slot = cache.find("content", torch.tensor([9, 3, 2, 10, 5]))
    assert hit.tolist() == [True, False, True, False, True]
    assert slot[hit].tolist() == [2, 0, 1]
    hit, _ = cache.find("user", torch.tensor([1, 2]))
    assert not hit.any()


# ---------------------------------------------------------------- distributed tests


@pytest.mark.distributed
def test_every_rank_holds_the_same_global_top_k_by_degree(ranks):
    checked = 0
    for first, second in zip(ranks[0]["cases"], ranks[1]["cases"], strict=True):
        case = random_case(first["case"])
        for name in ("half", "all"):
            cache, other = first[name]["cache"], second[name]["cache"]
            assert cache.node.keys() == other.node.keys()
            for node_type, ids in cache.node.items():
                assert torch.equal(ids, other.node[node_type])
                assert torch.equal(cache.categorical[node_type], other.categorical[node_type])
                # The global top k, ties by the lower id, kept in ascending id order.
                degree = global_degree(case.graph, node_type)
                k = math.ceil((FRACTIONS if name == "half" else {node_type: 1.0})[node_type]
                              * case.graph.num_nodes[node_type])
                ranked = sorted(range(len(degree)), key=lambda n: (-int(degree[n]), n))[:k]
                assert ids.tolist() == sorted(ranked)
                want = case.features[node_type]
                assert torch.equal(cache.categorical[node_type], want.categorical[ids])
                if want.created_time is None:
                    assert cache.created_time[node_type] is None
                else:
                    assert torch.equal(cache.created_time[node_type], want.created_time[ids])
                checked += ids.numel()
    assert checked > 0


@pytest.mark.distributed
def test_features_through_the_cache_are_the_global_rows_and_cost_fewer_bytes(ranks):
    fewer = 0
    for rank, per_rank in enumerate(ranks):
        for entry in per_rank["cases"]:
            case = random_case(entry["case"])
            for name in ("none", "half", "all"):
                fetched = entry[name]["features"]
                for node_type, node in entry[name]["out"].node.items():
                    want = case.features[node_type]
                    assert torch.equal(fetched[node_type].categorical, want.categorical[node])
                    if want.created_time is not None:
                        assert torch.equal(fetched[node_type].created_time,
                                           want.created_time[node])
            none, half, every = (_feature_bytes(entry[n]) for n in ("none", "half", "all"))
            assert every <= half <= none
            # Everything cached: only the fixed framing of the two exchanges is sent.
            framing = 2 * 8 * (WORLD_SIZE - 1) + 8 * len(case.graph.num_nodes)
            assert every == framing, (rank, entry["case"])
            fewer += half < none
    assert fewer > 0


@pytest.mark.distributed
def test_training_with_the_cache_is_bit_for_bit_training_without_it(ranks):
    for per_rank in ranks:
        plain, cached = per_rank["trained"]["none"], per_rank["trained"]["cached"]
        assert plain.losses == cached.losses
        for name, value in plain.model_state.items():
            assert torch.equal(value, cached.model_state[name]), name
        assert cached.hot_cache_nodes and not plain.hot_cache_nodes
        # the features travel with the activity counts (DistTemporalSampler.fetch_inputs)
        assert cached.bytes["sent"]["input_request"] < plain.bytes["sent"]["input_request"]
        assert cached.bytes["sent"]["sample_response"] == plain.bytes["sent"]["sample_response"]
        assert cached.bytes["hot_cache_build_sent"] > 0 == plain.bytes["hot_cache_build_sent"]
