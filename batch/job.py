"""The batch job: ingest -> validate -> silver + quarantine -> train -> batch view -> watermark.

Run it as `lakehouse batch run`, or under spark-submit:
    spark-submit batch/job.py --dataset sensor_events --input 'data/*.json'
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Callable, Iterator
from urllib.parse import unquote

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

import schemas
from batch import features as batch_features
from batch import expectations, run_log, tables
from batch import duplicates, recovery, source
from batch.crash_points import crash_point
from batch.ingest import SOURCE_FILE, read_files, read_raw
from batch.score import score
from batch.spark import spark_session
from batch.train import train
from batch.validation import FAILED_RULES, parsed, split, validate
from lakehouse import constants, storage, system_tables
from lakehouse.errors import ConfigurationError, CountMismatchError, LakehouseError, RunError
from lakehouse.settings import Settings, get_settings
from schemas.declaration import Dataset, DetectorSpec

log = logging.getLogger(__name__)

STEPS = ("ingest", "validate", "silver", "train", "score", "expire")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no usage statistics sent from runs
Progress = Callable[[str], None]
AfterWrite = Callable[[str], None]


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


# The input name that means "the dataset's landing table" rather than files.
LANDING_INPUT = "landing"


def resolve_inputs(inputs: list[str]) -> list[str]:
    """Paths, folders and globs (local or s3://) expanded to their files; an empty match is an error."""
    resolved: list[str] = []
    for item in inputs:
        matches = storage.list_input_files(item)
        if not matches:
            raise LakehouseError(f"input {item!r} matches no file")
        resolved += matches
    return resolved


@contextmanager
def _timed(timings: dict[str, float], step: str, progress: Progress | None) -> Iterator[None]:
    if progress:
        progress(step)
    crash_point(f"{step}:start")
    started = time.perf_counter()
    yield
    timings[step] = time.perf_counter() - started
    log.info("step %s took %.1fs", step, timings[step])
    crash_point(f"{step}:end")


def run_batch(
    dataset_name: str,
    inputs: list[str],
    *,
    settings: Settings,
    spark: SparkSession | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
    detector: dict | None = None,
    after_write: AfterWrite | None = None,
    input_format: str | None = None,
) -> run_log.RunRecord:
    """One batch run over the given input files; returns (and logs to batch_runs) its record.

    `detector` overrides parts of the declared detector for this run's training, e.g.
    {"name": "lof", "contamination": 0.02}; the registry records what was used.
    `after_write(dataset)` runs after a successful run: the composition root passes the serving
    refresh (new tables registered, views following the new batch view); the batch layer itself
    knows nothing of serving.
    Each file is read as what it is (batch/source.py); `input_format` ("csv", "json", "parquet")
    forces one for every file. The run fails, and moves no watermark, unless every record counted
    in the files is valid, quarantined, a duplicate or a conflict.
    """
    dataset = schemas.load(dataset_name)
    if detector:
        merged = {**dataset.detector.model_dump(), **detector}
        if "name" in detector and "params" not in detector:
            merged["params"] = {}  # the declared parameters belong to the declared detector
        if "name" in detector and "overrides" not in detector:
            merged["overrides"] = []  # a detector chosen for the run applies to every entity
        try:
            spec = DetectorSpec.model_validate(merged)
        except ValueError as error:
            raise ConfigurationError(f"detector override {detector}: {error}") from error
        dataset = dataset.model_copy(update={"detector": spec})
    run_id = run_id or new_run_id()
    if input_format is not None and input_format not in source.FORMATS:
        raise ConfigurationError(f"format {input_format!r}: expected one of {', '.join(source.FORMATS)} (or none: each file's own)")
    if inputs == [LANDING_INPUT]:
        # The speed layer's landing table (valid events it read from Kafka), as a Delta snapshot.
        uri = settings.table_uri(dataset.name, constants.LANDING)
        if not storage.table_exists(uri):
            raise LakehouseError(f"input 'landing': {uri} has no Delta table yet (the speed layer lands events read from Kafka)")
        paths, input_format = [uri], "delta"
    elif LANDING_INPUT in inputs:
        raise ConfigurationError("input 'landing' cannot be mixed with files: run it on its own")
    else:
        paths = resolve_inputs(inputs)
    record = run_log.RunRecord(
        run_id=run_id, dataset=dataset.name, status=system_tables.STATUS_FAILED,
        started_at=datetime.now(timezone.utc), finished_at=datetime.now(timezone.utc), inputs=paths,
    )
    spark = spark or spark_session(settings)
    log.info("run %s: dataset %s, %d input file(s)", run_id, dataset.name, len(paths))
    try:
        rolled = recovery.roll_back_unfinished(spark, dataset, settings, current=run_id)
        if rolled.runs:
            record.report["rolled_back"] = rolled.to_json()
        _run_steps(spark, dataset, paths, input_format, settings, record, progress)
        check_counts(record)
        record.status = system_tables.STATUS_SUCCEEDED
    except Exception as error:
        record.error = f"{type(error).__name__}: {error}"
        _roll_back_own_writes(spark, dataset, settings, record)
        raise RunError(run_id, record.error) from error
    finally:
        record.finished_at = datetime.now(timezone.utc)
        crash_point("run_log:append")
        run_log.append(settings, record)
    crash_point("run_log:appended")
    # Serving moves its boundary to the new watermark first (the merged view holds it as a
    # literal), then hot rows the batch view now holds are expired: in the other order, or with
    # expiry before the run is logged as succeeded, those events would be missing from the merged
    # view in between (or, after a crash, until the next run).
    if after_write is not None:
        after_write(dataset.name)
    with _timed(record.timings, "expire", progress):
        record.expired_hot_rows = tables.expire_hot_rows(spark, dataset, settings, record.watermark)
        run_log.set_expired_hot_rows(settings, record.run_id, record.expired_hot_rows)
    return record


def _roll_back_own_writes(spark: SparkSession, dataset: Dataset, settings: Settings, record: run_log.RunRecord) -> None:
    """A failed run undoes its silver and quarantine writes now (the next run would do it anyway)."""
    try:
        rolled = recovery.roll_back_unfinished(spark, dataset, settings, current=record.run_id)
    except Exception as error:  # noqa: BLE001 - the run's own error is the one to report
        log.warning("run %s failed and could not roll back its writes (the next run will): %s", record.run_id, error)
        return
    if rolled.runs:
        record.report["rolled_back"] = rolled.to_json()


def _run_steps(
    spark: SparkSession,
    dataset: Dataset,
    paths: list[str],
    input_format: str | None,
    settings: Settings,
    record: run_log.RunRecord,
    progress: Progress | None,
) -> None:
    timings = record.timings
    with _timed(timings, "ingest", progress):
        # The records are read once, lazily: the validated frame below is the one cached.
        if input_format == "delta":
            raw = read_raw(spark, dataset, paths, input_format="delta")
            files = None
        else:
            files = [source.scan(dataset, path, input_format) for path in paths]
            _quarantine_files(spark, dataset, [scan for scan in files if scan.quarantined], settings, record)
            raw = read_files(spark, dataset, [scan for scan in files if not scan.quarantined])
            record.input_rows = sum(scan.records for scan in files if not scan.quarantined)
    with _timed(timings, "validate", progress):
        validated = validate(raw, dataset).persist()
        suite = expectations.run_suite(parsed(validated), dataset)
        read_by_file, record.quarantined_rows, rule_counts = _read_counts(validated)
        expectations.cross_check(suite, rule_counts)
        record.report.update({"great_expectations": suite.to_json(), "failed_rules": rule_counts})
        if files is None:
            record.input_rows = sum(read_by_file.values())  # a Delta snapshot: its rows are its records
        else:
            record.report["files"] = _file_counts(files, read_by_file)
        valid, rejected = split(validated, dataset)
        tables.merge_quarantine(
            spark, tables.quarantine_rows(rejected, dataset, record.run_id), settings, count=record.quarantined_rows
        )
    with _timed(timings, "silver", progress):
        # Duplicates and conflicts are counted where they are decided (batch/duplicates.py): exact
        # repeats of the winning version are dropped, other versions kept in the quarantine (rule
        # event_id.conflict). Losers are quarantined before silver changes, so a crash in between
        # loses none of them and a re-run finds them under the same keys.
        resolution = duplicates.resolve(valid, tables.read_silver(spark, dataset, settings), dataset)
        judged = resolution.judged.persist()
        counts = resolution.counts()
        record.duplicate_rows, record.conflict_rows = counts[duplicates.DUPLICATE], counts[duplicates.CONFLICT]
        writes, conflicts = resolution.writes, resolution.conflicts(record.conflict_rows)
        losers, lost = tables.quarantine_rows(conflicts, dataset, record.run_id), record.conflict_rows
        if resolution.superseded is not None:
            superseded = resolution.superseded.persist()
            record.report["superseded_in_silver"] = superseded.count()
            losers = losers.unionByName(tables.quarantine_rows(superseded, dataset, record.run_id))
            lost += record.report["superseded_in_silver"]
        tables.merge_quarantine(spark, losers, settings, count=lost)
        crash_point("silver:quarantined")
        # The accounting is checked before silver changes: a run whose counts disagree with the
        # source writes nothing into silver, no batch view, and moves no watermark.
        record.valid_rows = counts[duplicates.WRITE]
        check_counts(record)
        written = tables.merge_silver(spark, writes, dataset, settings, record.run_id)
        if written != record.valid_rows:
            raise CountMismatchError(f"silver took {written} row(s) of the {record.valid_rows} the run wrote (Delta's own count)")
        judged.unpersist()
    validated.unpersist()

    silver = spark.read.format("delta").load(settings.table_uri(dataset.name, constants.SILVER))
    features = batch_features.compute(silver, dataset).persist()
    with _timed(timings, "train", progress):
        training = train(_training_window(features, dataset), dataset, settings, record.run_id)
        record.model_version = training.version
    with _timed(timings, "score", progress):
        view = score(features, silver, dataset, settings, record.run_id)
        tables.write_batch_view(view, dataset, settings)
        batch_view = spark.read.format("delta").load(settings.table_uri(dataset.name, constants.BATCH_SCORES))
        summary = batch_view.agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum(F.col("is_anomaly").cast("long")).alias("anomalies"),
            F.max(dataset.event_time).alias("watermark"),
        ).collect()[0]
        record.scored_rows, record.anomalies = int(summary["rows"]), int(summary["anomalies"] or 0)
        record.silver_rows = silver.count()
        watermark = summary["watermark"]
        record.watermark = watermark.replace(tzinfo=timezone.utc) if watermark is not None else None
    features.unpersist()


