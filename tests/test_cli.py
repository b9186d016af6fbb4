"""The `lakehouse` command: help everywhere, clear errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from app.cli import app

COMMANDS = [
    [], ["setup"], ["up"], ["down"], ["status"], ["generate"], ["demo"], ["sql"],
    ["batch"], ["batch", "run"], ["batch", "models"], ["batch", "runs"], ["batch", "report"],
    ["speed"], ["speed", "run"], ["speed", "produce"], ["serve"], ["serve", "refresh"],
    ["eval"], ["eval", "run"], ["eval", "nab"], ["eval", "odds"], ["anomalies"], ["alerts"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda words: " ".join(words) or "lakehouse")
def test_every_command_has_help(command):
    result = CliRunner().invoke(app, [*command, "--help"], prog_name="lakehouse")
    assert result.exit_code == 0, result.output
    assert "Usage: lakehouse" in result.output


def _lakehouse(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *arguments], capture_output=True, text=True, timeout=120
    )


def test_an_input_that_matches_nothing_is_a_one_line_error():
    result = _lakehouse("batch", "run", "--dataset", "sensor_events", "--input", "/nonexistent/*.jsonl")
    assert result.returncode == 2
    assert "matches no file" in result.stderr and "Traceback" not in result.stderr


def test_an_unknown_dataset_names_the_declared_ones():
    result = _lakehouse("batch", "run", "--dataset", "nope", "--input", "x")
    assert result.returncode == 2
    assert "unknown dataset 'nope'" in result.stderr and "sensor_events" in result.stderr


def test_sql_against_a_server_that_is_down_says_how_to_start_it(monkeypatch):
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "sql", "SELECT 1"],
        capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "LAKEHOUSE_TRINO_PORT": "1"},
    )
    assert result.returncode == 2
    assert "lakehouse up" in result.stderr


def test_tests_keep_generated_inputs_out_of_the_work_folder(tmp_path):
    """The test session's demo writes its inputs and labels under the test root, not over yours."""
    from lakehouse.settings import Settings, get_settings

    settings = get_settings()
    assert settings.data_dir != settings.work_dir / "data"
    assert Settings(data_root=str(tmp_path)).data_dir == tmp_path
    assert Settings(data_root="").data_dir == settings.work_dir / "data"
