"""The system tables, declared once: their Arrow schemas, keys and statuses.

The quarantine, the run log (`batch_runs`), the model registry (`models`) and the scored rows of
the batch view (`batch_scores`) and the hot table (`hot_scores`) are written by several engines:
Spark in the batch layer, delta-rs in the speed layer and the registry, and read through Trino's
views. Each engine takes its schema from here (Spark converts these Arrow schemas, delta-rs writes
them as they are, the views name the columns listed here), so the layers cannot drift apart, as
the input records cannot (schemas/).

Column types, nullability and order are those of the tables already in warehouses: a change here
is a change of stored tables. Spark creates every Delta column nullable, so the tables Spark writes
(quarantine, batch_scores) are declared with nullable columns only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

import pyarrow as pa

from schemas.declaration import Dataset
from schemas.engines import arrow_type

# Every instant is stored as declared dataset timestamps are: microseconds, UTC.
TIMESTAMP = arrow_type("timestamp")

# --- quarantine: every rejected record of either layer, untouched, with the rules it failed ---

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string()),
        pa.field("event_id", pa.string()),
        pa.field("record_hash", pa.string()),
        pa.field("raw", pa.string()),
        pa.field("failed_rules", pa.list_(pa.string())),
        pa.field("errors", pa.list_(pa.string())),
        pa.field("source", pa.string()),
        pa.field("layer", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("quarantined_at", TIMESTAMP),
    ]
)
# One row per record read from one place: a re-run or a replay quarantines nothing twice, and N
# identical bad lines of one file are N rows, since the place is the line (`record_source`). The
# event id cannot be the key: a rejected record may have none, or share one with a valid record.
QUARANTINE_KEY = ("dataset", "record_hash")
# Between the raw text and its source in the hashed text. Spark (batch) computes the hash with
# its own sha2 over the same text; a test checks the two agree.
RECORD_HASH_SEPARATOR = "\u0000"


def record_source(source: str, line: int | None) -> str:
    """Where a record was read, as the quarantine's `source`: `<file>:<line>` (1-based; for a
    Parquet file, its row) when the line is known, else the file (a file quarantined whole) or the
    stream's own position (`kafka://topic/partition@offset`)."""
    return source if line is None else f"{source}:{line}"


def record_hash(raw: str, source: str | None) -> str:
    """The quarantine key of a record: SHA-256 of its raw text and where it was read."""
    return hashlib.sha256(f"{raw}{RECORD_HASH_SEPARATOR}{source or ''}".encode()).hexdigest()


def quarantine_row(
    dataset_name: str,
    *,
    raw: str,
    source: str | None,
    event_id: str | None,
    failed_rules: list[str],
    errors: list[str],
    layer: str,
    run_id: str | None,
    quarantined_at: datetime,
) -> dict[str, Any]:
    """A rejected record as a quarantine row (the speed layer's dead letter)."""
    return {
        "dataset": dataset_name,
        "event_id": event_id,
        "record_hash": record_hash(raw, source),
        "raw": raw,
        "failed_rules": failed_rules,
        "errors": errors,
        "source": source,
        "layer": layer,
        "run_id": run_id,
        "quarantined_at": quarantined_at,
    }


# --- batch_runs: the run log, one row per batch run ---

STATUS_SUCCEEDED = "succeeded"
STATUS_FAILED = "failed"
RUN_STATUSES = (STATUS_SUCCEEDED, STATUS_FAILED)

BATCH_RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("started_at", TIMESTAMP, nullable=False),
        pa.field("finished_at", TIMESTAMP, nullable=False),
        pa.field("inputs", pa.string()),
        pa.field("input_rows", pa.int64()),
        pa.field("valid_rows", pa.int64()),
        pa.field("quarantined_rows", pa.int64()),
        pa.field("duplicate_rows", pa.int64()),
        pa.field("silver_rows", pa.int64()),
        pa.field("scored_rows", pa.int64()),
        pa.field("anomalies", pa.int64()),
        pa.field("model_version", pa.int64()),
        pa.field("expired_hot_rows", pa.int64()),
        # The newest event time the run fully covers; the merged view's boundary is the newest
        # watermark of a run whose status is STATUS_SUCCEEDED.
        pa.field("watermark", TIMESTAMP),
        pa.field("timings", pa.string()),
        pa.field("error", pa.string()),
        # JSON: the Great Expectations result of the run, the per-rule record counts and, per
        # input file, its format, its records counted from its bytes and the records read.
        pa.field("report", pa.string()),
        # Input files quarantined whole (not readable as their format); added after the first build.
        pa.field("files_quarantined", pa.int64()),
        # Records that lost to another version of their event id (kept in the quarantine under
        # rule event_id.conflict); input = valid + quarantined + duplicates + conflicts. Added
        # after the first build.
        pa.field("conflict_rows", pa.int64()),
    ]
)
BATCH_RUNS_KEY = ("run_id",)

# --- models: the registry, one row per (dataset, entity) and version ---

MODELS_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("entity_id", pa.string(), nullable=False),
        pa.field("version", pa.int64(), nullable=False),
        pa.field("detector", pa.string(), nullable=False),
        pa.field("params", pa.string()),
        pa.field("contamination", pa.float64()),
        pa.field("threshold", pa.float64()),
        pa.field("feature_names", pa.string()),
        pa.field("train_start", TIMESTAMP),
        pa.field("train_end", TIMESTAMP),
        pa.field("train_rows", pa.int64()),
        pa.field("metrics", pa.string()),
        pa.field("artifact_uri", pa.string(), nullable=False),
        pa.field("run_id", pa.string()),
        pa.field("created_at", TIMESTAMP),
    ]
)
MODELS_KEY = ("dataset", "entity_id", "version")
# The entity_id of a model trained on every entity of a dataset (detector `per: dataset`).
DATASET_WIDE_ENTITY = "*"

