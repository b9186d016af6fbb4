"""Delta tables the speed layer writes with delta-rs: the hot table (upsert) and quarantine."""

from __future__ import annotations

import logging
import random
import time

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError

from lakehouse import constants, storage, system_tables
from lakehouse.settings import Settings
from schemas.declaration import Dataset
from schemas.engines import arrow_schema

log = logging.getLogger(__name__)

# Parallel workers of one pipeline (Flink runs two here) and a batch run's expiry commit to the
# same table; optimistic concurrency retries with jittered back-off.
_COMMIT_ATTEMPTS = 10


LANDED_AT = "landed_at"


def landing_schema(dataset: Dataset) -> pa.Schema:
    """The validated record as declared, plus when the speed layer landed it."""
    return pa.schema([*arrow_schema(dataset), pa.field(LANDED_AT, system_tables.TIMESTAMP)])


# The speed layer commits several times a second. A reader (Trino, with its metadata cache off)
# replays the log from the last checkpoint on every query: with delta-rs's default of a checkpoint
# every 100 commits, up to 99 JSON commits each time, which took a query of the hot table from
# about 30 ms to 400 ms of analysis (docs/benchmarks.md, serving). A checkpoint every 10 commits
# costs one small Parquet write per 10 commits.
STREAMING_TABLE_PROPERTIES = {"delta.checkpointInterval": "10"}


def ensure_table(uri: str, schema: pa.Schema) -> None:
    """Create an empty Delta table if none exists (before the pipeline starts: one creator)."""
    options = storage.storage_options(uri)
    if not storage.table_exists(uri):
        write_deltalake(uri, schema.empty_table(), mode="ignore", configuration=STREAMING_TABLE_PROPERTIES, storage_options=options)
        return
    table = DeltaTable(uri, storage_options=options)
    configured = table.metadata().configuration
    if any(configured.get(key) != value for key, value in STREAMING_TABLE_PROPERTIES.items()):
        # A table from an earlier release: checkpoint as often as new ones.
        _with_retries(lambda: DeltaTable(uri, storage_options=options).alter.set_table_properties(STREAMING_TABLE_PROPERTIES),
                      f"set properties of {uri}")
        table = DeltaTable(uri, storage_options=options)
    # A table from an earlier release gets the columns added since (nullable, so old rows read as null).
    present = set(table.schema().to_arrow().names)
    missing = [field for field in schema if field.name not in present]
    if missing:
        from deltalake.schema import Field as DeltaField

        table.alter.add_columns([DeltaField.from_arrow(field.with_nullable(True)) for field in missing])
        log.info("%s: added columns %s", uri, [field.name for field in missing])
        table = DeltaTable(uri, storage_options=options)
    # And a struct column gets the fields added to it since (the likelihood state's `peak`):
    # add_columns adds top-level columns only; an empty append that merges schemas adds nested ones.
    present_types = {field.name: field.type for field in pa.schema(table.schema().to_arrow())}
    grown = [field.name for field in schema if pa.types.is_struct(field.type) and pa.types.is_struct(present_types.get(field.name, pa.null()))
             and {child.name for child in field.type} - {child.name for child in present_types[field.name]}]
    if grown:
        _with_retries(lambda: write_deltalake(uri, schema.empty_table(), mode="append", schema_mode="merge", storage_options=options),
                      f"evolve {uri}")
        log.info("%s: added fields to the struct columns %s", uri, grown)


def _with_retries(action, what: str) -> None:
    # Optimistic concurrency: another writer (a batch run expiring hot rows) may commit first.
    for attempt in range(1, _COMMIT_ATTEMPTS + 1):
        try:
            action()
            return
        except CommitFailedError:
            if attempt == _COMMIT_ATTEMPTS:
                raise
            log.warning("%s: commit conflict, retrying (%d/%d)", what, attempt, _COMMIT_ATTEMPTS)
            time.sleep(0.05 * attempt * (1 + random.random()))


def upsert_by_key(uri: str, rows: pa.Table, key: str, newest: str | None = None, within: str | None = None) -> None:
    """Insert new keys, update existing ones: a replayed event overwrites itself, never duplicates.

    newest: a column that orders versions of a row; an existing row is replaced only by a version
    at least as new (null in the table, from before the column existed, counts as oldest).
    within: a column whose value a key always has (an event's time): the MERGE then reads only
    the files whose statistics overlap the rows' range of it. Without it, every commit of the
    speed layer read the whole hot table, so a commit's cost grew with the table (docs/benchmarks.md).
    """
    if rows.num_rows == 0:
        return
    predicate = f"target.{key} = source.{key}"
    if within is not None:
        low, high = pc.min_max(rows.column(within)).values()
        predicate += f" AND target.{within} >= '{low.as_py().isoformat()}' AND target.{within} <= '{high.as_py().isoformat()}'"

    def merge() -> None:
        table = DeltaTable(uri, storage_options=storage.storage_options(uri))
        (
            table.merge(rows, predicate=predicate, source_alias="source", target_alias="target")
            .when_matched_update_all(
                predicate=None if newest is None else f"target.{newest} IS NULL OR source.{newest} >= target.{newest}"
            )
            .when_not_matched_insert_all()
            .execute()
        )

    _with_retries(merge, f"upsert into {uri}")


