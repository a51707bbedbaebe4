"""``top_k_content``: scoring a catalogue in slices gives the lists of one sort over it."""

from __future__ import annotations

import pytest
import torch

from trainer import recommend
from trainer.recommend import PairScorer, top_k_content


def _probabilities(user_state, content_state, position, seed_time, summaries):
    # coarse values so that many pairs tie; ties must keep the lower catalogue index first
    value = torch.round((user_state * content_state).sum(dim=1) * 2) / 2
    if summaries:
        value = value + summaries[0]
    return torch.sigmoid(value)


class _Context:
    """A history-attention context stand-in: the summary is a function of the absolute
    catalogue index, so a slice that passed relative indices would change the scores."""

    def __init__(self):
        self.largest_call = 0

    def summaries(self, pair_users, pair_contents, user_index, content_index):
        self.largest_call = max(self.largest_call, user_index.numel())
        return [(content_index % 3).to(torch.float32) * 0.5]


@pytest.mark.parametrize("history", [False, True])
@pytest.mark.parametrize("pairs", [1, 5, 11, 40, 1000])
def test_slices_of_the_catalogue_give_the_one_sort_lists(monkeypatch, history, pairs):
    generator = torch.Generator().manual_seed(3)
    users = torch.randn(9, 4, generator=generator)
    contents = torch.randn(23, 4, generator=generator)
    context = _Context()
    scorer = PairScorer(_probabilities,
                        (lambda u, c, t: context) if history else None)
    ids = dict(users=torch.arange(9), contents=torch.arange(23)) if history else {}
    whole_index, whole_score = top_k_content(scorer, users, contents, 0, 6, **ids)
    # the reference: one sort over every pair of a row
    expected = torch.stack([
        torch.sort(_probabilities(users[u].expand(23, -1), contents, None, None,
                                  [(torch.arange(23) % 3).to(torch.float32) * 0.5]
                                  if history else []),
                   descending=True, stable=True)[1][:6] for u in range(9)])
    assert torch.equal(whole_index, expected)
    monkeypatch.setattr(recommend, "PAIRS_PER_CALL", pairs)
    monkeypatch.setattr(recommend, "HISTORY_PAIRS_PER_CALL", pairs)
    context.largest_call = 0
    index, score = top_k_content(scorer, users, contents, 0, 6, **ids)
    assert torch.equal(index, whole_index)
    assert torch.equal(score, whole_score)
    if history:
        # a call never holds more pairs than the constant (one user's row at least)
        assert context.largest_call <= max(pairs, 1)
