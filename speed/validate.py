"""Parse and validate: a record's JSON text becomes a typed record, or a dead letter with its reasons.

Validation is the very function the batch layer uses (schemas/rules.py), so the two layers reject
the same records.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics

from lakehouse import constants, system_tables
from schemas.declaration import Dataset
from schemas.rules import RecordValidator, decode_message, parse_json_record
from speed import metrics
from speed.carried_fields import ARRIVED_AT, RAW, SOURCE

DEAD_LETTER = "dead_letter"


def dead_letter(dataset: Dataset, raw: str, source: str, event_id: str | None, rules: list[str], errors: list[str]) -> dict:
    """A rejected record in the shared quarantine layout, with its original text untouched."""
    return system_tables.quarantine_row(
        dataset.name, raw=raw, source=source, event_id=event_id, failed_rules=rules, errors=errors,
        layer=constants.LAYER_SPEED, run_id=None, quarantined_at=datetime.now(timezone.utc),
    )


class ParseAndValidate(beam.DoFn):
    """A batch of (source, JSON text or its UTF-8 bytes[, arrival]) -> one list of typed records on the main output,
    and one list of dead letters with their reasons (tag `dead_letter`) when any was rejected."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.valid = Metrics.counter("speed", "valid")
        self.rejected = Metrics.counter("speed", "dead_letters")

    def setup(self) -> None:
        self.validator = RecordValidator(self.dataset)
        self.prometheus_valid = metrics.EVENTS.labels(self.dataset.name, "valid")
        self.prometheus_rejected = metrics.EVENTS.labels(self.dataset.name, "dead_letter")

    def process(self, batch: list[tuple]) -> Iterable[Any]:
        valid, letters = [], []
        for element in batch:
            source, text = element[0], element[1]
            arrived_at = element[2] if len(element) > 2 else time.time()
            for output in self._validate(source, text):
                if isinstance(output, beam.pvalue.TaggedOutput):
                    letters.append(output.value)
                else:
                    output[ARRIVED_AT] = arrived_at
                    output[SOURCE] = source
                    valid.append(output)
        metrics.trace("validated", valid, SOURCE)
        self.prometheus_valid.inc(len(valid))
        if letters:
            self.prometheus_rejected.inc(len(letters))
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, letters)
        if valid:
            yield valid

    def _validate(self, source: str, data: str | bytes) -> Iterable[Any]:
        text, rule, message = decode_message(data, source)  # decoded once; the text is what arrived
        record = None
        if rule is None:
            record, rule, message = parse_json_record(text, source)
        if record is None:
            self.rejected.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(self.dataset, text, source, None, [rule], [message]))
            return
        typed, failures = self.validator.validate(record, source_file=source)
        if failures:
            self.rejected.inc()
            event_id = self.validator.texts(record, source).get(self.dataset.event_id)
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER,
                dead_letter(self.dataset, text, source, event_id, [f.rule for f in failures], [f.message for f in failures]),
            )
            return
        self.valid.inc()
        typed[RAW] = text  # carried to scoring: an unknown entity's dead letter keeps the line as it arrived
        yield typed
