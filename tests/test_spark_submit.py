"""The batch job as a spark-submit entry point, the way a scheduler on a cluster runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

from lakehouse.settings import get_settings
from local_services import jvm

from fixtures_engines import make_sensor_inputs

pytestmark = pytest.mark.spark


def test_spark_submit_runs_the_batch_job(tmp_path):
    inputs = make_sensor_inputs(tmp_path, sensors=2, days=2.0)
    warehouse = tmp_path / "warehouse"
    spark_submit = Path(sys.executable).parent / "spark-submit"
    environment = {
        **os.environ,
        "LAKEHOUSE_WAREHOUSE": str(warehouse),
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    result = subprocess.run(
        [
            str(spark_submit), "--master", "local[2]",
            "--jars", ",".join(str(jar) for jar in jvm.delta_jars(get_settings())),
            "batch/job.py", "--dataset", "sensor_events", "--input", str(tmp_path / "history" / "*.jsonl"),
        ],
        cwd=Path(__file__).resolve().parents[1], env=environment, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "succeeded: input" in result.stdout + result.stderr
    silver = DeltaTable(str(warehouse / "sensor_events" / "silver")).to_pandas()
    assert len(silver) == len({record["event_id"] for record in inputs.history.records} - set(inputs.history.bad))
