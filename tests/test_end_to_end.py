"""The whole Lambda cycle (`lakehouse demo`) on real Spark + Delta, Beam and Trino."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from deltalake import DeltaTable

from lakehouse import constants
from lakehouse.settings import get_settings
from serving import trino_client

pytestmark = [pytest.mark.e2e, pytest.mark.spark, pytest.mark.beam, pytest.mark.trino]


@pytest.fixture(scope="module")
def demo(trino_server, kafka_broker, spark):
    from lakehouse import demo as demo_module

    return demo_module.run(fresh=True, sensors=4, days=6.0)


def _valid_event_ids(files: dict) -> set[str]:
    from schemas import load
    from schemas.rules import RecordValidator

    validator = RecordValidator(load("sensor_events"))
    valid = set()
    for name, path in files.items():
        if name == "labels":
            continue
        for line in open(path):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            typed, _ = validator.validate(record)
            if typed:
                valid.add(typed["event_id"])
    return valid


def test_batch_runs_account_for_every_record(demo):
    for record in demo["batch"]:
        assert record.status == "succeeded"
        assert record.input_rows == record.valid_rows + record.quarantined_rows + record.duplicate_rows
        assert record.quarantined_rows > 0 and record.duplicate_rows > 0
    first, second = demo["batch"]
    assert second.watermark > first.watermark
    # Run 2 expired the hot rows of replay A that its watermark now covers.
    assert second.expired_hot_rows > 0
    assert second.model_version == first.model_version + 1


def test_every_kafka_message_is_scored_or_a_dead_letter(demo):
    for produced, result in zip(demo["produced"], demo["speed"]):
        assert produced == result.scored + result.dead_letters
        assert result.dead_letters > 0  # the planted bad records and the malformed line
    # Replay B's run read only the messages produced after replay A's run committed its offsets.
    assert len(demo["speed"]) == 2


def test_the_merged_view_answers_every_valid_event_once_from_both_layers(demo):
    merged = trino_client.query('SELECT event_id, event_time, layer, watermark FROM delta.sensor_events.merged')
    assert merged.event_id.is_unique
    assert set(merged.event_id) == _valid_event_ids(demo["files"])
    layers = merged.layer.value_counts()
    assert layers["batch"] > 0 and layers["speed"] > 0


def test_the_merged_view_switches_layers_at_the_watermark(demo):
    watermark = pd.Timestamp(demo["batch"][-1].watermark)
    merged = trino_client.query('SELECT event_time, layer, watermark FROM delta.sensor_events.merged')
    assert (merged.watermark == watermark).all()
    batch = merged[merged.layer == "batch"]
    speed = merged[merged.layer == "speed"]
    assert batch.event_time.max() == watermark
    assert speed.event_time.min() > watermark


def test_planted_spikes_are_flagged_in_the_merged_view(demo):
    flagged = demo["flagged"]
    assert len(flagged) == len(demo["spikes"]) == 8
    assert set(flagged.layer) == {"batch", "speed"}
    assert flagged.is_anomaly.all()


def test_an_event_reads_back_the_same_through_trino(demo):
    settings = get_settings()
    silver = DeltaTable(settings.table_uri("sensor_events", constants.SILVER)).to_pandas()
    event = silver.sort_values("event_id").iloc[0]
    through_trino = trino_client.query(
        "SELECT event_id, entity_id, event_time, temperature, pressure, vibration, status "
        "FROM delta.sensor_events.silver WHERE event_id = ?",
        [event.event_id],
    ).iloc[0]
    for column in ("event_id", "entity_id", "status", "temperature", "pressure", "vibration"):
        assert through_trino[column] == event[column]
    assert pd.Timestamp(through_trino.event_time) == pd.Timestamp(event.event_time)


def test_quarantine_through_trino_names_the_failed_rules_of_both_layers(demo):
    quarantine = demo["quarantine"]
    assert set(quarantine.layer) == {"batch", "speed"}
    assert "record.json" in set(quarantine.rule)
    assert {"temperature.type", "pressure.range", "status.allowed_values"} <= set(quarantine.rule)


def test_trino_sees_silver_with_the_types_the_declaration_derives(demo):
    from schemas import load
    from schemas.engines import trino_columns

    described = trino_client.query("DESCRIBE delta.sensor_events.silver")
    seen = dict(zip(described.Column, described.Type))
    for column, trino_type in trino_columns(load("sensor_events")).items():
        assert seen[column] == trino_type, column
