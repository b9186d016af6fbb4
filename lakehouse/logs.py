"""The one logging set-up of every entry point, and the consoles the command line prints to.

Every entry point (the `lakehouse` command, the spark-submit batch job, the speed pipeline run as
a module, the benchmarks, the notebook runner) calls configure() once: one format, with rich's
handler when stderr is a terminal and plain timestamped lines anywhere else (a pipe, a log file,
spark-submit's captured output), so logs read the same and grep the same wherever they land.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

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

# What a log line says; rich's handler puts the time and level in columns before it, the plain
# handler writes them as text.
FORMAT = "%(name)s: %(message)s"
PLAIN_FORMAT = "%(asctime)s %(levelname)s " + FORMAT

_NOISY = ("py4j", "apache_beam", "urllib3", "matplotlib", "numba", "great_expectations", "deltalake")


class _DropKnownNoise(logging.Filter):
    # Beam's import logs this on the root logger when the optional GCP clients are absent.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found")


class _PlainHandler(logging.StreamHandler):
    """Plain lines to whatever sys.stderr is when a record is written (a test runner may swap it)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


def configure(verbose: bool = False, *, cache_dir: Path | None = None) -> None:
    """Set up logging for this process (again, when called again): INFO, or DEBUG when verbose.

    cache_dir: the project's cache folder (settings.cache_dir); libraries that keep caches under
    HOME (matplotlib) keep them there instead (see the README's "Where things go").
    """
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter(FORMAT))
    else:
        handler = _PlainHandler()
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    handler.addFilter(_DropKnownNoise())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if cache_dir is not None:
        os.environ.setdefault("MPLCONFIGDIR", str(Path(cache_dir) / "matplotlib"))


def frame_table(frame, title: str | None = None):
    """A pandas DataFrame as a rich Table (missing values shown empty)."""
    from rich.table import Table

    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column))
    for row in frame.itertuples(index=False):
        table.add_row(*["" if value is None else str(value) for value in row])
    return table
