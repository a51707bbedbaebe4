"""The click model, its examples and the no-future-information guarantee end to end."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from clickgraph.config import load_config
from trainer.data import GraphData, Impressions, NegativeSampler, split_windows
from trainer.engine import ClickEngine
from trainer.graph import TemporalCSR, TemporalHeteroGraph, add_reverse
from trainer.model import NodeFeatures, TimeEncoder

NUM = {"user": 12, "content": 9, "brand": 3}
T0 = 1_700_000_000


def _graph(extra_after: int | None = None, seed: int = 0) -> TemporalHeteroGraph:
    """Random user->content and content->brand edges; ``extra_after`` adds edges at or
    after that time to every relation."""
    g = torch.Generator().manual_seed(seed)

    def rel(n_src, n_dst, n_edges, t_lo, t_hi, gen):
        src = torch.randint(n_src, (n_edges,), generator=gen)
        dst = torch.randint(n_dst, (n_edges,), generator=gen)
        time = torch.randint(t_lo, t_hi, (n_edges,), generator=gen)
        return src, dst, time

    edges = {
        ("user", "impressed", "content"): rel(NUM["user"], NUM["content"], 200, T0, T0 + 1000, g),
        ("user", "clicked", "content"): rel(NUM["user"], NUM["content"], 60, T0, T0 + 1000, g),
        ("content", "of", "brand"): rel(NUM["content"], NUM["brand"], 9, 0, 1, g),
    }
    if extra_after is not None:
        g2 = torch.Generator().manual_seed(seed + 99)
        for et, (src, dst, time) in list(edges.items()):
            n_src, n_dst = NUM[et[0]], NUM[et[2]]
            s2, d2, t2 = rel(n_src, n_dst, 50, extra_after, extra_after + 500, g2)
            edges[et] = (torch.cat([src, s2]), torch.cat([dst, d2]), torch.cat([time, t2]))
    csr = {et: TemporalCSR.from_edges(s, d, t, NUM[et[2]], edge_attr={"weight": torch.ones(len(s))})
           for et, (s, d, t) in edges.items()}
    return add_reverse(TemporalHeteroGraph(num_nodes=dict(NUM), csr=csr))


def _data(graph: TemporalHeteroGraph, seed_time: int) -> GraphData:
    n = 16
    g = torch.Generator().manual_seed(3)
    features = {
        "user": NodeFeatures(torch.randint(1, 4, (NUM["user"], 2), generator=g), [4, 4],
                             created_time=torch.full((NUM["user"],), T0 - 10)),
        "content": NodeFeatures(torch.randint(1, 3, (NUM["content"], 1), generator=g), [3],
                                created_time=torch.full((NUM["content"],), T0 - 10)),
        "brand": NodeFeatures(torch.zeros((NUM["brand"], 0), dtype=torch.int64), [],
                              learn_id_embedding=True),
    }
    impressions = Impressions(
        user=torch.randint(NUM["user"], (n,), generator=g),
        content=torch.randint(NUM["content"], (n,), generator=g),
        time=torch.full((n,), seed_time), position=torch.arange(n) % 5,
        clicked=(torch.arange(n) % 3 == 0).float(), day=torch.zeros(n, dtype=torch.int64))
    return GraphData(graph=graph, features=features, vocab={}, impressions=impressions, days=["d"],
                     user_first_day=torch.zeros(NUM["user"], dtype=torch.int64),
                     content_created=torch.full((NUM["content"],), T0 - 10), store_version={})


def _train_cfg(**changes):
    cfg = load_config(None, ["train.fanouts=[4, 3]", "train.relation_fanouts={}",
                             "train.model.hidden_dim=16", "train.model.time_dim=8",
                             "train.random_negative_ratio=0"]).train
    return dataclasses.replace(cfg, **changes)


def test_time_encoding_has_the_tgat_form():
    enc = TimeEncoder(6)
    dt = torch.tensor([0.0, 5.0, 3600.0])
    expected = torch.cos(dt[:, None] * enc.omega + enc.phase)
    assert torch.allclose(enc(dt), expected)
    assert enc(dt).shape == (3, 6)
    assert torch.all(enc(torch.zeros(1)) == 1.0)  # phase starts at 0


@pytest.mark.parametrize("strategy", ["most_recent", "uniform"])
@pytest.mark.parametrize("conv", ["sage", "attention"])
def test_scores_do_not_change_when_the_future_changes(strategy, conv):
    """No information from the future, end to end: adding edges at or after the seed
    time, in every relation and its reverse, changes no score (dropout off, same draws)."""
    seed_time = T0 + 600
    cfg = _train_cfg(strategy=strategy, model=dataclasses.replace(_train_cfg().model, conv=conv))
    past = ClickEngine(_data(_graph(), seed_time), cfg)
    future = ClickEngine(_data(_graph(extra_after=seed_time), seed_time), cfg)
    future.model.load_state_dict(past.model.state_dict())
    events = torch.arange(16)
    # same generator state, and the future edges sort after every visible one per row
    a = past.score(events, torch.Generator().manual_seed(5))
    b = future.score(events, torch.Generator().manual_seed(5))
    if strategy == "most_recent":
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    else:
        # uniform draws depend only on the visible counts, which the future leaves alone
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_scores_do_change_with_the_past():
    """The converse: the same perturbation before the seed time does change scores, so
    the test above would catch a leak."""
    seed_time = T0 + 600
    cfg = _train_cfg(strategy="most_recent")
    base = ClickEngine(_data(_graph(), seed_time), cfg)
    past = ClickEngine(_data(_graph(extra_after=T0 + 100), seed_time), cfg)
    past.model.load_state_dict(base.model.state_dict())
    events = torch.arange(16)
    a = base.score(events, torch.Generator().manual_seed(5))
    b = past.score(events, torch.Generator().manual_seed(5))
    assert not np.allclose(a, b)


def test_training_reduces_the_loss():
    cfg = _train_cfg(strategy="most_recent", learning_rate=0.01)
    engine = ClickEngine(_data(_graph(), T0 + 900), cfg)
    g = torch.Generator().manual_seed(0)
    events = torch.arange(16)
    first = engine.train_step(events, g)
    for _ in range(60):
        last = engine.train_step(events, g)
    assert last < 0.6 * first


def test_random_negatives_existed_before_the_event():
    created = torch.tensor([100, 50, 300, 200, 400])
    sampler = NegativeSampler(created)
    time = torch.tensor([60, 150, 250, 1000, 10] * 200)
    valid, content = sampler.sample(time, torch.Generator().manual_seed(0))
    assert torch.all(created[content[valid]] < time[valid])
    assert not valid[time == 10].any()  # nothing existed yet
    # every eligible piece is drawn for the latest time
    assert set(content[time == 1000].tolist()) == {0, 1, 2, 3, 4}


def test_examples_add_negatives_with_the_host_time():
    data = _data(_graph(), T0 + 900)
    engine = ClickEngine(data, _train_cfg(random_negative_ratio=1.0))
    user, content, seed_time, position, label = engine.examples(torch.arange(8),
                                                                torch.Generator().manual_seed(0))
    assert len(user) == 16 and label[8:].sum() == 0
    assert torch.all(seed_time == T0 + 900)
    assert torch.all(data.content_created[content[8:]] < seed_time[8:])


def test_temporal_split_is_ordered_and_disjoint():
    w = split_windows(10, val_days=2, test_days=3)
    assert w.train == list(range(5)) and w.val == [5, 6] and w.test == [7, 8, 9]
    with pytest.raises(ValueError, match="need more than"):
        split_windows(5, val_days=2, test_days=3)
