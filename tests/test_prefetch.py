"""The pipelined training loop: bounded prefetching on a thread, the same batches as the
plain loop, and clean shutdown on errors."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time

import pytest
import torch

from clickgraph.core.config import ConfigError, load_config
from tests.test_model import T0, _data, _graph, _train_cfg
from trainer.engine import ClickEngine
from trainer.local import train_epoch
from trainer.prefetch import Prefetcher, split_threads


class Injected(RuntimeError):
    """The failure a test plants in a producer."""


def _prefetch_threads(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == name]


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_results_come_in_order_made_on_a_thread_only_when_prefetching(depth):
    makers = []

    def produce(item: int) -> int:
        makers.append(threading.current_thread())
        return item * item

    with Prefetcher(range(7), produce, depth) as results:
        assert list(results) == [i * i for i in range(7)]
    on_caller = [maker is threading.current_thread() for maker in makers]
    assert on_caller == [depth == 0] * 7


def test_the_producer_runs_at_most_depth_plus_one_ahead():
    depth, made = 2, []
    with Prefetcher(range(20), lambda item: made.append(item) or item, depth) as results:
        for taken, _ in enumerate(results, start=1):
            time.sleep(0.02)  # room for the producer to run ahead as far as it may
            # depth results wait in the queue, one more is made and waits to be put
            assert taken <= len(made) <= taken + depth + 1
            if taken == 1:
                assert len(made) == taken + depth + 1  # it did run ahead


@pytest.mark.parametrize("depth", [0, 2])
def test_the_consumer_gets_the_producers_exception_after_the_earlier_results(depth):
    planted = Injected("batch 3 failed")

    def produce(item: int) -> int:
        if item == 3:
            raise planted
        return item

    results = Prefetcher(range(10), produce, depth, name="failing-prefetch")
    got = []
    with pytest.raises(Injected) as caught, results:
        for item in results:
            got.append(item)
    assert caught.value is planted
    assert got == [0, 1, 2]
    assert not results.running and not _prefetch_threads("failing-prefetch")


def test_closing_mid_stream_stops_an_endless_producer():
    results = Prefetcher(itertools.count(), lambda item: item, 2, name="endless-prefetch")
    assert next(results) == 0
    assert results.close(timeout_s=5.0)
    assert not results.running and not _prefetch_threads("endless-prefetch")
    with pytest.raises(StopIteration):
        next(results)


def test_an_error_in_the_consumer_stops_the_producer():
    results = Prefetcher(itertools.count(), lambda item: item, 3, name="abandoned-prefetch")
    with pytest.raises(Injected), results:
        for item in results:
            if item == 2:
                raise Injected("the step failed")
    assert not _prefetch_threads("abandoned-prefetch")


def test_a_producer_stuck_in_produce_is_reported_not_waited_for():
    release = threading.Event()
    results = Prefetcher(range(3), lambda item: release.wait(30) and item, 1,
                         name="stuck-prefetch")
    with pytest.warns(RuntimeWarning, match="still running"):
        assert results.close(timeout_s=0.2) is False
    assert results._thread.daemon  # it cannot keep the process alive
    release.set()
    results._thread.join(5)
    assert not results.running


def test_a_negative_depth_is_refused():
    with pytest.raises(ValueError, match="prefetch depth"):
        Prefetcher(range(3), lambda item: item, -1)
    with pytest.raises(ConfigError, match="resources.prefetch_depth"):
        load_config(None, ["resources.prefetch_depth=-1"])


def test_threads_are_split_between_compute_and_the_prefetch_thread():
    assert split_threads(1, 0) == (1, 0)
    assert split_threads(4, 0) == (4, 0)
    assert split_threads(1, 2) == (1, 1)
    assert split_threads(2, 1) == (1, 1)
    assert split_threads(4, 1) == (3, 1)


# ------------------------------------------------------- the single-process training loop


def _engine() -> ClickEngine:
    """A fresh engine with random negatives, uniform draws and dropout (the model's
    dropout draws from torch's global generator, on the compute thread only)."""
    cfg = _train_cfg(strategy="uniform", random_negative_ratio=1.0, learning_rate=0.01)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.2))
    torch.manual_seed(0)
    return ClickEngine(_data(_graph(), T0 + 900), cfg)


def _losses(depth: int) -> tuple[list[float], ClickEngine]:
    engine = _engine()
    generator = torch.Generator().manual_seed(5)
    batches = torch.split(torch.randperm(16, generator=generator), 4)
    losses = []
    for _ in range(3):  # epochs: the next epoch's draws come after all prefetched ones
        losses += train_epoch(engine, batches, generator, prefetch_depth=depth)
        losses.append(float(torch.rand(1, generator=generator)))
    return losses, engine


@pytest.mark.parametrize("depth", [1, 3])
def test_pipelined_training_gives_the_plain_loops_losses_step_for_step(depth):
    plain, plain_engine = _losses(0)
    pipelined, pipelined_engine = _losses(depth)
    assert len(plain) == 3 * 5
    assert pipelined == plain
    for name, value in plain_engine.model.state_dict().items():
        assert torch.equal(value, pipelined_engine.model.state_dict()[name]), name
    assert plain_engine.times.other["idle"] == 0.0
    assert pipelined_engine.times.other["idle"] >= 0.0


def test_a_failing_batch_reaches_the_training_loop_and_leaves_no_thread(monkeypatch):
    engine = _engine()
    calls = itertools.count()
    sample = engine.sample

    def failing_sample(*args, **kwargs):
        if next(calls) == 2:
            raise Injected("sampling failed")
        return sample(*args, **kwargs)

    monkeypatch.setattr(engine, "sample", failing_sample)
    steps = []
    with pytest.raises(Injected, match="sampling failed"):
        train_epoch(engine, torch.split(torch.arange(16), 4), torch.Generator().manual_seed(0),
                    prefetch_depth=2, progress=lambda step, _: steps.append(step))
    assert steps == [0, 1]
    assert not _prefetch_threads("train-prefetch")
