"""`lakehouse speed ...`: the Beam speed pipeline and the replay of files into its Kafka topic."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from app import wiring
from app.commands import Dataset
from app.output import console, results
from lakehouse.settings import get_settings

app = typer.Typer(help="Speed layer: the Beam pipeline into the hot Delta table.", no_args_is_help=True)


@app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
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
    settings = get_settings()
    doing = f"following {source[1]} (Ctrl-C stops)" if follow else f"scoring {source[1]}"
    with console.status(f"speed {dataset}: {doing}"):
        result = run(["--dataset", dataset, *source, *context.args], settings=settings, hooks=wiring.speed_hooks(settings))
    results.print(result)


@app.command("produce")
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
    from speed.produce import produce
    from speed.topics import create_topic

    settings = get_settings()
    topic = events_topic(dataset)
    create_topic(topic, partitions, settings=settings)
    total = 0
    for path in input:
        with open(path) as lines:
            total += sum(1 for _ in lines)
    with Progress(console=console) as progress:
        task = progress.add_task(f"producing to {topic}", total=total)
        sent = produce(schemas.load(dataset), list(input), topic, rate=rate, settings=settings, progress=lambda count: progress.advance(task, count))
    console.print(f"sent {sent} messages to {topic}")
