"""`lakehouse batch ...`: the Spark batch layer's runs, schedule, maintenance, registry and reports."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from app import wiring
from app.commands import Dataset, OptionalDataset
from app.output import console, print_frame, print_maintenance, print_report, print_run
from lakehouse.settings import Settings, get_settings

app = typer.Typer(help="Batch layer: Spark jobs over files into Delta.", no_args_is_help=True)


@app.command("run")
def batch_run(
    dataset: Dataset,
    input: Annotated[list[str], typer.Option("--input", "-i", help="File, folder, glob or s3:// URI (repeatable), or 'landing' for the speed layer's landing table.")],
    detector: Annotated[Optional[str], typer.Option(help="Override the declared detector: knn, lof, iforest, hbos, ensemble.")] = None,
    contamination: Annotated[Optional[float], typer.Option(help="Override the declared contamination (0, 0.5].")] = None,
    input_format: Annotated[Optional[str], typer.Option("--format", help="Read every file as csv, json or parquet (default: each file as what it is).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run record as one JSON object on stdout; exit non-zero when the run failed.")] = False,
) -> None:
    """Ingest, validate, write silver and quarantine, train, score the batch view, move the watermark."""
    from rich.progress import Progress

    from batch import run_log
    from batch.job import STEPS, run_batch
    from lakehouse.errors import RunError

    settings = get_settings()
    _check(dataset, input)
    overrides = {key: value for key, value in (("name", detector), ("contamination", contamination)) if value is not None}
    with Progress(console=console) as progress:
        task = progress.add_task(f"batch {dataset}", total=len(STEPS))

        def advance(step: str) -> None:
            progress.update(task, description=f"batch {dataset}: {step}", completed=STEPS.index(step))

        try:
            record = run_batch(
                dataset, input, settings=settings, spark=wiring.spark_session(settings), progress=advance,
                detector=overrides or None, after_write=wiring.serving_refresh(settings), input_format=input_format,
            )
        except RunError as error:
            if not as_json:
                raise
            # The failed run's record, as the run log stored it (status failed, the error).
            sys.stdout.write(json.dumps(run_log.stored_record(settings, error.run_id).to_json(), default=str) + "\n")
            raise typer.Exit(1) from error
        progress.update(task, completed=len(STEPS), description=f"batch {dataset}: done")
    if as_json:
        sys.stdout.write(json.dumps(record.to_json(), default=str) + "\n")
        return
    print_run(record)


def _check(dataset: str, inputs: list[str] | None = None) -> None:
    """An unknown dataset or an input matching no file fails here, before a JVM starts for Spark."""
    import schemas
    from batch.job import LANDING_INPUT, resolve_inputs

    schemas.load(dataset)
    if inputs is not None and LANDING_INPUT not in inputs:
        resolve_inputs(inputs)


@app.command("schedule")
def batch_schedule(
    dataset: Dataset,
    input: Annotated[list[str], typer.Option("--input", "-i", help="Glob of the landing files (repeatable).")],
    every: Annotated[Optional[str], typer.Option(help="Interval: 30m, 1h, 1d ...")] = None,
    cron: Annotated[Optional[str], typer.Option(help="Cron expression (UTC), e.g. '5 * * * *'.")] = None,
    max_runs: Annotated[Optional[int], typer.Option(help="Stop after this many ticks (default: run forever).", min=1)] = None,
    once: Annotated[
        bool,
        typer.Option("--once", help="One tick now over the files no run has read yet, then exit (for an outside scheduler such as cron); a failed run exits with an error."),
    ] = False,
) -> None:
    """Run the batch job on a schedule over the files no run has read yet (embedded default)."""
    from batch.schedule import parse_interval, run_schedule, tick_times

    settings = get_settings()
    _check(dataset)
    if once:
        if every or cron or max_runs:
            raise typer.BadParameter("--once runs one tick now: leave out --every, --cron and --max-runs")
        _tick_now(settings, dataset, input)
        return
    times = tick_times(every=parse_interval(every) if every else None, cron=cron)
    run_schedule(
        settings, dataset, input, times, max_runs=max_runs, spark=wiring.spark_session(settings),
        after_write=wiring.serving_refresh(settings),
    )


def _tick_now(settings: Settings, dataset: str, inputs: list[str]) -> None:
    """One tick of the schedule, now: a batch run over the files no successful run has read.
    Unlike a tick of the running schedule, a failure is not left for the next tick: it raises."""
    from batch.job import run_batch
    from batch.schedule import unprocessed

    files = unprocessed(settings, dataset, inputs)
    if not files:
        console.print(f"schedule {dataset}: no new input files")
        return
    console.print(f"schedule {dataset}: {len(files)} new input file(s)")
    with console.status(f"batch {dataset} over {len(files)} new file(s)"):
        record = run_batch(
            dataset, files, settings=settings, spark=wiring.spark_session(settings), after_write=wiring.serving_refresh(settings),
        )
    print_run(record)


@app.command("jars")
def batch_jars() -> None:
    """Print the Delta jars as a comma-separated list, for `spark-submit --jars "$(lakehouse batch jars)"`."""
    from local_services import jvm

    sys.stdout.write(",".join(str(jar) for jar in jvm.delta_jars(get_settings())) + "\n")


@app.command("maintain")
def batch_maintain(
    dataset: Dataset,
    vacuum: Annotated[bool, typer.Option(help="Also VACUUM files no snapshot within the retention needs.")] = True,
    retention_hours: Annotated[float, typer.Option(help="History VACUUM keeps (Delta's safe minimum: 168).")] = 168,
    force: Annotated[bool, typer.Option(help="Allow a retention below 168 hours.")] = False,
) -> None:
    """OPTIMIZE (compact small files) and VACUUM the dataset's Delta tables."""
    from batch.maintenance import maintain

    _check(dataset)
    settings = get_settings()
    with console.status(f"maintaining {dataset}"):
        outcomes = maintain(wiring.spark_session(settings), settings, dataset, vacuum=vacuum, retention_hours=retention_hours, force=force)
    print_maintenance(dataset, outcomes)


