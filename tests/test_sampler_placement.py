"""Where a worker's sampler arrays live (``resources.sampler_device``,
:mod:`trainer.placement`): the choice, the config checks, the byte count, and that the
CPU placement is the CPU path of before. The GPU placements are tested in
``tests/test_sampler_gpu.py`` (``pytest -m gpu``)."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch
import torch.distributed as dist

from clickgraph.core.config import ConfigError, load_config
from tests.test_distributed import star_case, training_config, training_inputs
from trainer.placement import SamplerFootprint, choose_sampler_device
from trainer.shard import split_graph

GIB = 2**30


@contextlib.contextmanager
def one_rank_group(backend: str = "gloo"):
    """A default process group of one rank in this process, destroyed on exit."""
    from trainer.distributed import find_free_port, init_process_group

    init_process_group(0, 1, "127.0.0.1", find_free_port(), backend=backend, timeout_s=60)
    try:
        yield
    finally:
        dist.destroy_process_group()


def one_part(case):
    """The case's graph as a single part (rank 0 owns every node)."""
    book = {t: torch.zeros(n, dtype=torch.int32) for t, n in case.graph.num_nodes.items()}
    return split_graph(case.graph, case.features, book, num_parts=1)[0]


# --------------------------------------------------------------------------- the choice


@pytest.mark.parametrize("setting,device,needed,free,expected", [
    ("auto", "cpu", 10 * GIB, None, "cpu"),         # a CPU worker samples on the CPU
    ("cpu", "cuda:0", 1, 100 * GIB, "cpu"),         # asked for: stays on the CPU
    ("auto", "cuda:0", 10 * GIB, 100 * GIB, "cuda"),  # fits in half the free memory
    ("auto", "cuda:0", 50 * GIB, 100 * GIB, "cuda"),  # exactly the fraction: fits
    ("auto", "cuda:0", 50 * GIB + 1, 100 * GIB, "pinned"),  # does not: pinned host memory
    ("auto", "cuda:1", 10 * GIB, 4 * GIB, "pinned"),
    ("cuda", "cuda:0", 90 * GIB, 100 * GIB, "cuda"),  # asked for: the fraction is auto's
    ("pinned", "cuda:0", 1, 100 * GIB, "pinned"),
])
def test_the_placement_follows_the_setting_and_the_free_gpu_memory(setting, device, needed,
                                                                    free, expected):
    assert choose_sampler_device(setting, torch.device(device), needed, free, 0.5) == expected


def test_auto_honours_the_memory_fraction():
    assert choose_sampler_device("auto", "cuda:0", 30 * GIB, 100 * GIB, 0.25) == "pinned"
    assert choose_sampler_device("auto", "cuda:0", 30 * GIB, 100 * GIB, 0.3) == "cuda"
    assert choose_sampler_device("auto", "cuda:0", 100 * GIB, 100 * GIB, 1.0) == "cuda"


def test_impossible_placements_are_errors_that_name_the_key():
    for setting in ("cuda", "pinned"):
        with pytest.raises(ValueError, match=f"sampler_device is {setting}.*trains on cpu"):
            choose_sampler_device(setting, "cpu", 1, None, 0.5)
    with pytest.raises(ValueError, match="2,048.0 MiB and cuda:0 has 1,024.0 MiB free.*pinned"):
        choose_sampler_device("cuda", "cuda:0", 2 * GIB, GIB, 0.5)
    with pytest.raises(ValueError, match="one of"):
        choose_sampler_device("gpu", "cuda:0", 1, GIB, 0.5)
    for fraction in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="sampler_gpu_memory_fraction"):
            choose_sampler_device("auto", "cuda:0", 1, GIB, fraction)


# --------------------------------------------------------------------------- the config


