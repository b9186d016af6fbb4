"""Engine schemas derived from a declaration: Spark, Arrow, Trino."""

from __future__ import annotations

import pyarrow as pa

from schemas.declaration import Dataset

_ARROW = {
    "string": pa.string(),
    "double": pa.float64(),
    "long": pa.int64(),
    "boolean": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
_SPARK_DDL = {
    "string": "STRING",
    "double": "DOUBLE",
    "long": "BIGINT",
    "boolean": "BOOLEAN",
    "timestamp": "TIMESTAMP",
}
# How Trino's Delta Lake connector shows each Delta type.
_TRINO = {
    "string": "varchar",
    "double": "double",
    "long": "bigint",
    "boolean": "boolean",
    "timestamp": "timestamp(3) with time zone",
}


def arrow_schema(dataset: Dataset) -> pa.Schema:
    return pa.schema(
        [pa.field(field.name, _ARROW[field.type], nullable=not field.required) for field in dataset.fields]
    )


def arrow_type(type_name: str) -> pa.DataType:
    return _ARROW[type_name]


def spark_ddl(dataset: Dataset) -> str:
    """Spark DDL string of the typed record, e.g. 'event_id STRING NOT NULL, ...'."""
    return ", ".join(
        f"{field.name} {_SPARK_DDL[field.type]}{' NOT NULL' if field.required else ''}"
        for field in dataset.fields
    )


def spark_type(type_name: str) -> str:
    return _SPARK_DDL[type_name]


def trino_columns(dataset: Dataset) -> dict[str, str]:
    """Column name -> Trino type, as Trino shows a Delta table written from this declaration."""
    return {field.name: _TRINO[field.type] for field in dataset.fields}
