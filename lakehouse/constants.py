"""Catalog, schema and table names, and defaults shared by every layer (one place to change them)."""

from __future__ import annotations

# Trino catalog that maps the Delta warehouse (infra/trino/etc/catalog/delta.properties).
CATALOG = "delta"
# Trino schema (and warehouse folder) for tables shared by all datasets.
SYSTEM_SCHEMA = "lakehouse"

# Per-dataset tables live in <warehouse>/<dataset>/<table>; shared ones in <warehouse>/lakehouse/<table>.
BRONZE = "bronze"
SILVER = "silver"
BATCH_SCORES = "batch_scores"
HOT_SCORES = "hot_scores"
LANDING = "landing"
MERGED_VIEW = "merged"
# Convenience views over the merged view (serving/views.py) and data-quality views.
ANOMALIES_VIEW = "anomalies"
ALERTS_VIEW = "alerts"
HOURLY_VIEW = "anomalies_hourly"
ENTITY_SUMMARY_VIEW = "entity_summary"
DQ_RUNS_VIEW = "dq_runs"
DQ_RULES_VIEW = "dq_rule_failures"

QUARANTINE = "quarantine"
MODELS = "models"
BATCH_RUNS = "batch_runs"

DATASET_TABLES = (BRONZE, SILVER, BATCH_SCORES, HOT_SCORES, LANDING)
SYSTEM_TABLES = (QUARANTINE, MODELS, BATCH_RUNS)

# Which layer answered a row of the merged view.
LAYER_BATCH = "batch"
LAYER_SPEED = "speed"

DEFAULT_TRINO_PORT = 18080
DEFAULT_KAFKA_PORT = 19092
DEFAULT_KAFKA_CONTROLLER_PORT = 19093
DEFAULT_S3_PORT = 19000
# The Flink job server's job API; its artifact service listens on the next port.
DEFAULT_FLINK_JOB_PORT = 18099
# The local cluster mode (`lakehouse up --cluster`, docs/operations.md#local-cluster-mode), every
# port in one place. Each is a setting (lakehouse/settings.py), so LAKEHOUSE_<NAME> moves it.
DEFAULT_SPARK_MASTER_PORT = 17077
DEFAULT_SPARK_MASTER_UI_PORT = 18070  # also the master's JSON API (/json/)
DEFAULT_SPARK_WORKER_UI_PORT = 18071
# Flink session cluster: the REST API (and --flink_master); the JobManager's RPC port, with the
# blob server, the TaskManager's RPC and its data port on the next three.
DEFAULT_FLINK_REST_PORT = 18085  # not 18081: the Trino coordinator's plain-HTTP port (trino_port + 1)
DEFAULT_FLINK_RPC_PORT = 16123
# The Beam job server that submits to the session cluster (its artifact service on the next port).
DEFAULT_FLINK_CLUSTER_JOB_PORT = 18097
# Beam's Python SDK worker pool beside the TaskManager (EXTERNAL environment).
DEFAULT_BEAM_WORKER_POOL_PORT = 15000
# The Trino worker's HTTP port (internal: the coordinator and the worker only).
DEFAULT_TRINO_WORKER_PORT = 18083


def events_topic(dataset: str) -> str:
    """Kafka topic a dataset's events arrive on."""
    return f"lakehouse.{dataset}.events"


def alerts_topic(dataset: str) -> str:
    """Kafka topic the speed layer publishes a dataset's anomalies to."""
    return f"lakehouse.{dataset}.alerts"
