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


def test_eval_odds_one_split_of_hbos_on_every_table():
    from quality import odds

    reason = odds.missing_reason(DATA / "odds")
    if reason:
        pytest.skip(reason)
    result = CliRunner().invoke(app, ["eval", "odds", "--splits", "1", "--detector", "hbos"], prog_name="lakehouse", terminal_width=240)
    assert result.exit_code == 0, result.output
    rows = [[cell.strip() for cell in line.strip("│").split("│")] for line in result.output.splitlines() if line.startswith("│")]
    header = "table rows outliers detector roc_auc_mean roc_auc_std published_iforest published_hbos".split()
    by_table = {row[0]: dict(zip(header, row)) for row in rows}
    assert sorted(by_table) == sorted(odds.available(DATA / "odds"))
    for table, row in by_table.items():
        assert row["detector"] == "hbos" and float(row["roc_auc_std"]) == 0.0  # one split
        # One split of HBOS lands near PyOD's published mean of ten.
        assert abs(float(row["roc_auc_mean"]) - odds.PUBLISHED[table]["hbos"]) < 0.1, (table, row)
    assert f"({len(by_table)} rows)" in result.output


def test_eval_odds_without_data_names_the_folder(tmp_path):
    result = CliRunner().invoke(app, ["eval", "odds", "--data", str(tmp_path)], prog_name="lakehouse")
    assert result.exit_code != 0
    assert "none of the ODDS tables" in str(result.exception) and str(tmp_path) in str(result.exception)
