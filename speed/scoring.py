"""Scoring: each featured event scored by its entity's newest registered model, reloaded as the
registry changes."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any, Iterable

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from lakehouse import registry, system_tables
from lakehouse.detectors import NearestBank
from lakehouse.settings import Settings
from schemas.declaration import Dataset
from speed import metrics
from speed.carried_fields import ACK, ACK_ONLY, ARRIVED_AT, NEW, RAW, RELATIVE, REVISION, SOURCE
from speed.validate import DEAD_LETTER, dead_letter

log = logging.getLogger(__name__)

# The hot row's columns set by name (system_tables.hot_row, whose layout _hot_rows follows).
_SCORED_AT, _REVISION = system_tables.SCORED_AT.name, system_tables.REVISION.name
_IS_ALERT, _SURPRISE, _LIKELIHOOD = system_tables.IS_ALERT.name, system_tables.SURPRISE.name, system_tables.LIKELIHOOD.name


# The models of a registry version, shared by the DoFn instances of a process: the SDK harness
# makes a new instance (setup) for each new bundle processor, and unpickling 1,000 models took
# seconds of CPU in the middle of a followed stream (docs/benchmarks.md, "Speed"). The registry
# version also moves when a batch run is logged (registry.registry_version): the artifacts are
# loaded again only when the served (entity, version) pairs changed. Only the newest is kept.
# registry.load gives the numpy forms of the models that have one (one file a version, no PyOD
# import) and unpickles the rest; the bank below holds either kind.
_MODELS: dict[tuple[str, str], tuple[tuple, dict, frozenset]] = {}
_MODELS_LOCK = threading.Lock()


def _models_of(settings: Settings, dataset: str, version: tuple) -> dict:
    key = (str(settings.warehouse), dataset)
    with _MODELS_LOCK:
        cached = _MODELS.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        latest = registry.latest_versions(settings, dataset)
        served = frozenset(zip(latest.entity_id, latest.version.astype(int)))
        models = cached[1] if cached is not None and cached[2] == served else _Served.of(registry.load(latest))
        _MODELS[key] = (version, models, served)
        return models


class _Served(dict):
    """entity -> RegisteredModel, with the models one NearestBank holds scored together
    (lakehouse/detectors.py): `bank`, and `slot` from id(RegisteredModel) to its place in it."""

    bank: NearestBank | None = None
    slot: dict[int, int] = {}  # replaced, never changed in place, by `of`

    @classmethod
    def of(cls, models: dict) -> "_Served":
        served = cls(models)
        entries = list(models.values())
        eligible = NearestBank.eligible([entry.model for entry in entries])
        if eligible:
            positions = {id(model): number for number, model in enumerate(eligible)}
            served.bank = NearestBank(eligible)
            served.slot = {id(entry): positions[id(entry.model)] for entry in entries if id(entry.model) in positions}
        return served


class ScoreBatch(beam.DoFn):
    """Scores a batch of featured events with the newest registered model of each entity.

    Models are reloaded when the registry table gets a new version, checked at most every
    `reload_seconds`, so a batch run's new models reach a running pipeline without a restart.
    An event whose entity has no model goes to the dead-letter output.
    """

    def __init__(self, dataset: Dataset, settings: Settings, reload_seconds: float = 30.0) -> None:
        self.dataset = dataset
        self.settings = settings
        self.reload_seconds = reload_seconds
        self.scored = Metrics.counter("speed", "scored")
        self.rescored = Metrics.counter("speed", "rescored_after_late_event")
        self.anomalies = Metrics.counter("speed", "anomalies")
        self.unknown = Metrics.counter("speed", "unknown_entity")
        self.reloads = Metrics.counter("speed", "model_reloads")

    def setup(self) -> None:
        self.prometheus_anomalies = metrics.ANOMALIES.labels(self.dataset.name)
        self.prometheus_scored_latency = metrics.SCORED_LATENCY.labels(self.dataset.name)
        self.models: dict[str, registry.RegisteredModel] = {}
        self.loaded_version: tuple | None = None
        self.checked_at = 0.0
        self._maybe_reload(force=True)

    def _maybe_reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.checked_at < self.reload_seconds:
            return
        self.checked_at = now
        version = registry.registry_version(self.settings)
        if version is not None and version != self.loaded_version:
            self.models = _models_of(self.settings, self.dataset.name, version)
            self.loaded_version = version
            self.reloads.inc()
            log.info("speed: loaded %d models of %s (registry version %s)", len(self.models), self.dataset.name, version)

    def process(self, batch: list[dict]) -> Iterable[Any]:
        """One list of hot rows, and one list of dead letters (tag `dead_letter`) when any."""
        rows, letters, _, _ = self.score(batch)
        if letters:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, letters)
        if rows:
            yield rows

    def score(self, batch: list[dict], blocks: dict | None = None) -> tuple[list[dict], list[dict], list[tuple], datetime]:
        """process's hot rows and dead letters, and (entity, scores, flags, relative scores, model
        version) of each entity scored, with the scoring time. `blocks`: entity -> its records'
        features as one array (stateful_features.Appended), where the keyed step has them."""
        self._maybe_reload()
        rows, letters = [], []
        dataset = self.dataset
        by_entity: dict[str, list[dict]] = {}
        for record in batch:
            by_entity.setdefault(record[dataset.entity], []).append(record)
        scored_at = datetime.now(timezone.utc)
        entries = {entity_id: system_tables.model_for(self.models, entity_id) for entity_id in by_entity}
        features = {}
        for entity_id, block in (blocks or {}).items():
            if len(by_entity.get(entity_id, ())) == len(block.features):
                features[entity_id] = block.features
        groups = []
        banked = self._score_banked(by_entity, entries, features)
        for entity_id, records in by_entity.items():
            entry = entries[entity_id]
            if entry is None:
                for record in records:
                    if record.get("_revised"):
                        letters.append({ACK: record.get(ACK), ACK_ONLY: True})
                        continue
                    self.unknown.inc(1)
                    raw = record[RAW]  # as it arrived: a replay of it hashes (and is quarantined) the same
                    message = (
                        f"record {record[dataset.event_id]}: field '{dataset.entity}' names an entity with no "
                        f"registered model (rule {dataset.entity}.known_entity), got '{entity_id}'"
                    )
                    letter = dead_letter(
                        dataset, raw, record.get(SOURCE) or "speed:score", record[dataset.event_id],
                        [f"{dataset.entity}.known_entity"], [message],
                    )
                    # Acknowledges the output it stands for, not the record: the record is done
                    # only once it is landed too (speed/acks.py).
                    letters.append({**letter, ACK: record.get(ACK)})
                continue
            if entity_id in banked:
                scores, flags = banked[entity_id]
            else:
                given = features.get(entity_id)
                scores, flags = entry.model.score(given if given is not None else np.vstack([record["_features"] for record in records]))
            self._observe_scored(records)
            revised = sum(1 for record in records if record.get("_revised"))
            self.scored.inc(len(records) - revised)
            if revised:
                self.rescored.inc(revised)
            flagged = int(np.count_nonzero(flags))
            if flagged:
                self.anomalies.inc(flagged)
                self.prometheus_anomalies.inc(flagged)
            relative = entry.model.relative(scores)
            groups.append((entity_id, scores, flags, relative, entry.version))
            rows.extend(self._hot_rows(records, np.asarray(scores, dtype=np.float64).tolist(), np.asarray(flags, dtype=bool).tolist(),
                                       relative.tolist(), entry.version, scored_at))
        return rows, letters, groups, scored_at

    def _hot_rows(self, records: list[dict], scores: list[float], flags: list[bool], relative: list[float],
                  model_version, scored_at: datetime) -> list[dict]:
        """The records' hot rows (system_tables.hot_row, after the carried fields), built in one
        loop from the scores as Python floats: a row was two dicts merged into a third, and a
        float() and bool() of a numpy scalar each, several microseconds an event."""
        event_fields = system_tables.event_field_names(self.dataset)
        rows = []
        for record, score, flag, on_scale in zip(records, scores, flags, relative):
            get = record.get
            row = {RELATIVE: on_scale, ARRIVED_AT: get(ARRIVED_AT), SOURCE: get(SOURCE), ACK: get(ACK), NEW: get(NEW)}
            for name in event_fields:
                row[name] = record[name]
            row["score"] = score
            row["is_anomaly"] = flag
            row["model_version"] = model_version
            row[_SCORED_AT] = scored_at
            row[_REVISION] = get(REVISION, 0)
            row[_IS_ALERT] = False
            row[_SURPRISE] = None
            row[_LIKELIHOOD] = None
            rows.append(row)
        return rows

    def _score_banked(self, by_entity: dict[str, list[dict]], entries: dict, features: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """entity -> (scores, flags) of its records, for the entities whose model the bank holds:
        all of them in one pass (lakehouse/detectors.NearestBank; the same bits as one by one).
        `features`: entity -> its records' features as one array, where known."""
        bank, slot = getattr(self.models, "bank", None), getattr(self.models, "slot", {})
        if bank is None:
            return {}
        names, which, rows = [], [], []
        for entity_id, records in by_entity.items():
            entry = entries[entity_id]
            number = slot.get(id(entry)) if entry is not None else None
            if number is None:
                continue
            names.append((entity_id, len(records)))
            which.extend([number] * len(records))
            given = features.get(entity_id)
            if given is not None:
                rows.append(given)  # vstack takes a block of rows and single rows alike
            else:
                rows.extend(record["_features"] for record in records)
        if not names:
            return {}
        scores, flags = bank.score(np.array(which), np.vstack(rows))
        out, start = {}, 0
        for entity_id, count in names:
            out[entity_id] = (scores[start : start + count], flags[start : start + count])
            start += count
        return out

    def _observe_scored(self, records: list[dict]) -> None:
        # Arrival to scored, before the sinks: the part of the latency the sinks' batching and
        # commits do not add. Revisions after a late event carry no arrival time.
        now = time.time()
        for record in records:
            arrived = record.get(ARRIVED_AT)
            if arrived is not None:
                latency = max(0.0, now - arrived)
                self.prometheus_scored_latency.observe(latency)
                metrics.SCORED_LATENCY_SAMPLES.append((record.get(SOURCE), latency))

