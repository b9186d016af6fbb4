"""A small Trino client: queries as DataFrames, statements, table registration.

It talks to whichever Trino the settings name (host, port, users, passwords, CA file): the local
server `lakehouse up` starts, or one you already run. Nothing here knows how a server is started.

Every failure comes back as a project error: QueryError (with the SQL and Trino's query id) when
Trino rejects a statement, ServiceError when the server does not answer at all.

Tables are written by Spark and delta-rs and only registered in Trino's "delta" catalog, whose
file metastore lives in the warehouse. Locations are passed to Trino as local:///absolute/path
for local folders (lakehouse.storage.trino_uri).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from typing import Any

import pandas as pd
import requests
import trino
import trino.auth
import trino.exceptions

from lakehouse.constants import CATALOG
from lakehouse import storage
from lakehouse.errors import ConfigurationError, QueryError, ServiceError
from lakehouse.settings import Settings
from lakehouse.storage import trino_uri

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_LOCATION = re.compile(r"^\s*location = '((?:[^']|'')*)'", re.MULTILINE)


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str


def credentials(settings: Settings, role: str = "admin") -> Credentials:
    """The user and password of a role: "admin" registers tables and creates views, "analyst"
    only reads. The password comes from the environment (LAKEHOUSE_TRINO_PASSWORD,
    LAKEHOUSE_TRINO_ANALYST_PASSWORD), else from the settings' password file."""
    user, given = settings.trino_login(role)
    if given:
        return Credentials(user, given)
    path = settings.trino_password_path
    stored = json.loads(path.read_text()) if path is not None and path.exists() else {}
    if user not in stored:
        where = f" or in {path}" if path is not None else ""
        raise ServiceError(
            "trino",
            f"no password for user {user!r}: set LAKEHOUSE_TRINO_{'ANALYST_' if role == 'analyst' else ''}PASSWORD{where}"
            + (" (the local Trino writes it on its first start: `lakehouse up`)" if settings.is_local else ""),
        )
    return Credentials(user, stored[user])


def connect(settings: Settings, *, role: str = "admin") -> trino.dbapi.Connection:
    """A DB-API connection over HTTPS, logged in as the role's user, catalog "delta", time zone UTC.
    Closing it closes its own HTTP session."""
    return _connect(settings, role, _new_http_session(settings))


def _connect(settings: Settings, role: str, http_session: requests.Session) -> trino.dbapi.Connection:
    login = credentials(settings, role)
    return trino.dbapi.connect(
        host=settings.trino_host,
        port=settings.trino_port,
        user=login.user,
        auth=trino.auth.BasicAuthentication(login.user, login.password),
        catalog=CATALOG,
        http_scheme="https",
        # Timestamps in results and in SQL such as current_timestamp do not depend on the machine.
        timezone="UTC",
        http_session=http_session,
    )


def _new_http_session(settings: Settings) -> requests.Session:
    session = requests.Session()
    # Trino is reached directly (loopback locally, the cluster's address otherwise): ignore any
    # HTTP proxy configured in the environment.
    session.trust_env = False
    ca_file = settings.trino_ca_path
    if ca_file is None:
        session.verify = True  # the system's trust store
    elif not ca_file.exists():
        raise ServiceError(
            "trino",
            f"{settings.trino_url}: no CA certificate at {ca_file}"
            + ("; the local Trino was never started: run `lakehouse up`" if settings.is_local else "; set LAKEHOUSE_TRINO_CA_FILE"),
        )
    else:
        session.verify = str(ca_file)
    return session


# query() and execute() share one HTTP session per server, CA file and user for the process: its
# keep-alive connections spare each statement a TCP and TLS handshake, about 100 ms of a 300 ms
# query on the loaded 2-core machine (docs/benchmarks.md, "Serving"). Keyed by user because the
# client's basic authentication is set on the session. requests' pool is safe across threads.
_SHARED_SESSIONS: dict[tuple[str, str, str], requests.Session] = {}


def _shared_connection(settings: Settings, role: str) -> trino.dbapi.Connection:
    key = (settings.trino_url, str(settings.trino_ca_path), settings.trino_login(role)[0])
    if key not in _SHARED_SESSIONS:
        _SHARED_SESSIONS[key] = _new_http_session(settings)
    # Not closed after use: a trino Connection holds nothing but its HTTP session, kept here.
    return _connect(settings, role, _SHARED_SESSIONS[key])


def query(
    sql: str, params: Sequence[Any] | None = None, *, settings: Settings, role: str = "admin"
) -> pd.DataFrame:
    """Run a query and return all its rows; params fill the ? placeholders."""
    columns, rows = _run(_shared_connection(settings, role), sql, params, settings)
    return pd.DataFrame.from_records(rows, columns=columns)


def execute(
    sql: str, params: Sequence[Any] | None = None, *, settings: Settings, role: str = "admin"
) -> None:
    """Run a statement (DDL, CALL, ...) to completion."""
    _run(_shared_connection(settings, role), sql, params, settings)


