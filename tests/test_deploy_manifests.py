"""The production manifests (infra/k8s/) and docs/deploy.md name only what exists.

No Kubernetes here: these checks parse the manifests and compare every module, flag, command,
Maven coordinate, image and version they name with the project's code and its pins
(infra/jvm/pom.xml, requirements.txt). Starts no engine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
# The project's own images and the Dockerfile each is built from (docs/deploy.md says the same).
OWN_IMAGES = {"lakehouse-speed": ROOT / "infra" / "dataflow" / "Dockerfile", "lakehouse-batch": K8S / "Dockerfile"}
MAVEN_COORDINATE = re.compile(r"^([A-Za-z0-9_.-]+):([A-Za-z0-9_.-]+):([0-9][A-Za-z0-9_.-]*)$")


def _documents() -> dict[str, list]:
    documents = {path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None] for path in sorted(K8S.glob("*.yaml"))}
    assert documents, "no manifests under infra/k8s"
    return documents


def _by_kind(kind: str) -> list[dict]:
    found = [doc for docs in _documents().values() for doc in docs if isinstance(doc, dict) and doc.get("kind") == kind]
    assert found, f"no {kind} under infra/k8s"
    return found


def _strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [text for value in node.values() for text in _strings(value)]
    if isinstance(node, list):
        return [text for value in node for text in _strings(value)]
    return []


def _commands(node) -> list[list[str]]:
    """Every container's command + args, as one argument list."""
    found = []
    if isinstance(node, dict):
        if "image" in node and ("command" in node or "args" in node):
            found.append([*node.get("command", []), *node.get("args", [])])
        for value in node.values():
            found += _commands(value)
    elif isinstance(node, list):
        for value in node:
            found += _commands(value)
    return found


def _all_commands() -> list[list[str]]:
    return [command for docs in _documents().values() for doc in docs for command in _commands(doc)]


def _images() -> list[str]:
    images = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "image" and isinstance(value, str):
                    images.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for docs in _documents().values():
        for doc in docs:
            walk(doc)
    return images


def _pom() -> tuple[dict[str, str], set[tuple[str, str, str]]]:
    """infra/jvm/pom.xml's properties and every (groupId, artifactId, version) it pins, resolved."""
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    tree = ElementTree.parse(ROOT / "infra" / "jvm" / "pom.xml")
    properties = {element.tag.split("}")[1]: element.text.strip() for element in tree.getroot().find("m:properties", namespace)}

    def resolve(text: str) -> str:
        return re.sub(r"\$\{([^}]+)\}", lambda match: properties[match.group(1)], text.strip())

    pinned = set()
    for tag in ("dependency", "artifactItem"):
        for element in tree.getroot().iter(f"{{{namespace['m']}}}{tag}"):
            version = element.find("m:version", namespace)
            if version is not None:
                pinned.add(tuple(resolve(element.find(f"m:{name}", namespace).text) for name in ("groupId", "artifactId")) + (resolve(version.text),))
    return properties, pinned


def _requirement(name: str) -> str:
    match = re.search(rf"^{re.escape(name)}==(\S+)", (ROOT / "requirements.txt").read_text(), re.MULTILINE | re.IGNORECASE)
    assert match, name
    return match.group(1)


def _module_arguments(command: list[str], module: str) -> list[str]:
    return command[command.index(module) + 1:]


def _modules_run(command: list[str]) -> list[str]:
    return [command[index + 1] for index, argument in enumerate(command[:-1]) if argument == "-m"]


# Parsing -----------------------------------------------------------------------------------


def test_every_manifest_parses_and_names_its_kind():
    for name, docs in _documents().items():
        for doc in docs:
            assert isinstance(doc, dict), name
    kinds = {doc.get("kind") for docs in _documents().values() for doc in docs}
    assert {"SparkApplication", "FlinkDeployment", "Job"} <= kinds
    values = yaml.safe_load((K8S / "trino-values.yaml").read_text())
    assert values["server"]["workers"] >= 1


# Modules, files, flags, commands ----------------------------------------------------------


def test_every_python_module_run_exists():
    modules = [module for command in _all_commands() for module in _modules_run(command)]
    for module in modules:
        own = ROOT / Path(*module.split("."))
        if module.split(".")[0] in {path.name for path in ROOT.iterdir() if (path / "__init__.py").exists()}:
            assert own.with_suffix(".py").exists() or (own / "__main__.py").exists(), module
        else:
            assert importlib.util.find_spec(module) is not None, f"{module} is not in the pinned libraries"
    assert "speed.pipeline" in modules and "apache_beam.runners.worker.worker_pool_main" in modules


