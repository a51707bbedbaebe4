"""The README's cluster commands, run as written on loopback and a tiny dataset.

The README marks the blocks this test runs with ``<!-- readme-test: NAME -->`` and reads
its settings from shell variables (``CONFIG``, ``SPARK_MASTER``, ``HEAD``, ...) set in one
block of their own; the test sets those variables to loopback, free ports and a tiny
config, and runs each marked block with bash in a shell of its own (as a user's next day
starts a new one), so the README and the test cannot drift. The Spark standalone master
and worker are started here with pyspark's own ``spark-class``.

Everything started runs in sessions of its own (``start_new_session``): the test stops
exactly the processes of those sessions, Spark's and Ray's daemons included, and never
runs ``ray stop``, which would stop every Ray on the machine. Ray's temp folder and its
token (``HOME``) are private to the test too, and its Ray stays on loopback (Ray's
single-machine mode; a real head is started on its private address as the README says).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
MARKER = re.compile(r"<!-- readme-test: ([\w-]+) -->\n```bash\n(.*?)```", re.S)
SETTINGS = re.compile(r"```bash\n((?:export [A-Z_]+=.*\n)+)```")

# The tiny dataset (tests/test_pipeline.py's sizes): five days, the first four built first.
TINY = [
    "generate.num_days=5", "generate.start_date=2026-03-02", "train.val_days=1",
    "train.test_days=1", "train.epochs=2", "train.batch_size=64", "train.max_train_events=512",
    "train.max_eval_events=200", "train.eval_batch_size=512", "train.fanouts=[3, 2]",
    "train.relation_fanouts={}", "train.model.hidden_dim=16", "train.model.time_dim=8",
    "spark.driver_memory=1g", "spark.shuffle_partitions=2", "resources.progress_every_s=0.5"]
FIRST_DAYS, NEXT_DAY = "2026-03-02..2026-03-05", "2026-03-06"


def readme_blocks() -> dict[str, str]:
    """The README's marked blocks, by name."""
    return dict(MARKER.findall(README.read_text()))


def readme_settings() -> set[str]:
    """The variables the README's settings block exports."""
    found = SETTINGS.search(README.read_text())
    assert found, "README.md: no settings block (```bash of export lines) in the cluster section"
    return set(re.findall(r"(?:export |\s)([A-Z_]+)=", found.group(1)))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_config(root: Path) -> Path:
    """A config file of the tiny dataset under ``root``, in the form a user's copy has."""
    config: dict = {}
    for override in tiny_overrides(root) + TINY:
        key, value = override.split("=", 1)
        section, name = key.split(".", 1)
        node = config.setdefault(section, {})
        *parents, leaf = name.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value)
    config["spark"]["master"] = "local[2]"   # spark-submit's --master wins
    # not PARTS: a README command that forgets --num-parts fails here, as it would for a user
    # whose copy of conf/cluster.example.yaml leaves partition.num_parts at its default
    config["partition"] = {"num_parts": 1}
    path = root / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Processes:
    """Commands run in sessions of their own, so that everything they leave behind (daemons
    included) can be found and stopped, and nothing else."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env, self.log_dir = env, log_dir
        self.sessions: set[int] = set()

    def background(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - the daemon's, until it ends
        proc = subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.sessions.add(proc.pid)
        return proc

    def block(self, name: str, script: str, timeout_s: float) -> str:
        """Run a README block with ``bash -e -x``; on failure the assertion names the
        command that failed and shows the output's tail."""
        proc = self.background(name, ["bash", "-e", "-x", "-c", script])
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        output = (self.log_dir / f"{name}.log").read_text()
        if code != 0:
            commands = [line for line in output.splitlines() if line.startswith("+ ")]
            last = commands[-1][2:] if commands else "(none started)"
            status = f"timed out after {timeout_s:.0f} s" if code is None else f"exit status {code}"
            tail = "\n".join(output.splitlines()[-40:])
            pytest.fail(f"README block {name!r}: `{last}` failed ({status}); output tail:\n{tail}",
                        pytrace=False)
        return output

    def stop_all(self) -> list[str]:
        """SIGTERM, then SIGKILL, every process of the sessions started here; returns what
        needed SIGKILL."""
        def ours() -> list[psutil.Process]:
            found = []
            for proc in psutil.process_iter():
                try:
                    if os.getsid(proc.pid) in self.sessions:
                        found.append(proc)
                except (ProcessLookupError, PermissionError, psutil.Error):
                    pass
            return found

        for proc in ours():
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(ours(), timeout=15)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=10)
        return [" ".join(p.cmdline()[:3]) for p in alive if p.is_running()]


def wait_for_spark_worker(webui_port: int, master: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert master.poll() is None, "the Spark master exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{webui_port}/json/", timeout=2) as page:
                if any(w.get("state") == "ALIVE" for w in json.load(page).get("workers", [])):
                    return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"no Spark worker registered with the master within {timeout_s:.0f} s")


