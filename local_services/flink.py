"""The Beam Flink job server with an embedded Flink, for `--runner FlinkRunner` on this machine.

Beam's Python FlinkRunner would download the bundled job-server jar of its own version from
Maven Central at submit time; that jar (and any 2.77 job server) is not on the mirror here, so the
project fetches the module jars of Beam's Flink runner (infra/jvm/pom.xml, profile `flink`), runs
`FlinkJobServerDriver` with `--flink-master=[local]` on Java 17, and the speed pipeline submits
to it through the portable job API with LOOPBACK workers (the Python DoFns run in the submitting
process). Its folder, <services_root>/flink/, holds conf/ (rendered from infra/flink/), tmp/,
checkpoints/ and artifacts/ (staged per job, removed at each start).
"""

from __future__ import annotations

import shutil
import socket

from lakehouse.settings import PROJECT_ROOT
from local_services import jvm
from local_services.base import Service, fill_placeholders

TEMPLATE = PROJECT_ROOT / "infra" / "flink" / "flink-conf.yaml"
MAIN_CLASS = "org.apache.beam.runners.flink.FlinkJobServerDriver"
# Flink's usual opens for Java 17 (its own launch scripts pass the same).
_OPENS = [
    f"--add-opens=java.base/{package}=ALL-UNNAMED"
    for package in (
        "java.util", "java.lang", "java.lang.reflect", "java.io", "java.nio", "sun.nio.ch",
        "java.net", "java.util.concurrent", "java.time", "java.text",
    )
]


class FlinkJobServer(Service):
    name = "flink"

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        self.conf_dir = self.home / "conf"
        self.tmp_dir = self.home / "tmp"
        self.checkpoint_dir = self.home / "checkpoints"
        self.artifacts_dir = self.home / "artifacts"

    @property
    def address(self) -> str:
        return self.settings.flink_job_endpoint

    def ports(self) -> tuple[int, ...]:
        return self.settings.flink_job_port, self.settings.flink_job_port + 1

    def all_interfaces_ports(self) -> tuple[int, ...]:
        # Beam 2.62's gRPC servers bind with NettyServerBuilder.forPort (ServerFactory.createServer):
        # every interface, whatever --job-host says, and no option changes it. On a shared host,
        # keep the job and artifact ports behind a firewall (docs/operations.md).
        return self.ports()

    def prepare(self) -> None:
        self.require_free_ports(self.ports(), "flink_job_port")
        jvm.ensure("flink", self.settings)
        shutil.rmtree(self.artifacts_dir, ignore_errors=True)
        for folder in (self.conf_dir, self.tmp_dir, self.checkpoint_dir, self.artifacts_dir):
            folder.mkdir(parents=True, exist_ok=True)
        values = {
            "FLINK_PARALLELISM": str(self.settings.flink_parallelism),
            "FLINK_TMP_DIR": str(self.tmp_dir),
            "FLINK_CHECKPOINT_DIR": str(self.checkpoint_dir),
        }
        text = fill_placeholders(TEMPLATE.read_text(), values, "infra/flink/flink-conf.yaml")
        (self.conf_dir / "flink-conf.yaml").write_text("# Generated from infra/flink/flink-conf.yaml at each start.\n" + text)

    def command(self) -> list[str]:
        job_port, artifact_port = self.ports()
        return [
            jvm.java17(),
            f"-Xmx{self.settings.flink_heap}",
            f"-Djava.io.tmpdir={self.tmp_dir}",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            *_OPENS,
            "-cp",
            str(jvm.component_dir("flink", self.settings) / "*"),
            MAIN_CLASS,
            "--flink-master=[local]",
            f"--flink-conf-dir={self.conf_dir}",
            "--job-host=localhost",
            f"--job-port={job_port}",
            f"--artifact-port={artifact_port}",
            # The job server would also open an expansion service; 0 lets the system pick a port.
            "--expansion-port=0",
            f"--artifacts-dir={self.artifacts_dir}",
        ]

    def probe(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.settings.flink_job_port), timeout=1.0):
            return True
