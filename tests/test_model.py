"""The click model, its examples and the no-future-information guarantee end to end."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from clickgraph.core.config import load_config
from clickgraph.core.timeline import day_start, split_windows
from clickgraph.core.vocab import NEVER
from trainer.data import GraphData, Impressions, NegativeSampler, window_events
from trainer.engine import ClickEngine
from trainer.graph import TemporalCSR, TemporalHeteroGraph, add_reverse
from trainer.model import NodeFeatures, TimeEncoder

NUM = {"user": 12, "content": 9, "brand": 3}
T0 = 1_700_000_000


def _graph(extra_after: int | None = None, seed: int = 0) -> TemporalHeteroGraph:
    """Random user->content and content->brand edges; ``extra_after`` adds edges at or
    after that time to every relation, the first 20 of each exactly at ``extra_after``
    (the tie case: an edge at the seed's own second is not visible)."""
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
            t2[:20] = extra_after
            edges[et] = (torch.cat([src, s2]), torch.cat([dst, d2]), torch.cat([time, t2]))
    csr = {et: TemporalCSR.from_edges(s, d, t, NUM[et[2]], edge_attr={"weight": torch.ones(len(s))})
           for et, (s, d, t) in edges.items()}
    return add_reverse(TemporalHeteroGraph(num_nodes=dict(NUM), csr=csr))


def _data(graph: TemporalHeteroGraph, seed_time: int) -> GraphData:
    n = 16
    g = torch.Generator().manual_seed(3)
    features = {
        "user": NodeFeatures(torch.randint(1, 4, (NUM["user"], 2), generator=g), [4, 4],
                             created_time=torch.full((NUM["user"],), T0 - 10),
                             learn_id_embedding=True),
        "content": NodeFeatures(torch.randint(1, 3, (NUM["content"], 1), generator=g), [3],
                                created_time=torch.full((NUM["content"],), T0 - 10),
                                learn_id_embedding=True),
        "brand": NodeFeatures(torch.zeros((NUM["brand"], 0), dtype=torch.int64), [],
                              learn_id_embedding=True),
    }
    impressions = Impressions(
        user=torch.randint(NUM["user"], (n,), generator=g),
        content=torch.randint(NUM["content"], (n,), generator=g),
        time=torch.full((n,), seed_time), position=torch.arange(n) % 5,
        clicked=(torch.arange(n) % 3 == 0).float())
    known = {t: torch.full((n_nodes,), T0 - 10) for t, n_nodes in NUM.items()}
    return GraphData(graph=graph, features=features, vocab={}, impressions=impressions,
                     days=["2023-11-14"], known_from=known, store_version={})


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
    time, in every relation and its reverse, changes no score (dropout off, same draws).
    Twenty of each relation's added edges lie exactly at the seed's second: making the
    sampler's rule ``<=`` (``visible_range`` searching with ``right=True``) fails here."""
    seed_time = T0 + 600
    cfg = _train_cfg(strategy=strategy, model=dataclasses.replace(_train_cfg().model, conv=conv))
    past = ClickEngine(_data(_graph(), seed_time), cfg)
    _trained_identities(past.model)
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


def _trained_identities(model) -> None:
    """Non-zero id vectors (a fresh model's are zero), so the identity path is live."""
    with torch.no_grad():
        for encoder in model.encoders.values():
            if encoder.id_embedding is not None:
                encoder.id_embedding.weight.normal_(generator=torch.Generator().manual_seed(1))


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


@pytest.mark.parametrize("objective, ratio, factor", [("click", 0.0, 0.6), ("pair", 1.0, 0.7)])
def test_training_reduces_the_loss(objective, ratio, factor):
    """Both objectives (train.random_negative_loss) fit a fixed batch."""
    cfg = _train_cfg(strategy="most_recent", learning_rate=0.01, random_negative_ratio=ratio,
                     random_negative_loss=objective)
    engine = ClickEngine(_data(_graph(), T0 + 900), cfg)
    g = torch.Generator().manual_seed(0)
    events = torch.arange(16)
    first = engine.train_step(events, g)
    for _ in range(60):
        last = engine.train_step(events, g)
    assert last < factor * first


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


DAYS = [f"2026-03-{d:02d}" for d in range(2, 12)]  # 10 days


def test_temporal_split_is_ordered_and_disjoint():
    w = split_windows(DAYS, val_days=2, test_days=3)
    assert w.days == {"train": DAYS[:5], "val": DAYS[5:7], "test": DAYS[7:]}
    assert w.val_start == day_start("2026-03-07") and w.test_start == day_start("2026-03-09")
    with pytest.raises(ValueError, match="need more than"):
        split_windows(DAYS[:5], val_days=2, test_days=3)


def test_windows_are_cut_by_event_time_with_the_boundary_second_in_the_later_window():
    """An event belongs to the window of its own time, wherever it was filed: the last
    second before the validation window trains, the boundary second validates. Putting
    ``val_start`` in the training window (``time <= hi``) fails here, and so does any
    split that reads a day folder (a late event at 23:59:59 filed under the next day)."""
    w = split_windows(DAYS, val_days=2, test_days=3)
    time = torch.tensor([w.val_start - 1, w.val_start, w.test_start - 1, w.test_start,
                         w.test_start + 10 * 86_400, 0])
    assert w.mask("train", time).tolist() == [True, False, False, False, False, True]
    assert w.mask("val", time).tolist() == [False, True, True, False, False, False]
    assert w.mask("test", time).tolist() == [False, False, False, True, True, False]
    imp = Impressions(user=torch.zeros(6, dtype=torch.int64), content=torch.zeros(6, dtype=torch.int64),
                      time=time, position=torch.zeros(6, dtype=torch.int64), clicked=torch.zeros(6))
    assert window_events(imp, w, "val").tolist() == [1, 2]
    # the folders that may hold a window's events, one day of slack each way
    assert w.folders("train", DAYS, 86_400) == DAYS[:6]
    assert w.folders("val", DAYS, 86_400) == DAYS[4:8]
    assert w.folders("test", DAYS, 0) == DAYS[7:]


def test_the_vocabulary_is_fitted_on_what_the_training_window_can_see():
    """Values only nodes first known at or after the training window's end hold get code
    0 (unknown); a node known from its first edge when it has no creation time."""
    import pyarrow as pa

    from clickgraph.core.vocab import known_from, vocab_rows
    from trainer.data import encode_nodes

    cutoff = 1_000
    created = np.array([0, 500, 999, 1_000, 0, 0])  # 0: no creation time
    first_seen = np.array([10, 600, NEVER, 1_000, 999, 1_000])
    known = known_from(created, first_seen)
    assert known.tolist() == [10, 500, 999, 1_000, 999, 1_000]
    table = pa.table({"id": list(range(6)), "created_ts_ms": (created * 1000).tolist(),
                      "country": ["de", "fr", "it", "nl", "es", "pt"]})
    features, vocab = encode_nodes(table, "user", None, vocab_rows(known, cutoff))
    assert vocab == {"country": ["de", "es", "fr", "it"]}
    assert features.categorical[:, 0].tolist() == [1, 3, 4, 0, 2, 0]


def test_pair_objective_trains_the_click_head_on_impressions_and_the_dot_product_on_negatives():
    """``train.random_negative_loss: pair``: the click loss sees the impressions only; the
    pair loss sees clicked impressions (1) against the random negatives (0)."""
    import torch.nn.functional as F

    from trainer.engine import Examples, pair_objective_loss

    label = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])  # 4 impressions, 2 random negatives
    examples = Examples(*(torch.zeros(6, dtype=torch.int64),) * 4, label=label, num_impressions=4)
    assert examples.pair_rows().tolist() == [0, 2, 4, 5]
    logits, pair = torch.randn(6), torch.randn(6)
    loss, report = pair_objective_loss(logits, pair, examples, 0.5, world_size=None)
    expected = (F.binary_cross_entropy_with_logits(logits[:4], label[:4])
                + 0.5 * F.binary_cross_entropy_with_logits(pair[[0, 2, 4, 5]],
                                                           torch.tensor([1.0, 1.0, 0.0, 0.0])))
    assert torch.allclose(loss, expected) and report == pytest.approx(float(expected))
    # the click head's logits of random negatives get no gradient
    logits.requires_grad_(True)
    pair_objective_loss(logits, pair, examples, 0.5, world_size=None)[0].backward()
    assert torch.all(logits.grad[4:] == 0) and torch.all(logits.grad[:4] != 0)


