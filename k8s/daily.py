#!/usr/bin/env python
"""The daily incremental pipeline, run by the CronJob in cronjob-daily.yaml.

Creates, one after the other, and waits for each to succeed:

1. the SparkApplication of ``spark-build-graph.yaml`` with ``--day D`` (D = yesterday, UTC);
2. the SparkApplication of ``spark-partition.yaml`` with ``--place-new``;
3. the RayJob of ``rayjob-train.yaml`` with ``--continue``;
4. the Job of ``job-evaluate-export.yaml`` (``clickgraph evaluate``, then ``clickgraph
   export``) with ``--cutoff D+1`` added to export: the embeddings as of the end of day D,
   whatever days the graph store holds after it.

Each object is named after the day (``clickgraph-build-graph-20260325``), so a rerun of the
same day finds it: a finished step is skipped, a running one is waited for, a failed one is
deleted and created again. Talks to the Kubernetes API with the pod's service account
token (standard library only). ``--dry-run`` prints the objects instead.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SPARK_API = "/apis/sparkoperator.k8s.io/v1beta2/namespaces/{ns}/sparkapplications"
RAY_API = "/apis/ray.io/v1/namespaces/{ns}/rayjobs"
JOB_API = "/apis/batch/v1/namespaces/{ns}/jobs"

# (template file, API collection), in the order they run
STEPS = [
    ("spark-build-graph.yaml", SPARK_API),
    ("spark-partition.yaml", SPARK_API),
    ("rayjob-train.yaml", RAY_API),
    ("job-evaluate-export.yaml", JOB_API),
]
# Deleting a batch/v1 Job through the API orphans its pods unless told otherwise.
DELETE_OPTIONS = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}


def yesterday_utc(now: dt.datetime | None = None) -> str:
    """The UTC date before ``now`` (default: the current time) as YYYY-MM-DD."""
    now = now or dt.datetime.now(dt.UTC)
    return (now.astimezone(dt.UTC).date() - dt.timedelta(days=1)).isoformat()


def render(template: dict[str, Any], day: str, namespace: str, images: dict[str, str]) -> dict[str, Any]:
    """The object of one step for ``day``.

    Args:
        template: a SparkApplication, RayJob or Job as loaded from its manifest.
        day: YYYY-MM-DD, the day to add to the graph store.
        namespace: where to create it.
        images: template image -> image to use instead (from CLICKGRAPH_IMAGE_MAP).

    Returns:
        A new object named ``<template name>-<YYYYMMDD>``: build-graph gets ``--day day``,
        partition ``--place-new``, training ``--continue``, the Job's ``clickgraph export``
        container ``--cutoff <day + 1>`` (00:00 UTC after ``day``).
    """
    obj = copy.deepcopy(template)
    meta = obj["metadata"]
    meta["name"] = f"{meta['name']}-{day.replace('-', '')}"
    meta["namespace"] = namespace
    meta.setdefault("labels", {})["clickgraph/day"] = day
    spec = obj["spec"]
    if obj["kind"] == "SparkApplication":
        script = spec["mainApplicationFile"].rsplit("/", 1)[-1]
        extra = ["--day", day] if script == "build_graph.py" else ["--place-new"]
        spec["arguments"] = list(spec.get("arguments", [])) + extra
    elif obj["kind"] == "RayJob":
        spec["entrypoint"] = spec["entrypoint"] + " --continue"
    elif obj["kind"] == "Job":
        pod = spec["template"]["spec"]
        export = [c for c in pod.get("initContainers", []) + pod["containers"]
                  if c.get("command", [])[:2] == ["clickgraph", "export"]]
        if len(export) != 1:
            raise ValueError(f"daily: expected one 'clickgraph export' container in Job "
                             f"{meta['name']}, found {len(export)}")
        cutoff = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
        export[0]["args"] = list(export[0].get("args", [])) + ["--cutoff", cutoff]
    else:
        raise ValueError(f"daily: unexpected kind {obj['kind']!r} in a step template")
    _replace_images(obj, images)
    return obj


def _replace_images(node: Any, images: dict[str, str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str) and value in images:
                node[key] = images[value]
            else:
                _replace_images(value, images)
    elif isinstance(node, list):
        for item in node:
            _replace_images(item, images)


def step_state(obj: dict[str, Any]) -> str:
    """``succeeded``, ``failed`` or ``running`` from a SparkApplication's, RayJob's or Job's status.

    A Job counts from its terminal conditions only (``Complete`` or ``Failed`` with status
    ``True``); ``FailureTarget`` and ``SuccessCriteriaMet`` come while its pods still stop.
    """
    status = obj.get("status") or {}
    if obj["kind"] == "SparkApplication":
        state = (status.get("applicationState") or {}).get("state", "")
        if state == "COMPLETED":
            return "succeeded"
        if state in ("FAILED", "SUBMISSION_FAILED"):
            return "failed"
        return "running"
    if obj["kind"] == "Job":
        done = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
        if "Complete" in done:
            return "succeeded"
        if "Failed" in done:
            return "failed"
        return "running"
    job_status = status.get("jobStatus", "")
    if job_status == "SUCCEEDED":
        return "succeeded"
    if job_status in ("FAILED", "STOPPED") or status.get("jobDeploymentStatus") == "Failed":
        return "failed"
    return "running"


class KubeApi:
    """Minimal Kubernetes API client: in-cluster service account, JSON, no dependencies."""

    def __init__(self) -> None:
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        self.base = f"https://{host}:{port}"
        self.token = (SA_DIR / "token").read_text().strip()
        self.context = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
            "Accept": "application/json"})
        with urllib.request.urlopen(req, context=self.context, timeout=60) as resp:
            return json.loads(resp.read() or b"{}")


def run_step(api: KubeApi, collection: str, obj: dict[str, Any], timeout_s: float,
             poll_s: float = 30.0) -> None:
    """Create ``obj`` (or adopt the existing one of that name) and wait until it finishes.

    Raises:
        RuntimeError: the step failed or did not finish within ``timeout_s``.
    """
    name = obj["metadata"]["name"]
    item = f"{collection}/{name}"
    try:
        existing = api.request("GET", item)
    except urllib.error.HTTPError as err:
        if err.code != 404:
            raise
        existing = None
    if existing is not None and step_state(existing) == "failed":
        print(f"daily: {obj['kind']} {name} failed before; deleting it to run it again", flush=True)
        api.request("DELETE", item, DELETE_OPTIONS)
        while True:
            try:
                api.request("GET", item)
            except urllib.error.HTTPError as err:
                if err.code == 404:
                    break
                raise
            time.sleep(5)
        existing = None
    if existing is None:
        api.request("POST", collection, obj)
        print(f"daily: created {obj['kind']} {name}", flush=True)
    else:
        print(f"daily: {obj['kind']} {name} exists ({step_state(existing)}); waiting on it", flush=True)
    deadline = time.monotonic() + timeout_s
    while True:
        state = step_state(api.request("GET", item))
        if state == "succeeded":
            print(f"daily: {obj['kind']} {name} succeeded", flush=True)
            return
        if state == "failed":
            raise RuntimeError(f"{obj['kind']} {name} failed: kubectl describe {obj['kind'].lower()} {name}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{obj['kind']} {name} did not finish within {timeout_s / 3600:.1f} h")
        time.sleep(poll_s)


def parse_image_map(text: str) -> dict[str, str]:
    """``"a=b,c=d"`` -> ``{"a": "b", "c": "d"}`` (template image -> image to run)."""
    pairs = [p.strip() for p in text.split(",") if p.strip()]
    out = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise ValueError(f"CLICKGRAPH_IMAGE_MAP: expected OLD=NEW, got {pair!r}")
        out[old] = new
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--day", default=None, help="YYYY-MM-DD (default: yesterday, UTC)")
    parser.add_argument("--templates", default=str(Path(__file__).resolve().parent),
                        help="folder holding the step manifests (default: this script's folder)")
    parser.add_argument("--namespace", default=None,
                        help="default: the pod's own namespace (service account)")
    parser.add_argument("--step-timeout-hours", type=float, default=8.0)
    parser.add_argument("--dry-run", action="store_true", help="print the objects, create nothing")
    args = parser.parse_args(argv)

    day = args.day or yesterday_utc()
    dt.date.fromisoformat(day)  # rejects a malformed --day before anything is created
    namespace = args.namespace or (
        (SA_DIR / "namespace").read_text().strip() if (SA_DIR / "namespace").is_file() else "clickgraph")
    images = parse_image_map(os.environ.get("CLICKGRAPH_IMAGE_MAP", ""))
    objects = []
    for file, collection in STEPS:
        template = yaml.safe_load((Path(args.templates) / file).read_text())
        objects.append((collection.format(ns=namespace), render(template, day, namespace, images)))
    if args.dry_run:
        print(yaml.safe_dump_all([obj for _, obj in objects], sort_keys=False), end="")
        return 0
    api = KubeApi()
    try:
        for collection, obj in objects:
            run_step(api, collection, obj, args.step_timeout_hours * 3600)
    except (RuntimeError, urllib.error.URLError) as err:
        print(f"daily {day}: {err}", file=sys.stderr)
        return 1
    print(f"daily {day}: graph store, partitions and model updated, evaluated and exported", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
