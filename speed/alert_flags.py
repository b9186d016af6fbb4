"""The speed layer's alert flags: each scored event's `is_alert` (the first alarm of an episode,
lakehouse/alerts.py) from its entity's previous flags, kept in Beam state; a batch of rows at a
time, after scoring.

An event is an alert when it is an alarm (`is_anomaly`) and none of the entity's previous
`alert_quiet_events` events was, by event time then event id: the rule the batch job applies to
the batch view (batch/score.py). With the flag written on both sides, the serving layer's
`alerts` view reads a column instead of running a window over history (serving/views.py).

State holds, per entity, its newest 2 x `window` + `alert_quiet_events` events: time, id, alarm
flag, the alert flag last written, and what is needed to write its hot row again. Rows nearly
always follow what state holds and are flagged in one pass over arrays (in the keyed step,
speed/shard_step.py, arrays that features and scoring already had: Incoming). A late event (and the
later events the stateful features step revised after it, speed/stateful_features.py, which come
in the same element) is put in its place; every later event whose alert flag that changes, and
that is not among the rows coming in, is written again with the new flag and a higher revision.
The re-written rows go in the same list as the rows that caused them, so they are committed in
the same Delta commit (speed/graph.py's batching never splits a list) and carry no
acknowledgement of their own. A late event beyond state (further back than state reaches) gets
its flag from the entity's flags in the tables and changes no other row, as its features do.

The same step writes each row's calibrated score (`surprise`, lakehouse/likelihood.py) and the
entity's likelihood state after it (`likelihood`): the fold over the entity's relative scores in
the same order, stepping on from the state after the previous event. A late event in state
re-folds from its place, and every later hot row is written again with its new surprise (they
all change a little); a late event beyond state steps from the state of the stored row before it
and changes no other row, as its flag does. A row read from tables written before the column
existed has no state: the chain restarts from the prior there, until the next batch run.

State is seeded from the tables: the batch view (`is_anomaly` of the rows it answers) and the
hot table (earlier speed runs). An event in both takes the batch view's flag, since the merged
view answers it from the batch view. Where the batch layer later scores events with other
flags (a new model), hot rows already written keep the flags they were given, like their scores.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from datetime import date, timedelta
from typing import Collection, Iterable, NamedTuple

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from lakehouse import constants, likelihood, storage, system_tables
from lakehouse.settings import Settings
from schemas.declaration import Dataset
from speed import metrics, shard_state
from speed.carried_fields import RELATIVE
from speed.history import entity_filter, entity_slices, ordered, plain
from speed.stateful_features import insertion_point, instant, micros, shard_of

log = logging.getLogger(__name__)

IS_ALERT = system_tables.IS_ALERT.name
REVISION = system_tables.REVISION.name
SCORED_AT = system_tables.SCORED_AT.name
SURPRISE = system_tables.SURPRISE.name
LIKELIHOOD = system_tables.LIKELIHOOD.name


class Incoming(NamedTuple):
    """An entity's rows coming in, as arrays: their event times (int64 microseconds), their ids,
    and the rows as an AlertHistory (FlagAlerts._arrays: no alert flag or calibration yet)."""

    times: np.ndarray
    ids: list
    rows: "AlertHistory"


class AlertHistory(NamedTuple):
    """An entity's newest events in (event time, event id) order, as arrays (cheap to size and pickle)."""

    times: np.ndarray  # int64 microseconds since the epoch
    ids: np.ndarray  # event ids (numpy str)
    flags: np.ndarray  # bool: is_anomaly
    alerts: np.ndarray  # bool: is_alert as last written (or read)
    hot: np.ndarray  # bool: the event has a hot row this step can write again (not a batch-view row)
    values: np.ndarray  # (events, feature fields) float64
    scores: np.ndarray  # float64
    versions: np.ndarray  # int64 model versions
    scored_at: np.ndarray  # int64 microseconds
    revisions: np.ndarray  # int64
    # (events, CALIBRATION + settings.recent) float64, one matrix (one array to concatenate and
    # trim, not seven): the relative score (NaN: unscored), the surprise as last written (or
    # read), and the likelihood state after the event (lakehouse/likelihood.LikelihoodState):
    # count (NaN: not known), mean, variance, peak, then the recent scores, NaN-padded at the end.
    calibration: np.ndarray
    complete: bool  # the events reach back to the entity's first event
    seen_at: float  # processing time of its last row, for the TTL


