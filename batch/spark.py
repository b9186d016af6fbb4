"""The Spark session every batch job uses: local[*] by default, Delta from the cached jars.

Delta's jars come from .work/cache/jvm/delta (fetched with mvn, see infra/jvm/pom.xml) and are
passed as spark.jars, so nothing is resolved through Ivy at run time.

The master: under spark-submit, its --master (and --name, --jars, --driver-memory) win: the
builder sets none of them then. Otherwise `settings.spark_master` (local[2] by default,
LAKEHOUSE_SPARK_MASTER for a cluster). Only a local master binds the driver to 127.0.0.1: with a
cluster master the executors must reach the driver, so its address is left to Spark
(SPARK_LOCAL_IP / spark.driver.host, as spark-submit or the environment set them).
"""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from collections.abc import Sequence

from lakehouse import storage
from lakehouse.settings import PROJECT_ROOT, Settings

LOG_CONFIG = PROJECT_ROOT / "infra" / "spark" / "log4j2.properties"


def spark_session(
    settings: Settings, *, jars: Sequence[str] = (), app_name: str = "lakehouse-batch"
) -> SparkSession:
    """The session for batch jobs. `jars` are Delta's (and S3A's) jars: the composition root passes
    the cached ones for local runs; spark-submit passes them with --jars, and then none are needed
    here. JAVA_HOME is the caller's business too (the root points it at Java 17)."""
    # Spark's Python workers must run the venv's interpreter.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    submitted = under_spark_submit()
    local = not submitted and is_local_master(settings.spark_master)
    if local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    local_dir = settings.work_dir / "spark"
    builder = SparkSession.builder
    if not submitted:
        # Under spark-submit the JVM already runs with its --master, --name and --driver-memory.
        builder = builder.appName(app_name).master(settings.spark_master).config("spark.driver.memory", settings.spark_driver_memory)
    if local:
        # Embedded: nothing listens beyond loopback.
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    builder = (
        builder.config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.local.dir", str(local_dir / "tmp"))
        .config("spark.sql.warehouse.dir", str(local_dir / "spark-warehouse"))
        .config("spark.ui.enabled", "false")
        # Small data on two cores: a few shuffle partitions beat the default 200.
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # The run caches its validated records once and reads them several times (GX, counts,
        # quarantine, duplicates). Compressing the cache cost a third of the executors' CPU in
        # building it (a JFR profile at 1M records, 2026-12-03: the dictionary encoder's statistics
        # per string column, boxed values in a hash map) for memory this machine has; an
        # uncompressed cache that does not fit spills to disk (MEMORY_AND_DISK) like any other.
        .config("spark.sql.inMemoryColumnarStorage.compressed", "false")
        # Python workers fork from a daemon that has imported Great Expectations (batch/worker_daemon.py).
        .config("spark.python.daemon.module", "batch.worker_daemon")
        # Delta replays its log with 50 tasks by default: minutes of overhead on small tables.
        .config("spark.databricks.delta.snapshotPartitions", "2")
        .config("spark.ui.showConsoleProgress", "false")
        # VACUUM lists files with this many tasks (default 10,000: a minute of overhead locally).
        .config("spark.sql.sources.parallelPartitionDiscovery.parallelism", "8")
        .config("spark.databricks.delta.schema.autoMerge.enabled", "false")
        # Delta tables here are also written by delta-rs (speed layer): keep table features to
        # what both engines support.
        .config("spark.databricks.delta.properties.defaults.enableDeletionVectors", "false")
        .config(
            "spark.driver.extraJavaOptions",
            f"-Dderby.system.home={local_dir / 'derby'} -Dlog4j2.configurationFile={LOG_CONFIG}",
        )
    )
    if jars:
        builder = builder.config("spark.jars", ",".join(str(jar) for jar in jars))
    for key, value in s3a_options().items():
        builder = builder.config(f"spark.hadoop.{key}", value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


def under_spark_submit() -> bool:
    """True in a driver that spark-submit started: PySpark then connects to spark-submit's JVM
    through the gateway port it was given."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def is_local_master(master: str) -> bool:
    return master == "local" or master.startswith("local[")


def s3a_options() -> dict[str, str]:
    """Hadoop S3A settings so that s3:// and s3a:// paths (warehouse or input) work alike.

    S3 is configured the way every AWS client is: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (or any
    source of S3A's default credential chain), AWS_REGION and, for an S3-compatible server,
    AWS_ENDPOINT_URL. delta-rs, pyarrow and boto3 read the same variables, so the batch and speed
    layers always see the same bucket.
    """
    options = {
        # delta-rs, pyarrow and Trino say s3://; Spark maps that scheme to S3A too.
        "fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "fs.s3a.endpoint.region": storage.aws_region(),
    }
    endpoint = storage.aws_endpoint()
    if endpoint:
        # S3-compatible servers (S3Proxy, MinIO, Ceph) address buckets by path, not host name.
        options["fs.s3a.endpoint"] = endpoint
        options["fs.s3a.path.style.access"] = "true"
        options["fs.s3a.connection.ssl.enabled"] = str(endpoint.startswith("https://")).lower()
    return options
