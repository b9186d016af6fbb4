"""How the `lakehouse` command prints what it got: tables of results to stdout, one layout each.

Logs and progress go to `console` (stderr), results to `results` (stdout), so a result can be
piped (lakehouse/logs.py owns both consoles).
"""

from __future__ import annotations

from rich.table import Table

from lakehouse.logs import console, frame_table, results

__all__ = ["console", "results", "print_frame", "print_run", "print_report", "print_status", "print_maintenance", "print_quality"]

RUN_MEASURES = (
    "input_rows", "valid_rows", "quarantined_rows", "duplicate_rows", "conflict_rows", "silver_rows", "scored_rows",
    "anomalies", "model_version", "expired_hot_rows", "watermark",
)
REPORT_MEASURES = (
    "input_rows", "valid_rows", "quarantined_rows", "duplicate_rows", "conflict_rows", "anomalies", "model_version", "watermark",
)


def print_frame(frame, title: str | None) -> None:
    """A DataFrame as a table, then its row count."""
    results.print(frame_table(frame, title))
    results.print(f"({len(frame)} rows)")


def print_run(record) -> None:
    """A finished batch run's counts (batch.run_log.RunRecord)."""
    table = Table(title=f"Batch run {record.run_id}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name in RUN_MEASURES:
        table.add_row(name, str(getattr(record, name)))
    table.add_row("seconds", f"{sum(record.timings.values()):.1f}")
    results.print(table)


def print_report(run_id: str, stored: dict) -> None:
    """A stored run report (batch.run_log.report): counts and timings, then each data-quality rule."""
    summary = Table(title=f"Run {run_id} ({stored['dataset']}, {stored['status']})")
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    for name in REPORT_MEASURES:
        summary.add_row(name, str(stored.get(name)))
    for step, seconds in stored["timings"].items():
        summary.add_row(f"{step} (s)", f"{seconds:.1f}")
    results.print(summary)
    expectations = stored["report"].get("great_expectations", {})
    table = Table(title="Great Expectations, per rule")
    for column in ("rule", "expectation", "checked", "unexpected", "examples"):
        table.add_column(column)
    for item in expectations.get("expectations", []):
        table.add_row(
            item["rule"], item["expectation_type"], str(item["element_count"]), str(item["unexpected_count"]),
            ", ".join(str(value) for value in item["partial_unexpected_list"][:3]),
        )
    results.print(table)


def print_status(services) -> None:
    """One row per local service: state, pid, address, log file."""
    table = Table(title="Local services")
    for column in ("service", "state", "pid", "address", "log"):
        table.add_column(column)
    for service in services:
        status = service.status()
        state = "[green]ready[/]" if status.ready else ("[yellow]starting[/]" if status.running else "[red]stopped[/]")
        table.add_row(status.name, state, str(status.pid or "-"), status.address, str(status.log_file))
    results.print(table)


def print_maintenance(dataset: str, outcomes) -> None:
    """OPTIMIZE and VACUUM outcomes (batch.maintenance.MaintenanceResult), one row per table."""
    table = Table(title=f"Delta maintenance of {dataset}")
    for column in ("table", "files before", "files after", "compacted", "vacuumed"):
        table.add_column(column)
    for outcome in outcomes:
        table.add_row(outcome.table, str(outcome.files_before), str(outcome.files_after), str(outcome.files_compacted), str(outcome.files_vacuumed))
    results.print(table)


def print_quality(title: str, rows: dict[str, dict], *, against_published: bool = False) -> None:
    """Detection-quality summaries (quality.evaluation), one row per detector or run."""
    from quality.benchmark import BEST_PUBLISHED

    table = Table(title=title)
    # "best" = NAB's best threshold on the relative scale; "alerts" = the system's own is_anomaly
    # flags, first of each episode (detector.alert_quiet_events; the `alerts` view).
    columns = ["detector", "NAB standard", "low FP", "low FN", "best threshold", "alerts: NAB", "alerts: P / R / F1", "F1 at best"]
    if against_published:
        columns.insert(4, f"vs {BEST_PUBLISHED[1]} ({BEST_PUBLISHED[0]})")
    for column in columns:
        table.add_column(column, justify="right")
    for name, summary in rows.items():
        cells = [
            name, f"{summary['nab']['standard']:.1f}", f"{summary['nab']['reward_low_FP_rate']:.1f}", f"{summary['nab']['reward_low_FN_rate']:.1f}",
            f"{summary['thresholds']['standard']:.3g}", f"{summary['nab_with_own_flags']['standard']:.1f}",
            f"{summary['window_precision']:.2f} / {summary['window_recall']:.2f} / {summary['window_f1']:.2f}",
            f"{summary['window_f1_at_nab_threshold']:.2f}",
        ]
        if against_published:
            cells.insert(4, f"{summary['nab']['standard'] / BEST_PUBLISHED[0]:.2f}")
        table.add_row(*cells)
    results.print(table)
