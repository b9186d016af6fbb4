"""Parity across deployment modes: the cluster mode's engines give the embedded runs' answers.

- batch: spark-submit of batch/job.py to the Spark standalone master (executors in the worker's
  JVM, Python workers forked there) against the embedded local[2] session, on the same inputs:
  the same counts, the same model versions and the same batch view scores. This is also the
  suite's check of the spark-submit entry point (batch/job.py's argument parsing, the Delta jars
  given with --jars, the session under spark-submit), the way a scheduler runs the job;
- speed: the Beam pipeline on the Flink session cluster through the cluster's job server, its
  Python DoFns in the EXTERNAL worker pool, over the models the Spark cluster trained, against the
  in-process runner over the embedded warehouse: the same events, features and scores.

Small on purpose (2 sensors, 2 days): the point is the deployment path, not the volume.
"""

from __future__ import annotations

import numpy as np
import pytest
from deltalake import DeltaTable

from app import wiring
from batch.job import run_batch
from lakehouse import constants
from local_services.flink_cluster import rest, submit_arguments
from local_services.spark_cluster import master_state
from speed import pipeline as speed_pipeline

from fixtures_engines import make_sensor_inputs
from listening import open_beyond_loopback

# Four engine runs (two batch runs, two speed runs) and two clusters' start-up share the module
# fixture's set-up, which pytest-timeout counts against the first test: allow twice the default.
pytestmark = [pytest.mark.cluster, pytest.mark.spark, pytest.mark.beam, pytest.mark.flink, pytest.mark.timeout(1800)]

DATASET = "sensor_events"
SAME = {"rtol": 0, "atol": 1e-9}


@pytest.fixture(scope="module")
def both_modes(spark, spark_cluster, tmp_path_factory):
    """One input, batch-run twice: embedded (local[2], in this process) and on the Spark cluster."""
    from lakehouse.settings import get_settings

    folder = tmp_path_factory.mktemp("cluster")
    inputs = make_sensor_inputs(folder, sensors=2, days=2.0, seed=53)
    history = [str(path) for path in inputs.history_files]
    embedded = get_settings().model_copy(update={"warehouse": str(folder / "embedded")})
    on_cluster = get_settings().model_copy(update={"warehouse": str(folder / "cluster")})
    completed_before = _finished_batch_apps(on_cluster)
    records = {
        "embedded": run_batch(DATASET, history, settings=embedded, spark=spark),
        "cluster": wiring.spark_submit(on_cluster, DATASET, history, master=on_cluster.spark_cluster_master),
    }
    return {"inputs": inputs, "embedded": embedded, "cluster": on_cluster, "records": records, "completed_before": completed_before}


def _finished_batch_apps(settings) -> int:
    """Applications of the batch job that the Spark master lists as finished."""
    apps = master_state(settings).get("completedapps", [])
    return sum(app["name"] == f"lakehouse-batch-{DATASET}" and app["state"] == "FINISHED" for app in apps)


def _table(settings, table):
    return DeltaTable(settings.table_uri(DATASET, table)).to_pandas().set_index("event_id").sort_index()


def test_a_batch_run_on_the_spark_cluster_matches_the_embedded_run(both_modes):
    embedded, cluster = both_modes["records"]["embedded"], both_modes["records"]["cluster"]
    # The master ran it as an application of its own, which finished.
    assert _finished_batch_apps(both_modes["cluster"]) == both_modes["completed_before"] + 1
    assert cluster.status == embedded.status == "succeeded"
    counts = ("input_rows", "valid_rows", "quarantined_rows", "duplicate_rows", "conflict_rows", "scored_rows", "anomalies", "model_version")
    assert {name: getattr(cluster, name) for name in counts} == {name: getattr(embedded, name) for name in counts}
    assert cluster.watermark == embedded.watermark
    expected, found = _table(both_modes["embedded"], constants.BATCH_SCORES), _table(both_modes["cluster"], constants.BATCH_SCORES)
    assert list(found.index) == list(expected.index)
    np.testing.assert_allclose(found.score.to_numpy(), expected.score.to_numpy(), **SAME)
    assert (found.is_anomaly == expected.is_anomaly).all()


def test_a_speed_run_on_the_flink_session_cluster_with_external_workers_matches_the_local_runner(both_modes, flink_cluster):
    replay = ["--dataset", DATASET, "--input", str(both_modes["inputs"].recent_file), "--max_batch_size", "200"]
    jobs_before = {job["jid"] for job in rest(both_modes["cluster"], "/jobs/overview")["jobs"]}

    local = speed_pipeline.run(replay, settings=both_modes["embedded"])
    on_flink = speed_pipeline.run([*replay, *submit_arguments(both_modes["cluster"])], settings=both_modes["cluster"])

    # The session cluster ran it as one job, which finished.
    jobs = [job for job in rest(both_modes["cluster"], "/jobs/overview")["jobs"] if job["jid"] not in jobs_before]
    assert [job["state"] for job in jobs] == ["FINISHED"]
    assert (on_flink.scored, on_flink.dead_letters, on_flink.anomalies) == (local.scored, local.dead_letters, local.anomalies)
    expected, found = _table(both_modes["embedded"], constants.HOT_SCORES), _table(both_modes["cluster"], constants.HOT_SCORES)
    assert found.index.is_unique and list(found.index) == list(expected.index)
    np.testing.assert_allclose(found.score.to_numpy(), expected.score.to_numpy(), **SAME)
    assert (found.is_anomaly == expected.is_anomaly).all()
    assert (found.model_version == expected.model_version).all()


def test_every_cluster_process_listens_on_loopback_only(spark_cluster, flink_cluster):
    """Masters, workers, the job server and the Beam worker pool (with any SDK worker it started)."""
    for service in [*spark_cluster, *flink_cluster]:
        assert open_beyond_loopback(service) == [], service.name
