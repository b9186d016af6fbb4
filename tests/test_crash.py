"""The batch job killed with SIGKILL at every step, then run again: the tables end exact.

Each killed run is a real `lakehouse batch run` process that reaches a crash point
(batch/crash_points.py) and sends itself SIGKILL: no exception handler, no `finally`, no run-log
row. Each next run starts by rolling back what unfinished runs wrote (batch/recovery.py) and is
itself killed one step further on, so every crash point is followed by a run that recovers from
it; a run killed after its succeeded row is kept, and the last run is not killed. Then:

- silver holds every valid event of the input exactly once, with the winning version's value;
- the quarantine holds every rejected line once, and every conflicting version once;
- every row of silver and of the batch quarantine carries the id of a succeeded run, and the
  succeeded runs' `valid` counts add up to silver's rows (counted from the table, not the log);
- each succeeded run's input adds up (input = valid + quarantined + duplicates + conflicts),
  input counted from the files.

Expected counts come from the input as written here, not from the job.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from cli_helpers import lakehouse
from lakehouse import constants

pytestmark = pytest.mark.spark

# One killed run per point, in the order of the job's steps (batch/job.py): after the quarantine
# commit, after the silver commit, with everything written but the run-log row; then one killed
# just after its succeeded row (before hot-row expiry).
UNLOGGED_CRASH_POINTS = ("validate:end", "silver:end", "run_log:append")
LOGGED_CRASH_POINT = "run_log:appended"
SERIES = 2
ROWS = 240  # per series: enough history for the declared window (96) and a model


def _write_input(folder: Path) -> dict:
    """Two series of the `metrics` dataset, each with three bad lines and an exact repeat, and in
    the first one conflicting version of an event; returns what the tables must hold."""
    folder.mkdir()
    expected = {"silver": {}, "bad_lines": 0, "conflicts": 0, "duplicates": 0, "lines": 0}
    for series in range(SERIES):
        name = f"machine_{series}"
        lines = ["timestamp,value"]
        for minute in range(ROWS):
            stamp = f"2024-01-01 {minute // 60:02d}:{minute % 60:02d}:00"
            value = 10.0 + series + (minute % 7) * 0.5
            lines.append(f"{stamp},{value}")
            expected["silver"][f"{name}@{stamp}"] = value
        lines += ["not a time,1.0", "2024-01-01 01:00:00,abc", "2024-01-01 01:01:00,1,2"]  # type, type, field count
        expected["bad_lines"] += 3
        lines.append(lines[10])  # an exact repeat of an earlier line: a duplicate
        expected["duplicates"] += 1
        if series == 0:
            # 00:05 again with another value: under the declared policy (`first`) the first
            # version stays in silver and this one is kept in the quarantine as a conflict.
            lines.append("2024-01-01 00:05:00,99.0")
            expected["conflicts"] += 1
        (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")
        expected["lines"] += len(lines) - 1
    return expected


def _table(settings_warehouse: Path, *parts: str):
    return DeltaTable(str(settings_warehouse.joinpath(*parts))).to_pyarrow_table()


def test_batch_runs_killed_at_every_step_leave_exact_tables(tmp_path):
    inputs = tmp_path / "input"
    expected = _write_input(inputs)
    warehouse = tmp_path / "warehouse"
    environment = {"LAKEHOUSE_WAREHOUSE": str(warehouse)}
    run = ("batch", "run", "-d", "metrics", "-i", str(inputs), "--json")

    for point in (*UNLOGGED_CRASH_POINTS, LOGGED_CRASH_POINT):
        killed = lakehouse(*run, environment={**environment, "LAKEHOUSE_CRASH_AT": point}, timeout=900)
        assert killed.returncode == -signal.SIGKILL, (point, killed.returncode, killed.stderr[-2000:])
        assert killed.stdout.strip() == "", f"{point}: a killed run printed a record"
    # The run killed after its succeeded row was written did all the work and is not rolled back:
    # the last run finds every event there already.
    finished = lakehouse(*run, environment=environment, timeout=900)
    assert finished.returncode == 0, finished.stderr[-3000:]
    last = json.loads(finished.stdout)
    assert last["status"] == "succeeded" and last["rolled_back"] is None
    assert last["input"] == expected["lines"]  # counted by the job from the files; here from the text
    assert last["valid"] == 0 and last["quarantined"] == expected["bad_lines"] and last["conflicts"] == expected["conflicts"]
    assert last["duplicates"] == expected["lines"] - expected["bad_lines"] - expected["conflicts"]

    silver = _table(warehouse, "metrics", constants.SILVER).to_pylist()
    ids = [row["event_id"] for row in silver]
    assert len(ids) == len(set(ids)), "an event is in silver twice"
    assert {row["event_id"]: row["value"] for row in silver} == expected["silver"]

    quarantine = [row for row in _table(warehouse, constants.SYSTEM_SCHEMA, constants.QUARANTINE).to_pylist()
                  if row["dataset"] == "metrics" and row["layer"] == constants.LAYER_BATCH]
    rules = [rule for row in quarantine for rule in row["failed_rules"]]
    assert len([row for row in quarantine if "event_id.conflict" not in row["failed_rules"]]) == expected["bad_lines"]
    assert rules.count("event_id.conflict") == expected["conflicts"]
    assert len({row["record_hash"] for row in quarantine}) == len(quarantine)

    runs = _table(warehouse, constants.SYSTEM_SCHEMA, constants.BATCH_RUNS)
    succeeded = sorted(runs.filter(pc.equal(runs["status"], "succeeded")).to_pylist(), key=lambda run: run["started_at"])
    assert len(succeeded) == 2  # the one killed after its log row, and the last
    succeeded_ids = {run["run_id"] for run in succeeded}
    assert {row["run_id"] for row in silver} == {succeeded[0]["run_id"]}, "silver holds rows of a run that did not succeed"
    assert {row["run_id"] for row in quarantine} <= succeeded_ids, "the quarantine holds rows of a run that did not succeed"
    assert sum(run["valid_rows"] for run in succeeded) == len(silver)
    for run in succeeded:
        parts = run["valid_rows"] + run["quarantined_rows"] + run["duplicate_rows"] + (run["conflict_rows"] or 0)
        assert run["input_rows"] == parts == expected["lines"], run
    # Each unlogged killed run was rolled back by the next: the two that had written silver by a
    # RESTORE of silver, all three by a DELETE of their quarantine rows (Delta's own history).
    operations = [entry["operation"] for entry in DeltaTable(str(warehouse / "metrics" / constants.SILVER)).history()]
    assert operations.count("RESTORE") == 2, operations
    quarantine_log = DeltaTable(str(warehouse / constants.SYSTEM_SCHEMA / constants.QUARANTINE)).history()
    assert [entry["operation"] for entry in quarantine_log].count("DELETE") == 3
    assert len(json.loads(succeeded[0]["report"])["rolled_back"]["runs"]) == 1  # the run just before it
