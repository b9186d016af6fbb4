"""The stateful step of the speed layer: each event's features from its entity's recent history,
kept in Beam state, with late events put back in place; a batch of events at a time.

Features are the very function the batch layer uses (lakehouse/features.py), so the two layers
compute the same features.

Why batches of a shard, not one event of an entity: with 1,000 entities, a bundle holds about one
event per entity, so per-entity keys meant one state read, one state write, one feature call and
one sizing of the state cache per event, which was most of the layer's cost (docs/benchmarks.md,
"Speed layer: where the time goes"). Entities are spread over `shards` keys by a stable hash; an
element is (shard, the events of a batch that fall in it), and state is read and written once
per element. An entity's events that arrive in order, after what state holds (nearly all), get
their features in one call over arrays; anything else goes the per-event way below.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import zlib
from datetime import datetime, timedelta, timezone
from typing import Iterable, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import TimerSpec, on_timer

from lakehouse import constants, storage
from lakehouse.features import compute_features, features_from_windows, previous_windows_of_many
from lakehouse.settings import Settings
from schemas.declaration import Dataset
from speed import acks, metrics, shard_state
from speed.carried_fields import ACK, NEW, REVISION, SOURCE
from speed.history import recent_history

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


# The start-up history of the newest job in this process (ComputeFeatures.setup).
_HISTORY: dict[str, tuple] = {}
_HISTORY_LOCK = threading.Lock()


def shard_of(entity_id: str, shards: int) -> int:
    """The state key of an entity: stable across processes and runs (unlike Python's hash)."""
    return zlib.crc32(str(entity_id).encode()) % shards


def micros(instant: datetime) -> int:
    """An instant as integer microseconds since the epoch (naive means UTC), exactly."""
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=timezone.utc)
    return (instant - _EPOCH) // _MICROSECOND