def check_counts(record: run_log.RunRecord) -> None:
    """Fail unless every record counted in the source is valid, quarantined, a duplicate or a
    conflict (batch/duplicates.py), and every file's records were read as counted."""
    mismatched = [item for item in record.report.get("files", []) if item["rule"] is None and item["read"] != item["records"]]
    if mismatched:
        details = "; ".join(f"{item['path']}: {item['records']} in the file, {item['read']} read" for item in mismatched)
        raise CountMismatchError(f"records read differ from the files' own counts: {details}")
    if not record.counts_add_up:
        raise CountMismatchError(
            f"counts do not add up: input {record.input_rows} (counted in the source) != valid {record.valid_rows} "
            f"+ quarantined {record.quarantined_rows} + duplicates {record.duplicate_rows} + conflicts {record.conflict_rows}",
        )


def _read_counts(validated: DataFrame) -> tuple[dict[str, int], int, dict[str, int]]:
    """(records read per source file, records rejected, records per broken rule): one aggregation
    over the validated records, by file and list of broken rules (few distinct lists)."""
    read: dict[str, int] = {}
    rejected = 0
    by_rule: dict[str, int] = {}
    for row in validated.groupBy(SOURCE_FILE, FAILED_RULES).count().collect():
        count = int(row["count"])
        read[row[SOURCE_FILE]] = read.get(row[SOURCE_FILE], 0) + count
        if row[FAILED_RULES]:  # rejected, as split() tells them apart
            rejected += count
            for rule in row[FAILED_RULES]:
                by_rule[rule] = by_rule.get(rule, 0) + count
    return read, rejected, by_rule


