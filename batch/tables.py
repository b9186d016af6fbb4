"""Delta writes of the batch layer: idempotent merges, the batch-view rewrite and hot-row expiry."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

import pyarrow as pa
from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_schema

from batch.ingest import SOURCE_FILE
from batch.source import LINE_NUMBER
from batch.recovery import commit_metadata
from batch.validation import ERRORS, FAILED_RULES, RAW
from lakehouse import constants, storage, system_tables
from lakehouse.settings import Settings
from schemas.declaration import Dataset

log = logging.getLogger(__name__)
_EXPIRY_ATTEMPTS = 5
_USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"


def spark_schema(schema: pa.Schema) -> T.StructType:
    """The Spark schema of a table declared in Arrow (lakehouse/system_tables.py)."""
    return from_arrow_schema(schema)


def conform(frame: DataFrame, schema: pa.Schema) -> DataFrame:
    """The frame's columns in the declared table's order and types (a column it lacks is an error)."""
    return frame.select(*[F.col(field.name).cast(field.dataType) for field in spark_schema(schema)])


def _merge_metric(merge, *names: str) -> int:
    """Execute a Delta MERGE and add up the named counts of what it did (Delta returns them as a
    one-row frame: num_inserted_rows, num_updated_rows, num_deleted_rows; all 0 when nothing
    changed and nothing was committed). Read from the MERGE itself, not from the table's history
    before and after it: that was two more snapshot loads and Spark jobs per write."""
    row = merge.execute().collect()[0]
    return sum(int(row[name] or 0) for name in names)


def merge_silver(spark: SparkSession, valid: DataFrame, dataset: Dataset, settings: Settings, run_id: str) -> int:
    """Write the run's winning versions (batch/duplicates.py) into silver: insert the event ids it
    does not have, and under `duplicates: latest` replace the versions they win over; return how
    many rows were inserted or updated.

    The input must already hold one row per event id. A re-run of the same input writes nothing.
    """
    uri = settings.table_uri(dataset.name, constants.SILVER)
    rows = (
        valid.select(*[field.name for field in dataset.fields], SOURCE_FILE)
        .withColumn(system_tables.EVENT_DATE.name, F.to_date(dataset.event_time))
        .withColumn(system_tables.EVENT_MONTH.name, F.trunc(dataset.event_time, "month"))
        .withColumnRenamed(SOURCE_FILE, "source_file")
        .withColumn("run_id", F.lit(run_id))
        .withColumn("ingested_at", F.current_timestamp())
    )
    if not storage.table_exists(uri):
        rows.limit(0).write.format("delta").partitionBy(system_tables.EVENT_MONTH.name).save(uri)
    silver = DeltaTable.forPath(spark, uri)
    if system_tables.EVENT_MONTH.name not in silver.toDF().columns:
        # A silver table created before it was partitioned by month (by event_date) keeps its layout.
        rows = rows.drop(system_tables.EVENT_MONTH.name)
    merge = (
        silver
        .alias("silver")
        .merge(rows.alias("incoming"), f"silver.{dataset.event_id} = incoming.{dataset.event_id}")
    )
    if dataset.duplicates == "latest":
        merge = merge.whenMatchedUpdateAll()
    merge = merge.whenNotMatchedInsertAll()
    # The commit names its run, so a run that does not succeed can be rolled back (batch/recovery.py).
    # Into a table just created, an append was tried instead (2026-12-03): Delta already runs an
    # insert-only MERGE as an anti-join and a write, and the append was no faster (4.1 s against
    # 3.2 s for 300k rows, within the noise), so one path serves every run.
    with _commit_metadata(spark, commit_metadata(run_id)):
        return _merge_metric(merge, "num_inserted_rows", "num_updated_rows")


@contextmanager
def _commit_metadata(spark: SparkSession, text: str) -> Iterator[None]:
    """Delta's commitInfo.userMetadata for the commits made inside the block."""
    spark.conf.set(_USER_METADATA, text)
    try:
        yield
    finally:
        spark.conf.unset(_USER_METADATA)


def read_silver(spark: SparkSession, dataset: Dataset, settings: Settings) -> DataFrame | None:
    """Silver as it is, or None before the dataset's first run."""
    uri = settings.table_uri(dataset.name, constants.SILVER)
    return spark.read.format("delta").load(uri) if storage.table_exists(uri) else None


def quarantine_source(source_file: Column, line_number: Column) -> Column:
    """system_tables.record_source in Spark: `<file>:<line>` where the record's line (or Parquet row) is known."""
    return F.when(line_number.isNull(), source_file).otherwise(F.concat(source_file, F.lit(":"), line_number.cast("string")))


def quarantine_rows(rejected: DataFrame, dataset: Dataset, run_id: str) -> DataFrame:
    """Rejected records as quarantine rows (system_tables.QUARANTINE_SCHEMA, which the speed layer writes too).

    The source names the file and the line, so N identical bad lines of a file are N rows, and a
    re-run of the same file finds the same keys (one row each, however often it runs).
    """
    source = quarantine_source(F.col(SOURCE_FILE), F.col(LINE_NUMBER))
    rows = rejected.select(
        F.lit(dataset.name).alias("dataset"),
        F.col(dataset.event_id).cast("string").alias("event_id"),
        # system_tables.record_hash, computed by Spark.
        F.sha2(F.concat_ws(system_tables.RECORD_HASH_SEPARATOR, F.col(RAW), F.coalesce(source, F.lit(""))), 256).alias("record_hash"),
        F.col(RAW).alias("raw"),
        F.col(FAILED_RULES).alias("failed_rules"),
        F.col(ERRORS).alias("errors"),
        source.alias("source"),
        F.lit(constants.LAYER_BATCH).alias("layer"),
        F.lit(run_id).alias("run_id"),
        F.current_timestamp().alias("quarantined_at"),
    )
    return conform(rows, system_tables.QUARANTINE_SCHEMA)


