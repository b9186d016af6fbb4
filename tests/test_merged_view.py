"""The merged view against the known failure cases of hybrid (batch + real-time) tables, on Trino.

Tables are written directly (delta-rs, as the layers write them) for the `metrics` dataset, so each
case sets up exactly the situation it names: an empty side, a gap, a boundary that moves, a late
event, a replayed hot row, a failed run. The expiry of hot rows after a batch run is the batch
job's, checked with real runs in test_end_to_end.py.
"""

from __future__ import annotations

import shutil
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

import schemas
from batch import run_log
from lakehouse import constants, system_tables
from lakehouse.alerts import first_of_episodes
from lakehouse.settings import get_settings
from app.wiring import serving_refresh
from serving import trino_client, views
from speed import tables
from speed.carried_fields import RELATIVE

pytestmark = [pytest.mark.trino, pytest.mark.beam]  # beam: hot rows go through the speed layer's alert step

DATASET = "metrics"
START = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _events(first: int, count: int, entity: str = "cpu") -> list[dict]:
    """`count` events, one per minute from minute `first`."""
    return [
        {"event_id": f"{entity}@{minute}", "entity_id": entity, "event_time": START + timedelta(minutes=minute), "value": float(minute)}
        for minute in range(first, first + count)
    ]


def _at(minute: int) -> datetime:
    return START + timedelta(minutes=minute)


@pytest.fixture
def settings(trino_server):
    """The session warehouse without any `metrics` tables or runs."""
    settings = get_settings()
    for table in (constants.BATCH_SCORES, constants.HOT_SCORES):
        shutil.rmtree(Path(settings.table_uri(DATASET, table)), ignore_errors=True)
    runs = run_log.table_uri(settings)
    if Path(runs).exists():
        DeltaTable(runs).delete(f"dataset = '{DATASET}'")
    return settings


def _batch_run(settings, events: list[dict], watermark: datetime, *, status: str = system_tables.STATUS_SUCCEEDED, alarms: frozenset = frozenset()) -> None:
    """A batch run's outputs: the batch view (replaced, as the job does) and its run-log record."""
    if status == system_tables.STATUS_SUCCEEDED:
        rows = [{**event, "score": 0.1, "is_anomaly": event["event_id"] in alarms, "model_version": 1} for event in events]
        # The batch job flags each entity's alerts over the view's history (batch/score.py, with
        # the same function); the alerts view reads the flag for batch rows.
        for entity in {row["entity_id"] for row in rows}:
            ordered = sorted((row for row in rows if row["entity_id"] == entity), key=lambda row: (row["event_time"], row["event_id"]))
            quiet = schemas.load(DATASET).detector.alert_quiet_events
            for row, alert in zip(ordered, first_of_episodes([row["is_anomaly"] for row in ordered], quiet)):
                row["is_alert"] = bool(alert)
            # And its calibrated score (batch/score.py): the fold of the relative scores, here 0.1 each.
            folded = _fold([BATCH_RELATIVE] * len(ordered))
            for number, row in enumerate(ordered):
                row["surprise"], row["likelihood"] = float(folded.surprises[number]), folded.record(number)
        schema = system_tables.batch_scores_schema(schemas.load(DATASET))
        write_deltalake(settings.table_uri(DATASET, constants.BATCH_SCORES), pa.Table.from_pylist(rows, schema=schema), mode="overwrite")
    now = datetime.now(timezone.utc)
    run_log.append(settings, run_log.RunRecord(run_id=uuid.uuid4().hex, dataset=DATASET, status=status, started_at=now,
                                               finished_at=now, inputs=[], watermark=watermark))


