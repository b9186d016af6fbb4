"""The speed layer's Beam transforms: parse and validate, per-entity features, score, write.

Validation and features are the very functions the batch layer uses (schemas/rules.py,
lakehouse/features.py), so the two layers reject the same records and compute the same features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import datetime, timezone
from typing import Any, Iterable

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer

from lakehouse import constants, registry
from lakehouse.features import compute_features
from lakehouse.settings import Settings
from schemas.declaration import Dataset
from schemas.rules import RecordValidator
from speed import metrics, tables
from speed.history import recent_history

log = logging.getLogger(__name__)

DEAD_LETTER = "dead_letter"
VALID = "valid"
LANDING = "landing"
# Seconds since the epoch when an event reached the pipeline (Kafka timestamp or replay read);
# carried beside the record for latency metrics, never written to a table.
ARRIVED_AT = "_arrived_at"
# Version of an event's features: nanoseconds since the epoch when they were computed, kept
# strictly increasing per entity through state (and so across state expiry). An event emitted
# again after a late event carries a higher one, and the hot table keeps the highest: parallel
# writers (two on Flink here) may commit an event's revisions in any order.
REVISION = "_revision"
# Where a record was read ("kafka://topic/partition@offset" or a replay file), carried to the sinks.
SOURCE = "_source"
# What each sink yields per input record it has committed, as (source, kind): a continuous Kafka
# run commits a partition's offset only once every record before it reached its sinks
# (speed/kafka_stream.py).
ACK_HOT, ACK_LANDING, ACK_DEAD = "hot", "landing", "dead"


def dead_letter(dataset: Dataset, raw: str, source: str, event_id: str | None, rules: list[str], errors: list[str]) -> dict:
    """A rejected record in the shared quarantine layout, with its original text untouched."""
    return {
        "dataset": dataset.name,
        "event_id": event_id,
        "record_hash": hashlib.sha256(f"{raw}\u0000{source}".encode()).hexdigest(),
        "raw": raw,
        "failed_rules": rules,
        "errors": errors,
        "source": source,
        "layer": constants.LAYER_SPEED,
        "run_id": None,
        "quarantined_at": datetime.now(timezone.utc),
    }


class ParseAndValidate(beam.DoFn):
    """(source, JSON text[, arrival]) -> typed record on the main output, or a dead letter with its reasons."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.valid = Metrics.counter("speed", "valid")
        self.rejected = Metrics.counter("speed", "dead_letters")

    def setup(self) -> None:
        self.validator = RecordValidator(self.dataset)
        self.prometheus_valid = metrics.EVENTS.labels(self.dataset.name, "valid")
        self.prometheus_rejected = metrics.EVENTS.labels(self.dataset.name, "dead_letter")

    def process(self, element: tuple) -> Iterable[Any]:
        source, text = element[0], element[1]
        arrived_at = element[2] if len(element) > 2 else time.time()
        for output in self._validate(source, text):
            if isinstance(output, beam.pvalue.TaggedOutput):
                self.prometheus_rejected.inc()
            else:
                self.prometheus_valid.inc()
                output[ARRIVED_AT] = arrived_at
                output[SOURCE] = source
            yield output

    def _validate(self, source: str, text: str) -> Iterable[Any]:
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            self.rejected.inc()
            message = f"record at {source}: malformed JSON ({error.msg} at column {error.colno})"
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(self.dataset, text, source, None, ["record.json"], [message]))
            return
        if not isinstance(record, dict):
            self.rejected.inc()
            message = f"record at {source}: expected a JSON object, got {type(record).__name__}"
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(self.dataset, text, source, None, ["record.object"], [message]))
            return
        typed, failures = self.validator.validate(record, source_file=source)
        if failures:
            self.rejected.inc()
            event_id = self.validator.texts(record, source).get(self.dataset.event_id)
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER,
                dead_letter(self.dataset, text, source, event_id, [f.rule for f in failures], [f.message for f in failures]),
            )
            return
        self.valid.inc()
        yield typed


