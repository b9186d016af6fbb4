"""Anomaly alerts: each anomalous scored event published to a Kafka topic."""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.metrics import Metrics
from confluent_kafka import Producer

from schemas.declaration import Dataset
from speed import metrics


class PublishAlerts(beam.DoFn):
    """Publishes each anomaly to a Kafka topic (JSON, keyed by entity), flushed with the bundle.

    An event re-scored after a late arrival may be published again; consumers dedupe by event id.
    """

    def __init__(self, dataset: Dataset, bootstrap: str, topic: str) -> None:
        self.dataset = dataset
        self.bootstrap = bootstrap
        self.topic = topic
        self.published = Metrics.counter("speed", "alerts_published")

    def setup(self) -> None:
        self.producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "linger.ms": 5})
        self.prometheus = metrics.ALERTS.labels(self.dataset.name)

    def process(self, row: dict) -> None:
        if not row["is_anomaly"]:
            return
        dataset = self.dataset
        alert = {
            "dataset": dataset.name,
            "event_id": row[dataset.event_id],
            "entity_id": row[dataset.entity],
            "event_time": row[dataset.event_time].isoformat(),
            "score": row["score"],
            "model_version": row["model_version"],
            "scored_at": row["scored_at"].isoformat(),
            **{name: row[name] for name in dataset.features.fields},
        }
        self.producer.produce(self.topic, key=str(row[dataset.entity]).encode(), value=json.dumps(alert).encode())
        self.producer.poll(0)
        self.published.inc()
        self.prometheus.inc()

    def finish_bundle(self) -> None:
        # The bundle is done only when the broker has every alert of it.
        remaining = self.producer.flush(30)
        if remaining:
            raise RuntimeError(f"{remaining} alerts not delivered to Kafka topic {self.topic} within 30 s")

    def teardown(self) -> None:
        if getattr(self, "producer", None) is not None:
            self.producer.flush(10)
