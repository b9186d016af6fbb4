"""The local cluster mode (`lakehouse up --cluster`): every engine as separate processes on loopback.

Start order matters: each process registers with the one before it (Spark worker -> master,
TaskManager -> JobManager, Trino worker -> coordinator), and the Beam job server submits to the
session cluster. Kafka (and the S3 server, when the warehouse is on it) are the same single
processes as in the embedded set-up.

Memory given to each process (settings; docs/operations.md#local-cluster-mode has the table):
Trino coordinator `trino_heap` and worker `trino_worker_heap` (heap), Kafka `kafka_heap`, Spark
master and worker `spark_daemon_memory` each plus executors of `spark_executor_memory`, Flink
JobManager `flink_jobmanager_memory` and TaskManager `flink_taskmanager_memory` (whole process),
the Beam job server 512m of heap, and the Python processes (worker pool, its SDK workers, the
Spark driver) sized by what they load.
"""

from __future__ import annotations

from lakehouse.settings import Settings
from local_services.base import Service
from local_services.flink_cluster import BeamWorkerPool, FlinkClusterJobServer, FlinkJobManager, FlinkTaskManager
from local_services.kafka import KafkaBroker
from local_services.spark_cluster import SparkMaster, SparkWorker
from local_services.trino import TrinoServer, TrinoWorker

# The names `lakehouse up --cluster --only` accepts, in start order.
CLUSTER_SERVICES = (
    "trino", "trino-worker", "kafka", "spark-master", "spark-worker",
    "flink-jobmanager", "flink-taskmanager", "beam-worker-pool", "flink-cluster-job-server",
)


def cluster_services(settings: Settings) -> list[Service]:
    """Every process of the cluster mode, in start order (stop them in reverse)."""
    return [
        TrinoServer(settings, cluster=True),
        TrinoWorker(settings),
        KafkaBroker(settings),
        SparkMaster(settings),
        SparkWorker(settings),
        FlinkJobManager(settings),
        FlinkTaskManager(settings),
        BeamWorkerPool(settings),
        FlinkClusterJobServer(settings),
    ]


def start(settings: Settings, *, wait: bool = True) -> list[Service]:
    services = cluster_services(settings)
    for service in services:
        service.start(wait=wait)
    return services


def stop(settings: Settings) -> dict[str, bool]:
    """Stop every cluster process, last started first; {name: was running}."""
    return {service.name: service.stop() for service in reversed(cluster_services(settings))}
