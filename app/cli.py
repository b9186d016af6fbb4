"""The `lakehouse` command: services, batch and speed jobs, SQL, and the demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from app import wiring
from lakehouse import logs
from lakehouse.errors import LakehouseError
from lakehouse.logs import console, frame_table, results
from lakehouse.settings import get_settings

app = typer.Typer(
    help="Lambda-architecture lakehouse for anomaly detection (Spark + Delta, Beam, Trino).",
    no_args_is_help=True,
    add_completion=False,
)
batch_app = typer.Typer(help="Batch layer: Spark jobs over files into Delta.", no_args_is_help=True)
speed_app = typer.Typer(help="Speed layer: the Beam pipeline into the hot Delta table.", no_args_is_help=True)
serve_app = typer.Typer(help="Serving layer: Trino tables and the merged views.", no_args_is_help=True)
app.add_typer(batch_app, name="batch")
app.add_typer(speed_app, name="speed")
app.add_typer(serve_app, name="serve")
eval_app = typer.Typer(help="Detection quality: a run against labels, and the NAB and ODDS benchmarks.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

Dataset = Annotated[str, typer.Option("--dataset", "-d", help="Dataset declared in schemas/.")]
Service = Annotated[
    Optional[list[str]],
    typer.Option("--only", help="trino, kafka, s3 and/or flink (default: trino and kafka, plus s3 when the warehouse is on the local S3 server; flink starts with the first Flink run)."),
]


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logs.configure(verbose)


def _services(only: list[str] | None, *, every: bool = False):
    """The services named by --only; by default the ones the configured lakehouse needs (or every one)."""
    from lakehouse import storage
    from local_services.flink import FlinkJobServer
    from local_services.kafka import KafkaBroker
    from local_services.s3 import S3Server
    from local_services.trino import TrinoServer

    # S3 first: Trino reads the warehouse as soon as it is up.
    known = {"s3": S3Server, "trino": TrinoServer, "kafka": KafkaBroker, "flink": FlinkJobServer}
    settings = get_settings()
    needed = ["trino", "kafka"]
    if every or (not settings.warehouse_is_local and storage.aws_endpoint() == settings.s3_endpoint):
        needed.insert(0, "s3")
    if every:
        needed.append("flink")
    unknown = [name for name in only or [] if name not in known]
    if unknown:
        raise typer.BadParameter(f"unknown service(s) {unknown}; choose from {list(known)}")
    # --only keeps the start order of `known`, whatever order it was given in.
    names = [name for name in known if name in only] if only else needed
    return [known[name](settings) for name in names]


def _print_status(services) -> None:
    table = Table(title="Local services")
    for column in ("service", "state", "pid", "address", "log"):
        table.add_column(column)
    for service in services:
        status = service.status()
        state = "[green]ready[/]" if status.ready else ("[yellow]starting[/]" if status.running else "[red]stopped[/]")
        table.add_row(status.name, state, str(status.pid or "-"), status.address, str(status.log_file))
    results.print(table)


@app.command()
def setup(
    component: Annotated[Optional[list[str]], typer.Option(help="delta, trino, kafka, s3, flink (default: all).")] = None,
) -> None:
    """Fetch the pinned JVM artifacts from Maven Central into the cache (done lazily otherwise)."""
    from local_services import jvm

    for name in component or jvm.COMPONENTS:
        with console.status(f"fetching {name} artifacts"):
            folder = jvm.ensure(name, get_settings())  # type: ignore[arg-type]
        console.print(f"[green]✓[/] {name}: {folder}")


@app.command()
def up(only: Service = None) -> None:
    """Start the local Trino and Kafka (and the S3 server) on loopback, reused when already running."""
    settings = get_settings()
    wiring.require_local(settings, "lakehouse up")
    services = _services(only)
    for service in services:
        with console.status(f"starting {service.name}"):
            service.start()
        if service.name == "s3":
            from local_services.s3 import client_environment

            exports = " ".join(f"{key}={value}" for key, value in client_environment(service.settings).items())
            console.print(f"S3 clients reach the local server with: [bold]export {exports}[/]")
    if any(service.name == "trino" for service in services):
        from serving import views

        views.refresh_all(settings)
    _print_status(services)


@app.command()
def down(only: Service = None) -> None:
    """Stop the local services."""
    wiring.require_local(get_settings(), "lakehouse down")
    for service in _services(only, every=True):
        stopped = service.stop()
        console.print(f"{service.name}: {'stopped' if stopped else 'was not running'}")


@app.command()
def status(only: Service = None) -> None:
    """Show whether each local service is running and answering."""
    _print_status(_services(only, every=True))


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Folder for the generated files.")] = Path(".work/data/sensor_events"),
    sensors: Annotated[int, typer.Option(min=1)] = 8,
    days: Annotated[float, typer.Option(min=0.5)] = 6.0,
    seed: int = 42,
) -> None:
    """Generate synthetic sensor_events (JSON lines) with labelled anomalies and planted bad records."""
    from app import demo

    files = demo.write_inputs(out, sensors=sensors, days=days, seed=seed)
    results.print_json(json.dumps({name: str(path) for name, path in files.items()}))


@batch_app.command("run")
def batch_run(
    dataset: Dataset,
    input: Annotated[list[str], typer.Option("--input", "-i", help="File, folder, glob or s3:// URI (repeatable), or 'landing' for the speed layer's landing table.")],
    detector: Annotated[Optional[str], typer.Option(help="Override the declared detector: knn, lof, iforest, hbos, ensemble.")] = None,
    contamination: Annotated[Optional[float], typer.Option(help="Override the declared contamination (0, 0.5].")] = None,
) -> None:
    """Ingest, validate, write silver and quarantine, train, score the batch view, move the watermark."""
    from rich.progress import Progress

    from batch.job import STEPS, run_batch

    with Progress(console=console) as progress:
        task = progress.add_task(f"batch {dataset}", total=len(STEPS))

        def advance(step: str) -> None:
            progress.update(task, description=f"batch {dataset}: {step}", completed=STEPS.index(step))

        overrides = {key: value for key, value in (("name", detector), ("contamination", contamination)) if value is not None}
        settings = get_settings()
        record = run_batch(
            dataset, input, settings=settings, spark=wiring.spark_session(settings), progress=advance,
            detector=overrides or None, after_write=wiring.serving_refresh(settings),
        )
        progress.update(task, completed=len(STEPS), description=f"batch {dataset}: done")
    _print_run(record)


def _print_run(record) -> None:
    table = Table(title=f"Batch run {record.run_id}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name in ("input_rows", "valid_rows", "quarantined_rows", "duplicate_rows", "silver_rows", "scored_rows", "anomalies", "model_version", "expired_hot_rows", "watermark"):
        table.add_row(name, str(getattr(record, name)))
    table.add_row("seconds", f"{sum(record.timings.values()):.1f}")
    results.print(table)


@batch_app.command("schedule")
def batch_schedule(
    dataset: Dataset,
    input: Annotated[list[str], typer.Option("--input", "-i", help="Glob of the landing files (repeatable).")],
    every: Annotated[Optional[str], typer.Option(help="Interval: 30m, 1h, 1d ...")] = None,
    cron: Annotated[Optional[str], typer.Option(help="Cron expression (UTC), e.g. '5 * * * *'.")] = None,
    max_runs: Annotated[Optional[int], typer.Option(help="Stop after this many ticks (default: run forever).", min=1)] = None,
) -> None:
    """Run the batch job on a schedule over the files no run has read yet (embedded default)."""
    from batch.schedule import parse_interval, run_schedule, tick_times

    settings = get_settings()
    times = tick_times(every=parse_interval(every) if every else None, cron=cron)
    run_schedule(
        settings, dataset, input, times, max_runs=max_runs, spark=wiring.spark_session(settings),
        after_write=wiring.serving_refresh(settings),
    )


@batch_app.command("jars")
def batch_jars() -> None:
    """Print the Delta jars as a comma-separated list, for `spark-submit --jars "$(lakehouse batch jars)"`."""
    from local_services import jvm

    sys.stdout.write(",".join(str(jar) for jar in jvm.delta_jars(get_settings())) + "\n")


@batch_app.command("maintain")
def batch_maintain(
    dataset: Dataset,
    vacuum: Annotated[bool, typer.Option(help="Also VACUUM files no snapshot within the retention needs.")] = True,
    retention_hours: Annotated[float, typer.Option(help="History VACUUM keeps (Delta's safe minimum: 168).")] = 168,
    force: Annotated[bool, typer.Option(help="Allow a retention below 168 hours.")] = False,
) -> None:
    """OPTIMIZE (compact small files) and VACUUM the dataset's Delta tables."""
    from batch.maintenance import maintain

    settings = get_settings()
    with console.status(f"maintaining {dataset}"):
        outcomes = maintain(wiring.spark_session(settings), settings, dataset, vacuum=vacuum, retention_hours=retention_hours, force=force)
    table = Table(title=f"Delta maintenance of {dataset}")
    for column in ("table", "files before", "files after", "compacted", "vacuumed"):
        table.add_column(column)
    for outcome in outcomes:
        table.add_row(outcome.table, str(outcome.files_before), str(outcome.files_after), str(outcome.files_compacted), str(outcome.files_vacuumed))
    results.print(table)


