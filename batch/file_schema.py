"""File-level schema checks before a run reads anything: a file that cannot match the declaration
is quarantined whole (batch/source.py) with the file, the column, the expected and the found type.

Parquet columns must exist and have a type that converts to the declared one (CSV headers are
checked in batch/source.py). JSON lines are checked record by record instead (a record that
lacks a field is quarantined with `<field>.not_null`), since each line carries its own fields.
"""

from __future__ import annotations

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
