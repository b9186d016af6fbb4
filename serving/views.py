"""The merged view of each dataset, the heart of the Lambda architecture.

    merged = batch view rows with event_time <= W  UNION ALL  hot rows with event_time > W

where W, the watermark, is the newest event time the last successful batch run covers (read
from batch_runs at query time, so a new batch run moves the boundary without redefining the
view). With no successful batch run yet, W is NULL and every hot row answers. Each event id
appears once: the batch view and the hot table are each unique by event id, and the boundary
splits them. The `layer` column says which side answered.
"""

from __future__ import annotations

import logging

import schemas
from lakehouse import constants, storage
from lakehouse.settings import Settings, get_settings
from schemas.declaration import Dataset
from serving import trino_client

log = logging.getLogger(__name__)


def _qualified(schema: str, table: str) -> str:
    return f'{constants.CATALOG}."{schema}"."{table}"'


def merged_view_sql(dataset: Dataset, *, has_batch: bool, has_hot: bool, has_runs: bool = True) -> str:
    """CREATE OR REPLACE VIEW for the dataset's merged view over the sides that exist."""
    columns = [dataset.event_id, dataset.entity, dataset.event_time, *dataset.features.fields, "score", "is_anomaly", "model_version"]
    selected = ", ".join(f'side."{name}"' for name in columns)
    runs = _qualified(constants.SYSTEM_SCHEMA, constants.BATCH_RUNS)
    boundary = (
        f"SELECT max(watermark) AS watermark FROM {runs} "
        f"WHERE dataset = '{dataset.name}' AND status = 'succeeded'"
        if has_runs
        # No batch run has ever finished: no watermark, the speed layer answers everything.
        else "SELECT CAST(NULL AS timestamp(3) with time zone) AS watermark"
    )
    parts = []
    if has_batch:
        parts.append(
            f"SELECT {selected}, '{constants.LAYER_BATCH}' AS layer, boundary.watermark "
            f"FROM {_qualified(dataset.name, constants.BATCH_SCORES)} side CROSS JOIN boundary "
            f'WHERE side."{dataset.event_time}" <= boundary.watermark'
        )
    if has_hot:
        parts.append(
            f"SELECT {selected}, '{constants.LAYER_SPEED}' AS layer, boundary.watermark "
            f"FROM {_qualified(dataset.name, constants.HOT_SCORES)} side CROSS JOIN boundary "
            f'WHERE boundary.watermark IS NULL OR side."{dataset.event_time}" > boundary.watermark'
        )
    if not parts:
        raise ValueError(f"{dataset.name}: neither a batch view nor a hot table exists yet")
    body = "\nUNION ALL\n".join(parts)
    return (
        f"CREATE OR REPLACE VIEW {_qualified(dataset.name, constants.MERGED_VIEW)} AS\n"
        f"WITH boundary AS ({boundary})\n{body}"
    )


def refresh(dataset_name: str, settings: Settings | None = None) -> list[str]:
    """Register the dataset's tables and the system tables in Trino, then (re)create its merged view."""
    settings = settings or get_settings()
    dataset = schemas.load(dataset_name)
    messages = []
    present = {}
    for schema, table in [
        *((constants.SYSTEM_SCHEMA, name) for name in constants.SYSTEM_TABLES),
        *((dataset.name, name) for name in constants.DATASET_TABLES),
    ]:
        uri = settings.table_uri(schema, table)
        present[(schema, table)] = storage.table_exists(uri)
        if present[(schema, table)]:
            trino_client.register_table(schema, table, uri)
            messages.append(f"registered {schema}.{table}")
    has_runs = present[(constants.SYSTEM_SCHEMA, constants.BATCH_RUNS)]
    has_batch = present[(dataset.name, constants.BATCH_SCORES)] and has_runs
    has_hot = present[(dataset.name, constants.HOT_SCORES)]
    if has_batch or has_hot:
        trino_client.execute(merged_view_sql(dataset, has_batch=has_batch, has_hot=has_hot, has_runs=has_runs))
        messages.append(f"created view {dataset.name}.{constants.MERGED_VIEW} (batch: {has_batch}, speed: {has_hot})")
    return messages


def refresh_all(settings: Settings | None = None) -> list[str]:
    """refresh() for every declared dataset that has tables in the warehouse."""
    settings = settings or get_settings()
    messages = []
    for name in schemas.available():
        if any(storage.table_exists(settings.table_uri(name, table)) for table in constants.DATASET_TABLES):
            messages += refresh(name, settings)
    return messages
