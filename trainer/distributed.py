"""torch.distributed helpers for partition-parallel training.

Three things every cross-partition step needs: a process group (:func:`init_process_group`,
:func:`find_free_port`), an uneven all-to-all (:func:`exchange`) and a count of the bytes
that actually crossed partitions (:class:`ByteCounter`).

Devices. NCCL moves only CUDA tensors and gloo's all-to-all only CPU ones, while the
sampler's messages are made where its shard lives, on the CPU or on a GPU, whatever the
backend (``resources.sampler_device``, :mod:`trainer.placement`). :func:`comm_device` is
the one place that says where a collective's tensors must be; every collective here
(:func:`exchange`, :func:`all_reduce_int`, :func:`all_gather_tensor`) copies its inputs
there and its results back to the caller's device, so callers never branch on the
backend. Where the tensors are there already (CPU ones under gloo, a GPU sampler's under
NCCL) the copies are no-ops (``Tensor.to`` of a tensor already on the device returns it),
so the gloo path is unchanged. :func:`training_device` says where a
rank keeps its model and batches.

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
import ipaddress
import os
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
                       backend: Backend = "auto", timeout_s: float = 300.0,
                       local_rank: int | None = None) -> str:
    """Joins the default process group over TCP.

    Rank 0 hosts the group's TCP store on ``master_addr`` only: torch's own ``tcp://``
    and ``env://`` rendezvous bind it to every interface, whatever the address. When
    ``master_addr`` is a loopback address every rank runs on this machine, so the
    backend's own sockets are kept on the loopback interface too (``GLOO_SOCKET_IFNAME``
    and ``NCCL_SOCKET_IFNAME``, unless the environment sets them already): nothing the
    group opens is reachable from another machine.

    Args:
        rank: This process's rank in ``[0, world_size)``; with partition shards, the
            rank serves part ``rank``.
        world_size: Number of processes.
        master_addr: Host of rank 0's TCP store (IPv6 literals allowed).
        master_port: Its port (see :func:`find_free_port`).
        backend: ``"gloo"``, ``"nccl"`` or ``"auto"``: NCCL when CUDA is available,
            otherwise gloo. With NCCL the process uses :func:`training_device`'s GPU.
        timeout_s: How long a collective may wait for the other ranks before failing
            (instead of hanging for torch's default 30 minutes).
        local_rank: The rank's index on its machine, for the GPU (default: ``rank``).

    Returns:
        The backend used.
    """
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be auto, gloo or nccl, got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(training_device("nccl", rank if local_rank is None else local_rank))
    host = master_addr.removeprefix("[").removesuffix("]")
    if is_loopback(host):
        for name, value in loopback_socket_env().items():
            os.environ.setdefault(name, value)
    timeout = dt.timedelta(seconds=timeout_s)
    if rank == 0:
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                 socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, int(master_port)))
            listener.listen(max(world_size, 128))
        except OSError:
            listener.close()
            raise
        # The store takes the bound socket over (and closes it when it goes).
        store = dist.TCPStore(host, int(master_port), world_size, is_master=True,
                              timeout=timeout, master_listen_fd=listener.detach())
    else:
        store = dist.TCPStore(host, int(master_port), world_size, is_master=False,
                              timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                            timeout=timeout)
    return backend


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP literal, IPv4-mapped ones included, or ``localhost``) is a
    loopback address."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket
    return (mapped or address).is_loopback


def loopback_interface() -> str:
    """Name of the network interface that holds 127.0.0.1 (``lo`` on Linux)."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address.startswith("127.") for a in addresses):
            return name
    return "lo"


def loopback_socket_env() -> dict[str, str]:
    """Environment that keeps gloo's and NCCL's sockets on the loopback interface."""
    name = loopback_interface()
    return {"GLOO_SOCKET_IFNAME": name, "NCCL_SOCKET_IFNAME": name}


def comm_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """Where collective tensors must live for the group's backend: the current CUDA
    device for NCCL (:func:`init_process_group` and ``train_worker`` set it), else the
    CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def training_device(backend: str, local_rank: int = 0,
                    cuda_devices: int | None = None) -> torch.device:
    """Where a rank keeps its model and batches for a process-group backend.

    NCCL ranks train on ``cuda:(local_rank % cuda_devices)`` (one GPU per rank on a
    machine); gloo ranks on the CPU.

    Args:
        backend: ``"gloo"`` or ``"nccl"``.
        local_rank: The rank's index among the ranks on its machine.
        cuda_devices: CUDA devices this process sees (default:
            ``torch.cuda.device_count()``).

    Raises:
        ValueError: An unknown backend, or NCCL without a CUDA device.
    """
    if backend == "gloo":
        return torch.device("cpu")
    if backend != "nccl":
        raise ValueError(f"backend must be gloo or nccl, got {backend!r}")
    count = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    if count < 1:
        raise ValueError("the nccl backend needs a CUDA device, and this process sees none")
    return torch.device("cuda", local_rank % count)


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


def all_gather_tensor(tensor: Tensor, group: dist.ProcessGroup | None = None) -> list[Tensor]:
    """Every rank's ``tensor`` (one shape and dtype on all ranks), on ``tensor``'s device.

    Collective. For CPU state such as a ``torch.Generator`` state under NCCL.
    """
    comm = comm_device(group)
    local = tensor.to(comm)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    return [part.to(tensor.device) for part in gathered]


def all_reduce_int(value: int, op: Literal["sum", "max", "min"] = "sum",
                   group: dist.ProcessGroup | None = None) -> int:
    """A collective sum / max / min of one Python int over ``group``."""
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                 "min": dist.ReduceOp.MIN}[op]
    tensor = torch.tensor([int(value)], dtype=torch.int64, device=comm_device(group))
    dist.all_reduce(tensor, op=reduce_op, group=group)
    return int(tensor.item())


def all_reduce_ints(values: list[int], group: dist.ProcessGroup | None = None) -> list[int]:
    """Collective sums of several Python ints over ``group``, in one all-reduce."""
    tensor = torch.tensor([int(v) for v in values], dtype=torch.int64, device=comm_device(group))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return [int(v) for v in tensor.tolist()]


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for size in shape:
        out *= size
    return out