def append(uri: str, rows: pa.Table) -> None:
    """Append rows whose keys the caller knows to be in no row of the table (a blind append: it
    reads no data file, and concurrent writers never make it conflict)."""
    if rows.num_rows == 0:
        return
    _with_retries(lambda: write_deltalake(uri, rows, mode="append", storage_options=storage.storage_options(uri)),
                  f"append to {uri}")


def insert_new(uri: str, rows: pa.Table, keys: list[str]) -> None:
    """Insert rows whose keys are not in the table yet (idempotent append)."""
    if rows.num_rows == 0:
        return
    predicate = " AND ".join(f"target.{key} = source.{key}" for key in keys)

    def merge() -> None:
        table = DeltaTable(uri, storage_options=storage.storage_options(uri))
        table.merge(rows, predicate=predicate, source_alias="source", target_alias="target").when_not_matched_insert_all().execute()

    _with_retries(merge, f"insert into {uri}")


# Files from this size on are left as they are by compaction: without a bound, every compaction
# rewrote the whole hot table into one file (delta-rs's default target is 100 MB), a cost that
# grew with the table, and one file spanning every event time defeats the MERGE's pruning.
COMPACTED_FILE_BYTES = 16 * 1024 * 1024
# A table up to this size is rewritten whole, sorted, when compacted (`sort_by`); a bigger one has
# only its small files bin-packed, unsorted (delta-rs sorts only by rewriting every file, and a
# rewrite of the whole table every few seconds of streaming would grow with the table).
SORTED_TABLE_BYTES = 64 * 1024 * 1024
# Row groups of a sorted rewrite: each holds a range of the sort key, and Trino skips those whose
# statistics exclude a query's filter (one entity reads one or two of them).
SORTED_ROW_GROUP_ROWS = 16 * 1024


def compact(uri: str, min_files: int = 16, sort_by: list[str] | None = None) -> int:
    """Compact the table's small files once it has at least `min_files` of them; files removed.

    A streaming sink commits every fraction of a second, one small file each; readers (MERGE,
    Trino) slow down with the file count: each file is a split Trino schedules and opens.
    Checkpoints: every 10 commits (STREAMING_TABLE_PROPERTIES).

    sort_by: columns to cluster the compacted rows by (the hot table: its entity), as the batch
    view is sorted (batch/tables.write_batch_view), so that Trino reads only the row groups and
    files of the entities a query asks for. delta-rs's `z_order` over one column sorts by it; it
    rewrites every file, so it is used while the table is at most SORTED_TABLE_BYTES.
    """
    table = DeltaTable(uri, storage_options=storage.storage_options(uri))
    sizes = table.get_add_actions(flatten=True).column("size_bytes").to_pylist()
    if sum(1 for size in sizes if size < COMPACTED_FILE_BYTES) < min_files:
        return 0
    sorted_rewrite = bool(sort_by) and sum(sizes) <= SORTED_TABLE_BYTES
    removed = 0

    def optimize() -> None:
        nonlocal removed
        optimizer = DeltaTable(uri, storage_options=storage.storage_options(uri)).optimize
        if sorted_rewrite:
            metrics = optimizer.z_order(
                sort_by, target_size=COMPACTED_FILE_BYTES,
                # ZSTD level 4: what delta-rs optimize writes when given no writer properties.
                writer_properties=WriterProperties(max_row_group_size=SORTED_ROW_GROUP_ROWS, compression="ZSTD", compression_level=4),
            )
        else:
            metrics = optimizer.compact(target_size=COMPACTED_FILE_BYTES)
        removed = metrics["numFilesRemoved"]

    _with_retries(optimize, f"compact {uri}")
    log.info("%s: compacted %d small files%s", uri, removed, f", sorted by {sort_by}" if sorted_rewrite else "")
    return removed


def hot_table_uri(settings: Settings, dataset: Dataset) -> str:
    return settings.table_uri(dataset.name, constants.HOT_SCORES)


def landing_uri(settings: Settings, dataset: Dataset) -> str:
    return settings.table_uri(dataset.name, constants.LANDING)


def quarantine_uri(settings: Settings) -> str:
    return settings.table_uri(constants.SYSTEM_SCHEMA, constants.QUARANTINE)
