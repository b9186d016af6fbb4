"""PyOD detectors: build from a declaration, fit, score with the fitted threshold, (de)serialise."""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Iterator

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

    def numpy_form(self) -> "NeighbourForm | None":
        """The model as a NeighbourForm (scored in numpy alone, the same bits), or None for the
        detectors that have none (trees, histograms, LOF, ensembles, a brute-force KNN)."""
        if "_numpy_form" not in self.__dict__:
            self.__dict__["_numpy_form"] = _neighbour_form(self)
        return self.__dict__["_numpy_form"]

    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key not in _DERIVED}

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


# What a FittedModel derives and keeps on first use, never in its artifact.
_DERIVED = ("_nearest_path", "_numpy_form")


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
        return _knn_scores(iter(squares), k, detector.method)

    score.terms_per_row = training.size
    return score


def _knn_scores(planes: Iterator[np.ndarray], k: int, method: str) -> np.ndarray:
    """Scores from each feature's (rows x training points) plane of squared differences: the
    planes summed feature by feature in order, as sklearn's trees do (np.sum would pair them up;
    the first plane as is, as 0.0 + a is a for the non-negative squares), the k smallest sums in
    order, their square roots, and PyOD's `method` over them."""
    total = next(planes).copy()
    for plane in planes:
        total += plane
    nearest = np.sort(np.partition(total, k - 1, axis=1)[:, :k], axis=1)
    return np.asarray(_distance_by_method(method, np.sqrt(nearest)), dtype=np.float64).ravel()


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


