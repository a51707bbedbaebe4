"""Experiment tracking in MLflow: what each stage reports, and a tracker that never fails one.

The stages know nothing of MLflow. They return what they also write (``metrics.json``,
``evaluation.json``, an export's ``_MANIFEST.json``, the partition quality); this module
turns that into MLflow runs, from the process that drives them: the pipeline, or the
``train`` / ``evaluate`` / ``export`` command. A distributed training run therefore logs from
the driver only, after rank 0 wrote ``metrics.json`` (per-step losses are rank 0's).

* ``clickgraph pipeline``: one parent run per pipeline day (``day1``: generate and the first
  days' stages; ``day2``: the added day's stages, the continued and any retrained model, and
  the report) with one nested run per stage;
* ``clickgraph train|evaluate|export``: one run per invocation.

Every run carries the resolved config as flattened parameters (``train.model.hidden_dim``),
tags (graph version, shard set version, checkpoint URL, git commit when the code is a git
checkout) and the stage's figures and files (:func:`stage_report`). With
``tracking.registered_model`` set, each trained checkpoint is registered as a version of
that model.

A tracker that cannot be reached never fails a stage: each call is tried
:data:`ATTEMPTS` times, then one warning goes to the terminal and tracking stays off for the
rest of the command (so a dead server costs seconds once, not at every stage).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from clickgraph.core import fs
from clickgraph.core.config import Config

ATTEMPTS = 3
"""Tries of one MLflow call before tracking is switched off (backoff 0.5 s, 1 s)."""

HTTP_RETRIES, HTTP_TIMEOUT_S = "0", "10"
"""MLflow's own HTTP retries and timeout, unless the environment sets them
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_TIMEOUT``): its defaults (7
retries with exponential backoff, 120 s) would hold a stage for minutes on a dead server;
:data:`ATTEMPTS` retries instead."""

# MLflow's limits per log_batch request
_MAX_PARAMS, _MAX_METRICS = 100, 1000
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def default_uri(cfg: Config) -> str:
    """``tracking.uri``, else the local file store ``file://<paths.root>/mlruns``.

    Raises:
        ValueError: ``tracking.uri`` is null but ``paths.root`` is not on the local file
            system (an object store cannot hold MLflow's file store; set a tracking URI).
    """
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if not fs.is_local(cfg.paths.root):
        raise ValueError(f"tracking.uri is null but paths.root {cfg.paths.root!r} is not local: "
                         "set tracking.uri to an MLflow server, or tracking.enabled to false")
    return "file://" + os.path.abspath(fs.join(cfg.paths.root, "mlruns").removeprefix("file://"))


def ui_command(uri: str) -> str:
    """The command that shows the runs of ``uri`` in MLflow's web UI (needs the full
    ``mlflow`` package; ``mlflow-skinny`` has no server)."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    allow = "MLFLOW_ALLOW_FILE_STORE=true " if uri.startswith("file:") else ""
    return f"pip install mlflow && {allow}mlflow ui --backend-store-uri {uri}"


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config dict -> ``{"section.key": "value"}``; lists and empty dicts as JSON."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        elif isinstance(value, (dict, list)):
            out[name] = json.dumps(value)
        else:
            out[name] = "null" if value is None else str(value)
    return out


def _key(name: str) -> str:
    """A metric or parameter name MLflow takes. A ``/`` becomes ``.``: the file store
    makes one a folder, so ``a/b`` beside a metric ``a`` fails (partition balance keys)."""
    return _KEY_UNSAFE.sub("_", name.replace(">=", "ge").replace("/", "."))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _leaves(data: Any, prefix: str) -> dict[str, float]:
    """Every number in a nested dict, keyed by its dotted path."""
    if isinstance(data, dict):
        out: dict[str, float] = {}
        for key, value in data.items():
            out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    number = _number(data)
    return {} if number is None else {prefix: number}


def shard_set_version(cfg: Config) -> str | None:
    """``created_at`` of the shard set in ``paths.partitions``, or None without one."""
    try:
        return fs.read_json(fs.join(cfg.paths.stage("partitions"), fs.MANIFEST_NAME)).get("created_at")
    except (OSError, ValueError):
        return None


