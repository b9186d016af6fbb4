"""Following Kafka without end on Flink: events keep arriving while the job runs, a kill -9 midway
loses and duplicates nothing, idle entities' state expires, and SIGTERM stops the job cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import numpy as np
import pytest
from deltalake import DeltaTable

import schemas
from batch.job import run_batch
from lakehouse import constants
from lakehouse import generate as generator
from speed.topics import create_topic
from lakehouse.settings import PROJECT_ROOT, get_settings
from speed import pipeline as speed_pipeline
from speed.kafka_source import plan_ranges
from speed.produce import produce

from fixtures_engines import make_sensor_inputs

pytestmark = [pytest.mark.kafka, pytest.mark.flink, pytest.mark.beam, pytest.mark.spark]

TTL_SECONDS = 3.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _follow(warehouse: str, topic: str, group: str, metrics_port: int, log_path) -> subprocess.Popen:
    # The pipeline's own entry point, as a deployment runs it: it starts no job server, so it is
    # pointed at the session's (a Flink cluster's job server would be named the same way).
    arguments = [
        sys.executable, "-m", "speed.pipeline", "--dataset", "sensor_events", "--kafka_topic", topic,
        "--kafka_group", group, "--follow", "--runner", "FlinkRunner", "--max_batch_size", "200",
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


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_following_kafka_on_flink_survives_a_kill_and_expires_idle_state(kafka_broker, flink_job_server, spark, tmp_path):
    settings = get_settings().model_copy(update={"warehouse": str(tmp_path / "warehouse")})
    inputs = make_sensor_inputs(tmp_path, sensors=3, days=3.0, seed=41)
    run_batch("sensor_events", [str(path) for path in inputs.history_files], settings=settings, spark=spark)
    reference = settings.model_copy(update={"warehouse": str(tmp_path / "reference")})
    shutil.copytree(settings.warehouse, reference.warehouse)

    dataset = schemas.load("sensor_events")
    topic, group = f"follow-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    create_topic(topic, partitions=2, settings=settings)
    records = inputs.recent.records
    middle = len(records) // 2
    halves = [generator.write_json_lines(part, tmp_path / f"half-{index}.jsonl")
              for index, part in enumerate((records[:middle], records[middle:]))]
    valid_ids = {record["event_id"] for record in records} - set(inputs.recent.bad)
    first_ids = {record["event_id"] for record in records[:middle]} - set(inputs.recent.bad)
    produce(dataset, [halves[0]], topic, settings=settings)

    port = _free_port()
    first_log = tmp_path / "first.log"
    first = _follow(settings.warehouse, topic, group, port, first_log)
    try:
        # The first half is scored by a job that keeps running.
        _wait_for(lambda: first_ids <= _hot_ids(settings), "the first half in the hot table", first, first_log)
        # The second half arrives while it runs, and the job is killed while it is reading it.
        producer = threading.Thread(target=produce, args=(dataset, [halves[1]], topic), kwargs={"rate": 60.0, "settings": settings})
        producer.start()
        _wait_for(lambda: len(_hot_ids(settings)) > len(first_ids) + 20, "second-half rows", first, first_log)
    finally:
        first.kill()
        first.wait()
    producer.join()
    killed_with = len(_hot_ids(settings))
    assert killed_with < len(valid_ids), "the kill came after the last event; nothing was tested"

    second_log = tmp_path / "second.log"
    second = _follow(settings.warehouse, topic, group, port, second_log)
    try:
        _wait_for(lambda: _hot_ids(settings) >= valid_ids, "every valid event after the restart", second, second_log)

        # Every record reached its sink, so the group's offsets reach the end of each partition.
        def caught_up() -> bool:
            return all(item.start == item.end for item in plan_ranges(settings.kafka_bootstrap, topic, group))

        _wait_for(caught_up, "the committed offsets at the end of the topic", second, second_log)
        # Silence: every entity's state expires after the TTL, while the job keeps running.
        _wait_for(lambda: _metric(port, "lakehouse_speed_entity_state_expired_total") >= 3, "state expiry", second, second_log, timeout=60)
        assert _metric(port, "lakehouse_speed_kafka_lag_messages") == 0
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            returncode = second.wait(timeout=60)
        except subprocess.TimeoutExpired:
            second.kill()
            raise
    assert returncode == 0, second_log.read_text()[-3000:]

    hot = DeltaTable(settings.table_uri("sensor_events", constants.HOT_SCORES)).to_pandas()
    assert hot.event_id.is_unique and set(hot.event_id) == valid_ids
    landing = DeltaTable(settings.table_uri("sensor_events", constants.LANDING)).to_pandas()
    assert landing.event_id.is_unique and set(landing.event_id) == valid_ids
    quarantine = DeltaTable(settings.table_uri(constants.SYSTEM_SCHEMA, constants.QUARANTINE)).to_pandas()
    quarantine = quarantine[quarantine.layer == constants.LAYER_SPEED]
    # Each rejected message once, though the restart read some of them again.
    assert quarantine.source.is_unique and len(quarantine) >= len(inputs.recent.bad)
    assert set(quarantine.event_id.dropna()) <= set(inputs.recent.bad)

    # Killed and restarted, the stream still scores like one uninterrupted bounded run.
    speed_pipeline.run(["--dataset", "sensor_events", "--input", str(inputs.recent_file)], settings=reference)
    expected = DeltaTable(reference.table_uri("sensor_events", constants.HOT_SCORES)).to_pandas().set_index("event_id").sort_index()
    found = hot.set_index("event_id").sort_index()
    assert list(found.index) == list(expected.index)
    np.testing.assert_allclose(found.score.to_numpy(), expected.score.to_numpy(), rtol=0, atol=1e-12)
