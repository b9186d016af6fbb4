"""Repairs the unpacked Trino server: restores the jars the tarball stores as hard links.

Trino's server tarball keeps one copy of each jar and stores every other occurrence as a tar hard
link (5,700 of them). Maven's unpack goal writes those entries as empty files, so 310 jars of
plugin/delta-lake and plugin/password-authenticators come out 0 bytes long and the plugins fail
to load (NoClassDefFoundError: com/google/inject/Key). This module fills them in from the
tarball Maven left in its local repository. A link target is either unpacked already (lib/,
another jar of the same plugin) or lives in a plugin that is not unpacked (bigquery, ...).
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from lakehouse.errors import SetupError
from lakehouse.settings import Settings
from local_services import jvm

log = logging.getLogger(__name__)
_POM_NAMESPACE = {"pom": "http://maven.apache.org/POM/4.0.0"}


def empty_jars(server_dir: Path) -> list[Path]:
    return [jar for jar in server_dir.rglob("*.jar") if jar.stat().st_size == 0]


def server_tarball(settings: Settings) -> Path:
    """The server tarball in Maven's local repository, at the version pinned in the pom."""
    properties = ElementTree.parse(jvm.POM).find("pom:properties", _POM_NAMESPACE)
    version = properties.findtext("pom:trino.version", namespaces=_POM_NAMESPACE) if properties is not None else None
    if not version:
        raise SetupError(f"no trino.version property in {jvm.POM}")
    folder = settings.cache_dir / "m2" / "io" / "trino" / "trino-server" / version
    tarball = folder / f"trino-server-{version}.tar.gz"
    if not tarball.exists():
        raise SetupError(f"Trino server tarball not found at {tarball}; re-run `make setup`")
    return tarball


def restore_hard_links(server_dir: Path, tarball: Path) -> int:
    """Fill every empty jar under server_dir with its hard link's target; return how many."""
    empty = {jar.relative_to(server_dir).as_posix() for jar in empty_jars(server_dir)}
    if not empty:
        return 0
    log.info("restoring %d Trino jars unpacked empty (tar hard links) from %s", len(empty), tarball)
    # First pass: which archive entry each empty jar is a link to.
    copies: dict[str, list[str]] = {}
    with tarfile.open(tarball, "r|gz") as archive:
        for member in archive:
            name = _without_top_folder(member.name)
            if member.islnk() and name in empty:
                copies.setdefault(_without_top_folder(member.linkname), []).append(name)
    # Targets already unpacked are linked locally; the rest are read in a second pass.
    for target, names in list(copies.items()):
        source = server_dir / target
        if source.exists() and source.stat().st_size > 0:
            for name in names:
                _link_or_copy(source, server_dir / name)
            del copies[target]
    if copies:
        with tarfile.open(tarball, "r|gz") as archive:
            for member in archive:
                names = copies.get(_without_top_folder(member.name))
                if names and member.isfile():
                    stream = archive.extractfile(member)
                    assert stream is not None
                    first = server_dir / names[0]
                    with open(first, "wb") as output:
                        shutil.copyfileobj(stream, output)
                    for name in names[1:]:
                        _link_or_copy(first, server_dir / name)
    still_empty = empty_jars(server_dir)
    if still_empty:
        raise SetupError(f"could not restore {len(still_empty)} Trino jars, e.g. {still_empty[0]}")
    return len(empty)


def _without_top_folder(name: str) -> str:
    """'trino-server-476/lib/x.jar' -> 'lib/x.jar' (the unpack maps the top folder to server/)."""
    return name.split("/", 1)[1] if "/" in name else name


def _link_or_copy(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
