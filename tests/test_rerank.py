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
