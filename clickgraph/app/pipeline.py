"""``clickgraph pipeline``: every stage end to end, then one more day, then a report.

The run (``docs/pipeline.md``):

1. generate ``generate.num_days`` days of logs;
2. build the graph store from all days but the last, partition it into
   ``resources.workers`` shards, train (Ray Train; one worker: in this process), evaluate on the
   test window and export embeddings (with more than one worker evaluation and export run
   on as many workers over the same shards, :mod:`trainer.dist_inference`);
3. "one more day": add the last day to the store incrementally, place its new nodes into
   the existing shards, continue training from the day-1 checkpoint on the events after
   it, evaluate, export (the export reports the embedding drift against day 1's);
4. optionally retrain from scratch on the extended store and evaluate that model, for the
   continue-against-retrain comparison (afterwards the continued model is again the
   latest one, so a later ``clickgraph train --continue`` carries on from it);
5. print the summary table and write the report (:mod:`clickgraph.app.report`) with
   ``pipeline.json`` (every result and stage timing) to ``paths.report``.

The Spark stages share one session (:func:`spark_jobs.session.get_spark`). It stays up
while Ray trains: at the default size this process tree (driver JVM and Ray included)
peaked at 9.1 GiB, during training, on the 24 GiB development VM (docs/pipeline.md), so
stopping and restarting Spark around training would buy nothing. Each stage record
carries ``peak_rss_mb`` to check that at other sizes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from clickgraph import __version__
from clickgraph.app.spark_progress import SparkProgress, TimedLog
from clickgraph.app.stage_logs import StageLogs
from clickgraph.app.tracking import PipelineRuns, Tracker, ui_command
from clickgraph.core import fs
from clickgraph.core.config import Config, replace
from clickgraph.core.errors import ClickgraphError
from clickgraph.core.progress import BackgroundTicks

# Retraining from scratch on the extended store repeats the two longest stages (train and
# evaluate). Measured on the 2-core development VM at the default size (docs/pipeline.md),
# the pipeline without it already takes about 15 minutes there, so it is off by default
# (--retrain turns it on).
RETRAIN_BY_DEFAULT = False

# Stage folders whose earlier contents would change this run's results: a graph store
# that already holds the last day (the incremental step would add nothing), checkpoints
# and exports an earlier run left (drift would be measured against them).
STAGE_FOLDERS = ("graph", "partitions", "train", "eval", "embeddings")

# Distributions whose versions the report records.
VERSIONED = ("torch", "torch-geometric", "pyspark", "ray", "numpy", "pandas", "pyarrow",
             "scikit-learn", "pymetis", "matplotlib")


class PipelineError(ClickgraphError, RuntimeError):
    """A stage of the pipeline failed, or the pipeline cannot start; names the cause."""


def plan(retrain: bool) -> list[tuple[str, str | None]]:
    """The ``(stage, run)`` steps of a pipeline, in order.

    Runs: ``day1`` (first days), ``day2`` (the added day's data stages), ``continue`` and
    ``retrain`` (the model runs on the extended store).
    """
    steps: list[tuple[str, str | None]] = [
        ("generate", None), ("build-graph", "day1"), ("partition", "day1"), ("train", "day1"),
        ("evaluate", "day1"), ("export", "day1"),
        ("build-graph", "day2"), ("partition", "day2"), ("train", "continue"),
        ("evaluate", "continue"), ("export", "continue")]
    if retrain:
        steps += [("train", "retrain"), ("evaluate", "retrain")]
    return [*steps, ("report", None)]


def check_days(cfg: Config) -> None:
    """Refuse a config whose first days leave no training window (before any work).

    Raises:
        PipelineError: ``generate.num_days - 1`` days (the store before the added day) are
            not more than ``train.val_days + train.test_days``.
    """
    first = cfg.generate.num_days - 1
    need = cfg.train.val_days + cfg.train.test_days + 1
    if first < need:
        raise PipelineError(
            f"generate.num_days={cfg.generate.num_days} leaves {first} day(s) before the added day; "
            f"training needs at least train.val_days + train.test_days + 1 = {need} "
            f"(set generate.num_days >= {need + 1})")


def existing_outputs(cfg: Config) -> list[str]:
    """URLs of :data:`STAGE_FOLDERS` that hold something from an earlier run."""
    found = []
    for stage in STAGE_FOLDERS:
        url = cfg.paths.stage(stage)
        filesystem, path = fs.filesystem(url)
        if filesystem.exists(path) and (not filesystem.isdir(path) or filesystem.ls(path)):
            found.append(url)
    return found


def versions() -> dict[str, str]:
    """Versions of Python, clickgraph and the main libraries (``not installed`` if absent)."""
    from importlib import metadata

    out = {"python": platform.python_version(), "clickgraph": __version__}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class PeakMemory(BackgroundTicks):
    """Samples the resident memory of this process and all its children (the Spark JVM,
    Ray's processes) in a background thread; ``peak_mb`` is the highest sum seen, and
    :meth:`by_role` each kind of process's largest single peak (:func:`process_role`).
    With ``root_pid`` it watches that process's tree instead (``benchmarks/scale.py`` watches
    each stage's command)."""

    def __init__(self, interval_s: float = 0.5, root_pid: int | None = None):
        super().__init__(interval_s, "peak-memory")
        self.peak_mb = 0.0
        self.root_pid = root_pid
        self._peaks: dict[tuple[int, float], tuple[str, float]] = {}

    @staticmethod
    def tree_rss_mb(root_pid: int | None = None) -> float:
        return sum(rss for _, rss in PeakMemory._tree(root_pid)) / 2**20

    @staticmethod
    def _tree(root_pid: int | None) -> list[tuple[Any, int]]:
        import psutil

        found = []
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(root_pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    found.append((proc, proc.memory_info().rss))
        return found

    def tick(self) -> None:
        import psutil

        tree, me = self._tree(self.root_pid), self.root_pid or os.getpid()
        self.peak_mb = max(self.peak_mb, sum(rss for _, rss in tree) / 2**20)
        for proc, rss in tree:
            with contextlib.suppress(psutil.Error):
                # classified again at every tick: a process changes what it is (Spark's
                # launch script execs the JVM, an idle Ray worker becomes a train worker)
                key = (proc.pid, proc.create_time())
                _, peak = self._peaks.get(key, ("", 0.0))
                self._peaks[key] = (process_role(proc, me), max(peak, rss / 2**20))

    def by_role(self) -> dict[str, dict[str, float]]:
        """``{role: {"largest_mb": the largest process's peak, "processes": count}}``."""
        roles: dict[str, dict[str, float]] = {}
        for role, peak in self._peaks.values():
            entry = roles.setdefault(role, {"largest_mb": 0.0, "processes": 0})
            entry["largest_mb"] = round(max(entry["largest_mb"], peak), 1)
            entry["processes"] += 1
        return dict(sorted(roles.items()))

    def figures(self) -> dict[str, Any]:
        """What a stage record carries: ``peak_rss_mb`` (the tree's sum) and
        ``peak_rss_mb_by_process`` (:meth:`by_role`)."""
        return {"peak_rss_mb": round(self.peak_mb, 1), "peak_rss_mb_by_process": self.by_role()}

    def __enter__(self) -> PeakMemory:
        self._peaks = {}
        self.peak_mb = 0.0
        self.tick()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.tick()


def process_role(proc: Any, driver_pid: int) -> str:
    """What a process of the pipeline's tree is: ``driver`` (the tree's root),
    ``spark_jvm`` (the local Spark driver with its executors), ``ray_train_worker`` (a
    training, evaluation or export worker), ``ray_actor`` (another Ray worker process: Ray
    Train's controller and helpers, idle workers), ``ray_system`` (Ray's own servers), or
    ``other``."""
    if proc.pid == driver_pid:
        return "driver"
    name, cmdline = proc.name(), " ".join(proc.cmdline())
    if name == "java" or "org.apache.spark" in cmdline:
        return "spark_jvm"
    title = cmdline if cmdline.startswith("ray::") else name
    if title.startswith("ray::RayTrainWorker"):
        return "ray_train_worker"
    if title.startswith("ray::") or "default_worker.py" in cmdline:
        return "ray_actor"
    return "ray_system" if re.search(r"\bray\b|raylet|gcs_server", cmdline) else "other"


# Where each stage's result lands in the results (stage -> section, keyed by run but for generate)
RESULT_SECTIONS = {"generate": "generate", "build-graph": "graph", "partition": "partition",
                   "train": "train", "evaluate": "evaluate", "export": "export"}


def pipeline_day(stage: str, run: str | None) -> str:
    """The pipeline day a step belongs to: ``day1`` (generate and the first days' stages) or
    ``day2`` (the added day's, the continued and retrained models, the report)."""
    return "day1" if run == "day1" or stage == "generate" else "day2"


class Progress:
    """Numbered stage lines with elapsed time, and the stage records of the results.

    With ``logs``, each step's library output goes to its own file, named in its record.
    With ``tracking``, each step is an MLflow run nested in its pipeline day's
    (:mod:`clickgraph.app.tracking`), logged from ``results`` when the step ends.
    """

    def __init__(self, steps: list[tuple[str, str | None]], records: list[dict[str, Any]],
                 log: Callable[[str], None], logs: StageLogs | None = None,
                 tracking: PipelineRuns | None = None, results: dict[str, Any] | None = None):
        self.steps, self.records, self.logs = steps, records, logs
        self.log = log if isinstance(log, TimedLog) else TimedLog(log)
        self.tracking, self.results = tracking, results
        self.started = time.perf_counter()

    def _result(self, stage: str, run: str | None) -> dict[str, Any] | None:
        if self.results is None or stage not in RESULT_SECTIONS:
            return None
        section = self.results.get(RESULT_SECTIONS[stage])
        return section if stage == "generate" else (section or {}).get(run)

    def elapsed(self) -> str:
        seconds = int(time.perf_counter() - self.started)
        return f"{seconds // 60:d}:{seconds % 60:02d}"

    @contextlib.contextmanager
    def stage(self, stage: str, run: str | None, spark: LazySpark | None = None
              ) -> Iterator[dict[str, Any]]:
        """Time one step; yields its record (the body may add to it). With ``spark``, a
        step of Spark jobs: its running stages get a progress line every
        ``resources.progress_every_s`` seconds of silence (:class:`SparkProgress`).

        A failing body marks the record ``failed`` with the error and re-raises.
        """
        step = self.steps.index((stage, run)) + 1
        name = stage + (f" ({run})" if run else "")
        record: dict[str, Any] = {"step": step, "of": len(self.steps), "stage": stage, "run": run,
                                  "status": "running"}
        self.records.append(record)
        if self.logs is not None:
            record["log"] = str(self.logs.switch(f"{step:02d}-{stage}" + (f"-{run}" if run else "")))
        self.log(f"pipeline [{step}/{len(self.steps)}] {name} ... (elapsed {self.elapsed()})")
        tracked = self.tracking.start_stage(pipeline_day(stage, run), stage, run) \
            if self.tracking else None
        t0 = time.perf_counter()
        spark_progress = (SparkProgress(spark.get(), name, self.log, spark.cfg.resources.progress_every_s)
                          if spark is not None else contextlib.nullcontext())
        with PeakMemory() as memory, spark_progress:
            try:
                yield record
            except BaseException as error:
                record.update(status="failed", error=f"{type(error).__name__}: {error}",
                              seconds=round(time.perf_counter() - t0, 2))
                if self.tracking:
                    self.tracking.end_stage(tracked, stage, record, None)
                raise
            finally:
                record["seconds"] = round(time.perf_counter() - t0, 2)
                # a failed stage keeps what it held too (a stage that ran out of memory)
                record.update(memory.figures())
        record.update(memory.figures())  # with the last sample, taken on leaving
        record["status"] = "ok"
        if self.tracking:
            self.tracking.end_stage(tracked, stage, record, self._result(stage, run))
        self.log(f"pipeline [{step}/{len(self.steps)}] {name} done in {record['seconds']:.1f} s "
                 f"(elapsed {self.elapsed()}, peak memory {memory.peak_mb / 1024:.1f} GiB)")


# ------------------------------------------------------------------ result excerpts


def _logs_result(manifest: dict[str, Any]) -> dict[str, Any]:
    keys = ("events_total", "event_counts", "entity_counts", "days", "time_range")
    return {k: manifest.get(k) for k in keys}


def _graph_result(manifest: dict[str, Any], built_days: list[str]) -> dict[str, Any]:
    keys = ("node_counts", "edge_counts", "rows_read", "rows_kept", "rows_quarantined",
            "quarantine_by_reason", "days", "created_at", "build_seconds")
    return {**{k: manifest.get(k) for k in keys}, "built_days": built_days}


def _partition_result(manifest: dict[str, Any]) -> dict[str, Any]:
    keys = ("method", "num_parts", "quality", "placement", "baseline_edge_cut", "num_pairs",
            "num_nodes", "wall_s", "created_at")
    return {k: manifest.get(k) for k in keys}


# ------------------------------------------------------------------ the pipeline


def _train(cfg: Config, continue_run: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """One training run: in this process for one worker (except --continue, which needs
    the Ray trainer's checkpoint handling), else Ray Train with one worker per shard."""
    if cfg.resources.workers == 1 and not continue_run:
        from trainer.local import train_single

        return train_single(cfg, log=log)
    from trainer.ray_launch import train_distributed

    return train_distributed(cfg, continue_run=continue_run, log=log)


def _evaluate(cfg: Config, checkpoint: str, out_url: str, log: Callable[[str], None]
              ) -> dict[str, Any]:
    """One evaluation on the test window: in this process for one worker (the GNN and the
    tree baselines), else on the training's workers, one per shard (:func:`trainer.
    dist_inference.evaluate_distributed`: no process holds the whole graph; the trees'
    features from a Spark job, :func:`clickgraph.app.cli.evaluate.spark_features`)."""
    if cfg.resources.workers == 1:
        from trainer.evaluate import run_evaluation

        return run_evaluation(cfg, checkpoint=checkpoint, out_url=out_url, log=log)
    from clickgraph.app.cli.evaluate import spark_features
    from trainer.dist_inference import evaluate_distributed

    # the trees' features come from a Spark job in this process (the pipeline's session)
    return evaluate_distributed(cfg, cfg.resources.workers,
                                lambda *query: spark_features(cfg, *query),
                                checkpoint=checkpoint, out_url=out_url, log=log)


def _export(cfg: Config, checkpoint: str, log: Callable[[str], None]) -> dict[str, Any]:
    """One export as of the end of the store's last day: in this process for one worker,
    else on the training's workers, one per shard (:func:`trainer.dist_inference.
    export_distributed`: no process holds the whole graph); the manifest either way."""
    if cfg.resources.workers == 1:
        from trainer.export import run_export

        return run_export(cfg, checkpoint=checkpoint, log=log)
    from trainer.dist_inference import export_distributed

    return export_distributed(cfg, cfg.resources.workers, checkpoint=checkpoint, log=log)


def run_pipeline(cfg: Config, log: Callable[[str], None] = print,
                 retrain_baseline: bool = RETRAIN_BY_DEFAULT, fresh: bool = False,
                 stage_logs: bool = True) -> dict[str, Any]:
    """Run every stage, add one more day, write the report; returns the results.

    Args:
        cfg: Validated config. ``partition.num_parts`` is set to ``resources.workers``.
        log: Progress printer (every stage's own lines go through it too).
        retrain_baseline: Also retrain from scratch on the extended store and evaluate it,
            for the continue-against-retrain comparison.
        fresh: Delete earlier outputs in the stage folders (:data:`STAGE_FOLDERS`) first.
            Without it the pipeline refuses to start when they hold anything.
        stage_logs: Send Spark's and Ray's own output (warnings, notices, Ray's reports and
            actor tracebacks) to one file per step in :func:`log_folder` instead of the
            terminal (:mod:`clickgraph.app.stage_logs`); ``log`` lines stay on the terminal.

    Returns:
        The results as described in :func:`clickgraph.app.report.write_report`, also written
        to ``<paths.report>/pipeline.json``; ``report`` is the URL of ``index.html``.

    Raises:
        PipelineError: Earlier outputs without ``fresh``, too few days, or a stage failed
            (then the report of what finished is still written).
    """
    check_days(cfg)
    cfg = replace(cfg, "partition", num_parts=cfg.resources.workers)
    leftovers = existing_outputs(cfg)
    if leftovers and not fresh:
        raise PipelineError(
            "these stage folders hold outputs of an earlier run: " + ", ".join(leftovers)
            + ". The pipeline builds the first days from scratch and adds the last one "
            "incrementally, so stale stores, checkpoints and exports would change its results; "
            "rerun with --fresh to delete them, or set paths.root to an empty folder")
    for url in leftovers:
        log(f"pipeline: --fresh: removing {url}")
        fs.remove(url)
    if not stage_logs:
        return _run(cfg, log, retrain_baseline, None)
    folder = log_folder(cfg)
    with StageLogs(folder) as logs:
        results = _run(cfg, log, retrain_baseline, logs)
    log(f"pipeline: Spark's and Ray's own output, one file per step: {folder}/"
        f" ({', '.join(p.name for p in logs.written)})")
    return results


def log_folder(cfg: Config) -> str:
    """Local folder of the per-step library logs: ``<paths.root>/pipeline-logs``, or a new
    temporary folder when ``paths.root`` is not on the local file system."""
    if fs.is_local(cfg.paths.root):
        return fs.join(cfg.paths.root, "pipeline-logs").removeprefix("file://")
    import tempfile

    return tempfile.mkdtemp(prefix="clickgraph-pipeline-logs-")


def _run(cfg: Config, log: Callable[[str], None], retrain_baseline: bool,
         logs: StageLogs | None) -> dict[str, Any]:
    """:func:`run_pipeline` after its checks."""
    from clickgraph.app import report

    steps = plan(retrain_baseline)
    log = TimedLog(log)   # the Spark steps' progress lines fill its silences only
    started_at = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "format_version": 1,
        "started_at": started_at.isoformat(timespec="seconds"),
        "workers": cfg.resources.workers,
        "config": {"hash": cfg.section_hash(), "source": cfg.source, "resolved": cfg.to_dict()},
        "versions": versions(),
        "stages": [], "days": {}, "generate": {}, "graph": {}, "partition": {}, "train": {},
        "evaluate": {}, "export": {},
        "retrain": {"enabled": retrain_baseline,
                    "note": "retrained from scratch on the extended store for the comparison"
                    if retrain_baseline else "not retrained from scratch (off by default: "
                    "it repeats the training and evaluation stages; --retrain turns it on)"},
    }
    tracker = Tracker(cfg, log)
    tracking = PipelineRuns(tracker, results["started_at"])
    progress = Progress(steps, results["stages"], log, logs, tracking, results)
    report_url = cfg.paths.stage("report")
    log(f"pipeline: {len(steps)} steps, {cfg.resources.workers} training worker(s), "
        f"{cfg.generate.num_days} days ({cfg.generate.num_users:,} users); report -> {report_url}")
    ray_was_running = _ray_initialized()
    spark = LazySpark(cfg)
    try:
        _stages(cfg, spark, progress, results, log, retrain_baseline)
    except BaseException as error:
        tracking.close(ok=False)
        results["total_seconds"] = round(time.perf_counter() - t0, 2)
        results["tracking"] = tracker.figures(results["total_seconds"])
        results["failed"] = f"{type(error).__name__}: {error}"
        failed = next((r for r in results["stages"] if r["status"] == "failed"), None)
        try:
            results["report"] = report.write_report(results, report_url)
            log(f"pipeline: the report of what finished is in {results['report']}")
        except Exception as report_error:  # the stage's error is the one to raise
            log(f"pipeline: could not write the partial report either: {report_error}")
        if failed is None or not isinstance(error, Exception):
            raise
        name = failed["stage"] + (f" ({failed['run']})" if failed["run"] else "")
        where = f" (Spark's and Ray's output of the step: {failed['log']})" if "log" in failed else ""
        raise PipelineError(f"stage {failed['step']}/{failed['of']} {name} failed: "
                            f"{failed['error']}{where}") from error
    finally:
        spark.stop()
        if not ray_was_running:
            _shutdown_ray()

    with progress.stage("report", None):
        results["total_seconds"] = round(time.perf_counter() - t0, 2)
        results["report"] = report.write_report(results, report_url)
    tracker.artifacts(tracking.parent("day2"), report_files(report_url), "report")
    # The page shows the report step as in progress; pipeline.json gets its final time.
    results["total_seconds"] = round(time.perf_counter() - t0, 2)
    # what tracking cost (the upload of pipeline.json and the runs' ends below come after
    # the figure: the terminal line gives the final one)
    results["tracking"] = tracker.figures(results["total_seconds"])
    fs.write_json(fs.join(report_url, "pipeline.json"), report.json_safe(results))
    tracker.artifacts(tracking.parent("day2"), [fs.join(report_url, "pipeline.json")], "report")
    tracking.close(ok=True)
    log("pipeline summary\n" + report.format_summary(results))
    log(f"pipeline: report {results['report']}; every figure in "
        f"{fs.join(report_url, 'pipeline.json')}")
    if tracker.on:
        cost = tracker.figures(time.perf_counter() - t0)
        log(f"pipeline: MLflow runs (experiment {cfg.tracking.experiment!r}, one per day, nested "
            f"per stage) in {tracker.uri}; tracking took {cost['seconds']:.1f} s "
            f"({cost['share']:.1%} of the pipeline); to browse them: " + ui_command(tracker.uri))
    return results


def report_files(report_url: str) -> list[str]:
    """The report's page and pictures (``index.html``, ``*.png``)."""
    filesystem, path = fs.filesystem(report_url)
    pictures = sorted(p.rsplit("/", 1)[-1] for p in filesystem.glob(f"{path}/*.png"))
    return [fs.join(report_url, name) for name in ["index.html", *pictures]]


class LazySpark:
    """The pipeline's one SparkSession, started on first use and stopped at the end.

    A session that was already active in this process (``spark-submit``, a notebook) is
    used and left running.
    """

    def __init__(self, cfg: Config):
        self.cfg = cfg   # the whole config: spark.* for the session, resources.* for progress
        self.session = None
        self.owned = False

    def get(self):
        if self.session is None:
            from pyspark.sql import SparkSession

            from spark_jobs.session import get_spark

            self.owned = SparkSession.getActiveSession() is None
            self.session = get_spark(self.cfg.spark, "pipeline")
        return self.session

    def stop(self) -> None:
        if self.session is not None and self.owned:
            self.session.stop()
        self.session = None


def _ray_initialized() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def _shutdown_ray() -> None:
    with contextlib.suppress(ImportError):
        import ray

        if ray.is_initialized():
            ray.shutdown()


def _stages(cfg: Config, spark: LazySpark, progress: Progress, results: dict[str, Any],
            log: Callable[[str], None], retrain: bool) -> None:
    """Every step before the report, filling ``results``."""
    from spark_jobs import build_graph, generate_logs, partition
    from trainer import checkpoint as ckpt

    eval_root = cfg.paths.stage("eval")
    # ---- the first days
    with progress.stage("generate", None, spark):
        logs = generate_logs.run(spark.get(), cfg, log=log)
        results["generate"] = _logs_result(logs)
    days = list(logs["days"])
    first, added = days[:-1], days[-1]
    results["days"] = {"first": first, "added": added}
    with progress.stage("build-graph", "day1", spark):
        results["graph"]["day1"] = _graph_result(build_graph.run(spark.get(), cfg, days=first, log=log),
                                                 first)
    with progress.stage("partition", "day1", spark):
        results["partition"]["day1"] = _partition_result(partition.run(spark.get(), cfg, log=log))
    with progress.stage("train", "day1"):
        results["train"]["day1"] = _train(cfg, continue_run=False, log=log)
    day1_checkpoint = results["train"]["day1"]["checkpoint"]
    with progress.stage("evaluate", "day1"):
        results["evaluate"]["day1"] = _evaluate(cfg, day1_checkpoint,
                                                fs.join(eval_root, first[-1]), log)
    with progress.stage("export", "day1"):
        results["export"]["day1"] = _export(cfg, day1_checkpoint, log)

    # ---- one more day
    with progress.stage("build-graph", "day2", spark):
        results["graph"]["day2"] = _graph_result(build_graph.run(spark.get(), cfg, days=[added], log=log),
                                                 [added])
    with progress.stage("partition", "day2", spark):
        results["partition"]["day2"] = _partition_result(
            partition.run(spark.get(), cfg, place_new_nodes=True, log=log))
    with progress.stage("train", "continue"):
        results["train"]["continue"] = _train(cfg, continue_run=True, log=log)
    continued = results["train"]["continue"]["checkpoint"]
    with progress.stage("evaluate", "continue"):
        results["evaluate"]["continue"] = _evaluate(cfg, continued, fs.join(eval_root, added),
                                                    log)
    with progress.stage("export", "continue"):
        results["export"]["continue"] = _export(cfg, continued, log)

    if not retrain:
        return
    try:
        with progress.stage("train", "retrain"):
            results["train"]["retrain"] = _train(cfg, continue_run=False, log=log)
    finally:
        # the continued model stays the one a later --continue carries on from
        ckpt.write_latest(cfg.paths.stage("train"), continued, ckpt.read_meta(continued))
    with progress.stage("evaluate", "retrain"):
        results["evaluate"]["retrain"] = _evaluate(
            cfg, results["train"]["retrain"]["checkpoint"],
            fs.join(eval_root, f"{added}-retrain"), log)