# The per-event arrays of an AlertHistory (all fields but `complete` and `seen_at`).
_ARRAYS = len(AlertHistory._fields) - 2


# The calibration matrix's columns (AlertHistory.calibration); the recent scores from CALIBRATION on.
RELATIVE_AT, SURPRISE_AT, COUNT_AT, MEAN_AT, VARIANCE_AT, PEAK_AT, CALIBRATION = 0, 1, 2, 3, 4, 5, 6


def empty_history(fields: int, complete: bool, recent: int = 1) -> AlertHistory:
    return AlertHistory(
        np.empty(0, np.int64), np.array([], dtype="U1"), np.empty(0, bool), np.empty(0, bool), np.empty(0, bool),
        np.empty((0, fields)), np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64),
        np.empty((0, CALIBRATION + recent)), complete, 0.0,
    )


def _unknown_calibration(count: int, recent: int, relative: np.ndarray | None = None) -> np.ndarray:
    calibration = np.full((count, CALIBRATION + recent), np.nan)
    if relative is not None:
        calibration[:, RELATIVE_AT] = relative
    return calibration


def state_at(history: AlertHistory, position: int) -> likelihood.LikelihoodState | None:
    """The entity's likelihood state after the event at `position` (None: not known)."""
    row = history.calibration[position].tolist()
    if row[COUNT_AT] != row[COUNT_AT]:
        return None
    return likelihood.LikelihoodState([value for value in row[CALIBRATION:] if value == value], int(row[COUNT_AT]),
                                      row[MEAN_AT], row[VARIANCE_AT], row[PEAK_AT])


def _record_at(history: AlertHistory, position: int) -> dict | None:
    state = state_at(history, position)
    return state.record() if state is not None else None


def _set_state(history: AlertHistory, position: int, state: likelihood.LikelihoodState) -> None:
    width = history.calibration.shape[1] - CALIBRATION
    recent = state.recent[-width:]
    history.calibration[position, COUNT_AT:] = [state.count, state.mean, state.variance, state.peak, *recent, *[np.nan] * (width - len(recent))]


def alerts_at(flags: np.ndarray, start: int, quiet: int) -> np.ndarray:
    """Alert flags of positions start.. of `flags` (an entity's alarms in event order): an alarm
    none of the `quiet` flags before it raised (fewer at the start of a complete history)."""
    flags = np.asarray(flags, dtype=bool)
    if quiet <= 0:
        return flags[start:].copy()
    counts = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    positions = np.arange(start, len(flags))
    recent = counts[positions] - counts[np.maximum(positions - quiet, 0)]
    return flags[start:] & (recent == 0)


