"""The cluster mode's Trino configuration, rendered without starting anything: a coordinator that
leaves tasks to its worker, and a worker that finds it through discovery with the same secret."""

from __future__ import annotations

from lakehouse.settings import get_settings
from local_services.base import read_properties
from local_services.trino import TrinoServer, TrinoWorker


def _elsewhere(tmp_path):
    # Rendered in a folder of the test's own: the suite's running Trino reads its configuration
    # (and its password file) from the services folder, which rendering rewrites.
    return get_settings().model_copy(update={"services_root": str(tmp_path / "services")})


def test_the_worker_registers_with_the_coordinator_and_shares_its_secret(tmp_path):
    settings = _elsewhere(tmp_path)
    coordinator, worker = TrinoServer(settings, cluster=True), TrinoWorker(settings)
    coordinator.render_configuration()
    worker.prepare_etc()
    leader = read_properties(coordinator.etc_dir / "config.properties")
    follower = read_properties(worker.etc_dir / "config.properties")

    assert (leader["coordinator"], leader["node-scheduler.include-coordinator"]) == ("true", "false")
    assert follower["coordinator"] == "false"
    assert follower["discovery.uri"] == f"http://127.0.0.1:{settings.trino_http_port}" == leader["discovery.uri"]
    assert follower["internal-communication.shared-secret"] == leader["internal-communication.shared-secret"]
    assert follower["http-server.http.port"] == str(settings.trino_worker_port)
    # Clients log in on the coordinator only: the worker has no HTTPS port and no authenticator.
    assert not {"http-server.https.enabled", "http-server.authentication.type"} & set(follower)
    nodes = [read_properties(server.etc_dir / "node.properties") for server in (coordinator, worker)]
    assert nodes[0]["node.id"] != nodes[1]["node.id"] and nodes[0]["node.data-dir"] != nodes[1]["node.data-dir"]
    assert nodes[1]["node.environment"] == nodes[0]["node.environment"]
    assert f"-Xmx{settings.trino_worker_heap}" in (worker.etc_dir / "jvm.config").read_text()


def test_the_embedded_coordinator_still_runs_every_task_itself(tmp_path):
    server = TrinoServer(_elsewhere(tmp_path))
    server.render_configuration()
    assert read_properties(server.etc_dir / "config.properties")["node-scheduler.include-coordinator"] == "true"
