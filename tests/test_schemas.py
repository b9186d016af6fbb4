"""Dataset declarations and the rules derived from them (no engines needed)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

import schemas
from lakehouse.errors import ConfigurationError
from schemas.declaration import Dataset
from schemas.engines import arrow_schema, spark_ddl, trino_columns
from schemas.rules import RecordValidator, rules_for


def test_every_declared_dataset_loads():
    assert set(schemas.available()) >= {"metrics", "sensor_events"}
    for name in schemas.available():
        assert schemas.load(name).name == name


def test_unknown_dataset_names_the_declared_ones():
    with pytest.raises(ConfigurationError, match="sensor_events"):
        schemas.load("no_such_dataset")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"event_time": "status"}, "must have type timestamp"),
        ({"entity": "missing"}, "not a declared field"),
        ({"features": {"fields": ["status"]}}, "numeric field"),
    ],
)
def test_invalid_declarations_say_what_is_wrong(change, message):
    document = schemas.load("sensor_events").model_dump()
    document.update(change)
    with pytest.raises(ValueError, match=message):
        Dataset.model_validate(document)


@pytest.mark.parametrize(
    "check, message",
    [
        ({"name": "c", "description": "d", "when": {"field": "nope", "allowed": ["x"]}, "then": {"field": "vibration", "minimum": 1}}, "unknown field 'nope'"),
        ({"name": "c", "description": "d", "when": {"field": "status", "minimum": 1}, "then": {"field": "vibration", "minimum": 1}}, "need a numeric type"),
        ({"name": "c", "description": "d", "when": {"field": "status", "allowed": ["x"], "pattern": "y"}, "then": {"field": "vibration", "minimum": 1}}, "exactly one of"),
    ],
)
def test_invalid_checks_say_what_is_wrong(check, message):
    document = schemas.load("sensor_events").model_dump()
    document["checks"] = [check]
    with pytest.raises(ValueError, match=message):
        Dataset.model_validate(document)


def test_a_check_fires_only_when_its_condition_holds_on_valid_values():
    validator = RecordValidator(schemas.load("sensor_events"))
    assert [f.rule for f in validator.validate({**GOOD, "status": "fault", "vibration": 2})[1]] == ["check.fault_shows_in_vibration"]
    assert validator.validate({**GOOD, "status": "fault", "vibration": 4})[1] == []
    assert validator.validate({**GOOD, "status": "ok", "vibration": 2})[1] == []
    assert [f.rule for f in validator.validate({**GOOD, "status": "fault", "vibration": "x"})[1]] == ["vibration.type"]


def test_range_on_a_string_field_is_refused():
    document = schemas.load("sensor_events").model_dump()
    document["fields"][-1]["minimum"] = 1
    with pytest.raises(ValueError, match="minimum/maximum need a numeric type"):
        Dataset.model_validate(document)


def test_engine_schemas_derive_from_one_declaration():
    dataset = schemas.load("sensor_events")
    names = [field.name for field in dataset.fields]
    assert arrow_schema(dataset).names == names
    assert spark_ddl(dataset).startswith("event_id STRING NOT NULL, entity_id STRING NOT NULL, event_time TIMESTAMP")
    assert trino_columns(dataset)["event_time"] == "timestamp(3) with time zone"


def test_rules_are_named_field_dot_kind():
    names = [rule.name for rule in rules_for(schemas.load("sensor_events"))]
    assert "temperature.range" in names and "status.allowed_values" in names and "entity_id.pattern" in names


GOOD = {
    "event_id": "0123456789abcdef0123456789abcdef",
    "entity_id": "sensor-001",
    "event_time": "2024-01-01T00:05:00Z",
    "temperature": 61.5,
    "pressure": "5.1",
    "vibration": 2,
    "status": "ok",
}


def test_a_good_record_is_typed():
    typed, failures = RecordValidator(schemas.load("sensor_events")).validate(GOOD)
    assert failures == []
    assert typed["event_time"] == datetime(2024, 1, 1, 0, 5, tzinfo=timezone.utc)
    assert typed["pressure"] == 5.1 and typed["vibration"] == 2.0


@pytest.mark.parametrize(
    "change, rule",
    [
        ({"temperature": "hot"}, "temperature.type"),
        ({"temperature": "NaN"}, "temperature.type"),
        ({"temperature": 1e400}, "temperature.type"),
        ({"temperature": 500}, "temperature.range"),
        ({"status": "OK"}, "status.allowed_values"),
        ({"entity_id": "sensor-1"}, "entity_id.pattern"),
        ({"event_time": "2024-02-30T00:00:00Z"}, "event_time.type"),
        ({"event_time": "yesterday"}, "event_time.type"),
        ({"pressure": ""}, "pressure.not_null"),
        ({"vibration": None}, "vibration.not_null"),
        ({"vibration": True}, "vibration.type"),
    ],
)
def test_each_bad_value_fails_exactly_its_rule(change, rule):
    _, failures = RecordValidator(schemas.load("sensor_events")).validate({**GOOD, **change})
    assert [failure.rule for failure in failures] == [rule]
    message = failures[0].message
    assert GOOD["event_id"] in message and rule in message and f"'{rule.split('.')[0]}'" in message


def test_derived_fields_come_from_the_file_name_and_other_fields():
    validator = RecordValidator(schemas.load("metrics"))
    typed, failures = validator.validate({"timestamp": "2014-04-01 00:05:00", "value": "3.5"}, "s3://bucket/nab/cpu_util.csv")
    assert failures == []
    assert typed["entity_id"] == "cpu_util"
    assert typed["event_id"] == "cpu_util@2014-04-01 00:05:00"


def test_event_times_keep_millisecond_precision():
    typed, _ = RecordValidator(schemas.load("sensor_events")).validate({**GOOD, "event_time": "2024-01-01T00:05:00.250999+01:00"})
    assert typed["event_time"] == datetime(2023, 12, 31, 23, 5, 0, 250000, tzinfo=timezone.utc)


def test_a_detector_override_chooses_per_entity():
    from schemas.declaration import DetectorSpec

    spec = DetectorSpec.model_validate(
        {"name": "knn", "params": {"n_neighbors": 5}, "overrides": [{"match": "art_.*", "name": "iforest"}, {"match": ".*traffic.*", "params": {"n_neighbors": 1}}]}
    )
    assert spec.for_entity("art_daily_jumpsup").name == "iforest"
    assert spec.for_entity("art_daily_jumpsup").params == {}  # not the KNN parameters
    assert spec.for_entity("speed_traffic_1").model_dump(include={"name", "params"}) == {"name": "knn", "params": {"n_neighbors": 1}}
    assert spec.for_entity("nyc_taxi") is spec
    with pytest.raises(ValueError, match="need `per: entity`"):
        DetectorSpec.model_validate({"per": "dataset", "overrides": [{"match": "x", "name": "hbos"}]})
    with pytest.raises(ValueError):
        DetectorSpec.model_validate({"overrides": [{"match": "(", "name": "hbos"}]})


def test_an_id_built_from_a_time_uses_the_normalised_instant():
    validator = RecordValidator(schemas.load("metrics"))
    ids = {
        validator.texts({"timestamp": text, "value": "1"}, "cpu.csv")["event_id"]
        for text in ("2024-01-01 00:00:00", "2024-01-01T00:00:00Z", "2024-01-01T01:00:00+01:00", " 2024-01-01T00:00:00.000 ")
    }
    assert ids == {"cpu@2024-01-01 00:00:00"}
    assert validator.texts({"timestamp": "2024-01-01T00:00:00.250Z"}, "cpu.csv")["event_id"] == "cpu@2024-01-01 00:00:00.250"
    # Not a timestamp: the text as written (the record fails event_time.type anyway).
    assert validator.texts({"timestamp": "yesterday"}, "cpu.csv")["event_id"] == "cpu@yesterday"


def test_the_duplicates_policy_is_declared_first_by_default_or_latest():
    document = schemas.load("metrics").model_dump()
    assert schemas.load("metrics").duplicates == "first"
    assert Dataset.model_validate({**document, "duplicates": "latest"}).duplicates == "latest"
    with pytest.raises(ValueError, match="duplicates"):
        Dataset.model_validate({**document, "duplicates": "newest"})


# Values that break, or nearly break, each kind of rule: missing, blank, spaced, wrong type,
# non-finite, out of range, not allowed, not matching, and good ones written another way.
_CANDIDATES = [None, "", "  ", " 5.1 ", "5.1", 5, -1, 250, 1e400, "NaN", "Infinity", True, "true", "abc", "fault", "ok",
               "OK", "sensor-001", "sensor-1", "0123456789abcdef0123456789abcdef", "2024-01-01T00:05:00Z",
               "2024-02-30 00:00:00", " 2024-01-01 00:05:00\t", 2.5, "3", "1e3", "+.5", "-0"]


@pytest.mark.parametrize("name, good, source", [
    ("sensor_events", {**GOOD, "status": "fault", "vibration": 4}, None),
    ("metrics", {"timestamp": "2014-04-01 00:05:00", "value": "3.5"}, "s3://bucket/nab/cpu_util.csv"),
])
def test_the_compiled_pass_and_the_rule_walk_give_one_verdict(name, good, source):
    """The speed layer accepts a record by a compiled pass and names the broken rules by a rule walk
    (schemas/rules.py): on every mutated record, the pass accepts exactly when the walk finds no
    broken rule, and both sides occur."""
    import random

    validator = RecordValidator(schemas.load(name))
    random_ = random.Random(7)
    keys = list(good)
    verdicts = {True: 0, False: 0}
    for _ in range(4000):
        record = dict(good)
        for key in random_.sample(keys, random_.choice((1, 1, 2))):
            record[key] = random_.choice(_CANDIDATES)
        texts = validator.texts(record, source)
        accepted = validator.typed_if_valid(texts) is not None
        failures = validator.failures(texts)
        assert accepted == (failures == []), (record, failures)
        verdicts[accepted] += 1
    assert min(verdicts.values()) > 100, verdicts
