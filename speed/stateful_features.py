"""The stateful step of the speed layer: each event's features from its entity's recent history,
kept in Beam state, with late events put back in place.

Features are the very function the batch layer uses (lakehouse/features.py), so the two layers
compute the same features.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Iterable

import apache_beam as beam
import numpy as np
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer

from lakehouse import constants, storage
from lakehouse.features import compute_features
from lakehouse.settings import Settings
from schemas.declaration import Dataset
from speed import metrics
from speed import acks
from speed.carried_fields import ACK, REVISION, SOURCE
from speed.history import recent_history

log = logging.getLogger(__name__)


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
    # (processing time) loses its state, all but a marker saying so; its next event seeds it from
    # the entity's current silver and hot rows (see _seed), not from the history read at start-up.
    EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)
    EXPIRED = "expired"

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
        # The version first: silver changing during the read then counts as changed.
        self.silver_version = self._silver_version()
        self.silver_checked_at = time.monotonic()
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
        if state is None or state == self.EXPIRED:
            times, ids, values, complete = self._seed(entity_id, record, expired=state == self.EXPIRED)
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
            yield {**record, "_features": self._snapshot_features(entity_id, record), REVISION: revision,
                   ACK: (record.get(SOURCE), acks.unit(0, 1))}
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
        # The record's offset is done only once its own row and every revised row are durable.
        outputs = 1 + len(revise)
        source = record.get(SOURCE)
        yield {**record, "_features": self._features(times, values, position), REVISION: revision,
               ACK: (source, acks.unit(0, outputs))}
        for number, later in enumerate(revise, start=1):
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
                ACK: (source, acks.unit(number, outputs)),
            }

    @on_timer(EXPIRY)
    def expire(self, key=beam.DoFn.KeyParam, history=beam.DoFn.StateParam(HISTORY)):
        # A marker, not nothing: the entity's next event must read its current history, on
        # whichever worker instance handles it (a few bytes per silent entity).
        history.write(self.EXPIRED)
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
            self._refresh_history(entity_id, "new, or its start-up history cut by the lookback")
            times, ids, values, start, position = self._locate(entity_id, record, count)
        return list(times[start:position]), list(ids[start:position]), values[start:position], start == 0

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
        log.info("speed: reading the history of %s (%s)", entity_id, why)
        self.history_read_at[entity_id] = time.monotonic()
        fresh = recent_history(self.settings, self.dataset, entity=entity_id, lookback_days=None)
        self.silver_history[entity_id] = fresh.get(entity_id, self._no_history())
        self.full_history.add(entity_id)

    def _no_history(self):
        return [], [], np.empty((0, len(self.dataset.features.fields)))

    def _locate(self, entity_id: str, record: dict, count: int):
        times, ids, values = self.silver_history.get(entity_id, self._no_history())
        key = (record[self.dataset.event_time], record[self.dataset.event_id])
        position = _insertion_point(times, ids, key) if times else 0
        return times, ids, values, max(0, position - count), position

    def _seed(self, entity_id: str, record: dict, *, expired: bool = False):
        """Initial state of an entity: its newest 2 x window known events before this one (speed/history.py).

        From the history read at start-up, unless that may lack the entity's events: when its
        state expired (this job then committed rows of it to the hot table since), or when silver
        changed since (a batch run added rows). Then the entity's current silver and hot rows are
        read, for it alone. A new entity is read alone anyway (_before).
        """
        refreshed = expired or self._silver_changed()
        if refreshed:
            self._refresh_history(entity_id, "state expired" if expired else "silver changed since start-up")
        times, ids, values, complete = self._before(entity_id, record, 2 * self.dataset.features.window)
        if refreshed:
            # State holds what is needed from now on; the worker keeps no copy (bounded memory).
            self.silver_history.pop(entity_id, None)
            self.full_history.discard(entity_id)
        if times:
            self.seeded.inc()
        return times, ids, values, complete

    def _snapshot_features(self, entity_id: str, record: dict) -> np.ndarray:
        now = time.monotonic()
        if now - self.history_read_at.get(entity_id, -self.HISTORY_REFRESH_SECONDS) >= self.HISTORY_REFRESH_SECONDS:
            self._refresh_history(entity_id, "an event beyond state")
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
