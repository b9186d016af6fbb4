"""Model registry: the `models` Delta table plus pickled artifacts beside it in the warehouse.

Batch training appends one row per (dataset, entity) and version; every entity trained in a run
shares that run's version. The speed layer reads the newest version of each entity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import pyarrow as pa
from deltalake import write_deltalake

from lakehouse import constants, storage, system_tables
from lakehouse.detectors import FittedModel
from lakehouse.errors import ModelNotFoundError
from lakehouse.settings import Settings

@dataclass(frozen=True)
class RegisteredModel:
    dataset: str
    entity_id: str
    version: int
    model: FittedModel


def table_uri(settings: Settings) -> str:
    return settings.table_uri(constants.SYSTEM_SCHEMA, constants.MODELS)


def artifact_uri(settings: Settings, dataset: str, version: int, entity_id: str) -> str:
    return settings.table_uri(constants.SYSTEM_SCHEMA, f"model_artifacts/{dataset}/v{version:06d}/{entity_id}.pkl")


def list_models(settings: Settings, dataset: str | None = None) -> pd.DataFrame:
    uri = table_uri(settings)
    if not storage.table_exists(uri):
        return system_tables.MODELS_SCHEMA.empty_table().to_pandas()
    frame = storage.open_table(uri).to_pandas()
    if dataset is not None:
        frame = frame[frame["dataset"] == dataset]
    return frame.sort_values(["dataset", "version", "entity_id"]).reset_index(drop=True)


def next_version(settings: Settings, dataset: str) -> int:
    models = list_models(settings, dataset)
    return 1 if models.empty else int(models["version"].max()) + 1


def register(settings: Settings, rows: list[dict]) -> None:
    """Append registry rows (artifacts must already be written to their artifact_uri)."""
    if not rows:
        return
    for row in rows:
        row["params"] = json.dumps(row.get("params") or {}, sort_keys=True)
        row["metrics"] = json.dumps(row.get("metrics") or {}, sort_keys=True)
        row["feature_names"] = json.dumps(row.get("feature_names") or [])
    table = pa.Table.from_pylist(rows, schema=system_tables.MODELS_SCHEMA)
    uri = table_uri(settings)
    write_deltalake(uri, table, mode="append", storage_options=storage.storage_options(uri))


def save_artifact(settings: Settings, dataset: str, version: int, entity_id: str, payload: bytes) -> str:
    """Store a serialised FittedModel (FittedModel.to_bytes) and return its URI."""
    uri = artifact_uri(settings, dataset, version, entity_id)
    storage.write_bytes(uri, payload)
    return uri


def succeeded_runs(settings: Settings) -> set[str]:
    """Run ids the run log lists as succeeded (batch/run_log.py writes it; read here as a table)."""
    uri = settings.table_uri(constants.SYSTEM_SCHEMA, constants.BATCH_RUNS)
    if not storage.table_exists(uri):
        return set()
    runs = storage.open_table(uri).to_pyarrow_table(columns=["run_id", "status"]).to_pandas()
    return set(runs.run_id[runs.status == system_tables.STATUS_SUCCEEDED])


def latest_versions(settings: Settings, dataset: str, *, own_run: str | None = None) -> pd.DataFrame:
    """The newest served registry row of each entity of a dataset.

    A model is served once the run that trained it succeeded: a run that fails or is killed after
    training is rolled back (batch/recovery.py), and what it trained on with it, so its models
    stay in the table (their versions are never reused) but no layer scores with them. `own_run`:
    the batch run scoring with the models it has just trained, before it is logged. Rows without a
    run id (registered by hand) are served.
    """
    models = list_models(settings, dataset)
    served = succeeded_runs(settings) | ({own_run} if own_run else set())
    models = models[models.run_id.isna() | models.run_id.isin(served)]
    if models.empty:
        raise ModelNotFoundError(
            f"no model registered for dataset {dataset!r}: run `lakehouse batch run --dataset {dataset}` first"
        )
    return models.sort_values("version").groupby("entity_id", as_index=False).tail(1)


def load_latest(settings: Settings, dataset: str) -> dict[str, RegisteredModel]:
    """entity_id -> its newest served model, loaded from its artifact."""
    return load(latest_versions(settings, dataset))


def load(rows: pd.DataFrame) -> dict[str, RegisteredModel]:
    """entity_id -> the model of its registry row, loaded from its artifact."""
    loaded: dict[str, RegisteredModel] = {}
    for row in rows.itertuples():
        model = FittedModel.from_bytes(storage.read_bytes(row.artifact_uri))
        loaded[row.entity_id] = RegisteredModel(row.dataset, row.entity_id, int(row.version), model)
    return loaded


def registry_version(settings: Settings) -> tuple[int, int | None] | None:
    """(models table's Delta version, run log's): cheap to poll, changes when a model is
    registered or a run that trained one succeeds (which is when its models are served)."""
    uri = table_uri(settings)
    if not storage.table_exists(uri):
        return None
    runs = settings.table_uri(constants.SYSTEM_SCHEMA, constants.BATCH_RUNS)
    return storage.open_table(uri).version(), storage.open_table(runs).version() if storage.table_exists(runs) else None


def now_utc() -> datetime:
    from datetime import timezone

    return datetime.now(timezone.utc)
