"""The `lakehouse` command, each command run for real: help everywhere, clear errors, the local
services, and the commands that read (batch runs/models/report, sql, anomalies, alerts, eval run,
serve refresh) on the session's demo warehouse. The commands that write (generate, batch run,
schedule, maintain, speed run/produce) are in test_cli_jobs.py; eval nab and odds in
test_eval_cli.py. The `demo` command itself builds the session's warehouse (fixtures_services.py).

Most commands run through the installed console script in a subprocess, in the test environment
conftest.py sets up, so what is checked is what a user types.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from cli_helpers import lakehouse, ok, table_rows
from lakehouse.settings import get_settings
from serving import trino_client

# The demo fixture needs Spark, Beam (its speed runs), Trino and Kafka.
USES_DEMO = [pytest.mark.e2e, pytest.mark.spark, pytest.mark.beam, pytest.mark.trino, pytest.mark.kafka]
DATASET = "sensor_events"

COMMANDS = [
    [], ["setup"], ["up"], ["down"], ["status"], ["generate"], ["demo"], ["sql"],
    ["batch"], ["batch", "run"], ["batch", "schedule"], ["batch", "maintain"], ["batch", "jars"],
    ["batch", "models"], ["batch", "runs"], ["batch", "report"],
    ["speed"], ["speed", "run"], ["speed", "produce"], ["serve"], ["serve", "refresh"],
    ["eval"], ["eval", "run"], ["eval", "nab"], ["eval", "odds"], ["anomalies"], ["alerts"],
]


# Help and errors ------------------------------------------------------------------------------


def test_the_console_script_is_the_composition_roots_main():
    from importlib.metadata import entry_points

    (script,) = [entry for entry in entry_points(group="console_scripts") if entry.name == "lakehouse"]
    assert script.value == "app.cli:main"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda words: " ".join(words) or "lakehouse")
def test_every_command_has_help(command):
    result = CliRunner().invoke(app, [*command, "--help"], prog_name="lakehouse")
    assert result.exit_code == 0, result.output
    assert "Usage: lakehouse" in result.output


def test_an_input_that_matches_nothing_is_a_one_line_error():
    result = lakehouse("batch", "run", "--dataset", DATASET, "--input", "/nonexistent/*.jsonl")
    assert result.returncode == 2
    assert "matches no file" in result.stderr and "Traceback" not in result.stderr


def test_an_unknown_dataset_names_the_declared_ones():
    result = lakehouse("batch", "run", "--dataset", "nope", "--input", "x")
    assert result.returncode == 2
    assert "unknown dataset 'nope'" in result.stderr and DATASET in result.stderr


def test_sql_against_a_server_that_is_down_says_how_to_start_it():
    result = lakehouse("sql", "SELECT 1", environment={"LAKEHOUSE_TRINO_PORT": "1"})
    assert result.returncode == 2
    assert "lakehouse up" in result.stderr


def test_schedule_once_takes_no_interval():
    result = lakehouse("batch", "schedule", "-d", DATASET, "-i", "x", "--once", "--every", "1h")
    assert result.returncode == 2
    assert "--once runs one tick now" in result.stderr


def test_tests_keep_generated_inputs_out_of_the_work_folder(tmp_path):
    """The test session's demo writes its inputs and labels under the test root, not over yours."""
    from lakehouse.settings import Settings

    settings = get_settings()
    assert settings.data_dir != settings.work_dir / "data"
    assert Settings(data_root=str(tmp_path)).data_dir == tmp_path
    assert Settings(data_root="").data_dir == settings.work_dir / "data"


# Artifacts ------------------------------------------------------------------------------------


def _delta_cached() -> None:
    from local_services import jvm

    if not jvm.is_fetched("delta", get_settings()):
        pytest.skip("the Delta jars are not in the cache yet (`make setup` fetches them); this test downloads nothing")


