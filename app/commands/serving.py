"""`lakehouse serve refresh`, `sql`, `anomalies`, `alerts`: the serving layer through Trino."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from app.commands import Dataset
from app.output import console, print_frame
from lakehouse.settings import get_settings

# `serve ...` is a group; sql, anomalies and alerts are top-level commands.
serve_app = typer.Typer(help="Serving layer: Trino tables and the merged views.", no_args_is_help=True)
app = typer.Typer()

ROLES = ("admin", "analyst")
FORMATS = ("table", "csv", "json")


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

    if role not in ROLES:
        raise typer.BadParameter("--as takes admin or analyst")
    if output not in FORMATS:
        raise typer.BadParameter("--format takes table, csv or json")
    if file is not None:
        text = file.read_text()
    elif query in (None, "-"):
        text = sys.stdin.read()
    else:
        text = query
    frame = trino_client.query(text.strip().rstrip(";"), settings=get_settings(), role=role)
    if output == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif output == "json":
        sys.stdout.write(frame.to_json(orient="records", date_format="iso") + "\n")
    else:
        print_frame(frame, None)


@app.command()
def anomalies(
    dataset: Dataset,
    hours: Annotated[float, typer.Option(help="How many hours of data, ending at the newest event.", min=1)] = 24,
) -> None:
    """Anomalies per entity in the last N hours of the merged view (batch and speed)."""
    from serving import views

    print_frame(views.recent_anomalies(dataset, hours, settings=get_settings()), f"{dataset}: anomalies in the last {hours:g} hours of data")


@app.command()
def alerts(
    dataset: Dataset,
    hours: Annotated[float, typer.Option(help="How many hours of data, ending at the newest event.", min=0.1)] = 24,
) -> None:
    """Alerts (the first alarm of each episode, detector.alert_quiet_events) in the last N hours of the merged view."""
    from serving import views

    print_frame(views.recent_alerts(dataset, hours, settings=get_settings()), f"{dataset}: alerts in the last {hours:g} hours of data")
