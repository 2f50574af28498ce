"""The PITR repository on an object-lock bucket: what protects it, and a restore from the repository
as it was at a moment (``pitr_repo_as_of``), the way back after an attack with its credentials.

pgBackRest 2.45 knows nothing of versions or object lock, and needs not: on a bucket with
versioning on (object lock turns it on) a PUT over an existing key adds a version and a DELETE
without a version id only adds a delete marker. With a default retention every version it writes
stays undeletable until the retention ends. Whoever holds the repository's S3 keys (the database
server does, for ``archive_command``) can therefore hide base backups and WAL behind delete
markers and newer versions, but not destroy them within the lock period.

:func:`restore_repo_as_of` undoes the hiding: it lists the bucket's object *versions*
(ListObjectVersions), takes for each key of the repository (and of the key store) the newest
version written at or before the moment — a version or delete marker written after it is
ignored — streams those versions into a temporary posix repository (pgBackRest's own ciphertext:
nothing is decrypted on disk), and restores from it like a restore from Drive
(``pitr_drive_restore``). Versions from the moment's own second count as "before": S3 lists
modification times in seconds on some servers, so pick a moment at least a second before the
damage. Of a version and a delete marker with the same time, the version is taken (a file too
many is harmless to pgBackRest; a missing one is not).

Design and guarantees: docs/architecture/PITR.md §3.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from minio import Minio
from minio.error import S3Error
from urllib3.exceptions import HTTPError

from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity
from backup_pipeline.services.pitr_engine import EngineConfig, PitrEngineError
from backup_pipeline.services.pitr_keys import MAX_KEYSTORE_BYTES, PitrKeyError, keystore_key, unseal
from backup_pipeline.services.pitr_restore import (
    PitrRestoreFailed,
    PitrRestoreRefused,
    RestoreReport,
    RestoreRequest,
    check_location,
    check_not_future,
    check_request,
    parse_target,
    restore_to_moment,
    scratch_repository,
    scratch_repository_engine,
)

#: S3 error codes meaning "this bucket has no object lock configuration" (servers differ).
LOCK_NOT_CONFIGURED = frozenset(
    {
        "ObjectLockConfigurationNotFoundError",
        "ObjectLockConfigurationNotFound",
        "NoSuchObjectLockConfiguration",
    }
)
DAYS_PER_YEAR = 365


@dataclass(frozen=True)
class RepoProtection:
    """What the repository bucket itself says about versioning and object lock (read, never configured)."""

    bucket: str
    versioning: str | None  # "Enabled", "Suspended", "Off"; None: could not be read
    object_lock: bool | None  # None: could not be read
    default_mode: str | None  # GOVERNANCE / COMPLIANCE; None: no default retention
    default_days: int | None  # the default retention in days (years × 365)
    unknown_why: str | None = None

    @property
    def keeps_versions(self) -> bool:
        return self.versioning in ("Enabled", "Suspended") or bool(self.object_lock)

    def metadata(self) -> dict[str, Any]:
        lock = "unknown" if self.object_lock is None else ("enabled" if self.object_lock else "off")
        meta: dict[str, Any] = {
            "repo_versioning": self.versioning or "unknown",
            "repo_object_lock": lock,
            "repo_lock_default_mode": self.default_mode or "none",
            "repo_lock_default_days": self.default_days or 0,
        }
        if self.unknown_why:
            meta["repo_protection_unknown"] = self.unknown_why
        return meta

    def summary(self) -> str:
        if self.object_lock is None:
            return f"object lock of bucket {self.bucket}: unknown ({self.unknown_why})"
        if not self.object_lock:
            return (
                f"object lock: off on bucket {self.bucket} (versioning {self.versioning or 'unknown'}): whoever "
                "holds the repository's S3 keys can delete base backups and WAL for good"
            )
        default = (
            f"default retention {self.default_mode} {self.default_days} days"
            if self.default_mode
            else "NO default retention (versions pgBackRest writes are not locked)"
        )
        return f"object lock: enabled on bucket {self.bucket}; {default}"


def read_repo_protection(client: Minio, bucket: str) -> RepoProtection:
    """Versioning and object lock as the bucket answers (GET ?versioning, GET ?object-lock)."""
    why: list[str] = []
    versioning: str | None
    try:
        status = client.get_bucket_versioning(bucket).status
        versioning = status if status in ("Enabled", "Suspended") else "Off"
    except S3Error as exc:
        versioning = None
        why.append(f"versioning: S3 answered {exc.code}")
    except (HTTPError, OSError) as exc:
        versioning = None
        why.append(f"versioning: {type(exc).__name__}")
    lock: bool | None
    mode: str | None = None
    days: int | None = None
    try:
        config = client.get_object_lock_config(bucket)
    except S3Error as exc:
        if exc.code in LOCK_NOT_CONFIGURED:
            lock = False
        else:
            lock = None
            why.append(f"object lock: S3 answered {exc.code}")
    except (HTTPError, OSError) as exc:
        lock = None
        why.append(f"object lock: {type(exc).__name__}")
    except ValueError as exc:  # minio-py could not parse the answer
        lock = None
        why.append(f"object lock: unreadable answer ({exc})")
    else:
        lock = True
        mode = config.mode
        if config.duration is not None:
            years = (config.duration_unit or "").lower().startswith("year")
            days = config.duration * (DAYS_PER_YEAR if years else 1)
    return RepoProtection(bucket, versioning, lock, mode, days, "; ".join(why) or None)


def parse_as_of(text: str, field: str) -> datetime:
    """An ISO-8601 moment with a UTC offset, not in the future (``latest`` makes no sense here)."""
    if text.strip().lower() == "latest":
        raise ValueError(
            f"{field}: a moment of the repository is needed (ISO-8601 with a UTC offset, before the damage), "
            "not 'latest': without it the restore reads the repository as it is now"
        )
    moment = parse_target(text, field=field)
    assert moment is not None
    return moment


@dataclass(frozen=True)
class Picked:
    """The version of one key the repository had at the moment."""

    key: str
    version_id: str | None
    size: int
    last_modified: datetime


@dataclass
class _Best:
    entry: Picked
    delete_marker: bool


def pick_versions(entries: Iterable[Any], as_of: datetime) -> tuple[dict[str, Picked], datetime | None]:
    """For each key, its newest version written at or before ``as_of`` (None-free: keys whose newest
    entry then is a delete marker, or that did not exist yet, are left out). Returns the picks and the
    oldest modification time seen (any key, any kind), for the error when nothing qualifies.

    ``entries``: minio ``Object``s of a versions listing. minio-py lists a page's versions before its
    delete markers, so the order between a version and a marker comes from the times alone; among
    versions of one key with the same time the first listed (S3 lists newest first) wins.
    """
    best: dict[str, _Best] = {}
    oldest: datetime | None = None
    for obj in entries:
        modified = obj.last_modified
        key = obj.object_name or ""
        if modified is None or not key or key.endswith("/"):
            continue
        oldest = modified if oldest is None or modified < oldest else oldest
        if modified > as_of:
            continue
        marker = bool(obj.is_delete_marker)
        current = best.get(key)
        newer = current is None or modified > current.entry.last_modified
        tie_to_version = (
            current is not None
            and modified == current.entry.last_modified
            and current.delete_marker
            and not marker
        )
        if newer or tie_to_version:
            best[key] = _Best(Picked(key, obj.version_id, int(obj.size or 0), modified), marker)
    return {k: b.entry for k, b in best.items() if not b.delete_marker}, oldest


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _list_versions(client: Minio, bucket: str, prefix: str) -> list[Any]:
    try:
        return list(client.list_objects(bucket, prefix=prefix, recursive=True, include_version=True))
    except S3Error as exc:
        raise PitrRestoreFailed(
            f"listing the object versions of {bucket}/{prefix} failed (S3 answered {exc.code}): the "
            "credentials need s3:ListBucketVersions and s3:GetObjectVersion"
        ) from None


def _get(client: Minio, bucket: str, picked: Picked) -> Any:
    try:
        return client.get_object(bucket, picked.key, version_id=picked.version_id)
    except S3Error as exc:
        raise PitrRestoreFailed(
            f"reading {bucket}/{picked.key} version {picked.version_id} failed (S3 answered {exc.code}): the "
            "credentials need s3:GetObjectVersion, and the version must still exist"
        ) from None


def _read_version(client: Minio, bucket: str, picked: Picked, limit: int) -> bytes:
    response = _get(client, bucket, picked)
    try:
        data = response.read(limit + 1)
    finally:
        response.close()
        response.release_conn()
    if len(data) > limit:
        raise PitrKeyError(f"{picked.key} (version {picked.version_id}) is larger than a key store can be")
    return data


def _download(client: Minio, bucket: str, picked: Picked, path: Path) -> None:
    """One version, streamed to ``path`` (pgBackRest's ciphertext as stored); its size checked."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    response = _get(client, bucket, picked)
    written = 0
    try:
        with path.open("wb") as out:
            for chunk in response.stream(1 << 20):
                out.write(chunk)
                written += len(chunk)
    finally:
        response.close()
        response.release_conn()
    if written != picked.size:
        raise PitrRestoreFailed(
            f"{bucket}/{picked.key} version {picked.version_id}: read {written} bytes, the listing says "
            f"{picked.size}"
        )


def _relative(key: str, prefix: str) -> PurePosixPath:
    rel = PurePosixPath(key[len(prefix) :])
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise PitrRestoreFailed(f"refusing a repository key outside the repository: {key!r}")
    return rel


def restore_repo_as_of(
    client: Minio,
    cfg: EngineConfig,
    request: RestoreRequest,
    as_of: datetime,
    *,
    pg_bin: Path | None,
    keyring: OrgKeyring | None = None,
    recovery: RecoveryIdentity | None = None,
    scratch_root: Path | None = None,
    log: Callable[[str], None] = lambda _m: None,
    field: str = "--target-time",
    as_of_field: str = "--pitr-repo-as-of",
) -> RestoreReport:
    """Refuse (nothing touched) → the versions as of ``as_of`` → a temporary posix repository →
    restore, verify, report (as from S3) → the temporary repository removed."""
    bucket = cfg.repo.bucket
    check_not_future(as_of, as_of_field)
    if request.target is not None and request.target > as_of:
        raise PitrRestoreRefused(
            f"{field} {request.target.isoformat()} is after {as_of_field} {_iso(as_of)}: the repository as it "
            f"was then holds no WAL written after it. Choose a target before {_iso(as_of)}, or `latest` (the "
            "newest moment that repository reaches)"
        )
    check_location(request, live_data_dir=cfg.pg_data_dir, live_port=cfg.pg_port)
    protection = read_repo_protection(client, bucket)
    if protection.versioning in (None, "Off") and not protection.object_lock:
        state = "off" if protection.versioning == "Off" else f"unknown ({protection.unknown_why})"
        raise PitrRestoreRefused(
            f"{as_of_field} needs the repository bucket {bucket} to keep object versions, and its versioning "
            f"is {state}: the old versions it would read do not exist. Create the repository bucket with object "
            "lock (which turns versioning on) and a default retention, as DEPLOYMENT.md describes"
        )
    repo_prefix = cfg.repo.path.strip("/") + "/"
    stanza = cfg.stanza
    picks, oldest = pick_versions(_list_versions(client, bucket, repo_prefix), as_of)
    info_keys = [
        f"{repo_prefix}backup/{stanza}/backup.info",
        f"{repo_prefix}backup/{stanza}/backup.info.copy",
    ]
    if not any(k in picks for k in info_keys):
        since = f"the oldest version in it is from {_iso(oldest)}" if oldest else "it holds no version at all"
        raise PitrRestoreRefused(
            f"{as_of_field} {_iso(as_of)}: the repository {bucket}/{repo_prefix} had no backup.info of stanza "
            f"{stanza} at that moment ({since}): the stanza did not exist yet, the bucket kept no versions "
            "then (versioning was off), or those versions are gone (retention ended and a lifecycle rule "
            "removed them). Choose a later moment"
        )
    store_picks, _ = pick_versions(_list_versions(client, bucket, keystore_key(stanza)), as_of)
    store = store_picks.get(keystore_key(stanza))
    if store is None:
        raise PitrKeyError(
            f"no version of the PITR key store {bucket}/{keystore_key(stanza)} existed at {_iso(as_of)} "
            f"({as_of_field}): the repository passphrase cannot be opened"
        )
    passphrase = unseal(
        _read_version(client, bucket, store, MAX_KEYSTORE_BYTES), stanza, keyring=keyring, recovery=recovery
    )
    total = sum(p.size for p in picks.values())
    log(
        f"repository as of {_iso(as_of)}: {len(picks)} files, {total} bytes (bucket {bucket}, versioning "
        f"{protection.versioning or 'unknown'}); key store version of {_iso(store.last_modified)}"
    )
    with scratch_repository(scratch_root, "bp-pitr-as-of-") as scratch:
        for picked in sorted(picks.values(), key=lambda p: p.key):
            _download(client, bucket, picked, scratch / "repo" / _relative(picked.key, repo_prefix))
        engine, secrets = scratch_repository_engine(cfg, scratch, passphrase)
        try:
            info = engine.info()
        except PitrEngineError as exc:
            raise PitrRestoreFailed(
                f"the repository as of {_iso(as_of)} does not open: {exc}. Choose an earlier {as_of_field}"
            ) from None
        check_request(
            request, live_data_dir=cfg.pg_data_dir, live_port=cfg.pg_port, info=info, latest=None, field=field
        )
        report = restore_to_moment(engine, request, pg_bin=pg_bin, secrets_env=secrets.env(), log=log)
        report.repo_as_of = _iso(as_of)
        return report
