"""The batch view: every silver event scored with the models of the current registry version."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from batch.tables import spark_schema
from lakehouse import likelihood, registry, storage, system_tables
from lakehouse.alerts import first_of_episodes
from lakehouse.detectors import FittedModel
from lakehouse.errors import ModelNotFoundError
from lakehouse.features import feature_names
from lakehouse.settings import Settings
from schemas.declaration import Dataset


# The likelihood state after each event (system_tables.LIKELIHOOD), as flat columns out of the
# pandas function and made one struct column in Spark.
_STATE_FIELDS = [(f"_likelihood_{field.name}", field) for field in system_tables.LIKELIHOOD.type]


def _score_schema(dataset: Dataset) -> T.StructType:
    """What scoring adds to each event id, in the batch view's types."""
    declared = system_tables.batch_scores_schema(dataset)
    state = [pa.field(name, field.type) for name, field in _STATE_FIELDS]
    return spark_schema(pa.schema([declared.field(dataset.event_id), *system_tables.SCORE_FIELDS, system_tables.IS_ALERT,
                                   system_tables.SURPRISE, *state]))


def _score_frame(dataset: Dataset, frame: pd.DataFrame, models: dict[str, tuple[int, bytes]]) -> pd.DataFrame:
    entity_id = str(frame[dataset.entity].iloc[0])
    entry = system_tables.model_for(models, entity_id)
    result = pd.DataFrame({dataset.event_id: frame[dataset.event_id].to_numpy()})
    if entry is None:
        # An entity without a model (too little history) is kept in the view, unscored.
        result["score"], result["is_anomaly"], result["model_version"], result["is_alert"] = np.nan, None, None, None
        result[system_tables.SURPRISE.name] = np.nan
        for name, _ in _STATE_FIELDS:
            result[name] = None
        return result
    version, artifact = entry
    model = FittedModel.from_bytes(artifact)
    scores, flags = model.score(frame[feature_names(dataset)].to_numpy(dtype=np.float64), frame[dataset.event_id].to_numpy())
    result["score"], result["is_anomaly"], result["model_version"] = scores, flags, version
    # The entity's whole history is here: its alerts (first alarms of episodes) in event order.
    order = np.lexsort((frame[dataset.event_id].to_numpy(), frame[dataset.event_time].to_numpy()))
    alerts = np.zeros(len(frame), dtype=bool)
    alerts[order] = first_of_episodes(np.asarray(flags, dtype=bool)[order], dataset.detector.alert_quiet_events)
    result["is_alert"] = alerts
    # The calibrated score over the same history in the same order, and the state after each
    # event, from which the speed layer steps on (lakehouse/likelihood.py).
    settings = likelihood.settings_of(dataset.detector.likelihood)
    start = likelihood.initial_state(settings, dataset.detector.for_entity(entity_id).contamination)
    folded = likelihood.fold_arrays(model.relative(scores)[order], settings, start)
    in_row_order = np.empty(len(frame), dtype=np.int64)
    in_row_order[order] = np.arange(len(frame))
    result[system_tables.SURPRISE.name] = folded.surprises[in_row_order]
    result["_likelihood_count"] = folded.count[in_row_order]
    result["_likelihood_mean"] = folded.mean[in_row_order]
    result["_likelihood_variance"] = folded.variance[in_row_order]
    result["_likelihood_peak"] = folded.peak[in_row_order]
    result["_likelihood_recent"] = [folded.recent[position] for position in in_row_order.tolist()]
    return result


def score(features: DataFrame, silver: DataFrame, dataset: Dataset, settings: Settings, run_id: str) -> DataFrame:
    """Batch-view rows: the silver event's fields plus score, is_anomaly, model_version, run_id."""
    try:
        latest = registry.latest_versions(settings, dataset.name, own_run=run_id)
    except ModelNotFoundError:
        # No entity has had enough history for a model yet: the view is written, unscored.
        latest = system_tables.MODELS_SCHEMA.empty_table().to_pandas()
    # Artifacts are small (kilobytes to a few MB per entity); ship them to the tasks in the closure.
    models = {
        row.entity_id: (int(row.version), storage.read_bytes(row.artifact_uri))
        for row in latest.itertuples()
    }
    scored = features.groupBy(dataset.entity).applyInPandas(
        lambda frame: _score_frame(dataset, frame, models), schema=_score_schema(dataset)
    )
    value_fields = [field for field in dataset.features.fields]
    state = F.when(F.col("_likelihood_count").isNotNull(),
                   F.struct(*[F.col(name).alias(field.name) for name, field in _STATE_FIELDS]))
    return (
        silver.select(dataset.event_id, dataset.entity, dataset.event_time, *value_fields)
        .join(scored.withColumn(system_tables.LIKELIHOOD.name, state).drop(*[name for name, _ in _STATE_FIELDS]),
              on=dataset.event_id, how="inner")
        .withColumn("run_id", F.lit(run_id))
        .withColumn("scored_at", F.current_timestamp())
        .withColumn("event_date", F.to_date(dataset.event_time))
    )
