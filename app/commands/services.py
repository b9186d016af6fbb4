"""`lakehouse setup`, `up`, `down`, `status`: the pinned JVM artifacts and the local services."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from app import wiring
from app.output import console, print_status
from lakehouse.settings import Settings, get_settings

app = typer.Typer()

Service = Annotated[
    Optional[list[str]],
    typer.Option("--only", help="trino, kafka, s3 and/or flink (default: trino and kafka, plus s3 when the warehouse is on the local S3 server; flink starts with the first Flink run)."),
]


Cluster = Annotated[
    bool,
    typer.Option(
        "--cluster",
        help="The local cluster mode: Spark standalone (master + worker), a Flink session cluster (JobManager, "
        "TaskManager, Beam worker pool, job server) and Trino coordinator + worker, all on loopback.",
    ),
]


def _services(settings: Settings, only: list[str] | None, *, every: bool = False, cluster: bool = False):
    """The services named by --only; by default the ones the configured lakehouse needs (or every
    one: the embedded services and the cluster mode's processes)."""
    from lakehouse import storage
    from local_services.cluster import cluster_services
    from local_services.flink import FlinkJobServer
    from local_services.kafka import KafkaBroker
    from local_services.s3 import S3Server
    from local_services.trino import TrinoServer

    if cluster or every:
        processes = cluster_services(settings)
        known_processes = {service.name: service for service in processes}
        unknown = [name for name in only or [] if name not in known_processes and name not in ("s3", "flink")]
        if unknown:
            raise typer.BadParameter(f"unknown service(s) {unknown}; choose from {list(known_processes)}")
        if cluster:
            if not settings.warehouse_is_local and storage.aws_endpoint() == settings.s3_endpoint:
                processes.insert(0, S3Server(settings))
            return [service for service in processes if not only or service.name in only]
        # Every process this project may have started: S3, the embedded job server, the cluster's.
        every_service = [S3Server(settings), *processes, FlinkJobServer(settings)]
        return [service for service in every_service if not only or service.name in only]

    # S3 first: Trino reads the warehouse as soon as it is up.
    known = {"s3": S3Server, "trino": TrinoServer, "kafka": KafkaBroker, "flink": FlinkJobServer}
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


@app.command()
def setup(
    component: Annotated[Optional[list[str]], typer.Option(help="delta, trino, kafka, s3, flink (default: all).")] = None,
) -> None:
    """Fetch the pinned JVM artifacts from Maven Central into the cache (done lazily otherwise)."""
    from local_services import jvm

    settings = get_settings()
    unknown = [name for name in component or [] if name not in jvm.COMPONENTS]
    if unknown:
        raise typer.BadParameter(f"unknown component(s) {unknown}; choose from {list(jvm.COMPONENTS)}")
    for name in component or jvm.COMPONENTS:
        with console.status(f"fetching {name} artifacts"):
            folder = jvm.ensure(name, settings)  # type: ignore[arg-type]
        console.print(f"[green]✓[/] {name}: {folder}")


@app.command()
def up(only: Service = None, cluster: Cluster = False) -> None:
    """Start the local Trino and Kafka (and the S3 server) on loopback, reused when already running;
    with --cluster, the local cluster mode's processes (docs/operations.md#local-cluster-mode)."""
    settings = get_settings()
    wiring.require_local(settings, "lakehouse up")
    services = _services(settings, only, cluster=cluster)
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
    print_status(services)


@app.command()
def down(only: Service = None) -> None:
    """Stop the local services."""
    settings = get_settings()
    wiring.require_local(settings, "lakehouse down")
    # The cluster's processes in reverse start order: workers before what they registered with.
    for service in reversed(_services(settings, only, every=True)):
        stopped = service.stop()
        console.print(f"{service.name}: {'stopped' if stopped else 'was not running'}")


@app.command()
def status(only: Service = None) -> None:
    """Show whether each local service is running and answering."""
    print_status(_services(get_settings(), only, every=True))
