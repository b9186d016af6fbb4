"""Scores read back from the lakehouse, put on one scale with their models' registry rows."""

from __future__ import annotations

import json

import pandas as pd

from lakehouse import constants, registry, storage, system_tables
from lakehouse.errors import ConfigurationError, LakehouseError
from lakehouse.settings import Settings
import schemas
from serving import trino_client

# Where `lakehouse eval run` reads scores: the merged view through Trino (what users query), or
# one layer's Delta table directly.
SOURCES = ("merged", "hot", "batch")
COLUMNS = ["entity_id", "event_time", "score", "is_anomaly", "model_version"]
SURPRISE = system_tables.SURPRISE.name


def _naive_utc(values) -> pd.Series:
    return pd.to_datetime(values, utc=True).dt.tz_localize(None).astype("datetime64[us]")


def read(dataset_name: str, source: str, settings: Settings) -> pd.DataFrame:
    """A dataset's scored events (entity_id, event_time, score, is_anomaly, model_version, layer),
    and `surprise` (the calibrated score) where every side read carries it."""
    dataset = schemas.load(dataset_name)
    if source not in SOURCES:
        raise ConfigurationError(f"scores source {source!r}: choose one of {', '.join(SOURCES)}")
    columns = f"{dataset.entity} AS entity_id, {dataset.event_time} AS event_time, score, is_anomaly, model_version"
    if source == "merged":
        view = f"{constants.CATALOG}.{dataset.name}.{constants.MERGED_VIEW}"
        served = set(trino_client.query(f"SELECT * FROM {view} WHERE false", settings=settings).columns)
        surprise = f", {SURPRISE}" if SURPRISE in served else ""
        frame = trino_client.query(f"SELECT {columns}{surprise}, layer FROM {view}", settings=settings)
    else:
        table = constants.HOT_SCORES if source == "hot" else constants.BATCH_SCORES
        uri = settings.table_uri(dataset.name, table)
        if not storage.table_exists(uri):
            raise LakehouseError(f"{uri}: no {table} table yet for {dataset.name}")
        stored = storage.open_table(uri).to_pyarrow_dataset()
        surprise = [SURPRISE] if SURPRISE in stored.schema.names else []
        frame = stored.to_table(columns=[dataset.entity, dataset.event_time, "score", "is_anomaly", "model_version", *surprise]).to_pandas()
        frame.columns = COLUMNS + surprise
        frame["layer"] = constants.LAYER_SPEED if source == "hot" else constants.LAYER_BATCH
    frame["event_time"] = _naive_utc(frame["event_time"])
    frame["entity_id"] = frame["entity_id"].astype(str)
    return frame


def _metric(text: str, name: str, default: float | None = None) -> float:
    value = json.loads(text).get(name, default)
    return float(value)


def with_models(scores: pd.DataFrame, settings: Settings, dataset: str) -> pd.DataFrame:
    """Each score with its model's threshold, training mean and training end, and its relative
    score; sorted by entity and event time. Unscored rows keep NaN."""
    models = registry.list_models(settings, dataset)
    models = pd.DataFrame(
        {
            "entity_id": models["entity_id"].astype(str),
            "model_version": models["version"].astype("Int64"),
            # Models registered before threshold_scale existed flagged at the contamination threshold.
            "threshold": [_metric(text, "contamination_threshold", threshold) for text, threshold in zip(models["metrics"], models["threshold"])],
            "train_mean": [_metric(text, "train_score_mean") for text in models["metrics"]],
            "train_end": _naive_utc(models["train_end"]),
        }
    )
    scores = scores.assign(model_version=scores["model_version"].astype("Int64"))
    merged = scores.merge(models, on=["entity_id", "model_version"], how="left")
    span = merged["threshold"] - merged["train_mean"]
    merged["relative_score"] = (merged["score"] - merged["train_mean"]) / span.where(span > 0, 1.0)
    return merged.sort_values(["entity_id", "event_time"], kind="stable").reset_index(drop=True)
