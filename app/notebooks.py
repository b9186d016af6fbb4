"""Execute the notebooks in notebooks/ with their outputs saved (`make notebooks`, and the tests).

    python -m app.notebooks [--out DIR] [NAME ...]

Each notebook runs top to bottom in a fresh kernel of this venv's Python, with the same settings
as the `lakehouse` command (lakehouse.toml, LAKEHOUSE_* variables); a cell that raises fails the
run, naming the notebook and the cell. Executed copies (with tables and plots) go to DIR, by
default <work>/notebooks; the committed notebooks stay without outputs.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from lakehouse import logs
from lakehouse.settings import PROJECT_ROOT, Settings, get_settings

log = logging.getLogger(__name__)

NOTEBOOKS = PROJECT_ROOT / "notebooks"


def _jupyter_environment(settings: Settings) -> None:
    """Jupyter and IPython keep runtime files and profiles under HOME unless told otherwise; they go
    to the project's cache folder, beside matplotlib's (the same one lakehouse/logs.py names)."""
    cache = settings.cache_dir
    for variable, folder in (("JUPYTER_RUNTIME_DIR", "jupyter/runtime"), ("JUPYTER_DATA_DIR", "jupyter/data"),
                             ("JUPYTER_CONFIG_DIR", "jupyter/config"), ("IPYTHONDIR", "jupyter/ipython"),
                             ("MPLCONFIGDIR", "matplotlib")):
        path = os.environ.setdefault(variable, str(cache / folder))
        Path(path).mkdir(parents=True, exist_ok=True)


def execute(path: Path, out_dir: Path, settings: Settings, *, timeout: int = 600) -> Path:
    """Run one notebook; return the executed copy. Raises nbclient's CellExecutionError on failure."""
    import nbformat
    from nbclient import NotebookClient

    _jupyter_environment(settings)
    notebook = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(PROJECT_ROOT)}}).execute()
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / path.name
    nbformat.write(notebook, executed)
    log.info("%s executed in %.1fs -> %s", path.name, time.perf_counter() - started, executed)
    return executed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="notebook file names (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the executed copies")
    arguments = parser.parse_args(argv)
    settings = get_settings()
    logs.configure(cache_dir=settings.cache_dir)
    paths = [NOTEBOOKS / name for name in arguments.names] or sorted(NOTEBOOKS.glob("*.ipynb"))
    out_dir = arguments.out or settings.work_dir / "notebooks"
    for path in paths:
        print(f"executed: {execute(path, out_dir, settings)}")


if __name__ == "__main__":
    main()
