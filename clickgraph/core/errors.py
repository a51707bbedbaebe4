"""One error base class for what a user can cause and fix.

``clickgraph`` commands print a :class:`ClickgraphError` as one line and exit 2; any other
exception is a bug and surfaces with its traceback. Each contract raises its own subclass
(``ConfigError``, ``ManifestError`` and its ``GraphStoreError``, ``CheckpointError``,
``GraphBuildError``, ``PipelineError``); :class:`InputError` covers bad input data or
arguments elsewhere. ``InputError`` and ``ConfigError`` are also ``ValueError``s.
"""

from __future__ import annotations


class ClickgraphError(Exception):
    """Something the user can fix: a config key, an input, a missing or foreign output."""


class InputError(ClickgraphError, ValueError):
    """Bad input data or arguments (the message names what is wrong and where)."""