@app.command("models")
def batch_models(dataset: OptionalDataset = None) -> None:
    """List the model registry; `served`: the run that trained the model succeeded (a failed
    run's models stay listed, never used)."""
    from lakehouse import registry

    settings = get_settings()
    frame = registry.list_models(settings, dataset)
    frame["served"] = frame.run_id.isna() | frame.run_id.isin(registry.succeeded_runs(settings))
    print_frame(
        frame[["dataset", "entity_id", "version", "detector", "threshold", "train_rows", "train_start", "train_end", "run_id", "served"]],
        "Model registry",
    )


@app.command("runs")
def batch_runs(dataset: OptionalDataset = None) -> None:
    """List batch runs with their counts and watermarks."""
    from batch import run_log

    frame = run_log.runs(get_settings(), dataset)
    print_frame(frame[["run_id", "dataset", "status", "input_rows", "valid_rows", "quarantined_rows", "duplicate_rows", "conflict_rows", "anomalies", "watermark"]], "Batch runs")


@app.command("report")
def batch_report(
    run_id: Annotated[str, typer.Argument(help="Run id (see `lakehouse batch runs`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole stored report as JSON.")] = False,
) -> None:
    """Show a run's report: counts, timings and the Great Expectations result per rule."""
    from batch import run_log

    stored = run_log.report(get_settings(), run_id)
    if as_json:
        sys.stdout.write(json.dumps(stored, default=str, indent=2) + "\n")
        return
    print_report(run_id, stored)
    quarantined = [item for item in stored["report"].get("files", []) if item.get("rule")]
    if quarantined:
        import pandas as pd

        print_frame(pd.DataFrame(quarantined)[["path", "format", "rule", "reason"]], "Files quarantined whole")
