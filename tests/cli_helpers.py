"""Running the `lakehouse` console script the way a user does, and reading what it printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def lakehouse(*arguments: str, environment: dict[str, str] | None = None, stdin: str | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """The installed console script (`lakehouse = app.cli:main`) in the test environment
    conftest.py set up, plus `environment`; wide tables, so no cell wraps."""
    script = Path(sys.executable).parent / "lakehouse"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]
    return subprocess.run(
        [*command, *arguments], capture_output=True, text=True, timeout=timeout, input=stdin,
        env={**os.environ, "COLUMNS": "400", **(environment or {})},
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """The result of a command that succeeded (else the failure, with what it printed)."""
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    return result


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the rich tables in a command's output, as lists of cell texts."""
    return [[cell.strip() for cell in line.strip().strip("│").split("│")] for line in text.splitlines() if line.startswith("│")]
