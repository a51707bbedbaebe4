"""The pipelined distributed loop (``resources.prefetch_depth``) on two gloo ranks: the
same losses and parameters as the plain loop, the hooks' generator at the plain loop's
state, and no hang when a rank fails or dies; and a step's features and activity counts
in one pair of exchanges (``DistTemporalSampler.fetch_inputs``), equal to the two
separate fetches."""

from __future__ import annotations

import math
import os
import threading

import pytest
import torch

from tests.test_distributed import (
    MODES,
    NUM_CASES,
    WORLD_SIZE,
    random_case,
    run_ranks,
    training_config,
    training_inputs,
)
from trainer.shard import split_graph

pytestmark = pytest.mark.distributed

FAILING_CALL = 2  # rank 1's third batch fails (sampling), after two trained steps


def _prefetch_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("train-prefetch")]


def _rank_inputs(rank: int):
    from trainer.dist_train import owned_impressions

    graph, features, impressions, content_created, books = training_inputs()
    shard = split_graph(graph, features, books["unequal"], num_parts=WORLD_SIZE)[rank]
    return shard, owned_impressions(impressions, shard), content_created


def plain_and_pipelined(rank: int) -> dict:
    """The same training without and with prefetching; the hooks' generator states."""
    from trainer.dist_train import TrainHooks, train_worker

    class GeneratorStates(TrainHooks):
        def __init__(self) -> None:
            self.states: list[torch.Tensor] = []

        def after_step(self, ctx) -> None:
            self.states.append(ctx.generator.get_state())

    shard, impressions, content_created = _rank_inputs(rank)
    out = {}
    for depth in (0, 1, 3):
        hooks = GeneratorStates()
        result = train_worker(rank, WORLD_SIZE, shard, training_config(), impressions,
                              content_created, hooks=hooks, prefetch_depth=depth)
        out[depth] = {"result": result, "states": hooks.states,
                      "threads_after": _prefetch_threads()}
    return out


def merged_inputs(rank: int) -> list[dict]:
    """Per random case: features and counts fetched apart and in one exchange pair, with
    and without a hot-node cache, and the exchanges each took."""
    from trainer.dist_sampler import DistTemporalSampler, build_hot_cache
    from trainer.distributed import ByteCounter

    out = []
    for case_seed in range(NUM_CASES):
        case = random_case(case_seed)
        shard = split_graph(case.graph, case.features, case.book, num_parts=WORLD_SIZE)[rank]
        strategy, replace = MODES[case_seed % len(MODES)]
        for cached in (False, True):
            cache = build_hot_cache(shard, {"content": 0.5, "brand": 1.0}) if cached else None
            apart, merged = ByteCounter(), ByteCounter()
            sampler = DistTemporalSampler(shard, case.fanouts, strategy=strategy,
                                          replace=replace, hot_cache=cache, counter=apart)
            subgraph = sampler.sample(case.seeds[rank],
                                      generator=torch.Generator().manual_seed(rank))
            empty = torch.empty(0, dtype=torch.int64)
            queries = {t: case.seeds[rank].get(t, (empty, empty)) for t in ("user", "content")}
            features = sampler.fetch_features(subgraph)
            counts = sampler.activity_counts_of(queries)
            apart_calls = {kind: sampler.counter.calls[kind] for kind in sampler.counter.calls
                           if kind.startswith(("feature", "count"))}
            sampler.counter = merged
            both = sampler.fetch_inputs(subgraph, queries)
            alone = sampler.fetch_inputs(subgraph, None)
            out.append({"case": case_seed, "cached": cached, "features": features,
                        "counts": counts, "both": both, "alone": alone,
                        "apart_calls": apart_calls, "merged_calls": dict(merged.calls),
                        "apart_sent": sum(v for k, v in apart.sent.items()
                                          if k.startswith(("feature", "count"))),
                        "merged_sent": merged.sent.get("input_request", 0)
                        + merged.sent.get("input_response", 0)})
    return out


def both_groups(rank: int) -> dict:
    return {"training": plain_and_pipelined(rank), "inputs": merged_inputs(rank)}


