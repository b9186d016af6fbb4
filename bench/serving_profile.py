"""Where a serving query's time goes: the bench's questions on the merged view and on the batch
table alone, each through EXPLAIN ANALYZE VERBOSE in Trino, summarised side by side.

    python -m bench.serving_profile --work-folder .work/sb            # a warehouse bench.serving_bench kept
    python -m bench.serving_profile --work-folder .work/sb --full     # and print every plan

Per query and side: the median elapsed time of `--repeat` warm runs, Trino's analysis and
planning time (system.runtime.queries), and from the plan the rows, bytes, splits and CPU of each
table scan. It starts its own Trino on the kept warehouse (the ports serving_bench uses) and
stops it after; nothing is written but the printout.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

import pandas as pd

from bench.serving_bench import DATASET, QUERIES

# A table scan's lines in EXPLAIN ANALYZE VERBOSE (Trino 476).
_SCAN = re.compile(r"(ScanFilterProject|ScanProject|TableScan|ScanFilter)\[table = delta:(\S+?)[\s,\]]")
# The scan's summary line: "Input: N rows (size), Filtered: x%, Physical input: size, ..., Splits: N, ..."
_SUMMARY = re.compile(r"Input: ([\d,]+ rows \([^)]+\)), Filtered: ([\d.]+%), Physical input: (\S+?),.*Splits: ([\d,]+)")
_CPU = re.compile(r"CPU: ([\d.]+\w+) \(")


def scans(plan: str) -> list[dict]:
    """The table scans of an EXPLAIN ANALYZE VERBOSE plan with their input, splits and blocked time."""
    found = []
    lines = plan.splitlines()
    for index, line in enumerate(lines):
        match = _SCAN.search(line)
        if not match:
            continue
        window = "\n".join(lines[index:index + 40])
        scan = {"table": match.group(2).split("$")[0], "summary": "", "cpu": ""}
        summary, cpu = _SUMMARY.search(window), _CPU.search(window)
        if summary:
            scan["summary"] = f"input {summary.group(1)}, filtered {summary.group(2)}, physical {summary.group(3)}, splits {summary.group(4).rstrip(',')}"
        if cpu:
            scan["cpu"] = f"cpu {cpu.group(1)}"
        found.append(scan)
    return found


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-folder", required=True, help="a warehouse kept by bench.serving_bench --work-folder")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--full", action="store_true", help="print every plan too")
    parser.add_argument("--keep-running", action="store_true", help="leave the Trino running (for manual queries)")
    arguments = parser.parse_args(argv)

    from lakehouse.settings import get_settings
    from local_services.trino import TrinoServer
    from serving import trino_client, views

    folder = Path(arguments.work_folder).resolve()
    base = get_settings()
    settings = base.model_copy(update={"warehouse": str(folder / "warehouse"), "services_root": str(folder / "services"),
                                       "trino_port": base.trino_port + 200})
    trino = TrinoServer(settings)
    trino.start()
    try:
        views.refresh(DATASET, settings)
        sample = trino_client.query(
            f"SELECT event_id, entity_id FROM {DATASET}.batch_scores ORDER BY event_time DESC, event_id LIMIT 1", settings=settings
        )
        newest = {side: pd.Timestamp(trino_client.query(f"SELECT max(event_time) AS t FROM {DATASET}.{side}", settings=settings).t[0])
                  for side in ("merged", "batch_scores")}
        for name, template in QUERIES.items():
            for side in ("merged", "batch_scores"):
                sql = template.format(t=f"{DATASET}.{side}")
                values = {
                    "one entity, last day": [sample.entity_id[0], (newest[side] - pd.Timedelta(days=1)).isoformat()],
                    "point lookup by event id": [sample.event_id[0]],
                    "anomalies, last hour": [(newest[side] - pd.Timedelta(hours=1)).isoformat()],
                }.get(name)
                timings = []
                for attempt in range(arguments.repeat + 1):
                    started = time.perf_counter()
                    trino_client.query(sql, values, settings=settings, role="analyst")
                    if attempt:
                        timings.append((time.perf_counter() - started) * 1000)
                stats = trino_client.query(
                    "SELECT analysis_time_ms, planning_time_ms FROM system.runtime.queries WHERE query = ? AND state = 'FINISHED' "
                    "ORDER BY created DESC LIMIT 1", [sql], settings=settings,
                )
                plan = "\n".join(trino_client.query(f"EXPLAIN ANALYZE VERBOSE {sql}", values, settings=settings).iloc[:, 0])
                print(f"== {name} on {side}: median {statistics.median(timings):.0f} ms "
                      f"(analysis {stats.analysis_time_ms[0] if len(stats) else '?'} ms, planning {stats.planning_time_ms[0] if len(stats) else '?'} ms)")
                for scan in scans(plan):
                    print(f"   scan {scan['table']}: {scan['summary']}, {scan['cpu']}")
                if arguments.full:
                    print(plan)
    finally:
        if not arguments.keep_running:
            trino.stop()


if __name__ == "__main__":
    from lakehouse import logs
    from lakehouse.settings import get_settings

    logs.configure(cache_dir=get_settings().cache_dir)
    run()
