"""Read raw input files (CSV, JSON lines, Parquet; local paths, globs or s3://) as text columns.

CSV and JSON lines are parsed by batch/source.py (the line as it arrived, its number and any
record-level rule it broke travel with the record); Parquet and Delta by Spark.

Every declared input column is read as a string so that validation sees exactly what arrived:
a wrong type becomes a quarantined record with a reason, never a silently nulled value. The
source file name is kept for lineage and for fields derived from it.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from batch import source
from batch.source import SOURCE_FILE
from lakehouse import storage
from schemas.declaration import Dataset

__all__ = ["SOURCE_FILE", "read_files", "read_raw"]


def read_raw(spark: SparkSession, dataset: Dataset, paths: list[str], *, input_format: str | None = None) -> DataFrame:
    """Raw records of the given files, one string column per declared input field.

    Each file is read as what it is (batch/source.py detects the format), unless `input_format`
    forces one; "delta" reads a Delta table (the speed layer's landing table).
    """
    if input_format == "delta":
        return _read_typed(spark.read.format("delta").load(paths[0]), dataset, row_numbers=False)
    files = []
    for path in paths:
        with storage.open_input_file(path) as stream:
            head = stream.read(source.RAW_PREFIX_BYTES)
        files.append(source.FileScan(path, source.source_name(path), input_format or source.detect_format(path, head, dataset.format)))
    return read_files(spark, dataset, files)


def read_files(spark: SparkSession, dataset: Dataset, files: list[source.FileScan]) -> DataFrame:
    """The records of scanned files (each with its format): CSV and JSON lines parsed file by file in
    Spark's Python workers (batch/source.py), Parquet by Spark; one frame of text columns."""
    text_files = [(scan.path, scan.format, scan.source) for scan in files if scan.format in ("csv", "json")]
    parquet_files = [scan.path for scan in files if scan.format == "parquet"]
    unknown = [scan for scan in files if scan.format not in source.FORMATS]
    if unknown:
        raise ValueError(f"unsupported input format {unknown[0].format!r} for {unknown[0].path}")
    schema = source.parsed_schema(dataset)
    frames: list[DataFrame] = []
    if text_files:
        listing = spark.createDataFrame(text_files, "path string, format string, source string")
        listing = listing.repartition(min(len(text_files), spark.sparkContext.defaultParallelism))

        def parse(batches):
            for batch in batches:
                for path, file_format, name in zip(*batch.to_pydict().values()):
                    yield from source.parse_file(dataset, path, file_format, name)

        frames.append(listing.mapInArrow(parse, from_arrow_schema(schema)))
    if parquet_files:
        frames.append(_read_typed(spark.read.parquet(*parquet_files), dataset))
    if not frames:
        return spark.createDataFrame([], from_arrow_schema(schema))
    frame = frames[0]
    for other in frames[1:]:
        frame = frame.unionByName(other)
    return frame


def _read_typed(frame: DataFrame, dataset: Dataset, *, row_numbers: bool = True) -> DataFrame:
    # Typed columns are read as text and validated like any other input (a Delta source is the
    # speed layer's landing table; its extra columns are left out). A Parquet record's line number
    # is its row in the file (1-based), so its quarantine row names where it was, as a CSV line's
    # does; the landing table's rows have no such place.
    columns = [
        (F.col(f"`{name}`").cast("string") if name in frame.columns else F.lit(None).cast("string")).alias(name)
        for name in source.record_columns(dataset)
    ]
    return frame.select(
        *columns,
        F.input_file_name().alias(SOURCE_FILE),
        F.lit(None).cast("string").alias(source.LINE),
        (F.col("_metadata.row_index") + 1 if row_numbers else F.lit(None).cast("long")).alias(source.LINE_NUMBER),
        F.lit(None).cast("string").alias(source.PARSE_RULE),
        F.lit(None).cast("string").alias(source.PARSE_ERROR),
    )
