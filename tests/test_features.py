"""The shared feature function: hand-checked values and batch/incremental identity."""

from __future__ import annotations

import numpy as np
import pytest

import schemas
from lakehouse.features import compute_features, feature_names
from schemas.declaration import Dataset


@pytest.fixture(scope="module")
def small_window() -> Dataset:
    document = schemas.load("metrics").model_dump()
    document["features"] = {"fields": ["value"], "window": 3, "time_of_day": True}
    return Dataset.model_validate(document)


def test_features_by_hand(small_window):
    values = np.array([[1.0], [3.0], [5.0], [7.0], [100.0]])
    times = np.array(["2024-01-01T00:00", "2024-01-01T06:00", "2024-01-01T12:00", "2024-01-01T18:00", "2024-01-02T00:00"], dtype="datetime64[us]")
    result = compute_features(small_window, values, times)
    names = feature_names(small_window)
    column = {name: result[:, index] for index, name in enumerate(names)}
    assert column["value"].tolist() == [1, 3, 5, 7, 100]
    assert column["value_diff"].tolist() == [0, 2, 2, 2, 93]
    # Deviation from the mean of the previous (up to) 3 values; the first event has no history.
    assert column["value_deviation"].tolist() == [0, 2, 3, 4, 95]
    # Last event: previous values 3, 5, 7 -> mean 5, population std sqrt(8/3).
    assert column["value_zscore"][-1] == pytest.approx(95 / np.sqrt(8 / 3))
    assert column["value_zscore"][0] == 0
    assert column["time_of_day_sin"] == pytest.approx([0, 1, 0, -1, 0], abs=1e-12)
    assert column["time_of_day_cos"] == pytest.approx([1, 0, -1, 0, 1], abs=1e-12)


def test_one_event_at_a_time_equals_all_at_once_bit_for_bit():
    dataset = schemas.load("sensor_events")
    rng = np.random.default_rng(3)
    values = rng.normal(50, 10, size=(300, 3))
    times = np.datetime64("2024-01-01T00:00") + np.arange(300) * np.timedelta64(5, "m")
    whole = compute_features(dataset, values, times)
    window = dataset.features.window
    incremental = np.vstack(
        [compute_features(dataset, values[i : i + 1], times[i : i + 1], values[max(0, i - window) : i]) for i in range(300)]
    )
    assert np.array_equal(whole, incremental)


def test_values_must_be_two_dimensional(small_window):
    with pytest.raises(ValueError, match="2-D"):
        compute_features(small_window, np.ones(4), np.zeros(4, dtype="datetime64[us]"))
