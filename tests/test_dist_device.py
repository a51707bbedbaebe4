"""Where distributed training runs: backend, device and GPU requests (pure functions),
and the CPU path of the device plumbing."""

from __future__ import annotations

import pytest
import torch

from trainer.distributed import is_loopback, loopback_socket_env, training_device
from trainer.ray_launch import Placement, choose_placement


def test_gloo_trains_on_the_cpu_and_nccl_on_the_local_ranks_gpu():
    assert training_device("gloo", local_rank=3, cuda_devices=8) == torch.device("cpu")
    assert training_device("nccl", local_rank=0, cuda_devices=2) == torch.device("cuda", 0)
    assert training_device("nccl", local_rank=3, cuda_devices=2) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        training_device("nccl", local_rank=0, cuda_devices=0)
    with pytest.raises(ValueError, match="gloo or nccl"):
        training_device("mpi")


@pytest.mark.parametrize("device,gpus,workers,expected", [
    ("auto", 0, 2, Placement(use_gpu=False, backend="gloo")),
    ("auto", 1, 2, Placement(use_gpu=False, backend="gloo")),  # not one GPU per worker
    ("auto", 2, 2, Placement(use_gpu=True, backend="nccl")),
    ("auto", 8, 2, Placement(use_gpu=True, backend="nccl")),
    ("cpu", 8, 2, Placement(use_gpu=False, backend="gloo")),
    ("cuda", 2, 2, Placement(use_gpu=True, backend="nccl")),
])
def test_gpus_and_nccl_only_with_one_gpu_per_worker(device, gpus, workers, expected):
    assert choose_placement(device, gpus, workers) == expected


def test_cuda_without_enough_gpus_or_an_unknown_device_is_an_error():
    with pytest.raises(ValueError, match="resources.device is cuda"):
        choose_placement("cuda", 1, 2)
    with pytest.raises(ValueError, match="auto, cuda or cpu"):
        choose_placement("gpu", 2, 2)


def test_loopback_addresses_and_interface():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost",
                                        "::ffff:127.0.0.1"))
    assert not any(is_loopback(h) for h in ("192.0.2.2", "0.0.0.0", "::", "example.org",
                                            "::ffff:192.0.2.2"))
    env = loopback_socket_env()
    assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] != ""


def test_moving_a_batch_to_the_cpu_copies_nothing():
    """The gloo path must stay bit-for-bit what it was: batch_to() on the CPU returns the
    very same object, and NodeFeatures.to() the very same tensors."""
    from tests.test_distributed import random_case
    from trainer.dist_train import batch_to
    from trainer.model import NodeFeatures
    from trainer.sampler import TemporalNeighborSampler

    case = random_case(1)
    batch = TemporalNeighborSampler(case.graph, case.fanouts, strategy="most_recent").sample(
        case.seeds[0])
    assert batch_to(batch, torch.device("cpu")) is batch
    features = NodeFeatures(torch.zeros((3, 1), dtype=torch.int64), [2],
                            torch.zeros(3, dtype=torch.int64))
    moved = features.to(torch.device("cpu"))
    assert moved.categorical is features.categorical
    assert moved.created_time is features.created_time


def test_moving_a_batch_moves_every_tensor():
    """The GPU path's move, checked on the ``meta`` device (no CUDA needed here)."""
    from tests.test_distributed import random_case
    from trainer.dist_train import batch_to
    from trainer.sampler import TemporalNeighborSampler

    case = random_case(1)
    batch = TemporalNeighborSampler(case.graph, case.fanouts, strategy="most_recent").sample(
        case.seeds[0])
    moved = batch_to(batch, torch.device("meta"))
    tensors = [value for name in ("node", "node_time", "seed_local", "edge_index", "edge_id",
                                  "edge_time", "edge_delta_t", "edge_weight")
               for value in getattr(moved, name).values()]
    tensors += [value for attrs in moved.edge_attr.values() for value in attrs.values()]
    assert tensors and all(value.device.type == "meta" for value in tensors)
    assert moved.num_sampled_nodes == batch.num_sampled_nodes
    assert moved.num_sampled_edges == batch.num_sampled_edges
    assert all(value.device.type == "cpu" for value in batch.node.values())  # a copy


def test_batch_scope_decides_each_ranks_share_of_the_batch():
    from clickgraph.core.config import ConfigError, load_config
    from trainer.ray_launch import rank_batch_size

    shared = load_config(None, ["train.batch_size=513"]).train
    assert shared.batch_scope == "global"
    assert [rank_batch_size(shared, w) for w in (1, 2, 4)] == [513, 257, 129]
    own = load_config(None, ["train.batch_size=513", "train.batch_scope=worker"]).train
    assert [rank_batch_size(own, w) for w in (1, 2, 4)] == [513, 513, 513]
    with pytest.raises(ConfigError, match="train.batch_scope"):
        load_config(None, ["train.batch_scope=node"])
