"""The registry's numpy forms: one file a version beside the pickles, loaded instead of them where
present, the pickles otherwise (other detectors, versions written before the forms)."""

from __future__ import annotations

import numpy as np

from lakehouse import detectors, registry
from lakehouse.detectors import FittedModel, NeighbourForm
from schemas.declaration import DetectorSpec

NAMES = ["a", "b", "c"]


def _store(settings, version: int, models: dict[str, FittedModel], *, forms: bool) -> None:
    """What batch/train.py does after fitting: artifacts, the version's forms file, the rows."""
    rows, stored = [], {}
    for entity_id, model in models.items():
        uri = registry.save_artifact(settings, "sensor_events", version, entity_id, model.to_bytes())
        if model.numpy_form() is not None:
            stored[entity_id] = (uri, model.numpy_form())
        rows.append({"dataset": "sensor_events", "entity_id": entity_id, "version": version, "detector": "knn",
                     "threshold": model.threshold, "artifact_uri": uri})
    if forms:
        registry.save_numpy_forms(settings, "sensor_events", version, stored)
    registry.register(settings, rows)


def test_models_load_from_the_numpy_forms_where_present_and_from_their_pickles_otherwise(warehouse):
    rng = np.random.default_rng(17)
    knn = {f"sensor-{index:03d}": detectors.fit(DetectorSpec(name="knn", params={"n_neighbors": 3 + index}),
                                                rng.normal(index, 1, size=(80 + index, 3)), NAMES)[0] for index in range(3)}
    forest = detectors.fit(DetectorSpec(name="iforest", params={"random_state": 0}), rng.normal(size=(80, 3)), NAMES)[0]
    _store(warehouse, 1, {**knn, "sensor-003": forest}, forms=True)
    # A later version written without the forms file, as before the forms existed.
    older_kind = detectors.fit(DetectorSpec(name="knn", params={"n_neighbors": 2}), rng.normal(size=(60, 3)), NAMES)[0]
    _store(warehouse, 2, {"sensor-004": older_kind}, forms=False)

    loaded = registry.load_latest(warehouse, "sensor_events")
    pickled = registry.load_latest(warehouse, "sensor_events", numpy_forms=False)
    assert {entity: type(entry.model).__name__ for entity, entry in loaded.items()} == {
        "sensor-000": "NeighbourForm", "sensor-001": "NeighbourForm", "sensor-002": "NeighbourForm",
        "sensor-003": "FittedModel", "sensor-004": "FittedModel"}
    assert all(isinstance(entry.model, FittedModel) for entry in pickled.values())
    rows = rng.normal(1, 3, size=(50, 3))
    for entity, entry in loaded.items():
        assert entry.version == pickled[entity].version
        scores, flags = entry.model.score(rows)
        expected, expected_flags = pickled[entity].model.score(rows)
        assert scores.tobytes() == expected.tobytes() and np.array_equal(flags, expected_flags)
        assert entry.model.relative(scores).tobytes() == pickled[entity].model.relative(expected).tobytes()


def test_a_row_naming_another_artifact_than_its_form_is_unpickled(warehouse):
    """A row registered by hand for an (entity, version) with an artifact of its own is scored by
    that artifact, not by a form taken from another one."""
    rng = np.random.default_rng(2)
    trained = detectors.fit(DetectorSpec(name="knn", params={"n_neighbors": 3}), rng.normal(size=(70, 3)), NAMES)[0]
    uri = registry.save_artifact(warehouse, "sensor_events", 1, "sensor-000", trained.to_bytes())
    registry.save_numpy_forms(warehouse, "sensor_events", 1, {"sensor-000": (uri, trained.numpy_form())})
    other = detectors.fit(DetectorSpec(name="knn", params={"n_neighbors": 5}), rng.normal(size=(70, 3)), NAMES)[0]
    by_hand = registry.artifact_uri(warehouse, "sensor_events", 1, "sensor-000-by-hand")
    registry.save_artifact(warehouse, "sensor_events", 1, "sensor-000-by-hand", other.to_bytes())
    registry.register(warehouse, [{"dataset": "sensor_events", "entity_id": "sensor-000", "version": 1, "detector": "knn",
                                   "artifact_uri": by_hand}])
    model = registry.load_latest(warehouse, "sensor_events")["sensor-000"].model
    assert isinstance(model, FittedModel) and model.detector.n_neighbors == 5
    assert isinstance(registry.unpack_forms(registry.pack_forms({"x": (uri, trained.numpy_form())}))["x"][1], NeighbourForm)
