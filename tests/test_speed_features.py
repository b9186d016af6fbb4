"""The speed layer's stateful features under out-of-order arrival, on Beam's local runner."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

import schemas
from lakehouse import system_tables
from lakehouse.features import compute_features
from speed.pipeline import LOCAL_RUNNER
from speed.stateful_features import ComputeFeatures

pytestmark = pytest.mark.beam


def _events(count: int) -> list[dict]:
    rng = np.random.default_rng(5)
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    return [
        {
            "event_id": f"{index:032x}",
            "entity_id": "sensor-001",
            "event_time": start + timedelta(minutes=5 * index),
            "temperature": float(rng.normal(60, 2)),
            "pressure": float(rng.normal(5, 0.1)),
            "vibration": float(rng.normal(2, 0.1)),
            "status": "ok",
        }
        for index in range(count)
    ]


class _Collect(beam.DoFn):
    """Keeps every emission in arrival order (the last one per event is what the hot table keeps)."""

    def process(self, featured):
        for element in featured:
            yield element["event_id"], element["_features"].tolist()


def _batches(events: list[dict], sizes: list[int]) -> list[tuple[int, list[dict]]]:
    """The events in arrival order as (shard, batch) elements of the given sizes (cycled): batches
    of several events take the in-order path, late ones the per-event one."""
    batches, start, turn = [], 0, 0
    while start < len(events):
        size = sizes[turn % len(sizes)]
        batches.append((0, events[start : start + size]))
        start, turn = start + size, turn + 1
    return batches


def test_late_events_end_with_the_batch_layers_features(warehouse, tmp_path):
    dataset = schemas.load("sensor_events")
    events = _events(120)
    stretch = events[40:70]
    random.Random(3).shuffle(stretch)  # a stretch of events arrives out of order
    arrival = events[:40] + stretch + events[70:]
    output = tmp_path / "features"
    options = PipelineOptions(["--runner", LOCAL_RUNNER])
    with beam.Pipeline(options=options) as pipeline:
        (
            pipeline
            | beam.Create(_batches(arrival, [1, 7, 3, 12]), reshuffle=False)
            | beam.ParDo(ComputeFeatures(dataset, warehouse))
            | beam.ParDo(_Collect())
            | beam.Map(repr)
            | beam.io.WriteToText(str(output), shard_name_template="")
        )
    emitted = [eval(line) for line in open(output)]  # noqa: S307 - our own repr output
    final = {}
    for event_id, features in emitted:
        final[event_id] = features
    assert len(emitted) > len(events), "late arrivals must revise later events"
    values = np.array([[event[name] for name in dataset.features.fields] for event in events])
    times = np.array([np.datetime64(event["event_time"].replace(tzinfo=None), "us") for event in events])
    expected = compute_features(dataset, values, times)
    actual = np.array([final[event["event_id"]] for event in events])
    np.testing.assert_array_equal(actual, expected)


def test_an_event_resent_after_it_left_the_state_takes_its_history_from_the_tables(warehouse, tmp_path):
    """A re-sent old event (producer retry, replayed topic) must not disturb the events after it."""
    import pyarrow as pa

    from speed import tables

    dataset = schemas.load("sensor_events")
    events = _events(120)
    # The hot table already holds every event, as after the first pass of a stream.
    hot = [{**event, "score": 0.0, "is_anomaly": False, "model_version": 1, "scored_at": event["event_time"], "revision": 1}
           for event in events]
    # Written as the pipeline writes it (a MERGE, which stores strings as string_view).
    hot_uri = tables.hot_table_uri(warehouse, dataset)
    tables.ensure_table(hot_uri, system_tables.hot_scores_schema(dataset))
    tables.upsert_by_key(hot_uri, pa.Table.from_pylist(hot, schema=system_tables.hot_scores_schema(dataset)), "event_id")
    resent = [events[10], events[11]]
    output = tmp_path / "features"
    with beam.Pipeline(options=PipelineOptions(["--runner", LOCAL_RUNNER])) as pipeline:
        (
            pipeline
            # The hot table was read at start-up: the stream continues after event 119.
            | beam.Create(_batches(events[100:] + resent, [5, 1]), reshuffle=False)
            | beam.ParDo(ComputeFeatures(dataset, warehouse))
            | beam.ParDo(_Collect())
            | beam.Map(repr)
            | beam.io.WriteToText(str(output), shard_name_template="")
        )
    emitted = [eval(line) for line in open(output)]  # noqa: S307 - our own repr output
    # No event after them was revised, and the re-sent ones have the batch layer's features.
    assert [event_id for event_id, _ in emitted] == [event["event_id"] for event in events[100:] + resent]
    values = np.array([[event[name] for name in dataset.features.fields] for event in events])
    times = np.array([np.datetime64(event["event_time"].replace(tzinfo=None), "us") for event in events])
    expected = dict(zip([event["event_id"] for event in events], compute_features(dataset, values, times).tolist()))
    for event_id, features in emitted:
        np.testing.assert_array_equal(features, expected[event_id])


def test_events_the_hot_table_holds_are_replays_after_a_restart(warehouse, tmp_path):
    """A killed job committed rows whose Kafka offsets had not moved: its successor reads them again.

    State is seeded from the tables, so those events are replays (upserted by key), not new events
    (NEW rows are appended blindly: the hot table would hold them twice); the events after them are new.
    """
    import pyarrow as pa

    from speed import tables
    from speed.carried_fields import NEW

    dataset = schemas.load("sensor_events")
    events = _events(130)
    committed = events[:120]
    hot = [{**event, "score": 0.0, "is_anomaly": False, "model_version": 1, "scored_at": event["event_time"], "revision": 1}
           for event in committed]
    hot_uri = tables.hot_table_uri(warehouse, dataset)
    tables.ensure_table(hot_uri, system_tables.hot_scores_schema(dataset))
    tables.upsert_by_key(hot_uri, pa.Table.from_pylist(hot, schema=system_tables.hot_scores_schema(dataset)), "event_id")
    output = tmp_path / "flags"
    with beam.Pipeline(options=PipelineOptions(["--runner", LOCAL_RUNNER])) as pipeline:
        (
            pipeline
            # The successor resumes at the last committed offset: events 110 to 119 again, then new ones.
            | beam.Create(_batches(events[110:], [6, 4, 10]), reshuffle=False)
            | beam.ParDo(ComputeFeatures(dataset, warehouse))
            | beam.FlatMap(lambda featured: [(row["event_id"], bool(row.get(NEW))) for row in featured])
            | beam.Map(repr)
            | beam.io.WriteToText(str(output), shard_name_template="")
        )
    emitted = dict(eval(line) for line in open(output))  # noqa: S307 - our own repr output
    assert set(emitted) == {event["event_id"] for event in events[110:]}
    assert {event_id for event_id, new in emitted.items() if new} == {event["event_id"] for event in events[120:]}


def test_entities_an_element_seeds_from_the_tables_are_read_in_one_pass(warehouse, tmp_path, caplog):
    """Entities the start-up history holds too few events of are read from the tables before their
    first event; an element's such entities in one read (one by one, a block of entities back
    from expiry stalled the soak), with the features the batch layer gives them."""
    import logging

    import pyarrow as pa

    from speed import tables

    dataset = schemas.load("sensor_events")
    entities = ["sensor-001", "sensor-002", "sensor-003"]
    series = {name: [{**event, "entity_id": name, "event_id": f"{name}-{event['event_id']}"} for event in _events(40)]
              for name in entities}
    # 30 events each in the hot table: fewer than state holds (2 x window = 48).
    hot = [{**event, "score": 0.0, "is_anomaly": False, "model_version": 1, "scored_at": event["event_time"], "revision": 1}
           for name in entities for event in series[name][:30]]
    hot_uri = tables.hot_table_uri(warehouse, dataset)
    tables.ensure_table(hot_uri, system_tables.hot_scores_schema(dataset))
    tables.upsert_by_key(hot_uri, pa.Table.from_pylist(hot, schema=system_tables.hot_scores_schema(dataset)), "event_id")
    arriving = [series[name][index] for index in range(30, 40) for name in entities]
    output = tmp_path / "features"
    caplog.set_level(logging.INFO, logger="speed.stateful_features")
    with beam.Pipeline(options=PipelineOptions(["--runner", LOCAL_RUNNER])) as pipeline:
        (
            pipeline
            | beam.Create([(0, arriving)], reshuffle=False)
            | beam.ParDo(ComputeFeatures(dataset, warehouse))
            | beam.ParDo(_Collect())
            | beam.Map(repr)
            | beam.io.WriteToText(str(output), shard_name_template="")
        )
    reads = [record.getMessage() for record in caplog.records if "reading the histor" in record.getMessage()]
    assert len(reads) == 1 and "3 entities" in reads[0], reads
    emitted = dict(eval(line) for line in open(output))  # noqa: S307 - our own repr output
    for name in entities:
        events = series[name]
        values = np.array([[event[field] for field in dataset.features.fields] for event in events])
        times = np.array([np.datetime64(event["event_time"].replace(tzinfo=None), "us") for event in events])
        expected = compute_features(dataset, values, times)
        np.testing.assert_array_equal(np.array([emitted[event["event_id"]] for event in events[30:]]), expected[30:])