@batch_app.command("models")
def batch_models(dataset: Annotated[Optional[str], typer.Option("--dataset", "-d")] = None) -> None:
    """List the model registry."""
    from lakehouse import registry

    frame = registry.list_models(get_settings(), dataset)
    _print_frame(frame[["dataset", "entity_id", "version", "detector", "threshold", "train_rows", "train_start", "train_end", "run_id"]], "Model registry")


@batch_app.command("runs")
def batch_runs(dataset: Annotated[Optional[str], typer.Option("--dataset", "-d")] = None) -> None:
    """List batch runs with their counts and watermarks."""
    from batch import run_log

    frame = run_log.runs(get_settings(), dataset)
    _print_frame(frame[["run_id", "dataset", "status", "input_rows", "valid_rows", "quarantined_rows", "duplicate_rows", "anomalies", "watermark"]], "Batch runs")


@batch_app.command("report")
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
    summary = Table(title=f"Run {run_id} ({stored['dataset']}, {stored['status']})")
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    for name in ("input_rows", "valid_rows", "quarantined_rows", "duplicate_rows", "anomalies", "model_version", "watermark"):
        summary.add_row(name, str(stored.get(name)))
    for step, seconds in stored["timings"].items():
        summary.add_row(f"{step} (s)", f"{seconds:.1f}")
    results.print(summary)
    result = stored["report"].get("great_expectations", {})
    table = Table(title="Great Expectations, per rule")
    for column in ("rule", "expectation", "checked", "unexpected", "examples"):
        table.add_column(column)
    for item in result.get("expectations", []):
        table.add_row(
            item["rule"], item["expectation_type"], str(item["element_count"]), str(item["unexpected_count"]),
            ", ".join(str(value) for value in item["partial_unexpected_list"][:3]),
        )
    results.print(table)


