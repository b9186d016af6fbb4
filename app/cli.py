"""The `lakehouse` command: the root of the command tree, global options and error handling.

The subcommands live in app/commands/ (services, batch, speed, serving, evaluation); what they
print is laid out in app/output.py. Every command reads the process's settings here in app/, the
composition root, and hands them to the layers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.commands import batch, evaluation, serving, services, speed
from app.output import console, results
from lakehouse import logs, process
from lakehouse.errors import LakehouseError
from lakehouse.settings import get_settings

app = typer.Typer(
    help="Lambda-architecture lakehouse for anomaly detection (Spark + Delta, Beam, Trino).",
    no_args_is_help=True,
    add_completion=False,
)
# Top-level commands first (setup, up, down, status; sql, anomalies, alerts), then the groups.
app.add_typer(services.app)
app.add_typer(serving.app)
app.add_typer(batch.app, name="batch")
app.add_typer(speed.app, name="speed")
app.add_typer(serving.serve_app, name="serve")
app.add_typer(evaluation.app, name="eval")


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logs.configure(verbose, cache_dir=get_settings().cache_dir)


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


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Keep earlier demo tables instead of starting fresh.")] = False,
    stop: Annotated[bool, typer.Option(help="Stop the services at the end.")] = False,
    sensors: Annotated[int, typer.Option(help="Sensors to generate.", min=1)] = 8,
    days: Annotated[float, typer.Option(help="Days of events to generate (the last two feed the speed layer).", min=3)] = 6.0,
    cluster: Annotated[
        bool,
        typer.Option("--cluster", help="Run the cycle on the local cluster mode (`lakehouse up --cluster`) and write .work/cluster-demo.json."),
    ] = False,
) -> dict:
    """The whole Lambda cycle: generate -> batch -> speed -> Trino merged view, with every count."""
    from app import demo as demo_module

    if cluster:
        from app import cluster_demo

        if keep or stop:
            raise typer.BadParameter("--cluster starts fresh and leaves the clusters up (`lakehouse down` stops them)")
        return cluster_demo.run(get_settings(), sensors=sensors, days=days)

    # Returned for callers in this process (the tests' session fixture); the command line prints as it goes.
    return demo_module.run(get_settings(), fresh=not keep, stop_services=stop, sensors=sensors, days=days)


def main() -> None:
    process.run_then_exit(_run)  # ends without Arrow's native teardown: see lakehouse/process.py


def _run() -> None:
    try:
        app()
    except LakehouseError as error:
        console.print(f"[red]error:[/] {error}")
        raise SystemExit(2) from error


if __name__ == "__main__":
    main()
