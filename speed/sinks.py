"""The speed layer's Delta sinks: scored events upserted into the hot table, valid events landed
for the batch layer, dead letters added to the quarantine table; each acknowledges what it
committed."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Iterable

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from lakehouse import system_tables
from lakehouse.settings import Settings
from schemas.declaration import Dataset
from speed import acks, metrics, tables
from speed.carried_fields import ACK, ACK_ONLY, ARRIVED_AT, NEW, SOURCE

log = logging.getLogger(__name__)

# The hot table keeps the highest revision of each event (speed/carried_fields.py).
REVISION_COLUMN = system_tables.REVISION.name

# Each sink yields, per commit, one list of (source, kind), one per row it committed
# (speed/acks.py): a continuous Kafka run commits a partition's offset only once every output of
# every record before it is durable (speed/kafka_stream.py). A list per commit, not an element
# per row: the acknowledgements are as many as the rows, and each element costs the runner more
# than the row.


class _CompactsPeriodically:
    """Mixin for sinks: compacts the sink's table every `COMPACT_EVERY` commits of this worker.

    With two workers committing, the table is looked at about every 10 commits and compacted from
    16 small files (speed/tables.py): a query of the hot table opens a few dozen files at most.
    """

    COMPACT_EVERY = 20
    # Columns the compacted rows are sorted by (speed/tables.compact), when the sink sets them.
    compact_sort_by: list[str] | None = None
    # Compact on a thread of its own, beside the commits, instead of between two of them: a sink
    # that only appends never conflicts with it (an append reads no file), and its commits no
    # longer wait for it (it held the one writer up to a second every 20 commits: the p99).
    compact_in_background = False

    def _committed_one(self, uri: str) -> None:
        self.commits_since_compaction = getattr(self, "commits_since_compaction", 0) + 1
        if self.commits_since_compaction < self.COMPACT_EVERY:
            return
        if not self.compact_in_background:
            self.commits_since_compaction = 0
            tables.compact(uri, sort_by=self.compact_sort_by)
            return
        running = getattr(self, "compaction", None)
        if running is not None and running.is_alive():
            return  # looked at again after the next commit
        self.commits_since_compaction = 0
        self.compaction = threading.Thread(target=_compact_logged, args=(uri, self.compact_sort_by), name=f"compact {uri}", daemon=True)
        self.compaction.start()

    def teardown(self) -> None:
        running = getattr(self, "compaction", None)
        if running is not None:
            running.join()


def _compact_logged(uri: str, sort_by: list[str] | None) -> None:
    try:
        tables.compact(uri, sort_by=sort_by)
    except Exception:  # the next one tries again; the sink's commits do not depend on it
        log.exception("%s: compaction failed", uri)


class UpsertHotScores(_CompactsPeriodically, beam.DoFn):
    """Upserts a batch of scored events into the hot Delta table by event id (one commit per batch).

    `append_new` (streaming, where one writer gets the rows in the order state emitted them): an
    event's first row (NEW, speed/carried_fields.py) is appended, a blind append that reads no
    file; only revisions, replays and events beyond state go through the MERGE. A MERGE reads the
    files that may hold the batch's keys and rewrites those it matches: on this machine 0.3 to 1 s
    a commit against tens of milliseconds for an append (docs/benchmarks.md, "Speed").
    """

    def __init__(self, dataset: Dataset, settings: Settings, append_new: bool = False, compact_in_background: bool = False) -> None:
        self.dataset = dataset
        self.settings = settings
        self.append_new = append_new
        # A job without end only: a bounded job's caller may take the table over (read, remove)
        # as soon as the job is done, and must not race a compaction still running.
        self.compact_in_background = compact_in_background
        self.committed = Metrics.counter("speed", "hot_rows_committed")
        self.latency = Metrics.distribution("speed", "commit_latency_ms")

    def setup(self) -> None:
        self.uri = tables.hot_table_uri(self.settings, self.dataset)
        self.schema = system_tables.hot_scores_schema(self.dataset)
        self.key = system_tables.scored_row_key(self.dataset)
        # Compacted by entity, as the batch view is laid out: Trino skips the rest for one entity.
        self.compact_sort_by = [self.dataset.entity]
        name = self.dataset.name
        self.prometheus = (
            metrics.HOT_ROWS.labels(name),
            metrics.COMMIT_DURATION.labels(name),
            metrics.COMMIT_LATENCY.labels(name),
            metrics.EVENT_TIME_LAG.labels(name),
        )

    def process(self, batch: list[dict]) -> Iterable[tuple[str, str]]:
        metrics.trace("sink_in", batch, SOURCE)
        # A batch may hold an event twice (a replay, a revision): the highest revision wins, here
        # and against the table.
        latest: dict[str, dict] = {}
        for row in batch:
            key = row[self.key]
            if key not in latest or row[REVISION_COLUMN] >= latest[key][REVISION_COLUMN]:
                latest[key] = row
        started = time.perf_counter()
        if self.append_new:
            new = [row for row in latest.values() if row.get(NEW)]
            others = [row for row in latest.values() if not row.get(NEW)]
        else:
            new, others = [], list(latest.values())
        if new:
            tables.append(self.uri, pa.Table.from_pylist(new, schema=self.schema))
        if others:
            tables.upsert_by_key(
                self.uri, pa.Table.from_pylist(others, schema=self.schema), self.key, newest=REVISION_COLUMN,
                # An event id names one event, at one time: its versions share the event time.
                within=self.dataset.event_time,
            )
        duration = time.perf_counter() - started
        self._committed_one(self.uri)
        self.latency.update(int(duration * 1000))
        self.committed.inc(len(latest))
        rows, commit, arrival_latency, event_time_lag = self.prometheus
        rows.inc(len(latest))
        commit.observe(duration)
        committed_at = time.time()
        metrics.trace("committed", batch, SOURCE, committed_at)
        for row in latest.values():
            if row.get(ARRIVED_AT) is not None:
                latency = max(0.0, committed_at - row[ARRIVED_AT])
                arrival_latency.observe(latency)
                metrics.LATENCY_SAMPLES.append((row.get(SOURCE), latency))
            event_time_lag.observe(max(0.0, committed_at - row[self.dataset.event_time].timestamp()))
        yield from one_list(output_acks(batch, acks.HOT))


class WriteLanding(_CompactsPeriodically, beam.DoFn):
    """Lands valid events, as validated, in the dataset's landing table for the batch layer.

    Insert-only by event id, so a replay lands nothing twice; the batch layer reads the table with
    `lakehouse batch run --input landing` and MERGEs it into silver like any other input.
    """

    def __init__(self, dataset: Dataset, settings: Settings) -> None:
        self.dataset = dataset
        self.settings = settings
        self.landed = Metrics.counter("speed", "landed")

    def setup(self) -> None:
        self.uri = tables.landing_uri(self.settings, self.dataset)
        self.schema = tables.landing_schema(self.dataset)

    def process(self, batch: list[dict]) -> Iterable[tuple[str, str]]:
        landed_at = datetime.now(timezone.utc)
        unique = {row[self.dataset.event_id]: {**row, tables.LANDED_AT: landed_at} for row in batch}
        tables.insert_new(self.uri, pa.Table.from_pylist(list(unique.values()), schema=self.schema), [self.dataset.event_id])
        self._committed_one(self.uri)
        self.landed.inc(len(unique))
        yield from one_list(_record_acks(batch, acks.LANDING, SOURCE))


class WriteDeadLetters(beam.DoFn):
    """Adds dead letters to the shared quarantine table, once per (dataset, record hash)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def setup(self) -> None:
        self.uri = tables.quarantine_uri(self.settings)

    def process(self, batch: list[dict]) -> Iterable[tuple[str, str]]:
        letters = [row for row in batch if not row.get(ACK_ONLY)]
        unique = {tuple(row[name] for name in system_tables.QUARANTINE_KEY): row for row in letters}
        if unique:
            rows = pa.Table.from_pylist(list(unique.values()), schema=system_tables.QUARANTINE_SCHEMA)
            tables.insert_new(self.uri, rows, list(system_tables.QUARANTINE_KEY))
        # An unknown entity's letter stands for one scored output of a valid record (which is
        # landed too), and so does an acknowledgement alone (ACK_ONLY); any other letter is the
        # whole record's outcome.
        yield from one_list([
            *output_acks([row for row in batch if row.get(ACK)], acks.UNSCORED),
            *_record_acks([row for row in letters if not row.get(ACK)], acks.DEAD, "source"),
        ])


def one_list(acknowledgements: Iterable[tuple[str, str]]) -> Iterable[list[tuple[str, str]]]:
    """The commit's acknowledgements as one element (none when it has none)."""
    acknowledgements = list(acknowledgements)
    if acknowledgements:
        yield acknowledgements


def output_acks(batch: list[dict], sink: str) -> Iterable[tuple[str, str]]:
    """(source, "sink:k/n") per row: every row of the batch, not only the version kept, since each
    stands for its own output of the record read at `source`."""
    for row in batch:
        ack = row.get(ACK)
        if ack and ack[0]:
            yield ack[0], acks.of_unit(sink, ack[1])


def _record_acks(batch: list[dict], kind: str, source: str) -> Iterable[tuple[str, str]]:
    # `source`: the field naming where a row was read (dead letters keep it as a table column).
    for row in batch:
        if row.get(source):
            yield row[source], kind