@speed_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def speed_run(
    context: typer.Context,
    dataset: Dataset,
    input: Annotated[Optional[str], typer.Option("--input", "-i", help="JSON-lines file or glob to replay.")] = None,
    kafka: Annotated[bool, typer.Option("--kafka", help="Read the dataset's Kafka topic up to its end.")] = False,
    follow: Annotated[
        bool,
        typer.Option("--follow", help="With --kafka: keep reading until Ctrl-C (continuously on Flink, in micro-batches locally)."),
    ] = False,
    alerts: Annotated[bool, typer.Option(help="With --kafka: publish anomalies to lakehouse.<dataset>.alerts.")] = True,
    metrics_port: Annotated[int, typer.Option(help="Serve Prometheus metrics on 127.0.0.1:PORT (0: off).", min=0)] = 0,
) -> None:
    """Run the Beam pipeline over a replay file or the Kafka topic (extra args go to Beam, e.g. --runner)."""
    from lakehouse.constants import alerts_topic, events_topic
    from speed.pipeline import run

    if bool(input) == kafka:
        raise typer.BadParameter("give exactly one source: --input FILE or --kafka")
    if follow and not kafka:
        raise typer.BadParameter("--follow reads Kafka: add --kafka")
    source = ["--kafka_topic", events_topic(dataset)] if kafka else ["--input", input]
    if follow:
        source += ["--follow"]
    if kafka and alerts:
        source += ["--alerts_topic", alerts_topic(dataset)]
    if metrics_port:
        source += ["--metrics_port", str(metrics_port)]
    doing = f"following {source[1]} (Ctrl-C stops)" if follow else f"scoring {source[1]}"
    with console.status(f"speed {dataset}: {doing}"):
        settings = get_settings()
        result = run(["--dataset", dataset, *source, *context.args], settings=settings, hooks=wiring.speed_hooks(settings))
    results.print(result)


