"""The NCCL path of the distributed trainer on one GPU (``pytest -m gpu``; skipped without
CUDA).

One rank over one part, so it needs a single GPU: an NCCL group, the model and batches on
``cuda:0``, every exchange going through the GPU, and the sampler and shard on the CPU
(``sampler_device="cpu"``), in GPU memory (``cuda``) or in pinned host memory read by the
GPU (``pinned``). With dropout off, the losses (same parameters, same batches: the random
generator is the CPU's on every placement) must equal a gloo run's on the CPU up to float
rounding.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tests.test_distributed import training_config, training_inputs
from trainer.shard import split_graph

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _run(backend: str, sampler_device: str = "cpu"):
    from trainer.dist_train import owned_impressions, train_worker
    from trainer.distributed import find_free_port

    graph, features, impressions, content_created, _ = training_inputs()
    cfg = training_config()
    cfg = dataclasses.replace(cfg, epochs=1, model=dataclasses.replace(cfg.model, dropout=0.0))
    book = {t: torch.zeros(n, dtype=torch.int32) for t, n in graph.num_nodes.items()}
    shard = split_graph(graph, features, book, num_parts=1)[0]
    return train_worker(0, 1, shard, cfg, owned_impressions(impressions, shard),
                        content_created, master_addr="127.0.0.1",
                        master_port=find_free_port(), backend=backend,
                        hot_cache={"content": 0.5}, sampler_device=sampler_device)


def test_one_rank_trains_on_cuda_over_nccl_like_on_the_cpu_over_gloo():
    cpu = _run("gloo")
    gpu = _run("nccl")
    assert (cpu.device, cpu.backend) == ("cpu", "gloo")
    assert (gpu.device, gpu.backend) == ("cuda:0", "nccl")
    assert gpu.steps_per_epoch == cpu.steps_per_epoch and len(gpu.losses) == len(cpu.losses)
    assert all(math.isfinite(loss) for loss in gpu.losses)
    assert gpu.losses[0] == pytest.approx(cpu.losses[0], rel=1e-4, abs=1e-6)
    assert gpu.events_trained == cpu.events_trained > 0
    assert gpu.model_state.keys() == cpu.model_state.keys()
    assert all(value.device.type == "cpu" for value in gpu.model_state.values())
    assert gpu.bytes["gradient_allreduce_bytes"] > 0


@pytest.mark.parametrize("sampler_device", ["cuda", "pinned", "auto"])
def test_sampling_on_the_gpu_trains_like_sampling_on_the_cpu(sampler_device):
    cpu = _run("gloo")
    gpu = _run("nccl", sampler_device)
    # auto: this small shard fits in half of any GPU's free memory.
    assert gpu.sampler_device == ("cuda" if sampler_device == "auto" else sampler_device)
    assert gpu.device == "cuda:0" and cpu.sampler_device == "cpu"
    assert len(gpu.losses) == len(cpu.losses) > 1
    assert gpu.losses[0] == pytest.approx(cpu.losses[0], rel=1e-4, abs=1e-6)
    # Later steps: the same batches, parameters apart only by float rounding.
    assert gpu.losses == pytest.approx(cpu.losses, rel=1e-3, abs=1e-5)
    assert gpu.events_trained == cpu.events_trained
    assert gpu.sampler_footprint == cpu.sampler_footprint
    assert gpu.sampler_footprint["bytes_per_edge"] > 24