def test_main_application_files_are_in_the_image():
    dockerfile = OWN_IMAGES["lakehouse-batch"].read_text()
    workdir = re.search(r"^WORKDIR (\S+)", dockerfile, re.MULTILINE).group(1).rstrip("/")
    copied = set(re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, re.MULTILINE))
    for application in _by_kind("SparkApplication"):
        spec = application["spec"]
        assert spec["image"].rsplit("/", 1)[-1].split(":")[0] == "lakehouse-batch"
        location = spec["mainApplicationFile"]
        assert location.startswith(f"local://{workdir}/"), location
        relative = location.removeprefix(f"local://{workdir}/")
        assert (ROOT / relative).is_file(), relative
        assert relative.split("/")[0] in copied, f"{relative} is not copied into the image"
        # The job's own flags, read from batch/job.py's parser by parsing the arguments with it.
        from batch import job

        arguments = spec.get("arguments", [])
        parser_flags = _parser_flags(job.run)
        for flag in _flags(arguments):
            assert flag in parser_flags, f"batch/job.py has no --{flag}"


def _parser_flags(entry_point) -> set[str]:
    """The flags an argparse-based entry point defines: its parser, captured when it is built."""
    captured: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        captured.append(self)
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            entry_point([])
    finally:
        argparse.ArgumentParser.parse_args = original
    return {option.lstrip("-") for action in captured[0]._actions for option in action.option_strings}


def _flags(arguments: list[str]) -> list[str]:
    return [argument[2:].split("=", 1)[0] for argument in arguments if argument.startswith("--")]


def test_speed_pipeline_flags_exist_and_parse(tmp_path):
    from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions, PortableOptions, StandardOptions

    from lakehouse.settings import Settings
    from speed import pipeline
    from speed.options import SpeedOptions

    speed_parser = argparse.ArgumentParser()
    SpeedOptions._add_argparse_args(speed_parser)
    speed_flags = {option.lstrip("-") for action in speed_parser._actions for option in action.option_strings}
    beam_flags = set(PipelineOptions([]).get_all_options()) - speed_flags

    submissions = [_module_arguments(command, "speed.pipeline") for command in _all_commands() if "speed.pipeline" in _modules_run(command)]
    assert submissions
    properties, _ = _pom()
    for arguments in submissions:
        flags = _flags(arguments)
        assert set(flags) & speed_flags and set(flags) & beam_flags
        for flag in flags:
            assert flag in speed_flags or flag in beam_flags, f"speed.pipeline has no --{flag}"
        # Beam's parser checks the values (choices, types); the project's own checks run in _configure.
        options, unbounded = pipeline._configure(arguments, Settings(warehouse=str(tmp_path)), pipeline.NO_HOOKS)
        flink = options.view_as(FlinkRunnerOptions)
        assert flink.flink_version == properties["flink.binary.version"]
        assert flink.flink_version in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
        assert options.view_as(StandardOptions).runner == "FlinkRunner" and unbounded
        portable = options.view_as(PortableOptions)
        assert portable.environment_type == "EXTERNAL"
        # The address the worker-pool sidecar listens on.
        pool_ports = {_worker_pool_port(command) for command in _all_commands() if "apache_beam.runners.worker.worker_pool_main" in _modules_run(command)}
        assert portable.environment_config in {f"localhost:{port}" for port in pool_ports}


def _worker_pool_port(command: list[str]) -> str:
    arguments = _module_arguments(command, "apache_beam.runners.worker.worker_pool_main")
    return next(argument.split("=", 1)[1] for argument in arguments if argument.startswith("--service_port="))