@speed_app.command("produce")
def speed_produce(
    dataset: Dataset,
    input: Annotated[list[Path], typer.Option("--input", "-i", help="JSON-lines or CSV file (repeatable).")],
    rate: Annotated[float, typer.Option(help="Messages per second; 0 sends as fast as possible.", min=0)] = 0.0,
    partitions: Annotated[int, typer.Option(help="Partitions if the topic has to be created.", min=1)] = 2,
) -> None:
    """Replay files into the dataset's Kafka topic (created if missing), keyed by entity."""
    from rich.progress import Progress

    import schemas
    from lakehouse.constants import events_topic
    from speed.topics import create_topic
    from speed.produce import produce

    settings = get_settings()
    topic = events_topic(dataset)
    create_topic(topic, partitions, settings=settings)
    total = sum(1 for path in input for _ in open(path))
    with Progress(console=console) as progress:
        task = progress.add_task(f"producing to {topic}", total=total)
        sent = produce(schemas.load(dataset), list(input), topic, rate=rate, settings=settings, progress=lambda n: progress.advance(task, n))
    console.print(f"sent {sent} messages to {topic}")


@serve_app.command("refresh")
def serve_refresh() -> None:
    """Register every warehouse table in Trino and (re)create the merged views."""
    from serving import views

    for line in views.refresh_all(get_settings()):
        console.print(line)


@app.command()
def sql(
    query: Annotated[Optional[str], typer.Argument(help="SQL text; '-' or nothing reads stdin.")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="Read the query from a file.")] = None,
    output: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    role: Annotated[str, typer.Option("--as", help="Log in as admin (reads and writes) or analyst (reads only).")] = "admin",
) -> None:
    """Run SQL on the local Trino (HTTPS, password login) and print the result."""
    from serving import trino_client

    if file is not None:
        text = file.read_text()
    elif query in (None, "-"):
        text = sys.stdin.read()
    else:
        text = query
    if role not in ("admin", "analyst"):
        raise typer.BadParameter("--as takes admin or analyst")
    frame = trino_client.query(text.strip().rstrip(";"), settings=get_settings(), role=role)
    if output == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif output == "json":
        sys.stdout.write(frame.to_json(orient="records", date_format="iso") + "\n")
    else:
        _print_frame(frame, None)


@app.command()
def anomalies(
    dataset: Dataset,
    hours: Annotated[float, typer.Option(help="How many hours of data, ending at the newest event.", min=1)] = 24,
) -> None:
    """Anomalies per entity in the last N hours of the merged view (batch and speed)."""
    from serving import views

    _print_frame(views.recent_anomalies(dataset, hours, settings=get_settings()), f"{dataset}: anomalies in the last {hours:g} hours of data")


@app.command()
def alerts(
    dataset: Dataset,
    hours: Annotated[float, typer.Option(help="How many hours of data, ending at the newest event.", min=0.1)] = 24,
) -> None:
    """Alerts (the first alarm of each episode, detector.alert_quiet_events) in the last N hours of the merged view."""
    from serving import views

    _print_frame(views.recent_alerts(dataset, hours, settings=get_settings()), f"{dataset}: alerts in the last {hours:g} hours of data")


