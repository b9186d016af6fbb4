"""Logging for the command line: rich console output, quiet third-party loggers."""

from __future__ import annotations

import logging
import os
import sys

from rich.console import Console
from rich.logging import RichHandler

def _width(stream) -> int | None:
    # A terminal says its width; a pipe or file gets a wide default instead of rich's 80 columns.
    if os.environ.get("COLUMNS"):
        return int(os.environ["COLUMNS"])
    return None if stream.isatty() else 160


# Logs and progress go to stderr; results (tables, query output) to stdout, so they can be piped.
console = Console(stderr=True, width=_width(sys.stderr))
results = Console(width=_width(sys.stdout))

_NOISY = ("py4j", "apache_beam", "urllib3", "matplotlib", "numba", "great_expectations", "deltalake")


class _DropKnownNoise(logging.Filter):
    # Beam's import logs this on the root logger when the optional GCP clients are absent.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found")


def configure(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(name)s: %(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=True)],
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropKnownNoise())
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    # Keep caches of the libraries we call out of HOME (see the README's "Where things go").
    from lakehouse.settings import get_settings

    cache = get_settings().cache_dir
    os.environ.setdefault("MPLCONFIGDIR", str(cache / "matplotlib"))


def frame_table(frame, title: str | None = None):
    """A pandas DataFrame as a rich Table (missing values shown empty)."""
    from rich.table import Table

    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column))
    for row in frame.itertuples(index=False):
        table.add_row(*["" if value is None else str(value) for value in row])
    return table
