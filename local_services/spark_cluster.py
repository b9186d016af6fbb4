"""A Spark standalone cluster on loopback (cluster mode): one master and one worker.

Both come from the jars pyspark ships (no Spark download): `spark-class` from the venv runs
`org.apache.spark.deploy.master.Master` and `...deploy.worker.Worker` on the system Java 17, as
Spark's own sbin scripts do. The batch job reaches them through
`spark-submit --master spark://127.0.0.1:<spark_master_port>` (app/wiring.py `spark_submit`).

Memory: each daemon gets `spark_daemon_memory` (SPARK_DAEMON_MEMORY, 256m); the worker offers
`spark_worker_memory` and `spark_worker_cores` to executors (one executor of
`spark_executor_memory`). Folders: <services_root>/spark-master/ and spark-worker/ (work/ holds
each application's executor logs, local/ its shuffle files).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

from lakehouse.errors import ServiceError
from lakehouse.settings import Settings
from local_services import jvm
from local_services.base import Service

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


def spark_home() -> Path:
    """pyspark's package folder is a Spark home: jars/, bin/ (spark-class, spark-submit)."""
    import pyspark

    return Path(pyspark.__file__).parent


def spark_class() -> str:
    """The venv's spark-class (pyspark installs it next to the interpreter)."""
    return str(Path(sys.executable).parent / "spark-class")


def master_state(settings: Settings) -> dict:
    """The master's JSON API (/json/ on its web UI port): workers, active and completed apps."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{settings.spark_master_ui_port}/json/", timeout=3) as response:
        return json.load(response)


class _SparkDaemon(Service):
    def environment(self) -> dict[str, str]:
        java = jvm.java17()
        return {
            **os.environ,
            "JAVA_HOME": os.path.dirname(os.path.dirname(os.path.realpath(java))),
            "SPARK_HOME": str(spark_home()),
            "SPARK_DAEMON_MEMORY": self.settings.spark_daemon_memory,
            "SPARK_LOCAL_IP": "127.0.0.1",
            # Spark's daemons write nothing outside the service folder.
            "SPARK_LOG_DIR": str(self.log_file.parent),
            "SPARK_LOCAL_DIRS": str(self.home / "local"),
            # The executors' Python workers run the venv's interpreter.
            "PYSPARK_PYTHON": sys.executable,
        }

    def prepare(self) -> None:
        (self.home / "local").mkdir(parents=True, exist_ok=True)


class SparkMaster(_SparkDaemon):
    name = "spark-master"

    @property
    def address(self) -> str:
        return f"{self.settings.spark_cluster_master} (UI and /json/ on :{self.settings.spark_master_ui_port})"

    def ports(self) -> tuple[int, ...]:
        return self.settings.spark_master_port, self.settings.spark_master_ui_port

    def prepare(self) -> None:
        self.require_free_ports(self.ports(), "spark_master_port / spark_master_ui_port")
        super().prepare()

    def command(self) -> list[str]:
        return [
            spark_class(), MASTER_CLASS,
            "--host", "127.0.0.1",
            "--port", str(self.settings.spark_master_port),
            "--webui-port", str(self.settings.spark_master_ui_port),
        ]

    def probe(self) -> bool:
        return master_state(self.settings).get("status") == "ALIVE"


class SparkWorker(_SparkDaemon):
    name = "spark-worker"

    @property
    def address(self) -> str:
        return (
            f"worker of {self.settings.spark_cluster_master}: {self.settings.spark_worker_cores} cores, "
            f"{self.settings.spark_worker_memory} (UI :{self.settings.spark_worker_ui_port})"
        )

    def ports(self) -> tuple[int, ...]:
        return (self.settings.spark_worker_ui_port,)  # its RPC port is Spark's random pick

    def prepare(self) -> None:
        self.require_free_ports(self.ports(), "spark_worker_ui_port")
        super().prepare()
        (self.home / "work").mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            spark_class(), WORKER_CLASS,
            "--host", "127.0.0.1",
            "--cores", str(self.settings.spark_worker_cores),
            "--memory", self.settings.spark_worker_memory,
            "--webui-port", str(self.settings.spark_worker_ui_port),
            "--work-dir", str(self.home / "work"),
            self.settings.spark_cluster_master,
        ]

    def probe(self) -> bool:
        """Ready when the master lists this worker as alive."""
        workers = master_state(self.settings).get("workers", [])
        return any(worker.get("state") == "ALIVE" for worker in workers)

    def start(self, *, wait: bool = True):
        if SparkMaster(self.settings).pid() is None:
            raise ServiceError(self.name, "the Spark master is not running: start it first (`lakehouse up --cluster`)")
        return super().start(wait=wait)
