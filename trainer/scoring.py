"""Chunked inference loops shared by the single-process and the distributed paths.

Scoring impressions and embedding nodes run the same loop in one process
(:meth:`trainer.engine.ClickEngine.score`, :func:`trainer.inference.embed`) and on the
workers of a shard set (:mod:`trainer.dist_inference`); they differ only in how a chunk's
sampled neighbourhood and features arrive, which the caller passes as a function.

Lockstep. On the workers every chunk is a collective (the distributed sampler's
all-to-alls), so every rank must make the same number of calls: ``steps`` fixes it, and a
rank that has run out of rows calls with empty chunks until then.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from clickgraph.core.progress import RateProgress


def chunks(columns: Sequence[Tensor], batch_size: int, steps: int | None = None
           ) -> list[tuple[Tensor, ...]]:
    """``columns`` (each ``[N]``) cut into row chunks of ``batch_size``; with ``steps``,
    exactly ``steps`` chunks, empty ones after the last row.

    Raises:
        ValueError: ``steps`` is smaller than the chunks the rows need.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = columns[0].numel()
    needed = -(-n // batch_size)
    if steps is not None and steps < needed:
        raise ValueError(f"{n} rows need {needed} chunks of {batch_size}; only {steps} allowed")
    out = [tuple(c[i:i + batch_size] for c in columns) for i in range(0, n, batch_size)]
    empty = tuple(c[:0] for c in columns)
    return out + [empty] * ((steps if steps is not None else needed) - needed)


@torch.no_grad()
def chunked_scores(forward: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor],
                   user: Tensor, content: Tensor, seed_time: Tensor, position: Tensor,
                   batch_size: int, steps: int | None = None, log=None,
                   log_every_s: float = 30.0) -> np.ndarray:
    """Click probabilities of rows ``(user, content, seed_time, position)`` (each ``[N]``).

    Args:
        forward: ``(user, content, seed_time, position) -> logits [B]`` of one chunk.
        batch_size: Rows per chunk.
        steps: Exactly this many ``forward`` calls (collective forwards, module docstring).
        log: Gets a progress line (done, rate, ETA) every ``log_every_s`` seconds.

    Returns:
        float32 ``[N]``.
    """
    out, done = [], 0
    progress = RateProgress(user.numel(), "impressions", log, log_every_s)
    for chunk in chunks((user, content, seed_time, position), batch_size, steps):
        out.append(torch.sigmoid(forward(*chunk)).cpu().numpy())
        done += chunk[0].numel()
        progress.update(done, prefix="  scored ")
    return np.concatenate(out).astype(np.float32, copy=False) if out else np.empty(0, np.float32)


@torch.no_grad()
def chunked_states(states: Callable[[Tensor, Tensor], Tensor], nodes: Tensor, times: Tensor,
                   batch_size: int, dim: int, steps: int | None = None, log=None,
                   log_every_s: float = 30.0, unit: str = "nodes") -> Tensor:
    """Embeddings of ``nodes`` as of ``times`` (each ``[N]``), chunk by chunk.

    Args:
        states: ``(node chunk, time chunk) -> [B, dim]`` seed states of one chunk.
        steps: Exactly this many ``states`` calls (module docstring).
        log: Gets a progress line (done, rate, ETA in ``unit``) every ``log_every_s`` seconds.

    Returns:
        float32 ``[N, dim]`` on the CPU.
    """
    out, done = [], 0
    progress = RateProgress(nodes.numel(), unit, log, log_every_s)
    for chunk in chunks((nodes, times), batch_size, steps):
        out.append(states(*chunk).cpu())
        done += chunk[0].numel()
        progress.update(done, prefix="  embedded ")
    out = [o for o in out if o.shape[0]]
    return torch.cat(out) if out else torch.empty((0, dim))
