"""Fetch a backup set (or some of its parts) from a destination into a folder, for offline work.

The files are the encrypted parts exactly as stored (no plaintext touches the disk), so
``backup-pipeline decrypt``/``verify`` can then run on a machine with nothing but the
recovery key. Needs only the destination's credentials; a key is optional and only lets
the downloaded parts be checked against the set's manifest as well.

Write ordering (MUST), per file:
1. bytes go to ``<name>.partial`` (0600), appended from where an earlier run stopped
   (ranged downloads; the part already on disk is hashed again, not downloaded again);
2. the complete ``.partial`` is fsynced and its size and SHA-256 (MD5 when the destination
   reports no SHA-256) MUST equal what the destination's listing reports — else it is
   removed and the fetch fails for that file;
3. only then is it renamed to ``<name>``. A file already there with the listed size and
   hash is kept as it is.
With a key, the manifest is authenticated and every fetched part's size and SHA-256 MUST
also equal the manifest's (a part replaced on the destination after the backup is caught).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backup_pipeline.archive.errors import ArchiveError, ArchiveKeyError
from backup_pipeline.destinations.base import Destination, StoredFile
from backup_pipeline.durable_files import fsync_dir
from backup_pipeline.services.backup_parts import (
    APP_NAME,
    PART_MANIFEST,
    PROP_APP,
    PROP_BACKUP_ID,
    PROP_INSTALLATION,
    PROP_PART_NAME,
    part_file_name,
)
from backup_pipeline.services.restore import (
    LATEST,
    MANIFEST_LIMIT_BYTES,
    RestoreError,
    RestoreKeys,
    RestoreRefused,
    decrypt_backup,
    download_backup,
    list_backups,
    manifest_parts,
    parse_manifest,
)

READ_BLOCK = 1 << 20
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class FetchError(Exception):
    """The fetch failed (destination, integrity, disk); exit 1."""


class FetchInputError(FetchError):
    """Bad input (an unknown part, an ambiguous backup id, an unusable folder); exit 2."""


@dataclass(frozen=True)
class FetchedFile:
    part_name: str
    path: Path
    size: int
    sha256: str
    downloaded: int  # bytes fetched by this run (0: already here; < size: resumed)


@dataclass
class FetchReport:
    backup_id: str
    installation_id: str
    destination: str
    complete: bool  # the set has a manifest
    files: list[FetchedFile] = field(default_factory=list)
    manifest_checked: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "installation_id": self.installation_id,
            "destination": self.destination,
            "complete": self.complete,
            "manifest_checked": self.manifest_checked,
            "files": [
                {
                    "part": f.part_name,
                    "path": str(f.path),
                    "size": f.size,
                    "sha256": f.sha256,
                    "downloaded": f.downloaded,
                }
                for f in self.files
            ],
        }


def fetch_backup(
    destination: Destination,
    backup_id: str,
    to_dir: Path,
    *,
    part_names: Iterable[str] = (),
    installation_id: str | None = None,
    keys: RestoreKeys | None = None,
    log: Callable[[str], None] = lambda _message: None,
) -> FetchReport:
    """Download the set's files (all, or ``part_names`` plus the manifest) into ``to_dir``."""
    chosen_id, installation = _choose_set(destination, backup_id, installation_id)
    files = _set_files(destination, chosen_id, installation)
    complete = PART_MANIFEST in files
    wanted = list(dict.fromkeys(part_names))
    if wanted:
        unknown = [name for name in wanted if name not in files]
        if unknown:
            raise FetchInputError(
                f"--part: {', '.join(unknown)} not in backup {chosen_id} (it has: {', '.join(sorted(files))})"
            )
        if complete and PART_MANIFEST not in wanted:
            wanted.append(PART_MANIFEST)  # small, and what `verify --manifest` checks a part against
    else:
        wanted = sorted(files)
    if not complete:
        log(f"warning: backup {chosen_id} has no manifest: it is not a complete backup")
    _prepare(to_dir)
    report = FetchReport(chosen_id, installation, destination.description, complete)
    for name in wanted:
        report.files.append(
            _fetch_file(
                destination, files[name], name, to_dir / part_file_name(installation, chosen_id, name), log
            )
        )
    if keys is not None and complete:
        _check_against_manifest(report, keys)
        report.manifest_checked = True
    elif keys is not None:
        log("no manifest to check the parts against: checked against the destination's listing only")
    return report


def _choose_set(destination: Destination, backup_id: str, installation_id: str | None) -> tuple[str, str]:
    sets = list_backups(destination, installation_id=installation_id)
    if backup_id == LATEST:
        complete = [s for s in sets if s.complete]
        if not complete:
            raise FetchError(f"no complete backup set found on {destination.description}")
        return complete[0].backup_id, complete[0].installation_id
    matches = [s for s in sets if s.backup_id == backup_id]
    if not matches:
        raise FetchError(
            f"no backup {backup_id!r} on {destination.description}"
            + (f" for installation {installation_id!r}" if installation_id else "")
        )
    if len(matches) > 1:
        raise FetchInputError(
            f"--backup-id: {backup_id} exists for several installations "
            f"({', '.join(sorted(s.installation_id for s in matches))}); choose one with --installation-id"
        )
    return matches[0].backup_id, matches[0].installation_id


