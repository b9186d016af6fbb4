"""The batch and speed layers against S3: a real S3 API server (S3Proxy) started by the tests.

The jobs run as a user runs them, `lakehouse batch run` / `lakehouse speed run` in their own
process, with nothing but the standard AWS_* variables and an s3:// warehouse. The checks read
the tables back through delta-rs and the model artifacts through boto3, over the same server.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import botocore.exceptions
import pytest

from batch import run_log
from lakehouse import registry, storage, system_tables
from lakehouse.constants import HOT_SCORES, SILVER
from local_services.s3 import client_environment
from lakehouse.settings import Settings, get_settings

from fixtures_engines import make_sensor_inputs

pytestmark = pytest.mark.spark

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[1]
LAKEHOUSE = str(Path(sys.executable).parent / "lakehouse")


@pytest.fixture
def s3_lakehouse(s3_server, monkeypatch):
    """An s3:// warehouse of its own on the test server; this process's AWS_* point at it too."""
    settings = get_settings()
    warehouse = f"s3://{settings.s3_bucket}/warehouse-{uuid.uuid4().hex[:8]}"
    for key, value in client_environment(settings).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LAKEHOUSE_WAREHOUSE", warehouse)
    get_settings.cache_clear()
    yield get_settings()
    monkeypatch.undo()
    get_settings.cache_clear()


def _lakehouse(*args: str) -> subprocess.CompletedProcess:
    began = time.monotonic()
    result = subprocess.run(
        [LAKEHOUSE, *args], cwd=PROJECT_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=900
    )
    log.info("lakehouse %s took %.1fs", " ".join(args[:2]), time.monotonic() - began)
    assert result.returncode == 0, f"lakehouse {' '.join(args)} failed:\n{result.stderr[-4000:]}"
    return result


def _upload(settings: Settings, files: list[Path], prefix: str) -> None:
    client = boto3.client("s3")
    for path in files:
        client.upload_file(str(path), settings.s3_bucket, f"{prefix}/{path.name}")


def test_batch_then_speed_on_an_s3_warehouse(s3_lakehouse, tmp_path):
    settings = s3_lakehouse
    inputs = make_sensor_inputs(tmp_path, sensors=2, days=2.0)
    landing = f"{settings.warehouse.split('://', 1)[1].split('/', 1)[1]}-landing/history"
    _upload(settings, inputs.history_files, landing)
    source = f"s3://{settings.s3_bucket}/{landing}/"

    _lakehouse("batch", "run", "--dataset", "sensor_events", "--input", source)

    record = run_log.runs(settings, "sensor_events").iloc[-1]
    assert record.status == system_tables.STATUS_SUCCEEDED
    # The prefix was listed to its two objects, and every record is accounted for.
    assert sorted(json.loads(record.inputs)) == sorted(f"{source}{path.name}" for path in inputs.history_files)
    assert record.input_rows == len(inputs.history.records)
    assert record.input_rows == record.valid_rows + record.quarantined_rows + record.duplicate_rows
    silver_uri = settings.table_uri("sensor_events", SILVER)
    assert silver_uri.startswith("s3://")
    silver = storage.open_table(silver_uri).to_pandas()
    assert len(silver) == record.silver_rows == record.valid_rows

    # Model artifacts live beside the tables, in the bucket, and load back through boto3.
    models = registry.list_models(settings, "sensor_events")
    assert len(models) == 2 and models.artifact_uri.str.startswith(settings.warehouse + "/").all()
    loaded = registry.load_latest(settings, "sensor_events")
    assert set(loaded) == set(silver.entity_id)

    # (A re-run of the same input changes no table: tests/test_batch.py checks it on the local
    # warehouse; the S3 path runs the same code, so it is not run a second time here.)

    # The speed layer seeds its state from silver on S3 and upserts the hot table there.
    _lakehouse("speed", "run", "--dataset", "sensor_events", "--input", str(inputs.recent_file))
    hot = storage.open_table(settings.table_uri("sensor_events", HOT_SCORES)).to_pandas()
    valid_recent = {r["event_id"] for r in inputs.recent.records} - set(inputs.recent.bad)
    assert set(hot.event_id) == valid_recent

    # Trino serves the S3 warehouse through its native S3 file system, keys from the environment;
    # a Trino of its own, since the session's serves the local test warehouse.
    from local_services.trino import TrinoServer
    from serving import trino_client, views

    trino_settings = settings.model_copy(update={"services_root": str(tmp_path / "services"), "trino_port": settings.trino_port + 300})
    server = TrinoServer(trino_settings)
    server.start()
    try:
        catalog = (server.etc_dir / "catalog" / "delta.properties").read_text()
        assert "fs.native-s3.enabled=true" in catalog and "s3.path-style-access=true" in catalog
        assert "AWS_SECRET" not in catalog and settings.s3_secret_key not in catalog
        views.refresh("sensor_events", trino_settings)
        assert {"sensor_events.silver", "sensor_events.hot_scores", "lakehouse.batch_runs"} <= set(trino_client.register_warehouse(trino_settings))
        merged = trino_client.query("SELECT layer, count(*) AS n FROM sensor_events.merged GROUP BY layer",
                                    settings=trino_settings, role="analyst")
        batch_rows = len(storage.open_table(settings.table_uri("sensor_events", "batch_scores")).to_pandas())
        assert dict(zip(merged.layer, merged.n)) == {"batch": batch_rows, "speed": len(hot)}
    finally:
        server.stop()


def test_a_wrong_secret_key_is_refused(s3_lakehouse, monkeypatch):
    storage.write_bytes(f"{s3_lakehouse.warehouse}/probe.bin", b"ok")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError, match="SignatureDoesNotMatch|AccessDenied|Forbidden"):
        storage.read_bytes(f"{s3_lakehouse.warehouse}/probe.bin")