class FlagAlerts(beam.DoFn):
    """(shard, scored hot rows) -> one list: the rows with `is_alert` set, plus the rows of later
    events whose flag a late event changed (module docstring)."""

    # A shard's histories: a log of changes and a token (speed/shard_state.py).
    LOG, TOKEN = shard_state.specs("alerts")
    # A late event beyond state reads its entity's flags from the tables at most this often.
    TABLES_REFRESH_SECONDS = 30.0

    def __init__(self, dataset: Dataset, settings: Settings, state_ttl_seconds: float = 0.0) -> None:
        self.job = uuid.uuid4().hex  # names this pipeline's instances (pickled with them)
        self.dataset = dataset
        self.settings = settings
        self.state_ttl_seconds = state_ttl_seconds
        self.rewritten = Metrics.counter("speed", "alert_flags_rewritten")
        self.beyond = Metrics.counter("speed", "alert_flags_beyond_state")

    def setup(self) -> None:
        self.fields = list(self.dataset.features.fields)
        self.likelihood = likelihood.settings_of(self.dataset.detector.likelihood)
        self.quiet = self.dataset.detector.alert_quiet_events
        self.keep = 2 * self.dataset.features.window + self.quiet
        self.batch_version = self._batch_version()
        self.checked_at = time.monotonic()
        self.latest_batch_version = self.batch_version
        # Each entity's newest `keep` events, and one more to tell whether there are that many;
        # as arrays, converted from pandas once for all entities (_histories_of).
        self.startup = _histories_of(self.dataset, read_flags(self.settings, self.dataset, newest=self.keep + 1),
                                     self.likelihood.recent)
        self.tables_read_at: dict[str, tuple[float, pd.DataFrame]] = {}

    def process(self, element: tuple[int, list[dict]], log=beam.DoFn.StateParam(LOG),
                token=beam.DoFn.StateParam(TOKEN)) -> Iterable[list[dict]]:
        shard, rows = element
        yield self.flag(shard, rows, log, token)

    def flag(self, shard, rows: list[dict], log, token, arrays: dict[str, "Incoming"] | None = None) -> list[dict]:
        """process's one list. `arrays`: entity -> its rows as arrays (Incoming), when the caller
        has them (the keyed step, speed/shard_step.py, from features and scoring); the others are
        read from the rows."""
        entity = self.dataset.entity
        now = time.time()
        state = shard_state.ShardState(self.job, "alerts", shard, log, token)
        self._expire(state, now)
        by_entity: dict[str, list[dict]] = {}
        for row in rows:
            by_entity.setdefault(row[entity], []).append(row)
        out: list[dict] = []
        read = self._prefetch(state, by_entity)
        for entity_id, incoming in by_entity.items():
            history = state.entities.get(entity_id)
            if history is None:
                history = self._seed(entity_id, fresh=entity_id in state.expired, read=read)
            given = arrays.get(entity_id) if arrays is not None else None
            if given is None or len(given.ids) != len(incoming):
                given = self._incoming(incoming)
            history, appended = self._flag(entity_id, history, incoming, given, out)
            if appended:
                state.append(entity_id, history._replace(seen_at=now), len(incoming))
            else:
                state.put(entity_id, history._replace(seen_at=now))
        state.commit()
        return out

    def expire_silent(self, key, log, token) -> int:
        """Expire the entities silent for the TTL now (the keyed step's timer, speed/shard_step.py);
        returns how many entities the shard still holds."""
        state = shard_state.ShardState(self.job, "alerts", key, log, token)
        self._expire(state, time.time())
        state.commit()
        return len(state.entities)

    def _expire(self, state: shard_state.ShardState, now: float) -> int:
        """Drop the histories of entities silent for the TTL, keeping their names (their next row
        re-reads the tables); returns how many."""
        if self.state_ttl_seconds <= 0:
            return 0
        silent = [name for name, history in state.entities.items() if now - history.seen_at >= self.state_ttl_seconds]
        for entity_id in silent:
            state.expire(entity_id)
        if silent:
            metrics.ALERT_STATE_EXPIRED.labels(self.dataset.name).inc(len(silent))
        return len(silent)

    # --- flagging ---

    def incoming(self, block, scores: np.ndarray, flags: np.ndarray, relative: np.ndarray, model_version: int,
                 scored_at) -> "Incoming":
        """An entity's rows as arrays, from the keyed step's features (stateful_features.Appended)
        and scores: the values _arrays reads from the rows, built from arrays."""
        count = len(block.ids)
        return Incoming(block.times, block.ids, AlertHistory(
            times=np.asarray(block.times, dtype=np.int64),
            ids=np.array(block.ids, dtype=str),
            flags=np.asarray(flags, dtype=bool),
            alerts=np.zeros(count, dtype=bool),
            hot=np.ones(count, dtype=bool),
            values=np.asarray(block.values, dtype=np.float64).reshape(count, len(self.fields)),
            scores=np.asarray(scores, dtype=np.float64),
            versions=np.full(count, model_version, dtype=np.int64),
            scored_at=np.full(count, micros(scored_at), dtype=np.int64),
            revisions=block.revision + np.arange(count, dtype=np.int64),
            calibration=_unknown_calibration(count, self.likelihood.recent, np.asarray(relative, dtype=np.float64)),
            complete=True,
            seen_at=0.0,
        ))

    def _incoming(self, rows: list[dict]) -> "Incoming":
        dataset = self.dataset
        times = np.fromiter((micros(row[dataset.event_time]) for row in rows), dtype=np.int64, count=len(rows))
        ids = [row[dataset.event_id] for row in rows]
        return Incoming(times, ids, self._arrays(rows, times, ids))

    def _flag(self, entity_id: str, history: AlertHistory, incoming: list[dict], given: "Incoming",
              out: list[dict]) -> tuple[AlertHistory, bool]:
        """The entity's new history, and whether the rows were appended at its end (older rows
        unchanged) rather than placed."""
        times, ids, new = given
        in_order = all((times[i], ids[i]) < (times[i + 1], ids[i + 1]) for i in range(len(incoming) - 1))
        if in_order and (not len(history.times) or (times[0], ids[0]) > (history.times[-1], history.ids[-1])):
            # Nearly always: every row follows what state holds. Flags and calibration are
            # computed into the new rows' arrays, then state's tail and them are joined already
            # trimmed: one concatenation per array, not a concatenation and a trimming copy.
            if self.quiet > 0:
                before = history.flags[-self.quiet :]
                alerts = alerts_at(np.concatenate([before, new.flags]), len(before), self.quiet)
            else:
                alerts = new.flags.copy()
            new.alerts[:] = alerts
            folded = self._fold(entity_id, history, len(history.times), new.calibration, (int(times[0]), str(ids[0])))
            for row, alert, surprise, record in zip(incoming, alerts.tolist(), folded.surprises.tolist(), folded.records()):
                row[IS_ALERT] = alert
                row[SURPRISE] = None if surprise != surprise else surprise
                row[LIKELIHOOD] = record
                out.append(row)
            return self._joined(history, new), True
        return self._place(entity_id, history, incoming, times, ids, out), False

    def _place(self, entity_id, history: AlertHistory, incoming, times, ids, out: list[dict]) -> AlertHistory:
        """Rows that may be late, replays or revisions: each put in its place, then every flag
        from the earliest of them on computed again."""
        first_changed = None
        placed: dict[str, dict] = {}
        beyond: list[dict] = []
        for index, row in enumerate(incoming):
            key = (times[index], ids[index])
            position = insertion_point(history.times, history.ids, key)
            if position < len(history.times) and (history.times[position], history.ids[position]) == key:
                if history.hot[position] and row[REVISION] < history.revisions[position]:
                    placed.setdefault(ids[index], row)  # an older version: flagged, the table keeps the newer
                    continue
                history = _replace_at(history, position, self._arrays([row], times[index : index + 1], ids[index : index + 1]))
            elif position < self.quiet and not history.complete:
                beyond.append(row)
                continue
            else:
                history = _insert_at(history, position, self._arrays([row], times[index : index + 1], ids[index : index + 1]))
            placed[ids[index]] = row
            first_changed = position if first_changed is None else min(first_changed, position)
        if first_changed is not None and first_changed < len(history.times):
            # The surprise and the state as written: with only new peaks reported, a later row's
            # surprise can stay 0 while its state (the next fold's start) moves.
            written = history.calibration[:, SURPRISE_AT:].copy()
            self._fold_from(entity_id, history, first_changed)
            calibration_moved = ~((written == history.calibration[:, SURPRISE_AT:])
                                  | (np.isnan(written) & np.isnan(history.calibration[:, SURPRISE_AT:]))).all(axis=1)
            # State's oldest `quiet` events lack the flags before them: theirs stay as written.
            flags_from = first_changed if history.complete else max(first_changed, self.quiet)
            alerts = history.alerts.copy()
            if flags_from < len(history.times):
                alerts[flags_from:] = alerts_at(history.flags, flags_from, self.quiet)
            revision = max(int(history.revisions.max(initial=0)) + 1, time.time_ns())
            for position in range(first_changed, len(history.times)):
                alert = alerts[position]
                event_id = str(history.ids[position])
                if event_id in placed:
                    history.alerts[position] = alert
                    continue
                moved = alert != history.alerts[position] or calibration_moved[position]
                if moved and history.hot[position]:
                    # A later event whose flag, surprise or state the late one changed: its row again.
                    history.alerts[position] = alert
                    history.revisions[position] = revision
                    out.append(self._row(entity_id, history, position))
                    revision += 1
                    self.rewritten.inc()
        beyond_ids = {id(row) for row in beyond}
        for row in incoming:
            if id(row) in beyond_ids:
                self._from_tables(entity_id, row)
            else:
                key = (micros(row[self.dataset.event_time]), row[self.dataset.event_id])
                position = insertion_point(history.times, history.ids, key)
                row[IS_ALERT] = bool(history.alerts[position])
                self._write_likelihood(row, history, position)
            out.append(row)
        return self._trim(history)

    # --- the calibrated score ---

    def _initial(self, entity_id: str) -> likelihood.LikelihoodState:
        return likelihood.initial_state(self.likelihood, self.dataset.detector.for_entity(entity_id).contamination)

    def _fold_from(self, entity_id: str, history: AlertHistory, start: int) -> likelihood.Folded | None:
        """Surprises and states of positions start.. in place (_fold)."""
        if start >= len(history.times):
            return None
        return self._fold(entity_id, history, start, history.calibration[start:], (int(history.times[0]), str(history.ids[0])))

    def _fold(self, entity_id: str, history: AlertHistory, start: int, block: np.ndarray, first: tuple[int, str]) -> likelihood.Folded:
        """Fold the relative scores of `block` (the calibration rows of the events at `start`..,
        in place: history's own or the rows about to follow it) and write their surprises and
        states, stepping on from the state after the event before `start`: from state, or (before
        the oldest event of a history that does not reach back to the entity's first, `first` the
        key of the oldest event) from the tables; the prior at an entity's first event, or where
        the state is not known."""
        if start > 0:
            state = state_at(history, start - 1)
        elif history.complete:
            state = None
        else:
            state = self._stored_state_before(entity_id, first)
        if state is None:
            state = self._initial(entity_id)
        folded = likelihood.fold_arrays(block[:, RELATIVE_AT], self.likelihood, state)
        width = block.shape[1] - CALIBRATION
        block[:, SURPRISE_AT], block[:, COUNT_AT], block[:, MEAN_AT], block[:, VARIANCE_AT], block[:, PEAK_AT] = (
            folded.surprises, folded.count, folded.mean, folded.variance, folded.peak)
        block[:, CALIBRATION:] = [(recent + [math.nan] * width)[:width] for recent in folded.recent]
        return folded

    def _write_likelihood(self, row: dict, history: AlertHistory, position: int) -> None:
        row[SURPRISE] = _nullable(float(history.calibration[position, SURPRISE_AT]))
        row[LIKELIHOOD] = _record_at(history, position)

    def _arrays(self, rows: list[dict], times: np.ndarray, ids) -> AlertHistory:
        return AlertHistory(
            times=np.asarray(times, dtype=np.int64),
            ids=np.array(ids, dtype=str),
            flags=np.fromiter((bool(row["is_anomaly"]) for row in rows), dtype=bool, count=len(rows)),
            alerts=np.zeros(len(rows), dtype=bool),
            hot=np.ones(len(rows), dtype=bool),
            values=np.array([[row[name] for name in self.fields] for row in rows], dtype=np.float64).reshape(len(rows), len(self.fields)),
            scores=np.fromiter((row["score"] for row in rows), dtype=np.float64, count=len(rows)),
            versions=np.fromiter((row["model_version"] for row in rows), dtype=np.int64, count=len(rows)),
            scored_at=np.fromiter((micros(row[SCORED_AT]) for row in rows), dtype=np.int64, count=len(rows)),
            revisions=np.fromiter((row[REVISION] for row in rows), dtype=np.int64, count=len(rows)),
            calibration=_unknown_calibration(len(rows), self.likelihood.recent,
                                             np.fromiter((_number(row.get(RELATIVE)) for row in rows), dtype=np.float64, count=len(rows))),
            complete=True,
            seen_at=0.0,
        )

    def _row(self, entity_id: str, history: AlertHistory, position: int) -> dict:
        dataset = self.dataset
        return {
            dataset.event_id: str(history.ids[position]),
            dataset.entity: entity_id,
            dataset.event_time: instant(history.times[position]),
            **{name: float(history.values[position, index]) for index, name in enumerate(self.fields)},
            "score": float(history.scores[position]),
            "is_anomaly": bool(history.flags[position]),
            "model_version": int(history.versions[position]),
            SCORED_AT: instant(history.scored_at[position]),
            REVISION: int(history.revisions[position]),
            IS_ALERT: bool(history.alerts[position]),
            SURPRISE: _nullable(float(history.calibration[position, SURPRISE_AT])),
            LIKELIHOOD: _record_at(history, position),
        }

    def _joined(self, history: AlertHistory, new: AlertHistory) -> AlertHistory:
        """_trim(_concat(history, new)), each array joined from the parts the trim keeps."""
        cut = len(history.times) + len(new.times) - self.keep
        if cut <= 0:
            return _concat(history, new)
        old_from, new_from = min(cut, len(history.times)), max(0, cut - len(history.times))
        return AlertHistory(*(np.concatenate([old[old_from:], more[new_from:]]) for old, more in zip(history[:_ARRAYS], new[:_ARRAYS])),
                            complete=False, seen_at=history.seen_at)

    def _trim(self, history: AlertHistory) -> AlertHistory:
        if len(history.times) <= self.keep:
            return history
        cut = len(history.times) - self.keep
        return AlertHistory(*(array[cut:].copy() for array in history[:_ARRAYS]), complete=False, seen_at=history.seen_at)

    # --- seeding from the tables ---

    def _batch_version(self) -> int | None:
        uri = self.settings.table_uri(self.dataset.name, constants.BATCH_SCORES)
        return storage.open_table(uri).version() if storage.table_exists(uri) else None

    def _batch_changed(self) -> bool:
        now = time.monotonic()
        if now - self.checked_at >= self.TABLES_REFRESH_SECONDS:
            self.checked_at = now
            self.latest_batch_version = self._batch_version()
        return self.latest_batch_version != self.batch_version

    def _needs_read(self, entity_id: str, *, fresh: bool) -> bool:
        """Whether the start-up read may lack the entity's events: its state expired, the batch
        view changed since start-up, or fewer events than needed in the start-up lookback."""
        if fresh or self._batch_changed():
            return True
        history = self.startup.get(entity_id)
        return history is None or len(history.times) < self.keep

    def _prefetch(self, state, entity_ids) -> dict[str, pd.DataFrame] | None:
        """The tables' rows of the element's entities that _seed would read one by one, in one
        read (as ComputeFeatures._prefetch); None when at most one needs it."""
        wanted = [entity_id for entity_id in entity_ids
                  if entity_id not in state.entities and self._needs_read(entity_id, fresh=entity_id in state.expired)]
        if len(wanted) <= 1:
            return None
        log.info("speed: reading the alert flags of %d entities (seeding their state), first %s", len(wanted), wanted[0])
        frames = read_flags(self.settings, self.dataset, entities=wanted, lookback_days=None)
        return {entity_id: frames.get(entity_id, _EMPTY) for entity_id in wanted}

    def _seed(self, entity_id: str, *, fresh: bool, read: dict[str, pd.DataFrame] | None = None) -> AlertHistory:
        """The entity's newest `keep` events from the start-up read, or from a read of the tables
        (`read`, the element's, or its own) when that may lack them (_needs_read)."""
        if self._needs_read(entity_id, fresh=fresh):
            frame = read.get(entity_id) if read is not None else None
            if frame is None:
                frame = read_flags(self.settings, self.dataset, entities=[entity_id], lookback_days=None).get(entity_id)
            self.startup.pop(entity_id, None)
            if frame is None or not len(frame):
                return empty_history(len(self.fields), complete=True, recent=self.likelihood.recent)
            complete = True
            if len(frame) > self.keep:
                frame, complete = frame.iloc[-self.keep :], False
            return _history_of(self.dataset, frame, complete, self.likelihood.recent)
        # At least `keep` events (_needs_read): the newest `keep`, copied out of the start-up arrays.
        history = self.startup[entity_id]
        cut = len(history.times) - self.keep
        return AlertHistory(*(array[cut:].copy() for array in history[:_ARRAYS]), complete=False, seen_at=0.0)

    def _from_tables(self, entity_id: str, row: dict) -> None:
        """The flag, surprise and likelihood state of an event beyond state, from the entity's
        rows in the tables before it."""
        self.beyond.inc()
        frame = self._tables_rows(entity_id)
        dataset = self.dataset
        key = (micros(row[dataset.event_time]), row[dataset.event_id])
        before = np.flatnonzero([(t, i) < key for t, i in zip(_micros_of(frame[dataset.event_time]), frame[dataset.event_id].to_numpy(dtype=str))]) if len(frame) else np.empty(0, np.int64)
        flags = frame.is_anomaly.fillna(False).to_numpy(dtype=bool)[before[-self.quiet :]] if len(before) and self.quiet > 0 else np.empty(0, bool)
        row[IS_ALERT] = bool(row["is_anomaly"]) and not flags.any()
        state = self._stored_state_before(entity_id, key) or self._initial(entity_id)
        row[SURPRISE] = _nullable(likelihood.step(state, _number(row.get(RELATIVE)), self.likelihood))
        row[LIKELIHOOD] = state.record()

    def _stored_state_before(self, entity_id: str, key: tuple[int, str]) -> likelihood.LikelihoodState | None:
        """The likelihood state the tables hold after the entity's last event before `key`."""
        frame = self._tables_rows(entity_id)
        if not len(frame) or LIKELIHOOD not in frame:
            return None
        dataset = self.dataset
        before = [(t, i) < key for t, i in zip(_micros_of(frame[dataset.event_time]), frame[dataset.event_id].to_numpy(dtype=str))]
        positions = np.flatnonzero(before)
        return likelihood.LikelihoodState.of_record(frame[LIKELIHOOD].iloc[positions[-1]]) if len(positions) else None

    def _tables_rows(self, entity_id: str) -> pd.DataFrame:
        """The entity's rows in the tables, read at most every TABLES_REFRESH_SECONDS."""
        now = time.monotonic()
        read_at, frame = self.tables_read_at.get(entity_id, (-self.TABLES_REFRESH_SECONDS, None))
        if frame is None or now - read_at >= self.TABLES_REFRESH_SECONDS:
            # Bounded memory: only the reads of the last TABLES_REFRESH_SECONDS are kept.
            self.tables_read_at = {name: kept for name, kept in self.tables_read_at.items()
                                   if now - kept[0] < self.TABLES_REFRESH_SECONDS}
            frame = read_flags(self.settings, self.dataset, entities=[entity_id], lookback_days=None).get(entity_id, _EMPTY)
            self.tables_read_at[entity_id] = (now, frame)
        return frame


