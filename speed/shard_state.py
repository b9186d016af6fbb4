"""Per-shard entity state whose traffic follows the events, not the history.

The keyed step keeps, per shard, a dict of entity histories (speed/stateful_features.py,
speed/alert_flags.py). Kept as one `ReadModifyWriteState` value, it was written whole at the end
of every bundle: with 1,000 entities over 8 shards about 70 MB pickled and sent to the runner
per 100 ms bundle whatever the number of events, and read whole again wherever the runner's
state cache missed ("Retrieving state 1045 times costed 60 seconds" in a local replay;
docs/benchmarks.md, "Where the keyed step's time goes").

Here a shard's state is two cells:
- LOG, a bag of change records: entities' new rows ("appends": each entity's history's newest
  rows, to be appended to what the log holds so far and trimmed to the history's length; one
  record for all the entities of a commit), an entity's whole
  history ("put": a new, late or re-seeded entity), or its expiry ("expire": history dropped, name
  kept). A bundle adds only the records of the entities it changed, a row or two each.
- TOKEN, (a random token, rows in the log), rewritten by every bundle that changes the shard.

A worker process keeps each shard's state folded (entity -> history, expired names) between
bundles, under the token its last change was committed with. A bundle reads the token: the same
one means the fold is the state; another (a restart, another worker, a bundle that failed after
this worker had changed its fold) means the fold is rebuilt from the log. While a bundle changes
a fold its token is cleared, so a fold whose bundle fails claims no token; tokens are random, so
a retry cannot commit the token a failed attempt left behind. When the log holds more than
`COMPACT_FACTOR` times the rows the state holds, it is rewritten as one record per entity: the
runner keeps at most about three times the state, and a row appended costs at most half a row
rewritten. (Counted in records, the first version let a shard of 1,250 entities log 20,000
commits before a rewrite: the soak's Flink job server grew by 69% in 10 minutes.)

Records are copies: histories are replaced, not changed in place, once committed, but a record
may sit in Beam's state cache for as long as the log lives.
"""

from __future__ import annotations

import secrets
import threading
from typing import Any, NamedTuple

import numpy as np
from apache_beam.coders import PickleCoder
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec

APPENDS, PUT, EXPIRE, EXPIRED_NAMES = "appends", "put", "expire", "expired"

# Rows a log may hold, as a multiple of the rows of the state it describes (plus _MIN_ROWS),
# before it is rewritten.
COMPACT_FACTOR = 2
_MIN_ROWS = 1024


def specs(name: str) -> tuple[BagStateSpec, ReadModifyWriteStateSpec]:
    """The two state cells of a part of the keyed step (`name`: 'entities', 'alerts')."""
    return BagStateSpec(f"{name}_log", PickleCoder()), ReadModifyWriteStateSpec(f"{name}_token", PickleCoder())


class _Fold:
    __slots__ = ("token", "rows", "entities", "expired", "state_rows")

    def __init__(self) -> None:
        self.token: int | None = None
        self.rows = 0  # rows the log holds
        self.entities: dict[str, NamedTuple] = {}
        self.expired: set[str] = set()
        # Rows the entities' histories hold, kept as they change: the rewrite's threshold is
        # checked at every commit, and summing it over a shard's entities each time cost O(entities).
        self.state_rows = 0


# (job, part, shard) -> fold, shared by the DoFn instances of a process (the SDK harness makes
# several bundle processors for one step; a shard's bundles may land on any of them). Bounded:
# the folds of the newest jobs only.
_FOLDS: dict[tuple, _Fold] = {}
_JOBS: list[str] = []
_LOCK = threading.Lock()
_KEPT_JOBS = 2


def _fold_of(job: str, part: str, shard: Any) -> _Fold:
    with _LOCK:
        if job not in _JOBS:
            _JOBS.append(job)
            for old in _JOBS[:-_KEPT_JOBS]:
                for key in [key for key in _FOLDS if key[0] == old]:
                    del _FOLDS[key]
            del _JOBS[:-_KEPT_JOBS]
        return _FOLDS.setdefault((job, part, shard), _Fold())


def _length(history: NamedTuple) -> int:
    return len(history[0])


def _copy(history: NamedTuple) -> NamedTuple:
    return type(history)(*(value.copy() if isinstance(value, np.ndarray) else value for value in history))


def _appended(old: NamedTuple, tail: NamedTuple, length: int) -> NamedTuple:
    return type(tail)(*(
        np.concatenate([before, after])[-length:] if isinstance(after, np.ndarray) else after
        for before, after in zip(old, tail)
    ))


