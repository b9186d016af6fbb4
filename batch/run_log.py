"""The run log (`batch_runs`): one row per batch run with its counts, timings and watermark.

The watermark of a dataset is the newest event time its last successful run fully covers; the
serving layer's merged view reads it from here. Small single-row commits go through delta-rs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime

import pandas as pd
import pyarrow as pa
from deltalake import write_deltalake

from lakehouse import constants, storage, system_tables
from lakehouse.settings import Settings

@dataclass
class RunRecord:
    run_id: str
    dataset: str
    status: str
    started_at: datetime
    finished_at: datetime
    inputs: list[str]
    input_rows: int | None = None
    valid_rows: int | None = None
    quarantined_rows: int | None = None
    duplicate_rows: int | None = None
    silver_rows: int | None = None
    scored_rows: int | None = None
    anomalies: int | None = None
    model_version: int | None = None
    expired_hot_rows: int | None = None
    watermark: datetime | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    report: dict = field(default_factory=dict)
    # Files quarantined whole (empty, undecodable, a declared column missing): their records are
    # not in input_rows; the report's "files" lists every file with its own counts.
    files_quarantined: int = 0
    # Records that lost to another version of their event id (batch/duplicates.py): kept in the
    # quarantine under rule event_id.conflict, counted here and not in quarantined_rows.
    conflict_rows: int | None = None

    def to_json(self) -> dict:
        """The run record as `lakehouse batch run --json` prints it."""
        return {
            "run_id": self.run_id, "dataset": self.dataset, "status": self.status, "input": self.input_rows,
            "valid": self.valid_rows, "quarantined": self.quarantined_rows, "duplicates": self.duplicate_rows,
            "conflicts": self.conflict_rows, "files_quarantined": self.files_quarantined, "files": self.report.get("files", []),
            "model_version": self.model_version, "watermark": self.watermark.isoformat() if self.watermark else None,
            "error": self.error,
            # The writes of unfinished runs this run undid first (batch/recovery.py), if any.
            "rolled_back": self.report.get("rolled_back"),
        }

    @property
    def counts_add_up(self) -> bool:
        """input = valid + quarantined + duplicates + conflicts (input counted from the files' bytes)."""
        parts = (self.valid_rows, self.quarantined_rows, self.duplicate_rows, self.conflict_rows)
        return self.input_rows == sum(part or 0 for part in parts)


def table_uri(settings: Settings) -> str:
    return settings.table_uri(constants.SYSTEM_SCHEMA, constants.BATCH_RUNS)


def append(settings: Settings, record: RunRecord) -> None:
    row = asdict(record)
    row["inputs"] = json.dumps(record.inputs)
    row["timings"] = json.dumps({name: round(seconds, 3) for name, seconds in record.timings.items()})
    row["report"] = json.dumps(record.report, default=str)
    uri = table_uri(settings)
    # schema_mode="merge": a run log written by an older version gains the new columns.
    write_deltalake(
        uri, pa.Table.from_pylist([row], schema=system_tables.BATCH_RUNS_SCHEMA), mode="append", schema_mode="merge",
        storage_options=storage.storage_options(uri),
    )


def set_expired_hot_rows(settings: Settings, run_id: str, rows: int) -> None:
    """Record, after the fact, how many hot rows a succeeded run expired (expiry follows the run's
    own log row: batch/job.py)."""
    if not rows:
        return
    quoted = run_id.replace("'", "''")
    storage.open_table(table_uri(settings)).update(
        predicate=f"run_id = '{quoted}'", updates={"expired_hot_rows": str(int(rows))},
    )


def runs(settings: Settings, dataset: str | None = None) -> pd.DataFrame:
    uri = table_uri(settings)
    if not storage.table_exists(uri):
        return system_tables.BATCH_RUNS_SCHEMA.empty_table().to_pandas()
    frame = storage.open_table(uri).to_pandas()
    for name in system_tables.BATCH_RUNS_SCHEMA.names:
        if name not in frame.columns:  # a run log written before the column was declared
            frame[name] = None
    if dataset:
        frame = frame[frame["dataset"] == dataset]
    return frame.sort_values("started_at").reset_index(drop=True)


def report(settings: Settings, run_id: str) -> dict:
    """The stored report of one run (its row of the run log, with the JSON fields decoded)."""
    frame = runs(settings)
    match = frame[frame["run_id"] == run_id]
    if match.empty:
        from lakehouse.errors import LakehouseError

        raise LakehouseError(f"no batch run {run_id!r} in {table_uri(settings)}")
    row = match.iloc[0].to_dict()
    for name in ("inputs", "timings", "report"):
        row[name] = json.loads(row[name]) if isinstance(row.get(name), str) and row[name] else {}
    return row


def stored_record(settings: Settings, run_id: str) -> RunRecord:
    """A run's record as the run log stored it (for a run that raised, e.g. to print it)."""
    row = report(settings, run_id)
    names = {item.name for item in fields(RunRecord)}
    values = {name: (None if _missing(value) else value) for name, value in row.items() if name in names}
    for name in ("started_at", "finished_at", "watermark"):
        if values.get(name) is not None:
            values[name] = pd.Timestamp(values[name]).to_pydatetime()
    values["inputs"] = values.get("inputs") or []
    values["timings"] = values.get("timings") or {}
    values["report"] = values.get("report") or {}
    values["files_quarantined"] = int(values.get("files_quarantined") or 0)
    for name in ("input_rows", "valid_rows", "quarantined_rows", "duplicate_rows", "conflict_rows", "silver_rows",
                 "scored_rows", "anomalies", "model_version", "expired_hot_rows"):
        if values.get(name) is not None:
            values[name] = int(values[name])
    return RunRecord(**values)


def _missing(value) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def current_watermark(settings: Settings, dataset: str) -> pd.Timestamp | None:
    frame = runs(settings, dataset)
    frame = frame[frame["status"] == system_tables.STATUS_SUCCEEDED]
    if frame.empty or frame["watermark"].isna().all():
        return None
    return frame["watermark"].max()
