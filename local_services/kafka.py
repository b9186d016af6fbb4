"""The local Kafka broker: one KRaft server (broker and controller in one JVM) on loopback.

It runs on Java 17 from the jars of `org.apache.kafka:kafka_2.13` that `jvm.ensure("kafka", self.settings)`
fetches. Its folder, <work_dir>/services/kafka/, holds:

    config/server.properties, config/log4j.properties   rendered from infra/kafka/ at each start
    data/                                                 topic data and the metadata log
    cluster.id                                            the cluster id the storage was formatted with
    logs/kafka.log, pid                                   (managed by Service)

Topics are never created on the fly (auto.create.topics.enable=false): `speed.topics.create_topic`
creates them (against this broker or any other).
"""

from __future__ import annotations

import base64
import logging
import socket
import subprocess
import time
import uuid

from confluent_kafka.admin import AdminClient

from lakehouse.errors import ServiceError
from lakehouse.settings import PROJECT_ROOT, Settings
from local_services import jvm
from local_services.base import Service, fill_placeholders, read_properties

log = logging.getLogger(__name__)

TEMPLATE_DIR = PROJECT_ROOT / "infra" / "kafka"
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL_CLASS = "kafka.tools.StorageTool"
# Seconds a metadata request may take before the broker counts as not answering.
PROBE_TIMEOUT = 3.0


class KafkaBroker(Service):
    """Single-node KRaft broker; `start()` formats its storage on first use."""

    name = "kafka"

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        self.config_dir = self.home / "config"
        self.data_dir = self.home / "data"
        self.server_properties = self.config_dir / "server.properties"
        self.log4j_properties = self.config_dir / "log4j.properties"
        self.cluster_id_file = self.home / "cluster.id"

    # Service ------------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return bootstrap_servers(self.settings)

    def ports(self) -> tuple[int, ...]:
        return self.settings.kafka_port, self.settings.kafka_controller_port

    def prepare(self) -> None:
        self.require_free_ports(self.ports(), "kafka_port / kafka_controller_port")
        jvm.ensure("kafka", self.settings)
        self.render_config()
        self.format_storage()

    def command(self) -> list[str]:
        return [
            jvm.java17(),
            f"-Xmx{self.settings.kafka_heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            *self._java_options(),
            MAIN_CLASS,
            str(self.server_properties),
        ]

    def probe(self) -> bool:
        """True when the broker on the configured port answers metadata for this cluster."""
        # A plain TCP connect first: cheap, and spares librdkafka's connection-refused noise.
        try:
            with socket.create_connection(("127.0.0.1", self.settings.kafka_port), timeout=1.0):
                pass
        except OSError:
            return False
        metadata = _admin(self.settings).list_topics(timeout=PROBE_TIMEOUT)
        if not metadata.brokers:
            return False
        expected = self.cluster_id()
        # Another Kafka on the same port is not ours.
        return expected is None or metadata.cluster_id == expected

    # Configuration and storage ------------------------------------------------------------------
    def placeholders(self) -> dict[str, str]:
        return {
            "KAFKA_PORT": str(self.settings.kafka_port),
            "KAFKA_CONTROLLER_PORT": str(self.settings.kafka_controller_port),
            "KAFKA_DATA_DIR": str(self.data_dir),
        }

    def render_config(self) -> None:
        """Write config/ from the templates in infra/kafka/ (every start, so settings changes apply)."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        values = self.placeholders()
        for template in ("server.properties", "log4j.properties"):
            text = (TEMPLATE_DIR / template).read_text()
            header = f"# Generated from infra/kafka/{template} at each start: edit the template.\n"
            (self.config_dir / template).write_text(
                header + fill_placeholders(text, values, f"infra/kafka/{template}", escape_backslashes=True)
            )

    def cluster_id(self) -> str | None:
        try:
            return self.cluster_id_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def is_formatted(self) -> bool:
        return (self.data_dir / "meta.properties").exists()

    def format_storage(self) -> None:
        """Format data/ once with a cluster id kept in the service folder; no-op when formatted."""
        if self.is_formatted():
            # The storage's own id wins (the probe compares it with what the broker reports).
            # Changing kafka_controller_port later is fine: the single voter still leads.
            found = read_properties(self.data_dir / "meta.properties").get("cluster.id")
            if found and found != self.cluster_id():
                self.cluster_id_file.write_text(found + "\n")
            return
        cluster_id = self.cluster_id()
        if cluster_id is None:
            cluster_id = new_cluster_id()
            self.cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
            self.cluster_id_file.write_text(cluster_id + "\n")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            jvm.java17(),
            "-Xmx256m",
            *self._java_options(),
            STORAGE_TOOL_CLASS,
            "format",
            "--standalone",
            "--cluster-id",
            cluster_id,
            "--config",
            str(self.server_properties),
        ]
        log.info("formatting the Kafka storage in %s (cluster %s)", self.data_dir, cluster_id)
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=180, cwd=self.home
            )
        except subprocess.TimeoutExpired as error:
            raise ServiceError(self.name, "formatting the storage did not finish in 180 s") from error
        if result.returncode != 0 or not self.is_formatted():
            raise ServiceError(
                self.name,
                f"formatting the storage failed (exit {result.returncode}):\n"
                f"{result.stdout[-4000:]}{result.stderr[-4000:]}",
            )

    # Internals ----------------------------------------------------------------------------------
    def _java_options(self) -> list[str]:
        jars = jvm.component_dir("kafka", self.settings)
        return [
            f"-Dlog4j.configuration={self.log4j_properties.as_uri()}",
            # Kafka logs through SLF4J to reload4j (log4j.properties). log4j-core is on the class
            # path too, for Kafka's logger MBean only; unconfigured, it would report an error.
            "-Dlog4j2.statusLoggerLevel=OFF",
            "-cp",
            str(jars / "*"),
        ]


# Helpers ----------------------------------------------------------------------------------------
def bootstrap_servers(settings: Settings) -> str:
    """The `bootstrap.servers` value for clients of the local broker (whatever kafka_bootstrap_servers
    names for the other clients)."""
    return f"127.0.0.1:{settings.kafka_port}"


def new_cluster_id() -> str:
    """A random cluster id in Kafka's format: 16 random bytes, URL-safe base64 without padding."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        # Kafka avoids ids starting with '-' (they read as command-line options).
        if not text.startswith("-"):
            return text


def _admin(settings: Settings):
    return AdminClient(
        {
            "bootstrap.servers": bootstrap_servers(settings),
            "socket.timeout.ms": int(PROBE_TIMEOUT * 1000),
            # librdkafka would print every refused connection to stderr.
            "log_level": 0,
        }
    )
