"""The speed layer's stateful features under out-of-order arrival, on Beam's local runner."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

import schemas
from lakehouse.features import compute_features
from speed.pipeline import LOCAL_RUNNER
from speed.transforms import ComputeFeatures

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

    def process(self, element):
        yield element["event_id"], element["_features"].tolist()


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
            | beam.Create([(event["entity_id"], event) for event in arrival], reshuffle=False)
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
