"""A calibrated anomaly score: how unlikely an entity's recent scores are against its own history.

A detector's score is in per-model units, and even on the relative scale (quality/scores.py: 0 at
the mean training score, 1 at the contamination threshold) one threshold does not mean the same
on every series: a noisy series sits near its threshold all day, a quiet one never comes close.
In the spirit of NAB's "anomaly likelihood" (Ahmad et al. 2017), this module asks instead how
improbable the mean of the entity's last `recent` scores is under the distribution that mean has
had so far for that entity, and reports the tail probability p as a surprise, -log10(p): 3 means
one chance in a thousand, on every series alike.

The distribution is a normal one with an exponentially weighted mean and variance of the
recent-score means (a plain running mean and variance until `history` values have been seen,
then weight 1/history on each new one), so the state is a few numbers and the last `recent`
scores: cheap to keep per entity in a stream. Two refinements, chosen on the 20 NAB series of
../shared/data (docs/quality.md, "A calibrated score"): the history learns a value at most `clip`
spreads from its mean (an anomaly does not widen the entity's normal range), and only a new peak
is reported: an event's surprise counts when it exceeds the entity's decaying peak of earlier
surprises, else it is 0, so an episode shows as its onset (and any stronger event in it), not as
every row of a level shift the model has not learnt yet. No look-ahead: an event's surprise uses its own
score and earlier ones only, and the history is updated after the event is judged. `step` is the
whole rule for one event; `fold_arrays` (and `fold`) apply it over one entity's scores in event order. The batch layer folds and
the speed layer steps, so both give the same numbers (tests/test_likelihood.py).

Unscored events (a NaN score: no model yet) leave the state unchanged and get a NaN surprise.
Until `min_history` recent-score means have been seen the surprise is 0 (no evidence). On the
relative scale an entity starts from the prior the scale itself implies (`initial_state`), so it
needs no warm-up.

Both scored tables carry each event's `surprise` and the entity's state after it (`record`, the
`likelihood` column of lakehouse/system_tables.py): the batch job folds each entity's relative
scores over its whole history (batch/score.py), and the speed layer steps on from the newest
stored state of the entity (speed/alert_flags.py), so a job that starts, or an entity whose state
expired, continues the chain without reading its history again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy.special import log_ndtr, ndtri

# The spread below which two recent-score means count as equal: a series whose scores never move
# would otherwise make the first tiny change infinitely surprising.
MIN_SPREAD = 1e-3
# Observations (the prior counts) before the clip applies: a spread estimated from fewer values
# (none at all without a prior) is no measure to limit the history's updates by.
CLIP_AFTER = 10
# The largest surprise reported (a tail probability of 1e-300): beyond it float64 runs out.
MAX_SURPRISE = 300.0


@dataclass(frozen=True)
class LikelihoodSettings:
    # Defaults chosen on the 20 NAB series of ../shared/data (quality/calibration.py; in-sample):
    # the last score alone, a history of 30 days of 5-minute events, and the relative scale's
    # prior worth 10 events, so the surprise starts with the first scored event.
    recent: int = 1  # scores averaged into the value judged
    history: int = 8640  # effective length of the history, in events
    min_history: int = 1  # observations (prior included) before any surprise is reported
    prior_weight: int = 10  # how many observations the relative scale's prior counts for (0: none)
    # How far from the running mean a value moves the history, in its spreads (0: no limit). An
    # anomaly is learnt as a value `clip` spreads away, not as itself: one spike no longer
    # inflates the variance and numbs the entity for days (NAB in-sample 53.5 -> 57.6 alone).
    clip: float = 6.0
    # Only a new peak is reported: an event's surprise counts when it exceeds the entity's peak of
    # earlier surprises, decaying by half every `peak_half_life` events; otherwise 0 (0: every
    # surprise). One episode is one onset, not hundreds of rows over a threshold, and a
    # stronger event inside it still counts.
    peak_half_life: int = 48

    def __post_init__(self) -> None:
        if self.recent < 1 or self.history < 1 or self.min_history < 1 or self.prior_weight < 0 or self.clip < 0 or self.peak_half_life < 0:
            raise ValueError(f"likelihood settings must be positive: {self}")

    @property
    def peak_decay(self) -> float:
        """The factor the peak decays by at each scored event (0: no peak kept)."""
        return 0.5 ** (1.0 / self.peak_half_life) if self.peak_half_life else 0.0


@dataclass
class LikelihoodState:
    """One entity's state: its last scores, and the running distribution of their means."""

    recent: list[float] = field(default_factory=list)
    count: int = 0  # recent-score means folded into the distribution
    mean: float = 0.0
    variance: float = 0.0
    peak: float = 0.0  # the decaying peak of the surprises so far (before suppression)

    @classmethod
    def prior(cls, mean: float, variance: float, weight: int) -> LikelihoodState:
        """A state that starts from a belief worth `weight` observations instead of nothing: on
        the relative scale (0 at the model's mean training score, 1 at its contamination
        threshold) the model itself says the mean is 0 and the threshold sits at the
        contamination's normal quantile, so the surprise needs no warm-up (relative_prior)."""
        return cls([], int(weight), float(mean), float(variance))

    def copy(self) -> LikelihoodState:
        return LikelihoodState(list(self.recent), self.count, self.mean, self.variance, self.peak)

    def record(self) -> dict:
        """The state as the scored tables store it (system_tables.LIKELIHOOD)."""
        return {"count": self.count, "mean": self.mean, "variance": self.variance, "recent": list(self.recent), "peak": self.peak}

    @classmethod
    def of_record(cls, record) -> LikelihoodState | None:
        """A state stored by `record`; None for a row that has none (unscored, or written before
        the column existed)."""
        if record is None or not isinstance(record, dict) or record.get("count") is None:
            return None
        recent, peak = record.get("recent"), record.get("peak")
        # A row written before the peak was kept has none: no earlier peak.
        return cls([float(value) for value in (recent if recent is not None else [])], int(record["count"]),
                   float(record["mean"]), float(record["variance"]), float(peak) if peak is not None else 0.0)


