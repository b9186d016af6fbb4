"""The NAB score (Numenta Anomaly Benchmark), computed by this project's own code.

The rules, as NAB publishes them (Lavin & Ahmad 2015, and NAB's scorer):
- Each series has labelled anomaly windows. The first 15% of its rows (at most 750) are a
  probationary period: nothing there counts.
- A row is a detection when its anomaly score is at or above the threshold.
- Inside a window, a detection is worth tpWeight x sigma(p) / sigma(-1), where p runs from -1 at
  the window's first row to -1/width at its last, and sigma(p) = 2 / (1 + e^(5p)) - 1 (the scaled
  sigmoid): early detection earns almost the whole tpWeight, late detection little. Only the
  best detection of each window counts.
- A window with no detection costs fnWeight.
- A detection outside every window costs fpWeight x sigma(d) for rows after a window (d = rows
  past its end / (its width - 1), so alarms just after a window cost little), and the full
  fpWeight before the first window (sigma is -1 from d >= 3 on).
- One threshold serves the whole corpus; NAB picks, per profile, the one with the best total.
  This module sweeps every distinct score exactly (NAB's own optimiser climbs to a local optimum
  of the same function, so an exact sweep is never worse).
- Normalised score = 100 x (raw - null) / (perfect - null): null is the detector that never
  fires (every window missed), perfect detects every window at its first row (windows x tpWeight).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PROBATION_PERCENT = 0.15
# NAB caps the probationary period at 15% of 5000 rows.
PROBATION_CAP_ROWS = 5000
OUTSIDE, PROBATIONARY = -1, -2


@dataclass(frozen=True)
class Profile:
    """A NAB application profile: the weights of its cost matrix."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


# NAB's profiles.json (the three published application profiles).
PROFILES = {
    "standard": Profile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0),
    "reward_low_FP_rate": Profile("reward_low_FP_rate", tp_weight=1.0, fp_weight=0.22, fn_weight=1.0),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", tp_weight=1.0, fp_weight=0.11, fn_weight=2.0),
}


def load_profiles(path: Path) -> dict[str, Profile]:
    """Profiles from a file in NAB's profiles.json layout."""
    document = json.loads(Path(path).read_text())
    return {
        name: Profile(name, float(body["CostMatrix"]["tpWeight"]), float(body["CostMatrix"]["fpWeight"]), float(body["CostMatrix"]["fnWeight"]))
        for name, body in document.items()
    }


def scaled_sigmoid(position: float) -> float:
    """NAB's weighting of a detection at a relative position to a window (see the module doc)."""
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def probationary_length(rows: int, percent: float = PROBATION_PERCENT) -> int:
    return int(min(math.floor(percent * rows), percent * PROBATION_CAP_ROWS))


@dataclass
class Series:
    """One scored series: its rows in time order, their anomaly scores and its labelled windows.

    scores: higher is more anomalous; NaN where the system gave no score (never a detection).
    windows: (start, end) inclusive, in the timestamps' type.
    """

    name: str
    timestamps: np.ndarray
    scores: np.ndarray
    windows: list[tuple] = field(default_factory=list)
    # row_weights per (profile, probationary share): they depend on the timestamps and windows
    # only, and the hold-out scores the same series hundreds of times.
    _weights: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.timestamps = np.asarray(self.timestamps)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if len(self.timestamps) != len(self.scores):
            raise ValueError(f"{self.name}: {len(self.timestamps)} timestamps but {len(self.scores)} scores")
        if len(self.timestamps) > 1 and np.any(self.timestamps[1:] < self.timestamps[:-1]):
            raise ValueError(f"{self.name}: timestamps must be in ascending order")


@dataclass(frozen=True)
class RowWeights:
    """What a detection at each row of a series is worth, and which window it falls in."""

    weights: np.ndarray  # the detection's value (positive in a window, negative outside)
    window: np.ndarray  # index of the window the row is in; OUTSIDE or PROBATIONARY otherwise
    windows_scored: int  # windows with at least one row after the probationary period


def row_weights(series: Series, profile: Profile, probation_percent: float = PROBATION_PERCENT) -> RowWeights:
    key = (profile, probation_percent)
    if key not in series._weights:
        series._weights[key] = _row_weights(series, profile, probation_percent)
    return series._weights[key]


