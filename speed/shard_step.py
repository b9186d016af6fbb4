"""The speed layer's keyed step: a shard's features, scores and alert flags in one stateful DoFn.

Features (speed/stateful_features.py) and alert flags (speed/alert_flags.py) both keep per-entity
state under the same shard key; scoring between them needs no state. As three steps, each batch
of rows crossed the runner twice: shuffled to the features' shard, then shuffled again to the
alert flags' shard after scoring, every row pickled and sent once more. The latency trace showed
that second shuffle as most of the time between scored and the hot-table sink (docs/benchmarks.md,
"Speed"). Here one element of a shard goes through all three in one call; each part keeps its own
state (speed/shard_state.py) and its own code, and is still a DoFn of its own for the tests that run it alone.

Between the parts, the rows go as dicts (they are the step's output), and beside them the arrays
one part already had and the next would otherwise build again row by row: the features of the
events that followed their state (stateful_features.Appended) reach scoring as one block per
entity, and their times, values, revisions, scores and flags reach the alert flags as arrays
(alert_flags.Incoming).
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Iterable

import apache_beam as beam
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import TimerSpec, on_timer

from lakehouse.settings import Settings
from schemas.declaration import Dataset
from speed import shard_state
from speed.alert_flags import FlagAlerts
from speed.scoring import ScoreBatch
from speed.stateful_features import ComputeFeatures
from speed.validate import DEAD_LETTER


_FROZEN = threading.Event()


def _freeze_long_lived() -> None:
    """Once per process, after the first set-up: the objects alive then (the modules, the runner,
    the models, the start-up histories) moved out of the cyclic collector's generations
    (gc.freeze). The keyed step allocates a few dicts and lists per event, so the collector runs
    often, and each full collection walked every object of the process: about 14% of the step's
    CPU in a replay of 100,000 events. Frozen objects are still freed when their count drops;
    only a reference cycle among them would outlive its use, once, since later set-ups do not
    freeze again."""
    if _FROZEN.is_set():
        return
    _FROZEN.set()
    gc.collect()  # today's garbage collected, not frozen
    gc.freeze()


class ScoreShard(beam.DoFn):
    """(shard, valid records) -> lists of scored rows with `is_alert` (main output) and lists of
    dead letters (tag `dead_letter`: entities without a model)."""

    # Specs of their own, like the parts' (a timer spec takes one callback, here this class's).
    FEATURES_LOG, FEATURES_TOKEN = shard_state.specs("entities")
    ALERTS_LOG, ALERTS_TOKEN = shard_state.specs("alerts")
    EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)

    def __init__(self, dataset: Dataset, settings: Settings, *, reload_seconds: float = 30.0, state_ttl_seconds: float = 0.0) -> None:
        self.features = ComputeFeatures(dataset, settings, state_ttl_seconds)
        self.scoring = ScoreBatch(dataset, settings, reload_seconds)
        self.flags = FlagAlerts(dataset, settings, state_ttl_seconds)

    def setup(self) -> None:
        for part in (self.features, self.scoring, self.flags):
            part.setup()
        _freeze_long_lived()

    def process(
        self,
        element: tuple[int, list[dict]],
        features_log=beam.DoFn.StateParam(FEATURES_LOG),
        features_token=beam.DoFn.StateParam(FEATURES_TOKEN),
        alerts_log=beam.DoFn.StateParam(ALERTS_LOG),
        alerts_token=beam.DoFn.StateParam(ALERTS_TOKEN),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterable:
        shard = element[0]
        featured, blocks = self.features.featured(element, features_log, features_token, expiry)
        rows, letters, groups, scored_at = self.scoring.score(featured, blocks)
        if letters:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, letters)
        if rows:
            # The arrays the alert flags would read back from the rows, from the parts that had them.
            arrays = {}
            for entity_id, scores, flags, relative, version in groups:
                block = blocks.get(entity_id)
                if block is not None and len(block.ids) == len(scores):
                    arrays[entity_id] = self.flags.incoming(block, scores, flags, relative, version, scored_at)
            yield self.flags.flag(shard, rows, alerts_log, alerts_token, arrays)

    @on_timer(EXPIRY)
    def expire(
        self,
        key=beam.DoFn.KeyParam,
        features_log=beam.DoFn.StateParam(FEATURES_LOG),
        features_token=beam.DoFn.StateParam(FEATURES_TOKEN),
        alerts_log=beam.DoFn.StateParam(ALERTS_LOG),
        alerts_token=beam.DoFn.StateParam(ALERTS_TOKEN),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ):
        # One timer for both cells: alone, the alert flags' state expired only when its shard got
        # rows again, so a shard gone silent kept its entities' flags for good. The timer looks
        # again while either cell holds an entity (the flags' last rows come a little after the
        # features' last events).
        self.features.expire(key=key, log=features_log, token=features_token, expiry=expiry)
        if self.flags.expire_silent(key, alerts_log, alerts_token) and key not in self.features.timer_due:
            self.features.arm(key, expiry, time.time())
        return []