def merge_quarantine(spark: SparkSession, rows: DataFrame, settings: Settings, *, count: int | None = None) -> None:
    """Add rejected records not quarantined before (same dataset, same record from the same source).

    `count`, when the caller has counted `rows` already: with 0 the MERGE is skipped (the table is
    still created, as a run always leaves one)."""
    uri = settings.table_uri(constants.SYSTEM_SCHEMA, constants.QUARANTINE)
    rows = rows.dropDuplicates(list(system_tables.QUARANTINE_KEY))
    created = not storage.table_exists(uri)
    if created:
        rows.limit(0).write.format("delta").save(uri)
    if count == 0:
        return
    if created:
        # Just created, so no record is in it yet from any source but this run's: the MERGE's
        # join would find nothing. An append (the speed layer's own rows may land beside it:
        # appends do not conflict) writes the same rows without it: creation + MERGE 1.9 s,
        # creation + append 1.0 s in a first run over 300k rows (Spark's event log, one run
        # each, 2026-12-03). The roll-back deletes a run's quarantine rows by run id, whatever
        # wrote them (batch/recovery.py).
        rows.write.format("delta").mode("append").save(uri)
        return
    merge = (
        DeltaTable.forPath(spark, uri)
        .alias("quarantine")
        .merge(
            rows.alias("incoming"),
            " AND ".join(f"quarantine.{key} = incoming.{key}" for key in system_tables.QUARANTINE_KEY),
        )
        .whenNotMatchedInsertAll()
    )
    merge.execute()


# Rows per batch-view file: a day up to this size is one file; a bigger one is split, each file
# then holding a range of entities (Delta's per-file statistics let readers skip the others).
BATCH_VIEW_FILE_ROWS = 1_000_000


def write_batch_view(rows: DataFrame, dataset: Dataset, settings: Settings) -> None:
    """Replace the batch view: it is recomputed from all of silver on every run (Lambda's batch view).

    Laid out for the serving layer's common filters, time and entity: partitioned by event date
    (a time filter prunes days), one file per day (a scan opens one split per day, not one per
    shuffle partition and day), rows sorted by entity then event time within it (an entity's rows
    are contiguous: Parquet's page and row-group statistics and Delta's file statistics narrow by
    entity). Measured against the previous layout (3 files per day, unsorted) on the serving
    bench's 1M rows through Trino: full aggregate 0.76x, one entity's last day 0.63x, point
    lookup 1.03x, last hour's anomalies 0.76x (docs/benchmarks.md, "Serving")."""
    uri = settings.table_uri(dataset.name, constants.BATCH_SCORES)
    rows = conform(rows, system_tables.batch_scores_schema(dataset))
    partition = system_tables.EVENT_DATE.name
    # The date leads the sort so that Spark's writer, which needs rows grouped by partition,
    # keeps this order instead of sorting again by date alone.
    laid_out = rows.repartition(partition).sortWithinPartitions(partition, dataset.entity, dataset.event_time, dataset.event_id)
    (laid_out.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
     .option("maxRecordsPerFile", BATCH_VIEW_FILE_ROWS).partitionBy(partition).save(uri))


def expire_hot_rows(spark: SparkSession, dataset: Dataset, settings: Settings, watermark) -> int:
    """Delete the speed-layer rows this run covered: those whose event the batch view now holds.

    By event, not by the dataset-wide watermark: an entity whose events lag the others keeps its
    speed-only rows before the watermark, which the merged view answers from the hot table (it
    serves hot rows after each entity's newest batch row, serving/views.py), and so does an event
    the run's input lacked.
    """
    uri = settings.table_uri(dataset.name, constants.HOT_SCORES)
    if watermark is None or not storage.table_exists(uri):
        return 0
    key, event_time = dataset.event_id, dataset.event_time
    covered = spark.read.format("delta").load(settings.table_uri(dataset.name, constants.BATCH_SCORES)).select(key)
    table = DeltaTable.forPath(spark, uri)
    # The bound on the hot side alone (the batch view holds nothing later) lets Delta skip the
    # files the speed layer adds meanwhile with newer events, so those commits do not conflict.
    condition = (F.col(f"hot.`{key}`") == F.col(f"covered.`{key}`")) & (F.col(f"hot.`{event_time}`") <= F.lit(watermark))
    expire = lambda: table.alias("hot").merge(covered.alias("covered"), condition).whenMatchedDelete()  # noqa: E731
    # The speed layer keeps committing to the hot table: a conflicting commit is retried, since
    # the delete is idempotent and only has to win once.
    for attempt in range(1, _EXPIRY_ATTEMPTS + 1):
        try:
            return _merge_metric(expire(), "num_deleted_rows")
        except Exception as error:  # noqa: BLE001 - Delta's conflict errors arrive as Py4J/captured errors
            if "Concurrent" not in type(error).__name__ + str(error)[:500] or attempt == _EXPIRY_ATTEMPTS:
                raise
            log.warning("hot-table expiry conflicted with a speed-layer commit; retrying (%d/%d)", attempt, _EXPIRY_ATTEMPTS)
            time.sleep(0.5 * attempt)
    return 0