def _speed(settings, events: list[dict], alarms: frozenset = frozenset()) -> None:
    """Scored events through the speed layer's last steps, as the pipeline runs them on Beam's
    local runner: alert flags from each entity's previous flags (seeded from the tables, late
    events put in place, speed/alert_flags.py), then the hot-table sink's upsert by event id."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from speed.alert_flags import FlagAlerts
    from speed.pipeline import LOCAL_RUNNER
    from speed.sinks import UpsertHotScores

    dataset = schemas.load(DATASET)
    uri = tables.hot_table_uri(settings, dataset)
    tables.ensure_table(uri, system_tables.hot_scores_schema(dataset))
    revision = time.time_ns()
    rows = [{**event, "score": 0.2, "is_anomaly": event["event_id"] in alarms, "model_version": 1, "scored_at": datetime.now(timezone.utc),
             "revision": revision + number, RELATIVE: SPEED_RELATIVE} for number, event in enumerate(events)]
    if rows:
        with beam.Pipeline(options=PipelineOptions(["--runner", LOCAL_RUNNER])) as pipeline:
            (
                pipeline
                | beam.Create([(0, rows)], reshuffle=False)
                | beam.ParDo(FlagAlerts(dataset, settings))
                | beam.ParDo(UpsertHotScores(dataset, settings))
            )


# The relative scores the test's batch view and speed rows carry (a model's, on the shared scale).
BATCH_RELATIVE, SPEED_RELATIVE = 0.1, 0.7


def _fold(relative: list[float]):
    from lakehouse import likelihood

    dataset = schemas.load(DATASET)
    calibration = likelihood.settings_of(dataset.detector.likelihood)
    return likelihood.fold_arrays(np.array(relative, dtype=float), calibration,
                                  likelihood.initial_state(calibration, dataset.detector.contamination))


def _merged(settings) -> dict[str, str]:
    views.refresh(DATASET, settings)
    answer = trino_client.query(f"SELECT event_id, layer FROM {DATASET}.merged", settings=settings)
    assert answer.event_id.is_unique, "an event answered twice"
    return dict(zip(answer.event_id, answer.layer))


def test_no_batch_run_yet_the_speed_layer_answers_everything(settings):
    _speed(settings, _events(0, 10))
    assert _merged(settings) == {event["event_id"]: "speed" for event in _events(0, 10)}


def test_an_empty_hot_table_leaves_the_batch_view(settings):
    _batch_run(settings, _events(0, 10), watermark=_at(9))
    _speed(settings, [])
    assert _merged(settings) == {event["event_id"]: "batch" for event in _events(0, 10)}


def test_a_gap_between_the_layers_loses_and_repeats_nothing(settings):
    _batch_run(settings, _events(0, 10), watermark=_at(9))
    _speed(settings, _events(30, 5))  # nothing arrived between minute 10 and 29
    merged = _merged(settings)
    assert {e for e, layer in merged.items() if layer == "batch"} == {event["event_id"] for event in _events(0, 10)}
    assert {e for e, layer in merged.items() if layer == "speed"} == {event["event_id"] for event in _events(30, 5)}


def test_a_new_batch_run_moves_the_boundary(settings):
    _batch_run(settings, _events(0, 10), watermark=_at(9))
    _speed(settings, _events(10, 10))  # minutes 10..19, not expired yet
    assert sum(layer == "speed" for layer in _merged(settings).values()) == 10
    # The next run covers up to minute 14: those five now come from batch once the view is refreshed
    # (the batch job's after-write hook refreshes it; _merged does here).
    _batch_run(settings, _events(0, 15), watermark=_at(14))
    merged = _merged(settings)
    assert len(merged) == 20
    assert [merged[f"cpu@{minute}"] for minute in range(10, 20)] == ["batch"] * 5 + ["speed"] * 5


def test_a_failed_run_does_not_move_the_boundary(settings):
    _batch_run(settings, _events(0, 10), watermark=_at(9))
    _speed(settings, _events(10, 10))
    _batch_run(settings, [], watermark=_at(19), status=system_tables.STATUS_FAILED)
    merged = _merged(settings)
    assert [merged[f"cpu@{minute}"] for minute in range(10, 20)] == ["speed"] * 10


def test_both_sides_serve_the_declared_columns(settings):
    _batch_run(settings, _events(0, 5), watermark=_at(4))
    _speed(settings, _events(5, 5))
    views.refresh(DATASET, settings)
    served = trino_client.query(f"SELECT * FROM {DATASET}.merged ORDER BY event_time", settings=settings)
    # is_alert: both sides carry the first-alarm-of-an-episode flag (the alerts view reads it);
    # surprise: both carry the calibrated score.
    assert list(served.columns) == [*system_tables.served_columns(schemas.load(DATASET)), "is_alert", "surprise", "layer", "watermark"]
    assert list(served.layer) == ["batch"] * 5 + ["speed"] * 5
    # The speed layer stepped on from the batch view's newest stored state: one chain.
    expected = _fold([BATCH_RELATIVE] * 5 + [SPEED_RELATIVE] * 5).surprises
    np.testing.assert_allclose(served.surprise.to_numpy(dtype=float), expected, rtol=1e-12)


def test_a_late_event_at_or_before_the_watermark_waits_for_the_next_batch_run(settings):
    """The batch view is authoritative up to the watermark. An event older than it that reaches
    the speed layer only now is not shown from the hot table (it would contradict the batch view's
    complete answer for that time); the landing table brings it to the next batch run."""
    _batch_run(settings, _events(0, 10), watermark=_at(9))
    late = {"event_id": "cpu@late", "entity_id": "cpu", "event_time": _at(5) + timedelta(seconds=30), "value": 1.0}
    _speed(settings, [late, *_events(10, 3)])
    assert "cpu@late" not in _merged(settings)
    _batch_run(settings, [*_events(0, 13), late], watermark=_at(12))
    merged = _merged(settings)
    assert merged["cpu@late"] == "batch" and len(merged) == 14


def test_an_event_at_exactly_the_watermark_is_answered_once_by_batch(settings):
    _batch_run(settings, _events(0, 10), watermark=_at(9))
    _speed(settings, _events(9, 3))  # minute 9 is in both tables
    merged = _merged(settings)
    assert merged["cpu@9"] == "batch" and merged["cpu@10"] == "speed" and len(merged) == 12


def test_a_replay_into_the_hot_table_duplicates_nothing(settings):
    _batch_run(settings, _events(0, 10), watermark=_at(9))
    _speed(settings, _events(10, 10))
    _speed(settings, _events(10, 10))  # the same events again: a replay after a crash
    hot = DeltaTable(settings.table_uri(DATASET, constants.HOT_SCORES)).to_pandas()
    assert len(hot) == 10 and hot.event_id.is_unique
    assert len(_merged(settings)) == 20


@pytest.mark.spark
def test_an_entity_lagging_the_others_keeps_its_speed_only_rows_through_expiry(settings, spark):
    """The batch run covered cpu up to minute 19 but mem only up to minute 9 (its events were
    late to arrive): mem's speed-only rows 10..14 are before the watermark, yet neither expired
    nor hidden; only the hot rows the batch view holds per entity are expired."""
    from batch.tables import expire_hot_rows

    _speed(settings, _events(15, 10, "cpu") + _events(5, 10, "mem"))
    _batch_run(settings, _events(0, 20, "cpu") + _events(0, 10, "mem"), watermark=_at(19))
    expected = {**{f"cpu@{m}": "batch" for m in range(20)}, **{f"mem@{m}": "batch" for m in range(10)},
                **{f"cpu@{m}": "speed" for m in range(20, 25)}, **{f"mem@{m}": "speed" for m in range(10, 15)}}
    assert _merged(settings) == expected
    # Expiry removes cpu 15..19 and mem 5..9, which the batch view now holds, and nothing else.
    assert expire_hot_rows(spark, schemas.load(DATASET), settings, _at(19)) == 10
    hot = DeltaTable(settings.table_uri(DATASET, constants.HOT_SCORES)).to_pandas()
    assert set(hot.event_id) == {e for e, layer in expected.items() if layer == "speed"}
    assert _merged(settings) == expected


def _alerts(settings) -> set[str]:
    """The `alerts` view's events, checked against lakehouse/alerts.py over the merged view."""
    views.refresh(DATASET, settings)
    alerts = set(trino_client.query(f"SELECT event_id FROM {DATASET}.alerts", settings=settings).event_id)
    merged = trino_client.query(f"SELECT event_id, entity_id, event_time, is_anomaly FROM {DATASET}.merged", settings=settings)
    expected = set()
    for _, events in merged.sort_values(["event_time", "event_id"]).groupby("entity_id"):
        flags = first_of_episodes(events.is_anomaly.to_numpy(dtype=bool), schemas.load(DATASET).detector.alert_quiet_events)
        expected |= set(events.event_id[flags])
    assert alerts == expected, "the alerts view and lakehouse/alerts.py disagree"
    return alerts


