"""An ensemble of PyOD detectors: each member's score standardised against its own training
scores, then the most alarmed member decides (or the members are averaged).

Members disagree in scale (a KNN distance, an IForest path length, an HBOS log-density), so raw
scores cannot be combined. Each member's score becomes a z-score against the mean and standard
deviation of its training scores, both fixed at fit time: a row's ensemble score never depends on
the other rows scored with it, which keeps batch and speed identical.

Design, measured on the six ODDS tables (PyOD's protocol, 10 random 60/40 splits with seeds 0-9;
mean over the tables of ROC-AUC / best published IForest-or-HBOS figure of the table; the default
then scored 1.034 on python -m quality.odds's own splits, seeds 42-51, min 0.983 on wbc):

    members                combine  z-score (mean/std)  robust (median/IQR)
    iforest + hbos + knn   max      1.039 (min 0.992)    1.039 (min 0.985)
    iforest + hbos + knn   mean     1.016                1.016
    + lof                  max      1.034                1.021
    + lof                  mean     1.018                1.010
    iforest + hbos         max      0.992                0.993

- max beats mean on every member set tried with z-scores: the members see different outliers (KNN the local ones,
  vowels 0.97 vs IForest 0.78; IForest and HBOS the global ones, cardio and shuttle where KNN is
  at 0.65-0.72). Averaging dilutes the member that sees an outlier; max lets it decide.
- The standard deviation rather than the IQR: under max a member whose training scores are
  bunched (KNN on shuttle, with its many duplicate rows: IQR near 0) would have its tail blown up
  and drown the others (shuttle 0.989 with IQR, 0.996 with std); the std includes that tail.
- LOF lowers the figure (1.034 against 1.039) and doubles the cost (shuttle: 7 s a split), so
  it is not a default member.
- On NAB's walk-forward (quality.benchmark, the metrics dataset) going from the mean of IQR-scaled
  scores to this max of z-scores moved the standard score 47.3 -> 49.0, low-FP 36.5 -> 41.3.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

import numpy as np

DEFAULT_MEMBERS = ("iforest", "hbos", "knn")
COMBINATIONS = ("max", "mean")
# A member whose training scores are all equal contributes 0 instead of dividing by zero.
_MIN_SPREAD = 1e-12


class Ensemble:
    """Duck-types the PyOD interface the project uses: fit, decision_function, threshold_ and
    decision_scores_. `combine` is "max" (the default: the most alarmed member decides) or "mean";
    `member_params` gives a member its parameters, e.g. {"knn": {"n_neighbors": 10}}."""

    def __init__(self, contamination: float = 0.1, members: list[str] | tuple[str, ...] = DEFAULT_MEMBERS,
                 combine: str = "max", member_params: dict[str, dict[str, Any]] | None = None,
                 random_state: int = 0) -> None:
        if combine not in COMBINATIONS:
            raise ValueError(f"ensemble combine must be max or mean, not {combine!r}")
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.contamination = contamination
        self.members = tuple(members)
        self.combine = combine
        self.member_params = dict(member_params or {})
        self.random_state = random_state

    def _member(self, name: str) -> Any:
        from lakehouse.detectors import DETECTORS

        if name not in DETECTORS or name == "ensemble":
            raise ValueError(f"unknown ensemble member {name!r}; choose from {sorted(set(DETECTORS) - {'ensemble'})}")
        module_name, class_name = DETECTORS[name].split(":")
        detector_class = getattr(import_module(module_name), class_name)
        params = dict(self.member_params.get(name, {}))
        if name == "iforest":  # the only randomised member: fixed seed, reproducible models
            params.setdefault("random_state", self.random_state)
        return detector_class(contamination=self.contamination, **params)

    def fit(self, features: np.ndarray, y: Any = None) -> "Ensemble":
        self.detectors_, self.centers_, self.spreads_ = [], [], []
        for name in self.members:
            detector = self._member(name).fit(features)
            training = np.asarray(detector.decision_scores_, dtype=np.float64)
            self.detectors_.append(detector)
            self.centers_.append(float(np.mean(training)))
            self.spreads_.append(max(float(np.std(training)), _MIN_SPREAD))
        self.decision_scores_ = self._combine([np.asarray(d.decision_scores_, dtype=np.float64) for d in self.detectors_])
        # As PyOD: the training rows above the threshold are the declared contamination.
        self.threshold_ = float(np.quantile(self.decision_scores_, 1.0 - self.contamination))
        return self

    def _combine(self, member_scores: list[np.ndarray]) -> np.ndarray:
        standardised = np.vstack(
            [(scores - center) / spread for scores, center, spread in zip(member_scores, self.centers_, self.spreads_)]
        )
        return standardised.max(axis=0) if self.combine == "max" else standardised.mean(axis=0)

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        return self._combine([np.asarray(detector.decision_function(features), dtype=np.float64) for detector in self.detectors_])