def test_worker_pool_flags_exist():
    commands = [command for command in _all_commands() if "apache_beam.runners.worker.worker_pool_main" in _modules_run(command)]
    assert commands
    usage = subprocess.run(
        [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", "--help"], capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    for command in commands:
        for flag in _flags(_module_arguments(command, "apache_beam.runners.worker.worker_pool_main")):
            assert f"--{flag}" in usage, f"worker_pool_main has no --{flag}"


def test_lakehouse_commands_named_exist():
    import typer.main

    from app.cli import app

    root = typer.main.get_command(app)
    code = "\n".join(re.findall(r"`([^`\n]+)`", DEPLOY_DOC.read_text()))
    code += "\n".join(block for block in re.findall(r"```[a-z]*\n(.*?)```", DEPLOY_DOC.read_text(), re.DOTALL))
    code += "\n".join(text for docs in _documents().values() for text in _strings(docs))
    named = re.findall(r"(?:^|[\s\"'(])lakehouse((?: [a-z][a-z-]*)+)", code, re.MULTILINE)
    assert named, "docs/deploy.md names no lakehouse command"
    for words in named:
        group = root
        for word in words.split():
            if not hasattr(group, "commands"):
                break
            assert word in group.commands, f"`lakehouse{words}`: no command {word!r}"
            group = group.commands[word]


# Pins: Maven coordinates, images, versions ------------------------------------------------


def test_maven_coordinates_are_the_pinned_ones():
    _, pinned = _pom()
    coordinates = [MAVEN_COORDINATE.match(text) for docs in _documents().values() for text in _strings(docs)]
    coordinates = [match.groups() for match in coordinates if match]
    assert coordinates
    for coordinate in coordinates:
        assert coordinate in pinned, f"{':'.join(coordinate)} is not pinned in infra/jvm/pom.xml"


def test_spark_version_is_the_pinned_pyspark():
    pyspark = _requirement("pyspark")
    properties, _ = _pom()
    assert pyspark.startswith(properties["spark.binary.version"] + ".")
    for application in _by_kind("SparkApplication"):
        assert application["spec"]["sparkVersion"] == pyspark
    assert re.search(rf"^FROM apache/spark:{re.escape(pyspark)}-", OWN_IMAGES["lakehouse-batch"].read_text(), re.MULTILINE)


def test_flink_deployment_matches_the_pinned_beam_runner():
    properties, pinned = _pom()
    flink = properties["flink.binary.version"]
    assert any(artifact == f"beam-runners-flink-{flink}" for _, artifact, _ in pinned)
    for deployment in _by_kind("FlinkDeployment"):
        spec = deployment["spec"]
        assert spec["flinkVersion"] == "v" + flink.replace(".", "_")
        repository, tag = spec["image"].rsplit(":", 1)
        assert repository.endswith("flink") and (tag == flink or tag.startswith(flink + ".")), spec["image"]
        containers = spec["taskManager"]["podTemplate"]["spec"]["containers"]
        assert "flink-main-container" in {container["name"] for container in containers}
        assert any("apache_beam.runners.worker.worker_pool_main" in _modules_run(_commands(container)[0]) for container in containers if "image" in container)


def test_images_are_built_here_or_pinned():
    properties, _ = _pom()
    beam = _requirement("apache-beam")
    for dockerfile in OWN_IMAGES.values():
        text = dockerfile.read_text()
        for base in re.findall(r"^FROM apache/beam_python[0-9.]+_sdk:(\S+)", text, re.MULTILINE):
            assert base == beam, f"{dockerfile.name}: Beam SDK image {base}, pinned {beam}"
        for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
            for path in source.split():
                assert (ROOT / path).exists(), f"{dockerfile}: COPY {path}"
    trino = yaml.safe_load((K8S / "trino-values.yaml").read_text())["image"]
    assert trino["repository"] == "trinodb/trino" and str(trino["tag"]) == properties["trino.version"]
    for image in _images():
        name = image.rsplit("/", 1)[-1].split(":")[0]
        assert name in OWN_IMAGES or name == "flink", f"unknown image {image}"


def test_trino_values_match_the_local_server():
    from lakehouse import constants
    from lakehouse.settings import Settings

    values = yaml.safe_load((K8S / "trino-values.yaml").read_text())
    assert values["server"]["config"]["https"]["enabled"] is True
    assert values["server"]["config"]["authenticationType"] == "PASSWORD"
    catalog = dict(line.split("=", 1) for line in values["catalogs"][constants.CATALOG].splitlines() if "=" in line)
    local = dict(
        line.split("=", 1) for line in (ROOT / "infra" / "trino" / "etc" / "catalog" / "delta.properties").read_text().splitlines()
        if "=" in line and not line.startswith(("#", "$"))
    )
    assert catalog["connector.name"] == local["connector.name"]
    assert catalog["delta.register-table-procedure.enabled"] == local["delta.register-table-procedure.enabled"]
    assert catalog["hive.metastore"] in ("thrift", "glue")
    defaults = Settings(warehouse="s3://bucket/prefix", profile="production")
    rules = (ROOT / "infra" / "trino" / "etc" / "rules.json").read_text()
    rules = rules.replace("${TRINO_ADMIN_USER}", defaults.trino_user).replace("${TRINO_ANALYST_USER}", defaults.trino_analyst_user)
    assert json.loads(values["accessControl"]["rules"]["rules.json"]) == json.loads(rules)
