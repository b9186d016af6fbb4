"""Typed errors. Failures from outside (Trino, Kafka, Spark, files) become these, carrying context."""

from __future__ import annotations


class LakehouseError(Exception):
    """Base of every error the project raises on purpose."""


class ConfigurationError(LakehouseError):
    """Settings or a dataset declaration is invalid."""


class SetupError(LakehouseError):
    """A dependency (venv, JVM artifact, Java) is missing; the message says how to install it."""


class ServiceError(LakehouseError):
    """A local service (Trino, Kafka) failed to start, stop or answer."""

    def __init__(self, service: str, message: str) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service


class SchemaMismatchError(LakehouseError):
    """An input file does not match the dataset declaration."""

    def __init__(self, path: str, column: str, expected: str, found: str) -> None:
        super().__init__(
            f"{path}: column {column!r} expected {expected}, found {found}"
        )
        self.path, self.column, self.expected, self.found = path, column, expected, found


class QueryError(LakehouseError):
    """A SQL query failed in Trino; carries the query id when Trino assigned one."""

    def __init__(self, message: str, *, sql: str, query_id: str | None = None) -> None:
        detail = f" (query {query_id})" if query_id else ""
        super().__init__(f"{message}{detail}\nSQL: {sql.strip()}")
        self.sql, self.query_id = sql, query_id


class RunError(LakehouseError):
    """A batch or speed run failed; carries the run id."""

    def __init__(self, run_id: str, message: str) -> None:
        super().__init__(f"run {run_id}: {message}")
        self.run_id = run_id


class CountMismatchError(LakehouseError):
    """The records counted in a run's source and the records it accounted for (valid, quarantined,
    duplicates) disagree: something was lost or invented on the way."""


class ModelNotFoundError(LakehouseError):
    """No registered model exists for a dataset (train with `lakehouse batch run` first)."""
