"""A local Ray started by clickgraph, and the process group its workers form, listen on
loopback only.

The test starts Ray as ``clickgraph train`` does (:func:`trainer.ray_launch.connect_ray`),
runs two Ray Train workers that form their gloo group as :func:`~trainer.ray_launch.worker_loop`
does (:func:`~trainer.ray_launch.own_group_torch_config`,
:func:`~trainer.distributed.init_process_group`), and, while the group is up, lists the
listening TCP sockets of every Ray process (the driver's own included, less those it had
before Ray started): none may be bound to a non-loopback address (``0.0.0.0`` and ``::``
included). Skipped when psutil cannot see other processes' sockets.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

POLL_S = 0.2


def _probe_loop(config: dict) -> None:
    """Two ranks: join the group on loopback, all-reduce, then hold the group up until
    the test has looked at the sockets."""
    import ray.train
    import torch
    import torch.distributed as dist

    from trainer.distributed import init_process_group

    context = ray.train.get_context()
    rank = context.get_world_rank()
    init_process_group(rank, context.get_world_size(), "127.0.0.1", config["port"], "gloo")
    try:
        total = torch.ones(1)
        dist.all_reduce(total)
        assert int(total) == context.get_world_size()
        with open(os.path.join(config["folder"], f"ready-{rank}"), "w"):
            pass
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(config["folder"], "done")):
            if time.monotonic() > deadline:
                raise TimeoutError("the test never looked at the sockets")
            time.sleep(POLL_S)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _ray_processes(psutil) -> list:
    """This process and its descendants that belong to Ray (not, say, a Spark JVM)."""
    out = [psutil.Process()]
    for child in psutil.Process().children(recursive=True):
        try:
            name, command = child.name(), " ".join(child.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if name.startswith("ray::") or name in ("raylet", "gcs_server") or "/ray/" in command:
            out.append(child)
    return out


def _listening(psutil, pids: set[int]) -> set[tuple[str, int, int]]:
    return {(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


@pytest.mark.ray
@pytest.mark.slow
def test_a_local_ray_and_its_process_group_listen_on_loopback_only(tmp_path):
    psutil = pytest.importorskip("psutil")
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from clickgraph.core.config import load_config
    from trainer.distributed import find_free_port, is_loopback
    from trainer.ray_launch import connect_ray, own_group_torch_config

    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    try:
        before = _listening(psutil, {os.getpid()})
    except psutil.AccessDenied:
        pytest.skip("psutil may not list this machine's sockets")
    cfg = load_config(None, ["ray.num_cpus=2"])
    seen: set[tuple[str, int, int]] = set()
    names: dict[int, str] = {}
    try:
        assert connect_ray(cfg, log=lambda *_: None)
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        trainer = TorchTrainer(
            _probe_loop, train_loop_config={"port": find_free_port(), "folder": str(tmp_path)},
            torch_config=own_group_torch_config("gloo"),
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(storage_path=str(tmp_path / "runs")))
        failure: list[BaseException] = []

        def fit() -> None:
            try:
                trainer.fit()
            except BaseException as error:  # noqa: BLE001 - reported below
                failure.append(error)

        thread = threading.Thread(target=fit, daemon=True)
        thread.start()
        deadline = time.monotonic() + 180
        while not all((tmp_path / f"ready-{rank}").exists() for rank in range(2)):
            assert not failure, failure
            assert time.monotonic() < deadline, "the workers never formed their group"
            time.sleep(POLL_S)
        processes = _ray_processes(psutil)
        names = {p.pid: p.name() for p in processes}
        seen = _listening(psutil, set(names)) - before
        (tmp_path / "done").touch()
        thread.join(120)
        assert not thread.is_alive() and not failure, failure
    finally:
        ray.shutdown()
    worker_pids = {pid for pid, name in names.items() if "RayTrainWorker" in name}
    if not seen or not worker_pids & {pid for _, _, pid in seen}:
        pytest.skip("psutil sees no listening socket of the Ray workers")
    exposed = sorted((ip, port, names[pid]) for ip, port, pid in seen if not is_loopback(ip))
    assert not exposed, f"listening beyond loopback: {exposed}"
    # The kinds of server the claim covers were really looked at.
    listening_names = {names[pid] for _, _, pid in seen}
    assert {"gcs_server", "raylet"} <= listening_names