def _file_counts(files: list[source.FileScan], read_by_file: dict[str, int]) -> list[dict]:
    """Per file: its format, its records counted from its bytes, the records read, or why it was quarantined whole."""
    read = {unquote(name): count for name, count in read_by_file.items()}
    return [{**scan.to_json(), "read": None if scan.quarantined else read.get(unquote(scan.source), 0)} for scan in files]


def _quarantine_files(
    spark: SparkSession, dataset: Dataset, files: list[source.FileScan], settings: Settings, record: run_log.RunRecord
) -> None:
    """One quarantine row per file that cannot be read as its format; the run's other files proceed."""
    record.files_quarantined = len(files)
    if not files:
        return
    for scan in files:
        log.warning("run %s: file quarantined whole (%s): %s", record.run_id, scan.rule, scan.reason)
    now = datetime.now(timezone.utc)
    rows = [
        system_tables.quarantine_row(
            dataset.name, raw=scan.raw or scan.path, source=scan.source, event_id=None, failed_rules=[scan.rule],
            errors=[scan.reason], layer=constants.LAYER_BATCH, run_id=record.run_id, quarantined_at=now,
        )
        for scan in files
    ]
    frame = spark.createDataFrame(rows, tables.spark_schema(system_tables.QUARANTINE_SCHEMA))
    tables.merge_quarantine(spark, frame, settings)


