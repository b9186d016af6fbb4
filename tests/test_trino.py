"""The local Trino server and the serving client: configuration, queries, errors, registration."""

from __future__ import annotations

import json

import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from deltalake import write_deltalake

from local_services import jvm
from lakehouse.errors import QueryError, ServiceError
from lakehouse.storage import METASTORE_FOLDER, metastore_uri, trino_uri
from local_services.trino import TrinoServer
from lakehouse.settings import Settings
from serving import trino_client

pytestmark = pytest.mark.trino

QUERY_ID = re.compile(r"^\d{8}_\d{6}_\d{5}_\w{5}$")


# Helpers and fixtures ----------------------------------------------------------------------
def events_frame() -> pd.DataFrame:
    """A small frame with the column types the lakehouse stores, timestamps included."""
    return pd.DataFrame(
        {
            "event_id": ["e1", "e2", "e3"],
            "entity": ["sensor-a", "sensor-b", "sensor-a"],
            # Naive timestamps become Delta timestampNtz, read by Trino as timestamp(6).
            "recorded_at": pd.to_datetime(
                ["2024-03-01 08:00:00", "2024-03-01 08:00:01.250001", "2024-03-02 23:59:59.999999"], format="ISO8601"
            ),
            # UTC timestamps become Delta timestamp, read by Trino as timestamp(3) with time zone,
            # so these values keep to milliseconds (see test_utc_timestamps_are_rounded_to_milliseconds).
            "event_time": pd.to_datetime(
                ["2024-03-01 08:00:00", "2024-03-01 08:00:01.250", "2024-03-02 23:59:59.999"], format="ISO8601"
            ).tz_localize("UTC"),
            "value": [1.5, -2.25, 1e6],
            "count": [1, 2, 3],
            "is_anomaly": [False, True, False],
        }
    )


def write_table(settings: Settings, schema: str, table: str, frame: pd.DataFrame, mode: str = "error") -> str:
    location = settings.table_uri(schema, table)
    write_deltalake(location, frame, mode=mode)
    return location


def read_back(schema: str, table: str, settings: Settings) -> pd.DataFrame:
    return trino_client.query(f'SELECT * FROM delta."{schema}"."{table}" ORDER BY 1', settings=settings)


def drop_schema(schema: str, settings: Settings, server: TrinoServer) -> None:
    """Unregister the schema's tables and drop it, leaving a reused server's metastore as it was."""
    tables = trino_client.query(
        "SELECT table_name FROM delta.information_schema.tables WHERE table_schema = ?",
        [schema],
        settings=settings,
    )
    for table in tables["table_name"]:
        trino_client.execute(
            f"CALL delta.system.unregister_table(schema_name => '{schema}', table_name => '{table}')",
            settings=settings,
        )
    trino_client.execute(f'DROP SCHEMA IF EXISTS delta."{schema}"', settings=settings)
    # The file metastore leaves the emptied folders of what it dropped behind.
    metastore = server.served_metastore()
    if metastore and metastore.startswith("local://"):
        folder = Path(metastore.removeprefix("local://")) / schema
        if folder.is_dir() and not any(path.is_file() for path in folder.rglob("*")):
            shutil.rmtree(folder)


@pytest.fixture
def settings(trino_server: TrinoServer) -> Settings:
    return trino_server.settings


@pytest.fixture
def schema(trino_server: TrinoServer) -> Iterator[str]:
    """A schema name of this test's own, dropped (with its registrations) afterwards."""
    name = f"test_{uuid.uuid4().hex[:10]}"
    yield name
    drop_schema(name, trino_server.settings, trino_server)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Configuration (no server needed) ----------------------------------------------------------
def test_local_locations_become_local_uris(tmp_path: Path) -> None:
    assert trino_uri(str(tmp_path / "silver")) == f"local://{tmp_path}/silver"
    assert trino_uri(f"file://{tmp_path}/silver") == f"local://{tmp_path}/silver"
    assert trino_uri(f"file:{tmp_path}/silver") == f"local://{tmp_path}/silver"
    assert trino_uri("s3://bucket/warehouse/silver") == "s3://bucket/warehouse/silver"