def test_node_identity_falls_back_for_new_and_untrained_nodes():
    """Id vectors start at zero; an id beyond the table (a node newer than the model)
    adds nothing; id dropout acts in training only."""
    from trainer.model import NodeEncoder

    features = NodeFeatures(torch.ones((5, 1), dtype=torch.int64), [2], learn_id_embedding=True)
    encoder = NodeEncoder(features, 4, id_dropout=0.5).eval()
    node, at = torch.tensor([0, 1, 4]), torch.zeros(3, dtype=torch.int64)
    fallback = encoder(features, node, at)
    assert torch.equal(encoder.identity(node), torch.zeros(3, 4))  # untrained: nothing
    with torch.no_grad():
        encoder.id_embedding.weight.fill_(1.0)
    wider = NodeFeatures(torch.ones((7, 1), dtype=torch.int64), [2], learn_id_embedding=True)
    got = encoder(wider, torch.tensor([0, 5, 6]), at)
    assert torch.allclose(got[0], fallback[0] + 1.0)
    assert torch.allclose(got[1:], fallback[1:].expand(2, -1))  # ids 5, 6: beyond the table
    encoder.train()
    torch.manual_seed(0)
    dropped = encoder.identity(torch.zeros(2000, dtype=torch.int64))[:, 0]
    assert 0.4 < float((dropped == 0).float().mean()) < 0.6