_EMPTY = pd.DataFrame()


def read_flags(
    settings: Settings, dataset: Dataset, *, entities: Collection[str] | None = None, lookback_days: int | None = 7,
    newest: int | None = None,
) -> dict[str, pd.DataFrame]:
    """entity -> its scored events in the batch view and the hot table, in event order (only
    those of `entities`, when given; its `newest` only, when given), with `hot` saying which have
    a hot row to write again. The lookback counts back from the batch view's newest day; None
    reads all of it."""
    key = [dataset.event_id, dataset.entity, dataset.event_time]
    only = entity_filter(dataset, entities)
    tables = []
    batch_uri = settings.table_uri(dataset.name, constants.BATCH_SCORES)
    if storage.table_exists(batch_uri):
        table = storage.open_table(batch_uri)
        conditions = [only] if only is not None else []
        partitioned = "event_date" in table.metadata().partition_columns
        days = [date.fromisoformat(str(partition["event_date"])) for partition in table.partitions()] if partitioned else []
        if days and lookback_days is not None:
            conditions.append(pc.field("event_date") >= pc.scalar(max(days) - timedelta(days=lookback_days)))
        condition = conditions[0] if len(conditions) == 1 else (conditions[0] & conditions[1] if conditions else None)
        present = set(table.schema().to_arrow().names)
        columns = [*key, "score", "is_anomaly", *[name for name in (IS_ALERT, SURPRISE, LIKELIHOOD) if name in present]]
        batch = plain(table.to_pyarrow_dataset().to_table(columns=columns, filter=condition))
        tables.append(batch.append_column("hot", pa.repeat(False, batch.num_rows)))
    hot_uri = settings.table_uri(dataset.name, constants.HOT_SCORES)
    if storage.table_exists(hot_uri):
        table = storage.open_table(hot_uri)
        present = set(table.schema().to_arrow().names)
        columns = [name for name in system_tables.hot_scores_schema(dataset).names if name in present]
        hot = plain(table.to_pyarrow_dataset().to_table(columns=columns, filter=only))
        if tables:
            # An event in both answers from the batch view in the merged view: its flag is that one.
            hot = hot.filter(pc.invert(pc.is_in(hot[dataset.event_id], value_set=tables[0][dataset.event_id].combine_chunks())))
        tables.append(hot.append_column("hot", pa.repeat(True, hot.num_rows)))
    tables = [table for table in tables if table.num_rows]
    if not tables:
        return {}
    # Sorted and cut in Arrow; pandas only for the rows kept (its sort took seconds at start-up).
    rows = ordered(pa.concat_tables(tables, promote_options="permissive"), dataset)
    entities = rows[dataset.entity].to_numpy().astype(str)
    slices = list(entity_slices(entities))
    if newest is not None:
        keep = np.concatenate([np.arange(max(start, end - newest), end) for start, end in slices])
        rows, entities = rows.take(keep), entities[keep]
        slices = list(entity_slices(entities))
    frame = rows.to_pandas()
    if IS_ALERT not in frame:
        frame[IS_ALERT] = False
    frame[IS_ALERT] = frame[IS_ALERT].fillna(False).astype(bool)
    return {str(entities[start]): frame.iloc[start:end] for start, end in slices}


