"""A malformed-input corpus of our own (#15): each file's expected counts, in tests/corpus/manifest.json,
asserted through `lakehouse batch run --json` (real Spark and Delta) and, for the JSON lines, through
the whole speed pipeline (Beam's in-process runner).

One batch run per dataset reads every file of its corpus folder: the run's totals are the manifest's
sums, each file's own counts are in the run record, and silver and the quarantine hold each file's
valid and rejected records.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner

from app.cli import app
from lakehouse import constants
from lakehouse.settings import get_settings

CORPUS = Path(__file__).parent / "corpus"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())


@contextmanager
def _warehouse(path: Path):
    previous = os.environ.get("LAKEHOUSE_WAREHOUSE")
    os.environ["LAKEHOUSE_WAREHOUSE"] = str(path)
    get_settings.cache_clear()
    try:
        yield get_settings()
    finally:
        if previous is None:
            os.environ.pop("LAKEHOUSE_WAREHOUSE", None)
        else:
            os.environ["LAKEHOUSE_WAREHOUSE"] = previous
        get_settings.cache_clear()


def _run_json(warehouse: Path, dataset: str) -> tuple[int, dict]:
    with _warehouse(warehouse):
        result = CliRunner().invoke(app, ["batch", "run", "-d", dataset, "-i", str(CORPUS / dataset), "--json"], prog_name="lakehouse")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.output
    return result.exit_code, json.loads(lines[-1])


def _file_and_line(source: str) -> tuple[str, int | None]:
    """A quarantine row's source, `<file URI>:<line>` (or the file alone when quarantined whole)."""
    name = source.rsplit("/", 1)[-1]
    stem, _, line = name.rpartition(":")
    return (stem, int(line)) if stem and line.isdigit() else (name, None)


def _by_file(table_uri: str, dataset: str) -> dict[str, int]:
    frame = DeltaTable(table_uri).to_pandas()
    column = "source" if "source" in frame.columns else "source_file"
    if "dataset" in frame.columns:
        frame = frame[frame.dataset == dataset]
    return frame[column].map(lambda source: _file_and_line(source)[0]).value_counts().to_dict()


@pytest.mark.spark
@pytest.mark.parametrize("dataset", sorted(MANIFEST))
def test_the_corpus_through_lakehouse_batch_run_json(dataset, spark, tmp_path):
    expected = MANIFEST[dataset]
    exit_code, record = _run_json(tmp_path / "warehouse", dataset)
    assert exit_code == 0 and record["status"] == "succeeded", record
    totals = {name: sum(item[name] for item in expected.values()) for name in ("input", "valid", "quarantined", "duplicates", "conflicts")}
    assert {name: record[name] for name in totals} == totals
    assert record["files_quarantined"] == sum(1 for item in expected.values() if item["file_rule"])
    files = {Path(item["path"]).name: item for item in record["files"]}
    assert sorted(files) == sorted(expected)
    for name, item in expected.items():
        if item["file_rule"]:
            assert files[name]["rule"] == item["file_rule"], (name, files[name])
        else:
            assert files[name]["rule"] is None and files[name]["records"] == files[name]["read"] == item["input"], (name, files[name])

    with _warehouse(tmp_path / "warehouse") as settings:
        silver = _by_file(settings.table_uri(dataset, constants.SILVER), dataset)
        quarantine = _by_file(settings.table_uri(constants.SYSTEM_SCHEMA, constants.QUARANTINE), dataset)
    for name, item in expected.items():
        assert silver.get(name, 0) == item["valid"], name
        # A file quarantined whole is one quarantine row; otherwise one row per rejected record,
        # and one per conflicting version (rule event_id.conflict).
        assert quarantine.get(name, 0) == (1 if item["file_rule"] else item["quarantined"] + item["conflicts"]), name

    # Each rejected record is the line as it arrived, at the line its source names.
    with _warehouse(tmp_path / "warehouse") as settings:
        rows = DeltaTable(settings.table_uri(constants.SYSTEM_SCHEMA, constants.QUARANTINE)).to_pandas()
    for row in rows.itertuples():
        name, line = _file_and_line(row.source)
        if line is not None and not name.endswith(".json"):  # parquet_named.json: a row, not a line
            text = (CORPUS / dataset / name).read_bytes().decode("utf-8-sig").splitlines()
            assert row.raw == text[line - 1], (name, line, row.raw)
            assert row.failed_rules.size and len(row.errors) == len(row.failed_rules), row

    # The same files again: nothing new in the quarantine (its key includes the line).
    exit_code, again = _run_json(tmp_path / "warehouse", dataset)
    assert exit_code == 0 and (again["quarantined"], again["conflicts"], again["valid"]) == (record["quarantined"], record["conflicts"], 0), again
    with _warehouse(tmp_path / "warehouse") as settings:
        assert len(DeltaTable(settings.table_uri(constants.SYSTEM_SCHEMA, constants.QUARANTINE)).to_pandas()) == len(rows)