@dataclass(eq=False)
class NeighbourForm:
    """A nearest-neighbour model reduced to the arrays its scores are computed from, scored in
    numpy alone: the registry keeps one beside each pickled FittedModel that has one (one file a
    version, lakehouse/registry.py), and the speed layer scores with it without importing PyOD,
    sklearn or numba (about 2.5 s of a replay's start-up) or unpickling one model per entity.

    Its scores are the bits of the FittedModel it was taken from, scored without event ids (the
    speed layer never passes them): the steps below are the arithmetic of the scaler, of the
    context detector's own scaling and of sklearn's KD and ball trees, in the same order
    (tests/test_detectors.py). Rows are
      (rows - center) / scale                     the model's scaler (0 and 1 without one),
      (rows[:, columns] - inner_center) / inner_scale * weight   the context detector only
                                                  (lakehouse/context_detector.py, its RobustScaler
                                                  and level weight),
    then the Euclidean distances to the `training` points (feature-major), the k nearest, and
    PyOD's `method` over them (largest, mean, median; the context detector's is the mean)."""

    feature_names: list[str]
    k: int
    method: str
    training: np.ndarray  # (width, training points)
    center: np.ndarray  # (features,)
    scale: np.ndarray
    threshold: float
    train_score_mean: float
    contamination_threshold: float
    columns: np.ndarray | None = None  # (width,) positions in the feature row
    inner_center: np.ndarray | None = None  # (width,)
    inner_scale: np.ndarray | None = None
    weight: np.ndarray | None = None

    @property
    def context(self) -> bool:
        return self.columns is not None

    @property
    def features(self) -> int:
        return len(self.center)

    def score(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Outlier scores and anomaly flags (score > threshold), as FittedModel.score without
        event ids. The steps of NearestBank.score with one training plane broadcast to every row
        (a bank would copy the plane per row: 7 times slower for 100 rows)."""
        rows = np.asarray(features, dtype=np.float64)
        scores = np.empty(len(rows))
        step = max(1, NearestBank.CHUNK_TERMS // max(1, self.training.size))
        for start in range(0, len(rows), step):
            scaled = (rows[start : start + step] - self.center) / self.scale
            if self.context:
                scaled = (scaled[:, self.columns] - self.inner_center) / self.inner_scale
                scaled *= self.weight
            squares = scaled.T[:, :, np.newaxis] - self.training[:, np.newaxis, :]
            squares *= squares
            scores[start : start + step] = _knn_scores(iter(squares), self.k, self.method)
        return scores, scores > self.threshold

    def relative(self, scores: np.ndarray) -> np.ndarray:
        """As FittedModel.relative."""
        return relative_score(scores, self.contamination_threshold, self.train_score_mean)


def neighbour_form(model: "FittedModel | NeighbourForm") -> NeighbourForm | None:
    return model if isinstance(model, NeighbourForm) else model.numpy_form()


def _neighbour_form(model: FittedModel) -> NeighbourForm | None:
    detector = model.detector
    if not _scaling_known(model.scaler):
        return None
    if _exact_knn_possible(detector):
        fitted = detector.neigh_._fit_X
        k, method, columns = detector.n_neighbors, detector.method, None
        inner_center = inner_scale = weight = None
    elif _exact_context_possible(detector):
        fitted = detector.index_._fit_X
        k, method = detector.n_neighbors, "mean"  # its decision_function: distances.mean(axis=1)
        summary_width = 4 * detector.fields  # context_detector.SUMMARY_COLUMNS, not imported: it imports sklearn
        lag_width = (detector.context - 1) * detector.fields
        inner_center, inner_scale = _scaling(detector.scaler_)
        width = fitted.shape[1]
        inner_center = np.zeros(width) if inner_center is None else np.asarray(inner_center, dtype=np.float64)
        inner_scale = np.ones(width) if inner_scale is None else np.asarray(inner_scale, dtype=np.float64)
        weight = np.ones(width)
        # The same float64 factor _scaled multiplies the sub-sequence by (x * 1.0 is x).
        weight[summary_width:] = detector.level_weight / np.sqrt(detector.context)
        columns = None  # set below, once the feature row's width is known
    else:
        return None
    training = np.ascontiguousarray(fitted.T, dtype=np.float64)
    # The feature row's width: what the KNN was fitted on; the context detector picks from the
    # row the dataset's features give it.
    features = len(model.feature_names) if inner_center is not None else training.shape[0]
    center, scale = _scaling(model.scaler)
    center = np.zeros(features) if center is None else np.asarray(center, dtype=np.float64)
    scale = np.ones(features) if scale is None else np.asarray(scale, dtype=np.float64)
    if center.shape != (features,) or scale.shape != (features,):
        return None
    if inner_center is not None:
        # ContextNearestNeighbour._contexts: the summary columns, the lags (the last columns of
        # the row, oldest first) and each field's value (the first of its summary columns).
        summary = np.arange(summary_width)
        lags = np.arange(features - lag_width, features)
        columns = np.concatenate([summary, lags, summary[::4]]).astype(np.int64)
        if len(columns) != training.shape[0] or lag_width > features - summary_width:
            return None
    mean = model.train_score_mean
    if mean is None:  # artifacts of older versions: as FittedModel.relative
        mean = float(np.mean(detector.decision_scores_))
    contamination_threshold = model.contamination_threshold
    if contamination_threshold is None:
        contamination_threshold = float(detector.threshold_)
    return NeighbourForm(
        feature_names=list(model.feature_names), k=int(k), method=str(method), training=training, center=center,
        scale=scale, threshold=float(model.threshold), train_score_mean=float(mean),
        contamination_threshold=float(contamination_threshold), columns=columns, inner_center=inner_center,
        inner_scale=inner_scale, weight=weight,
    )


def _exact_context_possible(detector: Any) -> bool:
    index = getattr(detector, "index_", None)
    if type(detector).__name__ != "ContextNearestNeighbour" or index is None:
        return False
    if getattr(index, "_fit_method", None) not in ("kd_tree", "ball_tree") or getattr(index, "effective_metric_", None) != "euclidean":
        return False
    return type(getattr(detector, "scaler_", None)).__name__ == "RobustScaler"


def _distance_by_method(method: str, distances: np.ndarray) -> np.ndarray:
    """PyOD's KNN._get_dist_by_method (pyod/models/knn.py), the same numpy calls: the speed layer
    scores without a PyOD object at hand."""
    if method == "largest":
        return distances[:, -1]
    if method == "mean":
        return np.mean(distances, axis=1)
    if method == "median":
        return np.median(distances, axis=1)
    raise ValueError(f"unknown KNN method {method!r}")


class NearestBank:
    """Many entities' nearest-neighbour models scored in one numpy pass, the same bits as each
    model's `score` (without event ids).

    The speed layer scores a batch of events of many entities, one or two events each. Called
    model by model, each call's set-up (the scaler, the broadcast, the partition, PyOD's distance
    method) costs far more than its arithmetic: scoring was about 36% of the stack samples of the
    latency run (docs/benchmarks.md). Here the models' training points are stacked into one array
    (padded with +inf, which sorts after every real distance: each model has at least k points),
    rows pick their model's plane, and the steps of NeighbourForm run once over all rows:
    elementwise arithmetic and the feature-by-feature sum in the same order give the same bits.

    Holds FittedModels with a numpy form and NeighbourForms (`eligible`) of one k, distance method,
    feature count and width, all context detectors or none. The others are scored one by one."""

    # Rows scored per pass: bounds the (rows x features x training points) array (about 16 MB).
    CHUNK_TERMS = 2_000_000

    def __init__(self, models: list["FittedModel | NeighbourForm"]) -> None:
        forms = [neighbour_form(model) for model in models]
        first = forms[0]
        self.k, self.method, self.context = first.k, first.method, first.context
        width = first.training.shape[0]
        self.training = np.full((len(forms), width, max(form.training.shape[1] for form in forms)), np.inf)
        for index, form in enumerate(forms):
            self.training[index, :, : form.training.shape[1]] = form.training
        self.center = np.stack([form.center for form in forms])
        self.scale = np.stack([form.scale for form in forms])
        if self.context:
            self.columns = np.stack([form.columns for form in forms])
            self.inner_center = np.stack([form.inner_center for form in forms])
            self.inner_scale = np.stack([form.inner_scale for form in forms])
            self.weight = np.stack([form.weight for form in forms])
        self.thresholds = np.array([form.threshold for form in forms], dtype=np.float64)

    @staticmethod
    def eligible(models: list["FittedModel | NeighbourForm"]) -> list["FittedModel | NeighbourForm"]:
        """The models one bank can hold: those like the first model that qualifies."""
        shapes = [_bank_shape(neighbour_form(model)) for model in models]
        first = next((shape for shape in shapes if shape is not None), None)
        return [] if first is None else [model for model, shape in zip(models, shapes) if shape == first]

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
            if self.context:
                scaled = np.take_along_axis(scaled, self.columns[part], axis=1)
                scaled = (scaled - self.inner_center[part]) / self.inner_scale[part]
                scaled *= self.weight[part]
            squares = scaled[:, :, np.newaxis] - self.training[part]
            squares *= squares
            scores[start : start + step] = _knn_scores((squares[:, feature] for feature in range(squares.shape[1])), self.k, self.method)
        return scores, scores > self.thresholds[which]


def _bank_shape(form: NeighbourForm | None) -> tuple | None:
    if form is None:
        return None
    return form.k, form.method, form.features, form.training.shape[0], form.context


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