def git_commit() -> str | None:
    """The commit of the checkout clickgraph runs from, or None (an installed package)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


# ------------------------------------------------------------------ what each stage reports

MetricPoint = tuple[str, float, int]  # key, value, step


def stage_report(stage: str, result: dict[str, Any], cfg: Config, out_url: str | None = None
                 ) -> tuple[list[MetricPoint], dict[str, str], list[str]]:
    """A stage's result -> ``(metrics, tags, artifact URLs)`` for its MLflow run.

    Args:
        stage: ``generate``, ``build-graph``, ``partition``, ``train``, ``evaluate`` or
            ``export``.
        result: What the stage returned (the pipeline's excerpt for the Spark stages).
        cfg: The config it ran with.
        out_url: ``export``: root of the export versions (default ``paths.embeddings``).
    """
    metrics: list[MetricPoint] = []
    tags: dict[str, str] = {}
    files: list[str] = []

    def add(values: dict[str, float], step: int = 0) -> None:
        metrics.extend((_key(k), v, step) for k, v in values.items())

    if stage == "generate":
        add({"events_total": _number(result.get("events_total")) or 0.0})
        add(_leaves(result.get("event_counts") or {}, "events"))
        add(_leaves(result.get("entity_counts") or {}, "entities"))
    elif stage == "build-graph":
        add(_leaves({k: result.get(k) for k in ("node_counts", "edge_counts")}, ""))
        add(_leaves({k: result.get(k) for k in ("rows_read", "rows_kept", "rows_quarantined",
                                                 "build_seconds")}, ""))
        tags["clickgraph.graph_version"] = str(result.get("created_at"))
    elif stage == "partition":
        add(_leaves(result.get("quality") or {}, "quality"))
        add(_leaves(result.get("placement") or {}, "placement"))
        add(_leaves({k: result.get(k) for k in ("num_parts", "num_nodes", "wall_s")}, ""))
        tags["clickgraph.shard_set_version"] = str(result.get("created_at"))
        tags["clickgraph.partition_method"] = str(result.get("method"))
    elif stage == "train":
        _train_report(result, add, tags)
        if int(result.get("workers") or 1) > 1:
            tags["clickgraph.shard_set_version"] = str(shard_set_version(cfg))
        if result.get("out"):
            files += [fs.join(result["out"], "metrics.json"), fs.join(result["out"], "_config.yaml")]
    elif stage == "evaluate":
        for kind in ("auc", "auc_cold", "auc_warm", "warm_minus_cold"):
            add(_leaves(result.get(kind) or {}, kind))
        for day in result.get("per_day", []):
            step = (dt.date.fromisoformat(day["day"]) - dt.date(1970, 1, 1)).days  # UTC day number
            add(_leaves({k: day.get(k) for k in ("auc", "auc_cold", "auc_warm", "events")},
                        "per_day"), step)
        for bucket in result.get("auc_by_past_interactions", []):
            add(_leaves(bucket.get("auc") or {}, f"auc_by_past_interactions.{bucket['bucket']}"))
        add(_leaves({k: result.get(k) for k in ("events", "cold_events", "click_rate")}, ""))
        tags["clickgraph.graph_version"] = str((result.get("graph") or {}).get("graph_created_at"))
        tags["clickgraph.test_days"] = ",".join(result.get("test_days", []))
        if result.get("out"):
            files.append(fs.join(result["out"], "evaluation.json"))
    elif stage == "export":
        drift = result.get("drift") or {}
        add(_leaves({t: {k: v.get(k) for k in ("mean_cosine", "new_share", "in_both", "gone")}
                     for t, v in drift.items() if t != "previous" and isinstance(v, dict)}, "drift"))
        add(_leaves(result.get("recommendations") or {}, "recommendations"))
        add(_leaves(result.get("counts") or {}, "embeddings"))
        tags["clickgraph.graph_version"] = str((result.get("graph") or {}).get("created_at"))
        cutoff = (result.get("cutoff") or {}).get("date")
        if cutoff:
            tags["clickgraph.export_cutoff"] = str((result.get("cutoff") or {}).get("iso"))
            files.append(fs.join(out_url or cfg.paths.stage("embeddings"), cutoff, fs.MANIFEST_NAME))
    else:
        raise ValueError(f"no tracking report for stage {stage!r}")
    return metrics, {k: v for k, v in tags.items() if v not in ("None", "")}, files


def _train_report(result: dict[str, Any], add: Callable[..., None], tags: dict[str, str]) -> None:
    """Per-epoch and per-step series and the run's totals of a training ``metrics.json``."""
    for epoch in result.get("epochs", []):
        val = epoch.get("val") or {}
        add({k: v for k, v in {"loss": _number(epoch.get("loss")),
                               "val_auc": _number(epoch.get("val_auc")),
                               "val_auc_cold": _number(val.get("auc_cold")),
                               "val_auc_warm": _number(val.get("auc_warm")),
                               "epoch_events_per_s": _number(epoch.get("events_per_s"))}.items()
             if v is not None}, int(epoch["epoch"]))
    first = int(result.get("resumed_from_global_step") or 0)
    for step, loss in enumerate(result.get("loss_per_step", []), start=first + 1):
        if _number(loss) is not None:
            add({"step_loss": float(loss)}, step)
    add(_leaves({k: result.get(k) for k in (
        "val_auc", "val_auc_cold", "val_auc_warm", "val_auc_logistic_baseline", "events_per_s",
        "bytes_exchanged_per_event", "train_seconds", "load_seconds", "events_trained",
        "global_steps", "workers")}, ""))
    add(_leaves(result.get("bytes") or {}, "bytes"))
    graph = result.get("graph") or {}
    tags.update({"clickgraph.graph_version": str(graph.get("graph_created_at")),
                 "clickgraph.checkpoint": str(result.get("checkpoint")),
                 "clickgraph.train_run": str(result.get("run")),
                 "clickgraph.continue_from": str(result.get("continue_from")),
                 "clickgraph.device": str(result.get("device"))})


# ------------------------------------------------------------------ the tracker


class Tracker:
    """MLflow runs of one command, through ``MlflowClient`` (no global active run).

    Every method is safe to call when tracking is off or the tracker is down: it does
    nothing and returns None.
    """

    def __init__(self, cfg: Config, log: Callable[[str], None] = print):
        self.cfg, self.say = cfg, log
        self.on = cfg.tracking.enabled
        self.uri: str | None = None
        self._client = None
        self._experiment_id: str | None = None
        self._base_tags: dict[str, str] | None = None
        self.seconds = 0.0  # spent in this tracker (MLflow's import included): what tracking costs
        self._depth = 0
        if self.on:
            try:
                self.uri = default_uri(cfg)
            except ValueError as error:
                self._off(str(error))

    # ---- plumbing

    def _off(self, why: str) -> None:
        if self.on:
            self.say(f"tracking: WARNING: {why}; tracking is off for the rest of this command "
                     "(tracking.enabled: false silences this)")
        self.on = False

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` tried :data:`ATTEMPTS` times; None once tracking is off."""
        if not self.on:
            return None
        for attempt in range(ATTEMPTS):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return fn(*args, **kwargs)
            except Exception as error:  # a tracker's failure is never the stage's
                last = error
                if attempt + 1 < ATTEMPTS:
                    time.sleep(0.5 * 2**attempt)
        self._off(f"MLflow at {self.uri} failed to {what} after {ATTEMPTS} tries "
                  f"({type(last).__name__}: {str(last).splitlines()[0][:200]})")
        return None

    def _mlflow(self):
        """The client and experiment id, set up on first use."""
        if self._client is None and self.on:
            try:
                self._client = _make_client(self.uri)
            except ImportError as error:
                self._off(f"mlflow is not installed ({error}); pip install mlflow-skinny")
                return None
            experiment = self._call("read the experiment", self._client.get_experiment_by_name,
                                    self.cfg.tracking.experiment)
            if experiment is None and self.on:
                self._experiment_id = self._call("create the experiment",
                                                 self._client.create_experiment,
                                                 self.cfg.tracking.experiment)
            elif experiment is not None:
                self._experiment_id = experiment.experiment_id
        return self._client if self.on and self._experiment_id is not None else None

    def _tags(self) -> dict[str, str]:
        if self._base_tags is None:
            from clickgraph import __version__

            self._base_tags = {"clickgraph.version": __version__,
                               "clickgraph.config_hash": self.cfg.section_hash()}
            commit = git_commit()
            if commit:
                self._base_tags["mlflow.source.git.commit"] = commit
        return self._base_tags

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        """Adds the block's time to :attr:`seconds` (outermost block only)."""
        self._depth += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.seconds += time.perf_counter() - started

    def figures(self, wall_seconds: float) -> dict[str, Any]:
        """What tracking cost a command of ``wall_seconds``: ``seconds`` spent inside this
        tracker's calls (MLflow's import, run starts and ends, parameters, metrics,
        artifacts, registration, retries), and their ``share`` of the wall time. Counted
        in the tracker's own calls, so the figure holds on a loaded machine too, where
        comparing two runs' wall times would measure the load."""
        return {"enabled": self.on, "uri": self.uri, "experiment": self.cfg.tracking.experiment,
                "seconds": round(self.seconds, 2),
                "share": round(self.seconds / wall_seconds, 4) if wall_seconds > 0 else None}

    # ---- runs

    def start(self, name: str, parent: str | None = None, tags: dict[str, str] | None = None,
              params: bool = True) -> str | None:
        """A new run (nested under ``parent``) with the flattened config as parameters;
        returns its id, or None when tracking is off."""
        if not self.on:
            return None
        with self._timed():
            return self._start(name, parent, tags, params)

    def _start(self, name: str, parent: str | None, tags: dict[str, str] | None,
               params: bool) -> str | None:
        client = self._mlflow()
        if client is None:
            return None
        from mlflow.entities import Param

        all_tags = {**self._tags(), **(tags or {}), "mlflow.runName": name}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = self._call("start a run", client.create_run, self._experiment_id, tags=all_tags,
                         run_name=name)
        if run is None:
            return None
        run_id = run.info.run_id
        if params:
            items = sorted(flatten(self.cfg.to_dict()).items())
            for i in range(0, len(items), _MAX_PARAMS):
                self._call("log parameters", client.log_batch, run_id,
                           params=[Param(_key(k), v) for k, v in items[i:i + _MAX_PARAMS]])
        return run_id

    def finish(self, run_id: str | None, ok: bool = True) -> None:
        if run_id and self._client is not None:
            with self._timed():
                self._call("end a run", self._client.set_terminated, run_id,
                           "FINISHED" if ok else "FAILED")

    @contextlib.contextmanager
    def run(self, name: str, parent: str | None = None, tags: dict[str, str] | None = None
            ) -> Iterator[str | None]:
        """A run around a block: FAILED when the block raises, else FINISHED."""
        run_id = self.start(name, parent, tags)
        try:
            yield run_id
        except BaseException:
            self.finish(run_id, ok=False)
            raise
        self.finish(run_id)

    def log_metrics(self, run_id: str | None, metrics: list[MetricPoint] = (),
                    tags: dict[str, str] | None = None) -> None:
        """Metrics ``(key, value, step)`` and tags of one run."""
        if not run_id or self._client is None:
            return
        with self._timed():
            self._log_metrics(run_id, metrics, tags)

    def _log_metrics(self, run_id: str, metrics: list[MetricPoint], tags: dict[str, str] | None
                     ) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        entries = [Metric(k, v, now, step) for k, v, step in metrics]
        for i in range(0, len(entries), _MAX_METRICS):
            self._call("log metrics", self._client.log_batch, run_id, metrics=entries[i:i + _MAX_METRICS])
        if tags:
            self._call("set tags", self._client.log_batch, run_id,
                       tags=[RunTag(k, v) for k, v in tags.items()])

    def artifacts(self, run_id: str | None, urls: list[str], path: str | None = None) -> None:
        """Copy files (any fsspec URL; missing ones are skipped) into the run's artifacts."""
        if not run_id or self._client is None:
            return
        with self._timed(), tempfile.TemporaryDirectory(prefix="clickgraph-mlflow-") as folder:
            for url in urls:
                if not fs.exists(url):
                    continue
                local = url.removeprefix("file://")
                if not fs.is_local(url):
                    filesystem, remote = fs.filesystem(url)
                    local = os.path.join(folder, os.path.basename(remote))
                    filesystem.get_file(remote, local)
                self._call("upload an artifact", self._client.log_artifact, run_id, local, path)

    def report_stage(self, run_id: str | None, stage: str, result: dict[str, Any],
                     out_url: str | None = None) -> None:
        """Log :func:`stage_report` of a finished stage; register a trained checkpoint."""
        if not run_id or not self.on:
            return
        metrics, tags, files = stage_report(stage, result, self.cfg, out_url)
        self.log_metrics(run_id, metrics, tags)
        self.artifacts(run_id, files)
        if stage == "train" and result.get("checkpoint"):
            self.register(run_id, str(result["checkpoint"]))

    def register(self, run_id: str, checkpoint_url: str) -> None:
        """The checkpoint as a new version of ``tracking.registered_model``, if one is named."""
        name = self.cfg.tracking.registered_model
        if not name or self._client is None:
            return
        with self._timed():
            self._register(run_id, checkpoint_url, name)

    def _register(self, run_id: str, checkpoint_url: str, name: str) -> None:
        from mlflow.exceptions import MlflowException

        def ensure_model() -> None:
            try:
                self._client.get_registered_model(name)
            except MlflowException:
                self._client.create_registered_model(name)

        self._call("create the registered model", ensure_model)
        version = self._call("register the checkpoint", self._client.create_model_version,
                             name, checkpoint_url, run_id=run_id,
                             tags={"clickgraph.checkpoint": checkpoint_url})
        if version is not None:
            self.log_metrics(run_id, tags={"clickgraph.model_version": f"{name}/{version.version}"})


def _make_client(uri: str):
    """An ``MlflowClient`` for ``uri``, with MLflow's routine chatter kept off the terminal."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_RETRIES)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT_S)
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 refuses its file store unless asked: it is in maintenance mode, but it
        # needs no database driver and no server, which is what a local default wants
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mlflow.tracking import MlflowClient
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    return MlflowClient(tracking_uri=uri)


class PipelineRuns:
    """The pipeline's runs: one parent per pipeline day, one nested run per stage.

    Args:
        tracker: The command's tracker.
        started_at: The pipeline's start (ISO), tagged on every run to group one pipeline's.
    """

    def __init__(self, tracker: Tracker, started_at: str):
        self.tracker, self.started_at = tracker, started_at
        self.parents: dict[str, str | None] = {}
        self.open: list[str] = []

    def parent(self, day: str) -> str | None:
        """The run of pipeline day ``day`` (``day1``, ``day2``), started on first use; an
        earlier day's run ends when a later one starts."""
        if day not in self.parents:
            for earlier in self.open:
                self.tracker.finish(self.parents[earlier])
            self.open = [day]
            self.parents[day] = self.tracker.start(
                f"pipeline {day}", tags={"clickgraph.pipeline": self.started_at,
                                         "clickgraph.pipeline_day": day})
        return self.parents[day]

    def start_stage(self, day: str, stage: str, run: str | None) -> str | None:
        name = stage + (f" ({run})" if run else "")
        return self.tracker.start(name, self.parent(day), tags={
            "clickgraph.pipeline": self.started_at, "clickgraph.pipeline_day": day,
            "clickgraph.stage": stage, "clickgraph.run": run or ""})

    def end_stage(self, run_id: str | None, stage: str, record: dict[str, Any],
                  result: dict[str, Any] | None) -> None:
        """Log a step's time, memory and (when it finished) its stage report; end its run."""
        ok = record.get("status") == "ok"
        self.tracker.log_metrics(run_id, [(k, float(record[k]), 0) for k in ("seconds", "peak_rss_mb")
                                          if _number(record.get(k)) is not None],
                                 None if ok else {"clickgraph.error": str(record.get("error"))[:5000]})
        if ok and result is not None and stage != "report":
            self.tracker.report_stage(run_id, stage, result)
        self.tracker.finish(run_id, ok)

    def close(self, ok: bool) -> None:
        for day in self.open:
            self.tracker.finish(self.parents[day], ok)
        self.open = []


def tracked(cfg: Config, stage: str, call: Callable[[], dict[str, Any]],
            log: Callable[[str], None] = print, out_url: str | None = None) -> dict[str, Any]:
    """Run one stage command (``call``) inside an MLflow run of its own and log its
    :func:`stage_report`; the run is FAILED when the stage raises. Returns its result."""
    tracker = Tracker(cfg, log)
    with tracker.run(stage, tags={"clickgraph.stage": stage}) as run_id:
        result = call()
        tracker.report_stage(run_id, stage, result, out_url)
    return result