def failing(rank: int, mode: str) -> dict:
    """Rank 1's prefetch thread raises (``mode`` "error") or kills its process ("death")
    at its third batch; every rank reports what it got instead of hanging."""
    import trainer.dist_train as dist_train

    if rank == 1:
        sample, calls = dist_train.DistBatchSource.sample, iter(range(100))

        def sample_or_fail(self, *args, **kwargs):
            if next(calls) == FAILING_CALL:
                if mode == "death":
                    os._exit(3)
                raise RuntimeError("planted sampling failure")
            return sample(self, *args, **kwargs)

        dist_train.DistBatchSource.sample = sample_or_fail
    shard, impressions, content_created = _rank_inputs(rank)
    steps = []

    class Steps(dist_train.TrainHooks):
        def after_step(self, ctx) -> None:
            steps.append(ctx.global_step)

    try:
        dist_train.train_worker(rank, WORLD_SIZE, shard, training_config(), impressions,
                                content_created, hooks=Steps(), prefetch_depth=2)
    except Exception as error:  # noqa: BLE001 - what the rank got is the result
        return {"error": f"{type(error).__name__}: {error}", "steps": steps,
                "threads_after": _prefetch_threads()}
    return {"error": None, "steps": steps, "threads_after": _prefetch_threads()}


@pytest.fixture(scope="module")
def ranks():
    return run_ranks(both_groups, timeout_s=240.0)


@pytest.fixture
def runs(ranks):
    return [per_rank["training"] for per_rank in ranks]


@pytest.mark.parametrize("depth", [1, 3])
def test_pipelined_ranks_train_the_plain_loops_steps_exactly(runs, depth):
    for per_rank in runs:
        plain, pipelined = per_rank[0]["result"], per_rank[depth]["result"]
        assert len(plain.losses) > 4 and all(math.isfinite(x) for x in plain.losses)
        assert pipelined.losses == plain.losses
        assert pipelined.events_trained == plain.events_trained
        assert pipelined.examples_trained == plain.examples_trained
        assert pipelined.bytes["sent"] == plain.bytes["sent"]
        for name, value in plain.model_state.items():
            assert torch.equal(value, pipelined.model_state[name]), name
        assert per_rank[depth]["threads_after"] == []
        assert pipelined.time_split["idle"] >= 0 and plain.time_split["idle"] == 0


@pytest.mark.parametrize("depth", [1, 3])
def test_hooks_see_the_generator_state_of_the_plain_loop(runs, depth):
    for per_rank in runs:
        plain, pipelined = per_rank[0]["states"], per_rank[depth]["states"]
        assert len(plain) == len(per_rank[0]["result"].losses)
        assert len(plain) == len(pipelined)
        assert all(torch.equal(a, b) for a, b in zip(plain, pipelined, strict=True))
        assert not torch.equal(plain[0], plain[-1])  # the stream moved: the check can fail


def test_a_failing_prefetch_thread_fails_its_rank_and_the_peer_without_a_hang():
    first, second = run_ranks(failing, "error", timeout_s=150.0)
    assert second["error"] == "RuntimeError: planted sampling failure"
    assert second["steps"] == [1, 2]  # the batches made before the failure were trained
    assert first["error"] is not None  # the peer's collectives failed, it did not wait
    assert first["threads_after"] == second["threads_after"] == []


def test_a_dead_rank_fails_its_peer_without_a_hang():
    first, second = run_ranks(failing, "death", timeout_s=150.0, may_die=(1,))
    assert second is None
    assert first["error"] is not None
    assert first["threads_after"] == []


def _same_features(actual, expected) -> None:
    assert actual.keys() == expected.keys()
    for node_type, value in expected.items():
        got = actual[node_type]
        assert torch.equal(got.categorical, value.categorical), node_type
        assert (got.created_time is None) == (value.created_time is None)
        if value.created_time is not None:
            assert torch.equal(got.created_time, value.created_time), node_type
        assert got.cardinalities == value.cardinalities
        assert got.learn_id_embedding == value.learn_id_embedding


def test_one_exchange_pair_gives_the_features_and_counts_of_two(ranks):
    for per_rank in ranks:
        entries = per_rank["inputs"]
        assert len(entries) == 2 * NUM_CASES
        for entry in entries:
            features, counts = entry["both"]
            _same_features(features, entry["features"])
            _same_features(entry["alone"][0], entry["features"])
            assert entry["alone"][1] is None
            assert counts.keys() == entry["counts"].keys() == {"user", "content"}
            for node_type, value in entry["counts"].items():
                assert torch.equal(counts[node_type], value), (entry["case"], node_type)
            assert entry["apart_calls"] == {"feature_request": 1, "feature_response": 1,
                                            "count_request": 1, "count_response": 1}
            assert entry["merged_calls"] == {"input_request": 1, "input_response": 1,
                                             "feature_request": 1, "feature_response": 1}
            # the same payloads in half the messages: two size headers fewer
            assert entry["merged_sent"] == entry["apart_sent"] - 2 * 8 * (WORLD_SIZE - 1)
        assert any(entry["counts"]["user"].sum() > 0 for entry in entries)
