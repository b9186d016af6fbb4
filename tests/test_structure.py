"""The layout is the architecture: who may import whom, checked on the source itself.

batch/, speed/ and serving/ stand side by side over the core (lakehouse/, schemas/); none imports
another, and none imports the composition root (app/) or the local service managers
(local_services/). The core imports no layer. Only app/ (and each job's own process entry point)
builds settings from the environment; everything else is handed a Settings.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("batch", "speed", "serving")
CORE = ("lakehouse", "schemas")
# Process entry points that are their own composition root: spark-submit runs batch/job.py, a
# Flink or Dataflow deployment runs `python -m speed.pipeline`.
OWN_PROCESS_ENTRY_POINTS = {"batch/job.py", "speed/pipeline.py"}


def _imports(path: Path) -> set[str]:
    """Top-level package names a module imports (at any depth of the module, lazily or not)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_no_other_layer_nor_the_root_nor_local_services(layer):
    forbidden = (set(LAYERS) - {layer}) | {"app", "local_services", "quality", "bench"}
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & forbidden)
        for path in _modules(layer)
        if _imports(path) & forbidden
    }
    assert offenders == {}


@pytest.mark.parametrize("package", CORE)
def test_the_core_imports_no_layer(package):
    forbidden = set(LAYERS) | {"app", "local_services", "quality", "bench"}
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & forbidden)
        for path in _modules(package)
        if _imports(path) & forbidden
    }
    assert offenders == {}


def test_local_services_use_only_the_core():
    forbidden = set(LAYERS) | {"app", "quality", "bench"}
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & forbidden)
        for path in _modules("local_services")
        if _imports(path) & forbidden
    }
    assert offenders == {}


def test_only_the_root_reads_settings_from_the_environment():
    """get_settings() is called by app/ and the jobs' own entry points; layers, core and local
    services are handed their Settings."""
    callers = []
    for package in (*LAYERS, *CORE, "local_services", "quality"):
        for path in _modules(package):
            relative = str(path.relative_to(ROOT))
            if relative in OWN_PROCESS_ENTRY_POINTS or relative == "lakehouse/settings.py":
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "get_settings":
                    callers.append(f"{relative}:{node.lineno}")
    assert callers == []


def test_the_console_script_points_at_the_composition_root():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["lakehouse"] == "app.cli:main"
    packages = set(project["tool"]["setuptools"]["packages"])
    assert {"app", "local_services", *LAYERS, *CORE} <= {name.split(".")[0] for name in packages}


def test_no_module_uses_a_name_it_never_defines():
    """A name used but neither imported nor defined fails only when its line runs: in a benchmark
    or a rarely taken branch, long after the change (the speed bench lost `run_batch` that way).
    pyflakes' undefined-name checks over every module of the project; its style checks are not run."""
    from pyflakes import checker, messages

    undefined = (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)
    found = []
    for folder in ("app", "batch", "bench", "lakehouse", "local_services", "quality", "schemas", "serving", "speed", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for message in checker.Checker(tree, filename=str(path.relative_to(ROOT))).messages:
                if isinstance(message, undefined):
                    found.append(str(message))
    assert not found, "\n".join(found)
