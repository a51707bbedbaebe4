"""MLflow tracking, read back from a real local MLflow store through ``MlflowClient``.

The stages run for real on the session's tiny trained store (``trained_run``); the
tracker is pointed at a file store in the test's folder. A tracker that is down (nothing
listens on the port) must cost a warning and a few seconds, never the stage.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from clickgraph.app import pipeline, tracking
from clickgraph.app.cli import main
from clickgraph.core import fs
from clickgraph.core.config import ConfigError, load_config, replace
from tests.conftest import TINY_TRAIN, FakeSparkSession, tiny_overrides

mlflow = pytest.importorskip("mlflow")

quiet = lambda *_: None


def client_of(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs_of(uri: str, experiment: str = "clickgraph") -> dict[str, object]:
    """Run name -> run, of every run in the experiment."""
    client = client_of(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {uri}"
    runs = client.search_runs([found.experiment_id], max_results=1000)
    return {run.info.run_name: run for run in runs}


def artifact_names(uri: str, run_id: str, path: str | None = None) -> set[str]:
    return {Path(a.path).name for a in client_of(uri).list_artifacts(run_id, path)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ config and pure parts


def test_tracking_is_on_by_default_with_a_file_store_under_the_root(tmp_path):
    cfg = load_config(None, [f"paths.root={tmp_path}/runs"])
    assert cfg.tracking.enabled and cfg.tracking.experiment == "clickgraph"
    assert tracking.default_uri(cfg) == f"file://{tmp_path}/runs/mlruns"
    assert tracking.default_uri(replace(cfg, "tracking", uri="http://mlflow:5000")) == "http://mlflow:5000"
    with pytest.raises(ValueError, match="paths.root 's3a://b/r' is not local"):
        tracking.default_uri(load_config(None, ["paths.root=s3a://b/r"]))
    with pytest.raises(ConfigError, match="tracking.experiment"):
        load_config(None, ["tracking.experiment= "])
    with pytest.raises(ConfigError, match="unknown key 'tracking.url'"):
        load_config(None, ["tracking.url=http://x"])


def test_flattened_config_names_every_key_once():
    cfg = load_config(None)
    params = tracking.flatten(cfg.to_dict())
    assert params["train.model.hidden_dim"] == "64"
    assert params["train.fanouts"] == "[10, 5]"
    assert params["ray.address"] == "null"
    assert params["graph.input.events.columns.timestamp"] == "ts_ms"
    assert params["spark.extra_conf"] == "{}"
    assert all(len(v) <= 6000 for v in params.values())


def test_disabled_tracking_writes_nothing(tmp_path):
    cfg = load_config(None, [f"paths.root={tmp_path}", "tracking.enabled=false"])
    result = tracking.tracked(cfg, "generate", lambda: {"events_total": 5}, quiet)
    assert result == {"events_total": 5}
    assert not (tmp_path / "mlruns").exists()


# ------------------------------------------------------------------ real stages


@pytest.mark.spark
def test_an_evaluate_command_is_one_run_with_every_auc_params_and_artifacts(trained_run, tmp_path, capsys):
    cfg, _ = trained_run
    uri = f"file://{tmp_path}/mlruns"
    overrides = tiny_overrides(cfg.paths.root) + TINY_TRAIN + [f"tracking.uri={uri}"]
    out = tmp_path / "eval"
    assert main(["evaluate", *[x for o in overrides for x in ("--set", o)], "--out", str(out)]) == 0
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert "WARNING" not in capsys.readouterr().out

    run = runs_of(uri)["evaluate"]
    assert run.info.status == "FINISHED"
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    for model in ("gnn", "baseline", "baseline_plus_embeddings"):
        for kind in ("auc", "auc_cold", "auc_warm"):
            if evaluation[kind][model] is not None:
                assert metrics[f"{kind}.{model}"] == pytest.approx(evaluation[kind][model])
    history = client_of(uri).get_metric_history(run.info.run_id, "per_day.auc.gnn")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [d["auc"]["gnn"] for d in evaluation["per_day"]])
    assert params["train.model.hidden_dim"] == "16" and params["tracking.uri"] == uri
    assert params["paths.root"] == str(cfg.paths.root)
    assert tags["clickgraph.stage"] == "evaluate"
    assert tags["clickgraph.graph_version"] == evaluation["graph"]["graph_created_at"]
    assert tags["clickgraph.test_days"] == ",".join(evaluation["test_days"])
    assert tags.get("mlflow.source.git.commit") == tracking.git_commit()
    assert artifact_names(uri, run.info.run_id) == {"evaluation.json"}


@pytest.mark.spark
def test_a_training_run_logs_epochs_steps_totals_and_registers_its_checkpoint(trained_run, tmp_path):
    """The trained run's own metrics.json, as train_single returned it, through the
    tracker; the checkpoint becomes a version of the registry model named in the config."""
    cfg, _ = trained_run
    latest = fs.read_json(fs.join(cfg.paths.stage("train"), "latest_checkpoint.json"))
    run_folder = Path(latest["checkpoint"].removeprefix("file://")).parent
    metrics = json.loads((run_folder / "metrics.json").read_text())
    metrics.update(out=str(run_folder), checkpoint=latest["checkpoint"])
    uri = f"file://{tmp_path}/mlruns"
    tracked_cfg = replace(cfg, "tracking", uri=uri, registered_model="clickgraph-click-model")
    assert tracking.tracked(tracked_cfg, "train", lambda: metrics, quiet) is metrics

    run = runs_of(uri)["train"]
    client = client_of(uri)
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in loss] == [(e["epoch"], pytest.approx(e["loss"]))
                                                for e in metrics["epochs"]]
    steps = client.get_metric_history(run.info.run_id, "step_loss")
    assert len(metrics["loss_per_step"]) > 1
    assert sorted(m.step for m in steps) == list(range(1, len(metrics["loss_per_step"]) + 1))
    data = run.data
    assert data.metrics["val_auc"] == pytest.approx(metrics["val_auc"])
    assert data.metrics["events_per_s"] == pytest.approx(metrics["events_per_s"])
    assert data.tags["clickgraph.checkpoint"] == latest["checkpoint"]
    assert data.tags["clickgraph.graph_version"] == metrics["graph"]["graph_created_at"]
    assert artifact_names(uri, run.info.run_id) == {"metrics.json", "_config.yaml"}
    versions = client.search_model_versions("name='clickgraph-click-model'")
    assert [(v.source, v.run_id) for v in versions] == [(latest["checkpoint"], run.info.run_id)]
    assert data.tags["clickgraph.model_version"] == "clickgraph-click-model/1"


@pytest.mark.spark
def test_an_export_run_has_drift_coverage_and_video_share(trained_run, tmp_path):
    cfg, days = trained_run
    from trainer.export import run_export

    uri = f"file://{tmp_path}/mlruns"
    tracked_cfg = replace(cfg, "tracking", uri=uri)
    root = str(tmp_path / "embeddings")
    run_export(cfg, cutoff=days[-2], out_url=root, log=quiet)   # the version drift is against
    manifest = tracking.tracked(tracked_cfg, "export", lambda: run_export(
        cfg, out_url=root, log=quiet), quiet, out_url=root)
    run = runs_of(uri)["export"]
    metrics = run.data.metrics
    controls = manifest["recommendations"]
    for key in ("coverage", "video_share_topk", "video_share_catalogue"):
        assert metrics[f"recommendations.{key}"] == pytest.approx(controls[key])
    for node_type in ("user", "content"):
        assert metrics[f"drift.{node_type}.mean_cosine"] == pytest.approx(
            manifest["drift"][node_type]["mean_cosine"])
    assert run.data.tags["clickgraph.export_cutoff"] == manifest["cutoff"]["iso"]
    assert artifact_names(uri, run.info.run_id) == {fs.MANIFEST_NAME}


# ------------------------------------------------------------------ a tracker that is down


def test_a_tracker_that_is_down_costs_a_warning_never_the_stage(tmp_path):
    cfg = load_config(None, [f"paths.root={tmp_path}",
                             f"tracking.uri=http://127.0.0.1:{free_port()}"])
    lines: list[str] = []
    calls = []
    started = time.perf_counter()
    result = tracking.tracked(cfg, "generate", lambda: calls.append(1) or {"events_total": 3},
                              lines.append)
    elapsed = time.perf_counter() - started
    assert result == {"events_total": 3} and calls == [1]
    warnings = [line for line in lines if line.startswith("tracking: WARNING")]
    assert len(warnings) == 1, lines
    assert f"MLflow at {cfg.tracking.uri} failed" in warnings[0]
    assert f"after {tracking.ATTEMPTS} tries" in warnings[0]
    assert elapsed < 30, elapsed   # tried a few times, then off: not MLflow's minutes of retries


def test_a_stage_that_fails_is_a_failed_run_and_still_raises(tmp_path):
    cfg = load_config(None, [f"paths.root={tmp_path}"])

    def broken():
        raise RuntimeError("the stage broke")

    with pytest.raises(RuntimeError, match="the stage broke"):
        tracking.tracked(cfg, "evaluate", broken, quiet)
    assert runs_of(f"file://{tmp_path}/mlruns")["evaluate"].info.status == "FAILED"


def test_pipeline_days_are_parent_runs_with_a_nested_run_per_stage(tmp_path, monkeypatch):
    """Fake Spark stages as in test_pipeline: generate succeeds, build-graph fails."""
    from pyspark.sql import SparkSession

    from spark_jobs import build_graph, generate_logs, session

    class FakeSpark(FakeSparkSession):
        pass

    days = ["2026-03-02", "2026-03-03", "2026-03-04", "2026-03-05", "2026-03-06"]

    def failing_build(spark, cfg, days=None, log=print):
        raise build_graph.GraphBuildError(f"no events for day {days[0]}")

    monkeypatch.setattr(SparkSession, "getActiveSession", staticmethod(lambda: None))
    monkeypatch.setattr(session, "get_spark", lambda cfg, suffix="": FakeSpark())
    monkeypatch.setattr(generate_logs, "run", lambda spark, cfg, log=print: {
        "events_total": 1234, "event_counts": {"impression": 1000, "click": 234}, "days": days})
    monkeypatch.setattr(build_graph, "run", failing_build)
    cfg = load_config(None, tiny_overrides(tmp_path) + ["generate.num_days=5", "train.val_days=1",
                                                        "train.test_days=1"])
    with pytest.raises(pipeline.PipelineError, match="build-graph"):
        pipeline.run_pipeline(cfg, log=quiet, stage_logs=False)

    runs = runs_of(f"file://{tmp_path}/mlruns")
    assert set(runs) == {"pipeline day1", "generate", "build-graph (day1)"}
    parent = runs["pipeline day1"]
    assert parent.info.status == "FAILED"
    for name, status in (("generate", "FINISHED"), ("build-graph (day1)", "FAILED")):
        assert runs[name].data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert runs[name].info.status == status
        assert runs[name].data.tags["clickgraph.pipeline"] == parent.data.tags["clickgraph.pipeline"]
    assert runs["generate"].data.metrics["events_total"] == 1234
    assert runs["generate"].data.metrics["events.click"] == 234
    assert "seconds" in runs["generate"].data.metrics
    assert "no events for day 2026-03-02" in runs["build-graph (day1)"].data.tags["clickgraph.error"]
    assert runs["generate"].data.params["generate.num_days"] == "5"
    # what tracking cost, counted inside the tracker's calls, beside the pipeline's wall time
    cost = json.loads((tmp_path / "report" / "pipeline.json").read_text())["tracking"]
    total = json.loads((tmp_path / "report" / "pipeline.json").read_text())["total_seconds"]
    assert 0 < cost["seconds"] <= total, cost
    # both figures are rounded to 0.01 s: on this sub-second fake run that is the tolerance
    assert cost["share"] == pytest.approx(cost["seconds"] / total, abs=0.01 / total + 1e-3)


def test_tracker_seconds_count_its_own_calls_only(tmp_path):
    cfg = load_config(None, [f"paths.root={tmp_path}"])
    tracker = tracking.Tracker(cfg, quiet)
    run_id = tracker.start("timed")
    after_start = tracker.seconds
    assert after_start > 0
    time.sleep(0.3)                                   # the stage's time, not tracking's
    assert tracker.seconds == after_start
    tracker.log_metrics(run_id, [("loss", 0.5, 1)])
    tracker.finish(run_id)
    assert tracker.seconds > after_start
    assert tracker.figures(10 * tracker.seconds)["share"] == pytest.approx(0.1, abs=1e-3)
    off = tracking.Tracker(load_config(None, [f"paths.root={tmp_path}", "tracking.enabled=false"]))
    assert off.start("nothing") is None and off.figures(5.0) == {
        "enabled": False, "uri": None, "experiment": "clickgraph", "seconds": 0.0, "share": 0.0}


def test_metric_names_never_nest_one_in_another():
    """The file store keeps ``a/b`` in a folder ``a``: beside a metric ``a`` it fails."""
    from clickgraph.app.tracking import _key

    assert _key("partition.quality.metis.balance.nodes/user") == \
        "partition.quality.metis.balance.nodes.user"
