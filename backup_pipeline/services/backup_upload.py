"""Encrypt a plaintext stream and store it as one part of a backup set; remove (partial) sets.

The encryption step is passed in as an ``Encryptor`` so this module does not depend on
how keys are loaded (the op builds it from ``BackupKeysResource``).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from ..destinations.base import (
    DailyCapError,
    Destination,
    DestinationError,
    LockedError,
    QuotaError,
    StoredFile,
)
from .backup_parts import (
    APP_NAME,
    PART_MANIFEST,
    PART_SEED,
    PROP_APP,
    PROP_BACKUP_ID,
    PROP_INSTALLATION,
    PROP_PART_NAME,
    SET_KIND_REGULAR,
    BackupError,
    ErrorCode,
    part_file_name,
    part_properties,
    set_properties,
)

#: (plaintext chunks, backup id, part name) -> ciphertext chunks
Encryptor = Callable[[Iterable[bytes], str, str], Iterator[bytes]]


@dataclass(frozen=True)
class UploadedPart:
    """One verified part; a small dict of it travels between ops and into the manifest."""

    part_name: str
    file_id: str
    file_name: str
    size: int  # ciphertext bytes on the destination
    sha256: str  # of the ciphertext, as verified by the destination
    plaintext_size: int
    plaintext_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UploadedPart:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


class _Hashing:
    def __init__(self) -> None:
        self.size = 0
        self.sha256 = hashlib.sha256()

    def wrap(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.size += len(chunk)
            self.sha256.update(chunk)
            yield chunk


def destination_error_code(exc: DestinationError) -> str:
    """The stable code of a destination failure: the daily upload cap, no space, or unavailable."""
    if isinstance(exc, DailyCapError):
        return ErrorCode.DAILY_CAP
    if isinstance(exc, QuotaError):
        return ErrorCode.DESTINATION_QUOTA
    return ErrorCode.DESTINATION_UNAVAILABLE


def destination_failure(exc: DestinationError, action: str) -> BackupError:
    return BackupError(destination_error_code(exc), f"{action}: {exc}", retryable=exc.retryable)


def remove_part(destination: Destination, installation_id: str, backup_id: str, part_name: str) -> int:
    """Delete every file of this part (leftovers of an earlier attempt of the same step)."""
    props = {**set_properties(installation_id, backup_id), PROP_PART_NAME: part_name}
    removed = 0
    for stored in list(destination.list(props)):
        destination.delete(stored.id)
        removed += 1
    return removed


def upload_part(
    destination: Destination,
    encryptor: Encryptor,
    *,
    installation_id: str,
    backup_id: str,
    part_name: str,
    plaintext: Iterable[bytes],
    set_kind: str = SET_KIND_REGULAR,
) -> UploadedPart:
    """plaintext → encrypt → destination.put; the put verifies size and SHA-256 of what it stored.

    Retry-safe: an earlier attempt's file of the same part is removed first, so a retried
    step never leaves two copies.
    """
    action = f"uploading part {part_name!r} of backup {backup_id} to {destination.description}"
    try:
        try:
            remove_part(destination, installation_id, backup_id, part_name)
        except LockedError as exc:
            raise BackupError(
                ErrorCode.DESTINATION_UNAVAILABLE,
                f"{action}: an earlier attempt left this part on the destination and the destination keeps it "
                f"({exc}); this backup cannot be written again under the same id — the next backup makes a new set",
            ) from None
        plain = _Hashing()
        cipher = _Hashing()
        ciphertext = cipher.wrap(encryptor(plain.wrap(plaintext), backup_id, part_name))
        stored = destination.put(
            part_file_name(installation_id, backup_id, part_name),
            ciphertext,
            part_properties(installation_id, backup_id, part_name, set_kind),
        )
    except DestinationError as exc:
        raise destination_failure(exc, action) from None
    expected = cipher.sha256.hexdigest()
    if stored.size != cipher.size or (stored.sha256 is not None and stored.sha256 != expected):
        raise BackupError(
            ErrorCode.VERIFY_FAILED,
            f"{action}: destination reports {stored.size} bytes / sha256 {stored.sha256}, "
            f"sent {cipher.size} bytes / sha256 {expected}",
        )
    return UploadedPart(
        part_name=part_name,
        file_id=stored.id,
        file_name=stored.name,
        size=stored.size,
        sha256=expected,
        plaintext_size=plain.size,
        plaintext_sha256=plain.sha256.hexdigest(),
    )


def list_sets(destination: Destination, installation_id: str) -> dict[str, list[StoredFile]]:
    """Every file this installation wrote, grouped by backup id."""
    sets: dict[str, list[StoredFile]] = defaultdict(list)
    for stored in destination.list({PROP_APP: APP_NAME, PROP_INSTALLATION: installation_id}):
        backup_id = stored.properties.get(PROP_BACKUP_ID)
        if backup_id:
            sets[backup_id].append(stored)
    return dict(sets)


def has_manifest(files: Iterable[StoredFile]) -> bool:
    return any(f.properties.get(PROP_PART_NAME) == PART_MANIFEST for f in files)


def has_seed_checkpoint(files: Iterable[StoredFile]) -> bool:
    """A seeding run's set (``PART_SEED``): not a backup, but the base the next run continues from."""
    return any(f.properties.get(PROP_PART_NAME) == PART_SEED for f in files)


def remove_set(destination: Destination, installation_id: str, backup_id: str) -> int:
    """Delete every file of one set, the manifest FIRST so a half-deleted set is never 'complete'."""
    files = list(destination.list(set_properties(installation_id, backup_id)))
    files.sort(key=lambda f: f.properties.get(PROP_PART_NAME) != PART_MANIFEST)
    for stored in files:
        destination.delete(stored.id)
    return len(files)


def remove_incomplete_sets(
    destination: Destination,
    installation_id: str,
    *,
    keep: Iterable[str] = (),
    referenced: Callable[[dict[str, list[StoredFile]]], Callable[[str], set[str]]] | None = None,
) -> list[str]:
    """Delete every set without a manifest except ``keep``; returns their backup ids.

    Called under the data lock with ``keep`` naming this backup and every other backup run
    still in progress (the lock is held per step, so it alone does not exclude them): a set
    without a manifest then belongs to a run that died (SIGKILL, host crash) before its
    failure hook could clean up. A set the destination keeps (``LockedError``: S3 object lock,
    credentials without delete permission) is left for retention, which reports it until it
    can be deleted; it is not a backup either way, and a new backup must not fail on it.
    ``referenced`` (given the sets found) answers which parts of a set complete sets still
    reference (``services/reachability.py``): the remains of a set retention forgot keep them.
    """
    keep_ids = set(keep)
    removed: list[str] = []
    grouped = list_sets(destination, installation_id)
    parts_needed: Callable[[str], set[str]] | None = None
    for backup_id, files in sorted(grouped.items()):
        # A seed checkpoint is kept too: the next run continues from it (retention alone
        # removes an abandoned seed, deliberately and reported).
        if backup_id in keep_ids or has_manifest(files) or has_seed_checkpoint(files):
            continue
        if referenced is not None and parts_needed is None:
            parts_needed = referenced(grouped)  # read once, only when there is something to remove
        needed = parts_needed(backup_id) if parts_needed is not None else set()
        files = [f for f in files if f.properties.get(PROP_PART_NAME) not in needed]
        if not files:
            continue
        try:
            for stored in files:
                destination.delete(stored.id)
        except LockedError:
            continue
        removed.append(backup_id)
    return removed
