"""`lakehouse demo --cluster` (`make cluster-demo`): the demo's cycle on the local cluster mode.

The same cycle and summary as `lakehouse demo` (app/demo.py), with every engine a cluster:

- batch runs: `spark-submit --master spark://127.0.0.1:<port>` of batch/job.py with the Delta jars
  (app/wiring.spark_submit), executors on the standalone worker;
- speed runs: the Beam pipeline reading Kafka, submitted to the cluster's Beam job server, which
  runs it on the Flink session cluster with the Python DoFns in the EXTERNAL worker pool;
- the merged view through the Trino coordinator, whose worker runs every task.

It ends by writing <work_dir>/cluster-demo.json: plain numbers read from each engine's own API
(the Spark master's JSON API, Flink's REST API, Trino's system.runtime.nodes) and the hot table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from app import demo, wiring
from lakehouse import constants
from lakehouse.logs import console
from lakehouse.settings import Settings


def run(settings: Settings, *, sensors: int = 8, days: float = 6.0) -> dict:
    from local_services import cluster
    from local_services.flink_cluster import submit_arguments
    from local_services.trino import TrinoServer

    wiring.require_local(settings, "the cluster demo")
    began_ms = int(time.time() * 1000)
    with console.status("starting the local clusters (reused when running)"):
        cluster.start(settings)

    def batch_runner(paths: list[Path]):
        return wiring.spark_submit(settings, demo.DATASET, [str(path) for path in paths], master=settings.spark_cluster_master)

    numbers: dict = {}

    def cluster_line(summary: dict) -> str:
        numbers.update(cluster_numbers(settings, summary, since_ms=began_ms))
        return "Clusters: " + ", ".join(f"{key} {value}" for key, value in numbers.items()) + f" (also in {output_file(settings)})"

    summary = demo.run(
        settings, sensors=sensors, days=days, batch_runner=batch_runner, speed_arguments=submit_arguments(settings),
        trino=TrinoServer(settings, cluster=True), extra_summary=cluster_line,
    )
    output_file(settings).write_text(json.dumps(numbers, indent=2) + "\n")
    summary["cluster"] = numbers
    return summary


def output_file(settings: Settings) -> Path:
    return settings.work_dir / "cluster-demo.json"


def cluster_numbers(settings: Settings, summary: dict, *, since_ms: int) -> dict[str, int]:
    """What each engine says about this demo's run, as plain numbers."""
    from local_services.flink_cluster import rest
    from local_services.spark_cluster import master_state
    from serving import trino_client

    merged = summary["merged"]
    by_layer = dict(zip(merged.layer, merged.events.astype(int)))
    spark_apps = [app for app in master_state(settings).get("completedapps", []) if app.get("starttime", 0) >= since_ms]
    flink_jobs = [job for job in rest(settings, "/jobs/overview")["jobs"] if job.get("start-time", 0) >= since_ms]
    workers = trino_client.query(
        "SELECT count(*) AS workers FROM system.runtime.nodes WHERE NOT coordinator AND state = 'active'", settings=settings
    )
    return {
        "merged_events": int(merged.events.sum()),
        "batch_events": int(by_layer.get(constants.LAYER_BATCH, 0)),
        "speed_events": int(by_layer.get(constants.LAYER_SPEED, 0)),
        "spark_apps_completed": sum(app.get("state") == "FINISHED" for app in spark_apps),
        "flink_jobs_running_or_finished": sum(job.get("state") in ("RUNNING", "FINISHED") for job in flink_jobs),
        "trino_active_workers": int(workers.workers.iloc[0]),
        "hot_exactly_once": int(hot_exactly_once(settings, summary)),
    }


def hot_exactly_once(settings: Settings, summary: dict) -> bool:
    """Every valid event of the speed replays newer than the last batch watermark (older hot rows
    expire when a batch run covers them) is in the hot table, once; and nothing else is."""
    from deltalake import DeltaTable

    watermark = pd.Timestamp(summary["batch"][-1].watermark)
    watermark = watermark.tz_localize("UTC") if watermark.tzinfo is None else watermark.tz_convert("UTC")
    quarantine = DeltaTable(settings.table_uri(constants.SYSTEM_SCHEMA, constants.QUARANTINE)).to_pandas(columns=["dataset", "event_id", "layer"])
    rejected = set(quarantine[(quarantine.dataset == demo.DATASET) & (quarantine.layer == constants.LAYER_SPEED)].event_id.dropna())
    expected: set[str] = set()
    for name in ("replay_a", "replay_b"):
        for line in summary["files"][name].read_text().splitlines():
            try:
                record = json.loads(line)
                event_time = pd.Timestamp(record["event_time"])
            except (ValueError, KeyError, TypeError):
                continue  # malformed: a dead letter
            event_time = event_time.tz_localize("UTC") if event_time.tzinfo is None else event_time.tz_convert("UTC")
            if record.get("event_id") not in rejected and event_time > watermark:
                expected.add(record["event_id"])
    hot = DeltaTable(settings.table_uri(demo.DATASET, constants.HOT_SCORES)).to_pandas(columns=["event_id"])
    return bool(hot.event_id.is_unique and set(hot.event_id) == expected)
