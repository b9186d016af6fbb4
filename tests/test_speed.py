"""The speed layer on Beam's local runner: dead letters, exactly-once upserts, batch/speed parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
from deltalake import DeltaTable

from batch.job import run_batch
from lakehouse import constants, registry
from speed.pipeline import run as run_speed

from fixtures_engines import make_sensor_inputs

pytestmark = [pytest.mark.spark, pytest.mark.beam]


@pytest.fixture(scope="module")
def lambda_cycle(spark, tmp_path_factory):
    """Batch on history, then the speed layer on the recent replay (with a malformed line)."""
    from lakehouse.settings import get_settings

    folder = tmp_path_factory.mktemp("speed")
    settings = get_settings().model_copy(update={"warehouse": str(folder / "warehouse")})
    inputs = make_sensor_inputs(folder)
    first = run_batch("sensor_events", [str(path) for path in inputs.history_files], settings=settings, spark=spark)
    with open(inputs.recent_file, "a") as stream:
        stream.write('{"event_id": "cut-off", "temperature": \n')
        stream.write(json.dumps({**inputs.recent.records[0], "event_id": "f" * 32, "entity_id": "sensor-999"}) + "\n")
    result = run_speed(["--dataset", "sensor_events", "--input", str(inputs.recent_file)], settings=settings)
    return settings, inputs, first, result


def _hot(settings):
    return DeltaTable(settings.table_uri("sensor_events", constants.HOT_SCORES)).to_pandas()


def test_every_line_is_scored_or_a_dead_letter(lambda_cycle):
    _, inputs, _, result = lambda_cycle
    lines = len(inputs.recent.records) + 2
    assert result.scored + result.dead_letters == lines
    # Planted bad records, the malformed line and the sensor without a model.
    assert result.dead_letters == len(inputs.recent.bad) + 2
    assert result.unknown_entity == 1


def test_dead_letters_reach_quarantine_with_their_reasons(lambda_cycle):
    settings, inputs, _, _ = lambda_cycle
    quarantine = DeltaTable(settings.table_uri(constants.SYSTEM_SCHEMA, constants.QUARANTINE)).to_pandas()
    speed_rows = quarantine[quarantine.layer == "speed"]
    by_id = {row.event_id: list(row.failed_rules) for row in speed_rows.itertuples() if row.event_id}
    for event_id, rule in inputs.recent.bad.items():
        if rule == "entity_id.pattern" or rule == "event_time.type":
            continue  # their event id is intact too, checked below through the raw text
        assert by_id[event_id] == [rule]
    for event_id, rule in inputs.recent.bad.items():
        assert any(event_id in row.raw and list(row.failed_rules) == [rule] for row in speed_rows.itertuples())
    assert ["record.json"] in [list(rules) for rules in speed_rows.failed_rules]
    assert by_id["f" * 32] == ["entity_id.known_entity"]
    # A rejected line is kept as it arrived, under `<file>:<line>` as the batch layer names it.
    lines = inputs.recent_file.read_text(encoding="utf-8").split("\n")
    rejected = speed_rows[speed_rows.source.str.startswith(f"{inputs.recent_file}:")
                          & speed_rows.failed_rules.map(lambda rules: list(rules) != ["entity_id.known_entity"])]
    # The unknown entity's letter holds the record re-serialised: its line is not carried past validation.
    assert len(rejected) == len(inputs.recent.bad) + 1  # and the line that is not JSON
    for row in rejected.itertuples():
        assert row.raw == lines[int(row.source.rpartition(":")[2]) - 1]


def test_the_hot_table_holds_each_event_exactly_once_even_after_a_replay(lambda_cycle):
    settings, inputs, _, result = lambda_cycle
    hot = _hot(settings)
    valid_ids = {record["event_id"] for record in inputs.recent.records} - set(inputs.recent.bad)
    assert hot.event_id.is_unique
    assert set(hot.event_id) == valid_ids
    # A crash-and-restart replays the input: nothing may be duplicated or lost.
    again = run_speed(["--dataset", "sensor_events", "--input", str(inputs.recent_file)], settings=settings)
    replayed = _hot(settings)
    assert len(replayed) == len(hot) and replayed.event_id.is_unique
    merged = hot.merge(replayed, on="event_id", suffixes=("", "_again"))
    assert np.allclose(merged.score, merged.score_again)
    assert again.scored == result.scored


def test_the_speed_layer_flags_the_recent_planted_spikes(lambda_cycle):
    settings, inputs, _, _ = lambda_cycle
    hot = _hot(settings).set_index("event_id")
    labels = inputs.events.set_index("event_id").anomaly
    spikes = [event_id for event_id in hot.index if labels.get(event_id) == "spike"]
    assert len(spikes) == 3
    # Every planted spike is flagged, while almost no clean event is (clean: neither the event nor
    # the history window its features look at holds a planted anomaly).
    assert hot.loc[spikes, "is_anomaly"].all()
    window = inputs_dataset().features.window
    events = inputs.events.sort_values(["entity_id", "event_time"])
    tainted = events.groupby("entity_id").anomaly.transform(
        lambda labels: (labels != "").astype(int).rolling(window + 1, min_periods=1).max()
    )
    clean = set(events.event_id[tainted == 0]) & set(hot.index)
    assert len(clean) > 300
    assert hot.loc[sorted(clean), "is_anomaly"].mean() < 0.02


def test_batch_and_speed_give_the_same_scores_and_alerts_for_the_same_events(lambda_cycle, spark):
    """Parity: the batch layer, given the same history, computes the features the stream computed,
    and the batch job's alert rule gives the alert flags the stream wrote.

    Run batch over history + the recent events, compute its features, score them with the model
    version the speed layer used, and compare with the hot table.
    """
    from batch import features as batch_features

    settings, inputs, first, _ = lambda_cycle
    run_batch("sensor_events", [str(path) for path in inputs.history_files] + [str(inputs.recent_file)], settings=settings, spark=spark)
    silver = spark.read.format("delta").load(settings.table_uri("sensor_events", constants.SILVER))
    features = batch_features.compute(silver, inputs_dataset()).toPandas()
    models = registry.list_models(settings, "sensor_events")
    used = models[models.version == first.model_version]
    hot = _hot(settings).set_index("event_id")
    # Rows of the hot table: the batch run above expired them (they are now behind the watermark),
    # so compare against the copy taken before that run.
    assert hot.empty
    history = DeltaTable(settings.table_uri("sensor_events", constants.HOT_SCORES))
    before = history.load_as_version(history.version() - 1) or history
    hot = before.to_pandas().set_index("event_id")
    assert len(hot) > 100
    from lakehouse.detectors import FittedModel
    from lakehouse.features import feature_names
    from lakehouse import storage

    from lakehouse.alerts import first_of_episodes

    from lakehouse import likelihood

    names = feature_names(inputs_dataset())
    dataset = inputs_dataset()
    calibration = likelihood.settings_of(dataset.detector.likelihood)
    compared = alerts = 0
    for row in used.itertuples():
        model = FittedModel.from_bytes(storage.read_bytes(row.artifact_uri))
        entity = features[(features.entity_id == row.entity_id) & features.event_id.isin(hot.index)]
        scores, flags = model.score(entity[names].to_numpy())
        expected = hot.loc[entity.event_id]
        np.testing.assert_allclose(scores, expected.score.to_numpy(), rtol=0, atol=1e-12)
        assert (flags == expected.is_anomaly.to_numpy()).all()
        compared += len(entity)
        # The alert flag: the batch job's rule (batch/score.py) over the entity's whole history
        # scored by the same model, against what the speed layer wrote from its state (seeded
        # from the batch view's flags of the history).
        history = features[features.entity_id == row.entity_id].sort_values(["event_time", "event_id"])
        _, all_flags = model.score(history[names].to_numpy())
        batch_alerts = dict(zip(history.event_id, first_of_episodes(np.asarray(all_flags, dtype=bool), inputs_dataset().detector.alert_quiet_events)))
        speed_alerts = hot.loc[entity.event_id].is_alert
        assert [batch_alerts[event_id] for event_id in entity.event_id] == speed_alerts.tolist(), row.entity_id
        alerts += int(speed_alerts.sum())
        # The calibrated score: the batch job's fold over the entity's whole history (its history
        # scored as the batch view scored it, training rows with their training scores), against
        # what the speed layer stepped on from the batch view's newest stored state.
        history_scores, _ = model.score(history[names].to_numpy(), history.event_id.to_numpy())
        surprises, _ = likelihood.fold(model.relative(history_scores), calibration, likelihood.initial_state(calibration, dataset.detector.contamination))
        batch_surprises = dict(zip(history.event_id, surprises))
        np.testing.assert_allclose(hot.loc[entity.event_id].surprise.to_numpy(dtype=float),
                                   [batch_surprises[event_id] for event_id in entity.event_id], rtol=1e-9, atol=1e-9)
    assert compared == len(hot)
    assert alerts >= 1, "the recent events' planted spikes raise alerts"


def inputs_dataset():
    import schemas

    return schemas.load("sensor_events")


def test_the_streaming_sink_appends_first_rows_and_merges_revisions_and_replays(tmp_path):
    """The one streaming writer appends an event's first row (NEW: no row of the table has its id)
    and MERGEs the rest: the table still holds one row per event id, the newest revision."""
    from datetime import datetime, timedelta, timezone

    import schemas
    from lakehouse import system_tables
    from lakehouse.settings import get_settings
    from speed import tables
    from speed.carried_fields import ACK, NEW
    from speed.sinks import UpsertHotScores

    settings = get_settings().model_copy(update={"warehouse": str(tmp_path / "warehouse")})
    dataset = schemas.load("sensor_events")
    uri = tables.hot_table_uri(settings, dataset)
    tables.ensure_table(uri, system_tables.hot_scores_schema(dataset))
    start = datetime(2024, 3, 1, tzinfo=timezone.utc)

    def row(event_id: str, minute: int, revision: int, score: float, new: bool) -> dict:
        record = {"event_id": event_id, "entity_id": "sensor-001", "event_time": start + timedelta(minutes=minute),
                  "temperature": 50.0 + minute, "pressure": 5.0, "vibration": 2.0}
        return {ACK: (f"kafka://t/0@{minute}", "0/1"), NEW: new or None, **system_tables.hot_row(
            dataset, record, score=score, is_anomaly=False, model_version=1, scored_at=start, revision=revision)}

    sink = UpsertHotScores(dataset, settings, append_new=True)
    sink.setup()
    acknowledged = list(sink.process([row("a", 1, 1, 0.1, True), row("b", 2, 2, 0.2, True), row("c", 3, 3, 0.3, True)]))
    table = DeltaTable(uri)
    assert table.history(1)[0]["operation"] == "WRITE"  # an append: no MERGE read the table
    assert len(acknowledged) == 1 and len(acknowledged[0]) == 3
    # A revision of a (late event before it), a replay of b with an older revision, a new event d.
    list(sink.process([row("a", 1, 9, 0.9, False), row("b", 2, 1, 0.5, False), row("d", 4, 10, 0.4, True)]))
    operations = [entry["operation"] for entry in DeltaTable(uri).history(2)]
    assert sorted(operations) == ["MERGE", "WRITE"]
    hot = DeltaTable(uri).to_pandas().set_index("event_id").sort_index()
    assert hot.index.is_unique and list(hot.index) == ["a", "b", "c", "d"]
    assert hot.loc["a", "score"] == 0.9 and hot.loc["a", "revision"] == 9
    assert hot.loc["b", "score"] == 0.2 and hot.loc["b", "revision"] == 2  # the older revision lost
    # Without append_new (bounded runs: parallel writers), every commit is a MERGE.
    bounded = UpsertHotScores(dataset, settings)
    bounded.setup()
    list(bounded.process([row("e", 5, 11, 0.5, True)]))
    assert DeltaTable(uri).history(1)[0]["operation"] == "MERGE"


_SPEED_WORKER = """
import json, sys
from lakehouse.settings import get_settings
from speed.pipeline import run
settings = get_settings().model_copy(update={"warehouse": sys.argv[1]})
result = run(["--dataset", "sensor_events", "--input", sys.argv[2]], settings=settings)
print(json.dumps({"scored": result.scored, "imported": sorted(name for name in ("pyod", "sklearn", "numba") if name in sys.modules)}))
"""


def test_a_speed_worker_on_numpy_forms_imports_no_pyod_and_scores_the_bits_of_the_pickles(lambda_cycle, tmp_path):
    """The speed layer in a process of its own, on a copy of the warehouse the batch layer
    trained: with the numpy forms train.py wrote beside the pickles it never imports PyOD,
    sklearn or numba; with them removed (a warehouse written before them) it unpickles, and
    both write the same score bits for the same events."""
    import hashlib
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    settings, inputs, _, _ = lambda_cycle
    warehouse = Path(settings.warehouse)
    forms = sorted(warehouse.rglob(registry.NUMPY_FORMS_FILE))
    assert forms, "batch training writes the numpy forms of its KNN models"
    # Events the fixture's run has not seen: the same readings under new ids.
    replay = tmp_path / "replay.jsonl"
    with open(replay, "w") as stream:
        for record in inputs.recent.records:
            renamed = {**record, "event_id": hashlib.md5(f"again-{record.get('event_id')}".encode()).hexdigest()}
            stream.write(json.dumps(renamed, default=str) + "\n")
    scores, imported = {}, {}
    for kind in ("numpy", "pickle"):
        # A copy for its hot table; the registry rows still name the artifacts of the original.
        copy = tmp_path / kind
        shutil.copytree(warehouse, copy)
        shutil.rmtree(copy / "sensor_events" / constants.HOT_SCORES, ignore_errors=True)
        aside = [(found, found.with_name("aside.npz")) for found in forms] if kind == "pickle" else []
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
        try:
            for found, moved in aside:
                found.rename(moved)
            finished = subprocess.run([sys.executable, "-c", _SPEED_WORKER, str(copy), str(replay)], capture_output=True,
                                      text=True, env=environment, timeout=600, check=False)
        finally:
            for found, moved in aside:
                moved.rename(found)
        assert finished.returncode == 0, finished.stderr[-3000:]
        report = json.loads(finished.stdout.strip().splitlines()[-1])
        assert report["scored"] > 100
        imported[kind] = report["imported"]
        hot = DeltaTable(str(copy / "sensor_events" / constants.HOT_SCORES)).to_pandas().set_index("event_id").sort_index()
        scores[kind] = hot
    assert imported == {"numpy": [], "pickle": ["numba", "pyod", "sklearn"]}
    assert scores["numpy"].index.equals(scores["pickle"].index)
    assert scores["numpy"].score.to_numpy().tobytes() == scores["pickle"].score.to_numpy().tobytes()
    assert scores["numpy"].is_anomaly.equals(scores["pickle"].is_anomaly)
    assert scores["numpy"].surprise.to_numpy().tobytes() == scores["pickle"].surprise.to_numpy().tobytes()


def test_scoring_builds_each_hot_row_as_system_tables_hot_row_does(tmp_path):
    """ScoreBatch._hot_rows builds many rows in one loop: the same keys in the same order and the
    same values and types as the carried fields followed by system_tables.hot_row."""
    from datetime import datetime, timezone

    import schemas
    from lakehouse import system_tables
    from lakehouse.settings import get_settings
    from speed.carried_fields import ACK, ARRIVED_AT, NEW, RELATIVE, REVISION, SOURCE
    from speed.scoring import ScoreBatch

    dataset = schemas.load("sensor_events")
    settings = get_settings().model_copy(update={"warehouse": str(tmp_path / "warehouse")})
    scored_at = datetime(2024, 3, 1, tzinfo=timezone.utc)
    records = [{"event_id": f"e{number}", "entity_id": "sensor-001", "event_time": scored_at, "temperature": 50.0 + number,
                "pressure": 5.0, "vibration": 2.0, SOURCE: f"file:{number}", ARRIVED_AT: 1.5, ACK: ("file", "0/1"),
                REVISION: 7 + number, "_features": np.zeros(3)} for number in range(3)]
    records[1][NEW] = True
    del records[2][REVISION]
    scores, flags, relative = np.array([0.25, 1e300, -0.0]), np.array([False, True, False]), np.array([0.5, np.inf, -1.0])
    built = ScoreBatch(dataset, settings)._hot_rows(records, scores.tolist(), flags.tolist(), relative.tolist(), 3, scored_at)
    expected = [{RELATIVE: float(on_scale), ARRIVED_AT: record.get(ARRIVED_AT), SOURCE: record.get(SOURCE), ACK: record.get(ACK),
                 NEW: record.get(NEW), **system_tables.hot_row(dataset, record, score=score, is_anomaly=flag, model_version=3,
                                                             scored_at=scored_at, revision=record.get(REVISION, 0))}
                for record, score, flag, on_scale in zip(records, scores, flags, relative)]
    assert [list(row.items()) for row in built] == [list(row.items()) for row in expected]
    assert [[type(value) for value in row.values()] for row in built] == [[type(value) for value in row.values()] for row in expected]
