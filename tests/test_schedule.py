"""The built-in schedule (interval, cron, new files only) and the Airflow DAG's commands."""

from __future__ import annotations

import ast
import shlex
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batch.schedule import parse_interval, run_schedule, tick_times
from app.cli import app
from lakehouse.errors import ConfigurationError

from fixtures_engines import make_sensor_inputs

START = datetime(2026, 1, 1, 10, 2, tzinfo=timezone.utc)


def test_interval_ticks():
    times = tick_times(every=parse_interval("15m"), start=START)
    assert [next(times) for _ in range(3)] == [START + timedelta(minutes=15 * step) for step in (1, 2, 3)]


def test_cron_ticks_in_utc():
    times = tick_times(cron="5 * * * *", start=START)
    assert [next(times).strftime("%H:%M") for _ in range(3)] == ["10:05", "11:05", "12:05"]


@pytest.mark.parametrize("arguments, message", [({"cron": "every hour"}, "not a cron"), ({}, "exactly one"), ({"every": timedelta(0)}, "positive")])
def test_bad_schedules_say_what_is_wrong(arguments, message):
    with pytest.raises(ConfigurationError, match=message):
        next(tick_times(**arguments, start=START))


def test_bad_interval_text():
    with pytest.raises(ConfigurationError, match="use a number and s, m, h or d"):
        parse_interval("hourly")


@pytest.mark.spark
def test_each_tick_reads_only_new_files(spark, warehouse, tmp_path):
    inputs = make_sensor_inputs(tmp_path, sensors=2, days=2.0)
    landing = str(tmp_path / "history" / "*.jsonl")
    first, second = inputs.history_files
    later = second.rename(tmp_path / "later.jsonl")  # lands after the first tick
    past = datetime.now(timezone.utc) - timedelta(hours=1)

    def times():
        yield past
        later.rename(second)  # lands after the first tick
        yield past
        yield past  # nothing new by then

    slept = []
    assert run_schedule(warehouse, "sensor_events", [landing], times(), sleep=slept.append, spark=spark) == 3
    assert slept == []
    from batch import run_log

    runs = run_log.runs(warehouse, "sensor_events")
    assert [len(__import__("json").loads(inputs)) for inputs in runs.inputs] == [1, 1]
    assert runs.duplicate_rows.sum() == inputs.history.duplicates


def test_the_airflow_dag_only_runs_commands_that_exist():
    source = Path(__file__).resolve().parents[1] / "infra" / "airflow" / "lakehouse_batch_dag.py"
    tree = ast.parse(source.read_text())
    commands = [
        node.value for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("lakehouse ")
    ]
    commands += [
        "".join(part.value if isinstance(part, ast.Constant) else "X" for part in node.values)
        for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
        and isinstance(node.values[0], ast.Constant) and node.values[0].value.startswith("lakehouse ")
    ]
    assert len(commands) >= 3
    for command in commands:
        words = [word for word in shlex.split(command)[1:] if not word.startswith("-") and word != "X"]
        path = words[:2] if words and words[0] in ("batch", "speed", "serve") else words[:1]
        result = CliRunner().invoke(app, [*path, "--help"], prog_name="lakehouse")
        assert result.exit_code == 0, (command, result.output)


def test_a_failed_runs_files_are_not_marked_done(warehouse, tmp_path):
    # The scheduler reads the run log: only a succeeded run's inputs are done, so a run that failed
    # (its count check, say) leaves its files for the next tick.
    from batch import run_log
    from batch.schedule import unprocessed

    failed_file, done_file = tmp_path / "failed.jsonl", tmp_path / "done.jsonl"
    for path in (failed_file, done_file):
        path.write_text("{}\n")
    now = datetime.now(timezone.utc)
    for path, status in ((failed_file, "failed"), (done_file, "succeeded")):
        run_log.append(warehouse, run_log.RunRecord(
            run_id=f"run-{status}", dataset="sensor_events", status=status, started_at=now, finished_at=now, inputs=[str(path)],
        ))
    assert unprocessed(warehouse, "sensor_events", [str(tmp_path / "*.jsonl")]) == [str(failed_file)]


@pytest.mark.spark
def test_a_run_failing_its_count_check_is_retried_at_the_next_tick(spark, warehouse, tmp_path, monkeypatch):
    import batch.job as job
    from batch import run_log
    from batch.schedule import run_once

    inputs = make_sensor_inputs(tmp_path, sensors=1, days=1.0)
    landing = [str(tmp_path / "history" / "*.jsonl")]

    def lost_a_record(record):
        raise job.CountMismatchError("counts do not add up (planted)")

    monkeypatch.setattr(job, "check_counts", lost_a_record)
    assert run_once(warehouse, "sensor_events", landing, spark=spark) is None
    monkeypatch.undo()
    record = run_once(warehouse, "sensor_events", landing, spark=spark)
    assert record is not None and record.status == "succeeded"
    assert sorted(record.inputs) == sorted(str(path) for path in inputs.history_files)
    assert list(run_log.runs(warehouse, "sensor_events").status) == ["failed", "succeeded"]
