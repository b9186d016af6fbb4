"""The context detector (lakehouse/context_detector.py) and the lag features it reads: a row scores
the same alone or among many, no score looks ahead, and declarations without lags are unchanged."""

from __future__ import annotations

import numpy as np
import pytest

import schemas
from lakehouse import detectors
from lakehouse.detectors import FittedModel
from lakehouse.features import compute_features, feature_names
from schemas.declaration import Dataset, DetectorSpec


def _dataset(lags: int, context: int = 1, fields: tuple[str, ...] = ("value",), window: int = 24, detector_fields: int | None = None) -> Dataset:
    document = schemas.load("metrics").model_dump()
    document["features"] = {"fields": list(fields), "window": window, "time_of_day": False, "lags": lags}
    params = {"context": context, "fields": len(fields) if detector_fields is None else detector_fields}
    document["detector"] = {**document["detector"], "name": "context", "params": params}
    return Dataset.model_validate(document)


def _series(rows: int = 900, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = 10 + np.sin(np.arange(rows) / 20)[:, np.newaxis] + rng.normal(0, 0.1, (rows, 1))
    values[700] += 5.0  # a spike after the training stretch
    times = np.datetime64("2024-01-01T00:00", "us") + np.arange(rows) * np.timedelta64(5, "m")
    return values, times


def test_lags_by_hand_and_history_repeats_the_oldest_value():
    dataset = _dataset(lags=3, window=3)
    assert feature_names(dataset)[-3:] == ["value_lag3", "value_lag2", "value_lag1"]
    values = np.array([[1.0], [3.0], [5.0], [7.0], [100.0]])
    times = np.zeros(5, dtype="datetime64[us]")
    lags = compute_features(dataset, values, times)[:, -3:]
    # The first event has no history (its own value), the second one value of it (repeated).
    assert lags.tolist() == [[1, 1, 1], [1, 1, 1], [1, 1, 3], [1, 3, 5], [3, 5, 7]]


def test_without_lags_the_features_are_what_they_were():
    declared = schemas.load("metrics")
    assert declared.features.lags == 0
    assert feature_names(declared) == ["value", "value_diff", "value_deviation", "value_zscore"]
    values, times = _series()
    with_lags = compute_features(_dataset(lags=4, window=declared.features.window), values, times)
    without = compute_features(declared, values, times)
    assert np.array_equal(with_lags[:, :4], without)  # the lags are only added, last


def test_lag_features_one_event_at_a_time_equal_all_at_once_bit_for_bit():
    dataset = _dataset(lags=6, fields=("value", "value"), window=8)
    values = np.random.default_rng(3).normal(50, 10, size=(200, 2))
    times = np.datetime64("2024-01-01T00:00", "us") + np.arange(200) * np.timedelta64(5, "m")
    whole = compute_features(dataset, values, times)
    incremental = np.vstack([compute_features(dataset, values[i : i + 1], times[i : i + 1], values[max(0, i - 8) : i]) for i in range(200)])
    assert np.array_equal(whole, incremental)


@pytest.mark.parametrize("context", [1, 8])
def test_a_row_scores_the_same_alone_as_among_many(context):
    dataset = _dataset(lags=context - 1, context=context)
    values, times = _series()
    features = compute_features(dataset, values, times)
    model, _ = detectors.fit(dataset.detector, features[:600], feature_names(dataset))
    model = FittedModel.from_bytes(model.to_bytes())
    together, flags = model.score(features[600:])
    alone = np.concatenate([model.score(features[row : row + 1])[0] for row in range(600, len(features))])
    assert np.array_equal(together, alone)
    reversed_order = model.score(features[600:][::-1])[0][::-1]
    assert np.array_equal(together, reversed_order)
    assert flags[100] and together[100] == together.max()  # the spike at row 700


@pytest.mark.parametrize("context", [1, 8])
def test_no_score_looks_ahead(context):
    """Scores of the events up to t are the same whether or not the events after t exist (and
    whatever they hold): features and model use only earlier events."""
    dataset = _dataset(lags=context - 1, context=context)
    values, times = _series()
    model, _ = detectors.fit(dataset.detector, compute_features(dataset, values[:600], times[:600]), feature_names(dataset))
    full = model.score(compute_features(dataset, values, times)[600:])[0]
    changed = values.copy()
    changed[751:] = -changed[751:] * 40  # the future, rewritten
    for end in (601, 700, 751):
        prefix = model.score(compute_features(dataset, values[:end], times[:end])[600:])[0]
        assert np.array_equal(prefix, full[: end - 600])
    assert np.array_equal(model.score(compute_features(dataset, changed, times)[600:751])[0], full[:151])


def test_training_scores_leave_the_row_out_and_set_the_contamination_threshold():
    dataset = _dataset(lags=7, context=8)
    values, times = _series()
    features = compute_features(dataset, values, times)[:600]
    ids = np.array([f"e{row}" for row in range(600)], dtype=object)
    model, metrics = detectors.fit(dataset.detector, features, feature_names(dataset), ids)
    assert (model.detector.decision_scores_ > 0).all()  # a row is not its own neighbour
    assert metrics["train_anomaly_rate"] <= dataset.detector.contamination * dataset.detector.threshold_scale
    np.testing.assert_array_equal(model.score(features, ids)[0], model.detector.decision_scores_)


def test_without_the_sub_sequence_it_is_the_nearest_neighbour_of_the_window_summary():
    """level_weight 0 leaves the window summary alone: the declared KNN (1 neighbour, robust
    scale) gives the same scores; the weight is what the context detector adds."""
    dataset = _dataset(lags=0)
    values, times = _series()
    features = compute_features(dataset, values, times)
    names = feature_names(dataset)
    knn, _ = detectors.fit(DetectorSpec(name="knn", params={"n_neighbors": 1}), features[:600], names)
    summary_only, _ = detectors.fit(DetectorSpec(name="context", params={"level_weight": 0.0}), features[:600], names)
    np.testing.assert_allclose(summary_only.score(features[600:])[0], knn.score(features[600:])[0], rtol=1e-9, atol=1e-12)
    weighted, _ = detectors.fit(dataset.detector, features[:600], names)
    assert not np.allclose(weighted.score(features[600:])[0], knn.score(features[600:])[0])


def test_declarations_that_do_not_fit_the_detector_are_refused():
    with pytest.raises(ValueError, match="needs features.lags >= 7"):
        _dataset(lags=3, context=8)
    with pytest.raises(ValueError, match="cannot exceed features.window"):
        _dataset(lags=30, window=24)
    with pytest.raises(ValueError, match="params.fields is 1"):
        _dataset(lags=0, fields=("value", "value"), detector_fields=1)
    too_narrow = _dataset(lags=0)
    model = detectors.build(DetectorSpec(name="context", params={"context": 4}))
    with pytest.raises(ValueError, match="lag columns"):
        model.fit(np.zeros((50, len(feature_names(too_narrow)))))
