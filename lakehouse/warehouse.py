"""Warehouse housekeeping shared by the CLI, the demo and the tests."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from lakehouse import constants, storage
from lakehouse.settings import Settings

log = logging.getLogger(__name__)


def reset_dataset(settings: Settings, dataset: str) -> None:
    """Drop a dataset's tables and its rows in the shared tables (local warehouse only)."""
    if not settings.warehouse_is_local:
        raise ValueError("reset_dataset only removes local warehouse folders")
    folder = Path(settings.warehouse) / dataset
    if folder.exists():
        shutil.rmtree(folder)
    for table in constants.SYSTEM_TABLES:
        uri = settings.table_uri(constants.SYSTEM_SCHEMA, table)
        if storage.table_exists(uri):
            storage.open_table(uri).delete(f"dataset = '{dataset}'")
    artifacts = Path(settings.table_uri(constants.SYSTEM_SCHEMA, f"model_artifacts/{dataset}"))
    if artifacts.exists():
        shutil.rmtree(artifacts)
    log.info("reset dataset %s in %s", dataset, settings.warehouse)