def test_configuration_is_rendered_with_every_placeholder_filled(tmp_path: Path) -> None:
    # Folders of its own: rendering into the session server's etc/ would delete its password file.
    settings = Settings(work_dir=tmp_path / "work", services_root=str(tmp_path / "services"), warehouse=str(tmp_path / "warehouse"),
                        trino_port=18123, trino_heap="3G")
    server = TrinoServer(settings)
    server.render_configuration()
    rendered = {path.relative_to(server.etc_dir).as_posix(): path.read_text() for path in server.etc_dir.rglob("*") if path.is_file()}
    assert set(rendered) == {"jvm.config", "config.properties", "node.properties", "log.properties", "catalog/delta.properties",
                             "password-authenticator.properties", "access-control.properties", "rules.json"}
    assert not any("${" in text for text in rendered.values())
    # Clients on HTTPS at trino_port; plain HTTP one port up, for the probe only.
    assert "http-server.https.port=18123" in rendered["config.properties"]
    assert "http-server.http.port=18124" in rendered["config.properties"]
    assert "http-server.authentication.type=PASSWORD" in rendered["config.properties"]
    rules = json.loads(rendered["rules.json"])
    assert {rule["user"] for rule in rules["catalogs"]} == {settings.trino_user, settings.trino_analyst_user}
    assert all((path.stat().st_mode & 0o077) == 0 for path in server.etc_dir.rglob("*") if path.is_file())
    assert "-Xmx3G" in rendered["jvm.config"].splitlines()
    assert "node.bind-ip=127.0.0.1" in rendered["node.properties"]
    assert f"hive.metastore.catalog.dir=local://{tmp_path}/warehouse/{METASTORE_FOLDER}" in rendered["catalog/delta.properties"]
    assert server.served_metastore() == metastore_uri(settings)


def test_command_runs_trino_on_java_25_without_missing_modules(tmp_path: Path) -> None:
    server = TrinoServer(Settings(work_dir=tmp_path / "work", services_root=str(tmp_path / "services"), warehouse=str(tmp_path / "warehouse")))
    server.render_configuration()
    command = server.command()
    assert command[0] == jvm.java25()
    assert command[-1] == "io.trino.server.TrinoServer"
    assert not any("jdk.incubator.vector" in option for option in command)
    assert f"-Dconfig={server.etc_dir / 'config.properties'}" in command
    assert "-Dnode.environment=lakehouse" in command


# Server --------------------------------------------------------------------------------------
def test_server_answers_select_one(trino_server: TrinoServer, settings: Settings) -> None:
    assert trino_server.probe()
    frame = trino_client.query("SELECT 1 AS one", settings=settings)
    assert frame.to_dict("records") == [{"one": 1}]


def test_query_parameters(settings: Settings) -> None:
    frame = trino_client.query("SELECT ? + 1 AS next, ? AS word", [41, "it's"], settings=settings)
    assert frame.to_dict("records") == [{"next": 42, "word": "it's"}]


# Errors ----------------------------------------------------------------------------------------
def test_bad_sql_raises_query_error_with_query_id(settings: Settings) -> None:
    sql = "SELEC 1"
    with pytest.raises(QueryError) as caught:
        trino_client.query(sql, settings=settings)
    assert caught.value.sql == sql
    assert caught.value.query_id and QUERY_ID.match(caught.value.query_id)
    assert "SYNTAX_ERROR" in str(caught.value) and caught.value.query_id in str(caught.value)


def test_missing_table_raises_query_error(settings: Settings) -> None:
    with pytest.raises(QueryError, match="TABLE_NOT_FOUND|SCHEMA_NOT_FOUND") as caught:
        trino_client.execute("SELECT * FROM delta.no_such_schema.no_such_table", settings=settings)
    assert caught.value.query_id


def test_closed_port_raises_service_error() -> None:
    settings = Settings(trino_port=free_port())
    with pytest.raises(ServiceError) as caught:
        trino_client.query("SELECT 1", settings=settings)
    assert caught.value.service == "trino"
    assert settings.trino_url in str(caught.value) and "lakehouse up" in str(caught.value)


# Registration and round trips -------------------------------------------------------------------
def test_delta_rs_table_reads_back_with_the_same_rows_and_values(settings: Settings, schema: str) -> None:
    frame = events_frame()
    location = write_table(settings, schema, "events", frame)
    assert trino_client.register_table(schema, "events", location, settings=settings) is True

    result = read_back(schema, "events", settings)
    pd.testing.assert_frame_equal(result, frame, check_dtype=False)
    assert result["recorded_at"].dtype == "datetime64[ns]"
    assert str(result["event_time"].dtype) == "datetime64[ns, UTC]"
    types = trino_client.query(
        "SELECT column_name, data_type FROM delta.information_schema.columns "
        "WHERE table_schema = ? AND table_name = 'events'",
        [schema],
        settings=settings,
    )
    assert dict(zip(types["column_name"], types["data_type"])) == {
        "event_id": "varchar",
        "entity": "varchar",
        "recorded_at": "timestamp(6)",
        "event_time": "timestamp(3) with time zone",
        "value": "double",
        "count": "bigint",
        "is_anomaly": "boolean",
    }


