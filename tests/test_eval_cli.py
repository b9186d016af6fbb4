"""`lakehouse eval nab` and `eval odds` on the reference data (skipped, with the reason, without it)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from app.cli import app
from quality import reference_data_dir

DATA = reference_data_dir()


def test_eval_nab_walk_forward_on_two_series():
    if not (DATA / "nab" / "labels" / "combined_windows.json").exists():
        pytest.skip(f"no NAB data at {DATA / 'nab'} (../shared/data/nab, or set LAKEHOUSE_REFERENCE_DATA)")
    result = CliRunner().invoke(
        app, ["eval", "nab", "--no-system", "--detector", "declared", "--detector", "hbos", "--series", "art_daily_jumpsup", "--series", "speed_7578"],
        prog_name="lakehouse", terminal_width=240,
    )
    assert result.exit_code == 0, result.output
    assert "NAB: 2 series" in result.output and "declared (walk-forward)" in result.output and "ARTime" in result.output


def test_eval_nab_without_data_names_the_folder(tmp_path):
    result = CliRunner().invoke(app, ["eval", "nab", "--data", str(tmp_path)], prog_name="lakehouse")
    assert result.exit_code != 0
    assert f"no NAB data at {tmp_path}" in str(result.exception)
