"""Shared pytest set-up: an isolated environment and the session-scoped local services.

Tests never touch what a developer has running: before anything is imported that reads settings,
LAKEHOUSE_* variables point the warehouse and the services' folders at a temporary directory and
move the services to ports of their own. The JVM cache stays the project's (.work/cache), so no
test downloads anything twice.

Set LAKEHOUSE_TEST_KEEP_SERVICES=1 to keep the test services (and their warehouse) in
.work/test-services between runs: the next run reuses them and skips their start-up.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Fixtures for Spark/Beam and for the local services live in their own modules.
pytest_plugins = ["fixtures_engines", "fixtures_services"]

KEEP_SERVICES = os.environ.get("LAKEHOUSE_TEST_KEEP_SERVICES") == "1"
_PROJECT_ROOT = Path(__file__).resolve().parents[1]
_TEST_PORTS = {
    "LAKEHOUSE_TRINO_PORT": "18180",
    "LAKEHOUSE_KAFKA_PORT": "19192",
    "LAKEHOUSE_KAFKA_CONTROLLER_PORT": "19193",
    "LAKEHOUSE_S3_PORT": "19190",
    "LAKEHOUSE_FLINK_JOB_PORT": "18190",
    # The cluster mode's processes (tests/test_cluster.py).
    "LAKEHOUSE_SPARK_MASTER_PORT": "17177",
    "LAKEHOUSE_SPARK_MASTER_UI_PORT": "18170",
    "LAKEHOUSE_SPARK_WORKER_UI_PORT": "18171",
    "LAKEHOUSE_FLINK_REST_PORT": "18185",
    "LAKEHOUSE_FLINK_RPC_PORT": "16223",
    "LAKEHOUSE_FLINK_CLUSTER_JOB_PORT": "18197",
    "LAKEHOUSE_BEAM_WORKER_POOL_PORT": "15100",
    "LAKEHOUSE_TRINO_WORKER_PORT": "18183",
}
_temporary_root: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _temporary_root
    if KEEP_SERVICES:
        root = _PROJECT_ROOT / ".work" / "test-services"
        root.mkdir(parents=True, exist_ok=True)
    else:
        _temporary_root = tempfile.mkdtemp(prefix="lakehouse-tests-")
        root = Path(_temporary_root)
    os.environ["LAKEHOUSE_WAREHOUSE"] = str(root / "warehouse")
    os.environ["LAKEHOUSE_SERVICES_ROOT"] = str(root / "services")
    os.environ["LAKEHOUSE_DATA_ROOT"] = str(root / "data")
    for name, port in _TEST_PORTS.items():
        os.environ.setdefault(name, port)
    # Libraries that write caches under HOME write them in the work folder instead.
    os.environ.setdefault("MPLCONFIGDIR", str(_PROJECT_ROOT / ".work" / "cache" / "matplotlib"))
    from lakehouse.settings import get_settings

    get_settings.cache_clear()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _temporary_root:
        shutil.rmtree(_temporary_root, ignore_errors=True)