def _row_weights(series: Series, profile: Profile, probation_percent: float) -> RowWeights:
    times = series.timestamps
    count = len(times)
    weights = np.empty(count)
    window_of = np.full(count, OUTSIDE, dtype=np.int64)
    bounds = []
    for start, end in sorted(series.windows):
        left = int(np.searchsorted(times, np.asarray(start, dtype=times.dtype), side="left"))
        right = int(np.searchsorted(times, np.asarray(end, dtype=times.dtype), side="right")) - 1
        if right >= left:  # a window no row falls in cannot be detected nor missed by a row
            bounds.append((left, right))
    max_tp = scaled_sigmoid(-1.0)
    previous_right, previous_width = None, None
    position = 0
    for number, (left, right) in enumerate([*bounds, (count, count)]):
        for row in range(position, min(left, count)):  # rows before this window
            if previous_right is None:
                distance = 3.0
            else:
                # NAB divides by (width - 1), undefined for a one-row window: one row is used then.
                distance = abs(previous_right - row) / max(previous_width - 1, 1)
            weights[row] = scaled_sigmoid(distance) * profile.fp_weight
        if left >= count:
            break
        width = right - left + 1
        for row in range(left, right + 1):
            relative = -(right - row + 1) / width
            weights[row] = scaled_sigmoid(relative) * profile.tp_weight / max_tp
            window_of[row] = number
        previous_right, previous_width, position = right, width, right + 1
    probation = probationary_length(count, probation_percent)
    window_of[:probation] = PROBATIONARY
    scored = {int(index) for index in window_of if index >= 0}
    # Renumber windows to those still scorable, so counts are per series.
    return RowWeights(weights=weights, window=window_of, windows_scored=len(scored))


@dataclass(frozen=True)
class Outcome:
    """A detector's result on a corpus at one threshold, for one profile."""

    profile: str
    threshold: float
    raw: float
    null: float
    perfect: float
    true_positives: int  # windows detected
    false_negatives: int  # windows missed
    false_positives: int  # detections outside every window

    @property
    def normalised(self) -> float:
        return 100.0 * (self.raw - self.null) / (self.perfect - self.null)

    # Window-based precision and recall: a window counts once when any row in it is detected;
    # each detected row outside every window is a false alarm.
    @property
    def precision(self) -> float:
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else 0.0

    @property
    def recall(self) -> float:
        windows = self.true_positives + self.false_negatives
        return self.true_positives / windows if windows else 0.0

    @property
    def f1(self) -> float:
        both = self.precision + self.recall
        return 2 * self.precision * self.recall / both if both else 0.0


@dataclass(frozen=True)
class _Prepared:
    scores: np.ndarray  # every scorable row of the corpus
    weights: np.ndarray
    window: np.ndarray  # corpus-wide window number, OUTSIDE for false-positive rows
    windows_scored: int
    windows_labelled: int


def _prepare(corpus: list[Series], profile: Profile, probation_percent: float) -> _Prepared:
    scores, weights, windows = [], [], []
    offset, scored, labelled = 0, 0, 0
    for series in corpus:
        rows = row_weights(series, profile, probation_percent)
        keep = rows.window != PROBATIONARY
        window = rows.window[keep]
        scores.append(series.scores[keep])
        weights.append(rows.weights[keep])
        windows.append(np.where(window >= 0, window + offset, OUTSIDE))
        offset += len(series.windows)
        scored += rows.windows_scored
        labelled += len(series.windows)
    return _Prepared(
        scores=np.concatenate(scores) if scores else np.empty(0),
        weights=np.concatenate(weights) if weights else np.empty(0),
        window=np.concatenate(windows) if windows else np.empty(0, dtype=np.int64),
        windows_scored=scored,
        windows_labelled=labelled,
    )


def _baselines(prepared: _Prepared, profile: Profile) -> tuple[float, float]:
    null = -profile.fn_weight * prepared.windows_scored
    perfect = profile.tp_weight * prepared.windows_labelled
    return null, perfect


