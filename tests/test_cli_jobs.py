"""The `lakehouse` commands that write, each run for real on a warehouse of its own (the session's
demo warehouse stays as the end-to-end tests expect it): generate, batch run, batch schedule
--once, batch maintain, speed run (a replay file, and Kafka), speed produce.

`generate` runs through the console script; the Spark and Beam commands run in this process
(typer's CliRunner), on the session's Spark session, which saves a JVM start per command.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner

from app.cli import app
from lakehouse import generate as generator
from lakehouse.settings import get_settings

from cli_helpers import lakehouse, ok, table_rows

DATASET = "sensor_events"
SENSORS, DAYS, SEED = 2, 3.0, 7


@contextmanager
def _warehouse(path: Path):
    """The process's settings point at `path` while a command runs in it."""
    previous = os.environ["LAKEHOUSE_WAREHOUSE"]
    os.environ["LAKEHOUSE_WAREHOUSE"] = str(path)
    get_settings.cache_clear()
    try:
        yield get_settings()
    finally:
        os.environ["LAKEHOUSE_WAREHOUSE"] = previous
        get_settings.cache_clear()


def invoke(warehouse: Path, *arguments: str) -> str:
    """Run a command in this process on `warehouse`; its output (stdout and stderr) when it succeeds."""
    with _warehouse(warehouse):
        result = CliRunner().invoke(app, list(arguments), prog_name="lakehouse")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def _lines(path: Path | str) -> int:
    with open(path) as lines:
        return sum(1 for _ in lines)


def _rows(warehouse: Path, table: str) -> int:
    return len(DeltaTable(str(warehouse / DATASET / table)).to_pyarrow_table())


def _measures(output: str) -> dict[str, str]:
    """measure -> value from a two-column table (a batch run's counts)."""
    return {row[0]: row[1] for row in table_rows(output) if len(row) == 2}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    """`lakehouse generate`: 3 days of 2 sensors, the first two for batch runs, the rest replays."""
    out = tmp_path_factory.mktemp("generated")
    result = ok(lakehouse("generate", "--out", str(out), "--sensors", str(SENSORS), "--days", str(DAYS), "--seed", str(SEED)))
    return {name: Path(path) for name, path in json.loads(result.stdout).items()}


