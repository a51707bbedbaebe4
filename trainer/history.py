"""Candidate-aware attention over a seed's recent neighbours (target attention, as in DIN).

A user's message-passing state is built without knowing the candidate: one vector for
every content it may be shown. :class:`TargetAttention` lets the candidate look at the
user's own history instead: for an example (user ``u``, content ``c``, time ``t``), the
candidate queries the hop-1 neighbours of ``u`` sampled strictly before ``t`` (the
content it was shown, clicked and viewed, the brands it liked), each as its initial
state (attributes and identity) with its relation and its age ``t - edge time``; the
answer is their attention-weighted sum. The same module, mirrored, lets the user look at
the content's recent audience. Only edges the sampler returned are read, so the
no-future rule is the sampler's (docs/training.md).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter, softmax

from trainer.graph import EdgeType, expand_ranges
from trainer.sampler import SampledSubgraph


def example_edge_pairs(seed_row: Tensor, edge_dst: Tensor) -> tuple[Tensor, Tensor]:
    """Every ``(example, edge)`` with ``edge_dst[edge] == seed_row[example]``.

    Several examples may share a seed row (the same node at the same time), so each gets
    its own copy of the row's edges.
    """
    order = torch.argsort(seed_row)
    rows = seed_row[order]
    start = torch.searchsorted(rows, edge_dst, side="left")
    edge, position = expand_ranges(start, torch.searchsorted(rows, edge_dst, side="right") - start)
    return order[position], edge


class TargetAttention(nn.Module):
    """Attention of a query vector per example over its seed's hop-1 neighbours.

    Args:
        dim: State size (queries, neighbour states and the output).
        time_dim: Size of the edge-age code.
        relations: The relations into the seed's node type it reads (hop 1 only).
        match: Also return, per relation, the mean and the max of the query's match
            logits with the neighbours (zeros where none): a softmax-weighted mean says
            what the matching neighbours are, not how many there are or how well they
            match, which DIN keeps by not normalising.
    """

    @property
    def out_dim_extra(self) -> int:
        """Columns :meth:`forward` adds to ``dim``."""
        return 2 * len(self.relations) if self.match else 0

    def __init__(self, dim: int, time_dim: int, relations: list[EdgeType], match: bool = False):
        super().__init__()
        self.relations = list(relations)
        self.match = match
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim + time_dim, dim)
        self.value = nn.Linear(dim + time_dim, dim)
        self.relation = nn.Embedding(max(1, len(self.relations)), dim)

    def forward(self, query: Tensor, seed_row: Tensor, batch: SampledSubgraph,
                x0: dict[str, Tensor], time_codes: dict[EdgeType, Tensor]) -> Tensor:
        """``[B, dim (+ out_dim_extra)]``: for example ``b``, the neighbours of seed row
        ``seed_row[b]`` weighted by their match with ``query[b]`` (zeros for a seed with
        none), then, with ``match``, the per-relation match statistics."""
        dsts, inputs, kinds = [], [], []
        for index, edge_type in enumerate(self.relations):
            if edge_type not in batch.edge_index:
                continue
            n = batch.num_sampled_edges[edge_type][0] if batch.num_sampled_edges[edge_type] else 0
            if n == 0:
                continue
            src, dst = batch.edge_index[edge_type][:, :n]
            dsts.append(dst)
            inputs.append(torch.cat([x0[edge_type[0]][src], time_codes[edge_type][:n]], dim=-1))
            kinds.append(torch.full((n,), index, dtype=torch.int64, device=dst.device))
        out = query.new_zeros((query.shape[0], query.shape[1] + self.out_dim_extra))
        if not dsts:
            return out
        dst, inputs, kind = torch.cat(dsts), torch.cat(inputs), torch.cat(kinds)
        example, edge = example_edge_pairs(seed_row, dst)
        if example.numel() == 0:
            return out
        relation = self.relation(kind)
        keys = self.key(inputs) + relation
        values = self.value(inputs) + relation
        logits = (self.query(query)[example] * keys[edge]).sum(-1) / math.sqrt(query.shape[-1])
        alpha = softmax(logits, example, num_nodes=query.shape[0])
        summary = scatter(values[edge] * alpha.unsqueeze(-1), example, 0,
                          dim_size=query.shape[0], reduce="sum")
        if not self.match:
            return summary
        size, group = len(self.relations), example * len(self.relations) + kind[edge]
        rows = query.shape[0] * size
        mean = scatter(logits, group, 0, dim_size=rows, reduce="mean").view(-1, size)
        top = scatter(logits, group, 0, dim_size=rows, reduce="max").view(-1, size)
        return torch.cat([summary, mean, top], dim=-1)
