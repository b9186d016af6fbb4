"""A Flink session cluster on loopback (cluster mode), with Beam's Python workers beside it.

Four processes, started in this order by `lakehouse up --cluster`:

- JobManager: Flink's `StandaloneSessionClusterEntrypoint` (what bin/jobmanager.sh runs);
- TaskManager: `TaskManagerRunner` (bin/taskmanager.sh), a separate JVM registering with it;
- the Beam worker pool: Beam's worker pool servicer on loopback (local_services/beam_worker_pool.py),
  the EXTERNAL environment the TaskManager asks for Python SDK workers (a Kubernetes sidecar in production,
  infra/k8s/flink-session.yaml);
- the Beam Flink job server (`FlinkJobServerDriver --flink-master=127.0.0.1:<rest port>`), which
  translates the portable pipeline and submits it to the session cluster.

No Flink distribution is downloaded: the runtime jars are the `flink` component of
infra/jvm/pom.xml (Beam's Flink runner module and its closure, Flink 1.19.0, the version that
module is built against), the same classpath the embedded job server runs. The JVM memory flags
come from Flink's own BashJavaUtils, as its start scripts compute them from
`jobmanager.memory.process.size` / `taskmanager.memory.process.size` (infra/flink/session-cluster.yaml).

The worker pool's SDK workers are `python` processes found on PATH, so the pool runs with the venv's bin/ first on PATH and the
project on PYTHONPATH, as the sidecar image has them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from lakehouse.errors import ServiceError
from lakehouse.settings import PROJECT_ROOT, Settings
from local_services import jvm
from local_services.base import Service, fill_placeholders
from local_services.flink import _OPENS, FlinkJobServer

TEMPLATE = PROJECT_ROOT / "infra" / "flink" / "session-cluster.yaml"
JOBMANAGER_CLASS = "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint"
TASKMANAGER_CLASS = "org.apache.flink.runtime.taskexecutor.TaskManagerRunner"
BASH_JAVA_UTILS = "org.apache.flink.runtime.util.bash.BashJavaUtils"
_RESULT_PREFIX = "BASH_JAVA_UTILS_EXEC_RESULT:"
# The cluster's job server only translates and submits pipelines: a small heap does.
JOB_SERVER_HEAP = "512m"


def rest(settings: Settings, path: str) -> dict:
    """GET a path of the session cluster's REST API (e.g. /overview, /jobs/overview)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{settings.flink_rest_address}{path}", timeout=3) as response:
        return json.load(response)


def submit_arguments(settings: Settings) -> list[str]:
    """The speed pipeline's flags for the session cluster: the cluster's job server and the
    EXTERNAL worker pool (Beam's PortableRunner options; FlinkRunner keeps streaming mode)."""
    return [
        "--runner", "FlinkRunner",
        "--job_endpoint", settings.flink_cluster_job_endpoint,
        "--environment_type", "EXTERNAL",
        "--environment_config", f"localhost:{settings.beam_worker_pool_port}",
    ]


