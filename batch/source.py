"""Input files as they are: each file's format, its record count from the raw bytes, and its records.

The format follows the file, not the dataset: Parquet's magic bytes, then the extension, then
the content (a text file whose first character is `{` holds JSON lines), and only then the
dataset's declared format; `--format` forces one. Each file is counted here, from its bytes and
independently of the code that parses its records (batch/job.py fails a run whose records do not
all end up valid, quarantined or dropped as duplicates), and checked: a file that cannot be read
as its format (empty, not UTF-8, not Parquet, a declared column missing) is quarantined whole and
the run's other files proceed.

CSV and JSON lines are parsed by `parse_file` (in Spark's Python workers, file by file), so that a
row whose field count differs from its header, or a JSON line that is not one object, becomes one
record with its own rule, as in the speed layer, and the line as it arrived is kept for the
quarantine. A UTF-8 byte-order mark and CRLF line ends are accepted.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from lakehouse import storage
from lakehouse.errors import SchemaMismatchError
from schemas.declaration import Dataset
from schemas.rules import RECORD_FIELD_COUNT, parse_json_record

FORMATS = ("csv", "json", "parquet")
PARQUET_MAGIC = b"PAR1"
_EXTENSIONS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json", ".parquet": "parquet", ".pq": "parquet"}
BOM = "\ufeff"

# File-level rules: the whole file is quarantined as one row.
FILE_EMPTY = "file.empty"
FILE_UNREADABLE = "file.unreadable"
FILE_MISSING_COLUMN = "file.missing_column"
FILE_COLUMN_TYPE = "file.column_type"
# How many bytes of a quarantined file its quarantine row keeps.
RAW_PREFIX_BYTES = 1024
_BATCH_ROWS = 8192

# Columns the parsed records carry besides the declared ones.
SOURCE_FILE = "_source_file"
LINE = "_line"
LINE_NUMBER = "_line_number"
PARSE_RULE = "_parse_rule"
PARSE_ERROR = "_parse_error"


@dataclass
class FileScan:
    """One input file as scanned before the run reads it."""

    path: str
    source: str  # the name the records carry (Spark's input_file_name form)
    format: str | None
    records: int | None = None  # counted from the raw bytes; None when the file is quarantined whole
    rule: str | None = None  # the file-level rule it broke, if any
    reason: str | None = None
    raw: str | None = None  # a prefix of its bytes, for the quarantine row

    @property
    def quarantined(self) -> bool:
        return self.rule is not None

    def to_json(self) -> dict:
        row = asdict(self)
        del row["raw"]
        return row


def source_name(path: str) -> str:
    """The file's name as Spark's input_file_name() gives it (a file: URI for local paths)."""
    return path if "://" in path else Path(path).resolve().as_uri()


def detect_format(path: str, head: bytes, declared: str) -> str:
    """Parquet's magic bytes, else the extension, else JSON lines when the text starts with `{`, else the declared format."""
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    suffix = Path(path.rstrip("/")).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    text = head.decode("utf-8", errors="ignore").lstrip(BOM + " \t\r\n")
    if text.startswith("{"):
        return "json"
    return declared


class _Raw(io.RawIOBase):
    """A pyarrow input file (local or s3://) as a Python raw stream, for line iteration and decoding."""

    def __init__(self, native) -> None:
        self._native = native

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._native.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._native.close()
        super().close()


def _open(path: str) -> io.BufferedReader:
    return io.BufferedReader(_Raw(storage.open_input_file(path)), buffer_size=1 << 20)


def _text_lines(stream) -> Iterator[str]:
    """Decoded lines (UTF-8, strict; a leading byte-order mark dropped; newlines kept for csv)."""
    return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict", newline="")


