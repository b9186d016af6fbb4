"""Training: fit one PyOD detector per entity (or one per dataset) on silver history."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from lakehouse import detectors, registry, system_tables
from lakehouse.features import feature_names
from lakehouse.settings import Settings
from schemas.declaration import Dataset

log = logging.getLogger(__name__)

_RESULT_SCHEMA = T.StructType(
    [
        T.StructField("entity_id", T.StringType()),
        T.StructField("artifact", T.BinaryType()),
        # The model's numpy form (registry.pack_forms of it alone), null for detectors without one.
        T.StructField("numpy_form", T.BinaryType()),
        T.StructField("train_rows", T.LongType()),
        T.StructField("train_start", T.TimestampType()),
        T.StructField("train_end", T.TimestampType()),
        T.StructField("metrics", T.MapType(T.StringType(), T.DoubleType())),
    ]
)


@dataclass(frozen=True)
class TrainingResult:
    version: int | None  # None when no entity had enough history for a model
    trained_entities: int
    skipped_entities: list[str]


def _fit_frame(dataset: Dataset, frame: pd.DataFrame, entity_id: str) -> pd.DataFrame:
    names = feature_names(dataset)
    spec = dataset.detector.for_entity(entity_id)
    if len(frame) < spec.min_train_rows:
        return pd.DataFrame(
            [{"entity_id": entity_id, "artifact": None, "numpy_form": None, "train_rows": len(frame), "train_start": None,
              "train_end": None, "metrics": None}]
        )
    model, metrics = detectors.fit(spec, frame[names].to_numpy(dtype=np.float64), names, frame[dataset.event_id].to_numpy())
    times = frame[dataset.event_time]
    form = model.numpy_form()
    return pd.DataFrame(
        [
            {
                "entity_id": entity_id,
                "artifact": model.to_bytes(),
                # Derived here, where the model is fitted, so the driver unpickles no model.
                "numpy_form": registry.pack_forms({entity_id: ("", form)}) if form is not None else None,
                "train_rows": len(frame),
                "train_start": times.min(),
                "train_end": times.max(),
                "metrics": metrics,
            }
        ]
    )


def train(features: DataFrame, dataset: Dataset, settings: Settings, run_id: str) -> TrainingResult:
    """Fit detectors on the feature rows, store their artifacts and register them as a new version."""
    if dataset.detector.per == "entity":
        results = (
            features.groupBy(dataset.entity)
            .applyInPandas(lambda frame: _fit_frame(dataset, frame, str(frame[dataset.entity].iloc[0])), schema=_RESULT_SCHEMA)
            .toPandas()
        )
    else:
        # One model for the whole dataset: the feature rows fit in the driver for the data sizes
        # this mode is meant for (a dataset of few, similar entities).
        results = _fit_frame(dataset, features.toPandas(), system_tables.DATASET_WIDE_ENTITY)
    version = registry.next_version(settings, dataset.name)
    created_at = registry.now_utc()
    rows, skipped, forms = [], [], {}
    for result in results.itertuples():
        if result.artifact is None:
            skipped.append(result.entity_id)
            continue
        uri = registry.save_artifact(settings, dataset.name, version, result.entity_id, bytes(result.artifact))
        if result.numpy_form is not None:
            forms[result.entity_id] = (uri, registry.unpack_forms(bytes(result.numpy_form))[result.entity_id][1])
        spec = dataset.detector.for_entity(result.entity_id)
        rows.append(
            {
                "dataset": dataset.name,
                "entity_id": result.entity_id,
                "version": version,
                "detector": spec.name,
                "params": spec.params,
                "contamination": spec.contamination,
                "threshold": result.metrics["threshold"],
                "feature_names": feature_names(dataset),
                "train_start": _utc(result.train_start),
                "train_end": _utc(result.train_end),
                "train_rows": int(result.train_rows),
                "metrics": dict(result.metrics),
                "artifact_uri": uri,
                "run_id": run_id,
                "created_at": created_at,
            }
        )
    if skipped:
        log.warning(
            "%s: %d entities have fewer than %d rows and got no model: %s",
            dataset.name, len(skipped), dataset.detector.min_train_rows, ", ".join(sorted(skipped)[:10]),
        )
    # One file of the version's numpy forms, which the speed layer loads instead of the pickles.
    registry.save_numpy_forms(settings, dataset.name, version, forms)
    registry.register(settings, rows)
    return TrainingResult(version=version if rows else None, trained_entities=len(rows), skipped_entities=sorted(skipped))


def _utc(value) -> "pd.Timestamp":
    # Spark hands timestamps to pandas as naive values in the session time zone (UTC).
    stamp = pd.Timestamp(value)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).to_pydatetime()