@pytest.fixture(scope="module")
def own_warehouse(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-jobs") / "warehouse"


@pytest.fixture(scope="module")
def first_run(spark, generated, own_warehouse) -> str:
    """`lakehouse batch run` over the first day: silver, models v1 and the batch view."""
    return invoke(own_warehouse, "batch", "run", "-d", DATASET, "-i", str(generated["batch_day1"]))


def test_generate_writes_batch_days_replays_and_labels(generated):
    assert sorted(generated) == ["batch_day1", "batch_day2", "labels", "replay_a", "replay_b"]
    assert all(path.is_file() for path in generated.values())
    events = generator.generate(generator.GeneratorConfig(sensors=SENSORS, days=DAYS, seed=SEED))
    labels = pd.read_csv(generated["labels"])
    assert len(labels) == (events.anomaly != "").sum() > 0
    assert set(labels.entity_id) <= {f"sensor-{sensor:03d}" for sensor in range(SENSORS)}
    # A batch day holds that day's events (288 five-minute periods per sensor), give or take the
    # planted duplicates and broken records.
    for name in ("batch_day1", "batch_day2"):
        assert abs(_lines(generated[name]) - SENSORS * 288) <= 0.02 * SENSORS * 288
    # Each replay ends with a record a crash truncated.
    for name in ("replay_a", "replay_b"):
        assert generated[name].read_text().splitlines()[-1].startswith('{"event_id": "truncated-by-a-crash"')


@pytest.mark.spark
def test_batch_run_prints_the_counts_it_wrote(first_run, generated, own_warehouse):
    measures = _measures(first_run)
    assert int(measures["input_rows"]) == _lines(generated["batch_day1"])
    assert int(measures["input_rows"]) == int(measures["valid_rows"]) + int(measures["quarantined_rows"]) + int(measures["duplicate_rows"])
    assert int(measures["silver_rows"]) == _rows(own_warehouse, "silver") > 0
    assert int(measures["scored_rows"]) == _rows(own_warehouse, "batch_scores")
    assert measures["model_version"] == "1"


@pytest.mark.spark
def test_batch_schedule_once_runs_the_unread_files_then_nothing(first_run, generated, own_warehouse):
    from batch import run_log

    landing = str(generated["batch_day1"].parent / "*.jsonl")
    output = invoke(own_warehouse, "batch", "schedule", "-d", DATASET, "-i", landing, "--once")
    assert "1 new input file(s)" in output
    measures = _measures(output)
    assert int(measures["input_rows"]) == _lines(generated["batch_day2"])
    with _warehouse(own_warehouse) as settings:
        runs = run_log.runs(settings, DATASET)
    assert list(runs.status) == ["succeeded", "succeeded"]
    assert json.loads(runs.inputs.iloc[-1]) == [str(generated["batch_day2"])]
    assert measures["model_version"] == "2"

    again = invoke(own_warehouse, "batch", "schedule", "-d", DATASET, "-i", landing, "--once")
    assert "no new input files" in again and not table_rows(again)
    with _warehouse(own_warehouse) as settings:
        assert len(run_log.runs(settings, DATASET)) == 2


@pytest.mark.spark
def test_batch_maintain_compacts_and_keeps_every_row(first_run, own_warehouse):
    rows = {table: _rows(own_warehouse, table) for table in ("silver", "batch_scores")}
    output = invoke(own_warehouse, "batch", "maintain", "-d", DATASET)
    outcomes = {Path(row[0]).name: [int(cell) for cell in row[1:]] for row in table_rows(output) if len(row) == 5}
    assert {"silver", "batch_scores", "quarantine"} <= set(outcomes)
    for table, (before, after, compacted, vacuumed) in outcomes.items():
        uri = own_warehouse / DATASET / table if table != "quarantine" else own_warehouse / "lakehouse" / table
        assert after == len(DeltaTable(str(uri)).file_uris()) <= before
        assert compacted >= 0 and vacuumed == 0  # every file is younger than the 168 hours kept
    assert {table: _rows(own_warehouse, table) for table in rows} == rows


def _speed_counts(output: str) -> dict[str, int]:
    return {name: int(value) for name, value in re.findall(r"(\w+)=(\d+)", output)}


@pytest.mark.spark
@pytest.mark.beam
def test_speed_run_scores_a_replay_file_into_the_hot_table(first_run, generated, own_warehouse):
    counts = _speed_counts(invoke(own_warehouse, "speed", "run", "-d", DATASET, "--input", str(generated["replay_a"])))
    # Every line is scored or a dead letter (the truncated one at least).
    assert counts["scored"] + counts["dead_letters"] == _lines(generated["replay_a"])
    assert counts["dead_letters"] >= 1 and counts["committed"] > 0
    assert _rows(own_warehouse, "hot_scores") >= counts["committed"]


def _messages_in(topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": get_settings().kafka_bootstrap, "group.id": f"count-{uuid.uuid4()}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        offsets = [consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10) for partition in partitions]
    finally:
        consumer.close()
    return sum(high - low for low, high in offsets)


@pytest.mark.spark
@pytest.mark.beam
@pytest.mark.kafka
def test_speed_produce_then_run_reads_the_topic(first_run, generated, own_warehouse, kafka_broker):
    from lakehouse.constants import events_topic

    topic = events_topic(DATASET)
    sent = invoke(own_warehouse, "speed", "produce", "-d", DATASET, "--input", str(generated["replay_b"]))
    assert f"sent {_lines(generated['replay_b'])} messages to {topic}" in sent
    # A consumer group of its own reads the whole topic (the session's demo may have sent to it too).
    group = f"cli-test-{uuid.uuid4().hex[:8]}"
    counts = _speed_counts(invoke(own_warehouse, "speed", "run", "-d", DATASET, "--kafka", "--kafka_group", group))
    assert counts["scored"] + counts["dead_letters"] == _messages_in(topic)
    hot = set(DeltaTable(str(own_warehouse / DATASET / "hot_scores")).to_pandas(columns=["event_id"]).event_id)
    assert _valid_event_ids(generated["replay_b"]) <= hot


def _valid_event_ids(path: Path) -> set[str]:
    """The event ids of a file's records that pass the declared rules."""
    from schemas import load
    from schemas.rules import RecordValidator

    validator = RecordValidator(load(DATASET))
    valid = set()
    for line in open(path):
        try:
            typed, _ = validator.validate(json.loads(line))
        except json.JSONDecodeError:
            continue
        if typed:
            valid.add(typed["event_id"])
    assert valid
    return valid
