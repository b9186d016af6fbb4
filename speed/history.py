"""Seeding the speed layer's per-entity state from silver and the hot table, so features match
the batch layer's.

A freshly started pipeline has empty state: without seeding, the first `window` events of each
entity would see less history than the batch layer gives them, and score differently. At start
each worker reads the newest days of silver (partition pruning on event_month, or on event_date
in a table created before silver was partitioned by month) and the hot table
(the events earlier speed runs scored since the last batch run: a Kafka micro-batch or a
restarted pipeline continues from them), and keeps the last events of each entity; an entity's
state is seeded from them on its first event.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta
from typing import Collection

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakehouse import constants, storage
from lakehouse.system_tables import EVENT_DATE, EVENT_MONTH
from lakehouse.settings import Settings
from schemas.declaration import Dataset

log = logging.getLogger(__name__)

# Event times (int64 microseconds since the epoch), event ids (numpy str), values (events x fields).
History = tuple[np.ndarray, np.ndarray, np.ndarray]


def entity_filter(dataset: Dataset, entities: Collection[str] | None):
    """An Arrow filter on the entity column for these entities (None: no filter)."""
    if entities is None:
        return None
    # Cast: tables MERGEd by delta-rs store strings as string_view, which compares to no literal,
    # though the table's schema says string (tried 2026-12-02: the filter without the cast fails on
    # such files). The cast keeps Arrow from using the row groups' statistics, so a read for a few
    # entities costs a scan of the table: callers read many entities at once (the soak's entities
    # back from expiry, read one by one, stalled it; docs/benchmarks.md, "Memory soak").
    return pc.field(dataset.entity).cast(pa.string()).isin(pa.array(sorted(set(entities)), pa.string()))


def _newest_day(table) -> date | None:
    """Silver's newest event date, from the Delta log alone: the partition values of a table
    partitioned by day, else the files' statistics (None when it holds no row)."""
    if EVENT_DATE.name in table.metadata().partition_columns:
        days = [date.fromisoformat(str(partition[EVENT_DATE.name])) for partition in table.partitions()]
        return max(days, default=None)
    files = pa.table(table.get_add_actions(flatten=True))
    column = f"max.{EVENT_DATE.name}"
    if column not in files.column_names or not files.num_rows:
        return None
    newest = pc.max(files[column]).as_py()
    return None if newest is None else newest if isinstance(newest, date) else date.fromisoformat(str(newest)[:10])


def recent_history(
    settings: Settings, dataset: Dataset, *, lookback_days: int | None = 7, entities: Collection[str] | None = None
) -> dict[str, History]:
    """entity -> its events of the lookback in silver and the hot table, oldest first (only those
    of `entities`, when given). The lookback counts back from silver's newest day; None reads all
    of silver (for entities whose events are older than that)."""
    columns = [dataset.event_id, dataset.entity, dataset.event_time, *dataset.features.fields]
    only = entity_filter(dataset, entities)
    tables = []
    since = None
    uri = settings.table_uri(dataset.name, constants.SILVER)
    if storage.table_exists(uri):
        table = storage.open_table(uri)
        newest = _newest_day(table)
        if newest is not None:
            recent = None
            if lookback_days is not None:
                since = newest - timedelta(days=lookback_days)
                recent = pc.field(EVENT_DATE.name) >= pc.scalar(since)
                if EVENT_MONTH.name in table.metadata().partition_columns:
                    recent = (pc.field(EVENT_MONTH.name) >= pc.scalar(since.replace(day=1))) & recent
            conditions = [condition for condition in (recent, only) if condition is not None]
            condition = conditions[0] if len(conditions) == 1 else (conditions[0] & conditions[1] if conditions else None)
            tables.append(plain(table.to_pyarrow_dataset().to_table(columns=columns, filter=condition)))
    hot_uri = settings.table_uri(dataset.name, constants.HOT_SCORES)
    if storage.table_exists(hot_uri):
        # Expired up to the watermark by each batch run, so it holds only what silver lacks (or
        # repeats it: the same event id with the same values).
        tables.append(plain(storage.open_table(hot_uri).to_pyarrow_dataset().to_table(columns=columns, filter=only)))
    tables = [table for table in tables if table.num_rows]
    if not tables:
        return {}
    rows = pa.concat_tables(tables, promote_options="permissive")
    # Each event id's last row (the hot table's, when both hold it).
    codes = pc.dictionary_encode(rows[dataset.event_id]).combine_chunks().indices.to_numpy()
    _, last_reversed = np.unique(codes[::-1], return_index=True)
    rows = ordered(rows.take(np.sort(len(codes) - 1 - last_reversed)), dataset)
    # Every event of the lookback is kept, not only the newest 2 x window: an event beyond state
    # takes its features from the events before it (ComputeFeatures._snapshot_features).
    history: dict[str, History] = {}
    times = rows[dataset.event_time].cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    ids = rows[dataset.event_id].to_numpy().astype(str)
    values = np.column_stack([rows[name].to_numpy().astype(np.float64) for name in dataset.features.fields])
    entities = rows[dataset.entity].to_numpy().astype(str)
    for start, end in entity_slices(entities):
        history[str(entities[start])] = (times[start:end], ids[start:end], values[start:end])
    log.info("speed: read history for %d entities of %s from silver since %s and the hot table", len(history), dataset.name, since)
    return history


def plain(table: pa.Table) -> pa.Table:
    """The table with string_view columns (delta-rs MERGEs write them) as plain strings, so tables
    of both kinds concatenate and sort."""
    schema = pa.schema([field.with_type(pa.string()) if field.type == pa.string_view() else field for field in table.schema])
    return table if schema == table.schema else table.cast(schema)


def ordered(table: pa.Table, dataset: Dataset) -> pa.Table:
    """The rows by entity, event time and event id, sorted by Arrow: pandas' sort of the same rows
    as Python strings took 4 to 9 s of a job's start (1,000 entities, 290k rows, 2026-12-02)."""
    return table.sort_by([(dataset.entity, "ascending"), (dataset.event_time, "ascending"), (dataset.event_id, "ascending")])


def entity_slices(entities: np.ndarray):
    """(start, end) of each entity's rows in rows sorted by entity."""
    if not len(entities):
        return
    starts = np.flatnonzero(np.r_[True, entities[1:] != entities[:-1]])
    yield from zip(starts.tolist(), np.r_[starts[1:], len(entities)].tolist())