class ComputeFeatures(beam.DoFn):
    """Per-entity features from the entity's recent history kept in Beam state.

    State holds the entity's newest 2 x `window` events (event time, event id, values) in
    event-time order, and whether they reach back to the entity's first event. Events usually
    arrive in order and are appended. An event that arrives late (runners do not promise order,
    Kafka partitions interleave) is inserted at its place, and
    every later event whose window now includes it is emitted again with corrected features; the
    hot table's upsert by event id replaces their earlier rows. So the stream ends with exactly
    the features the batch layer computes. An event whose window reaches before the oldest event
    in state (a re-sent old event, or one more than `window` events late) is not placed: its
    features come from the entity's history in silver and the hot table (re-read at most every
    30 s), and it is counted in `late_beyond_state`.
    """

    HISTORY = ReadModifyWriteStateSpec("history", PickleCoder())
    # Bounded memory in a pipeline that runs for months: an entity silent for `state_ttl_seconds`
    # (processing time) loses its state; its next event seeds it from silver again.
    EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)

    def __init__(self, dataset: Dataset, settings: Settings, state_ttl_seconds: float = 0.0) -> None:
        self.dataset = dataset
        self.settings = settings
        self.state_ttl_seconds = state_ttl_seconds
        self.late = Metrics.counter("speed", "late_events")
        self.revised = Metrics.counter("speed", "revised_events")
        self.too_late = Metrics.counter("speed", "late_beyond_state")
        self.seeded = Metrics.counter("speed", "entities_seeded_from_silver")

    # An event beyond state re-reads its entity's history at most this often: it is most likely a
    # re-sent event committed since start-up, which the start-up history lacks.
    HISTORY_REFRESH_SECONDS = 30.0

    def setup(self) -> None:
        self.silver_history = recent_history(self.settings, self.dataset)
        self.full_history: set[str] = set()  # entities whose whole history has been read
        self.history_read_at: dict[str, float] = {}
        # When this worker last pushed each entity's expiry back: re-setting a timer per event
        # costs more than the event, so it is pushed back at most every tenth of the TTL (state
        # then expires after 90 to 100% of the TTL of silence).
        self.expiry_pushed_at: dict[str, float] = {}
        self.prometheus_expired = metrics.STATE_EXPIRED.labels(self.dataset.name)

    def process(
        self,
        element: tuple[str, dict],
        history=beam.DoFn.StateParam(HISTORY),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterable[dict]:
        entity_id, record = element
        if self.state_ttl_seconds > 0:
            now = time.time()
            if now - self.expiry_pushed_at.get(entity_id, 0.0) > self.state_ttl_seconds / 10:
                expiry.set(now + self.state_ttl_seconds)
                self.expiry_pushed_at[entity_id] = now
        dataset = self.dataset
        window = dataset.features.window
        state = history.read()
        if state is None:
            times, ids, values, complete = self._seed(entity_id, record)
            state = (times, ids, values, 0, complete)
        times, ids, values, revision, complete = state
        key = (record[dataset.event_time], record[dataset.event_id])
        position = _insertion_point(times, ids, key)
        revision = max(revision + 1, time.time_ns())
        if position < window and not complete:
            # Its window reaches before the oldest event in state (a re-sent old event, or one
            # very late): state cannot place it, so it takes its features from the entity's
            # history in silver and the hot table, and changes no other event.
            self.too_late.inc()
            history.write((times, ids, values, revision, complete))
            yield {**record, "_features": self._snapshot_features(entity_id, record), REVISION: revision}
            return
        row = np.array([[record[name] for name in dataset.features.fields]], dtype=np.float64)
        replayed = position < len(times) and (times[position], ids[position]) == key
        if not replayed:
            if position < len(times):
                self.late.inc()
            times = times[:position] + [key[0]] + times[position:]
            ids = ids[:position] + [key[1]] + ids[position:]
            values = np.concatenate([values[:position], row, values[position:]])
        # Later events whose window (the `window` events before them) now holds this one; a
        # replayed event changes no other event's window.
        revise = range(0) if replayed else range(position + 1, min(len(times), position + window + 1))
        kept = 2 * window
        complete = complete and len(times) <= kept
        history.write((times[-kept:], ids[-kept:], values[-kept:], revision + len(revise), complete))
        yield {**record, "_features": self._features(times, values, position), REVISION: revision}
        for later in revise:
            self.revised.inc()
            revision += 1
            yield {
                REVISION: revision,
                dataset.event_id: ids[later],
                dataset.entity: entity_id,
                dataset.event_time: times[later],
                **{name: float(values[later, index]) for index, name in enumerate(dataset.features.fields)},
                "_features": self._features(times, values, later),
                "_revised": True,
            }

    @on_timer(EXPIRY)
    def expire(self, key=beam.DoFn.KeyParam, history=beam.DoFn.StateParam(HISTORY)):
        history.clear()
        self.expiry_pushed_at.pop(key, None)
        self.prometheus_expired.inc()
        return []

    def _features(self, times: list, values: np.ndarray, position: int) -> np.ndarray:
        return self._features_of(values[position : position + 1], times[position], values[:position])

    def _features_of(self, row: np.ndarray, event_time: datetime, history: np.ndarray) -> np.ndarray:
        """Features of one event (its values as a 1 x k row) after `history` (the events before it)."""
        event_times = np.array([np.datetime64(event_time.replace(tzinfo=None), "us")])
        return compute_features(self.dataset, row, event_times, history)[0]

    def _before(self, entity_id: str, record: dict, count: int):
        """The entity's newest `count` events before this one in its known history, and whether
        that reaches back to its first known event."""
        times, ids, values, start, position = self._locate(entity_id, record, count)
        if start == 0 and entity_id not in self.full_history:
            # Fewer than `count` events before this one in the start-up history: the entity is
            # new, or its history was cut by the lookback (counted from the newest day of the
            # whole table, not of this entity). Its whole history is read, once per worker.
            fresh = recent_history(self.settings, self.dataset, entity=entity_id, lookback_days=None)
            self.silver_history[entity_id] = fresh.get(entity_id, self._no_history())
            self.full_history.add(entity_id)
            times, ids, values, start, position = self._locate(entity_id, record, count)
        return list(times[start:position]), list(ids[start:position]), values[start:position], start == 0

    def _no_history(self):
        return [], [], np.empty((0, len(self.dataset.features.fields)))

    def _locate(self, entity_id: str, record: dict, count: int):
        times, ids, values = self.silver_history.get(entity_id, self._no_history())
        key = (record[self.dataset.event_time], record[self.dataset.event_id])
        position = _insertion_point(times, ids, key) if times else 0
        return times, ids, values, max(0, position - count), position

    def _seed(self, entity_id: str, record: dict):
        """Initial state of an entity: its newest 2 x window known events before this one (speed/history.py)."""
        times, ids, values, complete = self._before(entity_id, record, 2 * self.dataset.features.window)
        if times:
            self.seeded.inc()
        return times, ids, values, complete

    def _snapshot_features(self, entity_id: str, record: dict) -> np.ndarray:
        now = time.monotonic()
        if now - self.history_read_at.get(entity_id, -self.HISTORY_REFRESH_SECONDS) >= self.HISTORY_REFRESH_SECONDS:
            self.history_read_at[entity_id] = now
            fresh = recent_history(self.settings, self.dataset, entity=entity_id, lookback_days=None)
            if entity_id in fresh:
                self.silver_history[entity_id] = fresh[entity_id]
                self.full_history.add(entity_id)
        _, _, values, _ = self._before(entity_id, record, self.dataset.features.window)
        row = np.array([[record[name] for name in self.dataset.features.fields]], dtype=np.float64)
        return self._features_of(row, record[self.dataset.event_time], values)


def _insertion_point(times: list, ids: list, key: tuple) -> int:
    # Fast path: in-order arrival appends at the end.
    if not times or (times[-1], ids[-1]) < key:
        return len(times)
    position = len(times)
    while position > 0 and (times[position - 1], ids[position - 1]) >= key:
        position -= 1
    return position


class ScoreBatch(beam.DoFn):
    """Scores a batch of featured events with the newest registered model of each entity.

    Models are reloaded when the registry table gets a new version, checked at most every
    `reload_seconds`, so a batch run's new models reach a running pipeline without a restart.
    An event whose entity has no model goes to the dead-letter output.
    """

    def __init__(self, dataset: Dataset, settings: Settings, reload_seconds: float = 30.0) -> None:
        self.dataset = dataset
        self.settings = settings
        self.reload_seconds = reload_seconds
        self.scored = Metrics.counter("speed", "scored")
        self.rescored = Metrics.counter("speed", "rescored_after_late_event")
        self.anomalies = Metrics.counter("speed", "anomalies")
        self.unknown = Metrics.counter("speed", "unknown_entity")
        self.reloads = Metrics.counter("speed", "model_reloads")

    def setup(self) -> None:
        self.prometheus_anomalies = metrics.ANOMALIES.labels(self.dataset.name)
        self.models: dict[str, registry.RegisteredModel] = {}
        self.loaded_version: int | None = None
        self.checked_at = 0.0
        self._maybe_reload(force=True)

    def _maybe_reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.checked_at < self.reload_seconds:
            return
        self.checked_at = now
        version = registry.registry_version(self.settings)
        if version is not None and version != self.loaded_version:
            self.models = registry.load_latest(self.settings, self.dataset.name)
            self.loaded_version = version
            self.reloads.inc()
            log.info("speed: loaded %d models of %s (registry version %s)", len(self.models), self.dataset.name, version)

    def process(self, batch: list[dict]) -> Iterable[Any]:
        self._maybe_reload()
        dataset = self.dataset
        by_entity: dict[str, list[dict]] = {}
        for record in batch:
            by_entity.setdefault(record[dataset.entity], []).append(record)
        scored_at = datetime.now(timezone.utc)
        for entity_id, records in by_entity.items():
            entry = self.models.get(entity_id) or self.models.get("*")
            if entry is None:
                for record in records:
                    self.unknown.inc(1)
                    # Only the record's own fields: a replay of it then hashes (and is quarantined) the same.
                    raw = json.dumps({key: _jsonable(value) for key, value in record.items() if not key.startswith("_")})
                    message = (
                        f"record {record[dataset.event_id]}: field '{dataset.entity}' names an entity with no "
                        f"registered model (rule {dataset.entity}.known_entity), got '{entity_id}'"
                    )
                    yield beam.pvalue.TaggedOutput(
                        DEAD_LETTER,
                        dead_letter(dataset, raw, record.get(SOURCE) or "speed:score", record[dataset.event_id], [f"{dataset.entity}.known_entity"], [message]),
                    )
                continue
            matrix = np.vstack([record["_features"] for record in records])
            scores, flags = entry.model.score(matrix)
            for record, score, flag in zip(records, scores, flags):
                (self.rescored if record.get("_revised") else self.scored).inc()
                if flag:
                    self.anomalies.inc()
                    self.prometheus_anomalies.inc()
                row = record
                yield {
                    ARRIVED_AT: row.get(ARRIVED_AT),
                    SOURCE: row.get(SOURCE),
                    "revision": row.get(REVISION, 0),
                    dataset.event_id: row[dataset.event_id],
                    dataset.entity: row[dataset.entity],
                    dataset.event_time: row[dataset.event_time],
                    **{name: row[name] for name in dataset.features.fields},
                    "score": float(score),
                    "is_anomaly": bool(flag),
                    "model_version": entry.version,
                    "scored_at": scored_at,
                }


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


class _CompactsPeriodically:
    """Mixin for sinks: compacts the sink's table every `COMPACT_EVERY` commits of this worker."""

    COMPACT_EVERY = 50

    def _committed_one(self, uri: str) -> None:
        self.commits_since_compaction = getattr(self, "commits_since_compaction", 0) + 1
        if self.commits_since_compaction >= self.COMPACT_EVERY:
            self.commits_since_compaction = 0
            tables.compact(uri)


class UpsertHotScores(_CompactsPeriodically, beam.DoFn):
    """Upserts a batch of scored events into the hot Delta table by event id (one commit per batch)."""

    def __init__(self, dataset: Dataset, settings: Settings) -> None:
        self.dataset = dataset
        self.settings = settings
        self.committed = Metrics.counter("speed", "hot_rows_committed")
        self.latency = Metrics.distribution("speed", "commit_latency_ms")

    def setup(self) -> None:
        self.uri = tables.hot_table_uri(self.settings, self.dataset)
        self.schema = tables.hot_schema(self.dataset)
        name = self.dataset.name
        self.prometheus = (
            metrics.HOT_ROWS.labels(name),
            metrics.COMMIT_DURATION.labels(name),
            metrics.COMMIT_LATENCY.labels(name),
            metrics.EVENT_TIME_LAG.labels(name),
        )

    def process(self, batch: list[dict]) -> Iterable[tuple[str, str]]:
        # A batch may hold an event twice (a replay, a revision): the highest revision wins, here
        # and against the table.
        latest: dict[str, dict] = {}
        for row in batch:
            key = row[self.dataset.event_id]
            if key not in latest or row["revision"] >= latest[key]["revision"]:
                latest[key] = row
        started = time.perf_counter()
        tables.upsert_by_key(
            self.uri, pa.Table.from_pylist(list(latest.values()), schema=self.schema), self.dataset.event_id, newest="revision"
        )
        duration = time.perf_counter() - started
        self._committed_one(self.uri)
        self.latency.update(int(duration * 1000))
        self.committed.inc(len(latest))
        rows, commit, arrival_latency, event_time_lag = self.prometheus
        rows.inc(len(latest))
        commit.observe(duration)
        committed_at = time.time()
        for row in latest.values():
            if row.get(ARRIVED_AT) is not None:
                latency = max(0.0, committed_at - row[ARRIVED_AT])
                arrival_latency.observe(latency)
                metrics.LATENCY_SAMPLES.append(latency)
            event_time_lag.observe(max(0.0, committed_at - row[self.dataset.event_time].timestamp()))
        yield from _acks(batch, ACK_HOT)


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
        yield from _acks(batch, ACK_LANDING)


class PublishAlerts(beam.DoFn):
    """Publishes each anomaly to a Kafka topic (JSON, keyed by entity), flushed with the bundle.

    An event re-scored after a late arrival may be published again; consumers dedupe by event id.
    """

    def __init__(self, dataset: Dataset, bootstrap: str, topic: str) -> None:
        self.dataset = dataset
        self.bootstrap = bootstrap
        self.topic = topic
        self.published = Metrics.counter("speed", "alerts_published")

    def setup(self) -> None:
        from confluent_kafka import Producer

        self.producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "linger.ms": 5})
        self.prometheus = metrics.ALERTS.labels(self.dataset.name)

    def process(self, row: dict) -> None:
        if not row["is_anomaly"]:
            return
        dataset = self.dataset
        alert = {
            "dataset": dataset.name,
            "event_id": row[dataset.event_id],
            "entity_id": row[dataset.entity],
            "event_time": row[dataset.event_time].isoformat(),
            "score": row["score"],
            "model_version": row["model_version"],
            "scored_at": row["scored_at"].isoformat(),
            **{name: row[name] for name in dataset.features.fields},
        }
        self.producer.produce(self.topic, key=str(row[dataset.entity]).encode(), value=json.dumps(alert).encode())
        self.producer.poll(0)
        self.published.inc()
        self.prometheus.inc()

    def finish_bundle(self) -> None:
        # The bundle is done only when the broker has every alert of it.
        remaining = self.producer.flush(30)
        if remaining:
            raise RuntimeError(f"{remaining} alerts not delivered to Kafka topic {self.topic} within 30 s")

    def teardown(self) -> None:
        if getattr(self, "producer", None) is not None:
            self.producer.flush(10)