def test_alerts_are_first_alarms_of_episodes_across_the_boundary_and_after_a_late_event(settings):
    """metrics declares alert_quiet_events 48: an alarm is an alert when none of the entity's
    previous 48 events (by event time, across both layers) was an alarm."""
    assert schemas.load(DATASET).detector.alert_quiet_events == 48
    cpu = {f"cpu@{minute}" for minute in (5, 10, 60, 108, 125, 173)}
    events = _events(0, 200, "cpu") + _events(0, 200, "mem")
    _batch_run(settings, [e for e in events if e["event_time"] <= _at(119)], watermark=_at(119), alarms=frozenset(cpu | {"mem@0"}))
    _speed(settings, [e for e in events if e["event_time"] > _at(119)], alarms=frozenset(cpu | {"mem@199"}))
    # cpu: 5 starts an episode; 10 is 5 events after it; 60 is 50 after 10; 108 is 48 after 60
    # (the batch side), 125 is 17 after 108 (the speed side), 173 is 48 after 125. mem: the first
    # event, and one 199 events later.
    assert _alerts(settings) == {"cpu@5", "cpu@60", "mem@0", "mem@199"}
    # An event that arrives late between 125 and 173 puts 173 49 events after 125: an alert now.
    # The speed layer writes 173's row again with the new flag (a new pipeline run: its state is
    # seeded from the tables).
    late = {"event_id": "cpu@late", "entity_id": "cpu", "event_time": _at(130) + timedelta(seconds=30), "value": 1.0}
    _speed(settings, [late])
    assert _alerts(settings) == {"cpu@5", "cpu@60", "cpu@173", "mem@0", "mem@199"}
    hot = DeltaTable(settings.table_uri(DATASET, constants.HOT_SCORES)).to_pandas().set_index("event_id")
    assert hot.is_alert["cpu@173"] and not hot.is_alert["cpu@late"]
    # The view reads the flag: no window over the merged history.
    views.refresh(DATASET, settings)
    assert "OVER" not in trino_client.query(f"SHOW CREATE VIEW {DATASET}.alerts", settings=settings).iloc[0, 0]