def test_a_checkpoint_grows_to_a_graph_with_more_nodes():
    """--continue and a later export: the id tables and their Adam moments gain zero rows
    for the new nodes; a table larger than the graph is another graph."""
    from trainer.checkpoint import CheckpointError, grow_id_tables
    from trainer.model import NodeEncoder

    small = NodeEncoder(NodeFeatures(torch.ones((3, 1), dtype=torch.int64), [2],
                                     learn_id_embedding=True), 4)
    large = NodeEncoder(NodeFeatures(torch.ones((5, 1), dtype=torch.int64), [2],
                                     learn_id_embedding=True), 4)
    with torch.no_grad():
        small.id_embedding.weight.fill_(2.0)
    optimizer = torch.optim.Adam(small.parameters())
    small(small_features := NodeFeatures(torch.ones((3, 1), dtype=torch.int64), [2],
                                         learn_id_embedding=True),
          torch.tensor([0, 2]), torch.zeros(2, dtype=torch.int64)).sum().backward()
    optimizer.step()
    state, moments = grow_id_tables(large, small.state_dict(), optimizer.state_dict())
    large.load_state_dict(state)
    weight = large.id_embedding.weight
    assert torch.equal(weight[3:], torch.zeros(2, 4)) and torch.all(weight[:3] != 0)
    grown = torch.optim.Adam(large.parameters())
    grown.load_state_dict(moments)
    large(NodeFeatures(torch.ones((5, 1), dtype=torch.int64), [2], learn_id_embedding=True),
          torch.tensor([4]), torch.zeros(1, dtype=torch.int64)).sum().backward()
    grown.step()  # moments of the right shape
    assert small_features.num_nodes == 3
    with pytest.raises(CheckpointError, match="ids are reused"):
        grow_id_tables(small, large.state_dict())


def test_history_pairs_give_every_example_its_seed_rows_edges():
    from trainer.history import example_edge_pairs

    seed_row = torch.tensor([2, 0, 2, 1])  # examples 0 and 2 share row 2
    edge_dst = torch.tensor([0, 2, 2, 3, 1])  # row 3 has no example
    example, edge = example_edge_pairs(seed_row, edge_dst)
    got = sorted(zip(example.tolist(), edge.tolist()))
    assert got == [(0, 1), (0, 2), (1, 0), (2, 1), (2, 2), (3, 4)]


def test_content_type_loss_weight_is_per_content_and_weighs_clicks_only():
    from trainer.engine import content_loss_weights

    data = dataclasses.replace(_data(_graph(), T0 + 900),
                               vocab={"content": {"content_type": ["article", "video"]}})
    assert content_loss_weights(_train_cfg(), data) is None
    cfg = _train_cfg(content_type_loss_weight={"video": 3.0}, strategy="most_recent")
    weight = content_loss_weights(cfg, data)
    codes = data.features["content"].categorical[:, 0]  # 1 article, 2 video
    assert torch.equal(weight, torch.where(codes == 2, 3.0, 1.0))
    cfg = dataclasses.replace(cfg, content_type_loss_weight={"article": 2.0, "video": 3.0})
    # Under most_recent the weighted-sampling default is ignored; one step runs and the
    # weighted loss differs from the unweighted one on the same batch and parameters.
    losses = []
    for change in ({}, cfg.content_type_loss_weight):
        torch.manual_seed(0)
        engine = ClickEngine(data, dataclasses.replace(cfg, content_type_loss_weight=change))
        losses.append(engine.train_step(torch.arange(16), torch.Generator().manual_seed(0)))
    assert losses[0] != pytest.approx(losses[1])


def test_history_match_reports_per_relation_statistics_of_the_earlier_edges_only():
    """``train.model.history_match``: the attention's extra columns are per relation; the
    model with them still scores the same when the future changes."""
    seed_time = T0 + 600
    base = _train_cfg(strategy="most_recent")
    cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, history_match=True))
    past = ClickEngine(_data(_graph(), seed_time), cfg)
    _trained_identities(past.model)
    future = ClickEngine(_data(_graph(extra_after=seed_time), seed_time), cfg)
    future.model.load_state_dict(past.model.state_dict())
    a = past.score(torch.arange(16), torch.Generator().manual_seed(5))
    b = future.score(torch.arange(16), torch.Generator().manual_seed(5))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    history = past.model.history["user"]
    assert history.out_dim_extra == 2 * len(history.relations) > 0


def test_expand_ranges_lists_every_position_range_by_range():
    from trainer.graph import expand_ranges

    which, position = expand_ranges(torch.tensor([5, 0, 9, 2]), torch.tensor([2, 0, 3, 1]))
    assert which.tolist() == [0, 0, 2, 2, 2, 3]
    assert position.tolist() == [5, 6, 9, 10, 11, 2]
