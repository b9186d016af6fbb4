"""The batch job on real Spark with Delta: counts, quarantine, registry, batch view, idempotence."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from deltalake import DeltaTable

from batch import run_log
from batch.job import run_batch
import schemas
from lakehouse import constants, registry, system_tables
from lakehouse.alerts import first_of_episodes
from lakehouse.errors import LakehouseError

from fixtures_engines import delta_schema, make_sensor_inputs
from lakehouse import generate as generator

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def first_run(spark, tmp_path_factory):
    from lakehouse.settings import get_settings

    folder = tmp_path_factory.mktemp("batch")
    settings = get_settings().model_copy(update={"warehouse": str(folder / "warehouse")})
    inputs = make_sensor_inputs(folder)
    record = run_batch("sensor_events", [str(folder / "history" / "*.jsonl")], settings=settings, spark=spark)
    return settings, inputs, record


def _table(settings, schema, table) -> pd.DataFrame:
    return DeltaTable(settings.table_uri(schema, table)).to_pandas()


def test_every_input_record_is_valid_quarantined_or_a_duplicate(first_run):
    _, inputs, record = first_run
    assert record.status == "succeeded"
    assert record.input_rows == len(inputs.history.records)
    assert record.quarantined_rows == len(inputs.history.bad) > 0
    assert record.duplicate_rows == inputs.history.duplicates > 0
    assert record.input_rows == record.valid_rows + record.quarantined_rows + record.duplicate_rows


def test_silver_holds_each_valid_event_once(first_run):
    settings, inputs, record = first_run
    silver = _table(settings, "sensor_events", constants.SILVER)
    assert len(silver) == record.valid_rows == silver.event_id.nunique()
    assert set(silver.event_id).isdisjoint(inputs.history.bad)
    assert set(silver.columns) >= {"event_date", "event_month", "source_file", "run_id", "ingested_at"}
    assert DeltaTable(settings.table_uri("sensor_events", constants.SILVER)).metadata().partition_columns == ["event_month"]


def test_quarantine_keeps_each_rejected_record_with_the_rule_it_broke(first_run):
    settings, inputs, _ = first_run
    quarantine = _table(settings, constants.SYSTEM_SCHEMA, constants.QUARANTINE)
    assert len(quarantine) == len(inputs.history.bad)
    for row in quarantine.itertuples():
        original_id = next(event_id for event_id in inputs.history.bad if event_id in row.raw)
        assert list(row.failed_rules) == [inputs.history.bad[original_id]]
        assert row.layer == "batch" and row.dataset == "sensor_events"
        assert inputs.history.bad[original_id] in row.errors[0]


def test_the_tables_of_a_batch_run_are_the_declared_system_tables(first_run):
    settings, _, _ = first_run
    dataset = schemas.load("sensor_events")
    declared = {
        # Written by Spark.
        settings.table_uri(constants.SYSTEM_SCHEMA, constants.QUARANTINE): system_tables.QUARANTINE_SCHEMA,
        settings.table_uri(dataset.name, constants.BATCH_SCORES): system_tables.batch_scores_schema(dataset),
        # Written by delta-rs.
        run_log.table_uri(settings): system_tables.BATCH_RUNS_SCHEMA,
        registry.table_uri(settings): system_tables.MODELS_SCHEMA,
    }
    for uri, schema in declared.items():
        assert delta_schema(uri) == delta_schema(schema), uri


def test_spark_hashes_quarantined_records_as_the_speed_layer_does(first_run):
    settings, _, _ = first_run
    quarantine = _table(settings, constants.SYSTEM_SCHEMA, constants.QUARANTINE)
    assert len(quarantine) > 0
    for row in quarantine.itertuples():
        assert row.record_hash == system_tables.record_hash(row.raw, row.source)


def test_a_model_per_entity_is_registered(first_run):
    settings, _, record = first_run
    models = registry.list_models(settings, "sensor_events")
    assert sorted(models.entity_id) == ["sensor-000", "sensor-001", "sensor-002"]
    assert set(models.version) == {record.model_version}
    loaded = registry.load_latest(settings, "sensor_events")
    assert loaded["sensor-000"].model.threshold == pytest.approx(models.threshold.iloc[0])


def test_the_batch_view_scores_every_event_and_flags_the_planted_spikes(first_run):
    settings, inputs, record = first_run
    view = _table(settings, "sensor_events", constants.BATCH_SCORES)
    assert len(view) == record.valid_rows == record.scored_rows
    assert view.score.notna().all()
    labels = inputs.events.set_index("event_id").anomaly
    spikes = [event_id for event_id in view.event_id if labels.get(event_id) == "spike"]
    assert spikes, "the history should contain planted spikes"
    assert view.set_index("event_id").loc[spikes, "is_anomaly"].all()
    # Detection is selective: far fewer flags than events.
    assert view.is_anomaly.mean() < 0.05


def test_the_batch_view_flags_the_first_alarm_of_each_episode_as_lakehouse_alerts_does(first_run):
    settings, _, _ = first_run
    view = _table(settings, "sensor_events", constants.BATCH_SCORES).sort_values(["event_time", "event_id"])
    quiet = schemas.load("sensor_events").detector.alert_quiet_events
    assert quiet > 0
    for entity, events in view.groupby("entity_id"):
        expected = first_of_episodes(events.is_anomaly.to_numpy(dtype=bool), quiet)
        assert (events.is_alert.to_numpy(dtype=bool) == expected).all(), entity
    # Every alert is an alarm; an episode of several alarms raises one alert.
    assert 0 < view.is_alert.sum() <= view.is_anomaly.sum()
    assert not (view.is_alert & ~view.is_anomaly.astype(bool)).any()


def test_watermark_is_the_newest_valid_event_time(first_run):
    settings, _, record = first_run
    silver = _table(settings, "sensor_events", constants.SILVER)
    assert record.watermark == silver.event_time.max().to_pydatetime()
    assert run_log.current_watermark(settings, "sensor_events") == silver.event_time.max()


def test_rerunning_the_same_input_changes_no_table(first_run, spark):
    settings, inputs, first = first_run
    before = {name: len(_table(settings, "sensor_events", name)) for name in (constants.SILVER, constants.BATCH_SCORES)}
    quarantined_before = len(_table(settings, constants.SYSTEM_SCHEMA, constants.QUARANTINE))
    again = run_batch("sensor_events", first.inputs, settings=settings, spark=spark)
    assert again.valid_rows == 0
    assert again.duplicate_rows == first.valid_rows + first.duplicate_rows
    assert again.input_rows == again.valid_rows + again.quarantined_rows + again.duplicate_rows
    after = {name: len(_table(settings, "sensor_events", name)) for name in (constants.SILVER, constants.BATCH_SCORES)}
    assert after == before
    assert len(_table(settings, constants.SYSTEM_SCHEMA, constants.QUARANTINE)) == quarantined_before
    assert again.watermark == first.watermark


def test_an_input_that_matches_nothing_is_a_clear_error(warehouse, spark):
    with pytest.raises(LakehouseError, match="matches no file"):
        run_batch("sensor_events", ["/nonexistent/*.jsonl"], settings=warehouse, spark=spark)


def test_csv_series_take_their_entity_from_the_file_name(warehouse, spark, tmp_path):
    import numpy as np

    folder = tmp_path / "nab"
    folder.mkdir()
    times = pd.date_range("2014-04-01", periods=400, freq="5min")
    values = np.sin(np.arange(400) / 20) + 10
    values[300] = 60
    for name in ("cpu_a", "cpu_b"):
        pd.DataFrame({"timestamp": times.strftime("%Y-%m-%d %H:%M:%S"), "value": values}).to_csv(folder / f"{name}.csv", index=False)
    with open(folder / "cpu_b.csv", "a") as stream:
        stream.write("2014-04-03 00:00:00,not-a-number\n")
    record = run_batch("metrics", [str(folder / "*.csv")], settings=warehouse, spark=spark)
    assert (record.input_rows, record.valid_rows, record.quarantined_rows) == (801, 800, 1)
    view = DeltaTable(warehouse.table_uri("metrics", constants.BATCH_SCORES)).to_pandas()
    assert sorted(view.entity_id.unique()) == ["cpu_a", "cpu_b"]
    assert view.set_index("event_id").loc["cpu_a@2014-04-02 01:00:00", "is_anomaly"]
    quarantine = DeltaTable(warehouse.table_uri(constants.SYSTEM_SCHEMA, constants.QUARANTINE)).to_pandas()
    assert list(quarantine.failed_rules.iloc[0]) == ["value.type"]
    assert quarantine.event_id.iloc[0] == "cpu_b@2014-04-03 00:00:00"
    # A text without a double's shape: GX's type expectation finds it too (on the text alone).
    result = run_log.report(warehouse, record.run_id)["report"]["great_expectations"]
    by_rule = {item["rule"]: item for item in result["expectations"]}
    assert (by_rule["value.type"]["unexpected_count"], by_rule["value.type"]["partial_unexpected_list"]) == (1, ["not-a-number"])


def test_the_run_report_holds_great_expectations_results_that_match_the_quarantine(first_run):
    settings, inputs, record = first_run
    stored = run_log.report(settings, record.run_id)
    result = stored["report"]["great_expectations"]
    assert result["rows"] == record.input_rows and result["success"] is False
    unexpected = {item["rule"]: item["unexpected_count"] for item in result["expectations"]}
    planted: dict[str, int] = {}
    for rule in inputs.history.bad.values():
        planted[rule] = planted.get(rule, 0) + 1
    assert stored["report"]["failed_rules"] == planted
    # GX checks a type rule on the text's shape: "n/a" has none, the planted event_time
    # 2024-13-45T99:00:00Z has a timestamp's shape and fails only the rules' cast.
    assert planted["event_time.type"] and unexpected.pop("event_time.type") == 0
    assert {rule: count for rule, count in unexpected.items() if count} == {
        rule: count for rule, count in planted.items() if rule != "event_time.type"
    }
    by_rule = {item["rule"]: item for item in result["expectations"]}
    assert by_rule["temperature.type"]["expectation_type"] == "expect_column_values_to_match_regex"
    assert "n/a" not in json.dumps(by_rule["pressure.range"]["partial_unexpected_list"])


def test_a_disagreement_between_great_expectations_and_the_rules_fails_loudly(first_run, spark):
    from batch.expectations import SuiteResult, cross_check
    from batch.ingest import read_raw
    from batch.job import _read_counts
    from batch.validation import validate
    import schemas

    settings, inputs, record = first_run
    dataset = schemas.load("sensor_events")
    counted = _read_counts(validate(read_raw(spark, dataset, record.inputs), dataset))[2]
    wrong = SuiteResult("sensor_events", record.input_rows, [{"rule": "pressure.range", "unexpected_count": 10**6}])
    with pytest.raises(LakehouseError, match="pressure.range: 1000000 vs"):
        cross_check(wrong, counted)
    planted = list(inputs.history.bad.values())
    assert planted.count("status.allowed_values") > 0
    fewer = SuiteResult("sensor_events", record.input_rows, [{"rule": "status.allowed_values", "unexpected_count": 0}])
    with pytest.raises(LakehouseError, match="status.allowed_values: 0 vs"):
        cross_check(fewer, counted)
    # A type rule's GX count may be lower (the text's shape only), never higher.
    assert planted.count("event_time.type") > 0
    assert cross_check(SuiteResult("sensor_events", record.input_rows, [{"rule": "event_time.type", "unexpected_count": 0}]), counted)
    more = SuiteResult("sensor_events", record.input_rows, [{"rule": "event_time.type", "unexpected_count": 10**6}])
    with pytest.raises(LakehouseError, match="event_time.type: 1000000 vs"):
        cross_check(more, counted)


def test_an_expectation_great_expectations_cannot_evaluate_fails_the_partition_instead_of_counting_zero():
    # GX reports an expectation that raised as a result without counts; read as counts it would be
    # "0 unexpected" (and a type rule's lower GX count passes the cross-check). It must fail loudly.
    import pandas as pd
    import pyarrow as pa

    from batch import expectations

    record = {"event_id": "0" * 32, "entity_id": "sensor-001", "_text_event_time": "2024-01-01 00:00:00", "status": "ok",
              "_text_temperature": "20.5", "temperature": 20.5, "_text_pressure": "1.5", "pressure": 1.5,
              "_text_vibration": "4", "vibration": 4.0}
    good = pd.DataFrame([record])[expectations.checked_columns(schemas.load("sensor_events"))]
    outcome = expectations._validate_partition("sensor_events", pa.Table.from_pandas(good))
    assert set(outcome.unexpected_count) == {0}
    broken = good.drop(columns=["_text_temperature"])
    with pytest.raises(LakehouseError, match=r"could not evaluate .*temperature\.(not_null|type)"):
        expectations._validate_partition("sensor_events", pa.Table.from_pandas(broken))


def test_a_csv_without_a_declared_column_is_quarantined_whole_and_the_other_files_proceed(warehouse, spark, tmp_path):
    # #15: a bad file no longer stops the run; its quarantine row names file, column and types.
    bad = tmp_path / "cpu.csv"
    bad.write_text("time,value\n2014-04-01 00:00:00,1.0\n")
    good = tmp_path / "memory.csv"
    good.write_text("timestamp,value\n" + "".join(f"2014-04-01 {minute // 60:02d}:{minute % 60:02d}:00,{minute % 7}\n" for minute in range(300)))
    record = run_batch("metrics", [str(bad), str(good)], settings=warehouse, spark=spark)
    assert record.status == "succeeded" and record.files_quarantined == 1
    assert (record.input_rows, record.valid_rows) == (300, 300)
    quarantine = _table(warehouse, constants.SYSTEM_SCHEMA, constants.QUARANTINE)
    row = quarantine[quarantine.source.str.endswith("cpu.csv")].iloc[0]
    assert list(row.failed_rules) == ["file.missing_column"]
    assert "cpu.csv: column 'timestamp' expected timestamp column in the CSV header, found no such column; header is ['time', 'value']" in row.errors[0]
    files = {item["path"]: item for item in run_log.report(warehouse, record.run_id)["report"]["files"]}
    assert files[str(bad)]["rule"] == "file.missing_column" and files[str(good)]["records"] == files[str(good)]["read"] == 300


def test_a_parquet_column_of_the_wrong_type_names_file_column_and_types(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    import schemas
    from batch.file_schema import check_parquet_schema
    from lakehouse.errors import SchemaMismatchError

    path = tmp_path / "series.parquet"
    pq.write_table(pa.table({"timestamp": ["2014-04-01 00:00:00"], "value": [True]}), path)
    with pytest.raises(SchemaMismatchError, match=r"series.parquet: column 'value' expected double, found bool"):
        check_parquet_schema(schemas.load("metrics"), str(path))
    pq.write_table(pa.table({"timestamp": pa.array([0], pa.timestamp("us")), "value": pa.array([1], pa.int32())}), path)
    check_parquet_schema(schemas.load("metrics"), str(path))


def test_maintenance_compacts_and_vacuums_with_a_safe_default(first_run, spark):
    from batch.maintenance import maintain

    settings, _, _ = first_run
    with pytest.raises(LakehouseError, match="safe minimum"):
        maintain(spark, settings, "sensor_events", retention_hours=0)
    silver_before = len(_table(settings, "sensor_events", constants.SILVER))
    results = maintain(spark, settings, "sensor_events", retention_hours=0, force=True)
    by_table = {result.table.rsplit("/", 1)[-1]: result for result in results}
    assert all(result.files_after <= result.files_before for result in results)
    # The batch view is rewritten on every run: the earlier run's files are unreferenced.
    assert by_table["batch_scores"].files_vacuumed > 0
    # Compaction rewrites files, never rows.
    assert len(_table(settings, "sensor_events", constants.SILVER)) == silver_before


def test_a_run_can_train_another_detector_and_the_registry_records_it(first_run, spark):
    settings, _, first = first_run
    record = run_batch("sensor_events", first.inputs, settings=settings, spark=spark, detector={"name": "hbos", "contamination": 0.02})
    models = registry.list_models(settings, "sensor_events")
    latest = models[models.version == record.model_version]
    assert set(latest.detector) == {"hbos"} and set(latest.contamination) == {0.02}
    with pytest.raises(LakehouseError, match="contamination"):
        run_batch("sensor_events", first.inputs, settings=settings, spark=spark, detector={"contamination": 0.9})


def _executor_lost(*args, **kwargs):
    """A step of the batch job failing mid-run, as a lost Spark executor makes it fail."""
    raise RuntimeError("executor lost")


def test_a_run_failing_after_its_silver_commit_rolls_back_and_the_next_run_accounts_for_it(warehouse, spark, tmp_path, monkeypatch):
    """A failure after silver was written (here: training) undoes the run's writes (batch/recovery.py),
    so the next run inserts and counts every event itself. SIGKILL: tests/test_crash.py."""
    import batch.job as job
    from lakehouse.errors import RunError

    inputs = make_sensor_inputs(tmp_path, seed=5)
    files = [str(path) for path in inputs.history_files]

    monkeypatch.setattr(job, "train", _executor_lost)
    with pytest.raises(RunError, match="executor lost"):
        run_batch("sensor_events", files, settings=warehouse, spark=spark)
    monkeypatch.undo()
    assert len(_table(warehouse, "sensor_events", constants.SILVER)) == 0  # rolled back
    failed = run_log.runs(warehouse, "sensor_events")
    assert failed.status.tolist() == ["failed"]
    assert json.loads(failed.report.iloc[0])["rolled_back"]["runs"] == failed.run_id.tolist()
    assert run_log.current_watermark(warehouse, "sensor_events") is None

    record = run_batch("sensor_events", files, settings=warehouse, spark=spark)
    silver = _table(warehouse, "sensor_events", constants.SILVER)
    assert record.valid_rows == len(silver) > 0 and set(silver.run_id) == {record.run_id}
    assert record.duplicate_rows == inputs.history.duplicates
    assert len(_table(warehouse, "sensor_events", constants.BATCH_SCORES)) == len(silver)
    assert run_log.current_watermark(warehouse, "sensor_events") == silver.event_time.max()


def test_late_events_are_picked_up_by_the_next_run(warehouse, spark, tmp_path):
    inputs = make_sensor_inputs(tmp_path, seed=6)
    on_time = [record for record in inputs.history.records if record["event_time"] >= "2024-01-01T12:00:00Z"]
    late = [record for record in inputs.history.records if record["event_time"] < "2024-01-01T12:00:00Z"]
    first = run_batch("sensor_events", [str(generator.write_json_lines(on_time, tmp_path / "on_time.jsonl"))], settings=warehouse, spark=spark)
    second = run_batch("sensor_events", [str(generator.write_json_lines(late, tmp_path / "late.jsonl"))], settings=warehouse, spark=spark)
    assert second.valid_rows > 0
    assert second.watermark == first.watermark  # late events never move the boundary back
    view = _table(warehouse, "sensor_events", constants.BATCH_SCORES)
    assert view.event_time.min() < pd.Timestamp("2024-01-01T12:00:00Z")
    assert len(view) == first.valid_rows + second.valid_rows


def test_a_training_window_limits_what_the_detectors_learn_from(first_run, spark):
    settings, _, first = first_run
    record = run_batch("sensor_events", first.inputs, settings=settings, spark=spark, detector={"training_days": 1.0})
    models = registry.list_models(settings, "sensor_events")
    latest = models[models.version == record.model_version]
    # Two days of 5-minute readings per sensor; the window keeps the newest 288 at most.
    assert len(latest) == 3
    assert latest.train_rows.between(200, 288).all()
    assert ((latest.train_end - latest.train_start) < pd.Timedelta(days=1)).all()


def test_a_declared_check_quarantines_and_great_expectations_counts_it(warehouse, spark, tmp_path):
    inputs = make_sensor_inputs(tmp_path, sensors=2, days=2.0, seed=8)
    records = [dict(record) for record in inputs.history.records if record["event_id"] not in inputs.history.bad]
    records[10].update(status="fault", vibration=1.5)  # breaks the check
    records[20].update(status="fault", vibration=9.0)  # a fault that shows: fine
    path = generator.write_json_lines(records, tmp_path / "checked.jsonl")
    record = run_batch("sensor_events", [str(path)], settings=warehouse, spark=spark)
    assert record.quarantined_rows == 1
    quarantine = _table(warehouse, constants.SYSTEM_SCHEMA, constants.QUARANTINE)
    assert list(quarantine.failed_rules.iloc[0]) == ["check.fault_shows_in_vibration"]
    assert "with status='fault'" in quarantine.errors.iloc[0][0]
    result = run_log.report(warehouse, record.run_id)["report"]["great_expectations"]
    by_rule = {item["rule"]: item for item in result["expectations"]}
    assert by_rule["check.fault_shows_in_vibration"]["unexpected_count"] == 1
    assert by_rule["check.fault_shows_in_vibration"]["element_count"] == 2  # the rows the condition selects


@pytest.mark.spark
def test_csv_columns_are_read_by_header_name_not_position(spark, warehouse, tmp_path):
    from batch.ingest import read_raw
    import schemas

    path = tmp_path / "reordered_series.csv"
    path.write_text("value,timestamp\n1.5,2024-01-01 00:00:00\n")
    row = read_raw(spark, schemas.load("metrics"), [str(path)]).collect()[0]
    assert (row["timestamp"], row["value"]) == ("2024-01-01 00:00:00", "1.5")


@pytest.mark.spark
def test_csv_files_of_one_run_are_each_read_by_their_own_header(spark, tmp_path):
    # Each file is parsed on its own (#15), so files whose columns differ in order can share a run.
    from batch.ingest import read_raw
    import schemas

    (tmp_path / "a.csv").write_text("timestamp,value\n2024-01-01 00:00:00,1\n")
    (tmp_path / "b.csv").write_text("value,timestamp\n2,2024-01-01 00:05:00\n")
    rows = read_raw(spark, schemas.load("metrics"), [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]).collect()
    assert sorted((row["timestamp"], row["value"]) for row in rows) == [("2024-01-01 00:00:00", "1"), ("2024-01-01 00:05:00", "2")]


def _resolved(spark, rows, silver_rows, policy):
    from batch import duplicates

    dataset = schemas.load("metrics").model_copy(update={"duplicates": policy})
    columns = ("event_id string, entity_id string, event_time timestamp, value double, _source_file string, _line_number long, "
               "_raw string, _record_id long")
    from datetime import datetime

    at = datetime(2024, 1, 1)
    frame = spark.createDataFrame(
        [("a@t", "a", at, value, path, line, f"{path} line {line}", number) for number, (value, path, line) in enumerate(rows)], columns
    )
    silver = None
    if silver_rows is not None:
        silver = spark.createDataFrame([("a@t", "a", at, value, "old.csv") for value in silver_rows],
                                       "event_id string, entity_id string, event_time timestamp, value double, source_file string")
    resolution = duplicates.resolve(frame, silver, dataset)
    values = lambda part: sorted(row["value"] for row in part.collect())  # noqa: E731
    superseded = values(resolution.superseded) if resolution.superseded is not None else []
    conflicts = resolution.conflicts().collect()
    # Each conflict carries its own line back (joined by record id, not shuffled with the window).
    assert all(row["_raw"] == f"{row['_source_file']} line {row['_line_number']}" for row in conflicts)
    return values(resolution.writes), values(resolution.duplicates), sorted(row["value"] for row in conflicts), superseded


def test_same_id_other_values_is_a_conflict_and_the_declared_policy_picks_the_winner(spark):
    rows = [(1.0, "a.csv", 2), (1.0, "a.csv", 3), (2.0, "b.csv", 2)]
    # first: a.csv's value wins, its repeat is a duplicate, b.csv's other value a conflict.
    assert _resolved(spark, rows, None, "first") == ([1.0], [1.0], [2.0], [])
    # latest: the corrected resend (b.csv, read last) wins; both older lines are conflicts.
    assert _resolved(spark, rows, None, "latest") == ([2.0], [], [1.0, 1.0], [])
    # Against silver: first keeps silver's version; latest replaces it and keeps it in the quarantine.
    assert _resolved(spark, [(2.0, "b.csv", 2)], [1.0], "first") == ([], [], [2.0], [])
    assert _resolved(spark, [(2.0, "b.csv", 2)], [1.0], "latest") == ([2.0], [], [], [1.0])
    # The same values again: a duplicate under either policy, nothing replaced.
    assert _resolved(spark, [(1.0, "b.csv", 2)], [1.0], "latest") == ([], [1.0], [], [])


def test_a_model_is_served_only_once_its_run_succeeded(warehouse, spark, tmp_path, monkeypatch):
    """A run that fails after training keeps its models in the registry (their version is never
    reused) but no layer scores with them: what they learned from was rolled back."""
    import batch.job as job
    from lakehouse import registry
    from lakehouse.errors import RunError

    inputs = make_sensor_inputs(tmp_path, seed=12)
    files = [str(path) for path in inputs.history_files]
    first = run_batch("sensor_events", files, settings=warehouse, spark=spark)

    monkeypatch.setattr(job, "score", _executor_lost)
    with pytest.raises(RunError, match="executor lost"):
        run_batch("sensor_events", files, settings=warehouse, spark=spark)
    monkeypatch.undo()
    registered = registry.list_models(warehouse, "sensor_events")
    assert set(registered.version) == {first.model_version, first.model_version + 1}
    assert set(registry.latest_versions(warehouse, "sensor_events").version) == {first.model_version}
    assert {model.version for model in registry.load_latest(warehouse, "sensor_events").values()} == {first.model_version}

    # The next run scores with the models it trains, and they are served once it succeeded.
    third = run_batch("sensor_events", files, settings=warehouse, spark=spark)
    assert third.model_version == first.model_version + 2
    assert set(_table(warehouse, "sensor_events", constants.BATCH_SCORES).model_version) == {third.model_version}
    assert set(registry.latest_versions(warehouse, "sensor_events").version) == {third.model_version}


def test_great_expectations_counts_the_same_on_arrow_strings_in_re2_as_on_python_strings(monkeypatch):
    # #15: GX's regex expectations run in RE2 over Arrow strings (`^(?:p)$`, RE2's whole value)
    # where every pattern compiles there; the counts must be those of Python's `re` with the rules'
    # look-ahead anchor, on the values where the two dialects could part: a final newline or
    # carriage return, non-ASCII digits, inner spaces, empty text.
    import pyarrow as pa

    from batch import expectations

    dataset = schemas.load("sensor_events")
    texts = ["0" * 32, "0" * 32 + "\n", "0" * 31 + "\r", "０" * 32, "", "sensor-001", "sensor-001\n", "sensor-1"]
    numbers = ["20.5", "20.5\n", "2 0", "1e5", "٣", ".5", "5.", "+-1"]
    rows = len(texts)
    table = pa.table({
        "event_id": texts, "entity_id": list(reversed(texts)), "_text_event_time": ["2024-01-01 00:00:00", "2024-01-01\n"] * (rows // 2),
        "_text_temperature": numbers, "temperature": [20.5] * rows, "_text_pressure": list(reversed(numbers)), "pressure": [1.0] * rows,
        "_text_vibration": numbers, "vibration": [4.0] * rows, "status": ["ok", "ok\n", "fault", "Ok", "", "warning", "x", "ok"],
    }).select(expectations.checked_columns(dataset))
    counts = {}
    for re2 in (True, False):
        monkeypatch.setattr(expectations, "runs_in_re2", lambda _dataset, re2=re2: re2)
        monkeypatch.setattr(expectations, "arrow_strings", lambda _name, re2=re2: re2)
        expectations._validator.cache_clear()
        outcome = expectations._validate_partition("sensor_events", table)
        counts[re2] = dict(zip(outcome.rule, outcome.unexpected_count))
    expectations._validator.cache_clear()
    assert counts[True] == counts[False]
    assert counts[True]["event_id.pattern"] == 7 and counts[True]["temperature.type"] == 4


def test_a_pattern_re2_cannot_compile_keeps_the_suite_on_python_strings():
    from batch import expectations

    dataset = schemas.load("sensor_events")
    assert expectations.runs_in_re2(dataset)
    fields = [field.model_copy(update={"pattern": "sensor-(?!000)[0-9]{3,5}"}) if field.name == "entity_id" else field for field in dataset.fields]
    lookahead = dataset.model_copy(update={"fields": fields})
    assert not expectations.runs_in_re2(lookahead)
    rule = next(rule for rule in schemas.rules.rules_for(lookahead) if rule.name == "entity_id.pattern")
    assert expectations._expectation(rule, lookahead).regex == schemas.rules.anchored("sensor-(?!000)[0-9]{3,5}")


def _history_matches_silver(settings, dataset_name: str, lookback_days: int) -> None:
    """speed.history.recent_history over silver alone: each entity's rows of its newest days."""
    from speed.history import recent_history

    dataset = schemas.load(dataset_name)
    silver = _table(settings, dataset_name, constants.SILVER)
    since = pd.Timestamp(silver.event_date.max()) - pd.Timedelta(days=lookback_days)
    expected = silver[pd.to_datetime(silver.event_date) >= since].groupby(dataset.entity)[dataset.event_id].apply(sorted).to_dict()
    history = recent_history(settings, dataset, lookback_days=lookback_days)
    assert {entity: sorted(ids) for entity, (_, ids, _) in history.items()} == expected
    assert len(silver) > sum(len(ids) for ids in expected.values()) > 0  # the lookback left older days out