def test_layers_register_their_tables_when_trino_serves_the_warehouse(settings, tmp_path):
    """The batch job and the speed pipeline get app.wiring.serving_refresh as their after-write hook: new tables and
    views appear without `lakehouse serve refresh`, and a Trino of another warehouse is left alone."""
    trino_client.execute(f"DROP VIEW IF EXISTS {DATASET}.merged", settings=settings)
    _speed(settings, _events(0, 3))
    serving_refresh(settings)(DATASET)
    answer = trino_client.query(f"SELECT count(*) AS n FROM {DATASET}.merged", settings=settings)
    assert answer.n[0] == 3
    # Another warehouse: the running Trino serves this one, so nothing is registered there.
    elsewhere = settings.model_copy(update={"warehouse": str(tmp_path / "other")})
    serving_refresh(elsewhere)(DATASET)
    assert not (tmp_path / "other" / "_trino_metastore").exists()


def test_speed_alerts_look_back_exactly_the_quiet_period_into_the_batch_side(settings):
    """The speed layer flags its rows from each entity's previous flags, the batch view's
    included: an alarm 48 events before the first speed row still silences it, one 49 events
    before does not."""
    events = _events(0, 130, "disk") + _events(0, 130, "net")
    batch = [e for e in events if e["event_time"] <= _at(119)]
    _batch_run(settings, batch, watermark=_at(119), alarms=frozenset({"disk@72", "net@71"}))
    _speed(settings, [e for e in events if e["event_time"] > _at(119)], alarms=frozenset({"disk@120", "net@120"}))
    assert _alerts(settings) == {"disk@72", "net@71", "net@120"}