Model = TypeVar("Model")


def model_for(models: Mapping[str, Model], entity_id: str) -> Model | None:
    """The model that scores an entity's events: its own, else the dataset-wide one, else None.

    Both layers score through this, so an entity without a model of its own falls back the same
    way in the batch view and the hot table.
    """
    own = models.get(entity_id)
    return own if own is not None else models.get(DATASET_WIDE_ENTITY)


# --- scored rows: the batch view (batch_scores) and the hot table (hot_scores) ---

# What a model adds to an event, the same in both layers.
SCORE_FIELDS = (
    pa.field("score", pa.float64()),
    pa.field("is_anomaly", pa.bool_()),
    pa.field("model_version", pa.int64()),
)
SCORED_AT = pa.field("scored_at", TIMESTAMP)
# Which computation of an event's features a hot row holds (nanoseconds, increasing per entity):
# the hot table keeps the highest, whatever order parallel writers commit in.
REVISION = pa.field("revision", pa.int64())
# Whether the event is the first alarm of an episode (lakehouse/alerts.py), in both scored tables:
# the batch job flags the batch view over each entity's whole history (batch/score.py), the speed
# layer flags hot rows from each entity's recent flags in its state, revising later rows when a
# late event changes them (speed/alert_flags.py). The `alerts` view reads the column on both
# sides instead of running a window over history in every query (serving/views.py).
IS_ALERT = pa.field("is_alert", pa.bool_())
# The calibrated score (lakehouse/likelihood.py): how unlikely the event's relative score is
# against its entity's earlier scores, -log10 of a tail probability (NaN: unscored), reported
# where it is a new peak for the entity and 0 elsewhere (lakehouse/likelihood.py). Written by
# both layers like `is_alert`: the batch job folds each entity's whole history, the speed layer
# steps on from the entity's newest stored state, which every row keeps in LIKELIHOOD (the state
# after the event: a job starting, or an entity back from expiry, reads one row, not a history).
SURPRISE = pa.field("surprise", pa.float64())
LIKELIHOOD = pa.field(
    "likelihood",
    pa.struct([
        pa.field("count", pa.int64()),
        pa.field("mean", pa.float64()),
        pa.field("variance", pa.float64()),
        pa.field("recent", pa.list_(pa.float64())),
        pa.field("peak", pa.float64()),
    ]),
)
# The batch view's partition column: the event's date.
EVENT_DATE = pa.field("event_date", pa.date32())
# Silver's partition column: the first day of the event's month. A day of events is a few MB at
# the fleets this serves (5.8k rows a day for 20 sensors), far below the ~1 GB a Delta partition
# should hold: by day, a run over half a year of history wrote 174 small files, twice the time
# of the same rows by month (6 files), measured on 1M rows (docs/benchmarks.md, "Seventh round").
# Silver keeps `event_date` as a column: filters on it skip files by Delta's statistics.
EVENT_MONTH = pa.field("event_month", pa.date32())


def scored_row_key(dataset: Dataset) -> str:
    """Both scored tables hold one row per event id."""
    return dataset.event_id


def _event_fields(dataset: Dataset) -> list[pa.Field]:
    # Feature values as the detectors read them (float64), whatever their declared numeric type.
    return [
        pa.field(dataset.event_id, pa.string()),
        pa.field(dataset.entity, pa.string()),
        pa.field(dataset.event_time, TIMESTAMP),
        *[pa.field(name, pa.float64()) for name in dataset.features.fields],
    ]


def event_field_names(dataset: Dataset) -> tuple[str, ...]:
    """The names of _event_fields, without building pyarrow fields (asked once per scored event)."""
    return (dataset.event_id, dataset.entity, dataset.event_time, *dataset.features.fields)


def scored_fields(dataset: Dataset) -> list[pa.Field]:
    """The columns the batch view and the hot table share, in their order: the columns the merged
    view serves from either side."""
    return [*_event_fields(dataset), *SCORE_FIELDS]


def served_columns(dataset: Dataset) -> list[str]:
    return [field.name for field in scored_fields(dataset)]


def batch_scores_schema(dataset: Dataset) -> pa.Schema:
    return pa.schema([*scored_fields(dataset), IS_ALERT, pa.field("run_id", pa.string()), SCORED_AT, EVENT_DATE, SURPRISE, LIKELIHOOD])


def hot_scores_schema(dataset: Dataset) -> pa.Schema:
    return pa.schema([*scored_fields(dataset), SCORED_AT, REVISION, IS_ALERT, SURPRISE, LIKELIHOOD])


def hot_row(
    dataset: Dataset,
    record: Mapping[str, Any],
    *,
    score: float,
    is_anomaly: bool,
    model_version: int,
    scored_at: datetime,
    revision: int,
    is_alert: bool = False,
) -> dict[str, Any]:
    """A scored event as a hot-table row: the record's event fields plus its score. `is_alert`,
    `surprise` and `likelihood` are set by the speed layer's alert step from the entity's
    previous rows (speed/alert_flags.py). The speed layer's scoring builds the same dict many rows
    at a time (speed/scoring.ScoreBatch._hot_rows; tests/test_speed.py holds them equal)."""
    return {
        **{name: record[name] for name in event_field_names(dataset)},
        "score": float(score),
        "is_anomaly": bool(is_anomaly),
        "model_version": model_version,
        SCORED_AT.name: scored_at,
        REVISION.name: revision,
        IS_ALERT.name: bool(is_alert),
        SURPRISE.name: None,
        LIKELIHOOD.name: None,
    }
