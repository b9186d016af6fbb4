"""Session fixtures for the local services (loaded through conftest.py's pytest_plugins).

Each service lives in the test environment conftest.py sets up (its own folders and ports), is
started once per session and stopped at its end, unless LAKEHOUSE_TEST_KEEP_SERVICES=1 keeps it
for the next run. One that is already running (kept from an earlier run) is reused.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import pytest

from lakehouse.settings import get_settings

log = logging.getLogger(__name__)


def _for_the_session(service) -> Iterator:
    started_here = service.pid() is None
    began = time.monotonic()
    service.start(wait=True)
    log.info("%s ready on %s after %.1fs (started here: %s)", service.name, service.address, time.monotonic() - began, started_here)
    try:
        yield service
    finally:
        if started_here and os.environ.get("LAKEHOUSE_TEST_KEEP_SERVICES") != "1":
            service.stop()


def _for_the_session_all(services: list) -> Iterator[list]:
    """Several services that register with one another: started in order, stopped in reverse."""
    started = []
    try:
        for service in services:
            if service.pid() is None:
                started.append(service)
            service.start(wait=True)
        yield services
    finally:
        if os.environ.get("LAKEHOUSE_TEST_KEEP_SERVICES") != "1":
            for service in reversed(started):
                service.stop()


@pytest.fixture(scope="session")
def spark_cluster():
    """The cluster mode's Spark standalone master and worker."""
    from local_services.spark_cluster import SparkMaster, SparkWorker

    settings = get_settings()
    yield from _for_the_session_all([SparkMaster(settings), SparkWorker(settings)])


@pytest.fixture(scope="session")
def flink_cluster():
    """The cluster mode's Flink session cluster, Beam worker pool and job server."""
    from local_services.flink_cluster import BeamWorkerPool, FlinkClusterJobServer, FlinkJobManager, FlinkTaskManager

    settings = get_settings()
    yield from _for_the_session_all(
        [FlinkJobManager(settings), FlinkTaskManager(settings), BeamWorkerPool(settings), FlinkClusterJobServer(settings)]
    )


@pytest.fixture(scope="session")
def trino_server():
    from local_services.trino import TrinoServer

    yield from _for_the_session(TrinoServer(get_settings()))


@pytest.fixture(scope="session")
def kafka_broker():
    from local_services.kafka import KafkaBroker

    yield from _for_the_session(KafkaBroker(get_settings()))


@pytest.fixture(scope="session")
def s3_server():
    from local_services.s3 import S3Server

    yield from _for_the_session(S3Server(get_settings()))


@pytest.fixture(scope="session")
def flink_job_server():
    """The Beam Flink job server with an embedded Flink."""
    from local_services.flink import FlinkJobServer

    yield from _for_the_session(FlinkJobServer(get_settings()))


@pytest.fixture(scope="session")
def demo(trino_server, kafka_broker, spark) -> dict:
    """The whole Lambda cycle in the session's warehouse, once, run by the `lakehouse demo` command
    itself (smaller: 4 sensors): the end-to-end tests check it and the notebooks run on it.

    The command runs in this process (on the session's Spark); it returns the demo's summary to
    an in-process caller, and what it printed is kept under "output"."""
    from typer.testing import CliRunner

    from app.cli import app

    result = CliRunner().invoke(
        app, ["demo", "--sensors", "4", "--days", "6"], prog_name="lakehouse", standalone_mode=False, terminal_width=200
    )
    if result.exception is not None:
        raise result.exception
    return {**result.return_value, "output": result.output}
