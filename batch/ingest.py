"""Read raw input files (CSV, JSON lines, Parquet; local paths, globs or s3://) as text columns.

Every declared input column is read as a string so that validation sees exactly what arrived:
a wrong type becomes a quarantined record with a reason, never a silently nulled value. The
source file name is kept for lineage and for fields derived from it.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from schemas.declaration import Dataset

SOURCE_FILE = "_source_file"


def _text_schema(dataset: Dataset) -> T.StructType:
    # Derived fields are read too: a record that carries one (a replay of a file whose name is
    # gone) keeps its value, as in the speed layer's validator.
    return T.StructType(
        [T.StructField(field.input_name, T.StringType()) for field in dataset.input_fields]
        + [T.StructField(field.name, T.StringType()) for field in dataset.derived_fields]
    )


def read_raw(spark: SparkSession, dataset: Dataset, paths: list[str], *, input_format: str | None = None) -> DataFrame:
    """Raw records of the given files, one string column per declared input field."""
    input_format = input_format or dataset.format
    schema = _text_schema(dataset)
    if input_format == "csv":
        # Columns by header name: Spark applies a given schema to CSV columns by position, so a
        # file with its columns in another order would be misread. Without a schema every
        # column is read as text (batch/file_schema.py checks the headers before this).
        frame = spark.read.option("header", "true").option("mode", "PERMISSIVE").csv(paths)
        frame = frame.select(
            [(F.col(f"`{name}`") if name in frame.columns else F.lit(None).cast("string")).alias(name) for name in schema.fieldNames()]
        )
    elif input_format == "json":
        frame = spark.read.schema(schema).option("mode", "PERMISSIVE").json(paths)
    elif input_format in ("parquet", "delta"):
        # Typed columns are read as text and validated like any other input (a Delta source is
        # the speed layer's landing table; its extra columns are left out).
        frame = spark.read.parquet(*paths) if input_format == "parquet" else spark.read.format("delta").load(paths[0])
        frame = frame.select(
            [
                (F.col(field.name).cast("string") if field.name in frame.columns else F.lit(None).cast("string")).alias(field.name)
                for field in schema.fields
            ]
        )
    else:
        raise ValueError(f"unsupported input format {input_format!r}")
    return frame.withColumn(SOURCE_FILE, F.input_file_name())