def settings_of(spec) -> LikelihoodSettings:
    """The settings a dataset declares (schemas.declaration.LikelihoodSpec)."""
    return LikelihoodSettings(recent=spec.recent, history=spec.history, min_history=spec.min_history,
                              prior_weight=spec.prior_weight, clip=spec.clip, peak_half_life=spec.peak_half_life)


def relative_score(scores: np.ndarray, threshold: float, train_mean: float) -> np.ndarray:
    """A score on a scale shared by every entity and detector: 0 at the model's mean training
    score, 1 at its contamination threshold. Raw scores are per-model units (a KNN distance, an
    IForest depth): the surprise is computed on this scale, and NAB sweeps one threshold over the
    whole corpus on it. A model flags at `detector.threshold_scale` on this scale."""
    span = threshold - train_mean
    return (np.asarray(scores, dtype=np.float64) - train_mean) / (span if span > 0 else 1.0)


def spread_of(variance: float) -> float:
    return max(math.sqrt(max(variance, 0.0)), MIN_SPREAD)


def surprise_of(value: float, mean: float, variance: float) -> float:
    """-log10 of the upper tail probability of `value` under a normal (mean, variance)."""
    # log_ndtr(-z) is log P(Z > z), accurate far into the tail where 1 - cdf rounds to 0.
    log_tail = float(log_ndtr(-(value - mean) / spread_of(variance)))
    return min(-log_tail / math.log(10.0), MAX_SURPRISE)


