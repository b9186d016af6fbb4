"""Every service the project starts listens on loopback only (the machine rule, docs/operations.md).

Read from /proc for the whole process group of each service, so ports a service opens on its own
(Flink's RPC and blob ports, Kafka's controller, S3Proxy) are checked too, not only the
configured ones. The one exception is declared by the service itself (`all_interfaces_ports`):
Beam's Flink job server binds its job and artifact ports on every interface and has no option to
do otherwise; any other port of it, and every port of the others, must be loopback. The cluster
mode's processes are checked in tests/test_cluster.py.
"""

from __future__ import annotations

import pytest

from listening import open_beyond_loopback

pytestmark = [pytest.mark.trino, pytest.mark.kafka, pytest.mark.flink]


def test_the_embedded_services_listen_on_loopback_only(trino_server, kafka_broker, s3_server, flink_job_server):
    for service in (trino_server, kafka_broker, s3_server, flink_job_server):
        assert open_beyond_loopback(service) == [], service.name
