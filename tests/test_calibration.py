"""The calibrated score's NAB measurement (quality/calibration.py) on a few reference series."""

from __future__ import annotations

import numpy as np
import pytest

import schemas
from lakehouse.likelihood import LikelihoodSettings, fold, initial_state
from quality import benchmark, calibration, nab, nab_run, reference_data_dir, walk_forward

NAB = reference_data_dir() / "nab"
SERIES = ["art_daily_jumpsup", "art_daily_jumpsdown", "speed_7578", "occupancy_6005"]


def test_calibration_in_sample_and_held_out_on_four_series():
    if not (NAB / "labels" / "combined_windows.json").exists():
        pytest.skip(f"no NAB data at {NAB} (../shared/data/nab, or set LAKEHOUSE_REFERENCE_DATA)")
    corpus, windows = walk_forward.nab_corpus(NAB, SERIES)
    dataset, spec = schemas.load(nab_run.DATASET), benchmark.candidate_spec("declared")
    choices = calibration.grid({"recent": (1, 5), "history": (2880,)})
    report = calibration.run(dataset, spec, corpus, windows, choices=choices, seeds=range(3))
    summary = report.summary()
    assert summary["calibrated_in_sample_choice"] in {choice.label() for choice in choices}
    assert len(report.splits) == 3 and all(len(split.chosen) == 2 for split in report.splits)
    # The in-sample choice is the best of the grid: a held-out choice, scored over all series with
    # one threshold, cannot beat it.
    assert all(split.held_out_config <= report.in_sample + 1e-9 for split in report.splits)
    assert -1000 < summary["calibrated_held_out_settings_and_threshold_min"] <= 100
    assert summary["alerts_in_sample_standard"] >= max(summary["alerts_held_out_max"], -1000)
    # The calibrated series is the core's fold over the walk-forward relative scores, per entity.
    _, scored = walk_forward.run(dataset, spec, corpus[:1], windows)
    frame = scored[corpus[0].entity]
    settings = LikelihoodSettings(recent=5, history=2880)
    expected, _ = fold(frame["relative_score"].to_numpy(), settings, initial_state(settings, spec.contamination))
    series = calibration.calibrated(corpus[0], frame, windows, settings, spec.contamination)
    np.testing.assert_array_equal(series.scores[frame["row"].to_numpy()], expected)
    assert np.isnan(series.scores[: nab.probationary_length(corpus[0].rows)]).all()