def test_utc_timestamps_are_rounded_to_milliseconds(settings: Settings, schema: str) -> None:
    """Trino reads a Delta (UTC) timestamp as timestamp(3) with time zone, rounding microseconds.

    Comparisons in Trino SQL (such as event_time <= watermark) therefore see values up to half a
    millisecond away from what Spark and delta-rs wrote; timestampNtz keeps all six digits.
    """
    instants = pd.DataFrame(
        {
            "event_time": [pd.Timestamp("2024-03-01 08:00:01.250999", tz="UTC")],
            "recorded_at": [pd.Timestamp("2024-03-01 08:00:01.250999")],
        }
    )
    location = write_table(settings, schema, "instants", instants)
    trino_client.register_table(schema, "instants", location, settings=settings)
    result = read_back(schema, "instants", settings)
    assert result["event_time"][0] == pd.Timestamp("2024-03-01 08:00:01.251", tz="UTC")
    assert result["recorded_at"][0] == pd.Timestamp("2024-03-01 08:00:01.250999")


def test_new_commits_are_seen_on_the_next_query(settings: Settings, schema: str) -> None:
    location = write_table(settings, schema, "events", events_frame().iloc[:1])
    trino_client.register_table(schema, "events", location, settings=settings)
    assert len(read_back(schema, "events", settings)) == 1
    write_deltalake(location, events_frame().iloc[1:], mode="append")
    assert len(read_back(schema, "events", settings)) == 3


def test_registering_twice_is_idempotent(settings: Settings, schema: str) -> None:
    location = write_table(settings, schema, "events", events_frame())
    assert trino_client.register_table(schema, "events", location, settings=settings) is True
    assert trino_client.register_table(schema, "events", location, settings=settings) is False
    # The same folder spelled as a file:// URI is the same location.
    assert trino_client.register_table(schema, "events", f"file://{location}", settings=settings) is False
    tables = trino_client.query(
        "SELECT table_name FROM delta.information_schema.tables WHERE table_schema = ?", [schema], settings=settings
    )
    assert tables["table_name"].tolist() == ["events"]
    assert len(read_back(schema, "events", settings)) == 3


def test_registering_another_location_replaces_the_registration(settings: Settings, schema: str) -> None:
    first = write_table(settings, schema, "events", events_frame())
    second = write_table(settings, schema, "events_v2", events_frame().iloc[:2])
    trino_client.register_table(schema, "events", first, settings=settings)
    assert trino_client.register_table(schema, "events", second, settings=settings) is True
    assert len(read_back(schema, "events", settings)) == 2


def test_table_folder_deleted_and_written_again_reads_the_new_table(settings: Settings, schema: str) -> None:
    location = write_table(settings, schema, "events", events_frame())
    trino_client.register_table(schema, "events", location, settings=settings)
    assert len(read_back(schema, "events", settings)) == 3

    shutil.rmtree(location)
    with pytest.raises(QueryError):
        read_back(schema, "events", settings)
    replacement = pd.DataFrame({"event_id": ["z9"], "note": ["rewritten"]})
    write_table(settings, schema, "events", replacement)
    trino_client.register_table(schema, "events", location, settings=settings)
    pd.testing.assert_frame_equal(read_back(schema, "events", settings), replacement)


def test_registering_a_folder_without_a_table_raises_query_error(settings: Settings, schema: str, tmp_path: Path) -> None:
    with pytest.raises(QueryError, match="No transaction log found"):
        trino_client.register_table(schema, "nothing", str(tmp_path), settings=settings)


def test_register_warehouse_finds_every_table(trino_server: TrinoServer, tmp_path: Path) -> None:
    # A warehouse of its own, so that tables written by other tests are not picked up.
    settings = Settings(warehouse=str(tmp_path / "warehouse"), trino_port=trino_server.settings.trino_port)
    schemas = sorted(f"test_{uuid.uuid4().hex[:10]}" for _ in range(2))
    try:
        write_table(settings, schemas[0], "events", events_frame())
        write_table(settings, schemas[0], "scores", events_frame().iloc[:1])
        write_table(settings, schemas[1], "events", events_frame().iloc[:2])
        (tmp_path / "warehouse" / schemas[1] / "not_a_table").mkdir()
        (tmp_path / "warehouse" / METASTORE_FOLDER / "ignored").mkdir(parents=True)

        found = trino_client.register_warehouse(settings)

        assert found == [f"{schemas[0]}.events", f"{schemas[0]}.scores", f"{schemas[1]}.events"]
        assert [len(read_back(*name.split("."), settings)) for name in found] == [3, 1, 2]
        assert trino_client.register_warehouse(settings) == found
    finally:
        for name in schemas:
            drop_schema(name, settings, trino_server)


@pytest.mark.spark
def test_spark_table_reads_back(spark, settings: Settings, schema: str) -> None:
    # Spark has no timestampNtz from pandas: it writes every timestamp as a (UTC) timestamp,
    # which Trino rounds to milliseconds, so only the millisecond column is compared.
    frame = events_frame().drop(columns=["recorded_at"])
    location = settings.table_uri(schema, "events")
    spark.createDataFrame(frame).write.format("delta").save(location)
    trino_client.register_table(schema, "events", location, settings=settings)
    pd.testing.assert_frame_equal(read_back(schema, "events", settings), frame, check_dtype=False)
