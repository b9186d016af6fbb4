"""Fitted models score their own training rows as they were scored at fit (leave-one-out)."""

from __future__ import annotations

import numpy as np
import pytest

from lakehouse import detectors
from lakehouse.detectors import FittedModel
from schemas.declaration import DetectorSpec


def _history(rows: int = 300) -> np.ndarray:
    generator = np.random.default_rng(7)
    features = generator.normal(size=(rows, 3))
    features[150] = [12.0, -9.0, 8.0]  # one far outlier in the history
    return features


def test_a_training_row_is_not_its_own_nearest_neighbour():
    features = _history()
    ids = np.array([f"e{index}" for index in range(len(features))], dtype=object)
    spec = DetectorSpec(name="knn", params={"n_neighbors": 1}, contamination=0.01)
    model, metrics = detectors.fit(spec, features, ["a", "b", "c"], ids)
    model = FittedModel.from_bytes(model.to_bytes())

    fresh, fresh_flags = model.score(features)
    assert np.all(fresh == 0.0) and not fresh_flags.any()  # why in-sample rows need their training score

    scores, flags = model.score(features, ids)
    np.testing.assert_array_equal(scores, model.detector.decision_scores_)
    assert flags[150] and scores[150] == scores.max()
    assert flags.mean() == metrics["train_anomaly_rate"]


def test_rows_outside_the_training_set_are_scored_afresh():
    features = _history()
    ids = np.array([f"e{index}" for index in range(len(features))], dtype=object)
    model, _ = detectors.fit(DetectorSpec(name="knn", params={"n_neighbors": 1}), features, ["a", "b", "c"], ids)
    new = np.array([[0.0, 0.0, 0.0], [20.0, 20.0, 20.0]])
    mixed_ids = np.array(["later-1", "e150", "later-2"], dtype=object)
    mixed = np.vstack([new[0], features[150], new[1]])
    scores, flags = model.score(mixed, mixed_ids)
    expected_new, _ = model.score(new)
    assert scores[0] == expected_new[0] and scores[2] == expected_new[1]
    assert scores[1] == model.detector.decision_scores_[150]
    assert list(flags) == [False, True, True]


def test_models_fitted_without_ids_score_as_before():
    features = _history()
    model, _ = detectors.fit(DetectorSpec(name="iforest", params={"random_state": 0}), features, ["a", "b", "c"])
    assert model.training_ids is None
    ids = np.array([f"e{index}" for index in range(len(features))], dtype=object)
    np.testing.assert_array_equal(model.score(features, ids)[0], model.score(features)[0])


def test_threshold_scale_moves_the_alarm_away_from_the_mean_training_score():
    features = _history()
    ids = np.array([f"e{index}" for index in range(len(features))], dtype=object)
    plain, plain_metrics = detectors.fit(DetectorSpec(name="knn", params={"n_neighbors": 1}), features, ["a", "b", "c"], ids)
    scaled, metrics = detectors.fit(DetectorSpec(name="knn", params={"n_neighbors": 1}, threshold_scale=4), features, ["a", "b", "c"], ids)
    mean = metrics["train_score_mean"]
    assert plain.threshold == plain_metrics["threshold"] == plain_metrics["contamination_threshold"] == metrics["contamination_threshold"]
    assert scaled.threshold == metrics["threshold"] == mean + 4 * (plain.threshold - mean)
    scores, flags = scaled.score(features, ids)
    assert list(np.flatnonzero(flags)) == list(np.flatnonzero(scores > scaled.threshold)) == [150]
    assert metrics["train_anomaly_rate"] < plain_metrics["train_anomaly_rate"]


def test_a_few_rows_score_in_numpy_exactly_as_pyod_scores_them():
    """The speed layer's path (a few rows, plain numpy) gives PyOD's bits: same scaling, squared
    differences summed in the trees' order. Several models, scalers, k and methods, rows one at a
    time and many at once, near and far."""
    generator = np.random.default_rng(11)
    for scale, neighbours, method in (("robust", 10, "largest"), ("standard", 1, "largest"), ("none", 5, "mean"), ("robust", 3, "median")):
        width = int(generator.integers(2, 15))
        training = generator.normal(size=(400, width)) * generator.uniform(0.01, 100, size=width)
        spec = DetectorSpec(name="knn", scale=scale, params={"n_neighbors": neighbours, "method": method})
        model, _ = detectors.fit(spec, training, [f"f{index}" for index in range(width)])
        model = FittedModel.from_bytes(model.to_bytes())
        assert model._nearest() is not None
        rows = np.vstack([generator.normal(size=(40, width)) * 50, training[:10], training[:5] + 1e-9])
        scaled = model.scaler.transform(rows) if model.scaler is not None else rows
        expected = model.detector.decision_function(scaled)
        one_at_a_time = np.concatenate([model.score(rows[index : index + 1])[0] for index in range(len(rows))])
        np.testing.assert_array_equal(one_at_a_time, expected)
        np.testing.assert_array_equal(model.score(rows)[0], expected)


