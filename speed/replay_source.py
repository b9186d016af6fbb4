"""Replaying JSON-lines files as a speed-layer source."""

from __future__ import annotations

import codecs
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
    """Each non-blank line as bytes, as a Kafka message arrives: the validator decodes it
    (record.encoding when it is not UTF-8). A byte-order mark before the first line and CR before
    LF belong to the file, not to the record, and are dropped, as the batch layer reads them."""
    with storage.open_input_file(path) as stream:
        for number, line in enumerate(io.BufferedReader(stream), start=1):  # Arrow's files do not iterate lines
            if number == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8):]
            line = line.rstrip(b"\n").removesuffix(b"\r")
            if line.strip():
                # `<file>:<line>`, as the batch layer names a record's source in the quarantine.
                yield system_tables.record_source(path, number), line, time.time()