def score(corpus: list[Series], profile: Profile, threshold: float, probation_percent: float = PROBATION_PERCENT) -> Outcome:
    """The corpus' NAB score when rows scoring at or above `threshold` are detections."""
    prepared = _prepare(corpus, profile, probation_percent)
    detected = np.nan_to_num(prepared.scores, nan=-np.inf) >= threshold
    outside = detected & (prepared.window == OUTSIDE)
    best: dict[int, float] = {}
    for window, weight in zip(prepared.window[detected & ~outside], prepared.weights[detected & ~outside]):
        best[int(window)] = max(best.get(int(window), -np.inf), float(weight))
    null, perfect = _baselines(prepared, profile)
    raw = float(prepared.weights[outside].sum()) + sum(best.values()) - profile.fn_weight * (prepared.windows_scored - len(best))
    return Outcome(profile.name, threshold, raw, null, perfect, len(best), prepared.windows_scored - len(best), int(outside.sum()))


def score_detections(series: Series, rows: RowWeights, detected: np.ndarray, profile: Profile) -> tuple[float, float, float]:
    """One series' raw, null and perfect NAB score for a detection mask over its rows, from its
    precomputed row weights (row_weights(series, profile)): what `score` gives for that series, without recomputing the weights
    (they depend on the windows only). Raw, null and perfect add up over series."""
    keep = rows.window != PROBATIONARY
    detected = np.asarray(detected, dtype=bool) & keep
    outside = detected & (rows.window == OUTSIDE)
    inside = detected & (rows.window >= 0)
    best = {}
    for window, weight in zip(rows.window[inside], rows.weights[inside]):
        best[int(window)] = max(best.get(int(window), -np.inf), float(weight))
    raw = float(rows.weights[outside].sum()) + sum(best.values()) - profile.fn_weight * (rows.windows_scored - len(best))
    return raw, -profile.fn_weight * rows.windows_scored, profile.tp_weight * len(series.windows)


def optimise(corpus: list[Series], profile: Profile, probation_percent: float = PROBATION_PERCENT) -> Outcome:
    """The best corpus-wide threshold for a profile, found by sweeping every distinct score.

    Lowering the threshold past each score in turn (highest first), the total changes by the row's
    false-alarm weight when it is outside every window, and inside one by how much it raises that
    window's best detection (from the miss, -fnWeight). Those steps are summed with numpy; a
    threshold is realisable only after the last row of a run of equal scores, and the first
    realisable threshold reaching the best total (within 1e-12) is chosen."""
    prepared = _prepare(corpus, profile, probation_percent)
    null, perfect = _baselines(prepared, profile)
    finite = ~np.isnan(prepared.scores)
    order = np.argsort(-prepared.scores[finite], kind="stable")
    scores = prepared.scores[finite][order]
    weights = prepared.weights[finite][order]
    windows = prepared.window[finite][order]
    # Start above every score: no detection at all, the null detector's score.
    nothing = Outcome(profile.name, math.inf, null, null, perfect, 0, prepared.windows_scored, 0)
    if len(scores) == 0:
        return nothing
    outside = windows == OUTSIDE
    steps = np.where(outside, weights, 0.0)
    first_in_window = np.zeros(len(scores), dtype=bool)
    for window in np.unique(windows[~outside]):
        rows = np.flatnonzero(windows == window)
        best_so_far = np.maximum.accumulate(np.maximum(weights[rows], -profile.fn_weight))
        steps[rows] = np.diff(best_so_far, prepend=-profile.fn_weight)
        first_in_window[rows[0]] = True
    totals = null + np.cumsum(steps)
    realisable = np.r_[scores[1:] != scores[:-1], True]
    candidates = np.flatnonzero(realisable)
    best_total = totals[candidates].max()
    if not best_total > null + 1e-12:
        return nothing
    index = int(candidates[np.argmax(totals[candidates] >= best_total - 1e-12)])
    detected = int(first_in_window[: index + 1].sum())
    return Outcome(profile.name, float(scores[index]), float(totals[index]), null, perfect, detected, prepared.windows_scored - detected,
                   int(outside[: index + 1].sum()))


# Published NAB v1 standard-profile scores on the whole corpus (58 series), from NAB's scoreboard
# (../shared/data/README.md). This project's subset has 20 of those series, so a comparison is
# indicative: the same rules, not the same series.
PUBLISHED_STANDARD = {
    "Perfect": 100.0,
    "ARTime": 74.9,
    "Numenta HTM": 70.5,
    "CAD OSE": 69.9,
    "KNN CAD": 58.0,
    "Random Cut Forest": 51.7,
    "Twitter ADVec": 47.1,
    "Windowed Gaussian": 39.6,
    "Random": 11.0,
    "Null": 0.0,
}