def test_the_config_defaults_to_cpu_and_checks_the_keys(tmp_path):
    resources = load_config().resources
    assert (resources.sampler_device, resources.sampler_gpu_memory_fraction) == ("cpu", 0.5)
    assert load_config(overrides=["resources.sampler_device=pinned"]).resources \
        .sampler_device == "pinned"
    with pytest.raises(ConfigError, match=r"resources\.sampler_device.*'gpu' is not one of"):
        load_config(overrides=["resources.sampler_device=gpu"])
    for fraction in ("0", "1.5"):
        with pytest.raises(ConfigError, match=r"resources\.sampler_gpu_memory_fraction"):
            load_config(overrides=[f"resources.sampler_gpu_memory_fraction={fraction}"])
    with pytest.raises(ConfigError, match=r"resources\.sampler_device' is cuda.*device is cpu"):
        load_config(overrides=["resources.device=cpu", "resources.sampler_device=cuda"])
    assert load_config(overrides=["resources.device=cpu", "resources.sampler_device=cpu"])


# ---------------------------------------------------------------------- the byte count


def test_the_footprint_counts_every_array_once_from_its_dtype():
    """The star case's 1-part shard, counted by hand. Per relation (10 edges each way):
    neighbor, edge_time, edge_id int64 (3 x 80 B), the float32 weight (40 B), the search
    keys padded to a block of 16 (128 B) and the fence (one int64 per block, 8 B):
    416 B, 41.6 B per edge. Per node: indptr (5 + 7 int64), the int32 book (10 x 4),
    owned ids and the one-column codes (10 x 8 each)."""
    from trainer.dist_sampler import DistTemporalSampler

    shard = one_part(star_case())
    with one_rank_group():
        sampler = DistTemporalSampler(shard, [2, 1], strategy="uniform", weighted=True)
        footprint = sampler.footprint()
        assert sampler.place("cpu") is sampler and sampler.device == torch.device("cpu")
        assert sampler.shard is shard  # the CPU placement moves (and copies) nothing
    assert footprint == SamplerFootprint(edge_bytes=2 * 416,
                                         node_bytes=(5 + 7) * 8 + 40 + 80 + 80, num_edges=20)
    assert footprint.bytes_per_edge == pytest.approx(41.6)
    assert footprint.total_bytes == 832 + 296


# --------------------------------------------------------------- the CPU path unchanged


def _train(**kwargs):
    from trainer.dist_train import owned_impressions, train_worker
    from trainer.distributed import find_free_port

    graph, features, impressions, content_created, _ = training_inputs()
    cfg = training_config()
    cfg = dataclasses.replace(cfg, epochs=1)
    book = {t: torch.zeros(n, dtype=torch.int32) for t, n in graph.num_nodes.items()}
    shard = split_graph(graph, features, book, num_parts=1)[0]
    return train_worker(0, 1, shard, cfg, owned_impressions(impressions, shard),
                        content_created, master_addr="127.0.0.1",
                        master_port=find_free_port(), backend="gloo", **kwargs)


def test_auto_on_a_cpu_worker_trains_exactly_as_before():
    """``auto`` (the config's default) on a CPU worker is the CPU placement, and the run
    is the one without the setting, loss for loss and parameter for parameter."""
    before = _train()
    auto = _train(sampler_device="auto")
    assert (before.sampler_device, auto.sampler_device) == ("cpu", "cpu")
    assert len(before.losses) > 1 and all(math.isfinite(loss) for loss in before.losses)
    assert auto.losses == before.losses
    assert all(torch.equal(auto.model_state[name], value)
               for name, value in before.model_state.items())
    assert auto.sampler_footprint["num_edges"] > 0
    assert auto.sampler_footprint["bytes_per_edge"] > 24  # at least three int64 per edge


def test_a_gpu_placement_on_a_cpu_worker_fails_before_training():
    with pytest.raises(ValueError, match="sampler placement failed.*sampler_device is pinned"):
        _train(sampler_device="pinned")
    with pytest.raises(ValueError, match="sampler_device must be one of"):
        _train(sampler_device="gpu")