def register_table(schema: str, table: str, location: str, *, settings: Settings) -> bool:
    """Make an existing Delta table queryable as delta.<schema>.<table>; True if anything changed.

    Idempotent: a table already registered at the same location is left alone. A registration
    at another location, or one whose table Trino cannot read any more (folder deleted), is
    replaced. A folder deleted and written again at the same location needs nothing: the catalog
    reads each table's Delta log afresh on every query (delta.metadata.cache-ttl=0s).
    """
    schema, table = _checked_name(schema), _checked_name(table)
    uri = trino_uri(location)
    schema_uri = trino_uri(f"{settings.warehouse.rstrip('/')}/{schema}")
    with closing(connect(settings)) as connection:
        _run(
            connection,
            f'CREATE SCHEMA IF NOT EXISTS {CATALOG}."{schema}" WITH (location = {_literal(schema_uri)})',
            None,
            settings,
        )
        registered = _registered_location(connection, schema, table, settings)
        if registered == uri:
            return False
        if registered is not None:
            log.info("re-registering %s.%s: was %s, now %s", schema, table, registered, uri)
            _run(
                connection,
                f"CALL {CATALOG}.system.unregister_table("
                f"schema_name => {_literal(schema)}, table_name => {_literal(table)})",
                None,
                settings,
            )
        register = (
            f"CALL {CATALOG}.system.register_table(schema_name => {_literal(schema)}, "
            f"table_name => {_literal(table)}, table_location => {_literal(uri)})"
        )
        try:
            _run(connection, register, None, settings)
        except QueryError:
            # Another process may have registered the same table meanwhile: fine if it agrees.
            if _registered_location(connection, schema, table, settings) != uri:
                raise
            return False
    return True


def register_warehouse(settings: Settings) -> list[str]:
    """Register every Delta table found as <warehouse>/<schema>/<table>/_delta_log (a local folder
    or s3://); return their names."""
    registered: list[str] = []
    for schema, table in storage.list_tables(settings.warehouse):
        if not (_NAME.match(schema) and _NAME.match(table)):
            log.warning("skipping %s/%s: not a valid Trino schema and table name", schema, table)
            continue
        register_table(schema, table, settings.table_uri(schema, table), settings=settings)
        registered.append(f"{schema}.{table}")
    return registered


def _registered_location(connection: trino.dbapi.Connection, schema: str, table: str, settings: Settings) -> str | None:
    """The location a registered table points at, "" if Trino cannot read it, None if absent."""
    _, rows = _run(
        connection,
        f"SELECT 1 FROM {CATALOG}.information_schema.tables "
        "WHERE table_schema = ? AND table_name = ? AND table_type = 'BASE TABLE'",
        [schema, table],
        settings,
    )
    if not rows:
        return None
    try:
        _, rows = _run(connection, f'SHOW CREATE TABLE {CATALOG}."{schema}"."{table}"', None, settings)
    except QueryError as error:
        log.info("%s.%s is registered but unreadable: %s", schema, table, error)
        return ""
    match = _LOCATION.search(rows[0][0])
    return match.group(1).replace("''", "'") if match else ""


def _run(
    connection: trino.dbapi.Connection, sql: str, params: Sequence[Any] | None, settings: Settings
) -> tuple[list[str], list[list[Any]]]:
    """Run one statement to completion; return its column names and rows."""
    with _project_errors(sql, settings):
        cursor = connection.cursor()
        try:
            cursor.execute(sql, list(params) if params is not None else None)
            # Trino finishes a statement only once its results are consumed, even a CALL.
            rows = cursor.fetchall()
            columns = [column[0] for column in cursor.description or []]
        finally:
            cursor.close()
    return columns, rows


@contextmanager
def _project_errors(sql: str, settings: Settings) -> Iterator[None]:
    try:
        yield
    except trino.exceptions.TrinoQueryError as error:
        raise QueryError(f"{error.error_name}: {error.message}", sql=sql, query_id=error.query_id) from error
    except trino.exceptions.HttpError as error:
        if "401" in str(error):
            raise ServiceError("trino", f"{settings.trino_url} refused the login (wrong user or password): {error}") from error
        raise ServiceError("trino", f"{settings.trino_url} answered with an HTTP error: {error}") from error
    except requests.exceptions.SSLError as error:
        raise ServiceError(
            "trino", f"{settings.trino_url}: its certificate does not verify against "
            f"{settings.trino_ca_path or 'the system trust store'} ({error})"
        ) from error
    except (trino.exceptions.TrinoConnectionError, requests.exceptions.ConnectionError) as error:
        raise ServiceError(
            "trino", f"not reachable at {settings.trino_url}; start it with `lakehouse up` ({error})"
        ) from error


def _checked_name(name: str) -> str:
    """Trino folds unquoted names to lower case; accept only names that survive that unchanged."""
    if not _NAME.match(name):
        raise ConfigurationError(f"{name!r} is not a valid Trino schema or table name (lower case, digits, _)")
    return name


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"

