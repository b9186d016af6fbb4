"""Typed settings: defaults < lakehouse.toml (or $LAKEHOUSE_CONFIG) < LAKEHOUSE_* environment variables.

LAKEHOUSE_PROFILE picks the profile, and the profile picks the defaults (docs/operations.md):

- ``local`` (default): the embedded set-up. The warehouse is ``.work/warehouse``; the project
  starts Trino, Kafka, the S3 server and the Flink job server on loopback (``lakehouse up``),
  and clients find the local Trino's CA file and generated passwords under ``services_dir``.
- ``staging`` and ``production``: nothing local. The warehouse must be given, nothing is started
  (``lakehouse up`` refuses), Trino's certificate is checked against the system's trust store
  unless ``trino_ca_file`` names a CA, and Trino passwords come only from the environment.
  ``production`` also refuses the commands that delete tables (``lakehouse demo``).

Secrets (S3 keys, Trino passwords) are read only from the environment (or, locally, from the
password file the local Trino generated outside the repository), never from a file in the repo.

Only the composition root (``app/``) calls ``get_settings()``; the layers take a ``Settings``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from lakehouse import constants

# The checkout this package runs from (installed editable by `make setup`).
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _config_file() -> Path:
    return Path(os.environ.get("LAKEHOUSE_CONFIG", PROJECT_ROOT / "lakehouse.toml"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LAKEHOUSE_", extra="forbid")

    profile: Literal["local", "staging", "production"] = "local"
    # Ignored folder holding the venv, JVM cache, service data, logs and (locally) the warehouse.
    work_dir: Path = PROJECT_ROOT / ".work"
    # Delta warehouse root: a local folder or s3://bucket/prefix. Empty means <work_dir>/warehouse.
    warehouse: str = ""
    spark_master: str = "local[2]"
    spark_driver_memory: str = "4g"
    trino_host: str = "127.0.0.1"
    trino_port: int = Field(default=constants.DEFAULT_TRINO_PORT, ge=1, le=65534)
    # HTTPS with a password; plain HTTP on trino_port + 1 serves only the local server's health
    # probe. The admin registers tables and creates views; the analyst reads. Passwords from the
    # environment; unset, they are read from trino_password_file (under the local profile, the
    # file the local Trino generated on its first start: local_services/trino_security.py).
    trino_user: str = "lakehouse"
    trino_password: str = ""
    trino_analyst_user: str = "analyst"
    trino_analyst_password: str = ""
    # The CA that signed Trino's certificate. Empty: the local Trino's CA under the local profile,
    # the system's trust store otherwise.
    trino_ca_file: str = ""
    # JSON {user: password} read when a password is not in the environment. Empty: the local
    # Trino's generated file under the local profile, none otherwise.
    trino_password_file: str = ""
    trino_heap: str = "2G"
    # Kafka clients (the speed pipeline's default, `speed produce`, topic administration) reach
    # this broker list; empty means the local broker on kafka_port. A cluster: "b1:9092,b2:9092".
    kafka_bootstrap_servers: str = ""
    kafka_port: int = Field(default=constants.DEFAULT_KAFKA_PORT, ge=1, le=65535)
    kafka_controller_port: int = Field(
        default=constants.DEFAULT_KAFKA_CONTROLLER_PORT, ge=1, le=65535
    )
    kafka_heap: str = "512m"
    # The local S3 server (`lakehouse up s3`, S3Proxy). Its keys are local-only (loopback) and are
    # what a client must send; against real S3 nothing here is used, only the AWS_* variables.
    s3_port: int = Field(default=constants.DEFAULT_S3_PORT, ge=1, le=65535)
    s3_access_key: str = "lakehouse"
    s3_secret_key: str = "lakehouse-local-secret"
    s3_bucket: str = "lakehouse"
    # The Beam Flink job server with an embedded Flink (`lakehouse up --only flink`).
    flink_job_port: int = Field(default=constants.DEFAULT_FLINK_JOB_PORT, ge=1, le=65534)
    flink_parallelism: int = Field(default=2, ge=1)
    flink_heap: str = "2g"
    # The local cluster mode (`lakehouse up --cluster`): Spark standalone, a Flink session cluster
    # with an external Beam worker pool, Trino coordinator + worker. Memory per process is listed
    # in docs/operations.md (local cluster mode); all of it fits in 8 GiB.
    spark_master_port: int = Field(default=constants.DEFAULT_SPARK_MASTER_PORT, ge=1, le=65535)
    spark_master_ui_port: int = Field(default=constants.DEFAULT_SPARK_MASTER_UI_PORT, ge=1, le=65535)
    spark_worker_ui_port: int = Field(default=constants.DEFAULT_SPARK_WORKER_UI_PORT, ge=1, le=65535)
    spark_daemon_memory: str = "256m"
    spark_worker_cores: int = Field(default=2, ge=1)
    spark_worker_memory: str = "1536m"
    spark_executor_memory: str = "1g"
    flink_rest_port: int = Field(default=constants.DEFAULT_FLINK_REST_PORT, ge=1, le=65535)
    flink_rpc_port: int = Field(default=constants.DEFAULT_FLINK_RPC_PORT, ge=1, le=65532)
    flink_cluster_job_port: int = Field(default=constants.DEFAULT_FLINK_CLUSTER_JOB_PORT, ge=1, le=65534)
    flink_jobmanager_memory: str = "768m"
    flink_taskmanager_memory: str = "1280m"
    beam_worker_pool_port: int = Field(default=constants.DEFAULT_BEAM_WORKER_POOL_PORT, ge=1, le=65535)
    trino_worker_port: int = Field(default=constants.DEFAULT_TRINO_WORKER_PORT, ge=1, le=65535)
    trino_worker_heap: str = "1G"
    # Where local services keep pid, logs and data; empty means <work_dir>/services. Tests point
    # it at a temporary folder so they never touch the services a developer has running.
    services_root: str = ""
    # Generated input files (demo data, replay files); empty means <work_dir>/data. Tests point it
    # at their own folder: their smaller demo must not replace the inputs and labels of yours.
    data_root: str = ""
    # Seconds to wait for a service to answer after starting it.
    service_start_timeout: float = Field(default=180.0, gt=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=_config_file()),
        )

    @field_validator("work_dir")
    @classmethod
    def _absolute_work_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _default_warehouse(self) -> "Settings":
        if not self.warehouse:
            if not self.is_local:
                raise ValueError(
                    f"profile {self.profile!r} has no default warehouse: set LAKEHOUSE_WAREHOUSE "
                    "(or `warehouse` in lakehouse.toml) to a folder or an s3:// URI"
                )
            self.warehouse = str(self.work_dir / "warehouse")
        elif "://" not in self.warehouse:
            self.warehouse = str(Path(self.warehouse).expanduser().resolve())
        elif not self.warehouse.startswith(("s3://", "s3a://", "file://")):
            raise ValueError(
                f"warehouse {self.warehouse!r}: use a local path or an s3:// URI"
            )
        return self

    @property
    def is_local(self) -> bool:
        """The embedded set-up: the project starts and owns its services (see the module doc)."""
        return self.profile == "local"

    # Derived locations -------------------------------------------------------------
    @property
    def cache_dir(self) -> Path:
        return self.work_dir / "cache"

    @property
    def jvm_cache_dir(self) -> Path:
        return self.cache_dir / "jvm"

    @property
    def services_dir(self) -> Path:
        return Path(self.services_root).resolve() if self.services_root else self.work_dir / "services"

    @property
    def data_dir(self) -> Path:
        """Generated input files (demo data, replay files)."""
        return Path(self.data_root).expanduser().resolve() if self.data_root else self.work_dir / "data"

    @property
    def warehouse_is_local(self) -> bool:
        return "://" not in self.warehouse or self.warehouse.startswith("file://")

    def table_uri(self, schema: str, table: str) -> str:
        """Location of a Delta table: <warehouse>/<schema>/<table>."""
        return f"{self.warehouse.rstrip('/')}/{schema}/{table}"

    @property
    def trino_url(self) -> str:
        return f"https://{self.trino_host}:{self.trino_port}"

    def trino_login(self, role: str) -> tuple[str, str]:
        """The Trino user of a role and its password as configured ("" when not in the
        environment): "admin" registers tables and creates views, "analyst" only reads."""
        if role == "admin":
            return self.trino_user, self.trino_password
        if role == "analyst":
            return self.trino_analyst_user, self.trino_analyst_password
        raise ValueError(f"unknown Trino role {role!r}: admin or analyst")

    @property
    def trino_ca_path(self) -> Path | None:
        """The CA file to verify Trino against; None means the system's trust store."""
        if self.trino_ca_file:
            return Path(self.trino_ca_file).expanduser().resolve()
        return self.services_dir / "trino" / "secrets" / "ca.pem" if self.is_local else None

    @property
    def trino_password_path(self) -> Path | None:
        """Where passwords not given by the environment are read from (None: nowhere)."""
        if self.trino_password_file:
            return Path(self.trino_password_file).expanduser().resolve()
        return self.services_dir / "trino" / "secrets" / "passwords.json" if self.is_local else None

    @property
    def trino_http_port(self) -> int:
        return self.trino_port + 1

    @property
    def s3_endpoint(self) -> str:
        """The local S3 server's endpoint (what AWS_ENDPOINT_URL must be to use it)."""
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def flink_job_endpoint(self) -> str:
        return f"localhost:{self.flink_job_port}"

    @property
    def spark_cluster_master(self) -> str:
        """The local Spark standalone master (cluster mode), for spark-submit --master."""
        return f"spark://127.0.0.1:{self.spark_master_port}"

    @property
    def flink_rest_address(self) -> str:
        """The local Flink session cluster's REST API (cluster mode): its --flink_master."""
        return f"127.0.0.1:{self.flink_rest_port}"

    @property
    def flink_cluster_job_endpoint(self) -> str:
        return f"localhost:{self.flink_cluster_job_port}"

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.kafka_port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings; tests call get_settings.cache_clear() after changing the environment."""
    return Settings()
