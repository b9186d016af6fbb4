"""The keyed step's state log (speed/shard_state.py): the log alone rebuilds the state a worker
keeps folded, and a bundle that fails leaves no fold behind that claims the committed token.

Beam's state cells are replaced here by cells with a bundle's semantics (changes visible at
once, kept by `finish`, dropped by `fail`): the property under test is the fold's bookkeeping,
which a runner cannot make fail on demand. The real runners run the same code in
tests/test_speed_features.py, test_alerts.py and the follow and crash tests.
"""

from __future__ import annotations

import random
from typing import NamedTuple

import numpy as np
import pytest

from speed import shard_state


class History(NamedTuple):
    times: np.ndarray
    values: np.ndarray
    revision: int


class _Cells:
    """A bag and a value cell, each with committed contents and a bundle's pending changes."""

    def __init__(self) -> None:
        self.bag, self.value = [], None
        self.fail()

    def fail(self) -> None:
        self.pending_bag, self.pending_value, self.cleared = list(self.bag), self.value, False

    def finish(self) -> None:
        self.bag, self.value = list(self.pending_bag), self.pending_value

    # The log (BagRuntimeState) ...
    def read(self):
        return iter(self.pending_bag)

    def add(self, record) -> None:
        self.pending_bag.append(record)

    def clear(self) -> None:
        self.pending_bag = []

    # ... and the token (ReadModifyWriteRuntimeState), as two views of one object.
    @property
    def token(self):
        cells = self

        class Token:
            def read(self):
                return cells.pending_value

            def write(self, value):
                cells.pending_value = value

        return Token()


def _grow(history: History | None, rng: random.Random, keep: int) -> tuple[History, int]:
    count = rng.randint(1, 3)
    start = 0 if history is None or not len(history.times) else int(history.times[-1]) + 1
    times = np.arange(start, start + count)
    values = np.array([rng.random() for _ in range(count)])
    if history is None:
        return History(times, values, count), count
    return History(np.concatenate([history.times, times])[-keep:], np.concatenate([history.values, values])[-keep:],
                   history.revision + count), count


def _same(left: dict, right: dict) -> bool:
    return left.keys() == right.keys() and all(
        np.array_equal(left[name].times, right[name].times) and np.array_equal(left[name].values, right[name].values)
        and left[name].revision == right[name].revision for name in left
    )


def test_the_log_alone_rebuilds_what_the_worker_folded(monkeypatch):
    # Compactions within the test: a rewrite once the log holds 2 x the state's rows + 40.
    monkeypatch.setattr(shard_state, "_MIN_ROWS", 40)
    rng = random.Random(7)
    cells = _Cells()
    expected: dict[str, History] = {}
    expired: set[str] = set()
    compactions = 0
    for bundle in range(300):
        state = shard_state.ShardState("job-a", "entities", 0, cells, cells.token)
        assert _same(state.entities, expected) and state.expired == expired
        for entity in rng.sample([f"e{number}" for number in range(12)], 4):
            roll = rng.random()
            if roll < 0.1 and entity in expected:
                state.expire(entity)
                del expected[entity]
                expired.add(entity)
            elif roll < 0.2 or entity not in expected:
                length = rng.randint(0, 5)
                history = History(np.arange(length), np.full(length, rng.random()), bundle)
                state.put(entity, history)
                expected[entity] = history
                expired.discard(entity)
            else:
                history, count = _grow(expected[entity], rng, keep=6)
                state.append(entity, history, count)
                expected[entity] = history
        records_before = len(cells.pending_bag)
        # The fold's count of the state's rows (the rewrite's threshold) follows every change.
        assert state._fold.state_rows == sum(len(history.times) for history in expected.values())
        state.commit()
        cells.finish()
        compactions += len(cells.bag) < records_before
        # Another process (or a restart) has no fold: it rebuilds from the log and the token.
        rebuilt = shard_state.ShardState(f"other-{bundle}", "entities", 0, cells, cells.token)
        assert _same(rebuilt.entities, expected) and rebuilt.expired == expired
        cells.fail()  # the rebuild changed nothing to commit
        # The log stays within its bound: 2 x the state's rows + 40, and one commit's rows.
        state_rows = sum(max(1, len(history.times)) for history in expected.values())
        assert sum(shard_state._rows(record) for record in cells.bag) <= 2 * state_rows + 40 + 4 * 6 + len(expired)
    assert compactions >= 3


def test_a_failed_bundle_leaves_no_fold_that_claims_the_committed_state():
    cells = _Cells()
    state = shard_state.ShardState("job-b", "entities", 3, cells, cells.token)
    state.put("a", History(np.arange(3), np.zeros(3), 1))
    state.commit()
    cells.finish()
    # A bundle changes the worker's fold, then fails: the runner drops its state changes.
    state = shard_state.ShardState("job-b", "entities", 3, cells, cells.token)
    state.append("a", History(np.arange(4), np.zeros(4), 2), 1)
    state.put("b", History(np.arange(1), np.ones(1), 1))
    state.commit()
    cells.fail()
    # The retry sees the committed state, not the failed bundle's fold.
    retry = shard_state.ShardState("job-b", "entities", 3, cells, cells.token)
    assert list(retry.entities) == ["a"] and len(retry.entities["a"].times) == 3
    # Even when the failure came before the bundle's own commit.
    retry.put("c", History(np.arange(1), np.ones(1), 1))
    cells.fail()
    again = shard_state.ShardState("job-b", "entities", 3, cells, cells.token)
    assert list(again.entities) == ["a"]
    again.commit()  # nothing changed: the fold is the committed state again
    # A bundle that finds its fold current, changes it and fails before committing.
    hit = shard_state.ShardState("job-b", "entities", 3, cells, cells.token)
    hit.put("d", History(np.arange(1), np.ones(1), 1))
    cells.fail()
    assert list(shard_state.ShardState("job-b", "entities", 3, cells, cells.token).entities) == ["a"]


def test_an_append_the_log_cannot_place_is_an_error():
    cells = _Cells()
    cells.add((shard_state.APPENDS, None, shard_state._stacked([("ghost", 2, 1, History(np.arange(2), np.zeros(2), 1))])))
    cells.token.write((1, 1))
    cells.finish()
    with pytest.raises(RuntimeError, match="ghost"):
        shard_state.ShardState("job-c", "entities", 0, cells, cells.token)
