"""Batch (Spark) and speed (RecordValidator) reject the same records for the same reasons."""

from __future__ import annotations

import json

import pytest

import schemas
from batch.ingest import read_raw
from batch.validation import FAILED_RULES, validate
from schemas.rules import RecordValidator

pytestmark = pytest.mark.spark

BASE = {
    "entity_id": "sensor-001",
    "event_time": "2024-01-01T00:05:00Z",
    "temperature": 61.5,
    "pressure": 5.1,
    "vibration": 2.0,
    "status": "ok",
}
# Values chosen at the edges where two engines most easily disagree.
VARIANTS = [
    {},
    {"temperature": "61.5"},
    {"temperature": "6.15e1"},
    {"temperature": 1e20},
    {"temperature": "1e400"},
    {"temperature": "NaN"},
    {"temperature": "Infinity"},
    {"temperature": " 61.5"},
    {"temperature": "61,5"},
    {"temperature": ""},
    {"temperature": None},
    {"temperature": True},
    {"temperature": [1, 2]},
    {"temperature": -50},
    {"temperature": -50.0001},
    {"temperature": 200},
    {"pressure": 0},
    {"pressure": -0.0},
    {"pressure": 20.000001},
    {"status": "OK"},
    {"status": ""},
    {"status": 3},
    {"entity_id": "sensor-0011"},
    {"entity_id": "sensor-000011"},
    {"entity_id": "xsensor-001"},
    {"entity_id": 1},
    {"event_time": "2024-01-01 00:05:00"},
    {"event_time": "2024-01-01T00:05:00.123+02:00"},
    {"event_time": "2024-01-01"},
    {"event_time": "2024-02-30T00:00:00Z"},
    {"event_time": "2024-01-01T25:00:00Z"},
    {"event_time": "01/01/2024 00:05"},
    {"event_time": 1704067500},
    {"event_id": None},
    {"event_id": "ABCDEF0123456789ABCDEF0123456789"},
    {"temperature": "hot", "pressure": 99, "status": "bad", "vibration": None},
    # The declared cross-field check: a fault must show in the vibration.
    {"status": "fault", "vibration": 2.0},
    {"status": "fault", "vibration": 7.5},
    {"status": "fault", "vibration": "x"},
    {"status": "fault", "vibration": 200},
    {"status": "ok", "vibration": 0.5},
    # Line ends and other terminators: a typed value is trimmed of CR and LF; a string field keeps
    # them, and Java's `$` matched before a final \r, \u0085 or \u2028 where Python's does not.
    {"temperature": "61.5\r"},
    {"temperature": "\r\n61.5\n"},
    {"temperature": "61.5\u0085"},
    {"pressure": "5\u2028"},
    {"event_time": "2024-01-01T00:05:00Z\r"},
    {"entity_id": "sensor-001\r"},
    {"entity_id": "sensor-001\n"},
    {"entity_id": "sensor-001\u2029"},
    {"event_id": "0" * 31 + "a\r"},
]


def _records():
    records = []
    for index, change in enumerate(VARIANTS):
        record = {"event_id": f"{index:032x}", **BASE, **change}
        records.append({key: value for key, value in record.items()})
    # A record missing a field entirely, not just null.
    missing = {"event_id": f"{len(records):032x}", **BASE}
    del missing["vibration"]
    records.append(missing)
    return records


def test_spark_and_the_record_validator_fail_the_same_rules(spark, tmp_path):
    dataset = schemas.load("sensor_events")
    records = _records()
    path = tmp_path / "tricky.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    validated = validate(read_raw(spark, dataset, [str(path)]), dataset)
    batch_rules = {
        row["_raw"]: list(row[FAILED_RULES])
        for row in validated.select("_raw", FAILED_RULES).collect()
    }
    assert len(batch_rules) == len(records)
    rows = validated.select(FAILED_RULES, "_raw").collect()
    validator = RecordValidator(dataset)
    speed = [[failure.rule for failure in validator.validate(record)[1]] for record in records]
    # Spark keeps input order for a single small file; match rows to records by position.
    batch = [list(row[FAILED_RULES]) for row in rows]
    mismatches = [
        (records[index], batch[index], speed[index]) for index in range(len(records)) if batch[index] != speed[index]
    ]
    assert not mismatches, "\n".join(f"{record}: batch {b} speed {s}" for record, b, s in mismatches)
    assert speed[VARIANTS.index({"status": "fault", "vibration": 2.0})] == ["check.fault_shows_in_vibration"]
    verdict = {json.dumps(change): speed[index] for index, change in enumerate(VARIANTS)}
    assert verdict[json.dumps({"temperature": "\r\n61.5\n"})] == []  # trimmed
    assert verdict[json.dumps({"temperature": "61.5\u0085"})] == ["temperature.type"]
    assert verdict[json.dumps({"entity_id": "sensor-001\r"})] == ["entity_id.pattern"]  # a string field is kept as written
    # The cases are not trivially all valid or all invalid.
    assert 5 < sum(1 for rules in speed if rules) < len(records) - 3