class _FlinkProcess(Service):
    """A JobManager or TaskManager: same configuration, its own folder and JVM flags."""

    role: str

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.conf_dir = self.home / "conf"
        self.tmp_dir = self.home / "tmp"
        self._resource_flags: tuple[list[str], list[str]] = ([], [])

    def prepare(self) -> None:
        self.require_free_ports(self.ports(), "flink_rest_port / flink_rpc_port")
        jvm.ensure("flink", self.settings)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        for folder in (self.conf_dir, self.tmp_dir, checkpoint_dir(self.settings)):
            folder.mkdir(parents=True, exist_ok=True)
        rpc = self.settings.flink_rpc_port
        values = {
            "FLINK_RPC_PORT": str(rpc),
            "FLINK_BLOB_PORT": str(rpc + 1),
            "FLINK_TASKMANAGER_RPC_PORT": str(rpc + 2),
            "FLINK_TASKMANAGER_DATA_PORT": str(rpc + 3),
            "FLINK_REST_PORT": str(self.settings.flink_rest_port),
            "FLINK_JOBMANAGER_MEMORY": self.settings.flink_jobmanager_memory,
            "FLINK_TASKMANAGER_MEMORY": self.settings.flink_taskmanager_memory,
            "FLINK_PARALLELISM": str(self.settings.flink_parallelism),
            "FLINK_TMP_DIR": str(self.tmp_dir),
            "FLINK_CHECKPOINT_DIR": str(checkpoint_dir(self.settings)),
        }
        text = fill_placeholders(TEMPLATE.read_text(), values, "infra/flink/session-cluster.yaml")
        (self.conf_dir / "flink-conf.yaml").write_text("# Generated from infra/flink/session-cluster.yaml at each start.\n" + text)
        self._resource_flags = self._resource_parameters()

    def _resource_parameters(self) -> tuple[list[str], list[str]]:
        """JVM flags and dynamic properties for this role, from Flink's BashJavaUtils (what
        bin/jobmanager.sh and bin/taskmanager.sh pass)."""
        command = [
            jvm.java17(), "-Xmx64m", "-cp", self.classpath(), BASH_JAVA_UTILS,
            f"GET_{self.role}_RESOURCE_PARAMS", "--configDir", str(self.conf_dir),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        lines = [line.removeprefix(_RESULT_PREFIX) for line in result.stdout.splitlines() if line.startswith(_RESULT_PREFIX)]
        if result.returncode != 0 or len(lines) < 2:
            raise ServiceError(self.name, f"BashJavaUtils failed (exit {result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        return lines[-2].split(), lines[-1].split()

    def classpath(self) -> str:
        return str(jvm.component_dir("flink", self.settings) / "*")

    def command(self) -> list[str]:
        jvm_flags, dynamic_properties = self._resource_flags
        return [
            jvm.java17(),
            *jvm_flags,
            f"-Djava.io.tmpdir={self.tmp_dir}",
            *_OPENS,
            "-cp", self.classpath(),
            self.main_class,
            "--configDir", str(self.conf_dir),
            *dynamic_properties,
        ]

    main_class: str


def checkpoint_dir(settings: Settings) -> Path:
    """Shared by the JobManager and the TaskManager (one machine: one folder)."""
    return settings.services_dir / "flink-jobmanager" / "checkpoints"


class FlinkJobManager(_FlinkProcess):
    name = "flink-jobmanager"
    role = "JM"
    main_class = JOBMANAGER_CLASS

    @property
    def address(self) -> str:
        return f"http://{self.settings.flink_rest_address} (REST; --flink_master)"

    def ports(self) -> tuple[int, ...]:
        return self.settings.flink_rest_port, self.settings.flink_rpc_port, self.settings.flink_rpc_port + 1

    def probe(self) -> bool:
        return "taskmanagers" in rest(self.settings, "/overview")


class FlinkTaskManager(_FlinkProcess):
    name = "flink-taskmanager"
    role = "TM"
    main_class = TASKMANAGER_CLASS

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.settings.flink_rpc_port + 2} ({self.settings.flink_parallelism} slots)"

    def ports(self) -> tuple[int, ...]:
        return self.settings.flink_rpc_port + 2, self.settings.flink_rpc_port + 3

    def probe(self) -> bool:
        """Ready when the JobManager counts its slots."""
        return rest(self.settings, "/overview").get("slots-total", 0) >= self.settings.flink_parallelism

    def start(self, *, wait: bool = True):
        if FlinkJobManager(self.settings).pid() is None:
            raise ServiceError(self.name, "the Flink JobManager is not running: start it first (`lakehouse up --cluster`)")
        return super().start(wait=wait)


class BeamWorkerPool(Service):
    """Beam's Python SDK worker pool (EXTERNAL environment) beside the TaskManager."""

    name = "beam-worker-pool"

    @property
    def address(self) -> str:
        return f"localhost:{self.settings.beam_worker_pool_port} (--environment_config)"

    def ports(self) -> tuple[int, ...]:
        return (self.settings.beam_worker_pool_port,)

    def prepare(self) -> None:
        self.require_free_ports(self.ports(), "beam_worker_pool_port")
        self.home.mkdir(parents=True, exist_ok=True)

    def working_directory(self) -> Path:
        return PROJECT_ROOT

    def environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        # The pool starts each SDK worker as `python` from PATH: the venv's, with the project importable.
        environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), environment.get("PYTHONPATH")]))
        return environment

    def command(self) -> list[str]:
        # Not Beam's worker_pool_main: it binds every interface (see local_services/beam_worker_pool.py).
        return [sys.executable, "-m", "local_services.beam_worker_pool", f"--service_port={self.settings.beam_worker_pool_port}"]

    def probe(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.settings.beam_worker_pool_port), timeout=1.0):
            return True


class FlinkClusterJobServer(FlinkJobServer):
    """The Beam Flink job server submitting to the session cluster instead of an embedded Flink."""

    name = "flink-cluster-job-server"

    @property
    def address(self) -> str:
        return f"{self.settings.flink_cluster_job_endpoint} (submits to {self.settings.flink_rest_address})"

    def ports(self) -> tuple[int, ...]:
        return self.settings.flink_cluster_job_port, self.settings.flink_cluster_job_port + 1

    def command(self) -> list[str]:
        replacements = {
            "--flink-master=[local]": f"--flink-master={self.settings.flink_rest_address}",
            f"-Xmx{self.settings.flink_heap}": f"-Xmx{JOB_SERVER_HEAP}",
        }
        return [replacements.get(argument, argument) for argument in super().command()]

    def probe(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.settings.flink_cluster_job_port), timeout=1.0):
            return True
