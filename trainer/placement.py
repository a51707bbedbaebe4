"""Where a training worker keeps its shard for sampling: CPU, GPU memory, or pinned host
memory read from the GPU (``resources.sampler_device``).

The distributed sampler (:class:`~trainer.dist_sampler.DistTemporalSampler`) reads a
worker's shard for every draw: the CSR arrays and their search index (per edge), the
partition book, owned ids and static features (per node). Its draws, its messages and its
feature gathers run on the device of those arrays, so placing them places the sampler:

* ``cpu``: the arrays stay where the shard was loaded (the CPU path, unchanged);
* ``cuda``: copied into the training GPU's memory; the sampler's kernels run there and,
  under NCCL, its messages travel GPU to GPU with no host copy;
* ``pinned``: copied into page-locked host memory and read by the GPU's kernels through
  unified virtual addressing (zero-copy: every read crosses PCIe), for shards that do not
  fit in GPU memory. The arrays are CUDA tensors that alias host memory
  (:func:`pinned_cuda_view`), so the sampler code is the same as for ``cuda``.
* ``auto``: ``cuda`` when the worker trains on a GPU and the arrays fit in
  ``resources.sampler_gpu_memory_fraction`` of the GPU's free memory, else ``pinned`` on
  a GPU worker, else ``cpu``.

:func:`choose_sampler_device` is the choice (a pure function of the numbers it is given);
:func:`sampler_footprint` is what the arrays cost, counted from their dtypes. The
sampled batches do not depend on the placement (``tests/test_sampler_gpu.py``): the
``most_recent`` draw is deterministic, and the uniform draws come from the caller's
generator, which :func:`trainer.sampler.sample_rows` reads on its own device and copies
over, so a CPU generator gives the same uniforms on every placement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

SamplerDevice = Literal["auto", "cpu", "cuda", "pinned"]
SAMPLER_DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "pinned")
Placement = Literal["cpu", "cuda", "pinned"]


def choose_sampler_device(setting: str, train_device: torch.device | str,
                          needed_bytes: int, free_bytes: int | None,
                          memory_fraction: float) -> Placement:
    """Where a worker's sampler arrays go (``resources.sampler_device``).

    Args:
        setting: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"pinned"``.
        train_device: Where the worker's model trains (``cpu`` or ``cuda:i``).
        needed_bytes: What the arrays take (:attr:`SamplerFootprint.total_bytes`).
        free_bytes: Free memory of the training GPU (``torch.cuda.mem_get_info``);
            ``None`` on a CPU worker.
        memory_fraction: Share of ``free_bytes`` the arrays may take under ``auto``
            (``resources.sampler_gpu_memory_fraction``, in ``(0, 1]``).

    Returns:
        ``"cpu"``, ``"cuda"`` or ``"pinned"``.

    Raises:
        ValueError: An unknown setting or fraction, ``cuda``/``pinned`` on a worker that
            trains on the CPU, or ``cuda`` for arrays larger than the GPU's free memory.
    """
    if setting not in SAMPLER_DEVICES:
        raise ValueError(f"resources.sampler_device must be one of {list(SAMPLER_DEVICES)}, "
                         f"got {setting!r}")
    if not 0.0 < memory_fraction <= 1.0:
        raise ValueError("resources.sampler_gpu_memory_fraction must be in (0, 1], got "
                         f"{memory_fraction}")
    on_gpu = torch.device(train_device).type == "cuda"
    if setting == "cpu" or (setting == "auto" and not on_gpu):
        return "cpu"
    if not on_gpu:
        raise ValueError(f"resources.sampler_device is {setting}, but this worker trains on "
                         f"{train_device}: the GPU placements need a worker on a GPU "
                         "(resources.device cuda, or auto with one GPU per worker)")
    if free_bytes is None:
        raise ValueError("free GPU memory is needed to place the sampler on a GPU worker")
    if setting == "pinned":
        return "pinned"
    if setting == "cuda":
        if needed_bytes > free_bytes:
            raise ValueError(
                f"resources.sampler_device is cuda, but the shard's sampler arrays take "
                f"{needed_bytes / 2**20:,.1f} MiB and {train_device} has "
                f"{free_bytes / 2**20:,.1f} MiB free: use pinned (or auto)")
        return "cuda"
    return "cuda" if needed_bytes <= memory_fraction * free_bytes else "pinned"


@dataclass(frozen=True)
class SamplerFootprint:
    """Bytes of the arrays a worker's sampler reads, counted from their dtypes.

    Attributes:
        edge_bytes: Arrays with one entry per edge (CSR ``neighbor``, ``edge_time``,
            ``edge_attr``, ``edge_id``, the search index's keys and fence).
        node_bytes: Arrays with entries per node (CSR ``indptr``, partition book, owned
            ids, features) and the hot-node cache.
        num_edges: Edges of the shard (all relations, reverse ones included).
    """

    edge_bytes: int
    node_bytes: int
    num_edges: int

    @property
    def total_bytes(self) -> int:
        """All of it."""
        return self.edge_bytes + self.node_bytes

    @property
    def bytes_per_edge(self) -> float:
        """Per-edge arrays over the edges (the slope of the cost in the graph's size)."""
        return self.edge_bytes / max(self.num_edges, 1)


def tensor_bytes(tensor: Tensor | None) -> int:
    """``numel * element size`` (0 for ``None``)."""
    return 0 if tensor is None else tensor.numel() * tensor.element_size()


def pinned_cuda_view(tensor: Tensor, device: torch.device) -> Tensor:
    """A CUDA tensor on ``device`` whose storage is a page-locked host copy of ``tensor``.

    Kernels on the GPU read it over PCIe through unified virtual addressing (with UVA the
    device pointer of ``cudaHostAlloc`` memory is its host pointer); nothing is copied
    into GPU memory. The view keeps the host copy alive.

    Raises:
        RuntimeError: The view is not zero-copy (it landed on another device or was
            copied), so the placement would not be what was asked for.
    """
    device = torch.device(device)
    if tensor.numel() == 0:
        return torch.empty(tensor.shape, dtype=tensor.dtype, device=device)
    with torch.cuda.device(device):  # pinned for, and mapped into, this device
        host = tensor.detach().contiguous().cpu().pin_memory()
        view = torch.as_tensor(_HostBytes(host), device=device)
    if view.device != device or view.data_ptr() != host.data_ptr():
        raise RuntimeError(f"pinned placement: the host memory did not map to {device} "
                           "without a copy (no unified addressing?); use "
                           "resources.sampler_device cuda or cpu")
    return view.view(tensor.dtype).view(tensor.shape)


class _HostBytes:
    """A pinned host tensor's bytes described by ``__cuda_array_interface__``, so that
    ``torch.as_tensor`` wraps them as a CUDA tensor without copying; torch keeps this
    object (hence ``host``) alive as long as the view."""

    def __init__(self, host: Tensor) -> None:
        self.host = host
        self.__cuda_array_interface__ = {
            "shape": (host.numel() * host.element_size(),), "typestr": "|u1",
            "data": (host.data_ptr(), False), "version": 3, "strides": None}


def move_tensor(tensor: Tensor, placement: Placement, device: torch.device) -> Tensor:
    """``tensor`` on ``device`` (``cuda``), as a pinned view (``pinned``), or as it is."""
    if placement == "cpu":
        return tensor
    if placement == "cuda":
        return tensor.to(device)
    if placement == "pinned":
        return pinned_cuda_view(tensor, device)
    raise ValueError(f"placement must be cpu, cuda or pinned, got {placement!r}")