def _micros_of(column: pd.Series) -> np.ndarray:
    if getattr(column.dt, "tz", None) is not None:
        column = column.dt.tz_convert("UTC").dt.tz_localize(None)
    return column.to_numpy(dtype="datetime64[us]").astype(np.int64)


def _history_of(dataset: Dataset, frame: pd.DataFrame, complete: bool, recent: int) -> AlertHistory:
    fields = list(dataset.features.fields)
    count = len(frame)
    states = frame[LIKELIHOOD].tolist() if LIKELIHOOD in frame else [None] * count

    def column(name, dtype, default):
        return frame[name].fillna(default).to_numpy(dtype=dtype) if name in frame else np.full(count, default, dtype=dtype)

    # Batch-view rows have no scoring time here (they are never written again): 0.
    scored_at = _micros_of(pd.to_datetime(frame[SCORED_AT], utc=True).fillna(pd.Timestamp(0, tz="UTC"))) if SCORED_AT in frame else np.zeros(count, np.int64)
    history = AlertHistory(
        times=_micros_of(frame[dataset.event_time]),
        ids=frame[dataset.event_id].to_numpy(dtype=str),
        flags=frame.is_anomaly.fillna(False).to_numpy(dtype=bool),
        alerts=frame[IS_ALERT].to_numpy(dtype=bool),
        hot=frame.hot.to_numpy(dtype=bool),
        values=np.column_stack([column(name, np.float64, np.nan) for name in fields]) if count else np.empty((0, len(fields))),
        scores=column("score", np.float64, np.nan),
        versions=column("model_version", np.int64, 0),
        scored_at=scored_at,
        revisions=column(REVISION, np.int64, 0),
        calibration=_unknown_calibration(count, recent),
        complete=complete,
        seen_at=0.0,
    )
    history.calibration[:, SURPRISE_AT] = column(SURPRISE, np.float64, np.nan)
    for position, (record, score) in enumerate(zip(states, history.scores.tolist())):
        state = likelihood.LikelihoodState.of_record(record)
        if state is None:
            continue
        _set_state(history, position, state)
        if score == score and state.recent:
            # A scored event's own relative score is the newest of the recent scores after it.
            history.calibration[position, RELATIVE_AT] = state.recent[-1]
    return history


