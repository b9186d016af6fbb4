"""Warehouse storage: one place that turns a table or artifact URI into filesystem calls.

Local folders and s3:// both go through pyarrow.fs (artifacts) and deltalake (tables), so the
same code runs on the embedded default and in production.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs
from deltalake import DeltaTable


def storage_options(uri: str) -> dict[str, str] | None:
    """deltalake options for a URI: S3 credentials and endpoint come only from the environment."""
    if not uri.startswith(("s3://", "s3a://")):
        return None
    options = {"AWS_REGION": os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        if os.environ.get(name):
            options[name] = os.environ[name]
    if options.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        options["AWS_ALLOW_HTTP"] = "true"
    return options


def table_exists(uri: str) -> bool:
    if "://" not in uri:
        return (Path(uri) / "_delta_log").is_dir()
    try:
        DeltaTable(uri, storage_options=storage_options(uri))
        return True
    except Exception:  # noqa: BLE001 - deltalake raises several types for "no table here"
        return False


def open_table(uri: str, version: int | None = None) -> DeltaTable:
    return DeltaTable(uri, version=version, storage_options=storage_options(uri))


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).resolve())
    return pafs.FileSystem.from_uri(uri.replace("s3a://", "s3://"))


def open_input_file(uri: str):
    """A random-access reader of a local path or s3:// object (for headers and Parquet footers)."""
    filesystem, path = _filesystem(uri)
    return filesystem.open_input_file(path)


def write_bytes(uri: str, payload: bytes) -> None:
    filesystem, path = _filesystem(uri)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(payload)


def read_bytes(uri: str) -> bytes:
    filesystem, path = _filesystem(uri)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()