class Folded(NamedTuple):
    """A fold's output per event: the surprise and the state after the event (what
    the scored tables store, system_tables.LIKELIHOOD), and the state after the last event."""

    surprises: np.ndarray  # float64, NaN for an unscored event
    count: np.ndarray  # int64
    mean: np.ndarray  # float64
    variance: np.ndarray  # float64
    peak: np.ndarray  # float64
    recent: list[list[float]]  # the recent scores after each event
    final: LikelihoodState

    def record(self, index: int) -> dict:
        """The state after event `index` as the scored tables store it (LikelihoodState.record)."""
        return {"count": int(self.count[index]), "mean": float(self.mean[index]), "variance": float(self.variance[index]),
                "recent": list(self.recent[index]), "peak": float(self.peak[index])}

    def records(self) -> list[dict]:
        """`record` of every event."""
        # The recent lists are the fold's own copies, one per event: shared with the rows, not copied again.
        return [{"count": count, "mean": mean, "variance": variance, "recent": recent, "peak": peak}
                for count, mean, variance, recent, peak in zip(self.count.tolist(), self.mean.tolist(), self.variance.tolist(),
                                                               self.recent, self.peak.tolist())]


def fold_arrays(scores: np.ndarray, settings: LikelihoodSettings, state: LikelihoodState | None = None) -> Folded:
    """The rule over one entity's scores in event order, from `state` (a fresh one by default,
    left untouched). Plain Python floats event by event, arrays only at the end: the speed layer
    folds a few events of an entity at a time, where numpy's per-call cost would dominate."""
    state = state.copy() if state is not None else LikelihoodState()
    recent, count, mean, variance, peak = state.recent, state.count, state.mean, state.variance, state.peak
    keep, history, min_history, clip, decay = settings.recent, settings.history, settings.min_history, settings.clip, settings.peak_decay
    surprises, counts, means, variances, peaks, recents = [], [], [], [], [], []
    for score in np.asarray(scores, dtype=np.float64).tolist():
        if score != score:  # NaN: an unscored event leaves the state as it is
            surprises.append(math.nan)
        else:
            recent.append(score)
            if len(recent) > keep:
                del recent[0]
            value = sum(recent) / len(recent)
            surprise = surprise_of(value, mean, variance) if count >= min_history else 0.0
            if decay:
                surprises.append(surprise if surprise > peak else 0.0)
                peak = max(surprise, peak * decay)
            else:
                surprises.append(surprise)
            # Judged first, then learnt from: the event is never compared with itself.
            count += 1
            weight = max(1.0 / count, 1.0 / history)
            difference = value - mean
            if clip and count > CLIP_AFTER:
                limit = clip * spread_of(variance)
                difference = min(max(difference, -limit), limit)
            mean += weight * difference
            variance = (1.0 - weight) * (variance + weight * difference * difference)
        counts.append(count)
        means.append(mean)
        variances.append(variance)
        peaks.append(peak)
        recents.append(list(recent))
    final = LikelihoodState(list(recent), count, mean, variance, peak)
    return Folded(np.array(surprises, dtype=np.float64), np.array(counts, dtype=np.int64), np.array(means, dtype=np.float64),
                  np.array(variances, dtype=np.float64), np.array(peaks, dtype=np.float64), recents, final)


def step(state: LikelihoodState, score: float, settings: LikelihoodSettings) -> float:
    """The surprise of one event's score, updating the entity's state in place."""
    folded = fold_arrays(np.array([math.nan if score is None else score], dtype=np.float64), settings, state)
    final = folded.final
    state.recent, state.count, state.mean, state.variance, state.peak = final.recent, final.count, final.mean, final.variance, final.peak
    return float(folded.surprises[0])


def initial_state(settings: LikelihoodSettings, contamination: float) -> LikelihoodState:
    """An entity's first state for relative scores: the prior mean 0 and a spread that puts 1 (the
    contamination threshold) at the normal quantile of the contamination (1 in 100: 2.33
    standard deviations), worth `prior_weight` observations."""
    if settings.prior_weight == 0:
        return LikelihoodState()
    quantile = float(-ndtri(contamination))
    return LikelihoodState.prior(0.0, 1.0 / (quantile * quantile), settings.prior_weight)


def fold(scores: np.ndarray, settings: LikelihoodSettings, state: LikelihoodState | None = None) -> tuple[np.ndarray, LikelihoodState]:
    """Surprises of one entity's scores in event order, from `state` (a fresh one by default,
    left untouched), and the state after the last score."""
    folded = fold_arrays(scores, settings, state)
    return folded.surprises, folded.final
