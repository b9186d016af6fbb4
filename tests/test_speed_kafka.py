"""The speed layer reading a real Kafka broker: offsets, replays and crashes leave each event once."""

from __future__ import annotations

import json
import uuid

import pytest
from deltalake import DeltaTable

import schemas
from batch.job import run_batch
from lakehouse import constants
from speed.topics import create_topic
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
    # The accounting: the range's size, from the broker's offsets, against the records counted
    # where their outputs were acknowledged (checked per partition by the run itself).
    assert result.read == sent and result.gaps == 0
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


def test_a_record_whose_outputs_are_not_all_durable_fails_the_run_and_keeps_its_offset(kafka_broker, trained, monkeypatch):
    """The accounting can fail: a landing commit that acknowledges one record fewer than it was
    given leaves an offset of the range undone, and the run stops before committing offsets."""
    from lakehouse.errors import CountMismatchError
    from speed import acks, sinks
    from speed.kafka_source import plan_ranges

    settings, inputs = trained
    topic, group = f"test-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    create_topic(topic, partitions=2, settings=settings)
    sent = produce(schemas.load("sensor_events"), [inputs.recent_file], topic, settings=settings)
    complete = sinks._record_acks

    def one_lost(batch, kind, source):
        found = list(complete(batch, kind, source))
        return found[1:] if kind == acks.LANDING else found

    monkeypatch.setattr(sinks, "_record_acks", one_lost)
    with pytest.raises(CountMismatchError, match="records read differ"):
        _run(settings, topic, group)
    monkeypatch.undo()
    # No offset was committed: everything is to be read again.
    assert sum(item.end - item.start for item in plan_ranges(settings.kafka_bootstrap, topic, group)) == sent
    # Run again whole, every record is accounted and the offsets move.
    result = _run(settings, topic, group)
    assert result.read == sent and result.scored + result.dead_letters == sent
    assert all(item.start == item.end for item in plan_ranges(settings.kafka_bootstrap, topic, group))


def _consume_all(settings, topic: str) -> list[dict]:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.partition.eof": True})
    consumer.subscribe([topic])
    messages, idle = [], 0
    while idle < 5:
        message = consumer.poll(1.0)
        if message is None or message.error():
            idle += 1
            continue
        idle = 0
        messages.append(json.loads(message.value()))
    consumer.close()
    return messages


def test_kafka_run_lands_events_publishes_alerts_and_reports_metrics(kafka_broker, trained, spark, tmp_path):
    from speed import metrics

    settings, inputs = trained
    settings = settings.model_copy(update={"warehouse": str(tmp_path / "warehouse")})
    # A warehouse of its own, with the trained models copied in through a fresh batch run.
    run_batch("sensor_events", [str(path) for path in inputs.history_files], settings=settings, spark=spark)
    topic, alerts = f"test-{uuid.uuid4().hex[:8]}", f"alerts-{uuid.uuid4().hex[:8]}"
    create_topic(topic, partitions=2, settings=settings)
    dataset = schemas.load("sensor_events")
    sent = produce(dataset, [inputs.recent_file], topic, settings=settings)

    def sample(name: str, **labels) -> float:
        return metrics.REGISTRY.get_sample_value(name, {"dataset": "sensor_events", **labels}) or 0.0

    before = {
        "valid": sample("lakehouse_speed_events_total", outcome="valid"),
        "dead": sample("lakehouse_speed_events_total", outcome="dead_letter"),
        "latency": sample("lakehouse_speed_arrival_to_commit_seconds_count"),
    }
    metrics_file = tmp_path / "speed.prom"
    result = speed_pipeline.run(
        ["--dataset", "sensor_events", "--kafka_topic", topic, "--alerts_topic", alerts, "--metrics_file", str(metrics_file)],
        settings=settings,
    )
    hot = DeltaTable(settings.table_uri("sensor_events", constants.HOT_SCORES)).to_pandas()

    # Every valid event is landed once, as validated, for the batch layer.
    landing = DeltaTable(settings.table_uri("sensor_events", constants.LANDING)).to_pandas()
    assert landing.event_id.is_unique and set(landing.event_id) == set(hot.event_id)
    # Every anomaly is on the alerts topic, with its score.
    published = _consume_all(settings, alerts)
    assert {alert["event_id"] for alert in published} == set(hot.event_id[hot.is_anomaly])
    assert result.anomalies > 0 and all(alert["score"] > 0 for alert in published)
    # Metrics: the counts match the run, and each committed row has a latency observation.
    valid = sample("lakehouse_speed_events_total", outcome="valid") - before["valid"]
    dead = sample("lakehouse_speed_events_total", outcome="dead_letter") - before["dead"]
    # Repeated events are valid each time they are read, and land once.
    assert valid + dead == sent and valid == len(landing) + inputs.recent.duplicates
    assert sample("lakehouse_speed_arrival_to_commit_seconds_count") - before["latency"] >= len(hot)
    text = metrics_file.read_text()
    assert "lakehouse_speed_arrival_to_commit_seconds_bucket" in text and "lakehouse_speed_kafka_lag_messages" in text
    assert metrics.REGISTRY.get_sample_value("lakehouse_speed_kafka_lag_messages", {"topic": topic, "partition": "0"}) == 0

    # The batch layer takes the landing table as input: the landed events reach silver.
    record = run_batch("sensor_events", ["landing"], settings=settings, spark=spark)
    assert record.input_rows == len(landing) and record.quarantined_rows == 0
    silver = DeltaTable(settings.table_uri("sensor_events", constants.SILVER)).to_pandas()
    assert set(landing.event_id) <= set(silver.event_id)
