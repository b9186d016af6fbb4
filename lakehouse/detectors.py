"""PyOD detectors: build from a declaration, fit, score with the fitted threshold, (de)serialise."""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from importlib import import_module
from typing import Any

import numpy as np
import pandas as pd

from lakehouse.likelihood import relative_score
from schemas.declaration import DetectorSpec

# Detector name in schemas/*.yaml -> PyOD class.
DETECTORS = {
    "iforest": "pyod.models.iforest:IForest",
    "hbos": "pyod.models.hbos:HBOS",
    "knn": "pyod.models.knn:KNN",
    "lof": "pyod.models.lof:LOF",
    "ensemble": "lakehouse.ensemble:Ensemble",
    "context": "lakehouse.context_detector:ContextNearestNeighbour",
}
SCALERS = {"robust": "sklearn.preprocessing:RobustScaler", "standard": "sklearn.preprocessing:StandardScaler"}


def build(spec: DetectorSpec) -> Any:
    module_name, class_name = DETECTORS[spec.name].split(":")
    detector_class = getattr(import_module(module_name), class_name)
    return detector_class(contamination=spec.contamination, **spec.params)


@dataclass
class FittedModel:
    """A fitted detector and what scoring needs from it; the artifact stored in the registry.

    Scoring one row gives the same score as scoring it among many: detectors whose scores depend
    on the other rows scored with them (PyOD's ECOD and COPOD re-fit on train + new rows) would
    break batch/speed parity, so they are not offered.
    """

    detector: Any
    threshold: float
    feature_names: list[str]
    scaler: Any = None
    # The event ids of the rows the detector was fitted on and their training scores (PyOD's
    # decision_scores_, on which the threshold was set). Scoring a training row afresh counts the
    # row as its own neighbour (KNN, LOF: with one neighbour every training row scores 0), so
    # rows given with their ids that are in this set take their training (leave-one-out) score.
    training_ids: np.ndarray | None = None
    training_scores: np.ndarray | None = None
    # Where the relative scale puts 0 and 1 (`relative`); None in artifacts of older versions.
    train_score_mean: float | None = None
    contamination_threshold: float | None = None

    def score(self, features: np.ndarray, event_ids: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Outlier scores (higher is more anomalous) and the anomaly flags (score > threshold).

        With `event_ids`, rows the model was trained on get their training score (see above).
        """
        if len(features) == 0:
            return np.empty(0), np.empty(0, dtype=bool)
        nearest = self._nearest()
        if nearest is not None and len(features) * nearest.terms_per_row <= _FEW_TERMS:
            scores = nearest(_transform(self.scaler, np.asarray(features, dtype=np.float64)))
        else:
            if self.scaler is not None:
                features = self.scaler.transform(features)
            scores = np.asarray(self.detector.decision_function(features), dtype=np.float64)
        training_ids = getattr(self, "training_ids", None)  # absent from artifacts of older versions
        if event_ids is not None and training_ids is not None:
            position = pd.Index(training_ids).get_indexer(np.asarray(event_ids, dtype=object))
            seen = position >= 0
            scores[seen] = self.training_scores[position[seen]]
        return scores, scores > self.threshold

    def relative(self, scores: np.ndarray) -> np.ndarray:
        """Scores on the relative scale (lakehouse/likelihood.relative_score: 0 at the mean
        training score, 1 at the contamination threshold), the scale the surprise is computed on."""
        # Models fitted before these attributes were kept carry the same in their PyOD detector.
        mean = self.train_score_mean
        if mean is None:
            mean = float(np.mean(self.detector.decision_scores_))
        threshold = self.contamination_threshold
        if threshold is None:
            threshold = float(self.detector.threshold_)
        return relative_score(scores, threshold, mean)

    def _nearest(self):
        # Built on first use and kept with the model, not in its artifact (see __getstate__).
        if "_nearest_path" not in self.__dict__:
            self.__dict__["_nearest_path"] = _exact_knn_path(self.detector)
        return self.__dict__["_nearest_path"]

    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "_nearest_path"}

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        pickle.dump(self, buffer, protocol=pickle.HIGHEST_PROTOCOL)
        return buffer.getvalue()

    @staticmethod
    def from_bytes(payload: bytes) -> "FittedModel":
        # Artifacts come only from this project's own registry in the warehouse.
        model = pickle.loads(payload)  # noqa: S301
        if not isinstance(model, FittedModel):
            raise TypeError(f"artifact holds {type(model).__name__}, not a FittedModel")
        return model


# Up to this many squared differences (rows x training rows x features, 16 MB), a KNN model scores
# in plain numpy (below); more go through PyOD. The speed layer scores an entity's few new events
# at a time, where sklearn's input checks and tree query set-up cost 10 times the arithmetic
# (docs/benchmarks.md, speed). The batch layer's large calls keep the tree; both give the same
# bits, so the layers agree either way.
_FEW_TERMS = 2_000_000


def _exact_knn_path(detector: Any):
    """A function scoring scaled rows as PyOD's KNN does, bit for bit, or None where that cannot
    be promised: sklearn's KD and ball trees sum squared differences feature by feature in order
    and take the square root, which the loop below repeats; its brute-force search (many
    dimensions, or neighbours near half the training rows) uses another formula."""
    if not _exact_knn_possible(detector):
        return None
    neighbours = detector.neigh_
    # Feature-major, so each feature's squared differences are one contiguous (rows x training) plane.
    training = np.ascontiguousarray(neighbours._fit_X.T)
    k = detector.n_neighbors

    def score(rows: np.ndarray) -> np.ndarray:
        squares = rows.T[:, :, np.newaxis] - training[:, np.newaxis, :]
        squares *= squares
        # Summed feature by feature in order, as the trees do (np.sum would pair them up); the
        # first plane as is, as 0.0 + a is a for the non-negative squares.
        total = squares[0].copy()
        for plane in squares[1:]:
            total += plane
        nearest = np.sort(np.partition(total, k - 1, axis=1)[:, :k], axis=1)
        return np.asarray(detector._get_dist_by_method(np.sqrt(nearest)), dtype=np.float64).ravel()

    score.terms_per_row = training.size
    return score


def _exact_knn_possible(detector: Any) -> bool:
    neighbours = getattr(detector, "neigh_", None)
    if type(detector).__name__ != "KNN" or neighbours is None or getattr(neighbours, "_fit_method", None) not in ("kd_tree", "ball_tree"):
        return False
    return getattr(neighbours, "effective_metric_", None) == "euclidean"


def _transform(scaler: Any, rows: np.ndarray) -> np.ndarray:
    """scaler.transform(rows) without sklearn's per-call checks, the same arithmetic."""
    if not _scaling_known(scaler):
        return scaler.transform(rows)
    center, scale = _scaling(scaler)
    if center is not None:
        rows = rows - center
    return rows / scale if scale is not None else rows


def fit(
    spec: DetectorSpec, features: np.ndarray, feature_names: list[str], event_ids: Any = None
) -> tuple[FittedModel, dict[str, float]]:
    """Fit a detector on training features; return the model and its training metrics.

    `event_ids` (one per row, unique) keeps the training scores for the rows' later in-sample scoring.
    """
    scaler = None
    if spec.scale != "none":
        module_name, class_name = SCALERS[spec.scale].split(":")
        scaler = getattr(import_module(module_name), class_name)().fit(features)
        features = scaler.transform(features)
    detector = build(spec)
    detector.fit(features)
    training_scores = np.asarray(detector.decision_scores_, dtype=np.float64)
    mean = float(np.mean(training_scores))
    contamination_threshold = float(detector.threshold_)
    threshold = contamination_threshold
    if spec.threshold_scale != 1.0:
        threshold = mean + spec.threshold_scale * (contamination_threshold - mean)
    metrics = {
        "train_rows": float(len(features)),
        "threshold": threshold,
        "contamination_threshold": contamination_threshold,
        "threshold_scale": float(spec.threshold_scale),
        "train_anomaly_rate": float(np.mean(training_scores > threshold)),
        "train_score_mean": mean,
        "train_score_std": float(np.std(training_scores)),
    }
    model = FittedModel(detector=detector, threshold=threshold, feature_names=feature_names, scaler=scaler,
                        train_score_mean=mean, contamination_threshold=contamination_threshold)
    if event_ids is not None:
        model.training_ids = np.asarray(event_ids, dtype=object)
        model.training_scores = training_scores
    return model, metrics


class NearestBank:
    """Many entities' exact KNN models scored in one numpy pass, the same bits as each model's
    `score` (without event ids).

    The speed layer scores a batch of events of many entities, one or two events each. Called
    model by model, each call's set-up (the scaler, the broadcast, the partition, PyOD's distance
    method) costs far more than its arithmetic: scoring was about 36% of the stack samples of the
    latency run (docs/benchmarks.md). Here the models' training points are stacked into one array
    (padded with +inf, which sorts after every real distance: each model has at least k points),
    rows pick their model's plane, and the steps of `_exact_knn_path` run once over all rows:
    elementwise arithmetic and the feature-by-feature sum in the same order give the same bits.

    Holds the models that qualify (`eligible`): an exact KNN path, one k, distance method and
    feature count, a robust or standard scaler or none. The others are scored one by one."""

    # Rows scored per pass: bounds the (rows x features x training points) array (about 16 MB).
    CHUNK_TERMS = 2_000_000

    def __init__(self, models: list[FittedModel]) -> None:
        first = models[0].detector
        self.k, self.method = first.n_neighbors, first.method
        self.distance = first._get_dist_by_method
        planes = [np.ascontiguousarray(model.detector.neigh_._fit_X.T) for model in models]
        features = planes[0].shape[0]
        self.training = np.full((len(models), features, max(plane.shape[1] for plane in planes)), np.inf)
        for index, plane in enumerate(planes):
            self.training[index, :, : plane.shape[1]] = plane
        self.center = np.zeros((len(models), features))
        self.scale = np.ones((len(models), features))
        for index, model in enumerate(models):
            center, scale = _scaling(model.scaler)
            if center is not None:
                self.center[index] = center
            if scale is not None:
                self.scale[index] = scale
        self.thresholds = np.array([model.threshold for model in models], dtype=np.float64)

    @staticmethod
    def eligible(models: list[FittedModel]) -> list[FittedModel]:
        """The models one bank can hold: those like the first model that qualifies."""
        qualified = [model for model in models if _exact_knn_possible(model.detector) and _scaling_known(model.scaler)]
        if not qualified:
            return []
        first = qualified[0].detector
        shape = (first.n_neighbors, first.method, first.neigh_._fit_X.shape[1])
        return [model for model in qualified
                if (model.detector.n_neighbors, model.detector.method, model.detector.neigh_._fit_X.shape[1]) == shape]

    def score(self, which: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and flags of `rows`, row i by model number `which[i]` of the bank."""
        which = np.asarray(which, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.float64)
        scores = np.empty(len(rows))
        step = max(1, self.CHUNK_TERMS // max(1, self.training[0].size))
        for start in range(0, len(rows), step):
            part = which[start : start + step]
            # (x - 0) / 1 is x, bit for bit: a model without centring or scaling takes 0 and 1.
            scaled = (rows[start : start + step] - self.center[part]) / self.scale[part]
            squares = scaled[:, :, np.newaxis] - self.training[part]
            squares *= squares
            total = squares[:, 0].copy()
            for feature in range(1, squares.shape[1]):
                total += squares[:, feature]
            nearest = np.sort(np.partition(total, self.k - 1, axis=1)[:, : self.k], axis=1)
            scores[start : start + step] = np.asarray(self.distance(np.sqrt(nearest)), dtype=np.float64).ravel()
        return scores, scores > self.thresholds[which]


def _scaling_known(scaler: Any) -> bool:
    return scaler is None or type(scaler).__name__ in ("RobustScaler", "StandardScaler")


def _scaling(scaler: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(center, scale) as _transform applies them (None: that step is skipped)."""
    kind = type(scaler).__name__
    if scaler is None:
        return None, None
    if kind == "RobustScaler":
        return (scaler.center_ if scaler.with_centering else None), (scaler.scale_ if scaler.with_scaling else None)
    if kind == "StandardScaler":
        return (scaler.mean_ if scaler.with_mean else None), (scaler.scale_ if scaler.with_std else None)
    raise ValueError(f"{kind}: not a scaler NearestBank knows")