def _histories_of(dataset: Dataset, frames: dict[str, pd.DataFrame], recent: int) -> dict[str, AlertHistory]:
    """_history_of of every entity's frame (not complete), the frames converted together: per
    entity, pandas' column conversions cost about a millisecond, most of seeding 1,000 entities.
    Each history is a view of the arrays of all: _seed copies the part state keeps."""
    if not frames:
        return {}
    names = list(frames)
    lengths = [len(frames[name]) for name in names]
    whole = _history_of(dataset, pd.concat([frames[name] for name in names]), False, recent)
    histories, start = {}, 0
    for name, length in zip(names, lengths):
        histories[name] = AlertHistory(*(array[start : start + length] for array in whole[:_ARRAYS]), complete=False, seen_at=0.0)
        start += length
    return histories


def _concat(history: AlertHistory, new: AlertHistory) -> AlertHistory:
    return AlertHistory(*(np.concatenate([old, more]) for old, more in zip(history[:_ARRAYS], new[:_ARRAYS])),
                        complete=history.complete, seen_at=history.seen_at)


def _insert_at(history: AlertHistory, position: int, new: AlertHistory) -> AlertHistory:
    return AlertHistory(*(np.concatenate([old[:position], more, old[position:]]) for old, more in zip(history[:_ARRAYS], new[:_ARRAYS])),
                        complete=history.complete, seen_at=history.seen_at)


def _replace_at(history: AlertHistory, position: int, new: AlertHistory) -> AlertHistory:
    arrays = [old.copy() for old in history[:_ARRAYS]]
    for array, more in zip(arrays, new[:_ARRAYS]):
        array[position] = more[0]
    arrays[3][position] = history.alerts[position]  # the flag last written, to see whether it changes
    return AlertHistory(*arrays, complete=history.complete, seen_at=history.seen_at)


def _number(value) -> float:
    return math.nan if value is None else float(value)


def _nullable(value: float) -> float | None:
    """A surprise as the tables store it: null for an unscored event (as the batch job writes it)."""
    return None if math.isnan(value) else float(value)


def shard_rows(rows: list[dict], entity: str, shards: int):
    """Scored rows -> (shard, its rows) per state shard present (order kept)."""
    by_shard: dict[int, list[dict]] = {}
    for row in rows:
        by_shard.setdefault(shard_of(row[entity], shards), []).append(row)
    yield from by_shard.items()