def count_records(path: str, file_format: str) -> int:
    """The file's records, counted from its bytes: JSON lines are the non-blank lines, CSV the csv
    module's non-empty rows after the header, Parquet the row count in its footer."""
    if file_format == "parquet":
        with storage.open_input_file(path) as stream:
            return pq.ParquetFile(stream).metadata.num_rows
    with _open(path) as stream:
        if file_format == "json":
            count = 0
            for number, line in enumerate(stream):
                if number == 0 and line.startswith(BOM.encode()):
                    line = line[len(BOM.encode()):]
                line.decode("utf-8")  # strict: an undecodable line makes the file unreadable
                count += bool(line.strip())
            return count
        rows = sum(1 for row in csv.reader(_text_lines(stream)) if row)
        return max(rows - 1, 0)


def _csv_header(path: str) -> list[str]:
    with _open(path) as stream:
        header = next((row for row in csv.reader(_text_lines(stream)) if row), [])
    return [name.strip() for name in header]


def _check_columns(dataset: Dataset, path: str, file_format: str) -> None:
    """SchemaMismatchError when a required input column is missing (or, in Parquet, of a wrong type)."""
    from batch.file_schema import check_parquet_schema

    if file_format == "parquet":
        check_parquet_schema(dataset, path)
    elif file_format == "csv":
        header = _csv_header(path)
        for field in dataset.input_fields:
            if field.required and field.input_name not in header:
                raise SchemaMismatchError(path, field.input_name, f"{field.type} column in the CSV header",
                                          f"no such column; header is {header}")


def scan(dataset: Dataset, path: str, forced_format: str | None = None) -> FileScan:
    """Detect, check and count one file; a file that cannot be read as its format comes back quarantined."""
    result = FileScan(path=path, source=source_name(path), format=forced_format)
    try:
        with storage.open_input_file(path) as stream:
            head = stream.read(RAW_PREFIX_BYTES)
        result.raw = head.decode("utf-8", errors="backslashreplace") or path
        result.format = forced_format or detect_format(path, head, dataset.format)
        if not head.strip():
            result.rule, result.reason = FILE_EMPTY, f"{path}: the file is empty (no header, no record)"
            return result
        if result.format == "parquet" and not head.startswith(PARQUET_MAGIC):
            raise ValueError("not a Parquet file (no PAR1 magic bytes)")
        _check_columns(dataset, path, result.format)
        result.records = count_records(path, result.format)
    except SchemaMismatchError as error:
        missing = "no such column" in error.found
        result.rule = FILE_MISSING_COLUMN if missing else FILE_COLUMN_TYPE
        result.reason = str(error)
    except UnicodeDecodeError as error:
        result.rule = FILE_UNREADABLE
        result.reason = f"{path}: not UTF-8 text as a {result.format} file ({error.reason} at byte {error.start} of a line)"
    except (OSError, ValueError, csv.Error, pa.ArrowException) as error:
        result.rule = FILE_UNREADABLE
        result.reason = f"{path}: cannot be read as {result.format}: {error}"
    return result


def record_columns(dataset: Dataset) -> list[str]:
    """The text columns a record is read into: the input names, then the derived fields a record may carry."""
    return [field.input_name for field in dataset.input_fields] + [field.name for field in dataset.derived_fields]


def parsed_schema(dataset: Dataset) -> pa.Schema:
    return pa.schema(
        [pa.field(name, pa.string()) for name in record_columns(dataset)]
        + [pa.field(SOURCE_FILE, pa.string()), pa.field(LINE, pa.string()), pa.field(LINE_NUMBER, pa.int64()),
           pa.field(PARSE_RULE, pa.string()), pa.field(PARSE_ERROR, pa.string())]
    )


def _csv_records(path: str, columns: list[str]) -> Iterator[tuple[list, str, int, str | None, str | None]]:
    consumed: list[str] = []
    line_number = 0
    missing = [None] * len(columns)

    def lines(stream) -> Iterator[str]:
        nonlocal line_number
        for line in stream:
            line_number += 1
            consumed.append(line)
            yield line

    with _open(path) as raw_stream:
        reader = csv.reader(lines(_text_lines(raw_stream)))
        header: list[str] | None = None
        positions: list[int | None] = []
        for row in reader:
            text, first_line = "".join(consumed).rstrip("\r\n"), line_number - len(consumed) + 1
            consumed.clear()
            if not row:
                continue
            if header is None:
                header = [name.strip() for name in row]
                # A repeated header name takes its last column, as dict(zip(header, row)) did.
                index = {name: position for position, name in enumerate(header)}
                positions = [index.get(name) for name in columns]
                continue
            if len(row) != len(header):
                message = f"record at {path}:{first_line}: {len(row)} fields, the header has {len(header)}"
                yield missing, text, first_line, RECORD_FIELD_COUNT, message
                continue
            yield [None if position is None else row[position] for position in positions], text, first_line, None, None


