"""The exposure controls' re-ranker (trainer/rerank.py) on hand-built candidate lists."""

from __future__ import annotations

import pytest
import torch

from trainer.rerank import rerank, type_quotas


def _candidates(num_users: int = 30, num_candidates: int = 40, dim: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    score = torch.sort(torch.rand((num_users, num_candidates), generator=generator),
                       dim=1, descending=True).values
    states = torch.nn.functional.normalize(
        torch.randn((num_users, num_candidates, dim), generator=generator), dim=-1)
    content_type = torch.randint(0, 3, (num_users, num_candidates), generator=generator)
    category = torch.randint(-1, 5, (num_users, num_candidates), generator=generator)
    return score, states, content_type, category


def test_lambda_one_and_no_constraints_is_the_plain_top_k():
    score, states, content_type, category = _candidates()
    out = rerank(score, states, content_type, category, 10, mmr_lambda=1.0)
    assert torch.equal(out.position, torch.arange(10).expand(score.shape[0], 10))
    assert out.relaxed_slots == 0
    # ties keep the lower column, as the uncontrolled sort does
    tied = rerank(torch.ones(2, 5), states[:2, :5], content_type[:2, :5], category[:2, :5], 3)
    assert tied.position.tolist() == [[0, 1, 2], [0, 1, 2]]


def test_target_share_is_met_exactly_with_the_best_items_of_each_type():
    score, states, content_type, category = _candidates()
    out = rerank(score, states, content_type, category, 10, quotas={2: 4})
    picked_type = content_type.gather(1, out.position)
    assert bool(((picked_type == 2).sum(1) == 4).all())
    for user in range(score.shape[0]):
        of_two = torch.nonzero(content_type[user] == 2).view(-1)[:4]
        others = torch.nonzero(content_type[user] != 2).view(-1)[:6]
        assert sorted(out.position[user].tolist()) == sorted(of_two.tolist() + others.tolist())


def test_an_unreachable_target_is_relaxed_and_counted():
    score = torch.tensor([[0.9, 0.8, 0.7, 0.6]])
    content_type = torch.tensor([[0, 0, 0, 1]])
    out = rerank(score, torch.zeros(1, 4, 2), content_type, torch.full((1, 4), -1), 3,
                 quotas={1: 2})
    assert out.position.tolist() == [[0, 3, 1]]  # one type-1 item exists; slot 3 relaxed
    assert out.relaxed_slots == 1


def test_category_cap_is_respected_and_unknown_categories_are_not_capped():
    score, states, content_type, category = _candidates()
    out = rerank(score, states, content_type, category, 10, category_cap=2)
    picked = category.gather(1, out.position)
    assert out.relaxed_slots == 0
    for row in picked.tolist():
        known = [c for c in row if c >= 0]
        assert max(known.count(c) for c in set(known)) <= 2


def test_mmr_trades_relevance_for_diversity():
    """Candidates 0 and 1 are the same direction; 2 is orthogonal and scores a little
    lower. Plain top-2 takes 0 and 1; MMR at lambda 0.5 takes 0 and 2."""
    score = torch.tensor([[0.9, 0.85, 0.8, 0.1]])
    states = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.7071, 0.7071]]])
    kinds, cats = torch.zeros(1, 4, dtype=torch.int64), torch.full((1, 4), -1)
    assert rerank(score, states, kinds, cats, 2, mmr_lambda=1.0).position.tolist() == [[0, 1]]
    assert rerank(score, states, kinds, cats, 2, mmr_lambda=0.5).position.tolist() == [[0, 2]]


def test_settings_are_checked():
    score, states, content_type, category = _candidates(2, 5)
    with pytest.raises(ValueError, match="top_k"):
        rerank(score, states, content_type, category, 6)
    with pytest.raises(ValueError, match="mmr_lambda"):
        rerank(score, states, content_type, category, 3, mmr_lambda=1.5)
    with pytest.raises(ValueError, match="more than"):
        type_quotas({"video": 0.7, "article": 0.5}, 10)
    assert type_quotas({"video": 0.3}, 20) == {"video": 6}


def _shared_candidates(num_users: int = 40, num_items: int = 60, seed: int = 1):
    """Every user ranks the same catalogue, with noise: the lists overlap heavily."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.linspace(1.0, 0.0, num_items)
    score = base + 0.05 * torch.rand((num_users, num_items), generator=generator)
    score, item = torch.sort(score, dim=1, descending=True)
    states = torch.zeros(num_users, num_items, 2)
    kinds = torch.zeros(num_users, num_items, dtype=torch.int64)
    return score, states, kinds, torch.full((num_users, num_items), -1), item


def test_item_cap_bounds_every_items_lists_and_keeps_lists_distinct():
    score, states, kinds, cats, item = _shared_candidates()
    plain = rerank(score, states, kinds, cats, 10)
    assert int(torch.bincount(item.gather(1, plain.position).view(-1)).max()) == 40
    out = rerank(score, states, kinds, cats, 10, item=item, item_cap=8)
    listed = item.gather(1, out.position)
    assert int(torch.bincount(listed.view(-1)).max()) <= 8
    assert out.relaxed_slots == 0
    assert all(len(set(row)) == 10 for row in listed.tolist())
    assert len(set(listed.view(-1).tolist())) >= 40 * 10 // 8


def test_item_cap_gives_a_contested_item_to_the_users_who_value_it_most():
    # both users want item 7 first; one place left for it: user 1 values it more
    score = torch.tensor([[0.9, 0.5, 0.1], [0.95, 0.2, 0.1]])
    item = torch.tensor([[7, 3, 4], [7, 5, 4]])
    states, kinds, cats = torch.zeros(2, 3, 2), torch.zeros(2, 3, dtype=torch.int64), torch.full((2, 3), -1)
    out = rerank(score, states, kinds, cats, 2, item=item, item_cap=1)
    assert item.gather(1, out.position).tolist() == [[3, 4], [7, 5]]
    assert out.relaxed_slots == 0


def test_item_cap_gives_way_and_counts_when_no_candidate_has_room():
    score = torch.tensor([[0.9, 0.8], [0.9, 0.8], [0.9, 0.8]])
    item = torch.tensor([[1, 2], [1, 2], [1, 2]])
    states, kinds, cats = torch.zeros(3, 2, 2), torch.zeros(3, 2, dtype=torch.int64), torch.full((3, 2), -1)
    out = rerank(score, states, kinds, cats, 2, item=item, item_cap=1)
    # slot 0: user 0 takes item 1, user 1 item 2, user 2 finds no room and takes its best;
    # slot 1: every item is full, all three take their remaining candidate
    assert item.gather(1, out.position).tolist() == [[1, 2], [2, 1], [1, 2]]
    assert out.relaxed_slots == 4


def test_item_cap_needs_item_ids():
    score, states, kinds, cats, item = _shared_candidates(4, 6)
    with pytest.raises(ValueError, match="item_cap"):
        rerank(score, states, kinds, cats, 3, item_cap=2)
    with pytest.raises(ValueError, match="item_cap"):
        rerank(score, states, kinds, cats, 3, item=item[:, :2], item_cap=2)