def _set_files(destination: Destination, backup_id: str, installation: str) -> dict[str, StoredFile]:
    files: dict[str, StoredFile] = {}
    props = {PROP_APP: APP_NAME, PROP_INSTALLATION: installation, PROP_BACKUP_ID: backup_id}
    for stored in destination.list(props):
        name = stored.properties.get(PROP_PART_NAME, "")
        if not _SAFE_NAME.match(name):
            raise FetchError(f"backup {backup_id}: file {stored.id} has an unusable part name {name!r}")
        if name in files:
            raise FetchError(
                f"backup {backup_id}: part {name!r} is stored twice on {destination.description} (files "
                f"{files[name].id} and {stored.id}); remove the stray one before fetching"
            )
        files[name] = stored
    return files


def _prepare(to_dir: Path) -> None:
    try:
        to_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchInputError(f"--to: cannot create {to_dir}: {exc.strerror or exc}") from None
    if not os.access(to_dir, os.W_OK):
        raise FetchInputError(f"--to: {to_dir} is not writable by this user")


class _Hashes:
    def __init__(self) -> None:
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)

    def update(self, block: bytes) -> None:
        self.size += len(block)
        self.sha256.update(block)
        self.md5.update(block)

    def matches(self, stored: StoredFile) -> bool:
        if self.size != stored.size:
            return False
        if stored.sha256:
            return self.sha256.hexdigest() == stored.sha256
        return stored.md5 is not None and self.md5.hexdigest() == stored.md5


def _hash_file(path: Path) -> _Hashes:
    hashes = _Hashes()
    with path.open("rb") as handle:
        while block := handle.read(READ_BLOCK):
            hashes.update(block)
    return hashes


def _fetch_file(
    destination: Destination, stored: StoredFile, part_name: str, target: Path, log: Callable[[str], None]
) -> FetchedFile:
    if not stored.sha256 and not stored.md5:
        raise FetchError(
            f"part {part_name}: {destination.description} reports no checksum to check it against"
        )
    try:
        if target.exists():
            existing = _hash_file(target)
            if existing.matches(stored):
                log(f"{target.name}: already here, size and checksum match")
                return FetchedFile(part_name, target, stored.size, existing.sha256.hexdigest(), 0)
            raise FetchError(
                f"{target} exists but differs from part {part_name} on {destination.description}; "
                "move it away, or fetch into another folder"
            )
        partial = target.with_name(target.name + ".partial")
        hashes = _Hashes()
        if partial.exists():
            if partial.stat().st_size > stored.size:
                partial.unlink()  # longer than the part: not a prefix of it
            else:
                hashes = _hash_file(partial)
        start = hashes.size
        if start:
            log(f"{target.name}: resuming at byte {start} of {stored.size}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as out:
            for block in download_backup(destination, stored.id, stored.size, start=start):
                out.write(block)
                hashes.update(block)
            out.flush()
            os.fsync(out.fileno())
        if not hashes.matches(stored):
            partial.unlink(missing_ok=True)  # the resumed prefix may be what is wrong: start over next time
            which = "SHA-256" if stored.sha256 else "MD5"
            raise FetchError(
                f"part {part_name}: the downloaded {hashes.size} bytes do not match the {stored.size} bytes and "
                f"{which} that {destination.description} lists for file {stored.id}; nothing was kept, fetch again"
            )
        os.replace(partial, target)
        _fsync_dir(target.parent)
    except RestoreError as exc:  # the destination sent more than it lists
        raise FetchError(f"part {part_name}: {exc}") from None
    except OSError as exc:
        raise FetchError(f"part {part_name}: writing {target} failed: {exc.strerror or exc}") from None
    log(f"{target.name}: {stored.size} bytes, checksum matches the destination's listing")
    return FetchedFile(part_name, target, stored.size, hashes.sha256.hexdigest(), stored.size - start)


def _check_against_manifest(report: FetchReport, keys: RestoreKeys) -> None:
    manifest_file = next(f for f in report.files if f.part_name == PART_MANIFEST)
    try:
        plaintext = bytearray()
        for block in decrypt_backup(_read(manifest_file.path), keys, report.backup_id, PART_MANIFEST):
            plaintext += block
            if len(plaintext) > MANIFEST_LIMIT_BYTES:
                raise FetchError(f"the manifest is larger than {MANIFEST_LIMIT_BYTES} bytes: refusing it")
        manifest = parse_manifest(bytes(plaintext))
    except ArchiveKeyError:
        raise
    except (ArchiveError, RestoreRefused) as exc:
        raise FetchError(f"backup {report.backup_id}: the manifest does not authenticate: {exc}") from None
    recorded = {str(p["part_name"]): p for p in manifest_parts(manifest)}
    wrong = []
    for fetched in report.files:
        if fetched.part_name == PART_MANIFEST:
            continue
        entry = recorded.get(fetched.part_name)
        if entry is None:
            wrong.append(f"{fetched.part_name} (not in the manifest)")
        elif int(entry["size"]) != fetched.size or str(entry["sha256"]) != fetched.sha256:
            wrong.append(f"{fetched.part_name} (size or SHA-256 differ from the manifest)")
    if wrong:
        raise FetchError(
            f"backup {report.backup_id}: the destination holds parts that are not the ones the manifest "
            f"recorded: {', '.join(wrong)}; they were downloaded intact but must not be trusted"
        )


def _read(path: Path) -> Iterable[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(READ_BLOCK):
            yield block


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems (e.g. SMB) refuse fsync on a directory
        fsync_dir(path)
