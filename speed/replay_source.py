"""Replaying JSON-lines files as a speed-layer source."""

from __future__ import annotations

import io
import time

import apache_beam as beam

from lakehouse import storage, system_tables
from lakehouse.errors import ConfigurationError
from speed.coding import Records, in_lists


class ReadReplay(beam.PTransform):
    """Lists of up to `batch_size` (`<file>:<line>`, line, read time) of JSON-lines files, each
    file read start to end by one worker.

    Not Beam's ReadFromText: runners split its reads and process the pieces in any order (Flink
    does), so an entity's events would arrive hundreds of events out of order, beyond what the
    per-entity state can put back in place. A replay keeps each file's order, as a Kafka
    partition does.
    """

    def __init__(self, pattern: str, batch_size: int = 1000) -> None:
        super().__init__()
        self.pattern = pattern
        self.batch_size = batch_size

    def expand(self, pipeline):
        files = storage.list_input_files(self.pattern)
        if not files:
            raise ConfigurationError(f"--input {self.pattern!r} matches no file")
        return pipeline | "ReplayFiles" >> beam.Create(files) | "ReadLines" >> beam.FlatMap(_read_lines, self.batch_size).with_output_types(Records)


def _read_lines(path: str, batch_size: int):
    yield from in_lists(_lines(path), batch_size)


def _lines(path: str):
    with storage.open_input_file(path) as stream:
        for number, line in enumerate(io.TextIOWrapper(stream, encoding="utf-8", errors="replace"), start=1):
            line = line.rstrip("\n")
            if line.strip():
                # `<file>:<line>`, as the batch layer names a record's source in the quarantine.
                yield system_tables.record_source(path, number), line, time.time()
