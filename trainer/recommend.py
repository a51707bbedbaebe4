"""Recommendation controls: what the click model would put at the top of a feed.

AUC says whether the model orders shown items well; it says nothing about what the model
does to the catalogue when it ranks everything. The controls answer that on a
deterministic sample of users: score every content piece of the catalogue for each user,
keep the top ``k``, and measure

* **coverage**: distinct items in all lists / catalogue size (a model that recommends the
  same ten items to everyone has coverage ``10 / catalogue``);
* **intra-list diversity**: per list, ``1 -`` the mean pairwise cosine similarity of its
  items' content embeddings, averaged over lists (0: every list holds near-identical
  items); and the share of distinct categories per list;
* **content-type shares** (video above all) in the lists against the catalogue's.

Everything is as of one cutoff time ``t`` (seconds): users and content that exist before
``t`` (:func:`trainer.inference.existing_nodes`), their embeddings as of ``t``, the click
head scored at feed position 0 and seed time ``t``. Nothing is excluded from a user's
candidates, not even content the user already saw or clicked: the controls measure what
the model ranks high, not a production feed policy, and filtering history would mix the
two (a feed that removes seen items can add that filter on top).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clickgraph.core.config import EvaluateConfig
from clickgraph.core.errors import InputError
from trainer.inference import PairContext, TrainedModel, score_pairs
from trainer.rerank import rerank, type_quotas

VIDEO = "video"
# the relation that links content to its category (in-edges of the category)
CATEGORY_RELATION = ("content", "in", "category")
# scored (user, content) rows per call of the click head; bounds the memory of one call
# whatever the catalogue's size (a larger catalogue is scored in slices)
PAIRS_PER_CALL = 262_144
# the same with history attention: each pair also reads its seeds' neighbours. At the
# default catalogue (3,000) calls went from 15,000 pairs to 3,000 when this went from
# 16,384 to 4,096, and the export's peak fell by 140-220 MiB (BENCHMARKS.md, issue 17)
HISTORY_PAIRS_PER_CALL = 4_096


@dataclass(frozen=True)
class Recommendations:
    """Top-``k`` lists of sampled users.

    Attributes:
        user: int64 ``[U]`` dense user ids, ascending.
        content: int64 ``[U, K]`` dense content ids, best first.
        score: float32 ``[U, K]`` click probabilities, non-increasing along each row.
        cutoff: Seconds since epoch the lists are as of.
    """

    user: Tensor
    content: Tensor
    score: Tensor
    cutoff: int


@dataclass(frozen=True)
class PairScorer:
    """How :func:`top_k_content` scores ``(user, content)`` pairs: the click head of a
    model, in one process (:func:`pair_scorer`) or on the workers of a distributed export
    (:mod:`trainer.dist_inference`).

    Attributes:
        probabilities: ``(user_state, content_state, position, seed_time, summaries)`` ->
            float32 ``[B]`` click probabilities on the CPU.
        context: For a model with history attention: ``(users, contents, cutoff)`` -> a
            :class:`~trainer.inference.PairContext` of those nodes as seeds at ``cutoff``;
            ``None`` for a model without.
    """

    probabilities: Callable[..., Tensor]
    context: Callable[[Tensor, Tensor, int], PairContext] | None = None


def pair_scorer(model: TrainedModel | PairScorer) -> PairScorer:
    """The :class:`PairScorer` of a model loaded in this process (a scorer stays itself)."""
    if isinstance(model, PairScorer):
        return model
    context = ((lambda users, contents, cutoff: PairContext(model, users, contents, cutoff))
               if model.engine.model.history else None)
    return PairScorer(partial(score_pairs, model), context)


def sample_users(users: Tensor, count: int, seed: int) -> Tensor:
    """A deterministic sample of ``count`` of ``users`` (all of them when fewer), ascending.

    The draw depends only on the candidate set, ``count`` and ``seed``; the candidates'
    input order does not matter.
    """
    candidates = torch.sort(users.to(torch.int64)).values
    if count <= 0:
        raise InputError(f"evaluate.recommend_users must be positive, got {count}")
    if candidates.numel() <= count:
        return candidates
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(candidates.numel(), generator=generator)[:count]
    return torch.sort(candidates[pick]).values


@torch.no_grad()
def top_k_content(model: TrainedModel | PairScorer, user_states: Tensor, content_states: Tensor, cutoff: int,
                  top_k: int, users: Tensor | None = None, contents: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
    """Score every (user, content) pair and keep each user's best ``top_k``.

    Args:
        model: The trained model (its click head scores the pairs), or a :class:`PairScorer`.
        user_states: float32 ``[U, D]`` user embeddings as of ``cutoff``.
        content_states: float32 ``[C, D]`` embeddings of the catalogue as of ``cutoff``.
        cutoff: Seed time of every pair, seconds (the hour feature reads it).
        top_k: List length; capped at ``C``.
        users, contents: Their node ids (``[U]``, ``[C]``), required by a model with
            history attention (its pairs' summaries read the nodes' neighbourhoods).

    Returns:
        ``(index, score)``, each ``[U, min(top_k, C)]``: catalogue row indices (into
        ``content_states``) best first, and their click probabilities. Ties keep the
        lower catalogue index first, so the lists are deterministic.
    """
    num_users, num_content = user_states.shape[0], content_states.shape[0]
    k = min(top_k, num_content)
    index = torch.empty((num_users, k), dtype=torch.int64)
    score = torch.empty((num_users, k), dtype=torch.float32)
    if num_users == 0 or k == 0:
        return index, score
    scorer, context = pair_scorer(model), None
    if scorer.context is not None:
        if users is None or contents is None:
            raise ValueError("a model with history attention scores pairs from node ids: "
                             "pass users and contents")
        context = scorer.context(users, contents, cutoff)
    pairs = PAIRS_PER_CALL if context is None else HISTORY_PAIRS_PER_CALL
    content_per_call = min(num_content, pairs)
    users_per_call = max(1, pairs // content_per_call)
    for start in range(0, num_users, users_per_call):
        chunk = torch.arange(start, min(start + users_per_call, num_users))
        best_score = torch.empty((chunk.numel(), 0), dtype=torch.float32)
        best_index = torch.empty((chunk.numel(), 0), dtype=torch.int64)
        # a catalogue larger than one call is scored in slices; each slice's scores merge
        # into the best k so far, which hold lower catalogue indices than the slice, so a
        # stable sort keeps ties in catalogue order as one sort over the whole row would
        for first in range(0, num_content, content_per_call):
            slice_index = torch.arange(first, min(first + content_per_call, num_content))
            rows = chunk.numel() * slice_index.numel()
            user_index = chunk.repeat_interleave(slice_index.numel())
            content_index = slice_index.repeat(chunk.numel())
            pair_users, pair_contents = user_states[user_index], content_states[content_index]
            summaries = ([] if context is None else
                         context.summaries(pair_users, pair_contents, user_index, content_index))
            probabilities = scorer.probabilities(
                pair_users, pair_contents,
                torch.zeros(rows, dtype=torch.int64),
                torch.full((rows,), int(cutoff), dtype=torch.int64), summaries,
            ).view(chunk.numel(), slice_index.numel())
            merged = torch.cat([best_score, probabilities], dim=1)
            merged_index = torch.cat([best_index, slice_index.expand(chunk.numel(), -1)], dim=1)
            ordered, order = torch.sort(merged, dim=1, descending=True, stable=True)
            best_score, best_index = ordered[:, :k], merged_index.gather(1, order[:, :k])
        index[start:start + chunk.numel()] = best_index
        score[start:start + chunk.numel()] = best_score
    return index, score


def intra_list_diversity(list_states: Tensor) -> float | None:
    """Mean over lists of ``1 - mean pairwise cosine similarity`` of the list's items.

    Args:
        list_states: float ``[U, K, D]`` embeddings of each list's items.

    Returns:
        The mean, or ``None`` when lists hold fewer than two items (no pairs).
    """
    num_lists, k = list_states.shape[0], list_states.shape[1]
    if num_lists == 0 or k < 2:
        return None
    unit = torch.nn.functional.normalize(list_states.to(torch.float64), dim=-1)
    total = unit.sum(dim=1)
    # sum over ordered pairs i != j of <u_i, u_j> = |sum u|^2 - sum |u_i|^2
    pair_sum = (total * total).sum(-1) - (unit * unit).sum(dim=(1, 2))
    mean_cosine = pair_sum / (k * (k - 1))
    return float((1.0 - mean_cosine).mean())


def content_categories(model: TrainedModel, cutoff: int) -> Tensor:
    """Per content node, its category id linked before ``cutoff`` (``-1`` when none).

    Content has one category in the generated data; when a store links several, the
    lowest category id stands for the content piece.
    """
    data = model.data
    num_content = data.graph.num_nodes["content"]
    csr = data.graph.csr.get(CATEGORY_RELATION)
    if csr is None or csr.num_edges == 0:
        return lowest_category(num_content, torch.empty(0, dtype=torch.int64),
                               torch.empty(0, dtype=torch.int64))
    visible = csr.edge_time < cutoff
    return lowest_category(num_content, csr.neighbor[visible], csr.edge_dst()[visible])


def lowest_category(num_content: int, content: Tensor, linked: Tensor) -> Tensor:
    """int64 ``[num_content]``: per content node, the lowest category id among the links
    ``content[i] -> linked[i]`` (already restricted to those before the cutoff), ``-1``
    for a node without any."""
    large = torch.iinfo(torch.int64).max
    lowest = torch.full((num_content,), large, dtype=torch.int64).scatter_reduce(
        0, content.to(torch.int64), linked.to(torch.int64), reduce="amin")
    return torch.where(lowest == large, torch.full_like(lowest, -1), lowest)


def type_shares(types: list[str]) -> dict[str, float]:
    """Share of each value in ``types`` (sums to 1; empty dict for an empty list)."""
    if not types:
        return {}
    values, counts = np.unique(np.asarray(types, dtype=object).astype(str), return_counts=True)
    return {str(v): float(c) / len(types) for v, c in zip(values, counts)}


def control_metrics(recs: Recommendations, catalogue: Tensor, catalogue_states: Tensor,
                    content_type: list[str], category: Tensor) -> dict[str, Any]:
    """The controls of a set of top-``k`` lists.

    Args:
        recs: The lists (``content`` holds dense content ids).
        catalogue: int64 ``[C]`` dense ids of the content eligible at the cutoff.
        catalogue_states: float32 ``[C, D]`` their embeddings, row ``i`` for ``catalogue[i]``.
        content_type: Content type of every content node, indexed by dense id
            (``None`` or ``""`` when unknown, counted as ``"unknown"``).
        category: int64 ``[num_content]`` category per dense content id (``-1`` unknown).

    Returns:
        ``users``, ``top_k``, ``catalogue_size``, ``distinct_recommended``, ``coverage``,
        ``intra_list_diversity``, ``catalogue_diversity`` (the same measure over the whole
        catalogue, the reference a list's value is read against), ``category_diversity``
        (mean distinct categories / list length; None in a store without categories), ``video_share_topk``,
        ``video_share_catalogue``, ``video_share_distinct`` (video among the distinct
        recommended items), ``content_type_share_topk``, ``content_type_share_catalogue``,
        ``mean_score``.
    """
    num_users, k = recs.content.shape
    catalogue_size = int(catalogue.numel())
    row_of = torch.full((len(content_type),), -1, dtype=torch.int64)
    row_of[catalogue] = torch.arange(catalogue_size)
    rows = row_of[recs.content]
    if bool((rows < 0).any()):
        raise ValueError("recommendations name content outside the catalogue at the cutoff")
    names = [t if t else "unknown" for t in content_type]
    listed = [names[i] for i in recs.content.reshape(-1).tolist()]
    in_catalogue = [names[i] for i in catalogue.tolist()]
    topk_shares, catalogue_shares = type_shares(listed), type_shares(in_catalogue)
    distinct_ids = torch.unique(recs.content)
    distinct = int(distinct_ids.numel())
    distinct_video = sum(names[i] == VIDEO for i in distinct_ids.tolist())
    if num_users and k and bool((category >= 0).any()):  # a store without categories: None
        categories = category[recs.content]
        distinct_categories = [len(set(row)) for row in categories.tolist()]
        category_diversity = float(np.mean(distinct_categories)) / k
    else:
        category_diversity = None
    return {
        "users": int(num_users),
        "top_k": int(k),
        "catalogue_size": catalogue_size,
        "distinct_recommended": distinct,
        "coverage": distinct / catalogue_size if catalogue_size else None,
        "intra_list_diversity": intra_list_diversity(catalogue_states[rows]) if num_users else None,
        "catalogue_diversity": intra_list_diversity(catalogue_states.unsqueeze(0)),
        "category_diversity": category_diversity,
        "video_share_topk": topk_shares.get(VIDEO, 0.0) if listed else None,
        "video_share_catalogue": catalogue_shares.get(VIDEO, 0.0) if in_catalogue else None,
        "video_share_distinct": distinct_video / distinct if distinct else None,
        "content_type_share_topk": topk_shares,
        "content_type_share_catalogue": catalogue_shares,
        "mean_score": float(recs.score.mean()) if recs.score.numel() else None,
        "position": 0,
        "excluded": "nothing (seen and clicked content stays eligible)",
    }


def head(recs: Recommendations, top_k: int) -> Recommendations:
    """The first ``top_k`` items of every list (the uncontrolled top-k of a candidate pool)."""
    return Recommendations(user=recs.user, content=recs.content[:, :top_k],
                           score=recs.score[:, :top_k], cutoff=recs.cutoff)


def item_cap(max_item_share: float, lists: int) -> int:
    """Most lists one item may enter: ``ceil(max_item_share * lists)``; 0 (no cap) for a
    share of 0."""
    return math.ceil(max_item_share * lists - 1e-9) if max_item_share > 0 else 0


def apply_controls(candidates: Recommendations, catalogue: Tensor, catalogue_states: Tensor,
                   content_type: list[str], category: Tensor, ev: EvaluateConfig
                   ) -> tuple[Recommendations, dict[str, Any]]:
    """The exposure controls of ``evaluate`` (``target_share``, ``diversity``) on each user's
    candidates (:mod:`trainer.rerank`).

    Args:
        candidates: Each user's best ``evaluate.rerank_candidates`` items, best first.
        catalogue: int64 ``[C]`` dense content ids; ``catalogue_states`` ``[C, D]`` their
            embeddings.
        catalogue_states: As above.
        content_type: Content type per dense content id (as for :func:`control_metrics`).
        category: int64 ``[num_content]`` category per dense content id.
        ev: The ``evaluate`` section.

    Returns:
        The controlled top-``evaluate.top_k`` lists and the settings applied
        (``target_share``, ``quotas``, ``diversity``, ``candidates``, ``relaxed_slots``).
    """
    k = min(ev.top_k, candidates.content.shape[1])
    names = [t if t else "unknown" for t in content_type]
    codes = {name: code for code, name in enumerate(sorted(set(names)))}
    type_code = torch.tensor([codes[n] for n in names], dtype=torch.int64)
    quotas = type_quotas(ev.target_share, k)
    row_of = torch.full((len(content_type),), -1, dtype=torch.int64)
    row_of[catalogue] = torch.arange(catalogue.numel())
    # Cosines of embeddings centred on the catalogue's mean: the model's content vectors
    # share one large common direction (raw cosines of 0.9 and more), which would hide
    # the differences MMR needs to see.
    states = catalogue_states.to(torch.float32)
    unit = torch.nn.functional.normalize(states - states.mean(dim=0), dim=-1)
    method = ev.diversity.method
    result = rerank(candidates.score, unit[row_of[candidates.content]],
                    type_code[candidates.content], category[candidates.content], k,
                    quotas={codes[n]: q for n, q in quotas.items() if n in codes},
                    mmr_lambda=ev.diversity.mmr_lambda if method == "mmr" else 1.0,
                    category_cap=ev.diversity.category_cap, item=candidates.content,
                    item_cap=item_cap(ev.diversity.max_item_share, candidates.content.shape[0]))
    controlled = Recommendations(
        user=candidates.user, content=candidates.content.gather(1, result.position),
        score=candidates.score.gather(1, result.position), cutoff=candidates.cutoff)
    settings = {"target_share": dict(ev.target_share), "quotas": quotas,
                "diversity": {"method": method, "mmr_lambda": ev.diversity.mmr_lambda,
                              "category_cap": ev.diversity.category_cap,
                              "max_item_share": ev.diversity.max_item_share},
                "candidates": int(candidates.content.shape[1]),
                "relaxed_slots": result.relaxed_slots}
    return controlled, settings


def compare_controls(uncontrolled: dict[str, Any], controlled: dict[str, Any]) -> dict[str, Any]:
    """What steering cost and bought: the controlled list's predicted click-through over
    the uncontrolled one's, and the coverage and diversity of each."""
    base, steered = uncontrolled.get("mean_score"), controlled.get("mean_score")
    return {"predicted_ctr_ratio": steered / base if base and steered is not None else None,
            "coverage": [uncontrolled.get("coverage"), controlled.get("coverage")],
            "intra_list_diversity": [uncontrolled.get("intra_list_diversity"),
                                     controlled.get("intra_list_diversity")],
            "video_share_topk": [uncontrolled.get("video_share_topk"),
                                 controlled.get("video_share_topk")]}


def recommend(model: TrainedModel | PairScorer, cutoff: int, users: Tensor, user_states: Tensor,
              catalogue: Tensor, catalogue_states: Tensor, top_k: int, sample_size: int,
              seed: int) -> Recommendations:
    """Top-``k`` lists for a deterministic sample of ``users``.

    Args:
        model: The trained model, or a :class:`PairScorer`.
        cutoff: Seconds since epoch; every state must be as of it.
        users: int64 ``[N]`` users existing at the cutoff; ``user_states`` ``[N, D]``.
        user_states: Their embeddings, row ``i`` for ``users[i]``.
        catalogue: int64 ``[C]`` content existing at the cutoff.
        catalogue_states: ``[C, D]`` their embeddings.
        top_k: List length (``evaluate.top_k``).
        sample_size: Users to sample (``evaluate.recommend_users``).
        seed: Sampling seed (``evaluate.seed``).

    Returns:
        The :class:`Recommendations`.
    """
    chosen = sample_users(users, sample_size, seed)
    order = torch.argsort(users)
    rows = order[torch.searchsorted(users[order], chosen)]
    index, score = top_k_content(model, user_states[rows], catalogue_states, cutoff, top_k,
                                 chosen, catalogue)
    return Recommendations(user=chosen, content=catalogue[index], score=score, cutoff=int(cutoff))