class ShardState:
    """One shard's entity histories for one element (or timer) of the keyed step: `entities`
    and `expired` to read, `put`/`append`/`expire` to change, `commit` once at the end."""

    def __init__(self, job: str, part: str, shard: Any, log, token) -> None:
        self._log, self._token_cell = log, token
        self._fold = fold = _fold_of(job, part, shard)
        self._committed = committed = token.read()
        if committed is None:
            fold.token, fold.rows, fold.entities, fold.expired, fold.state_rows = None, 0, {}, set(), 0
        elif fold.token != committed[0]:
            _rebuild(fold, log.read())
        fold.token = None  # changing: a failure from here on leaves no fold that claims a token
        fold.rows = 0 if committed is None else committed[1]
        self.entities = fold.entities
        self.expired = fold.expired
        self._appends: dict[str, int] = {}  # entity -> newest rows appended since open
        self._puts: set[str] = set()
        self._expires: set[str] = set()

    def _replace(self, entity: str, history: NamedTuple) -> None:
        old = self.entities.get(entity)
        self._fold.state_rows += _length(history) - (_length(old) if old is not None else 0)
        self.entities[entity] = history

    def put(self, entity: str, history: NamedTuple) -> None:
        """The entity's whole history (new, re-seeded, or changed other than at its end)."""
        self._replace(entity, history)
        self.expired.discard(entity)
        self._puts.add(entity)
        self._expires.discard(entity)

    def append(self, entity: str, history: NamedTuple, count: int) -> None:
        """The entity's history with `count` new rows at its end (older rows unchanged, the
        oldest maybe trimmed); its scalars may have changed."""
        if entity not in self.entities or entity in self._puts:
            self.put(entity, history)
            return
        self._replace(entity, history)
        self._appends[entity] = self._appends.get(entity, 0) + count

    def expire(self, entity: str) -> None:
        """Drop the entity's history, keep its name (its next event re-reads the tables)."""
        old = self.entities.pop(entity, None)
        if old is not None:
            self._fold.state_rows -= _length(old)
        self.expired.add(entity)
        self._expires.add(entity)
        self._puts.discard(entity)
        self._appends.pop(entity, None)

    def commit(self) -> None:
        records = []
        for entity in self._puts:
            records.append((PUT, entity, _copy(self.entities[entity])))
        appends = []
        for entity, count in self._appends.items():
            history = self.entities[entity]
            length = _length(history)
            if count >= length:
                records.append((PUT, entity, _copy(history)))
            else:
                appends.append((entity, length, count, history))
        if appends:
            records.append((APPENDS, None, _stacked(appends)))
        records.extend((EXPIRE, entity, None) for entity in self._expires)
        fold = self._fold
        if not records:
            # Nothing changed: the fold is the committed state again.
            fold.token = self._committed[0] if self._committed is not None else None
            return
        total = fold.rows + sum(_rows(record) for record in records)
        if total > _MIN_ROWS and total > COMPACT_FACTOR * fold.state_rows + _MIN_ROWS:
            self._log.clear()
            records = [(PUT, entity, _copy(history)) for entity, history in self.entities.items()]
            if self.expired:
                records.append((EXPIRED_NAMES, None, frozenset(self.expired)))
            total = sum(_rows(record) for record in records)
        for record in records:
            self._log.add(record)
        token = secrets.randbits(63)
        self._token_cell.write((token, total))
        fold.token, fold.rows = token, total


def _stacked(appends: list[tuple[str, int, int, NamedTuple]]):
    """One record for every entity a commit appended to: each array field's new rows of all the
    entities in one array. Pickled as one record of a dozen arrays, not a dozen per entity (the
    pickling of per-entity records was 5% of a local replay's samples)."""
    kind = type(appends[0][3])
    names = [entity for entity, _, _, _ in appends]
    lengths = [length for _, length, _, _ in appends]
    counts = [count for _, _, count, _ in appends]
    arrays, scalars = [], []
    for index, value in enumerate(appends[0][3]):
        if isinstance(value, np.ndarray):
            arrays.append(np.concatenate([history[index][-count:] for _, _, count, history in appends]))
            scalars.append(None)
        else:
            arrays.append(None)
            scalars.append([history[index] for _, _, _, history in appends])
    return kind, names, lengths, counts, arrays, scalars


def _unstacked(payload):
    kind, names, lengths, counts, arrays, scalars = payload
    start = 0
    for number, (entity, length, count) in enumerate(zip(names, lengths, counts)):
        yield entity, length, kind(*(
            array[start : start + count] if array is not None else values[number] for array, values in zip(arrays, scalars)
        ))
        start += count


def _append_to(entities: dict, entity: str, length: int, tail: NamedTuple) -> None:
    if entity not in entities:
        raise RuntimeError(f"speed state: an append to {entity!r}, which the shard's log never put")
    entities[entity] = _appended(entities[entity], tail, length)


def _rows(record) -> int:
    """Rows of a log record, for the rewrite's threshold (a name or an empty history counts 1)."""
    kind, _, payload = record
    if kind == PUT:
        return max(1, _length(payload))
    if kind == APPENDS:
        return sum(payload[3])
    if kind == EXPIRED_NAMES:
        return max(1, len(payload))
    return 1


def _rebuild(fold: _Fold, records) -> None:
    """The shard's state from its log."""
    entities: dict[str, NamedTuple] = {}
    expired: set[str] = set()
    for kind, entity, payload in records:
        if kind == APPENDS:
            for entity, length, tail in _unstacked(payload):
                _append_to(entities, entity, length, tail)
        elif kind == PUT:
            entities[entity] = payload
            expired.discard(entity)
        elif kind == EXPIRE:
            entities.pop(entity, None)
            expired.add(entity)
        elif kind == EXPIRED_NAMES:
            expired.update(payload)
        else:
            raise RuntimeError(f"speed state: unknown log record {kind!r}")
    fold.entities, fold.expired = entities, expired
    fold.state_rows = sum(_length(history) for history in entities.values())
