"""Copy complete backup sets from the primary destination to another one: parts, verify, manifest LAST.

Plain functions, no Dagster (``ops/copy.py`` wires them into ``copy_backup_job``). The bytes
copied are the parts' ciphertext, streamed from ``source.get`` into ``target.put``: no key is
needed, nothing is decrypted, nothing is written to local disk, memory stays at the
destinations' chunk sizes.

Write ordering on the target (MUST, the same rule as the backup's, docs/ARCHITECTURE.md
invariant 3):

1. Only a set *complete on the source* (its manifest present) is copied.
2. Every part other than the manifest is put on the target, each verified there: the size and
   SHA-256 the target confirmed for what was read (the contract of ``put``) MUST equal the
   source file's size and SHA-256 (hashed on the way when the source does not report one), and
   a ``stat`` on the target afterwards MUST report the same size (and SHA-256 when it keeps one).
3. Files of the set on the target that are not one of the source's parts (a crashed attempt's
   duplicate, a stale file) are deleted — a file the target keeps on purpose (``LockedError``)
   stays, as the backup's own stray removal does.
4. The manifest is put LAST and verified the same way. Until then the target holds no manifest,
   so restore, retention and the ledger see an incomplete set there, never a backup.

Idempotent and resumable: a part already on the target with the source's size and SHA-256 is
kept, not copied again, so a copy killed half-way (no manifest yet) is completed by the next
run, and a set complete on the target is left alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from ..destinations.base import Destination, DestinationError, LockedError, PermanentError, StoredFile
from .backup_parts import (
    PART_MANIFEST,
    PROP_APP,
    PROP_BACKUP_ID,
    PROP_FORMAT_VERSION,
    PROP_INSTALLATION,
    PROP_PART_KIND,
    PROP_PART_NAME,
    PROP_SET_KIND,
    part_file_name,
    set_properties,
)

#: The properties a part carries on every destination (``services/backup_parts.py``); a
#: destination's own bookkeeping never travels with a copy.
CONTRACT_PROPERTIES = (
    PROP_APP,
    PROP_INSTALLATION,
    PROP_BACKUP_ID,
    PROP_PART_NAME,
    PROP_PART_KIND,
    PROP_FORMAT_VERSION,
    PROP_SET_KIND,
)


class CopyError(PermanentError):
    """A set cannot be copied (not complete on the source, a copy that does not verify, a locked
    stale file in the way). The message names the set, the part and the destination."""


@dataclass(frozen=True)
class CopiedSet:
    """What one ``copy_set`` found and did; small, goes into the ledger event."""

    backup_id: str
    #: Complete on the target before this call: nothing was written.
    was_complete: bool
    copied: tuple[str, ...]  # part names written now (the manifest last)
    kept: tuple[str, ...]  # part names already on the target, verified
    removed: tuple[str, ...]  # stale files of the set deleted from the target
    files: int
    bytes: int
    #: Earliest end of retention of the set's files on the target (S3 object lock), None: not locked.
    locked_until: datetime | None = None

    @property
    def summary(self) -> str:
        if self.was_complete:
            return "already complete"
        return f"{len(self.copied)} file(s) copied, {len(self.kept)} already there"


@dataclass
class _Hashing:
    size: int = 0
    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)

    def wrap(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.size += len(chunk)
            self.sha256.update(chunk)
            yield chunk


def _part(stored: StoredFile) -> str:
    return stored.properties.get(PROP_PART_NAME, "")


def source_files(source: Destination, installation_id: str, backup_id: str) -> list[StoredFile]:
    """The files of a set complete on the source: its parts, then the manifest (the order they are copied in)."""
    files = list(source.list(set_properties(installation_id, backup_id)))
    manifests = [f for f in files if _part(f) == PART_MANIFEST]
    if not manifests:
        raise CopyError(
            f"backup set {backup_id} has no manifest on {source.description}: it is not a complete backup there, "
            "so it is not copied"
        )
    parts: dict[str, StoredFile] = {}
    for stored in files:
        if _part(stored) != PART_MANIFEST:
            # Two files of one part (a retried Drive upload): the newest is the one the backup verified.
            known = parts.get(_part(stored))
            if known is None or (stored.created or datetime.min) > (known.created or datetime.min):
                parts[_part(stored)] = stored
    return [*sorted(parts.values(), key=_part), manifests[0]]


def _sha256_of(destination: Destination, stored: StoredFile) -> str:
    """The SHA-256 a destination reports, or that of its bytes read back when it keeps none."""
    if stored.sha256:
        return stored.sha256
    hashing = _Hashing()
    for _ in hashing.wrap(iter(destination.get(stored.id))):
        pass
    return hashing.sha256.hexdigest()


def _matches(target: Destination, stored: StoredFile, size: int, sha256: str) -> bool:
    return stored.size == size and _sha256_of(target, stored) == sha256


def _transfer(
    source: Destination, target: Destination, installation_id: str, src: StoredFile, src_sha256: str | None
) -> StoredFile:
    """One file streamed from ``source`` to ``target`` and verified there (rule 2)."""
    part = _part(src)
    properties = {k: src.properties[k] for k in CONTRACT_PROPERTIES if k in src.properties}
    hashing = _Hashing()
    name = part_file_name(installation_id, src.properties[PROP_BACKUP_ID], part)
    stored = target.put(name, hashing.wrap(iter(source.get(src.id))), properties)
    read_sha256 = hashing.sha256.hexdigest()
    expected = src_sha256 or read_sha256
    problems = []
    if hashing.size != src.size or read_sha256 != expected:
        problems.append(
            f"read {hashing.size} bytes / sha256 {read_sha256} from {source.description}, which lists "
            f"{src.size} / {expected}"
        )
    if stored.size != src.size or (stored.sha256 is not None and stored.sha256 != expected):
        problems.append(f"{target.description} confirmed {stored.size} bytes / sha256 {stored.sha256}")
    else:
        again = target.stat(stored.id)
        if again.size != src.size or (again.sha256 is not None and again.sha256 != expected):
            problems.append(f"{target.description} now reports {again.size} bytes / sha256 {again.sha256}")
        stored = again
    if problems:
        raise CopyError(
            f"copy of part {part!r} of backup set {src.properties[PROP_BACKUP_ID]} does not verify "
            f"(expected {src.size} bytes / sha256 {expected}): " + "; ".join(problems)
        )
    return stored


def copy_set(
    source: Destination,
    target: Destination,
    installation_id: str,
    backup_id: str,
    *,
    on_file: Callable[[str, StoredFile], None] = lambda _part, _stored: None,
) -> CopiedSet:
    """Make ``target`` hold a complete, verified copy of the set (module docstring: the order).

    Raises ``CopyError`` or a ``DestinationError`` of either side; what was written stays (without
    a manifest it is no backup) and the next call continues from it.
    """
    files = source_files(source, installation_id, backup_id)
    on_target: dict[str, list[StoredFile]] = {}
    for stored in target.list(set_properties(installation_id, backup_id)):
        on_target.setdefault(_part(stored), []).append(stored)
    source_sha: dict[str, str | None] = {_part(f): f.sha256 for f in files}

    matches: dict[str, StoredFile | None] = {}

    def verified(src: StoredFile) -> StoredFile | None:
        """The target's file of this part with the source's size and SHA-256 (looked up once)."""
        part = _part(src)
        if part not in matches:
            expected = src.sha256 or _sha256_of(source, src)
            source_sha[part] = expected
            candidates = on_target.get(part, [])
            matches[part] = next((t for t in candidates if _matches(target, t, src.size, expected)), None)
        return matches[part]

    copied: list[str] = []
    kept: list[str] = []
    removed: list[str] = []
    final: list[StoredFile] = []
    manifest_there = bool(on_target.get(PART_MANIFEST))
    if manifest_there and all(verified(src) is not None for src in files):
        final = [verified(src) for src in files]  # type: ignore[misc]
        return _result(backup_id, True, copied, kept, removed, final)
    if manifest_there:
        # A manifest over parts that do not match is a damaged copy: withdraw it first (it is
        # rewritten last), so the target never claims a set it does not hold.
        for stale in on_target.pop(PART_MANIFEST):
            _delete(target, stale, backup_id)
            removed.append(PART_MANIFEST)
    for src in files[:-1]:
        match = verified(src)
        if match is not None:
            kept.append(_part(src))
            final.append(match)
            continue
        for stale in on_target.pop(_part(src), []):
            _delete(target, stale, backup_id)
            removed.append(_part(src))
        stored = _transfer(source, target, installation_id, src, source_sha[_part(src)])
        on_file(_part(src), stored)
        copied.append(_part(src))
        final.append(stored)
    keep_ids = {f.id for f in final}
    for part, strays in on_target.items():
        for stray in strays:
            if stray.id in keep_ids:
                continue
            try:
                target.delete(stray.id)
                removed.append(part)
            except LockedError:
                continue  # kept on purpose; the manifest names the parts, retention removes it later
    manifest = files[-1]
    stored = _transfer(source, target, installation_id, manifest, source_sha.get(PART_MANIFEST))
    on_file(PART_MANIFEST, stored)
    copied.append(PART_MANIFEST)
    final.append(stored)
    return _result(backup_id, False, copied, kept, removed, final)


def _delete(target: Destination, stale: StoredFile, backup_id: str) -> None:
    try:
        target.delete(stale.id)
    except LockedError as exc:
        raise CopyError(
            f"{target.description} keeps a file of part {_part(stale)!r} of backup set {backup_id} that does not "
            f"match the source ({exc}); it cannot be replaced until its lock ends"
        ) from None


def _result(
    backup_id: str,
    was_complete: bool,
    copied: list[str],
    kept: list[str],
    removed: list[str],
    final: list[StoredFile],
) -> CopiedSet:
    locks = [f.locked_until for f in final]
    return CopiedSet(
        backup_id=backup_id,
        was_complete=was_complete,
        copied=tuple(copied),
        kept=tuple(kept),
        removed=tuple(removed),
        files=len(final),
        bytes=sum(f.size for f in final),
        # The set is immutable only as long as every file of it is: the earliest end counts.
        locked_until=min(locks) if locks and all(lock is not None for lock in locks) else None,  # type: ignore[type-var]
    )


def copy_sets(
    source: Destination,
    target: Destination,
    installation_id: str,
    backup_ids: list[str],
    *,
    on_copied: Callable[[CopiedSet], None] = lambda _c: None,
    on_file: Callable[[str, StoredFile], None] = lambda _part, _stored: None,
) -> tuple[list[CopiedSet], dict[str, str]]:
    """``copy_set`` for each id (in the order given); a set that fails is reported in the second
    value (backup id → reason). A ``CopyError`` concerns one set and the others still proceed; any
    other destination failure (the target or the source unreachable, after the retry budget) ends
    the round: every set not done yet is reported with that reason rather than waiting out the
    retries once per set."""
    done: list[CopiedSet] = []
    failed: dict[str, str] = {}
    for index, backup_id in enumerate(backup_ids):
        try:
            result = copy_set(source, target, installation_id, backup_id, on_file=on_file)
        except CopyError as exc:
            failed[backup_id] = str(exc)
            continue
        except DestinationError as exc:
            for rest in backup_ids[index:]:
                failed[rest] = str(exc)
            break
        on_copied(result)
        done.append(result)
    return done, failed