def test_spark_and_the_record_validator_type_values_alike(spark, tmp_path):
    dataset = schemas.load("sensor_events")
    records = [record for record in _records()]
    validator = RecordValidator(dataset)
    valid = [(record, typed) for record in records if (typed := validator.validate(record)[0]) is not None]
    path = tmp_path / "valid.jsonl"
    path.write_text("\n".join(json.dumps(record) for record, _ in valid) + "\n")
    rows = validate(read_raw(spark, dataset, [str(path)]), dataset).collect()
    assert len(rows) == len(valid)
    for row, (_, typed) in zip(rows, valid):
        for field in dataset.fields:
            expected = typed[field.name]
            actual = row[field.name]
            if field.type == "timestamp":
                actual = actual.replace(tzinfo=expected.tzinfo)  # Spark gives naive UTC (session zone)
            assert actual == expected, (field.name, actual, expected)


# Lines that are not one JSON object, or barely are (#15): each is one record in both layers,
# rejected with the same record-level rule, or read as an object like any other.
LINES = [
    "[1, 2]",
    "[]",
    "3",
    '"sensor-001"',
    "null",
    "true",
    '{"event_id": "00",',  # a truncated last line
    "{}",
    "\ufeff" + json.dumps({**BASE, "event_id": "f" * 32}),  # a byte-order mark inside a line is not one at file start
    json.dumps({**BASE, "event_id": "e" * 32, "temperature": " 61.5 ", "pressure": "\t5.1"}),  # trimmed: valid
    json.dumps({**BASE, "event_id": "d" * 32, "status": " ok"}),  # a string field is kept as written
    '{"event_id": "' + "c" * 32 + '", "entity_id": "sensor-001", "event_time": "2024-01-01T00:05:00Z", '
    '"temperature": NaN, "pressure": Infinity, "vibration": -Infinity, "status": "ok"}',
    json.dumps({**BASE, "event_id": "b" * 32, "temperature": 10**400}),  # a huge integer
]


def _speed_rules(dataset, text: str) -> list[str]:
    """The speed layer's verdict on one line: [] when valid, else its dead letter's rules."""
    import apache_beam as beam

    from speed.validate import ParseAndValidate

    step = ParseAndValidate(dataset)
    step.setup()
    [output] = list(step._validate("topic/0", text))
    return list(output.value["failed_rules"]) if isinstance(output, beam.pvalue.TaggedOutput) else []


def test_lines_that_are_not_one_object_are_one_record_with_the_same_rule_in_both_layers(spark, tmp_path):
    dataset = schemas.load("sensor_events")
    path = tmp_path / "lines.jsonl"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    rows = validate(read_raw(spark, dataset, [str(path)]), dataset).select("_line_number", "_raw", FAILED_RULES).collect()
    batch = {row["_line_number"]: list(row[FAILED_RULES]) for row in rows}
    assert sorted(batch) == list(range(1, len(LINES) + 1))  # one record per line, none lost or split
    speed = {number: _speed_rules(dataset, line) for number, line in enumerate(LINES, start=1)}
    assert batch == speed
    assert speed[1] == speed[2] == speed[3] == speed[5] == ["record.object"]
    assert speed[7] == ["record.json"]
    assert speed[10] == []  # spaces and tabs around typed values are trimmed
    assert speed[11] == ["status.allowed_values"]
    assert {row["_line_number"]: row["_raw"] for row in rows}[1] == "[1, 2]"  # the line as it arrived