def instant(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


class EntityHistory(NamedTuple):
    """An entity's newest 2 x window events in event-time order, as arrays: few objects, so Beam's
    state cache sizes it cheaply and pickling it is a copy of its arrays."""

    times: np.ndarray  # int64 microseconds since the epoch
    ids: np.ndarray  # event ids (numpy str)
    values: np.ndarray  # (events, feature fields) float64
    revision: int  # the newest revision given to one of its events
    complete: bool  # the events reach back to the entity's first event
    seen_at: float  # processing time of its last event, for the TTL


class Appended(NamedTuple):
    """An entity's events of an element that followed its state, as ComputeFeatures._append had
    them: what the keyed step's scoring and alert flags would otherwise read back from the rows."""

    times: np.ndarray  # int64 microseconds since the epoch
    ids: list  # event ids
    values: np.ndarray  # (events, feature fields) float64
    features: np.ndarray  # (events, features) float64
    revision: int  # the first event's; each next event's is one more


class ComputeFeatures(beam.DoFn):
    """(shard, events) -> a list of featured events, from each entity's recent history in state.

    State holds, per shard, each entity's newest 2 x `window` events and whether they reach back
    to the entity's first event. Events usually arrive in order and are appended. An event that
    arrives late (runners do not promise order, Kafka partitions interleave) is inserted at its
    place, and every later event whose window now includes it is emitted again with corrected
    features; the hot table's upsert by event id replaces their earlier rows. So the stream ends
    with exactly the features the batch layer computes. An event whose window reaches before the
    oldest event in state (a re-sent old event, or one more than `window` events late) is not
    placed: its features come from the entity's history in silver and the hot table (re-read at
    most every 30 s), and it is counted in `late_beyond_state`.
    """

    # A shard's histories: a log of changes and a token (speed/shard_state.py), so a bundle's
    # state traffic is its events' rows, not every entity's history.
    LOG, TOKEN = shard_state.specs("entities")
    # Bounded memory in a pipeline that runs for months: an entity silent for `state_ttl_seconds`
    # (processing time) loses its history, all but its name in the shard's `expired` set; its next
    # event seeds it from the entity's current silver and hot rows (see _seed), not from the
    # history read at start-up. A shard's timer looks every tenth of the TTL, so state expires
    # after 100 to 110% of the TTL of silence.
    EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)

    def __init__(self, dataset: Dataset, settings: Settings, state_ttl_seconds: float = 0.0) -> None:
        self.job = uuid.uuid4().hex  # names this pipeline's instances (pickled with them)
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
        # The version first: silver changing during the read then counts as changed. Read once
        # per job and process, shared by the instances the SDK harness makes for new bundle
        # processors (it read all of it again, seconds of CPU, mid-stream): an entity is seeded
        # from it only while it has no state in this job, so this job committed none of its rows
        # (an expired entity, and silver changed since, read afresh; see _seed).
        with _HISTORY_LOCK:
            cached = _HISTORY.get(self.job)
            if cached is None:
                version = self._silver_version()
                cached = (version, time.monotonic(), recent_history(self.settings, self.dataset))
                _HISTORY.clear()  # the newest job's only: bounded memory
                _HISTORY[self.job] = cached
        self.silver_version, self.silver_checked_at, self.silver_history = cached
        self.full_history: set[str] = set()  # entities whose whole history has been read
        self.prefetched: set[str] = set()  # entities whose history this element read (_prefetch)
        self.history_read_at: dict[str, float] = {}
        # When this worker's timer of each shard is due: setting a timer costs more than checking.
        self.timer_due: dict[int, float] = {}
        self.prometheus_expired = metrics.STATE_EXPIRED.labels(self.dataset.name)
        self.fields = list(self.dataset.features.fields)

    def process(
        self,
        element: tuple[int, list[dict]],
        log=beam.DoFn.StateParam(LOG),
        token=beam.DoFn.StateParam(TOKEN),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterable[list[dict]]:
        yield self.featured(element, log, token, expiry)[0]

    def featured(self, element: tuple[int, list[dict]], log, token, expiry) -> tuple[list[dict], dict[str, "Appended"]]:
        """process's one list, and the arrays of the entities whose events followed their state
        (entity -> Appended), for the keyed step's later parts (speed/shard_step.py)."""
        shard, records = element
        metrics.trace("keyed_in", records, SOURCE)
        entity = self.dataset.entity
        now = time.time()
        if self.state_ttl_seconds > 0 and self.timer_due.get(shard, 0.0) <= now:
            due = now + self.state_ttl_seconds / 10
            expiry.set(due)
            self.timer_due[shard] = due
        state = shard_state.ShardState(self.job, "entities", shard, log, token)
        by_entity: dict[str, list[dict]] = {}
        for record in records:
            by_entity.setdefault(record[entity], []).append(record)
        featured: list[dict] = []
        appended = []
        self._prefetch(state, by_entity)
        for entity_id, events in by_entity.items():
            history = state.entities.get(entity_id)
            if history is None:
                history = self._seed(entity_id, expired=entity_id in state.expired)
            new = self._appendable(history, events)
            if new is None:
                for event in events:
                    history = self._add_one(entity_id, history, event, featured)
                state.put(entity_id, history._replace(seen_at=now))
            else:
                appended.append((entity_id, history, events, *new))
        blocks: dict[str, Appended] = {}
        for entity_id, history, count in self._append(appended, featured, blocks):
            state.append(entity_id, history._replace(seen_at=now), count)
        state.commit()
        return featured, blocks

    @on_timer(EXPIRY)
    def expire(self, key=beam.DoFn.KeyParam, log=beam.DoFn.StateParam(LOG), token=beam.DoFn.StateParam(TOKEN),
               expiry=beam.DoFn.TimerParam(EXPIRY)):
        state = shard_state.ShardState(self.job, "entities", key, log, token)
        now = time.time()
        silent = [entity_id for entity_id, history in state.entities.items() if now - history.seen_at >= self.state_ttl_seconds]
        for entity_id in silent:
            # A name, not nothing: the entity's next event must read its current history, on
            # whichever worker instance handles it (a few bytes per silent entity).
            state.expire(entity_id)
        if silent:
            self.prometheus_expired.inc(len(silent))
        if state.entities:
            self.arm(key, expiry, now)
        else:
            self.timer_due.pop(key, None)
        state.commit()
        return []

    def arm(self, key, expiry, now: float) -> None:
        """Set the shard's expiry timer to look again in a tenth of the TTL."""
        due = now + self.state_ttl_seconds / 10
        expiry.set(due)
        self.timer_due[key] = due

    def _appendable(self, history: EntityHistory, events: list[dict]):
        """(times, ids, values) of an entity's events when they all follow what state holds, in
        order (nearly always); None when any is late, a replay, or beyond state."""
        dataset = self.dataset
        times = np.fromiter((micros(event[dataset.event_time]) for event in events), dtype=np.int64, count=len(events))
        ids = [event[dataset.event_id] for event in events]
        instants = times.tolist()  # Python ints: compared faster than numpy scalars, the same order
        in_order = all((instants[i], ids[i]) < (instants[i + 1], ids[i + 1]) for i in range(len(events) - 1))
        after_state = not len(history.times) or (times[0], ids[0]) > (history.times[-1], history.ids[-1])
        if not (in_order and after_state and (history.complete or len(history.times) >= dataset.features.window)):
            return None
        values = np.array([[event[name] for name in self.fields] for event in events], dtype=np.float64)
        return times, ids, values

    def _append(self, appended: list, out: list[dict], blocks: dict) -> Iterable[tuple[str, EntityHistory, int]]:
        """Features of the events that follow their entity's state, all entities in one call;
        (entity, new history, events appended) of each, and its arrays in `blocks`."""
        if not appended:
            return
        dataset = self.dataset
        window = dataset.features.window
        features = features_from_windows(
            dataset,
            np.concatenate([values for *_, values in appended]),
            previous_windows_of_many([(history.values, values) for _, history, _, _, _, values in appended], window),
            np.concatenate([times for _, _, _, times, _, _ in appended]).astype("datetime64[us]"),
        )
        kept = 2 * window
        start = 0
        only = acks.unit(0, 1)
        for entity_id, history, events, times, ids, values in appended:
            revision = max(history.revision + 1, time.time_ns())
            for number, event in enumerate(events):
                out.append({**event, "_features": features[start + number], REVISION: revision + number,
                            ACK: (event.get(SOURCE), only), NEW: True})
            blocks[entity_id] = Appended(times, ids, values, features[start : start + len(events)], revision)
            start += len(events)
            yield entity_id, EntityHistory(
                times=np.concatenate([history.times, times])[-kept:],
                ids=np.concatenate([history.ids, np.array(ids, dtype=str)])[-kept:],
                values=np.concatenate([history.values, values])[-kept:],
                revision=revision + len(events) - 1,
                complete=history.complete and len(history.times) + len(events) <= kept,
                seen_at=history.seen_at,
            ), len(events)

    def _add_one(self, entity_id: str, history: EntityHistory, record: dict, out: list[dict]) -> EntityHistory:
        """One event that may be late, a replay, or beyond state."""
        dataset = self.dataset
        window = dataset.features.window
        times, ids, values, revision, complete, seen_at = history
        key = (micros(record[dataset.event_time]), record[dataset.event_id])
        position = insertion_point(times, ids, key)
        revision = max(revision + 1, time.time_ns())
        if position < window and not complete:
            # Its window reaches before the oldest event in state (a re-sent old event, or one
            # very late): state cannot place it, so it takes its features from the entity's
            # history in silver and the hot table, and changes no other event.
            self.too_late.inc()
            out.append({**record, "_features": self._snapshot_features(entity_id, record), REVISION: revision,
                        ACK: (record.get(SOURCE), acks.unit(0, 1))})
            return history._replace(revision=revision)
        row = np.array([[record[name] for name in self.fields]], dtype=np.float64)
        replayed = position < len(times) and (times[position], ids[position]) == key
        if not replayed:
            if position < len(times):
                self.late.inc()
            times = np.insert(times, position, key[0])
            ids = np.insert(ids, position, key[1]) if len(ids) else np.array([key[1]], dtype=str)
            values = np.concatenate([values[:position], row, values[position:]])
        # Later events whose window (the `window` events before them) now holds this one; a
        # replayed event changes no other event's window.
        revise = range(0) if replayed else range(position + 1, min(len(times), position + window + 1))
        # The record's offset is done only once its own row and every revised row are durable.
        outputs = 1 + len(revise)
        source = record.get(SOURCE)
        out.append({**record, "_features": self._features(times, values, position), REVISION: revision,
                    ACK: (source, acks.unit(0, outputs))})
        for number, later in enumerate(revise, start=1):
            self.revised.inc()
            out.append({
                REVISION: revision + number,
                dataset.event_id: str(ids[later]),
                dataset.entity: entity_id,
                dataset.event_time: instant(times[later]),
                **{name: float(values[later, index]) for index, name in enumerate(self.fields)},
                "_features": self._features(times, values, later),
                "_revised": True,
                ACK: (source, acks.unit(number, outputs)),
            })
        kept = 2 * window
        return EntityHistory(times[-kept:], ids[-kept:], values[-kept:], revision + len(revise),
                             complete and len(times) <= kept, seen_at)

    def _features(self, times: np.ndarray, values: np.ndarray, position: int) -> np.ndarray:
        return compute_features(self.dataset, values[position : position + 1], times[position : position + 1].astype("datetime64[us]"),
                                values[:position])[0]

    def _features_of(self, row: np.ndarray, event_time: datetime, history: np.ndarray) -> np.ndarray:
        """Features of one event (its values as a 1 x k row) after `history` (the events before it)."""
        event_times = np.array([micros(event_time)], dtype=np.int64).astype("datetime64[us]")
        return compute_features(self.dataset, row, event_times, history)[0]

    def _before(self, entity_id: str, record: dict | None, count: int):
        """The entity's newest `count` events before this one (record None: its newest `count`
        events) in its known history, and whether that reaches back to its first known event."""
        times, ids, values, start, position = self._locate(entity_id, record, count)
        if start == 0 and entity_id not in self.full_history:
            # Fewer than `count` events before this one in the start-up history: the entity is
            # new, or its history was cut by the lookback (counted from the newest day of the
            # whole table, not of this entity). Its whole history is read, once per worker.
            self._refresh_history(entity_id, "new, or its start-up history cut by the lookback")
            times, ids, values, start, position = self._locate(entity_id, record, count)
        return times[start:position], ids[start:position], values[start:position], start == 0

    def _silver_version(self) -> int | None:
        uri = self.settings.table_uri(self.dataset.name, constants.SILVER)
        return storage.open_table(uri).version() if storage.table_exists(uri) else None

    def _silver_changed(self) -> bool:
        """Whether silver has a version newer than the start-up history's (looked up at most
        every `HISTORY_REFRESH_SECONDS`)."""
        now = time.monotonic()
        if now - self.silver_checked_at >= self.HISTORY_REFRESH_SECONDS:
            self.silver_checked_at = now
            self.latest_silver_version = self._silver_version()
        return getattr(self, "latest_silver_version", self.silver_version) != self.silver_version

    def _refresh_history(self, entity_id: str, why: str) -> None:
        """Read the entity's whole current history from silver and the hot table."""
        self._refresh_histories([entity_id], why)

    def _refresh_histories(self, entity_ids: list[str], why: str) -> None:
        """Read these entities' whole current histories from silver and the hot table, in one pass."""
        if len(entity_ids) == 1:
            log.info("speed: reading the history of %s (%s)", entity_ids[0], why)
        else:
            log.info("speed: reading the histories of %d entities (%s), first %s", len(entity_ids), why, entity_ids[0])
        now = time.monotonic()
        # Bounded memory: histories read more than HISTORY_REFRESH_SECONDS ago are let go (state
        # holds what seeding needed; an event beyond state reads again after that long anyway).
        stale = [name for name, read_at in self.history_read_at.items() if now - read_at >= self.HISTORY_REFRESH_SECONDS]
        for name in stale:
            del self.history_read_at[name]
            self.silver_history.pop(name, None)
            self.full_history.discard(name)
        fresh = recent_history(self.settings, self.dataset, entities=entity_ids, lookback_days=None)
        for entity_id in entity_ids:
            self.history_read_at[entity_id] = now
            self.silver_history[entity_id] = fresh.get(entity_id, self._no_history())
            self.full_history.add(entity_id)

    def _needs_read(self, entity_id: str, *, expired: bool) -> bool:
        """Whether seeding the entity reads the tables rather than the start-up history: its state
        expired (this job committed rows of it since), silver changed since start-up (_seed reads
        then), or the start-up history holds no more events than state keeps (a new entity, or one
        cut by the lookback: _before reads then)."""
        if expired or self._silver_changed():
            return True
        known = self.silver_history.get(entity_id, self._no_history())[0]
        return entity_id not in self.full_history and len(known) <= 2 * self.dataset.features.window

    def _prefetch(self, state, entity_ids) -> None:
        """Read in one pass the histories of the entities of an element that _seed would read one
        by one (_needs_read). A block of 2,500 entities back from expiry, read one at a time (0.3 s
        a read), stalled the soak for minutes."""
        wanted = [entity_id for entity_id in entity_ids
                  if entity_id not in state.entities and self._needs_read(entity_id, expired=entity_id in state.expired)]
        self.prefetched = set(wanted)
        if len(wanted) > 1:
            self._refresh_histories(wanted, "seeding their state")
        else:
            self.prefetched.clear()

    def _no_history(self):
        return np.empty(0, dtype=np.int64), np.array([], dtype="U1"), np.empty((0, len(self.fields)))

    def _locate(self, entity_id: str, record: dict, count: int):
        times, ids, values = self.silver_history.get(entity_id, self._no_history())
        if record is None:
            return times, ids, values, max(0, len(times) - count), len(times)
        key = (micros(record[self.dataset.event_time]), record[self.dataset.event_id])
        position = insertion_point(times, ids, key)
        return times, ids, values, max(0, position - count), position

    def _seed(self, entity_id: str, *, expired: bool = False) -> EntityHistory:
        """Initial state of an entity: its newest 2 x window known events (speed/history.py).

        The newest, not those before the first event seen: after a restart that event may be one
        the killed job had already committed (its Kafka offset had not moved yet). Seeded with only
        the events before it, state took it for a new event and the hot table got its row twice
        through the append path (NEW); seeded with it, it is a replay, upserted by key.

        From the history read at start-up, unless that may lack the entity's events: when its
        state expired (this job then committed rows of it to the hot table since), or when silver
        changed since (a batch run added rows). Then the entity's current silver and hot rows are
        read, for it alone. A new entity is read alone anyway (_before).
        """
        refreshed = expired or self._silver_changed()
        if refreshed and entity_id not in self.prefetched:
            self._refresh_history(entity_id, "state expired" if expired else "silver changed since start-up")
        times, ids, values, complete = self._before(entity_id, None, 2 * self.dataset.features.window)
        if refreshed:
            # State holds what is needed from now on; the worker keeps no copy (bounded memory).
            self.silver_history.pop(entity_id, None)
            self.full_history.discard(entity_id)
        if len(times):
            self.seeded.inc()
        # Copies: slices would keep the whole start-up history of the entity alive in state.
        return EntityHistory(
            times=times.copy(),
            ids=ids.copy(),
            values=values.reshape(len(times), len(self.fields)).copy(),
            revision=0,
            complete=complete,
            seen_at=0.0,
        )

    def _snapshot_features(self, entity_id: str, record: dict) -> np.ndarray:
        now = time.monotonic()
        if now - self.history_read_at.get(entity_id, -self.HISTORY_REFRESH_SECONDS) >= self.HISTORY_REFRESH_SECONDS:
            self._refresh_history(entity_id, "an event beyond state")
        _, _, values, _ = self._before(entity_id, record, self.dataset.features.window)
        row = np.array([[record[name] for name in self.fields]], dtype=np.float64)
        return self._features_of(row, record[self.dataset.event_time], values)


def insertion_point(times, ids, key: tuple) -> int:
    """Where (event time, event id) `key` goes in an entity's ordered arrays (speed/alert_flags.py too)."""
    # Fast path: in-order arrival appends at the end.
    if not len(times) or (times[-1], ids[-1]) < key:
        return len(times)
    position = len(times)
    while position > 0 and (times[position - 1], ids[position - 1]) >= key:
        position -= 1
    return position