@eval_app.command("run")
def eval_run(
    dataset: Dataset,
    labels: Annotated[Path, typer.Option("--labels", "-l", help="NAB windows JSON, or CSV with entity_id and start,end or event_time.")],
    scores: Annotated[str, typer.Option(help="merged (the merged view, through Trino), hot or batch (one layer's Delta table).")] = "merged",
    probation: Annotated[float, typer.Option(help="Leading share of each entity's events not scored (NAB: 0.15).", min=0, max=0.9)] = 0.15,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Score a dataset's anomaly scores against labels: NAB score per profile, window precision/recall/F1."""
    from quality.run_eval import evaluate_run

    with console.status(f"evaluating {dataset} ({scores}) against {labels}"):
        result = evaluate_run(dataset, labels, get_settings(), source=scores, probation=probation)
    if as_json:
        sys.stdout.write(json.dumps(result.summary(), default=float, indent=2) + "\n")
        return
    _print_quality(f"{dataset}: {scores} scores against {labels.name}", {"this run": result.summary()})
    results.print(
        f"{result.entities} entities, {result.events} events ({result.scored_events} scored), {result.windows} labelled windows in range; "
        f"{result.in_sample_rows} rows were scored by a model trained on them (the batch view's rows carry their leave-one-out training scores)."
    )
    results.print(
        f"NAB's best threshold (standard profile) is {result.evaluation.optimised['standard'].threshold:.3g} on the relative scale "
        "(0 = mean training score, 1 = the contamination threshold); `detector.threshold_scale` set to it in the schema "
        "makes the system's own flags follow it from the next batch run. The alerts columns apply "
        "`detector.alert_quiet_events` to those flags (the `alerts` view); `make bench` measures both settings on NAB."
    )
    sweep = ", ".join(f"{quiet}: {score:.1f}" + (" (declared)" if quiet == result.alert_quiet_events else "") for quiet, score in result.alerts_by_quiet_events.items())
    results.print(f"NAB standard of the alerts by `detector.alert_quiet_events` (same flags): {sweep}.")
    if result.unlabelled_entities:
        results.print(f"entities without labels (every alarm is a false positive): {', '.join(result.unlabelled_entities[:10])}")


def _print_quality(title: str, rows: dict[str, dict], *, against_published: bool = False) -> None:
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


@eval_app.command("nab")
def eval_nab(
    data: Annotated[Optional[Path], typer.Option(help="NAB folder (data/, labels/); default ../shared/data/nab.")] = None,
    system: Annotated[bool, typer.Option(help="Also run the declared detector through Spark batch runs and the Beam pipeline.")] = True,
    detector: Annotated[Optional[list[str]], typer.Option(help="Candidates for the offline walk-forward (default: declared, knn, lof, iforest, hbos, ensemble).")] = None,
    series: Annotated[Optional[list[str]], typer.Option(help="Only these series (file stems).")] = None,
) -> None:
    """The NAB benchmark without look-ahead: each detector walk-forward, and the declared one through the system.

    Walk-forward models are retrained at 15, 30, 50 and 75% of each series, as the system run does; the declared detector is also shown retrained by a batch run a day, as a scheduled batch layer would. The held-out measurement (choices made on other series) is in `make bench`.
    """
    from quality import benchmark, nab, reference_data_dir

    folder = data or reference_data_dir() / "nab"
    if not (folder / "labels" / "combined_windows.json").exists():
        raise LakehouseError(f"no NAB data at {folder} (expected data/<category>/*.csv and labels/combined_windows.json)")
    settings = get_settings()
    with console.status("NAB benchmark") as status:
        report = benchmark.nab_benchmark(
            folder, settings=settings, workspace=settings.work_dir / "eval" / "nab", system=system,
            candidates=tuple(detector) if detector else benchmark.CANDIDATES, only=series, progress=status.update,
            spark=wiring.spark_session(settings) if system else None,
        )
    rows = {f"{name} (walk-forward)": summary for name, summary in report.detectors.items()}
    if report.system is not None:
        rows["declared, through batch + speed"] = report.system
    _print_quality(f"NAB: {report.series} series, {report.rows} rows, {report.windows} windows", rows, against_published=True)
    published = Table(title="Published NAB standard (58 series)")
    published.add_column("detector")
    published.add_column("score", justify="right")
    for name, score in nab.PUBLISHED_STANDARD.items():
        published.add_row(name, f"{score:.1f}")
    results.print(published)
    if report.system_matches_offline is not None:
        results.print(f"system vs walk-forward scores: largest difference {report.system_matches_offline:.2e}; stages: {report.stages}")


@eval_app.command("odds")
def eval_odds(
    data: Annotated[Optional[Path], typer.Option(help="Folder of ODDS .mat files; default ../shared/data/odds.")] = None,
    splits: Annotated[int, typer.Option(help="Random 60/40 train/test splits per table.", min=1)] = 10,
) -> None:
    """ROC-AUC per ODDS table and detector (fit on 60%, scored on 40%), next to PyOD's published figures."""
    from quality import odds, reference_data_dir

    folder = data or reference_data_dir() / "odds"
    with console.status("ODDS benchmark"):
        rows = odds.run(folder, splits=splits)
    _print_frame(__import__("pandas").DataFrame(rows), "ODDS ROC-AUC (mean of random 60/40 splits)")


def _print_frame(frame, title: str | None) -> None:
    results.print(frame_table(frame, title))
    results.print(f"({len(frame)} rows)")


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Keep earlier demo tables instead of starting fresh.")] = False,
    stop: Annotated[bool, typer.Option(help="Stop the services at the end.")] = False,
) -> None:
    """The whole Lambda cycle: generate -> batch -> speed -> Trino merged view, with every count."""
    from app import demo as demo_module

    demo_module.run(get_settings(), fresh=not keep, stop_services=stop)


def main() -> None:
    try:
        app()
    except LakehouseError as error:
        console.print(f"[red]error:[/] {error}")
        raise SystemExit(2) from error


if __name__ == "__main__":
    main()
