"""The speed pipeline on Flink (Beam's Flink runner with an embedded Flink) gives the local runner's
answer: the same events in the hot table with the same features and scores.

On Flink the per-entity order is not kept (two parallel workers, a shuffle before the state), so
this also runs the late-event path for real: the stream must still end with the exact features.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from deltalake import DeltaTable

from batch.job import run_batch
from lakehouse import constants
from speed import pipeline as speed_pipeline

from app.wiring import speed_hooks
from fixtures_engines import make_sensor_inputs

pytestmark = [pytest.mark.beam, pytest.mark.spark, pytest.mark.flink]


def test_flink_runner_matches_the_local_runner(flink_job_server, spark, tmp_path):
    from lakehouse.settings import get_settings

    settings = get_settings().model_copy(update={"warehouse": str(tmp_path / "warehouse")})
    inputs = make_sensor_inputs(tmp_path, sensors=3, days=3.0, seed=31)
    run_batch("sensor_events", [str(path) for path in inputs.history_files], settings=settings, spark=spark)
    hot_uri = settings.table_uri("sensor_events", constants.HOT_SCORES)
    arguments = ["--dataset", "sensor_events", "--input", str(inputs.recent_file), "--max_batch_size", "200"]

    local = speed_pipeline.run(arguments, settings=settings)
    expected = DeltaTable(hot_uri).to_pandas().set_index("event_id").sort_index()
    shutil.rmtree(hot_uri)

    on_flink = speed_pipeline.run([*arguments, "--runner", "FlinkRunner"], settings=settings, hooks=speed_hooks(settings))
    found = DeltaTable(hot_uri).to_pandas().set_index("event_id").sort_index()

    assert on_flink.scored == local.scored and on_flink.dead_letters == local.dead_letters
    assert found.index.is_unique and list(found.index) == list(expected.index)
    np.testing.assert_allclose(found.score.to_numpy(), expected.score.to_numpy(), rtol=0, atol=1e-12)
    assert (found.is_anomaly == expected.is_anomaly).all()


def test_consecutive_runs_continue_from_the_hot_table(spark, tmp_path):
    """Kafka micro-batches and restarts: a run seeds each entity from the events earlier runs put in
    the hot table, so two runs over two halves score exactly like one run over everything."""
    from lakehouse import generate as generator
    from lakehouse.settings import get_settings

    settings = get_settings().model_copy(update={"warehouse": str(tmp_path / "warehouse")})
    inputs = make_sensor_inputs(tmp_path, sensors=2, days=3.0, seed=37)
    run_batch("sensor_events", [str(path) for path in inputs.history_files], settings=settings, spark=spark)
    hot_uri = settings.table_uri("sensor_events", constants.HOT_SCORES)
    records = inputs.recent.records
    halves = [generator.write_json_lines(part, tmp_path / f"half-{index}.jsonl")
              for index, part in enumerate((records[: len(records) // 2], records[len(records) // 2 :]))]

    speed_pipeline.run(["--dataset", "sensor_events", "--input", str(inputs.recent_file)], settings=settings)
    expected = DeltaTable(hot_uri).to_pandas().set_index("event_id").sort_index()
    shutil.rmtree(hot_uri)
    for half in halves:
        speed_pipeline.run(["--dataset", "sensor_events", "--input", str(half)], settings=settings)
    found = DeltaTable(hot_uri).to_pandas().set_index("event_id").sort_index()

    assert list(found.index) == list(expected.index)
    np.testing.assert_allclose(found.score.to_numpy(), expected.score.to_numpy(), rtol=0, atol=1e-12)
    # State expiry (a TTL) is for jobs that do not end: tests/test_speed_follow.py expires it on
    # Flink and checks the next event's features.
