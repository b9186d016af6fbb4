"""Following Kafka without end on Flink: events keep arriving under load while the job runs, a
kill -9 midway loses and duplicates nothing (hot rows, landing, dead letters, alerts), the
accounting per partition matches the broker's offsets, idle entities' state expires and is seeded
again from the entity's current silver and hot rows, and SIGTERM stops the job cleanly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from confluent_kafka import Consumer
from deltalake import DeltaTable, write_deltalake

import schemas
from batch.job import run_batch
from lakehouse import constants, registry, storage
from lakehouse import generate as generator
from lakehouse.detectors import FittedModel
from lakehouse.features import compute_features
from lakehouse.settings import PROJECT_ROOT, get_settings
from schemas.rules import RecordValidator, parse_json_record
from speed import metrics
from speed import pipeline as speed_pipeline
from speed.kafka_source import plan_ranges
from speed.produce import produce
from speed.topics import create_topic

from fixtures_engines import make_sensor_inputs

pytestmark = [pytest.mark.kafka, pytest.mark.flink, pytest.mark.beam, pytest.mark.spark]

TTL_SECONDS = 3.0
# The load the job is killed under: events per second, for about 2 s.
LOAD_RATE = 1500.0
# A sensor the batch layer trained no model for: its events are landed and dead-lettered.
UNMODELLED = "sensor-900"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _follow(warehouse: str, topic: str, group: str, alerts: str, metrics_port: int, log_path) -> subprocess.Popen:
    # The pipeline's own entry point, as a deployment runs it: it starts no job server, so it is
    # pointed at the session's (a Flink cluster's job server would be named the same way).
    arguments = [
        sys.executable, "-m", "speed.pipeline", "--dataset", "sensor_events", "--kafka_topic", topic,
        "--kafka_group", group, "--alerts_topic", alerts, "--follow", "--runner", "FlinkRunner", "--max_batch_size", "200",
        "--job_endpoint", get_settings().flink_job_endpoint,
        "--state_ttl_seconds", str(TTL_SECONDS), "--metrics_port", str(metrics_port),
    ]
    environment = {**os.environ, "LAKEHOUSE_WAREHOUSE": warehouse}
    return subprocess.Popen(arguments, cwd=PROJECT_ROOT, env=environment, stdout=log_path.open("w"), stderr=subprocess.STDOUT)


def _wait_for(condition, what: str, process: subprocess.Popen, log_path, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the pipeline exited ({process.returncode}) while waiting for {what}:\n{log_path.read_text()[-3000:]}")
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}:\n{log_path.read_text()[-3000:]}")


def _hot_ids(settings) -> set[str]:
    uri = settings.table_uri("sensor_events", constants.HOT_SCORES)
    try:
        return set(DeltaTable(uri).to_pyarrow_table(columns=["event_id"]).column("event_id").to_pylist())
    except Exception:  # not created yet
        return set()


def _consume(settings, topic: str) -> list:
    """Every message of the topic, with its partition, offset and headers."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.partition.eof": True, "enable.auto.commit": False})
    consumer.subscribe([topic])
    messages, idle = [], 0
    while idle < 3:
        message = consumer.poll(1.0)
        if message is None or message.error():
            idle += 1
            continue
        idle = 0
        messages.append(message)
    consumer.close()
    return messages


def _unmodelled(records: list[dict], count: int) -> list[dict]:
    """Valid events of a sensor without a model, at the times of the last `count` events."""
    return [{**record, "event_id": uuid.uuid4().hex, "entity_id": UNMODELLED} for record in records[-count:]]


def _append_to_silver(settings, entity: str, like: dict, times: list) -> list[dict]:
    """New silver rows of an entity, one per time, with values apart from `like`'s; one commit."""
    uri = settings.table_uri("sensor_events", constants.SILVER)
    table = DeltaTable(uri)
    schema = pa.schema(table.schema().to_arrow())
    rows = [
        {"event_id": uuid.uuid4().hex, "entity_id": entity, "event_time": moment.to_pydatetime(), "temperature": like["temperature"] + 20 + index % 3,
         "pressure": like["pressure"], "vibration": like["vibration"], "status": like["status"], "source_file": "test:fresh",
         "event_date": moment.date(), "event_month": moment.date().replace(day=1), "run_id": "test", "ingested_at": datetime.now(timezone.utc)}
        for index, moment in enumerate(times)
    ]
    write_deltalake(uri, pa.Table.from_pylist(rows, schema=schema), mode="append")
    return rows


def _outcome_of(dataset, validator: RecordValidator, message) -> str:
    """What the speed layer must make of one message, by the rules it applies."""
    source = f"kafka://{message.topic()}/{message.partition()}@{message.offset()}"
    record, _, _ = parse_json_record(message.value().decode(), source)
    if record is None or validator.validate(record, source_file=source)[1]:
        return "dead_letter"
    return "unknown_entity" if record[dataset.entity] == UNMODELLED else "scored"


