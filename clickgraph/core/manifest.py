"""Stage manifests: the contract between stages.

Each stage writes ``_MANIFEST.json`` last. It names what produced the folder (``kind``,
``format_version``, ``producer_version``, ``config_hash``) and what is in it (counts, time
range). The next stage reads a folder only through :func:`read_manifest`, which refuses a
missing manifest, another kind, or a format version it does not know.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from clickgraph import __version__
from clickgraph.core import fs
from clickgraph.core.config import Config
from clickgraph.core.errors import ClickgraphError


class ManifestError(ClickgraphError):
    """A stage folder that cannot be trusted: no manifest, wrong kind or version."""


def new_manifest(kind: str, format_version: int, cfg: Config, sections: tuple[str, ...],
                 **fields: Any) -> dict[str, Any]:
    """Common manifest header plus stage-specific ``fields``."""
    return {
        "kind": kind,
        "format_version": format_version,
        "producer": "clickgraph",
        "producer_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config_hash": cfg.section_hash(*sections),
        **fields,
    }


def write_manifest(folder_url: str, manifest: dict[str, Any]) -> None:
    """Write ``_MANIFEST.json`` into ``folder_url``. Call it after every data file."""
    fs.write_json(fs.join(folder_url, fs.MANIFEST_NAME), manifest)


def read_manifest(folder_url: str, kind: str, supported_versions: tuple[int, ...]) -> dict:
    """Read and check a stage folder's manifest.

    Raises:
        ManifestError: the folder has no manifest, or it is of another kind or version.
    """
    url = fs.join(folder_url, fs.MANIFEST_NAME)
    if not fs.exists(url):
        raise ManifestError(
            f"{folder_url}: no {fs.MANIFEST_NAME}; not a complete {kind} output "
            "(was the producing job run, or did it die before committing?)"
        )
    try:
        manifest = fs.read_json(url)
    except ValueError as err:
        raise ManifestError(f"{url}: unreadable manifest ({err})") from None
    if manifest.get("kind") != kind:
        raise ManifestError(f"{url}: expected a '{kind}' manifest, found kind={manifest.get('kind')!r}")
    version = manifest.get("format_version")
    if version not in supported_versions:
        raise ManifestError(
            f"{url}: {kind} format_version {version!r} is not supported by this clickgraph "
            f"(supported: {list(supported_versions)})"
        )
    return manifest