def _training_window(features: DataFrame, dataset: Dataset) -> DataFrame:
    """The feature rows the detectors learn from: the newest `training_days` of each entity."""
    days = dataset.detector.training_days
    if days is None:
        return features
    newest = Window.partitionBy(dataset.entity)
    cutoff = F.max(dataset.event_time).over(newest) - F.make_dt_interval(F.lit(0), F.lit(0), F.lit(0), F.lit(days * 86400.0))
    return features.withColumn("_cutoff", cutoff).where(F.col(dataset.event_time) > F.col("_cutoff")).drop("_cutoff")


def run(argv: list[str] | None = None) -> run_log.RunRecord:
    """spark-submit entry point."""
    parser = argparse.ArgumentParser(description="Lakehouse batch run: ingest, validate, train, score.")
    parser.add_argument("--dataset", required=True, choices=schemas.available())
    parser.add_argument("--input", action="append", required=True, help="file, folder, glob or s3:// URI (repeatable)")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--detector", default=None, help="override the declared detector (knn, lof, iforest, hbos, ensemble)")
    parser.add_argument("--contamination", type=float, default=None, help="override the declared contamination")
    parser.add_argument("--format", choices=source.FORMATS, default=None, help="read every file as this format (default: each file as what it is)")
    arguments = parser.parse_args(argv)
    from lakehouse import logs

    settings = get_settings()
    logs.configure(cache_dir=settings.cache_dir)
    overrides = {key: value for key, value in (("name", arguments.detector), ("contamination", arguments.contamination)) if value is not None}
    record = run_batch(
        arguments.dataset, arguments.input, settings=settings, run_id=arguments.run_id, detector=overrides or None,
        input_format=arguments.format,
    )
    log.info(
        "run %s succeeded: input %s = valid %s + quarantined %s + duplicates %s + conflicts %s; model v%s; watermark %s",
        record.run_id, record.input_rows, record.valid_rows, record.quarantined_rows, record.duplicate_rows, record.conflict_rows,
        record.model_version, record.watermark,
    )
    return record


if __name__ == "__main__":
    from lakehouse import process

    process.run_then_exit(run)
