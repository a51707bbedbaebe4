"""Exposure controls: re-ranking a user's best-scored candidates into the exported list.

The click model's scores decide what is relevant; these controls decide how much of the
catalogue a list exposes, on top of them (``evaluate.target_share``, ``evaluate.diversity``,
docs/export.md):

* **target share** per content type: a list of ``k`` holds exactly
  ``round(share * k)`` items of that type (the best-scored ones that the other controls
  allow), when the candidates hold that many;
* **maximal marginal relevance** (Carbonell and Goldstein, 1998): the list is built greedily,
  each slot taking the candidate that maximises
  ``lambda * relevance - (1 - lambda) * max cosine to the items already listed``, where
  relevance is the click probability rescaled to [0, 1] over the user's candidates and the
  cosine is between content embeddings (centred on the catalogue's mean by
  :func:`trainer.recommend.apply_controls`); ``lambda = 1`` is the plain top-k;
* **category cap**: at most ``cap`` items of one category per list (unknown categories are
  not capped).

A slot whose constraints no candidate meets (too few candidates of a targeted type, a cap
too tight for the pool) takes the best remaining candidate by the MMR value alone; such
slots are counted (``relaxed_slots``) so a target that could not be met is visible.

Everything is vectorised over users; the loop is over the ``k`` slots.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Reranked:
    """Result of :func:`rerank`.

    Attributes:
        position: int64 ``[U, k]`` column of each chosen candidate in the candidate
            matrix, in list order.
        relaxed_slots: Slots (over all lists) filled without meeting the constraints.
    """

    position: Tensor
    relaxed_slots: int


def type_quotas(target_share: Mapping[str, float], top_k: int) -> dict[str, int]:
    """Items of each targeted content type in a list of ``top_k``: ``round(share * k)``.

    Raises:
        ValueError: Quotas summing to more than ``top_k``.
    """
    quotas = {name: int(round(share * top_k)) for name, share in target_share.items()}
    if sum(quotas.values()) > top_k:
        raise ValueError(f"target shares {dict(target_share)} ask for more than {top_k} items")
    return quotas


def rerank(score: Tensor, unit_states: Tensor, content_type: Tensor, category: Tensor,
           top_k: int, quotas: Mapping[int, int] | None = None, mmr_lambda: float = 1.0,
           category_cap: int = 0) -> Reranked:
    """Builds each user's list of ``top_k`` from their candidates under the controls.

    Args:
        score: float ``[U, P]`` click probabilities of each user's ``P`` candidates.
        unit_states: float ``[U, P, D]`` the candidates' content embeddings, unit length
            (only read when ``mmr_lambda < 1``).
        content_type: int64 ``[U, P]`` a content-type code per candidate.
        category: int64 ``[U, P]`` category id per candidate, ``-1`` when unknown.
        top_k: List length, ``<= P``.
        quotas: Content-type code -> exact count per list (:func:`type_quotas`).
        mmr_lambda: Weight of relevance against redundancy, in [0, 1].
        category_cap: Most items of one category per list; 0: no cap.

    Returns:
        The chosen candidates' columns, in list order.
    """
    num_users, num_candidates = score.shape
    if not 0 < top_k <= num_candidates:
        raise ValueError(f"top_k must be within [1, {num_candidates}], got {top_k}")
    if not 0.0 <= mmr_lambda <= 1.0:
        raise ValueError(f"mmr_lambda must be within [0, 1], got {mmr_lambda}")
    quotas = dict(quotas or {})
    if sum(quotas.values()) > top_k:
        raise ValueError(f"quotas {quotas} ask for more than {top_k} items")
    device = score.device
    score = score.to(torch.float64)
    low = score.min(dim=1, keepdim=True).values
    span = (score.max(dim=1, keepdim=True).values - low).clamp(min=1e-12)
    relevance = (score - low) / span
    use_mmr = mmr_lambda < 1.0
    max_similarity = torch.zeros_like(relevance)
    taken = torch.zeros((num_users, num_candidates), dtype=torch.bool, device=device)
    type_count = {code: torch.zeros(num_users, dtype=torch.int64, device=device) for code in quotas}
    num_categories = int(category.max()) + 1 if category.numel() else 0
    category_count = torch.zeros((num_users, max(num_categories, 1)), dtype=torch.int64,
                                 device=device)
    known_category = category >= 0
    category_index = category.clamp(min=0)
    rows = torch.arange(num_users, device=device)
    chosen = torch.empty((num_users, top_k), dtype=torch.int64, device=device)
    relaxed = 0
    for slot in range(top_k):
        value = relevance if not use_mmr else (
            mmr_lambda * relevance - (1.0 - mmr_lambda) * max_similarity
            if slot else relevance)
        free = ~taken
        allowed = free.clone()
        unmet = torch.zeros(num_users, dtype=torch.int64, device=device)
        needs_type = torch.zeros_like(free)
        for code, quota in quotas.items():
            of_type = content_type == code
            missing = (quota - type_count[code]).clamp(min=0)
            allowed &= ~(of_type & (missing == 0).unsqueeze(1))
            unmet += missing
            needs_type |= of_type & (missing > 0).unsqueeze(1)
        # The remaining slots are all owed to targeted types: only those may go here.
        owed = (top_k - slot) <= unmet
        allowed &= ~owed.unsqueeze(1) | needs_type
        if category_cap > 0:
            full = category_count.gather(1, category_index) >= category_cap
            allowed &= ~(full & known_category)
        stuck = ~allowed.any(dim=1)
        relaxed += int(stuck.sum())
        allowed = torch.where(stuck.unsqueeze(1), free, allowed)
        pick = torch.where(allowed, value, -torch.inf).argmax(dim=1)
        chosen[:, slot] = pick
        taken[rows, pick] = True
        picked_type = content_type[rows, pick]
        for code in quotas:
            type_count[code] += (picked_type == code).long()
        picked_category = category[rows, pick]
        category_count[rows, picked_category.clamp(min=0)] += (picked_category >= 0).long()
        if use_mmr:
            picked_state = unit_states[rows, pick]
            similarity = torch.einsum("upd,ud->up", unit_states, picked_state).to(torch.float64)
            max_similarity = similarity if slot == 0 else torch.maximum(max_similarity, similarity)
    return Reranked(position=chosen, relaxed_slots=relaxed)