def test_setup_names_the_cached_delta_folder():
    _delta_cached()
    from local_services import jvm

    result = ok(lakehouse("setup", "--component", "delta"))
    folder = jvm.component_dir("delta", get_settings())
    assert f"✓ delta: {folder}" in result.stderr.replace("\n", "")
    assert any(jar.name.startswith("delta-spark_") for jar in folder.glob("*.jar"))
    refused = lakehouse("setup", "--component", "hive")
    assert refused.returncode == 2 and "unknown component" in refused.stderr


def test_batch_jars_lists_existing_jars_for_spark_submit():
    _delta_cached()
    result = ok(lakehouse("batch", "jars"))
    (line,) = result.stdout.splitlines()
    jars = [Path(jar) for jar in line.split(",")]
    assert len(jars) > 1 and all(jar.is_file() and jar.suffix == ".jar" for jar in jars)
    assert any(jar.name.startswith("delta-spark_") for jar in jars)


# Local services -------------------------------------------------------------------------------


def _state(result: subprocess.CompletedProcess) -> dict[str, list[str]]:
    """service -> [state, pid, address, log] from the status table."""
    return {row[0]: row[1:] for row in table_rows(result.stdout) if len(row) == 5}


@pytest.mark.trino
@pytest.mark.kafka
def test_up_reuses_the_running_trino_and_kafka_and_status_shows_them(trino_server, kafka_broker):
    result = ok(lakehouse("up"))
    states = _state(result)
    assert list(states) == ["trino", "kafka"]  # no --only: Trino and Kafka (the warehouse is local)
    assert states["trino"][:2] == ["ready", str(trino_server.pid())]
    assert states["kafka"][:2] == ["ready", str(kafka_broker.pid())]
    assert f"trino already running (pid {trino_server.pid()})" in result.stderr
    assert f"kafka already running (pid {kafka_broker.pid()})" in result.stderr

    every = _state(ok(lakehouse("status")))
    assert list(every) == [
        "s3", "trino", "trino-worker", "kafka", "spark-master", "spark-worker",  # every process: the cluster mode's too
        "flink-jobmanager", "flink-taskmanager", "beam-worker-pool", "flink-cluster-job-server", "flink",
    ]
    assert every["trino"][:2] == ["ready", str(trino_server.pid())]
    assert every["kafka"][1] == str(kafka_broker.pid())


def _free_port_pair() -> int:
    """A port that is free, with the next one free too (the Flink job server takes both)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two free neighbouring ports")


@pytest.mark.flink
def test_up_status_down_of_services_of_its_own(tmp_path):
    """A services folder and ports of its own, so the session's services are left alone."""
    own = {"LAKEHOUSE_SERVICES_ROOT": str(tmp_path / "services"), "LAKEHOUSE_FLINK_JOB_PORT": str(_free_port_pair())}
    try:
        starting = ok(lakehouse("up", "--only", "flink", environment=own))
        started = _state(starting)
        assert list(started) == ["flink"] and started["flink"][0] == "ready"
        pid = int(started["flink"][1])
        # Outside a terminal, logs are plain "date time LEVEL logger: message" lines.
        (line,) = [line for line in starting.stderr.splitlines() if "starting flink" in line]
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO local_services.base: starting flink on ", line), line
        assert _state(ok(lakehouse("status", "--only", "flink", environment=own)))["flink"][:2] == ["ready", str(pid)]

        stopped = ok(lakehouse("down", environment=own))  # no --only: every service
        assert "flink: stopped" in stopped.stderr
        for name in ("s3", "trino", "kafka"):
            assert f"{name}: was not running" in stopped.stderr
        assert _state(ok(lakehouse("status", "--only", "flink", environment=own)))["flink"][:2] == ["stopped", "-"]
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        lakehouse("down", environment=own)


# Reading the demo's warehouse -----------------------------------------------------------------


def _demo_total(demo) -> int:
    return int(demo["merged"]["events"].sum())


