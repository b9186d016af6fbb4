"""Every service's fixed ports, embedded and cluster mode together, are distinct: by default and
under the tests' own ports. (The Flink REST port once defaulted to the Trino coordinator's
plain-HTTP port, so `lakehouse demo --cluster` stopped at "port 18081 is already taken".)"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections import Counter

import pytest

import local_services
from lakehouse.settings import Settings
from local_services.base import Service


def _service_classes() -> list[type[Service]]:
    for module in pkgutil.iter_modules(local_services.__path__):
        importlib.import_module(f"local_services.{module.name}")
    found, pending = [], list(Service.__subclasses__())
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if not getattr(cls, "__abstractmethods__", None) and not cls.__name__.startswith("_"):
            found.append(cls)
    return found


def _ports(settings: Settings) -> Counter:
    ports = Counter()
    for cls in _service_classes():
        for port in cls(settings).ports():
            ports[port] += 1
    return ports


def test_every_service_is_found():
    names = {cls.__name__ for cls in _service_classes()}
    assert {"TrinoServer", "TrinoWorker", "KafkaBroker", "S3Server", "FlinkJobServer", "SparkMaster", "SparkWorker",
            "FlinkJobManager", "FlinkTaskManager", "BeamWorkerPool", "FlinkClusterJobServer"} <= names


@pytest.mark.parametrize("ports", ["defaults", "the tests' own"])
def test_no_two_services_share_a_port(ports, monkeypatch):
    if ports == "defaults":
        for name in list(os.environ):
            if name.startswith("LAKEHOUSE_") and name.endswith("_PORT"):
                monkeypatch.delenv(name)
    shared = {port: count for port, count in _ports(Settings()).items() if count > 1}
    assert shared == {}
