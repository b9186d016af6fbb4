"""The speed layer reading a real Kafka broker: offsets, replays and crashes leave each event once."""

from __future__ import annotations

import uuid

import pytest
from deltalake import DeltaTable

import schemas
from batch.job import run_batch
from lakehouse import constants
from lakehouse.services.kafka import create_topic
from speed import pipeline as speed_pipeline
from speed.produce import produce

from fixtures_engines import make_sensor_inputs

pytestmark = [pytest.mark.kafka, pytest.mark.beam, pytest.mark.spark]


@pytest.fixture(scope="module")
def trained(spark, tmp_path_factory):
    from lakehouse.settings import get_settings

    folder = tmp_path_factory.mktemp("kafka")
    settings = get_settings().model_copy(update={"warehouse": str(folder / "warehouse")})
    inputs = make_sensor_inputs(folder, seed=23)
    run_batch("sensor_events", [str(path) for path in inputs.history_files], settings=settings, spark=spark)
    return settings, inputs


def _hot(settings):
    return DeltaTable(settings.table_uri("sensor_events", constants.HOT_SCORES)).to_pandas()


def _run(settings, topic, group):
    return speed_pipeline.run(["--dataset", "sensor_events", "--kafka_topic", topic, "--kafka_group", group], settings=settings)


def test_kafka_to_hot_table_exactly_once_across_reruns_and_a_crash(kafka_broker, trained, monkeypatch):
    settings, inputs = trained
    topic, group = f"test-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    create_topic(topic, partitions=2, settings=settings)
    dataset = schemas.load("sensor_events")
    sent = produce(dataset, [inputs.recent_file], topic, settings=settings)
    assert sent == len(inputs.recent.records)

    # A crash after the hot table was written but before the offsets were committed...
    def crash(*args, **kwargs):
        raise RuntimeError("killed before committing offsets")

    monkeypatch.setattr(speed_pipeline, "commit_offsets", crash)
    with pytest.raises(RuntimeError, match="killed"):
        _run(settings, topic, group)
    monkeypatch.undo()
    first = _hot(settings)

    # ...means the restarted pipeline reads the same messages again, and upserts absorb them.
    result = _run(settings, topic, group)
    assert result.scored + result.dead_letters == sent
    hot = _hot(settings)
    valid_ids = {record["event_id"] for record in inputs.recent.records} - set(inputs.recent.bad)
    assert hot.event_id.is_unique and set(hot.event_id) == valid_ids
    assert len(first) == len(hot)

    # Committed offsets: a run with nothing new reads nothing.
    assert _run(settings, topic, group).scored == 0

    # A producer that re-sends everything (at-least-once delivery) duplicates nothing.
    produce(dataset, [inputs.recent_file], topic, settings=settings)
    again = _run(settings, topic, group)
    assert again.scored + again.dead_letters == sent
    replayed = _hot(settings)
    assert len(replayed) == len(hot) and replayed.event_id.is_unique
