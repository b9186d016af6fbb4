"""The `context` detector: contextual nearest neighbour over an event's recent sub-sequence.

An event's context is its window summary (value, change, deviation and z-score against the
previous `features.window` events: the first four feature columns of each field) next to its
recent sub-sequence, the last `context` values of each field ending with its own (the value, and
the `features.lags` columns, which come last). Its score is the mean distance to its
`n_neighbors` nearest contexts among the training events, in the spirit of KNN CAD (a sliding
window's distance to the contexts seen in training), without its conformal re-scaling: the
registry's threshold and the relative score already do that job per model.

Every column is put on a robust scale (median / IQR of the training rows, fixed at fit time), and
the sub-sequence part is weighted by `level_weight` / sqrt(context): the weight of the level
against the shape of the window, whatever the context length. Nearest neighbours are searched
with an exact tree (per-row arithmetic), so a row's score never depends on the rows scored with
it and batch and speed agree; a feature row holds only earlier events, so no score looks ahead.

Design, measured with quality.holdout's walk-forward on the 20 NAB series of ../shared/data (4
models a series; NAB standard of the alerts with threshold_scale and alert_quiet_events chosen on
all 20 (in-sample) and chosen on one half, scored on the other (held out, 20 halvings); and at
NAB's best threshold, in-sample). The defaults were chosen on those same series:

    context  level_weight  n_neighbors  alerts in-sample  alerts held out mean / min  best threshold
    1        2             1            67.5              62.7 / 52.2                 45.5
    1        1             1            66.2              60.1 / 52.1                 54.8
    1        1.5           1            67.7              61.9 / 49.7                 53.1
    1        3             1            67.5              62.4 / 51.6                 44.4
    1        2             3            62.6              55.6 / 47.7                 53.7
    8        2             1            59.3              53.6 / 44.8                 35.3
    declared KNN (for comparison)       64.9              58.7 / 49.7                 55.6

A longer sub-sequence did not help on this corpus: the window summary already carries the shape,
and every extra value adds noise to the distance. Tried in a prototype and not kept (in-sample
alerts, against 69 to 72 for the prototype with one value): the sub-sequence alone without
the summary (52 to 66 for 4 to 32 values), an online memory of the window's own earlier
sub-sequences (the smaller of the distances to training and to them, so a new level stops
alarming once it repeats: CAD OSE's online learning within the features' window; 55 to 66), a
forecasting residual (an AR model on the lags, 41; the next value of the nearest training
sub-sequence, 41 to 54). The weight on the level buys alerts (earlier, fewer repeated episodes)
at the cost of the score at its best threshold: see docs/quality.md, "Sequence-aware detection".
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import RobustScaler

# The columns lakehouse.features puts first for each field: value, diff, deviation, zscore.
SUMMARY_COLUMNS = 4


class ContextNearestNeighbour:
    """Duck-types the PyOD interface the project uses: fit, decision_function, threshold_ and
    decision_scores_.

    `fields`: how many feature fields the dataset declares (their summaries are the first
    4 x fields columns). `context`: the sub-sequence length, the event's own value and the
    previous context - 1 values of each field (needs `features.lags` >= context - 1)."""

    def __init__(self, contamination: float = 0.1, context: int = 1, level_weight: float = 2.0, n_neighbors: int = 1,
                 fields: int = 1) -> None:
        if context < 1 or n_neighbors < 1 or fields < 1:
            raise ValueError("context, n_neighbors and fields must be at least 1")
        if level_weight < 0:
            raise ValueError(f"level_weight must not be negative, got {level_weight}")
        self.contamination = contamination
        self.context = int(context)
        self.level_weight = float(level_weight)
        self.n_neighbors = int(n_neighbors)
        self.fields = int(fields)

    def _contexts(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float64)
        summary_width = SUMMARY_COLUMNS * self.fields
        lag_width = (self.context - 1) * self.fields
        if features.ndim != 2 or features.shape[1] < summary_width + lag_width:
            raise ValueError(
                f"the context detector needs {summary_width} summary columns and {lag_width} lag columns "
                f"(features.lags >= {self.context - 1}), got shape {features.shape}"
            )
        summary = features[:, :summary_width]
        values = summary[:, ::SUMMARY_COLUMNS]
        lags = features[:, features.shape[1] - lag_width :] if lag_width else np.empty((len(features), 0))
        return np.hstack([summary, lags, values])  # the sub-sequence: oldest lag first, own value last

    def _scaled(self, contexts: np.ndarray) -> np.ndarray:
        scaled = self.scaler_.transform(contexts)
        summary_width = SUMMARY_COLUMNS * self.fields
        scaled[:, summary_width:] *= self.level_weight / np.sqrt(self.context)
        return scaled

    def fit(self, features: np.ndarray, y: Any = None) -> "ContextNearestNeighbour":
        contexts = self._contexts(features)
        if len(contexts) <= self.n_neighbors:
            raise ValueError(f"the context detector needs more than {self.n_neighbors} training rows, got {len(contexts)}")
        self.scaler_ = RobustScaler().fit(contexts)
        training = self._scaled(contexts)
        # kd_tree: exact distances computed row by row (a brute-force search goes through matrix
        # products whose rounding can depend on how many rows are scored together).
        self.index_ = NearestNeighbors(n_neighbors=self.n_neighbors, algorithm="kd_tree").fit(training)
        # Training scores leave the row itself out (its own nearest neighbour at distance 0).
        distances, _ = self.index_.kneighbors(training, self.n_neighbors + 1)
        self.decision_scores_ = distances[:, 1:].mean(axis=1)
        # As PyOD: the training rows above the threshold are the declared contamination.
        self.threshold_ = float(np.quantile(self.decision_scores_, 1.0 - self.contamination))
        return self

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        distances, _ = self.index_.kneighbors(self._scaled(self._contexts(features)), self.n_neighbors)
        return distances.mean(axis=1)
