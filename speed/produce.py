"""`lakehouse speed produce`: replay a dataset's files into a Kafka topic, at a chosen rate.

JSON-lines files are sent line by line, untouched (a malformed line stays malformed: the speed
layer must dead-letter it). CSV rows become JSON objects; fields the declaration derives from the
file name are added, since a Kafka message has no file name. The message key is the entity, so
one entity's events stay in one partition, in order.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Iterator

from lakehouse.errors import LakehouseError
from lakehouse.settings import Settings
from schemas.declaration import Dataset
from schemas.rules import derive_text

log = logging.getLogger(__name__)


def messages(dataset: Dataset, path: Path) -> Iterator[tuple[str | None, str]]:
    """(key, value) of every record in a file, in file order."""
    if path.suffix == ".csv":
        with open(path, newline="") as stream:
            for row in csv.DictReader(stream):
                record = {key: (value if value != "" else None) for key, value in row.items()}
                for field in dataset.derived_fields:
                    if field.derive.file_stem and not record.get(field.name):
                        record[field.name] = derive_text(field, record, str(path))
                yield record.get(dataset.entity), json.dumps(record)
        return
    with open(path) as stream:
        for line in stream:
            line = line.rstrip("\n")
            if not line:
                continue
            try:
                record = json.loads(line)
                key = record.get(dataset.entity) if isinstance(record, dict) else None
            except json.JSONDecodeError:
                key = None
            yield (str(key) if key is not None else None), line


def produce(
    dataset: Dataset,
    paths: list[Path],
    topic: str,
    *,
    rate: float = 0.0,
    settings: Settings,
    progress=None,
) -> int:
    """Send every record of the files to the topic; `rate` is messages per second (0: no limit)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True, "linger.ms": 5})
    failures: list[str] = []

    def delivered(error, message) -> None:
        if error is not None:
            failures.append(str(error))

    sent = 0
    started = time.perf_counter()
    for path in paths:
        for key, value in messages(dataset, path):
            while True:
                try:
                    producer.produce(topic, value=value.encode(), key=key.encode() if key else None, on_delivery=delivered)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.1)
            sent += 1
            producer.poll(0)
            if progress:
                progress(1)
            if rate > 0:
                ahead = sent / rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
    remaining = producer.flush(60)
    if remaining or failures:
        raise LakehouseError(f"kafka: {remaining} messages not delivered, {len(failures)} failed: {failures[:3]}")
    log.info("produced %d messages to %s in %.1fs", sent, topic, time.perf_counter() - started)
    return sent
