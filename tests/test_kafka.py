"""The local Kafka broker: lifecycle, topic helpers, and an exact produce/consume round trip."""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections import Counter

import pytest

from local_services.kafka import KafkaBroker, bootstrap_servers, new_cluster_id
from speed.topics import create_topic, delete_topic
from lakehouse.settings import Settings

# Until tests/conftest.py imports the fixture, take it from its module directly.


pytestmark = pytest.mark.kafka
log = logging.getLogger(__name__)

MESSAGES = 100


def _topic(label: str) -> str:
    return f"test-{label}-{uuid.uuid4().hex[:12]}"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def test_broker_is_ready(kafka_broker: KafkaBroker) -> None:
    status = kafka_broker.status()
    assert status.running and status.ready
    assert status.address == bootstrap_servers(kafka_broker.settings) == f"127.0.0.1:{kafka_broker.settings.kafka_port}"
    rendered = kafka_broker.server_properties.read_text()
    assert "${KAFKA_" not in rendered
    assert f"log.dirs={kafka_broker.data_dir}" in rendered
    assert "auto.create.topics.enable=false" in rendered


def test_produce_and_consume_exactly(kafka_broker: KafkaBroker) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition

    topic = _topic("roundtrip")
    partitions = 3
    assert create_topic(topic, partitions, settings=kafka_broker.settings) is True
    try:
        sent = [
            (f"sensor-{index % 7}", {"seq": index, "reading": index * 0.5, "label": f"m{index}"})
            for index in range(MESSAGES)
        ]
        delivered: list[tuple[int, int, str, int]] = []  # partition, offset, key, seq

        def on_delivery(error, message) -> None:
            assert error is None, error
            delivered.append(
                (
                    message.partition(),
                    message.offset(),
                    message.key().decode(),
                    json.loads(message.value())["seq"],
                )
            )

        began = time.monotonic()
        producer = Producer(
            {
                "bootstrap.servers": bootstrap_servers(kafka_broker.settings),
                "enable.idempotence": True,
                "linger.ms": 5,
            }
        )
        for key, value in sent:
            producer.produce(
                topic,
                key=key.encode(),
                value=json.dumps(value).encode(),
                on_delivery=on_delivery,
            )
        assert producer.flush(30) == 0
        produced = time.monotonic()
        assert len(delivered) == MESSAGES

        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers(kafka_broker.settings),
                "group.id": f"test-{uuid.uuid4().hex[:12]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        try:
            consumer.subscribe([topic])
            received = []
            deadline = time.monotonic() + 60
            while len(received) < MESSAGES and time.monotonic() < deadline:
                for message in consumer.consume(num_messages=MESSAGES, timeout=1.0):
                    assert message.error() is None, message.error()
                    received.append(message)
            consumed = time.monotonic()
            # Nothing beyond the 100 messages: the log ends where the last one is.
            assert len(received) == MESSAGES
            assert not [m for m in consumer.consume(num_messages=10, timeout=0.5) if m.error() is None]
            ends = [
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in range(partitions)
            ]
            assert sum(high - low for low, high in ends) == MESSAGES
        finally:
            consumer.close()
        log.info(
            "Kafka round trip of %d messages: produce+flush %.3fs, consume %.3fs (incl. group join)",
            MESSAGES,
            produced - began,
            consumed - produced,
        )

        # Exactly the messages sent: keys and values, no duplicates, nothing lost.
        got = [(m.key().decode(), json.loads(m.value())) for m in received]
        assert Counter(json.dumps(item, sort_keys=True) for item in got) == Counter(
            json.dumps(item, sort_keys=True) for item in sent
        )
        # A key always lands in the same partition.
        partition_of_key: dict[str, set[int]] = {}
        for message in received:
            partition_of_key.setdefault(message.key().decode(), set()).add(message.partition())
        assert all(len(found) == 1 for found in partition_of_key.values())
        # Within a partition: the order of sending, at consecutive offsets from 0.
        for partition in range(partitions):
            sent_order = [seq for p, _, _, seq in sorted(delivered) if p == partition]
            in_partition = [m for m in received if m.partition() == partition]
            assert [json.loads(m.value())["seq"] for m in in_partition] == sent_order
            assert [m.offset() for m in in_partition] == list(range(len(in_partition)))
            assert sent_order == sorted(sent_order)
    finally:
        delete_topic(topic, settings=kafka_broker.settings)


def test_create_topic_is_idempotent(kafka_broker: KafkaBroker) -> None:
    topic = _topic("idempotent")
    assert create_topic(topic, 2, settings=kafka_broker.settings) is True
    assert create_topic(topic, 2, settings=kafka_broker.settings) is False
    # An existing topic is kept as it is, whatever partition count is asked for.
    assert create_topic(topic, settings=kafka_broker.settings) is False
    assert delete_topic(topic, settings=kafka_broker.settings) is True
    assert delete_topic(topic, settings=kafka_broker.settings) is False


def test_create_topic_rejects_zero_partitions(settings) -> None:
    with pytest.raises(ValueError):
        create_topic(_topic("zero"), 0, settings=settings)


def test_cluster_id_format() -> None:
    cluster_id = new_cluster_id()
    assert len(cluster_id) == 22 and not cluster_id.startswith("-")
    assert set(cluster_id) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_stopped_broker_reports_not_running(tmp_path, kafka_broker: KafkaBroker) -> None:
    # A second broker in its own folder and on its own ports, so the shared one keeps running.
    port, controller_port = _free_ports(2)
    settings = Settings(
        work_dir=tmp_path / "work", services_root=str(tmp_path / "services"), kafka_port=port, kafka_controller_port=controller_port
    )
    broker = KafkaBroker(settings)
    assert broker.status().running is False
    began = time.monotonic()
    status = broker.start()
    log.info("second Kafka (fresh storage) ready in %.1fs", time.monotonic() - began)
    try:
        assert status.running and status.ready
        assert broker.is_formatted() and broker.cluster_id() != kafka_broker.cluster_id()
    finally:
        assert broker.stop() is True
    status = broker.status()
    assert status.running is False and status.ready is False and status.pid is None
    assert not broker.pid_file.exists()
    assert broker.stop() is False


def test_probe_rejects_another_cluster(tmp_path, kafka_broker: KafkaBroker) -> None:
    # A broker folder whose cluster id differs from the one answering on the port is not ready.
    settings = Settings(work_dir=tmp_path / "work", services_root=str(tmp_path / "services"), kafka_port=kafka_broker.settings.kafka_port)
    other = KafkaBroker(settings)
    other.cluster_id_file.parent.mkdir(parents=True)
    other.cluster_id_file.write_text(new_cluster_id() + "\n")
    assert kafka_broker.probe() is True
    assert other.probe() is False
