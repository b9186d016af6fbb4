"""`lakehouse eval nab` and `eval odds` on the reference data (skipped, with the reason, without it)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from app.cli import app
from quality import odds_published, reference_data_dir

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
    header = "table rows outliers detector roc_auc_mean roc_auc_std in_sample published_same_detector best_published_detector best_published".split()
    by_table = {row[0]: dict(zip(header, row)) for row in rows if row[3] == "hbos"}
    assert sorted(by_table) == sorted(odds.available(DATA / "odds"))
    for table, row in by_table.items():
        assert float(row["roc_auc_std"]) == 0.0 and row["in_sample"] == ""  # one split; HBOS was not tuned
        # One split of HBOS lands near PyOD's published mean of ten.
        assert abs(float(row["roc_auc_mean"]) - odds_published.ROC_AUC[table]["HBOS"]) < 0.1, (table, row)
        assert (row["best_published_detector"], float(row["best_published"])) == odds_published.best(table)
    assert f"({len(by_table)} rows)" in result.output
    assert "mean ratio to the best of all PyOD's published detectors per table: hbos" in result.output


def test_eval_odds_json_is_one_object_with_the_full_published_table(tmp_path):
    from scipy.io import loadmat, savemat

    from quality import odds

    reason = odds.missing_reason(DATA / "odds")
    if reason:
        pytest.skip(reason)
    # Any .mat table in the folder is run: wbc under another name has no published figures.
    table = loadmat(DATA / "odds" / "wbc.mat")
    savemat(tmp_path / "wbc.mat", {"X": table["X"], "y": table["y"]})
    savemat(tmp_path / "mine.mat", {"X": table["X"], "y": table["y"]})
    result = CliRunner().invoke(app, ["eval", "odds", "--data", str(tmp_path), "--splits", "1", "--detector", "hbos", "--json"], prog_name="lakehouse")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert sorted(document["tables"]) == ["mine", "wbc"]
    wbc, mine = document["tables"]["wbc"], document["tables"]["mine"]
    assert wbc["published"] == odds_published.ROC_AUC["wbc"] and len(wbc["published"]) == 10
    assert wbc["best_published"] == {"detector": "HBOS", "roc_auc": 0.9516}
    assert mine["published"] is None and mine["best_published"] is None
    assert wbc["detectors"]["hbos"]["roc_auc_mean"] == mine["detectors"]["hbos"]["roc_auc_mean"]  # same data, same seeds
    assert document["mean_ratio_to_best_published"]["hbos"] == pytest.approx(wbc["detectors"]["hbos"]["roc_auc_mean"] / 0.9516, abs=1e-3)


def test_eval_odds_without_data_names_the_folder(tmp_path):
    result = CliRunner().invoke(app, ["eval", "odds", "--data", str(tmp_path)], prog_name="lakehouse")
    assert result.exit_code != 0
    assert "no ODDS tables" in str(result.exception) and str(tmp_path) in str(result.exception)


def test_eval_nab_json_is_one_object_per_detector_with_the_in_sample_label():
    if not (DATA / "nab" / "labels" / "combined_windows.json").exists():
        pytest.skip(f"no NAB data at {DATA / 'nab'} (../shared/data/nab, or set LAKEHOUSE_REFERENCE_DATA)")
    result = CliRunner().invoke(
        app, ["eval", "nab", "--no-system", "--json", "--detector", "hbos", "--series", "art_daily_jumpsup", "--series", "speed_7578"],
        prog_name="lakehouse",
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["series"] == 2 and document["in_sample"] is True and document["system"] is None
    hbos = document["detectors"]["hbos"]
    for part in ("best_threshold", "alerts"):
        assert set(hbos[part]) >= {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
        assert all(-1000 < hbos[part][profile] <= 100 for profile in ("standard", "reward_low_FP_rate", "reward_low_FN_rate"))
    assert sorted(document["categories"]) == ["artificialWithAnomaly", "realTraffic"]
