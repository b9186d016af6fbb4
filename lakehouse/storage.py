"""Warehouse storage: one place that turns a table or artifact URI into filesystem calls.

Tables go through deltalake, input files through pyarrow.fs, model artifacts through boto3 on
S3; every one of them reads the standard AWS_* variables (keys, AWS_REGION, AWS_ENDPOINT_URL for
an S3-compatible server), so the same code runs on the embedded default and in production.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from functools import lru_cache
from pathlib import Path

import pyarrow.fs as pafs
from deltalake import DeltaTable

from lakehouse.settings import Settings


def aws_region() -> str:
    """The region every S3 client uses: AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1."""
    return os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


def aws_endpoint() -> str | None:
    """The S3-compatible server every S3 client is pointed at (AWS_ENDPOINT_URL), None for AWS."""
    return os.environ.get("AWS_ENDPOINT_URL") or None


def storage_options(uri: str) -> dict[str, str] | None:
    """deltalake options for a URI: S3 credentials and endpoint come only from the environment."""
    if not uri.startswith(("s3://", "s3a://")):
        return None
    options = {"AWS_REGION": aws_region()}
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


def list_input_files(pattern: str) -> list[str]:
    """The data files a local or s3:// path, folder or glob names, sorted; [] when none match.

    Folders are listed recursively, leaving out the hidden and '_'-prefixed files that Spark and
    Hadoop also skip (_SUCCESS, .crc), so a landing folder or prefix lists as its files.
    """
    if "://" not in pattern:
        candidates = sorted(glob.glob(pattern, recursive=True))
        files: list[str] = []
        for candidate in candidates:
            if os.path.isdir(candidate):
                files += [
                    str(path)
                    for path in sorted(Path(candidate).rglob("*"))
                    if path.is_file() and not _hidden(path.relative_to(candidate).as_posix())
                ]
            else:
                files.append(candidate)
        return files
    scheme = pattern.split("://", 1)[0]
    filesystem, path = _filesystem(pattern)
    wildcard = next((index for index, char in enumerate(path) if char in "*?["), None)
    base = path if wildcard is None else path[:wildcard].rsplit("/", 1)[0]
    info = filesystem.get_file_info(base)
    if info.type == pafs.FileType.File:
        return [f"{scheme}://{base}"]
    if info.type == pafs.FileType.NotFound and wildcard is None:
        return []
    found = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return sorted(
        f"{scheme}://{entry.path}"
        for entry in found
        if entry.type == pafs.FileType.File
        and not _hidden(entry.path[len(base) :].lstrip("/"))
        and (wildcard is None or fnmatch.fnmatchcase(entry.path, path))
    )


def list_tables(root: str) -> list[tuple[str, str]]:
    """(schema, table) of every Delta table at <root>/<schema>/<table>/_delta_log, local or s3://.

    Folders starting with "_" or "." (such as _trino_metastore) are not schemas.
    """
    filesystem, base = _filesystem(root)
    found = []
    for schema in filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        name = schema.base_name
        if schema.type != pafs.FileType.Directory or name.startswith(("_", ".")):
            continue
        for table in filesystem.get_file_info(pafs.FileSelector(schema.path)):
            if table.type == pafs.FileType.Directory and filesystem.get_file_info(f"{table.path}/_delta_log").type == pafs.FileType.Directory:
                found.append((name, table.base_name))
    return sorted(found)


def _hidden(relative: str) -> bool:
    return any(part.startswith(("_", ".")) for part in relative.split("/"))


def write_bytes(uri: str, payload: bytes) -> None:
    """Write an artifact: boto3 on S3 (one PUT, the SDK's retries), a plain file locally."""
    if uri.startswith(("s3://", "s3a://")):
        bucket, key = _bucket_key(uri)
        _s3_client().put_object(Bucket=bucket, Key=key, Body=payload)
        return
    path = Path(uri.removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(payload)
    temporary.replace(path)  # readers never see half an artifact


def read_bytes(uri: str) -> bytes:
    if uri.startswith(("s3://", "s3a://")):
        bucket, key = _bucket_key(uri)
        return _s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return Path(uri.removeprefix("file://")).read_bytes()


def read_bytes_if_exists(uri: str) -> bytes | None:
    """An optional artifact's bytes, None when there is none (a file a newer writer adds)."""
    if uri.startswith(("s3://", "s3a://")):
        bucket, key = _bucket_key(uri)
        client = _s3_client()
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            return None
    try:
        return Path(uri.removeprefix("file://")).read_bytes()
    except FileNotFoundError:
        return None


def _bucket_key(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, key


def _s3_client():
    # boto3 reads AWS_ENDPOINT_URL and the keys itself, like delta-rs and pyarrow. Its default
    # session would keep the first credentials it saw; one client per configuration follows the
    # environment as the other engines do.
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    return _s3_client_for(tuple(os.environ.get(name) for name in names), aws_region())


@lru_cache(maxsize=8)
def _s3_client_for(configuration: tuple, region: str):
    import boto3

    return boto3.session.Session().client("s3", region_name=region)


# Trino's view of the warehouse -------------------------------------------------------------
# The Delta catalog's file metastore lives inside the warehouse, so table registrations belong to
# the warehouse they describe (a test warehouse gets its own).
METASTORE_FOLDER = "_trino_metastore"


def trino_uri(location: str) -> str:
    """The URI Trino's native file systems accept for a warehouse location.

    Local folders become local:///absolute/path (the catalog roots the local file system at "/");
    file:// and Hadoop's file:/ forms are converted too; s3:// and other URIs pass unchanged.
    """
    if location.startswith("file://"):
        path = location.removeprefix("file://")
    elif location.startswith("file:/"):
        path = location.removeprefix("file:")
    elif "://" in location:
        return location
    else:
        path = location
    absolute = Path(path).expanduser().resolve()
    return f"local://{absolute.as_posix()}"


def metastore_uri(settings: Settings) -> str:
    """Where the Delta catalog keeps its table registrations: <warehouse>/_trino_metastore."""
    return trino_uri(f"{settings.warehouse.rstrip('/')}/{METASTORE_FOLDER}")
