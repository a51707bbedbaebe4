"""The import layers: core -> stages -> app (clickgraph/__init__.py).

* ``clickgraph.core`` imports no stage and no app code;
* a stage (``spark_jobs``, ``partitioning``, ``trainer``) imports the core and itself,
  never another stage (the partition job may call ``partitioning``) and never the app;
* training code (``trainer`` and the core it stands on) never imports pyspark.

Every import statement counts, those inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("spark_jobs", "partitioning", "trainer")
MAY_CALL = {"spark_jobs": {"partitioning"}}
NO_SPARK = ("core", "trainer")


def layer_of_file(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    if parts[0] == "clickgraph":
        if len(parts) > 2 and parts[1] in ("core", "app"):
            return parts[1]
        return "app" if parts[-1] == "__main__.py" else "root"
    return parts[0]


def layer_of_module(name: str) -> str | None:
    """The layer an imported module belongs to; ``None`` for third-party modules."""
    parts = name.split(".")
    if parts[0] == "clickgraph":
        return parts[1] if len(parts) > 1 and parts[1] in ("core", "app") else "root"
    if parts[0] in STAGES:
        return parts[0]
    return "pyspark" if parts[0] == "pyspark" else None


def imported_modules(source: str) -> list[str]:
    """Absolute module names of every import in ``source``."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def violations(layer: str, source: str) -> list[str]:
    """What an import in a file of ``layer`` breaks, one line each."""
    found = []
    for module in imported_modules(source):
        target = layer_of_module(module)
        if target == "pyspark":
            if layer in NO_SPARK:
                found.append(f"{layer} imports {module} (training code never imports pyspark)")
        elif target is None or target in (layer, "root") or layer == "app":
            continue
        elif layer in ("core", "root"):
            found.append(f"{layer} imports {module} (the core imports no stage and no app)")
        elif target == "app":
            found.append(f"{layer} imports {module} (no stage imports the app)")
        elif target != "core" and target not in MAY_CALL.get(layer, set()):
            found.append(f"{layer} imports {module} (stages never import each other)")
    return found


def test_every_module_keeps_to_its_layer():
    files = [p for top in ("clickgraph", *STAGES) for p in sorted((ROOT / top).rglob("*.py"))]
    assert len(files) > 40
    broken = [f"{path.relative_to(ROOT)}: {line}" for path in files
              for line in violations(layer_of_file(path), path.read_text())]
    assert broken == []


@pytest.mark.parametrize("layer, source, fails", [
    ("trainer", "from spark_jobs.graph_io import read", True),      # stage -> stage
    ("trainer", "def f():\n    import spark_jobs.partition\n", True),  # inside a function
    ("spark_jobs", "from trainer.shard import load_shard", True),
    ("spark_jobs", "from partitioning import MetisPartitioner", False),  # allowed call
    ("partitioning", "from spark_jobs import session", True),
    ("trainer", "from clickgraph.app.cli import main", True),        # stage -> app
    ("core", "from trainer.data import load_graph_data", True),      # core -> stage
    ("core", "import pyspark.sql", True),
    ("trainer", "from pyspark.sql import functions", True),
    ("spark_jobs", "from pyspark.sql import functions", False),
    ("trainer", "from clickgraph.core.config import Config\nimport torch", False),
    ("app", "from trainer.evaluate import run_evaluation", False),
])
def test_the_checker_flags_exactly_the_forbidden_imports(layer, source, fails):
    assert bool(violations(layer, source)) is fails