def test_readme_marks_its_tested_blocks_and_sets_every_variable_they_read():
    blocks = readme_blocks()
    assert set(blocks) == {"spark-first", "ray-first", "next-day"}, set(blocks)
    used = set(re.findall(r"\$\{?([A-Z_]+)", "".join(blocks.values())))
    assert used <= readme_settings(), used - readme_settings()
    # each block runs in a shell of its own, as a user's next day does: each submits the token
    assert all("export RAY_AUTH_MODE=token" in blocks[name] for name in ("ray-first", "next-day"))
    assert "--place-new" in blocks["next-day"] and "--continue" in blocks["next-day"]


@pytest.mark.spark
@pytest.mark.ray
@pytest.mark.slow
def test_readme_cluster_commands_run_as_written(tmp_path):
    from clickgraph.core.graph_store import open_graph_store
    from trainer import checkpoint as ckpt

    blocks = readme_blocks()
    spark_home = Path(__import__("pyspark").__file__).parent
    # a short private folder: Ray's socket paths must stay under the kernel's 107 characters
    private = Path(tempfile.mkdtemp(prefix="cg-readme-"))
    (private / "home").mkdir()
    logs = tmp_path / "command-output"   # not paths.logs (tmp_path/logs), which generate replaces
    logs.mkdir()
    spark_port, spark_ui, worker_ui = free_port(), free_port(), free_port()
    settings = {
        "CONFIG": str(tiny_config(tmp_path)), "SPARK_MASTER": f"spark://127.0.0.1:{spark_port}",
        "HEAD": "127.0.0.1", "RAY_PORT": str(free_port()), "DASHBOARD_PORT": str(free_port()),
        "PARTS": "2", "DAYS": FIRST_DAYS, "DAY": NEXT_DAY}
    assert set(settings) == readme_settings()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SPARK_", "PYSPARK_"))}
    env.update(settings)
    env.update({
        "PATH": f"{BIN}:{spark_home / 'bin'}:{env.get('PATH', '')}",   # the activated environment
        "VIRTUAL_ENV": str(BIN.parent), "PYTHONPATH": str(REPO), "HOME": str(private / "home"),
        # Ray's single-machine mode keeps `--node-ip-address 127.0.0.1` (else Ray swaps in the
        # machine's routable address): the test's Ray listens on loopback only
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_TMPDIR": str(private), "SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_DAEMON_MEMORY": "256m", "PYSPARK_PYTHON": str(BIN / "python")})
    procs = Processes(env, logs)
    started = time.monotonic()
    # a SIGTERM (a CI job's timeout) still stops the daemons: it unwinds through the finally
    on_term = signal.signal(signal.SIGTERM, lambda *_: pytest.exit("SIGTERM", returncode=143))
    try:
        master = procs.background("spark-master", [
            "spark-class", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
            "--port", str(spark_port), "--webui-port", str(spark_ui)])
        procs.background("spark-worker", [
            "spark-class", "org.apache.spark.deploy.worker.Worker", settings["SPARK_MASTER"],
            "--host", "127.0.0.1", "--cores", "2", "--memory", "2g", "--webui-port", str(worker_ui)])
        wait_for_spark_worker(spark_ui, master)

        # generous limits: on a loaded 2-core machine the Spark jobs take minutes
        procs.block("spark-first", blocks["spark-first"], timeout_s=900)
        first = procs.block("ray-first", blocks["ray-first"], timeout_s=600)
        assert re.search(r"Job '[^']+' succeeded", first), first[-2000:]
        # the job's output streams back: rank 0's progress lines, with their ETA
        assert re.search(r"steps \(\d+%\), [0-9.]+ steps/s, ETA \d+:\d\d", first), first[-3000:]
        first_run = ckpt.find_latest(str(tmp_path / "train"))
        next_day = procs.block("next-day", blocks["next-day"], timeout_s=900)
        assert re.search(r"Job '[^']+' succeeded", next_day), next_day[-2000:]
        elapsed = time.monotonic() - started
    finally:
        left = procs.stop_all()
        signal.signal(signal.SIGTERM, on_term)
        shutil.rmtree(private, ignore_errors=True)
    assert not left, f"still running after SIGKILL: {left}"

    store = open_graph_store(str(tmp_path / "graph"))
    assert sorted(store.days) == ["2026-03-02", "2026-03-03", "2026-03-04", "2026-03-05", NEXT_DAY]
    book = json.loads((tmp_path / "partitions" / "_MANIFEST.json").read_text())
    assert book["num_parts"] == 2 and book["method"] == "placement", book
    continued = ckpt.find_latest(str(tmp_path / "train"))
    assert continued != first_run
    # the continued run trained on the events after the first one's
    assert ckpt.read_meta(continued)["since_time"] == ckpt.read_meta(first_run)["last_event_time"]
    print(f"README cluster commands: {elapsed:.0f} s")