def test_following_kafka_on_flink_survives_a_kill_under_load_and_expires_idle_state(kafka_broker, flink_job_server, spark, tmp_path):
    settings = get_settings().model_copy(update={"warehouse": str(tmp_path / "warehouse")})
    inputs = make_sensor_inputs(tmp_path, sensors=4, days=2.0, seed=41, interval_minutes=1)
    run_batch("sensor_events", [str(path) for path in inputs.history_files], settings=settings, spark=spark)
    reference = settings.model_copy(update={"warehouse": str(tmp_path / "reference")})
    shutil.copytree(settings.warehouse, reference.warehouse)

    dataset = schemas.load("sensor_events")
    topic, group, alerts = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("follow", "group", "alerts"))
    create_topic(topic, partitions=2, settings=settings)
    records = inputs.recent.records
    head = len(records) // 5
    # The load: the rest of the recent events, with a sensor without a model among them.
    unmodelled = _unmodelled([record for record in records if record["event_id"] not in inputs.recent.bad], 40)
    load = []
    for chunk, extra in zip(np.array_split(np.arange(head, len(records)), len(unmodelled)), unmodelled):
        load += [records[index] for index in chunk] + [extra]
    parts = [generator.write_json_lines(records[:head], tmp_path / "head.jsonl"), generator.write_json_lines(load, tmp_path / "load.jsonl")]
    scored_ids = {record["event_id"] for record in records} - set(inputs.recent.bad)
    landed_ids = scored_ids | {record["event_id"] for record in unmodelled}
    head_ids = {record["event_id"] for record in records[:head]} - set(inputs.recent.bad)
    produce(dataset, [parts[0]], topic, settings=settings)

    port = _free_port()
    first_log = tmp_path / "first.log"
    first = _follow(settings.warehouse, topic, group, alerts, port, first_log)
    try:
        # The first events are scored by a job that keeps running.
        _wait_for(lambda: head_ids <= _hot_ids(settings), "the first events in the hot table", first, first_log)
        # The load arrives while it runs, and the job is killed while it is being produced: once
        # it has committed some of it, or after a second of it (the job is reading it by then,
        # though a busy machine may delay its commits).
        producer = threading.Thread(target=produce, args=(dataset, [parts[1]], topic), kwargs={"rate": LOAD_RATE, "settings": settings})
        producer.start()
        deadline = time.monotonic() + 1.0
        while len(_hot_ids(settings)) <= len(head_ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        under_load = producer.is_alive()
        os.kill(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()
    producer.join()
    assert under_load, "the load was over before the kill: nothing was tested under load"
    assert len(_hot_ids(settings)) < len(scored_ids), "the kill came after the last event; nothing was tested"
    restart = {item.partition: item.start for item in plan_ranges(settings.kafka_bootstrap, topic, group)}

    second_log = tmp_path / "second.log"
    second = _follow(settings.warehouse, topic, group, alerts, port, second_log)
    try:
        _wait_for(lambda: _hot_ids(settings) >= scored_ids, "every valid event after the restart", second, second_log)

        # Every output of every record is durable, so the group's offsets reach the end of each partition.
        def caught_up() -> bool:
            return all(item.start == item.end for item in plan_ranges(settings.kafka_bootstrap, topic, group))

        _wait_for(caught_up, "the committed offsets at the end of the topic", second, second_log)
        # The accounting of the restarted job, per partition: the records it counted by outcome
        # add up to the offsets the broker says it moved over, and match what each message is.
        messages = _consume(settings, topic)
        validator = RecordValidator(dataset)
        expected = {}
        for message in messages:
            if message.offset() >= restart[message.partition()]:
                key = (message.partition(), _outcome_of(dataset, validator, message))
                expected[key] = expected.get(key, 0) + 1
        ends = {item.partition: item.end for item in plan_ranges(settings.kafka_bootstrap, topic, group)}
        for partition, start in restart.items():
            found = {outcome: metrics.scrape(port, "lakehouse_speed_records_done_total", topic=topic, partition=str(partition), outcome=outcome)
                     for outcome in ("scored", "dead_letter", "unknown_entity", "gap")}
            assert sum(found.values()) == ends[partition] - start
            assert found == {outcome: expected.get((partition, outcome), 0) for outcome in found}
        # Silence: every entity's state expires after the TTL, while the job keeps running.
        _wait_for(lambda: metrics.scrape(port, "lakehouse_speed_entity_state_expired_total") >= 5, "state expiry", second, second_log, timeout=60)
        # The alert flags' state too, by the keyed step's timer: no row comes in the silence. Its
        # entities are the four sensors with a model (the fifth's events are dead letters).
        _wait_for(lambda: metrics.scrape(port, "lakehouse_speed_alert_state_expired_total") >= 4, "alert state expiry", second, second_log,
                  timeout=60)
        assert metrics.scrape(port, "lakehouse_speed_kafka_lag_messages") == 0

        # Meanwhile silver gets newer events of one sensor: its next event is seeded from them
        # (and its hot rows), not from what the job read when it started. They are appended with
        # delta-rs, as one commit like a batch run's MERGE: a Spark run costs minutes on a busy
        # machine, and this is about what the speed layer reads.
        entity = "sensor-000"
        live = [record for record in records if record["entity_id"] == entity and record["event_id"] in scored_ids]
        last = pd.Timestamp(live[-1]["event_time"])
        fresh = _append_to_silver(settings, entity, live[-1], [last + timedelta(minutes=step) for step in range(1, 31)])
        following = {**live[-1], "event_id": uuid.uuid4().hex, "temperature": live[-1]["temperature"] + 21,
                     "event_time": (last + timedelta(minutes=31)).strftime("%Y-%m-%dT%H:%M:%SZ")}
        produce(dataset, [generator.write_json_lines([following], tmp_path / "following.jsonl")], topic, settings=settings)
        _wait_for(lambda: following["event_id"] in _hot_ids(settings), "the sensor's next event", second, second_log)
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            returncode = second.wait(timeout=60)
        except subprocess.TimeoutExpired:
            second.kill()
            raise
    assert returncode == 0, second_log.read_text()[-3000:]

    hot = DeltaTable(settings.table_uri("sensor_events", constants.HOT_SCORES)).to_pandas()
    assert hot.event_id.is_unique and set(hot.event_id) == scored_ids | {following["event_id"]}
    landing = DeltaTable(settings.table_uri("sensor_events", constants.LANDING)).to_pandas()
    assert landing.event_id.is_unique and set(landing.event_id) == landed_ids | {following["event_id"]}
    # Each rejected message once, though the restart read some of them again: the invalid ones
    # and the unmodelled sensor's.
    quarantine = DeltaTable(settings.table_uri(constants.SYSTEM_SCHEMA, constants.QUARANTINE)).to_pandas()
    quarantine = quarantine[quarantine.layer == constants.LAYER_SPEED]
    rejected = {f"kafka://{m.topic()}/{m.partition()}@{m.offset()}" for m in messages if _outcome_of(dataset, validator, m) != "scored"}
    assert quarantine.source.is_unique and set(quarantine.source) == rejected

    # Alerts: every anomaly in the hot table was published with its score; none is invented; a
    # repeat (a record read again after the kill) has the same alert_id and the same content,
    # so a consumer drops it.
    copies: dict[str, list[dict]] = {}
    for message in _consume(settings, alerts):
        body = json.loads(message.value())
        assert dict(message.headers())["alert_id"].decode() == body["alert_id"]
        body.pop("scored_at")
        copies.setdefault(body["alert_id"], []).append(body)
    assert all(copy == group[0] for group in copies.values() for copy in group)
    published = {(group[0]["event_id"], group[0]["score"]) for group in copies.values()}
    anomalies = hot[hot.is_anomaly]
    assert len(anomalies) > 0 and set(zip(anomalies.event_id, anomalies.score)) <= published
    assert {event_id for event_id, _ in published} <= set(hot.event_id)
    read_again = sum(1 for message in messages if message.offset() >= restart[message.partition()])
    assert sum(len(group) - 1 for group in copies.values()) <= read_again

    # After its state expired, the sensor's next event has the features batch computes from
    # silver (now with the new events) and the hot table, scored by the model the row names.
    row = hot[hot.event_id == following["event_id"]].iloc[0]
    silver = DeltaTable(settings.table_uri("sensor_events", constants.SILVER)).to_pandas()
    names = dataset.features.fields
    history = (
        pd.concat([silver[silver.entity_id == entity], hot[(hot.entity_id == entity) & (hot.event_id != following["event_id"])]])
        .drop_duplicates("event_id").sort_values(["event_time", "event_id"])
    )
    when = np.array([np.datetime64(pd.Timestamp(following["event_time"]).tz_localize(None), "us")])
    values = np.array([[following[name] for name in names]], dtype=np.float64)
    models = registry.list_models(settings, "sensor_events")
    used = models[(models.version == row.model_version) & (models.entity_id == entity)]
    model = FittedModel.from_bytes(storage.read_bytes(used.artifact_uri.iloc[0]))
    expected_score = model.score(compute_features(dataset, values, when, history[names].to_numpy(np.float64)))[0][0]
    stale = history[~history.event_id.isin({record["event_id"] for record in fresh})]
    stale_score = model.score(compute_features(dataset, values, when, stale[names].to_numpy(np.float64)))[0][0]
    assert row.score == pytest.approx(expected_score, abs=1e-9) and stale_score != pytest.approx(expected_score, abs=1e-6)

    # Killed and restarted, the stream still scores like one uninterrupted bounded run.
    replay = generator.write_json_lines(records[:head] + load, tmp_path / "replay.jsonl")
    speed_pipeline.run(["--dataset", "sensor_events", "--input", str(replay)], settings=reference)
    expected = DeltaTable(reference.table_uri("sensor_events", constants.HOT_SCORES)).to_pandas().set_index("event_id").sort_index()
    found = hot[hot.event_id.isin(scored_ids)].set_index("event_id").sort_index()
    assert list(found.index) == list(expected.index)
    np.testing.assert_allclose(found.score.to_numpy(), expected.score.to_numpy(), rtol=0, atol=1e-12)