class WriteDeadLetters(beam.DoFn):
    """Adds dead letters to the shared quarantine table, once per (dataset, record hash)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def setup(self) -> None:
        self.uri = tables.quarantine_uri(self.settings)

    def process(self, batch: list[dict]) -> Iterable[tuple[str, str]]:
        unique = {(row["dataset"], row["record_hash"]): row for row in batch}
        tables.insert_new(self.uri, pa.Table.from_pylist(list(unique.values()), schema=tables.QUARANTINE_SCHEMA), ["dataset", "record_hash"])
        yield from _acks(batch, ACK_DEAD, source="source")


def _acks(batch: list[dict], kind: str, source: str = SOURCE) -> Iterable[tuple[str, str]]:
    # Every record of the batch, not only the kept version: each was read at its own offset.
    # Rows emitted again after a late event have no source; their original was acknowledged.
    # `source`: the field naming where a row was read (dead letters keep it as a table column).
    for row in batch:
        if row.get(source):
            yield row[source], kind


class ScoreEvents(beam.PTransform):
    """(source, JSON text) -> scored rows (main output) and dead letters (tag `dead_letter`)."""

    def __init__(
        self,
        dataset: Dataset,
        settings: Settings,
        *,
        max_batch_size: int = 1000,
        reload_seconds: float = 30.0,
        state_ttl_seconds: float = 0.0,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.settings = settings
        self.max_batch_size = max_batch_size
        self.reload_seconds = reload_seconds
        self.state_ttl_seconds = state_ttl_seconds

    def expand(self, lines):
        dataset = self.dataset
        parsed = lines | "ParseAndValidate" >> beam.ParDo(ParseAndValidate(dataset)).with_outputs(DEAD_LETTER, main=VALID)
        featured = (
            parsed[VALID]
            | "KeyByEntity" >> beam.Map(lambda record: (record[dataset.entity], record)).with_output_types(tuple[str, dict])
            | "ComputeFeatures" >> beam.ParDo(ComputeFeatures(dataset, self.settings, self.state_ttl_seconds))
        )
        scored = (
            featured
            | "BatchForScoring" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.max_batch_size)
            | "Score" >> beam.ParDo(ScoreBatch(dataset, self.settings, self.reload_seconds)).with_outputs(DEAD_LETTER, main=VALID)
        )
        dead_letters = (parsed[DEAD_LETTER], scored[DEAD_LETTER]) | "AllDeadLetters" >> beam.Flatten()
        return {VALID: scored[VALID], DEAD_LETTER: dead_letters, LANDING: parsed[VALID]}
