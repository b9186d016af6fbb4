"""Features for the batch layer: lakehouse.features.compute_features applied per entity in Spark."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from lakehouse.features import compute_features, feature_names
from schemas.declaration import Dataset


def features_schema(dataset: Dataset) -> T.StructType:
    return T.StructType(
        [
            T.StructField(dataset.event_id, T.StringType(), False),
            T.StructField(dataset.entity, T.StringType(), False),
            T.StructField(dataset.event_time, T.TimestampType(), False),
            *[T.StructField(name, T.DoubleType(), False) for name in feature_names(dataset)],
        ]
    )


def entity_features(dataset: Dataset, events: pd.DataFrame) -> pd.DataFrame:
    """Features of one entity's events (any order in, event-time order out; ties by event id)."""
    events = events.sort_values([dataset.event_time, dataset.event_id], kind="stable")
    values = events[dataset.features.fields].to_numpy(dtype=np.float64)
    times = events[dataset.event_time].to_numpy(dtype="datetime64[us]")
    matrix = compute_features(dataset, values, times)
    result = pd.DataFrame(matrix, columns=feature_names(dataset), index=events.index)
    result.insert(0, dataset.event_time, events[dataset.event_time])
    result.insert(0, dataset.entity, events[dataset.entity])
    result.insert(0, dataset.event_id, events[dataset.event_id])
    return result.reset_index(drop=True)


def compute(events: DataFrame, dataset: Dataset) -> DataFrame:
    """One row of features per event, computed over each entity's full history."""
    columns = [dataset.event_id, dataset.entity, dataset.event_time, *dataset.features.fields]
    return (
        events.select(*columns)
        .groupBy(dataset.entity)
        .applyInPandas(lambda frame: entity_features(dataset, frame), schema=features_schema(dataset))
    )
