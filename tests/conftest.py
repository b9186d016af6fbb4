"""Shared pytest fixtures."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from lakehouse.services.trino import TrinoServer
from lakehouse.settings import Settings

log = logging.getLogger(__name__)

# Fixtures for Spark/Beam and Kafka live in their own modules.
pytest_plugins = ["fixtures_engines", "fixtures_kafka"]


@pytest.fixture(scope="session")
def trino_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrinoServer]:
    """The local Trino server, with settings whose warehouse is a temporary folder.

    The work folder stays the project's .work, so the cached server is reused and never fetched
    again. A server that is already running is reused and left running; since its catalog may
    belong to another warehouse (the demo's), tests register their tables by absolute location in
    schemas of their own and drop them afterwards. Otherwise the fixture starts a server whose
    metastore lives in the temporary warehouse and stops it when the session ends.
    """
    settings = Settings(warehouse=str(tmp_path_factory.mktemp("trino-warehouse")))
    server = TrinoServer(settings)
    started_here = server.pid() is None
    began = time.monotonic()
    if started_here:
        server.start()
        log.info("started Trino on %s in %.1fs", server.address, time.monotonic() - began)
    else:
        # A running process that does not answer yet is still starting: wait for it.
        server.wait_ready()
        log.info("reusing the running Trino on %s (pid %s)", server.address, server.pid())
    try:
        yield server
    finally:
        if started_here:
            server.stop()
