"""Alerts: the first alarm of each episode (lakehouse/alerts.py), on cases worked out by hand.
The serving layer's `alerts` view is checked against the same function on Trino
(tests/test_merged_view.py)."""

from __future__ import annotations

import numpy as np
import pytest

from lakehouse.alerts import first_of_episodes


def _flags(alarms: list[int], count: int = 20) -> np.ndarray:
    flags = np.zeros(count, dtype=bool)
    flags[alarms] = True
    return flags


def _alerts(alarms: list[int], quiet: int, count: int = 20) -> list[int]:
    return np.flatnonzero(first_of_episodes(_flags(alarms, count), quiet)).tolist()


def test_an_alarm_within_the_quiet_period_of_an_earlier_one_is_not_an_alert():
    # quiet 3: 2 starts an episode; 4 and 5 are within 3 events of an alarm; 9 is 4 after 5.
    assert _alerts([2, 4, 5, 9], quiet=3) == [2, 9]


def test_the_quiet_period_counts_from_the_latest_alarm_not_the_latest_alert():
    # A run of alarms one apart stays one episode however long it lasts.
    assert _alerts(list(range(3, 15)), quiet=2) == [3]
    # Gaps of exactly `quiet` events keep the episode going; one more starts a new one.
    assert _alerts([0, 3, 6, 10], quiet=3) == [0, 10]


def test_the_first_event_can_alert_and_no_quiet_period_keeps_every_alarm():
    assert _alerts([0, 1, 7], quiet=5) == [0, 7]
    assert _alerts([0, 1, 7], quiet=0) == [0, 1, 7]


@pytest.mark.parametrize("quiet", [0, 1, 4, 48])
def test_no_alarm_no_alert_and_alerts_are_alarms(quiet):
    generator = np.random.default_rng(quiet)
    flags = generator.random(500) < 0.05
    alerts = first_of_episodes(flags, quiet)
    assert not alerts[~flags].any()
    assert not first_of_episodes(np.zeros(30, dtype=bool), quiet).any()
    assert first_of_episodes(np.zeros(0, dtype=bool), quiet).shape == (0,)


# --- the speed layer's flag (speed/alert_flags.py), on Beam's local runner ---


def _scored(entity: str, index: int, alarm: bool, revision: int) -> dict:
    from datetime import datetime, timedelta, timezone

    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    return {
        "event_id": f"{entity}-{index:04d}", "entity_id": entity, "event_time": start + timedelta(minutes=5 * index),
        "temperature": 60.0 + index, "pressure": 5.0, "vibration": 2.0, "score": 0.9 if alarm else 0.1,
        "is_anomaly": alarm, "model_version": 1, "scored_at": start, "revision": revision,
    }


class _Collect:
    """Every row the step emits, as (event id, revision, is_alert, is_anomaly)."""

    @staticmethod
    def rows(rows):
        for row in rows:
            yield row["event_id"], row["revision"], row["is_alert"], row["is_anomaly"]


def _run_flag_alerts(warehouse, tmp_path, elements) -> list[tuple]:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    import schemas
    from speed.alert_flags import FlagAlerts
    from speed.pipeline import LOCAL_RUNNER

    output = tmp_path / "flags"
    with beam.Pipeline(options=PipelineOptions(["--runner", LOCAL_RUNNER])) as pipeline:
        (
            pipeline
            | beam.Create(elements, reshuffle=False)
            | beam.ParDo(FlagAlerts(schemas.load("sensor_events"), warehouse))
            | beam.FlatMap(_Collect.rows)
            | beam.Map(repr)
            | beam.io.WriteToText(str(output), shard_name_template="")
        )
    return [eval(line) for line in open(output)]  # noqa: S307 - our own repr output


