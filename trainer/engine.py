"""Training and scoring steps of the click model, shared by every launcher.

A step takes impression indices, adds time-respecting random negatives, samples the
temporal neighbourhood of every (user, time) and (content, time) seed, and runs the model.
Launchers (single process now, Ray/DDP workers later) only decide which events a worker
sees and how gradients are combined.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from clickgraph.core.config import TrainConfig
from trainer.data import GraphData, Impressions, NegativeSampler
from trainer.model import ClickGNN, ModelConfig
from trainer.sampler import SampledSubgraph, TemporalNeighborSampler


def model_config(cfg: TrainConfig) -> ModelConfig:
    m = cfg.model
    return ModelConfig(hidden_dim=m.hidden_dim, time_dim=m.time_dim, num_layers=m.num_layers,
                       conv=m.conv, dropout=m.dropout, activity_counts=m.activity_counts)


def relation_fanouts(cfg: TrainConfig, edge_types) -> dict:
    """Fanouts per relation: ``train.relation_fanouts`` by relation name (either
    direction), else ``train.fanouts``."""
    out = {}
    for et in edge_types:
        name = et[1].removeprefix("rev_")
        hops = list(cfg.relation_fanouts.get(name, cfg.fanouts))
        if len(hops) != len(cfg.fanouts):
            raise ValueError(f"train.relation_fanouts.{name} has {len(hops)} hops; "
                             f"train.fanouts has {len(cfg.fanouts)}")
        out[et] = hops
    return out


def draw_examples(impressions: Impressions, events: Tensor, negatives: NegativeSampler,
                  random_negative_ratio: float, generator: torch.Generator
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Impressions ``events`` plus time-respecting random negatives.

    Each random negative copies a random impression's user, time and position and takes
    a content piece created strictly before that time (label 0).

    Returns:
        ``(user, content, seed_time, position, label)``, each ``[B + negatives]``.
    """
    user, content = impressions.user[events], impressions.content[events]
    seed_time, position = impressions.time[events], impressions.position[events]
    label = impressions.clicked[events]
    n_random = int(round(random_negative_ratio * events.numel()))
    if n_random:
        host = torch.randint(events.numel(), (n_random,), generator=generator)
        valid, neg_content = negatives.sample(seed_time[host], generator)
        host, neg_content = host[valid], neg_content[valid]
        user = torch.cat([user, user[host]])
        content = torch.cat([content, neg_content])
        seed_time = torch.cat([seed_time, seed_time[host]])
        position = torch.cat([position, position[host]])
        label = torch.cat([label, torch.zeros(host.numel())])
    return user, content, seed_time, position, label


def with_edge_weights(batch: SampledSubgraph) -> SampledSubgraph:
    """Per-edge weights (relation x content-type weight from the store's ``weight``
    attribute) in place of the broadcast relation weight."""
    weights = {et: batch.edge_attr[et].get("weight", batch.edge_weight[et]) for et in batch.edge_index}
    return SampledSubgraph(**{**batch.__dict__, "edge_weight": weights})


@dataclass
class StepTimes:
    """Seconds spent per phase, summed over steps."""

    sampling: float = 0.0
    compute: float = 0.0
    other: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {"sampling": round(self.sampling, 3), "compute": round(self.compute, 3),
                **{k: round(v, 3) for k, v in self.other.items()}}


class ClickEngine:
    """Model, sampler and optimiser for one worker.

    Args:
        data: The loaded graph store.
        cfg: Training config.
        device: Where the graph, features and model live.
    """

    def __init__(self, data: GraphData, cfg: TrainConfig, device: torch.device | str = "cpu"):
        self.data = data
        self.cfg = cfg
        self.device = torch.device(device)
        self.graph = data.graph.to(self.device)
        self.features = {t: f.to(self.device) for t, f in data.features.items()}
        self.sampler = TemporalNeighborSampler(self.graph, relation_fanouts(cfg, self.graph.edge_types),
                                               strategy=cfg.strategy)
        self.model = ClickGNN(data.features, self.graph.edge_types, model_config(cfg)).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.learning_rate,
                                          weight_decay=cfg.weight_decay)
        self.negatives = NegativeSampler(data.content_created)
        self.times = StepTimes()

    def forward(self, user: Tensor, content: Tensor, seed_time: Tensor, position: Tensor,
                generator: torch.Generator) -> Tensor:
        """Click logits for (user, content, time, position) rows."""
        t0 = time.perf_counter()
        batch = self.sampler.sample({"user": (user.to(self.device), seed_time.to(self.device)),
                                     "content": (content.to(self.device), seed_time.to(self.device))},
                                    generator=generator)
        batch = with_edge_weights(batch)
        at = seed_time.to(self.device)
        counts = {node_type: self.sampler.activity_counts(node_type, node.to(self.device), at)
                  for node_type, node in (("user", user), ("content", content))}
        t1 = time.perf_counter()
        logits = self.model(batch, self.features, batch.seed_local["user"], batch.seed_local["content"],
                            position.to(self.device), seed_time.to(self.device), counts)
        self.times.sampling += t1 - t0
        return logits

    def examples(self, events: Tensor, generator: torch.Generator
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Impressions plus random negatives: ``(user, content, time, position, label)``."""
        return draw_examples(self.data.impressions, events, self.negatives,
                             self.cfg.random_negative_ratio, generator)

    def train_step(self, events: Tensor, generator: torch.Generator) -> float:
        """One optimisation step on impression indices ``events``; returns the loss."""
        self.model.train()
        user, content, seed_time, position, label = self.examples(events, generator)
        t0, sampling_before = time.perf_counter(), self.times.sampling
        logits = self.forward(user, content, seed_time, position, generator)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, label.to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        sampled = self.times.sampling - sampling_before
        self.times.compute += time.perf_counter() - t0 - sampled
        return float(loss.detach())

    @torch.no_grad()
    def score(self, events: Tensor, generator: torch.Generator, log=None,
              log_every_s: float = 30.0) -> np.ndarray:
        """Click probabilities of impressions ``events`` (no negatives added); ``log``
        gets a progress line every ``log_every_s`` seconds."""
        self.model.eval()
        imp = self.data.impressions
        out, done = [], 0
        start = last = time.perf_counter()
        for chunk in torch.split(events, self.cfg.eval_batch_size):
            logits = self.forward(imp.user[chunk], imp.content[chunk], imp.time[chunk],
                                  imp.position[chunk], generator)
            out.append(torch.sigmoid(logits).cpu().numpy())
            done += chunk.numel()
            if log is not None and time.perf_counter() - last >= log_every_s:
                last = time.perf_counter()
                log(f"  scored {done:,}/{events.numel():,} impressions "
                    f"({done / (last - start):,.0f}/s)")
        return np.concatenate(out) if out else np.empty(0)
