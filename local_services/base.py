"""A background JVM service with a pid file, a log file and a readiness probe.

Each service keeps everything under <work_dir>/services/<name>/ (pid, logs, data), runs in its
own process group so that stopping it also stops its children, and is reused when already up.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from lakehouse.errors import ConfigurationError, ServiceError
from lakehouse.settings import Settings

log = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def fill_placeholders(text: str, values: dict[str, str], source: str, *, escape_backslashes: bool = False) -> str:
    """Replace ${NAME} in a configuration template from infra/; an unknown name is an error.

    escape_backslashes: for .properties files, where a backslash starts an escape.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ConfigurationError(f"{source}: unknown placeholder ${{{name}}}")
        return values[name].replace("\\", "\\\\") if escape_backslashes else values[name]

    return _PLACEHOLDER.sub(replace, text)


def read_properties(path: Path) -> dict[str, str]:
    """key=value lines of a Java properties file written by this project (no escapes, no ':')."""
    properties: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            properties[key.strip()] = value.strip()
    return properties


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    ready: bool
    pid: int | None
    address: str
    log_file: Path


class Service(ABC):
    """Subclasses say how to prepare, launch and probe; this class manages the process."""

    name: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = self.settings.services_dir / self.name
        self.pid_file = self.home / "pid"
        self.log_file = self.home / "logs" / f"{self.name}.log"

    # What a subclass provides ---------------------------------------------------------------
    @property
    @abstractmethod
    def address(self) -> str:
        """Where clients connect, for status output."""

    @abstractmethod
    def prepare(self) -> None:
        """Fetch artifacts and write configuration; idempotent."""

    @abstractmethod
    def command(self) -> list[str]:
        """The command line that runs the service in the foreground."""

    @abstractmethod
    def probe(self) -> bool:
        """True when the service answers clients."""

    @abstractmethod
    def ports(self) -> tuple[int, ...]:
        """Every fixed port the service listens on (ports an engine picks at random aside); the
        defaults of all services must not overlap (tests/test_ports.py)."""

    def require_free_ports(self, ports: tuple[int, ...], settings_names: str) -> None:
        """Refuse to start when another process already listens on one of the service's ports."""
        for port in ports:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.settimeout(0.5)
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    raise ServiceError(
                        self.name,
                        f"port {port} on 127.0.0.1 is already taken by another process; "
                        f"stop it or change {settings_names}",
                    )

    def all_interfaces_ports(self) -> tuple[int, ...]:
        """Ports the service binds on every interface although told loopback (an engine without a
        bind option). Every other port it opens listens on 127.0.0.1 only (tests/test_loopback.py)."""
        return ()

    def working_directory(self) -> Path:
        return self.home

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    # Lifecycle --------------------------------------------------------------------------------
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def status(self) -> ServiceStatus:
        pid = self.pid()
        return ServiceStatus(
            name=self.name,
            running=pid is not None,
            ready=pid is not None and self._safe_probe(),
            pid=pid,
            address=self.address,
            log_file=self.log_file,
        )

    def _safe_probe(self) -> bool:
        try:
            return self.probe()
        except Exception:  # noqa: BLE001 - any failure to answer means "not ready"
            return False

    def start(self, *, wait: bool = True) -> ServiceStatus:
        """Start the service unless it is already running; wait until it answers."""
        if self.pid() is not None:
            log.info("%s already running (pid %s)", self.name, self.pid())
            if wait:
                self.wait_ready()
            return self.status()
        self.prepare()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting %s on %s (log: %s)", self.name, self.address, self.log_file)
        with open(self.log_file, "ab") as log_stream:
            process = subprocess.Popen(
                self.command(),
                cwd=self.working_directory(),
                env=self.environment(),
                stdout=log_stream,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(process.pid))
        if wait:
            self.wait_ready(process=process)
        return self.status()

    def wait_ready(self, *, process: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + self.settings.service_start_timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise ServiceError(
                    self.name,
                    f"exited with code {process.returncode} while starting; "
                    f"last log lines:\n{self.tail_log()}",
                )
            if self._safe_probe():
                log.info("%s is ready on %s", self.name, self.address)
                return
            time.sleep(1.0)
        raise ServiceError(
            self.name,
            f"not ready after {self.settings.service_start_timeout:.0f}s; "
            f"last log lines:\n{self.tail_log()}",
        )

    def stop(self, *, timeout: float = 30.0) -> bool:
        """Stop the service (SIGTERM to its process group, then SIGKILL). False if it was not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        log.info("stopping %s (pid %s)", self.name, pid)
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._alive(pid):
            time.sleep(0.2)
        if self._alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.pid_file.unlink(missing_ok=True)
        return True

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # A zombie child of this process still answers kill(0); reap it if it is ours.
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            return finished == 0
        except ChildProcessError:
            return True

    def tail_log(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log yet)"