@pytest.mark.beam
def test_the_speed_layer_flags_alerts_as_the_batch_rule_does_after_a_late_event(warehouse, tmp_path):
    """sensor_events: quiet 12, window 24. Event 70 arrives 39 events late, an alarm; the stateful features
    step revises the 24 events after it (71..94), and their new scores clear the alarm of 93. The
    alarm of 105 (beyond the revised rows) was 12 events after 93, not an alert; it is now 35
    after 70, an alert: the step must write its row again. Another entity's events interleave."""
    import schemas

    assert schemas.load("sensor_events").detector.alert_quiet_events == 12
    first = {60, 80, 93, 105, 140}
    final = {60, 70, 80, 105, 140}  # 70 late; 93 cleared by its revision
    other = {3, 4, 30}
    # 70 arrives once 109 has (39 events late: within the 2 x window events the features step keeps).
    elements = []
    for start in range(0, 150, 10):
        rows = [_scored("sensor-001", index, index in first, 1000 + index) for index in range(start, start + 10) if index != 70]
        rows += [_scored("sensor-002", index, index in other, 1000 + index) for index in range(start, start + 10) if index < 40]
        elements.append((0, rows))
        if start == 100:
            late = [_scored("sensor-001", 70, True, 5000)]
            late += [_scored("sensor-001", index, index in final, 5000 + index) for index in range(71, 95)]
            elements.append((0, late))
    # A replay of the newest rows changes nothing.
    elements.append((0, [_scored("sensor-001", index, index in first, 1000 + index) for index in range(145, 150)]))
    emitted = _run_flag_alerts(warehouse, tmp_path, elements)
    newest: dict[str, tuple] = {}
    for event_id, revision, alert, alarm in emitted:
        if event_id not in newest or revision >= newest[event_id][0]:
            newest[event_id] = (revision, alert, alarm)
    for entity, alarms, count in (("sensor-001", final, 150), ("sensor-002", other, 40)):
        ids = [f"{entity}-{index:04d}" for index in range(count)]
        assert [newest[event_id][2] for event_id in ids] == [index in alarms for index in range(count)]
        expected = first_of_episodes(np.array([index in alarms for index in range(count)]), 12)
        assert [newest[event_id][1] for event_id in ids] == expected.tolist(), entity
    # 105 was written again, with a revision above its first row's, though no step revised it.
    rewrites = [row for row in emitted if row[0] == "sensor-001-0105"]
    assert [alert for _, _, alert, _ in rewrites] == [False, True] and rewrites[1][1] > rewrites[0][1]
    assert np.flatnonzero(first_of_episodes(np.array([index in final for index in range(150)]), 12)).tolist() == [60, 105, 140]


class _CollectSurprises:
    """Every row the step emits, as (event id, revision, surprise, likelihood state's count and peak)."""

    @staticmethod
    def rows(rows):
        for row in rows:
            state = row["likelihood"]
            yield row["event_id"], row["revision"], row["surprise"], *((None, None) if state is None else (state["count"], state["peak"]))


@pytest.mark.beam
def test_the_speed_layer_writes_the_surprise_the_batch_fold_gives_after_a_late_event(warehouse, tmp_path):
    """The calibrated score (lakehouse/likelihood.py) through the same step: event 30 arrives 39
    events late and the features step revises 31..54 with new relative scores. The newest row of
    every event must hold the surprise and state of one fold over the final relative scores in
    event order, as the batch job computes it; the rows after the revised ones (55..69) change
    only through the fold, so the step must write them again."""
    import math

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    import schemas
    from lakehouse import likelihood
    from speed.alert_flags import FlagAlerts
    from speed.pipeline import LOCAL_RUNNER

    def relative(index: int, version: int) -> float:
        return 0.4 * math.sin(index * 0.7 + version) + (3.0 if index in (12, 30, 61) else 0.0)

    def row(index: int, version: int, revision: int) -> dict:
        scored = _scored("sensor-001", index, relative(index, version) > 1, revision)
        return {**scored, "_relative": relative(index, version)}

    elements = []
    for start in range(0, 70, 10):
        elements.append((0, [row(index, 0, 1000 + index) for index in range(start, start + 10) if index != 30]))
        if start == 60:
            elements.append((0, [row(30, 1, 5000), *[row(index, 1, 5000 + index) for index in range(31, 55)]]))
    dataset = schemas.load("sensor_events")
    output = tmp_path / "surprises"
    with beam.Pipeline(options=PipelineOptions(["--runner", LOCAL_RUNNER])) as pipeline:
        (
            pipeline
            | beam.Create(elements, reshuffle=False)
            | beam.ParDo(FlagAlerts(dataset, warehouse))
            | beam.FlatMap(_CollectSurprises.rows)
            | beam.Map(repr)
            | beam.io.WriteToText(str(output), shard_name_template="")
        )
    emitted = [eval(line) for line in open(output)]  # noqa: S307 - our own repr output
    newest: dict[str, tuple] = {}
    for event_id, revision, surprise, count, peak in emitted:
        if event_id not in newest or revision >= newest[event_id][0]:
            newest[event_id] = (revision, surprise, count, peak)
    settings = likelihood.settings_of(dataset.detector.likelihood)
    final = [relative(index, 1 if 30 <= index <= 54 else 0) for index in range(70)]
    folded = likelihood.fold_arrays(np.array(final), settings, likelihood.initial_state(settings, dataset.detector.contamination))
    expected = folded.surprises
    ids = [f"sensor-001-{index:04d}" for index in range(70)]
    assert [newest[event_id][1] for event_id in ids] == expected.tolist()
    assert [newest[event_id][2] for event_id in ids] == folded.count.tolist()
    assert [newest[event_id][3] for event_id in ids] == folded.peak.tolist()
    # Rows after the revised ones were written again, with a higher revision.
    assert all(newest[f"sensor-001-{index:04d}"][0] > 1000 + index for index in range(55, 70))
    assert max(expected) > 3, "the planted jumps are surprising"