# Beyond 64 bits orjson reads an integer as a float (json.loads as an int, another text): a float
# this large sends its line to json.loads.
_ORJSON_EXACT = 9.2e18


def _json_records(path: str, columns: list[str]) -> Iterator[tuple[list, str, int, str | None, str | None]]:
    """Each line as (values, line, number, rule, message): schemas.rules.parse_json_record's verdict.

    orjson reads first: on every line it reads as one object it gives what json.loads gives (both
    are strict RFC 8259 parsers) in a fraction of the time. A line it refuses (NaN and Infinity,
    malformed JSON), one that is not an object, one that starts with a byte-order mark, and one
    with an integer beyond 64 bits go to the shared parser, whose verdict and message the speed
    layer gives too."""
    from schemas.rules import as_text

    missing = [None] * len(columns)
    with _open(path) as stream:
        for number, line in enumerate(stream, start=1):
            text = line.decode("utf-8")
            if number == 1:
                text = text.lstrip(BOM)
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            record = None
            if text[0] != BOM:
                try:
                    record = orjson.loads(text)
                except orjson.JSONDecodeError:
                    pass
            values = []
            if type(record) is dict:
                get = record.get
                for name in columns:
                    value = get(name)
                    # as_text, with its commonest cases inline: a non-empty string, a float, an int.
                    kind = type(value)
                    if kind is str and value:
                        values.append(value)
                    elif kind is float:
                        if not -_ORJSON_EXACT < value < _ORJSON_EXACT:
                            record = None
                            break
                        values.append(str(value))
                    elif kind is int:
                        values.append(str(value))
                    else:
                        values.append(as_text(value))
                else:
                    yield values, text, number, None, None
                    continue
            record, rule, message = parse_json_record(text, f"{path}:{number}")
            if record is None:
                yield missing, text, number, rule, message
                continue
            yield [as_text(record.get(name)) for name in columns], text, number, None, None


def parse_file(dataset: Dataset, path: str, file_format: str, source: str) -> Iterator[pa.RecordBatch]:
    """The records of one CSV or JSON-lines file as Arrow batches of text columns (`parsed_schema`).

    Built column by column (no dict per record): the parse runs in Spark's Python workers beside
    the JVM that validates, on the same cores."""
    schema = parsed_schema(dataset)
    records = _csv_records(path, record_columns(dataset)) if file_format == "csv" else _json_records(path, record_columns(dataset))

    def batch(rows: list[list], lines: list[str], numbers: list[int], rules: list, messages: list) -> pa.RecordBatch:
        count = len(lines)
        arrays = [pa.array(column, pa.string()) for column in zip(*rows)] if rows else []
        arrays += [pa.array([source] * count, pa.string()), pa.array(lines, pa.string()), pa.array(numbers, pa.int64())]
        if any(rule is not None for rule in rules):
            arrays += [pa.array(rules, pa.string()), pa.array(messages, pa.string())]
        else:
            arrays += [pa.nulls(count, pa.string()), pa.nulls(count, pa.string())]
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    rows, lines, numbers, rules, messages = [], [], [], [], []
    for row, text, number, rule, message in records:
        rows.append(row)
        lines.append(text)
        numbers.append(number)
        rules.append(rule)
        messages.append(message)
        if len(lines) >= _BATCH_ROWS:
            yield batch(rows, lines, numbers, rules, messages)
            rows, lines, numbers, rules, messages = [], [], [], [], []
    if lines:
        yield batch(rows, lines, numbers, rules, messages)
