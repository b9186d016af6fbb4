"""Roll back what a batch run wrote when it did not succeed (killed, or failed after writing).

A run writes the quarantine and silver before it can know it will succeed (training, scoring and
the run log come after), and a SIGKILL leaves no run-log row at all. Without a roll-back its
inserts would sit in silver counted by no run: the next run over the same files would call them
duplicates. So every run starts by undoing the writes of runs the run log does not list as
succeeded, and a run that fails undoes its own:

- **silver** is restored to the version before the first commit of such a run. Silver's commits
  name their run (Delta `userMetadata`, set by batch/tables.py), and only batch runs write silver,
  one at a time per dataset (the scheduler runs them in sequence), so everything after that
  version belongs to unfinished runs or changes no data (OPTIMIZE). A restore, not a DELETE by
  run id: under `duplicates: latest` a run updates rows, and only the restore brings back the
  versions they replaced.
- **the quarantine** loses the batch rows of those runs (a DELETE by run id: the quarantine is
  insert-only, and the speed layer writes its own rows into it concurrently, so no restore).

The re-run then quarantines and inserts those records again under its own run id, so the run
log's succeeded runs account for every row of silver and of the batch quarantine.
Not rolled back: a model the unfinished run registered stays in the registry, never served (the
registry serves a model once its run succeeded, lakehouse/registry.py; its version is not reused),
and the batch view (every run rewrites it; the merged view reads it
only up to the last succeeded run's watermark).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from batch import run_log
from lakehouse import constants, storage, system_tables
from lakehouse.errors import LakehouseError
from lakehouse.settings import Settings
from schemas.declaration import Dataset

log = logging.getLogger(__name__)

# The commit's userMetadata that names the batch run writing it (batch/tables.py sets it).
RUN_METADATA_PREFIX = "lakehouse batch run "
# OPTIMIZE, VACUUM and the like rewrite files without changing rows: a restore may pass over them.
_NO_DATA_CHANGE = {"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES", "CREATE TABLE", "RESTORE"}
_ATTEMPTS = 5


@dataclass
class RollBack:
    """What a roll-back undid: the runs, silver's restored version, the quarantine rows deleted."""

    runs: list[str] = field(default_factory=list)
    silver_restored_to: int | None = None
    quarantine_rows_deleted: int = 0

    def to_json(self) -> dict:
        return {"runs": self.runs, "silver_restored_to": self.silver_restored_to,
                "quarantine_rows_deleted": self.quarantine_rows_deleted}


def commit_metadata(run_id: str) -> str:
    return f"{RUN_METADATA_PREFIX}{run_id}"


def roll_back_unfinished(spark: SparkSession, dataset: Dataset, settings: Settings, *, current: str | None = None) -> RollBack:
    """Undo the silver and quarantine writes of every run of the dataset not logged as succeeded
    (a run that failed is among them, so it can undo its own). `current` names the run doing it,
    for the log."""
    succeeded = _succeeded_runs(settings, dataset)
    rolled = RollBack()
    silver_runs = _roll_back_silver(spark, dataset, settings, succeeded, rolled)
    quarantine_runs = _roll_back_quarantine(spark, dataset, settings, succeeded, rolled)
    rolled.runs = sorted(silver_runs | quarantine_runs)
    if rolled.runs:
        log.warning(
            "%s: rolled back the writes of unfinished run(s) %s: silver restored to version %s, %d quarantine row(s) removed%s",
            dataset.name, ", ".join(rolled.runs), rolled.silver_restored_to, rolled.quarantine_rows_deleted,
            f" (by run {current})" if current else "",
        )
    return rolled


def _succeeded_runs(settings: Settings, dataset: Dataset) -> set[str]:
    frame = run_log.runs(settings, dataset.name)
    return set(frame.loc[frame["status"] == system_tables.STATUS_SUCCEEDED, "run_id"])


def _roll_back_silver(spark: SparkSession, dataset: Dataset, settings: Settings, succeeded: set[str], rolled: RollBack) -> set[str]:
    uri = settings.table_uri(dataset.name, constants.SILVER)
    if not storage.table_exists(uri):
        return set()
    table = DeltaTable.forPath(spark, uri)
    live = _live_commits(table)
    unfinished = [commit for commit in live if commit.run is not None and commit.run not in succeeded]
    if not unfinished:
        return set()
    first = unfinished[0].version
    later_writes = [
        commit for commit in live
        if commit.version > first and commit.operation not in _NO_DATA_CHANGE and (commit.run is None or commit.run in succeeded)
    ]
    if later_writes:
        raise LakehouseError(
            f"{uri}: version {first} was written by unfinished run {unfinished[0].run}, but later versions were written "
            f"by others ({', '.join(f'{commit.version} {commit.operation}' for commit in later_writes[:3])}): "
            f"roll back by hand (RESTORE TABLE ... TO VERSION AS OF {first - 1})",
        )
    previous = max(commit.version for commit in live if commit.version < first)
    table.restoreToVersion(previous)
    rolled.silver_restored_to = previous
    return {commit.run for commit in unfinished}


@dataclass
class _Commit:
    version: int
    operation: str
    run: str | None  # the batch run that wrote it (userMetadata), if any


def _live_commits(table: DeltaTable) -> list[_Commit]:
    """The commits whose changes the table holds now, oldest first: a RESTORE to version v undoes
    every commit after v (they stay in the history, but their rows are gone)."""
    rows = table.history().select("version", "operation", "userMetadata", "operationParameters").collect()
    live: list[_Commit] = []
    for row in sorted(rows, key=lambda row: int(row["version"])):
        metadata = row["userMetadata"] or ""
        run = metadata[len(RUN_METADATA_PREFIX):] if metadata.startswith(RUN_METADATA_PREFIX) else None
        if row["operation"] == "RESTORE":
            target = (row["operationParameters"] or {}).get("version")
            # Restored to a timestamp (by hand): what came before cannot be told apart; keep none.
            live = [commit for commit in live if target is not None and commit.version <= int(target)]
        live.append(_Commit(int(row["version"]), row["operation"], run))
    return live


def _roll_back_quarantine(spark: SparkSession, dataset: Dataset, settings: Settings, succeeded: set[str], rolled: RollBack) -> set[str]:
    uri = settings.table_uri(constants.SYSTEM_SCHEMA, constants.QUARANTINE)
    if not storage.table_exists(uri):
        return set()
    batch_rows = (F.col("dataset") == dataset.name) & (F.col("layer") == constants.LAYER_BATCH) & F.col("run_id").isNotNull()
    quarantine = spark.read.format("delta").load(uri).where(batch_rows)
    runs = {row["run_id"] for row in quarantine.select("run_id").distinct().collect()} - succeeded
    if not runs:
        return set()
    condition = batch_rows & F.col("run_id").isin(sorted(runs))
    table = DeltaTable.forPath(spark, uri)
    # The speed layer appends dead letters concurrently: a conflicting commit is retried (the
    # DELETE is idempotent).
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            before = table.history(1).collect()[0]["version"]
            table.delete(condition)
            last = table.history(1).collect()[0]
            if last["version"] != before:
                rolled.quarantine_rows_deleted = int((last["operationMetrics"] or {}).get("numDeletedRows", 0))
            break
        except Exception as error:  # noqa: BLE001 - Delta's conflict errors arrive as captured JVM errors
            if "Concurrent" not in type(error).__name__ + str(error)[:500] or attempt == _ATTEMPTS:
                raise
            time.sleep(0.5 * attempt)
    return runs
