"""Airflow DAG for teams that schedule the batch layer with Airflow (2.x or 3.x).

Hourly: one batch run per dataset over the landing files, then the merged views are refreshed.
Daily: Delta maintenance. Each task calls the `lakehouse` command, so the workers need the
project installed (`make setup`) and LAKEHOUSE_* settings in their environment; on a cluster,
replace the batch task with a SparkSubmitOperator running batch/job.py with
`--jars "$(lakehouse batch jars)"` (see README).

Not installed in the project's venv: Airflow pins its own versions of libraries the lakehouse
pins too. tests/test_airflow_dag.py parses this file and checks every command it runs exists.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

DATASETS = {"sensor_events": "/data/landing/sensor_events/*.jsonl", "metrics": "/data/landing/metrics/*.csv"}
DEFAULT_ARGS = {"owner": "data-platform", "retries": 2, "retry_delay": timedelta(minutes=5)}

with DAG(
    dag_id="lakehouse_batch",
    description="Lambda lakehouse: hourly batch runs, merged views refreshed after them",
    start_date=datetime(2026, 1, 1),
    schedule="5 * * * *",
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["lakehouse"],
) as batch_dag:
    refresh = BashOperator(task_id="refresh_views", bash_command="lakehouse serve refresh")
    for name, landing in DATASETS.items():
        run = BashOperator(
            task_id=f"batch_run_{name}",
            bash_command=f"lakehouse batch run --dataset {name} --input '{landing}'",
            execution_timeout=timedelta(minutes=50),
        )
        run >> refresh

with DAG(
    dag_id="lakehouse_maintenance",
    description="Lambda lakehouse: daily OPTIMIZE and VACUUM (7 days of history kept)",
    start_date=datetime(2026, 1, 1),
    schedule="30 3 * * *",
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=["lakehouse"],
) as maintenance_dag:
    for name in DATASETS:
        BashOperator(task_id=f"maintain_{name}", bash_command=f"lakehouse batch maintain --dataset {name}")