@pytest.mark.beam
def test_the_json_corpus_through_the_speed_pipeline(tmp_path):
    """Every JSON-lines file of the corpus replayed through the whole speed pipeline (Beam's
    in-process runner: the replay source, validation, the sinks) into an empty warehouse, where no
    entity has a model yet: each valid message is then a dead letter of `entity_id.known_entity`
    (and landed), each invalid one a dead letter of its own rules, one per line as it arrived.

    The speed layer keeps repeats and other versions as messages (the hot table upserts by event
    id), so a file's valid count here is the batch layer's valid + duplicates + conflicts. A file
    the batch layer quarantines whole is, in a stream, lines like any other (its `speed` entry)."""
    from speed import pipeline

    folder = tmp_path / "stream"
    folder.mkdir()
    expected = {}
    for name, item in MANIFEST["sensor_events"].items():
        if name.endswith(".jsonl"):
            (folder / name).write_bytes((CORPUS / "sensor_events" / name).read_bytes())
            speed = item.get("speed") or {"input": item["input"], "quarantined": item["quarantined"],
                                          "valid": item["valid"] + item["duplicates"] + item["conflicts"]}
            expected[name] = speed
    with _warehouse(tmp_path / "warehouse") as settings:
        result = pipeline.run(["--dataset", "sensor_events", "--input", str(folder / "*.jsonl")], settings=settings)
        rows = DeltaTable(settings.table_uri(constants.SYSTEM_SCHEMA, constants.QUARANTINE)).to_pandas()

    assert result.scored == 0 and result.dead_letters == sum(item["input"] for item in expected.values())
    assert result.unknown_entity == sum(item["valid"] for item in expected.values())
    unknown = rows.failed_rules.map(lambda rules: list(rules) == ["entity_id.known_entity"])
    for name, item in expected.items():
        of_file = rows.source.map(lambda source: _file_and_line(source)[0]) == name
        assert (of_file.sum(), (of_file & unknown).sum(), (of_file & ~unknown).sum()) == (
            item["input"], item["valid"], item["quarantined"]), name
    # Each dead letter is its line as it arrived (without the file's byte-order mark and CR), at
    # the line its source names; bytes that are not UTF-8 are kept as \\x escapes.
    for row in rows.itertuples():
        name, line = _file_and_line(row.source)
        arrived = (CORPUS / "sensor_events" / name).read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n")[line - 1].removesuffix(b"\r")
        assert row.raw == arrived.decode("utf-8", errors="backslashreplace"), (name, line)
    assert rows[rows.failed_rules.map(lambda rules: "record.encoding" in rules)].source.map(lambda source: _file_and_line(source)).tolist() == [("bad_utf8.jsonl", 2)]


def test_a_failed_run_prints_its_record_and_exits_non_zero(spark, tmp_path, monkeypatch):
    import batch.job as job

    def lost_a_record(record):
        raise job.CountMismatchError("counts do not add up (planted)")

    monkeypatch.setattr(job, "check_counts", lost_a_record)
    exit_code, record = _run_json(tmp_path / "warehouse", "metrics")
    assert exit_code != 0
    assert record["status"] == "failed" and "planted" in record["error"] and record["watermark"] is None
    with _warehouse(tmp_path / "warehouse") as settings:
        from batch import run_log

        assert run_log.current_watermark(settings, "metrics") is None
        assert not Path(settings.table_uri("metrics", constants.BATCH_SCORES)).exists()


test_a_failed_run_prints_its_record_and_exits_non_zero = pytest.mark.spark(test_a_failed_run_prints_its_record_and_exits_non_zero)
