"""Labels, cut points and the shared score scale of the quality evaluation (no engines)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lakehouse.errors import ConfigurationError
from lakehouse.likelihood import relative_score
from quality import labels, nab, walk_forward
from quality.walk_forward import cut_points


def _t(text: str) -> np.datetime64:
    return np.datetime64(text, "us")


def test_nab_windows_are_keyed_by_series_name(tmp_path):
    path = tmp_path / "combined_windows.json"
    path.write_text(json.dumps({"realTraffic/speed_7578.csv": [["2011-07-19 07:04:00.000000", "2011-07-19 12:30:00.000000"]], "a/empty.csv": []}))
    windows = labels.load(path)
    assert windows == {"speed_7578": [(_t("2011-07-19T07:04"), _t("2011-07-19T12:30"))], "empty": []}


def test_csv_windows_with_start_and_end_in_any_zone(tmp_path):
    path = tmp_path / "windows.csv"
    path.write_text("entity_id,start,end\nsensor-001,2024-01-01T01:00:00+01:00,2024-01-01T02:00:00Z\n")
    assert labels.load(path) == {"sensor-001": [(_t("2024-01-01T00:00"), _t("2024-01-01T02:00"))]}


def test_labelled_events_join_into_windows_only_when_adjacent_in_the_scored_data(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(
        "entity_id,event_time,anomaly\n"
        "s,2024-01-01T00:10:00Z,drift\ns,2024-01-01T00:15:00Z,drift\n"  # adjacent events: one window
        "s,2024-01-01T00:25:00Z,spike\n"  # 00:20 lies between: a window of its own
        "s,2024-01-02T00:00:00Z,spike\n"  # not among the scored events: no window
    )
    times = {"s": np.arange(_t("2024-01-01T00:00"), _t("2024-01-01T01:00"), np.timedelta64(5, "m"))}
    assert labels.load(path, event_times=times) == {
        "s": [(_t("2024-01-01T00:10"), _t("2024-01-01T00:15")), (_t("2024-01-01T00:25"), _t("2024-01-01T00:25"))]
    }
    # Without the scored events, each labelled event is a window.
    assert len(labels.load(path)["s"]) == 4


def test_labels_without_an_entity_or_times_are_refused(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("series,when\na,2024-01-01\n")
    with pytest.raises(ConfigurationError, match="entity_id"):
        labels.load(path)
    with pytest.raises(ConfigurationError, match="does not exist"):
        labels.load(tmp_path / "missing.json")


def test_cut_points_start_at_the_probationary_period():
    assert cut_points(1000) == [150, 300, 500, 750]
    assert cut_points(20_000)[0] == 750 == nab.probationary_length(20_000)


def test_relative_score_is_zero_at_the_training_mean_and_one_at_the_threshold():
    np.testing.assert_allclose(relative_score(np.array([2.0, 5.0, 8.0]), threshold=5.0, train_mean=2.0), [0.0, 1.0, 2.0])
    # A degenerate model (threshold at or below its mean) keeps the distance from the mean.
    np.testing.assert_allclose(relative_score(np.array([3.0]), threshold=1.0, train_mean=1.0), [2.0])


def test_scheduled_cuts_retrain_once_per_interval_after_the_probationary_period():
    # 1000 rows 5 minutes apart (3.5 days): probation 150 rows; then a batch run a day, i.e. every
    # 288 rows from row 150 on.
    frame = pd.DataFrame({"event_time": pd.date_range("2024-01-01", periods=1000, freq="5min").to_numpy(dtype="datetime64[us]"), "value": 0.0})
    series = walk_forward.NabSeries("s", "c", None, frame)
    assert walk_forward.scheduled_cuts(series, np.timedelta64(1, "D")) == [150, 438, 726]
    # A gap of 45.8 hours (rows 400 to 949 missing; 450 rows left, probation 67 rows, at 05:35):
    # ticks at 29.6 h (row 355) and then 53.6 h and 77.6 h, both inside the gap, where the first
    # row after the gap (index 400) starts one stretch for the two of them.
    gapped = walk_forward.NabSeries("g", "c", None, frame.drop(index=range(400, 950)).reset_index(drop=True))
    assert walk_forward.scheduled_cuts(gapped, np.timedelta64(1, "D")) == [67, 355, 400]
    assert walk_forward.cuts_for(series) == walk_forward.cut_points(1000)