def test_the_speed_layers_history_reads_the_newest_days_of_silver_by_month(first_run):
    # #15: silver is partitioned by month (lakehouse/system_tables.py EVENT_MONTH); the speed
    # layer's start-up history prunes by month and filters by day.
    settings, _, _ = first_run
    _history_matches_silver(settings, "sensor_events", lookback_days=0)


def test_a_silver_made_by_day_before_keeps_its_layout_and_takes_new_runs(warehouse, spark, tmp_path):
    def day_file(day: int) -> str:
        path = tmp_path / f"days-{day}" / "memory.csv"
        path.parent.mkdir()
        path.write_text("timestamp,value\n" + "".join(f"2014-04-{day:02d} {hour:02d}:00:00,{hour % 5}\n" for hour in range(24)))
        return str(path)

    from datetime import datetime, timezone

    uri = warehouse.table_uri("metrics", constants.SILVER)
    # Silver as the batch job made it before: partitioned by event_date, no event_month.
    times = pd.date_range("2014-04-01", periods=24, freq="h", tz="UTC")
    old = pd.DataFrame({
        "event_id": [f"memory@{moment:%Y-%m-%d %H:%M:%S}" for moment in times], "entity_id": "memory", "event_time": times,
        "value": 1.0, "source_file": "old.csv", "event_date": times.date, "run_id": "old", "ingested_at": datetime.now(timezone.utc),
    })
    spark.createDataFrame(old).write.format("delta").partitionBy("event_date").save(uri)
    record = run_batch("metrics", [day_file(3)], settings=warehouse, spark=spark)
    assert record.status == "succeeded" and record.valid_rows == 24
    assert DeltaTable(uri).metadata().partition_columns == ["event_date"]
    assert len(_table(warehouse, "metrics", constants.SILVER)) == 48
    _history_matches_silver(warehouse, "metrics", lookback_days=0)
