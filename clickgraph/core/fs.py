"""Storage URLs and atomic stage outputs, through fsspec.

A stage never writes into its final folder. It writes into a staging folder beside it,
writes its ``_MANIFEST.json`` last, and only then swaps the staging folder into place.
A job that dies half-way leaves the previous output readable and an orphan staging folder
that the next run removes. Readers trust a folder only through its manifest.

On a local filesystem or HDFS the swap is a rename. On object stores (``s3a://``,
``gs://``) a "rename" is copy-then-delete, so there the manifest, written last, is what
makes the output valid: a reader that finds no manifest, or one that does not match the
files, refuses the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec

MANIFEST_NAME = "_MANIFEST.json"


def fsspec_url(url: str) -> str:
    """Map Hadoop-style schemes to fsspec's (``s3a://`` -> ``s3://``)."""
    for hadoop, native in (("s3a://", "s3://"), ("s3n://", "s3://")):
        if url.startswith(hadoop):
            return native + url[len(hadoop):]
    return url


def spark_url(url: str) -> str:
    """URL as Spark's Hadoop filesystems want it (plain local paths made absolute)."""
    if "://" in url:
        return url
    return os.path.abspath(url)


def is_local(url: str) -> bool:
    """True for plain paths and ``file://`` URLs."""
    return "://" not in url or url.startswith("file://")


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(filesystem, path)`` for a URL or plain path."""
    fs, path = fsspec.core.url_to_fs(fsspec_url(url))
    return fs, path


def join(url: str, *parts: str) -> str:
    """Join URL path segments with ``/``."""
    return "/".join([url.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def write_json(url: str, data: dict[str, Any]) -> None:
    """Write a JSON document in one piece (temporary name, then rename where possible)."""
    fs, path = filesystem(url)
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open(tmp, "w") as handle:
        handle.write(text)
    fs.mv(tmp, path)


def read_json(url: str) -> dict[str, Any]:
    fs, path = filesystem(url)
    with fs.open(path, "r") as handle:
        return json.load(handle)


def write_text(url: str, text: str) -> None:
    fs, path = filesystem(url)
    with fs.open(path, "w") as handle:
        handle.write(text)


def remove(url: str) -> None:
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@contextlib.contextmanager
def staged_output(final_url: str) -> Iterator[str]:
    """Give a staging URL beside ``final_url``; on success swap it into place.

    The body must write everything, manifest last, under the yielded URL. On an exception
    the staging folder is removed and ``final_url`` is untouched.
    """
    fs, final_path = filesystem(final_url)
    parent, name = final_path.rstrip("/").rsplit("/", 1) if "/" in final_path else (".", final_path)
    fs.makedirs(parent, exist_ok=True)
    for stale in fs.glob(f"{parent}/.{name}.staging-*"):  # left by a job that died
        fs.rm(stale, recursive=True)
    token = uuid.uuid4().hex[:12]
    staging_path = f"{parent}/.{name}.staging-{token}"
    staging_url = final_url.rstrip("/")[: -len(name)] + f".{name}.staging-{token}"
    try:
        yield staging_url
    except BaseException:
        if fs.exists(staging_path):
            fs.rm(staging_path, recursive=True)
        raise
    if not fs.exists(f"{staging_path}/{MANIFEST_NAME}"):
        fs.rm(staging_path, recursive=True)
        raise RuntimeError(f"{final_url}: stage wrote no {MANIFEST_NAME}; output discarded")
    if not _renames(fs):
        _swap_by_copy(fs, staging_path, final_path)
        return
    old_path = f"{parent}/.{name}.old-{token}"
    if fs.exists(final_path):
        fs.mv(final_path, old_path, recursive=True)
    fs.mv(staging_path, final_path, recursive=True)
    if fs.exists(old_path):
        fs.rm(old_path, recursive=True)


def _renames(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether a folder moves by one rename (local disks); object stores copy file by file."""
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def manifests_last(paths: list[str]) -> list[str]:
    """``paths`` ordered for a copy that must not look complete before it is: data files
    first, then manifests, deepest first, so the top-level ``_MANIFEST.json`` comes last."""
    def key(path: str) -> tuple[int, int, str]:
        is_manifest = path.rsplit("/", 1)[-1] == MANIFEST_NAME
        return (int(is_manifest), -path.count("/") if is_manifest else 0, path)

    return sorted(paths, key=key)


def _swap_by_copy(fs: fsspec.AbstractFileSystem, staging_path: str, final_path: str) -> None:
    """Replace ``final_path`` by ``staging_path`` where a move is a copy (object stores).

    fsspec's recursive ``mv`` copies in name order, which puts ``_MANIFEST.json`` (``_``
    sorts first) before the data. Here the old output is invalidated first (its manifest
    deleted, then its files), then the new files are copied, manifest last: a reader sees
    either no manifest (refused) or a complete output, never a manifest over missing files.
    """
    if fs.exists(final_path):
        top = f"{final_path}/{MANIFEST_NAME}"
        if fs.exists(top):
            fs.rm(top)
        fs.rm(final_path, recursive=True)
    for path in manifests_last(fs.find(staging_path)):
        fs.copy(path, final_path + path[len(staging_path):])
    fs.rm(staging_path, recursive=True)
