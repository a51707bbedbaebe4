"""Atomic stage outputs on a filesystem where a move is a copy (fsspec's memory://)."""

from __future__ import annotations

import uuid

import fsspec
import pytest

from clickgraph.core import fs


def _write(url: str, text: str) -> None:
    fs.write_text(url, text)


@pytest.fixture()
def root() -> str:
    return f"memory://fs-test-{uuid.uuid4().hex[:8]}"


def test_manifests_last_orders_data_then_deep_manifests_then_top() -> None:
    paths = ["/o/_MANIFEST.json", "/o/part-0/_MANIFEST.json", "/o/part-0/a.npy", "/o/b.json",
             "/o/part-1/x/_MANIFEST.json"]
    ordered = fs.manifests_last(paths)
    assert ordered[-1] == "/o/_MANIFEST.json"
    assert set(ordered[:2]) == {"/o/part-0/a.npy", "/o/b.json"}
    assert ordered[2:4] == ["/o/part-1/x/_MANIFEST.json", "/o/part-0/_MANIFEST.json"]


def test_staged_output_on_object_store_copies_manifest_last(root: str, monkeypatch) -> None:
    final = f"{root}/out"
    _write(f"{final}/old.txt", "old")
    _write(f"{final}/{fs.MANIFEST_NAME}", "{}")
    memfs = fsspec.filesystem("memory")
    copied: list[str] = []
    real_copy = memfs.copy

    def record(path1, path2, **kwargs):
        copied.append(path2)
        return real_copy(path1, path2, **kwargs)

    monkeypatch.setattr(memfs, "copy", record)
    with fs.staged_output(final) as stage:
        _write(f"{stage}/a/data.txt", "new")
        _write(f"{stage}/a/{fs.MANIFEST_NAME}", "{}")
        _write(f"{stage}/b.txt", "new")
        _write(f"{stage}/{fs.MANIFEST_NAME}", "{}")
    names = [p.split("/out/", 1)[1] for p in copied]
    assert names[-1] == fs.MANIFEST_NAME and names[-2] == f"a/{fs.MANIFEST_NAME}"
    assert sorted(names[:2]) == ["a/data.txt", "b.txt"]
    left = sorted(p.split("/out/", 1)[1] for p in memfs.find(fs.filesystem(final)[1]))
    assert left == [fs.MANIFEST_NAME, f"a/{fs.MANIFEST_NAME}", "a/data.txt", "b.txt"]
    assert not memfs.glob(fs.filesystem(root)[1] + "/.out.staging-*")


def test_staged_output_failure_leaves_previous_output(root: str) -> None:
    final = f"{root}/out"
    _write(f"{final}/old.txt", "old")
    _write(f"{final}/{fs.MANIFEST_NAME}", "{}")
    with pytest.raises(RuntimeError, match="boom"):
        with fs.staged_output(final) as stage:
            _write(f"{stage}/new.txt", "new")
            raise RuntimeError("boom")
    memfs, path = fs.filesystem(final)
    assert sorted(p.rsplit("/", 1)[1] for p in memfs.find(path)) == [fs.MANIFEST_NAME, "old.txt"]


def test_staged_output_without_manifest_is_discarded(root: str) -> None:
    final = f"{root}/out"
    with pytest.raises(RuntimeError, match="wrote no"):
        with fs.staged_output(final) as stage:
            _write(f"{stage}/new.txt", "new")
    assert not fs.exists(final)