class TestOnTheDemo:
    pytestmark = USES_DEMO

    def test_demo_printed_the_cycle_it_ran(self, demo):
        output = demo["output"]
        for step in ("batch run 1 (days 1-4)", "speed replay A", "batch run 2 (day 5)", "speed replay B"):
            assert f"✓ {step}" in output
        assert f"Merged view answered {_demo_total(demo)} events" in output.replace("\n", " ")
        assert f"of {len(demo['spikes'])} planted spikes flagged" in output

    def test_batch_runs_lists_the_demo_runs_with_their_counts(self, demo):
        rows = {row[0]: row for row in table_rows(ok(lakehouse("batch", "runs", "-d", DATASET)).stdout)}
        for record in demo["batch"]:
            run_id, dataset, status, input_rows, valid_rows, quarantined_rows, duplicate_rows, conflict_rows, anomalies, _ = rows[record.run_id]
            assert (dataset, status) == (DATASET, "succeeded")
            assert [int(input_rows), int(valid_rows), int(quarantined_rows), int(duplicate_rows), int(conflict_rows), int(anomalies)] == [
                record.input_rows, record.valid_rows, record.quarantined_rows, record.duplicate_rows, record.conflict_rows,
                record.anomalies,
            ]

    def test_batch_models_lists_a_model_per_sensor_and_run(self, demo):
        result = ok(lakehouse("batch", "models", "-d", DATASET))
        rows = table_rows(result.stdout)
        versions = {record.model_version: record.run_id for record in demo["batch"]}
        assert {(row[1], int(row[2])) for row in rows} == {(f"sensor-{sensor:03d}", version) for sensor in range(4) for version in versions}
        assert all(row[8] == versions[int(row[2])] for row in rows)
        assert {row[9] for row in rows} == {"True"}  # every demo run succeeded: all its models are served
        assert f"({len(rows)} rows)" in result.stdout

    def test_batch_report_shows_the_stored_report(self, demo):
        record = demo["batch"][0]
        result = ok(lakehouse("batch", "report", record.run_id))
        measures = {row[0]: row[1] for row in table_rows(result.stdout) if len(row) == 2}
        assert int(measures["input_rows"]) == record.input_rows
        assert int(measures["quarantined_rows"]) == record.quarantined_rows
        assert int(measures["model_version"]) == record.model_version
        assert "train (s)" in measures
        rules = [row for row in table_rows(result.stdout) if len(row) == 5]
        assert rules and sum(int(row[3]) for row in rules) >= 1  # the planted bad records break rules

        stored = json.loads(ok(lakehouse("batch", "report", record.run_id, "--json")).stdout)
        assert (stored["run_id"], stored["dataset"], stored["status"]) == (record.run_id, DATASET, "succeeded")
        assert stored["input_rows"] == record.input_rows and stored["valid_rows"] == record.valid_rows
        assert sorted(stored["inputs"]) == sorted(record.inputs)

        missing = lakehouse("batch", "report", "no-such-run")
        assert missing.returncode == 2 and "no batch run 'no-such-run'" in missing.stderr

    def test_serve_refresh_recreates_a_dropped_view(self, demo):
        settings = get_settings()
        trino_client.execute(f"DROP VIEW delta.{DATASET}.anomalies", settings=settings)
        with pytest.raises(Exception, match="does not exist"):
            trino_client.query(f"SELECT count(*) FROM delta.{DATASET}.anomalies", settings=settings)
        result = ok(lakehouse("serve", "refresh"))
        assert f"registered {DATASET}.silver" in result.stderr
        assert f"created view {DATASET}.merged (batch: True, speed: True, watermark: " in result.stderr
        assert f"created view {DATASET}.anomalies" in result.stderr
        anomalies = trino_client.query(f"SELECT count(*) AS n FROM delta.{DATASET}.anomalies", settings=settings)
        assert anomalies.n[0] == int(demo["merged"]["anomalies"].sum())

    def test_sql_prints_a_table_csv_or_json(self, demo, tmp_path):
        query = f"SELECT layer, count(*) AS events FROM delta.{DATASET}.merged GROUP BY layer ORDER BY layer"
        expected = {row.layer: int(row.events) for row in demo["merged"].itertuples()}

        as_csv = ok(lakehouse("sql", query, "--format", "csv")).stdout
        assert {row["layer"]: int(row["events"]) for row in csv.DictReader(io.StringIO(as_csv))} == expected
        as_json = json.loads(ok(lakehouse("sql", query, "--format", "json")).stdout)
        assert {row["layer"]: row["events"] for row in as_json} == expected
        as_table = ok(lakehouse("sql", query)).stdout
        assert {row[0]: int(row[1]) for row in table_rows(as_table)} == expected
        assert f"({len(expected)} rows)" in as_table
        # The query may also come from stdin or a file, with its trailing semicolon.
        assert json.loads(ok(lakehouse("sql", "-", "--format", "json", stdin=query + ";\n")).stdout) == as_json
        (tmp_path / "query.sql").write_text(query + ";\n")
        assert json.loads(ok(lakehouse("sql", "--file", str(tmp_path / "query.sql"), "--format", "json")).stdout) == as_json

    def test_sql_as_analyst_reads_and_may_not_write(self, demo):
        count = json.loads(ok(lakehouse("sql", "--as", "analyst", "--format", "json",
                                        f"SELECT count(*) AS n FROM delta.{DATASET}.merged")).stdout)
        assert count == [{"n": _demo_total(demo)}]
        refused = lakehouse("sql", "--as", "analyst", f"DROP VIEW delta.{DATASET}.alerts")
        assert refused.returncode == 2 and "Access Denied" in refused.stderr and "Traceback" not in refused.stderr
        assert trino_client.query(f"SELECT count(*) AS n FROM delta.{DATASET}.alerts", settings=get_settings()).n[0] >= 0

    def test_anomalies_counts_the_alarms_of_the_last_hours(self, demo):
        result = ok(lakehouse("anomalies", "-d", DATASET, "--hours", "6"))
        rows = table_rows(result.stdout)
        assert {row[0] for row in rows} == {f"sensor-{sensor:03d}" for sensor in range(4)}
        newest = trino_client.query(
            f"SELECT count_if(is_anomaly) AS anomalies, count(*) AS events FROM delta.{DATASET}.merged "
            f"WHERE date_trunc('hour', event_time) > (SELECT max(date_trunc('hour', event_time)) FROM delta.{DATASET}.merged) - INTERVAL '6' HOUR",
            settings=get_settings(),
        )
        assert sum(int(row[1]) for row in rows) == newest.anomalies[0]
        assert sum(int(row[2]) for row in rows) == newest.events[0]

    def test_alerts_lists_the_alerts_of_the_last_hours(self, demo):
        result = ok(lakehouse("alerts", "-d", DATASET, "--hours", "24"))
        rows = table_rows(result.stdout)
        expected = trino_client.query(
            f"SELECT event_id FROM delta.{DATASET}.alerts WHERE event_time > "
            f"(SELECT max(event_time) FROM delta.{DATASET}.merged) - INTERVAL '24' HOUR",
            settings=get_settings(),
        )
        assert len(expected) > 0
        assert sorted(row[2] for row in rows) == sorted(expected.event_id)
        assert f"({len(expected)} rows)" in result.stdout

    def test_eval_run_prints_the_figures_against_the_demo_labels(self, demo):
        result = ok(lakehouse("eval", "run", "-d", DATASET, "--labels", str(demo["files"]["labels"])))
        (row,) = [row for row in table_rows(result.stdout) if row[0] == "this run"]
        assert 0 < float(row[1]) <= 100  # NAB standard
        text = result.stdout.replace("\n", " ")
        assert f"4 entities, {_demo_total(demo)} events ({_demo_total(demo)} scored), 20 labelled windows" in text
        assert "(declared)" in text
