"""Delta maintenance: compaction (OPTIMIZE) and removal of unreferenced files (VACUUM).

VACUUM keeps 7 days of history by default, Delta's own safe minimum: readers on an older
snapshot (a long Trino query, a time-travel read) and concurrent writers keep their files.
A shorter retention has to be asked for explicitly with `force=True`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import SparkSession

from lakehouse import constants, storage
from lakehouse.errors import LakehouseError
from lakehouse.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_RETENTION_HOURS = 168


@dataclass(frozen=True)
class MaintenanceResult:
    table: str
    files_before: int
    files_after: int
    files_compacted: int
    files_vacuumed: int


def _file_count(spark: SparkSession, uri: str) -> int:
    return int(DeltaTable.forPath(spark, uri).detail().collect()[0]["numFiles"])


def maintain(
    spark: SparkSession,
    settings: Settings,
    dataset: str,
    *,
    vacuum: bool = True,
    retention_hours: float = DEFAULT_RETENTION_HOURS,
    force: bool = False,
) -> list[MaintenanceResult]:
    """OPTIMIZE (and VACUUM) the dataset's tables and the shared quarantine."""
    if retention_hours < DEFAULT_RETENTION_HOURS and not force:
        raise LakehouseError(
            f"retention of {retention_hours} h is below Delta's safe minimum of {DEFAULT_RETENTION_HOURS} h: "
            "readers of older snapshots could lose files; pass force to do it anyway"
        )
    spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", str(not force).lower())
    uris = [settings.table_uri(dataset, table) for table in (constants.SILVER, constants.BATCH_SCORES, constants.HOT_SCORES)]
    uris.append(settings.table_uri(constants.SYSTEM_SCHEMA, constants.QUARANTINE))
    # The batch view is rewritten whole by every run, one file per day sorted by entity and time
    # (batch/tables.write_batch_view): bin-packing would only concatenate sorted runs into files
    # whose entity ranges overlap. It is vacuumed like the others (each run's overwrite leaves
    # the previous files behind), not compacted.
    batch_view = settings.table_uri(dataset, constants.BATCH_SCORES)
    results = []
    for uri in uris:
        if not storage.table_exists(uri):
            continue
        table = DeltaTable.forPath(spark, uri)
        before = _file_count(spark, uri)
        metrics = 0
        if uri != batch_view:
            metrics = table.optimize().executeCompaction().select("metrics.numFilesRemoved").collect()[0][0]
        vacuumed = 0
        if vacuum:
            files_before_vacuum = _listed_files(uri)
            table.vacuum(retention_hours)
            vacuumed = max(0, files_before_vacuum - _listed_files(uri))
        results.append(MaintenanceResult(uri, before, _file_count(spark, uri), int(metrics or 0), vacuumed))
        log.info("maintained %s: %d -> %d files, %d removed by vacuum", uri, before, results[-1].files_after, vacuumed)
    return results


def _listed_files(uri: str) -> int:
    """Parquet files physically present (what VACUUM can remove), local warehouses only."""
    if "://" in uri:
        return 0
    from pathlib import Path

    return sum(1 for _ in Path(uri).rglob("*.parquet"))