@pytest.mark.parametrize("method", ["largest", "mean", "median"])
def test_a_bank_of_models_scores_each_row_exactly_as_its_own_model_does(method):
    """NearestBank (the speed layer's scoring) gives every row the bits its model's `score` gives:
    models of different sizes and scalers; a model it cannot hold stays out."""
    rng = np.random.default_rng(11)
    models = []
    for index in range(12):
        scale = ("robust", "standard", "none")[index % 3]
        spec = DetectorSpec(name="knn", scale=scale, params={"n_neighbors": 5, "method": method})
        history = rng.normal(index, 1 + index % 5, size=(40 + 17 * index, 4))
        models.append(detectors.fit(spec, history, ["a", "b", "c", "d"])[0])
    odd = detectors.fit(DetectorSpec(name="knn", params={"n_neighbors": 3}), rng.normal(size=(60, 4)), ["a", "b", "c", "d"])[0]
    bank_models = detectors.NearestBank.eligible([*models, odd])
    assert all(model is not odd for model in bank_models) and len(bank_models) == len(models)
    bank = detectors.NearestBank(bank_models)
    which = rng.integers(0, len(bank_models), size=700)
    rows = rng.normal(5, 4, size=(700, 4))
    bank.CHUNK_TERMS = 4 * 300 * 50  # several chunks
    scores, flags = bank.score(which, rows)
    for model_number, model in enumerate(bank_models):
        mine = which == model_number
        expected_scores, expected_flags = model.score(rows[mine])
        assert scores[mine].tobytes() == expected_scores.tobytes()
        assert np.array_equal(flags[mine], expected_flags)
    assert flags.any() and not flags.all()


def _fit_pickled(spec: DetectorSpec, history: np.ndarray, names: list[str]) -> FittedModel:
    return FittedModel.from_bytes(detectors.fit(spec, history, names)[0].to_bytes())


@pytest.mark.parametrize(("name", "scale", "params"), [
    ("knn", "robust", {"n_neighbors": 10}),
    ("knn", "standard", {"n_neighbors": 1, "method": "mean"}),
    ("knn", "none", {"n_neighbors": 5, "method": "median"}),
    ("context", "robust", {"context": 3, "fields": 2, "level_weight": 2.0, "n_neighbors": 1}),
    ("context", "none", {"context": 1, "fields": 2, "level_weight": 0.7, "n_neighbors": 3}),
])
def test_the_numpy_form_scores_the_bits_of_the_pickled_model(name, scale, params):
    """The registry's numpy form (what the speed layer loads instead of the pickle) gives the
    pickled model's scores, flags and relative scores bit for bit, before and after the round trip
    through its file, for rows one at a time and many at once (the latter through sklearn's tree)."""
    from lakehouse import registry

    rng = np.random.default_rng(23)
    # 2 fields: 4 summary columns each, then 2 lags each (what the context detector reads).
    names = [f"f{index}" for index in range(12)]
    history = rng.normal(size=(500, 12)) * rng.uniform(0.1, 50, size=12)
    model = _fit_pickled(DetectorSpec(name=name, scale=scale, contamination=0.02, params=params), history, names)
    form = model.numpy_form()
    assert form is not None and form.context == (name == "context")
    stored = registry.unpack_forms(registry.pack_forms({"e1": ("uri-1", form), "e2": ("uri-2", model.numpy_form())}))
    assert stored["e1"][0] == "uri-1"
    rows = np.vstack([rng.normal(size=(30, 12)) * 60, history[:10], history[:5] + 1e-9])
    expected, expected_flags = model.score(rows)
    for candidate in (form, stored["e1"][1]):
        scores, flags = candidate.score(rows)
        assert scores.tobytes() == expected.tobytes()
        assert np.array_equal(flags, expected_flags)
        one_at_a_time = np.concatenate([candidate.score(rows[index : index + 1])[0] for index in range(len(rows))])
        assert one_at_a_time.tobytes() == expected.tobytes()
        assert candidate.relative(scores).tobytes() == model.relative(expected).tobytes()
        assert candidate.threshold == model.threshold and candidate.feature_names == names
    many = rng.normal(size=(2000, 12)) * 30  # beyond the numpy path of FittedModel.score: sklearn's tree
    assert stored["e1"][1].score(many)[0].tobytes() == model.score(many)[0].tobytes()


def test_a_bank_holds_numpy_forms_and_pickled_models_alike():
    rng = np.random.default_rng(3)
    names = ["a", "b", "c"]
    models = [_fit_pickled(DetectorSpec(name="knn", scale=("robust", "none")[index % 2], params={"n_neighbors": 4}),
                           rng.normal(index, 1 + index, size=(50 + 9 * index, 3)), names) for index in range(6)]
    mixed = [model.numpy_form() if index % 2 else model for index, model in enumerate(models)]
    assert detectors.NearestBank.eligible(mixed) == mixed
    which = rng.integers(0, len(mixed), size=300)
    rows = rng.normal(3, 4, size=(300, 3))
    scores, flags = detectors.NearestBank(mixed).score(which, rows)
    for number, model in enumerate(models):
        mine = which == number
        assert scores[mine].tobytes() == model.score(rows[mine])[0].tobytes()
        assert np.array_equal(flags[mine], model.score(rows[mine])[1])


def test_detectors_without_a_numpy_form_have_none():
    rng = np.random.default_rng(5)
    history = rng.normal(size=(300, 3))
    for spec in (DetectorSpec(name="iforest", params={"random_state": 0}), DetectorSpec(name="lof"),
                 DetectorSpec(name="knn", params={"algorithm": "brute"})):
        assert detectors.fit(spec, history, ["a", "b", "c"])[0].numpy_form() is None
