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
  not capped);
* **item cap** across lists: one item in at most ``item_cap`` of the lists built together
  (``evaluate.diversity.max_item_share`` of the users). The controls above act within one
  list, and when users share their best candidates they diversify every list the same way:
  the cap is what spreads exposure over the catalogue. Each slot is filled for every user
  at once; when more users pick an item than it has room for, those with the highest
  click probability for it keep it (ties: the lower row) and the others pick again
  without it, until every user holds a slot.

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
           category_cap: int = 0, item: Tensor | None = None, item_cap: int = 0) -> Reranked:
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
        item: int64 ``[U, P]`` item id per candidate (read when ``item_cap > 0``).
        item_cap: Most lists one item may enter; 0: no cap. A slot no candidate with room
            can fill is relaxed like the others (``relaxed_slots``).

    Returns:
        The chosen candidates' columns, in list order.
    """
    num_users, num_candidates = score.shape
    if not 0 < top_k <= num_candidates:
        raise ValueError(f"top_k must be within [1, {num_candidates}], got {top_k}")
    if not 0.0 <= mmr_lambda <= 1.0:
        raise ValueError(f"mmr_lambda must be within [0, 1], got {mmr_lambda}")
    if item_cap < 0 or (item_cap and (item is None or item.shape != score.shape)):
        raise ValueError(f"item_cap must be >= 0 and needs item ids shaped like score "
                         f"{tuple(score.shape)}, got {item_cap} and "
                         f"{None if item is None else tuple(item.shape)}")
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
    listed = (torch.zeros(int(item.max()) + 1, dtype=torch.int64, device=device)
              if item_cap else None)  # lists each item is in so far
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
        if listed is None:
            pick = torch.where(allowed, value, -torch.inf).argmax(dim=1)
        else:
            pick, capped = _capped_picks(value, score, allowed, item, listed, item_cap)
            relaxed += capped
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


def _capped_picks(value: Tensor, score: Tensor, allowed: Tensor, item: Tensor, listed: Tensor,
                  item_cap: int) -> tuple[Tensor, int]:
    """One slot of every list under the item cap (:func:`rerank`); updates ``listed``.

    Returns:
        The column picked per user, and how many users found no allowed candidate with
        room left (they take their best allowed candidate regardless of the cap).
    """
    device = value.device
    base, allowed = allowed, allowed.clone()
    pick = torch.empty(value.shape[0], dtype=torch.int64, device=device)
    pending = torch.arange(value.shape[0], device=device)
    relaxed = 0
    while pending.numel():
        mask = allowed[pending] & (listed[item[pending]] < item_cap)
        stuck = ~mask.any(dim=1)
        if bool(stuck.any()):  # no room anywhere: the cap gives way, counted
            relaxed += int(stuck.sum())
            users = pending[stuck]
            column = torch.where(base[users], value[users], -torch.inf).argmax(dim=1)
            pick[users] = column
            listed.index_add_(0, item[users, column], torch.ones_like(column))
            pending, mask = pending[~stuck], mask[~stuck]
            if not pending.numel():
                break
        column = torch.where(mask, value[pending], -torch.inf).argmax(dim=1)
        wanted = item[pending, column]
        # The users who want the same item, by their click probability (ties: lower row).
        order = torch.argsort(score[pending, column], descending=True, stable=True)
        order = order[torch.argsort(wanted[order], stable=True)]
        _, counts = torch.unique_consecutive(wanted[order], return_counts=True)
        rank = (torch.arange(order.numel(), device=device)
                - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts))
        keep = torch.empty(pending.numel(), dtype=torch.bool, device=device)
        keep[order] = rank < (item_cap - listed[wanted[order]])
        pick[pending[keep]] = column[keep]
        listed.index_add_(0, wanted[keep], torch.ones_like(column[keep]))
        allowed[pending[~keep], column[~keep]] = False
        pending = pending[~keep]
    return pick, relaxed
