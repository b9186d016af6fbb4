"""Anomaly alerts: each anomalous scored event published to a Kafka topic, keyed for dropping repeats.

Alerts are among the acknowledged outputs (speed/acks.py): a batch is acknowledged only once the
broker has every alert of it, so a crash loses none. A record after the committed offset is read
again after a crash and its alert published again: each alert carries `alert_id`, a hash of what
determines it (dataset, event id, model version, features), in its JSON and as a Kafka header, so
a replay's alert has the same id and a consumer keeps the first of each id. An event re-scored
after a late event (other features) gets a new id: that is a new alert, not a repeat.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics
from confluent_kafka import Producer

from schemas.declaration import Dataset
from speed import acks, metrics
from speed.sinks import one_list, output_acks

ALERT_ID = "alert_id"


def alert_id(dataset: Dataset, row: dict) -> str:
    """The same for every publication of one scoring of one event, whatever the run."""
    identity = [dataset.name, str(row[dataset.event_id]), row["model_version"], *(repr(float(row[name])) for name in dataset.features.fields)]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]


class PublishAlerts(beam.DoFn):
    """Publishes each anomaly of a batch to a Kafka topic (JSON, keyed by entity), then acknowledges
    every row of the batch once the broker has them all."""

    def __init__(self, dataset: Dataset, bootstrap: str, topic: str) -> None:
        self.dataset = dataset
        self.bootstrap = bootstrap
        self.topic = topic
        self.published = Metrics.counter("speed", "alerts_published")

    def setup(self) -> None:
        self.producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "linger.ms": 5})
        self.prometheus = metrics.ALERTS.labels(self.dataset.name)

    def process(self, batch: list[dict]) -> Iterable[tuple[str, str]]:
        dataset = self.dataset
        count = 0
        for row in batch:
            if not row["is_anomaly"]:
                continue
            identity = alert_id(dataset, row)
            alert = {
                ALERT_ID: identity,
                "dataset": dataset.name,
                "event_id": row[dataset.event_id],
                "entity_id": row[dataset.entity],
                "event_time": row[dataset.event_time].isoformat(),
                "score": row["score"],
                "model_version": row["model_version"],
                "scored_at": row["scored_at"].isoformat(),
                **{name: row[name] for name in dataset.features.fields},
            }
            self.producer.produce(
                self.topic, key=str(row[dataset.entity]).encode(), value=json.dumps(alert).encode(),
                headers={ALERT_ID: identity.encode()},
            )
            self.producer.poll(0)
            count += 1
        # Acknowledged only when the broker has every alert of the batch.
        remaining = self.producer.flush(30)
        if remaining:
            raise RuntimeError(f"{remaining} alerts not delivered to Kafka topic {self.topic} within 30 s")
        self.published.inc(count)
        self.prometheus.inc(count)
        yield from one_list(output_acks(batch, acks.ALERT))

    def teardown(self) -> None:
        if getattr(self, "producer", None) is not None:
            self.producer.flush(10)
