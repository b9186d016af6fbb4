"""File-level schema checks before a run reads anything: a file that cannot match the declaration
stops the run with the file, the column, the expected and the found type.

CSV headers must name every required input column; Parquet columns must exist and have a type
that converts to the declared one. JSON lines are checked record by record instead (a record that
lacks a field is quarantined with `<field>.not_null`), since each line carries its own fields.
"""

from __future__ import annotations

import csv
import io
import os

import pyarrow as pa
import pyarrow.parquet as pq

from lakehouse import storage
from lakehouse.errors import SchemaMismatchError
from schemas.declaration import Dataset

# Parquet types each declared type accepts (text is accepted everywhere: it is validated later).
_COMPATIBLE = {
    "double": (pa.types.is_floating, pa.types.is_integer, pa.types.is_decimal),
    "long": (pa.types.is_integer,),
    "boolean": (pa.types.is_boolean,),
    "timestamp": (pa.types.is_timestamp, pa.types.is_date),
    "string": (),
}


def check_csv_header(dataset: Dataset, path: str) -> list[str]:
    with storage.open_input_file(path) as stream:
        first_line = stream.read(64 * 1024).decode("utf-8", errors="replace").splitlines()[:1]
    header = next(csv.reader(io.StringIO(first_line[0]))) if first_line else []
    for field in dataset.input_fields:
        if field.required and field.input_name not in header:
            raise SchemaMismatchError(path, field.input_name, f"{field.type} column in the CSV header",
                                      f"no such column; header is {header}")
    return header


def check_parquet_schema(dataset: Dataset, path: str) -> None:
    with storage.open_input_file(path) as stream:
        schema = pq.read_schema(stream)
    for field in dataset.input_fields:
        if field.input_name not in schema.names:
            if field.required:
                raise SchemaMismatchError(path, field.input_name, field.type, "no such column")
            continue
        found = schema.field(field.input_name).type
        accepted = _COMPATIBLE[field.type]
        if not (pa.types.is_string(found) or pa.types.is_large_string(found) or any(test(found) for test in accepted)):
            raise SchemaMismatchError(path, field.input_name, field.type, str(found))


def check_files(dataset: Dataset, paths: list[str], input_format: str) -> None:
    """Check every concrete file (folders and s3:// prefixes are checked by Spark as it reads)."""
    first_header: tuple[str, list[str]] | None = None
    for path in paths:
        if path.endswith("/") or ("://" not in path and not os.path.isfile(path)):
            continue
        if input_format == "csv":
            header = check_csv_header(dataset, path)
            # One Spark read takes the column names from one file's header for all of them.
            if first_header is None:
                first_header = (path, header)
            elif header != first_header[1]:
                raise SchemaMismatchError(path, "(header)", f"the columns of {first_header[0]}: {','.join(first_header[1])}",
                                          f"{','.join(header)}; read files with other columns in a run of their own")
        elif input_format == "parquet":
            check_parquet_schema(dataset, path)
