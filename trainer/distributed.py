"""torch.distributed helpers for partition-parallel training.

Three things every cross-partition step needs: a process group (:func:`init_process_group`,
:func:`find_free_port`), an uneven all-to-all (:func:`exchange`) and a count of the bytes
that actually crossed partitions (:class:`ByteCounter`).

gloo and all-to-all (checked on torch 2.13, CPU): ``ProcessGroupGloo`` implements both
``all_to_all`` and ``all_to_all_single``, but the list form ``all_to_all`` only accepts
tensors of equal size ("invalid tensor size at index 1"), while ``all_to_all_single``
with ``input_split_sizes``/``output_split_sizes`` handles uneven and empty splits. So
:func:`exchange` uses ``all_to_all_single`` on every backend (NCCL supports it too).
One call costs about 0.5 ms of latency between two local gloo ranks on a loaded 2-core
machine, which is why callers pack a whole hop into one message per destination.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

Backend = Literal["auto", "gloo", "nccl"]


@dataclass
class ByteCounter:
    """Bytes this rank sent to and received from *other* ranks, per message kind.

    Self-sends (a rank's own part of an all-to-all, a local copy) are not counted: the
    counter measures what crossed partitions. The size message that precedes every
    payload (8 bytes per destination) is counted under its payload's kind.

    Attributes:
        sent: Kind -> bytes sent to other ranks.
        received: Kind -> bytes received from other ranks.
        calls: Kind -> number of exchanges.
    """

    sent: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, sent: int, received: int) -> None:
        """Adds one exchange's remote bytes under ``kind``."""
        self.sent[kind] = self.sent.get(kind, 0) + int(sent)
        self.received[kind] = self.received.get(kind, 0) + int(received)
        self.calls[kind] = self.calls.get(kind, 0) + 1

    @property
    def total_sent(self) -> int:
        """Bytes sent to other ranks, all kinds."""
        return sum(self.sent.values())

    @property
    def total_received(self) -> int:
        """Bytes received from other ranks, all kinds."""
        return sum(self.received.values())

    def reset(self) -> None:
        """Forgets every count."""
        self.sent.clear()
        self.received.clear()
        self.calls.clear()

    def as_dict(self) -> dict[str, dict[str, int]]:
        """``{"sent": {...}, "received": {...}, "calls": {...}}``, copies."""
        return {"sent": dict(self.sent), "received": dict(self.received),
                "calls": dict(self.calls)}


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (the OS picks it).

    Another process may take it before the caller binds it; that race is harmless in
    tests (the run fails loudly and is rerun) and the reason never to hard-code one.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                       socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def init_process_group(rank: int, world_size: int, master_addr: str, master_port: int,
                       backend: Backend = "auto", timeout_s: float = 300.0) -> str:
    """Joins the default process group over TCP.

    Args:
        rank: This process's rank in ``[0, world_size)``; with partition shards, the
            rank serves part ``rank``.
        world_size: Number of processes.
        master_addr: Host of rank 0's TCP store (IPv6 literals allowed).
        master_port: Its port (see :func:`find_free_port`).
        backend: ``"gloo"``, ``"nccl"`` or ``"auto"``: NCCL when CUDA is available,
            otherwise gloo. With NCCL the process uses GPU ``rank % device_count``.
        timeout_s: How long a collective may wait for the other ranks before failing
            (instead of hanging for torch's default 30 minutes).

    Returns:
        The backend used.
    """
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be auto, gloo or nccl, got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    host = f"[{master_addr}]" if ":" in master_addr and not master_addr.startswith("[") \
        else master_addr
    dist.init_process_group(backend, init_method=f"tcp://{host}:{int(master_port)}",
                            rank=rank, world_size=world_size,
                            timeout=dt.timedelta(seconds=timeout_s))
    return backend


def comm_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """Where collective tensors must live for the group's backend (CUDA for NCCL)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def exchange(tensors_per_destination: Sequence[Tensor], counter: ByteCounter | None = None,
             kind: str = "other", group: dist.ProcessGroup | None = None) -> list[Tensor]:
    """Uneven all-to-all: sends ``tensors_per_destination[d]`` to rank ``d``.

    Collective: every rank of ``group`` must call it, in the same order as the others,
    even with nothing to send (pass empty tensors). Two ``all_to_all_single`` calls: the
    first exchanges the leading sizes, the second the payloads.

    Args:
        tensors_per_destination: One tensor per rank, all of one dtype and one trailing
            shape ``[n_d, *rest]``; ``n_d`` may differ and be 0.
        counter: Adds the bytes sent to / received from other ranks under ``kind``.
        kind: Counter key, e.g. ``"sample_request"``.
        group: Process group (default: the world).

    Returns:
        One tensor per source rank, ``[m_s, *rest]``, on the device of the inputs.
    """
    world_size, rank = dist.get_world_size(group), dist.get_rank(group)
    if len(tensors_per_destination) != world_size:
        raise ValueError(f"exchange needs one tensor per rank ({world_size}), got "
                         f"{len(tensors_per_destination)}")
    first = tensors_per_destination[0]
    dtype, rest, device = first.dtype, tuple(first.shape[1:]), first.device
    for tensor in tensors_per_destination:
        if tensor.dtype != dtype or tuple(tensor.shape[1:]) != rest or tensor.dim() < 1:
            raise ValueError("exchange needs tensors of one dtype and one trailing shape, "
                             f"got {[(t.dtype, tuple(t.shape)) for t in tensors_per_destination]}")
    # bool is not a gloo dtype; its bytes travel as uint8.
    wire_dtype = torch.uint8 if dtype == torch.bool else dtype
    comm = comm_device(group)
    send_sizes = [int(t.shape[0]) for t in tensors_per_destination]
    send_count = torch.tensor(send_sizes, dtype=torch.int64, device=comm)
    recv_count = torch.empty(world_size, dtype=torch.int64, device=comm)
    dist.all_to_all_single(recv_count, send_count, group=group)
    recv_sizes = recv_count.tolist()

    payload = torch.cat([t.reshape(t.shape[0], *rest) for t in tensors_per_destination])
    payload = payload.view(wire_dtype) if wire_dtype != dtype else payload
    payload = payload.to(comm).contiguous()
    received = torch.empty((sum(recv_sizes), *rest), dtype=wire_dtype, device=comm)
    dist.all_to_all_single(received, payload, output_split_sizes=recv_sizes,
                           input_split_sizes=send_sizes, group=group)
    received = received.to(device)
    received = received.view(dtype) if wire_dtype != dtype else received

    if counter is not None:
        row_bytes = first.element_size() * _prod(rest)
        remote_sent = sum(n for d, n in enumerate(send_sizes) if d != rank)
        remote_received = sum(n for s, n in enumerate(recv_sizes) if s != rank)
        size_message = 8 * (world_size - 1)
        counter.add(kind, size_message + remote_sent * row_bytes,
                    size_message + remote_received * row_bytes)
    return list(torch.split(received, recv_sizes))


def all_reduce_int(value: int, op: Literal["sum", "max", "min"] = "sum",
                   group: dist.ProcessGroup | None = None) -> int:
    """A collective sum / max / min of one Python int over ``group``."""
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                 "min": dist.ReduceOp.MIN}[op]
    tensor = torch.tensor([int(value)], dtype=torch.int64, device=comm_device(group))
    dist.all_reduce(tensor, op=reduce_op, group=group)
    return int(tensor.item())


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for size in shape:
        out *= size
    return out
