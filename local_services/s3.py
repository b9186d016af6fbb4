"""The local S3 server: S3Proxy over a folder, for tests and for trying the lakehouse on S3.

Why S3Proxy: it is a real S3 API server (SigV4 authentication, multipart uploads, listing,
conditional requests) published on Maven Central as one jar, so the project fetches it with the
same `mvn` as every other JVM artifact and runs it on the system Java 17. moto's server (PyPI)
also speaks S3 but is a mock built for unit tests; MinIO is not served by any registry here.

Its folder, <services_root>/s3/, holds s3proxy.properties (rendered from infra/s3/ at each start)
and data/<bucket>/... (the objects as files). Clients reach it with the usual AWS variables;
`client_environment()` returns them.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from lakehouse.settings import PROJECT_ROOT, Settings
from local_services import jvm
from local_services.base import Service, fill_placeholders

TEMPLATE = PROJECT_ROOT / "infra" / "s3" / "s3proxy.properties"


class S3Server(Service):
    name = "s3"

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        self.data_dir = self.home / "data"
        self.config_file = self.home / "s3proxy.properties"

    @property
    def address(self) -> str:
        return self.settings.s3_endpoint

    def ports(self) -> tuple[int, ...]:
        return (self.settings.s3_port,)

    def prepare(self) -> None:
        self.require_free_ports(self.ports(), "s3_port")
        jvm.ensure("s3", self.settings)
        # A bucket of the filesystem backend is a folder: the default bucket exists from the start.
        (self.data_dir / self.settings.s3_bucket).mkdir(parents=True, exist_ok=True)
        values = {
            "S3_PORT": str(self.settings.s3_port),
            "S3_ACCESS_KEY": self.settings.s3_access_key,
            "S3_SECRET_KEY": self.settings.s3_secret_key,
            "S3_DATA_DIR": str(self.data_dir),
        }
        text = fill_placeholders(TEMPLATE.read_text(), values, "infra/s3/s3proxy.properties", escape_backslashes=True)
        self.config_file.write_text("# Generated from infra/s3/s3proxy.properties at each start: edit the template.\n" + text)

    def command(self) -> list[str]:
        return [
            jvm.java17(),
            "-Xmx256m",
            "-XX:+ExitOnOutOfMemoryError",
            "-jar",
            str(jvm.component_dir("s3", self.settings) / "s3proxy.jar"),
            "--properties",
            str(self.config_file),
        ]

    def probe(self) -> bool:
        """True when the server answers S3 requests (an unsigned request is refused with 403)."""
        try:
            urllib.request.urlopen(self.settings.s3_endpoint + "/", timeout=2.0)
        except urllib.error.HTTPError as error:
            return error.code == 403
        except OSError:
            return False
        return True


def client_environment(settings: Settings) -> dict[str, str]:
    """The AWS_* variables that point boto3, pyarrow, delta-rs and Spark's S3A at the local server."""
    return {
        "AWS_ENDPOINT_URL": settings.s3_endpoint,
        "AWS_ACCESS_KEY_ID": settings.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": settings.s3_secret_key,
        "AWS_REGION": "us-east-1",
    }
