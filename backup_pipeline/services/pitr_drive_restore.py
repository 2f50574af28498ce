"""Restore to a moment from Google Drive alone: rebuild a pgBackRest repository, then restore.

For the machine that has only Drive and the recovery key (the S3 repository is gone). Order:

1. the Drive index (manifest files' properties) → the window and the chain of the base backup
   for the target (:func:`pitr_drive.base_chain`); refusals (target outside the window or in a
   gap — named with the window —, data directory, port) BEFORE anything is downloaded;
2. the base part (and the parts of the backups a diff/incr one references), then every bundle
   of the chain: each data part's size and SHA-256 checked against its manifest, its container
   authenticated chunk by chunk (recovery key or org key), its tar entries written into a posix
   repository in a new temporary folder (pgBackRest's own ciphertext: the repository cipher is
   never undone on disk);
3. the repository passphrase from the key store carried in the base part (recovery key);
4. ``pgbackrest restore --set=<base> --type=time`` from that posix repository and the same
   start/verify/restart/report as a restore from S3 (``pitr_restore.restore_to_moment``);
5. the temporary repository removed (success or failure).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path, PurePosixPath

from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity
from backup_pipeline.archive.streams import HashingCounter
from backup_pipeline.archive.tar_parts import read_bucket_archive
from backup_pipeline.destinations.base import Destination
from backup_pipeline.services.pitr_drive import (
    KEYSTORE_ENTRY,
    PROP_LABEL,
    PROP_STOP,
    PROP_WAL_START,
    PROP_WAL_STOP,
    REPO_PREFIX,
    Chain,
    DriveIndex,
    DriveUnit,
    DriveWindow,
    PitrDriveError,
    base_chain,
    crypto_backup_id,
    drive_window,
    read_index,
    read_manifest,
)
from backup_pipeline.services.pitr_engine import BaseBackup, EngineConfig, RepoInfo
from backup_pipeline.services.pitr_keys import unseal
from backup_pipeline.services.pitr_restore import (
    PitrRestoreRefused,
    RestoreReport,
    RestoreRequest,
    check_request,
    restore_to_moment,
    scratch_repository,
    scratch_repository_engine,
    window_text,
)


@dataclass(frozen=True)
class DrivePlan:
    window: DriveWindow
    chain: Chain


def _drive_info(stanza: str, index: DriveIndex) -> RepoInfo:
    """The Drive bases as a RepoInfo, so the S3 restore's refusals apply unchanged."""
    backups = tuple(
        BaseBackup(
            label=b.properties.get(PROP_LABEL, ""),
            type="full",
            started_at=b.stopped_at or datetime.min,
            stopped_at=b.stopped_at or datetime.min,
            wal_start=b.properties.get(PROP_WAL_START, ""),
            wal_stop=b.properties.get(PROP_WAL_STOP, ""),
            size_bytes=0,
            repo_bytes=0,
            error=False,
        )
        for b in index.bases
        if b.properties.get(PROP_STOP)
    )
    return RepoInfo(
        stanza, 0 if backups else 2, "ok" if backups else "no base backup on Drive", backups, None, None
    )


def plan_drive_restore(
    index: DriveIndex,
    request: RestoreRequest,
    *,
    stanza: str,
    live_data_dir: Path,
    live_port: int,
    field: str = "--target-time",
) -> DrivePlan:
    """The base backup and bundles for the target, or PitrRestoreRefused naming the window and gaps."""
    window = drive_window(index)
    gaps = f"; gaps in Drive's WAL chain: {'; '.join(window.gaps)}" if window.gaps else ""
    if window.earliest is None or window.latest is None:
        raise PitrRestoreRefused(
            f"Drive holds no base backup whose WAL is bundled on Drive for stanza {stanza}: nothing to "
            f"restore from ({window.base_backups} base backup(s), {window.bundles} bundle(s)){gaps}"
        )
    try:
        check_request(
            request,
            live_data_dir=live_data_dir,
            live_port=live_port,
            info=_drive_info(stanza, index),
            latest=window.latest,
            field=field,
        )
    except PitrRestoreRefused as exc:
        raise PitrRestoreRefused(f"{exc} (Drive's recoverable window){gaps}") from None
    for base in reversed(index.bases):  # newest first: the least WAL to replay
        stopped = base.stopped_at
        if stopped is None or (request.target is not None and request.target <= stopped):
            continue
        chain = base_chain(index, base)
        if chain.reach is not None and (request.target is None or request.target <= chain.reach):
            return DrivePlan(window, chain)
    target = request.target.isoformat() if request.target else "latest"
    raise PitrRestoreRefused(
        f"{field} {target} lies in a gap of Drive's WAL chain: no base backup on Drive reaches it. "
        f"Recoverable window {window_text(window.earliest, window.latest)}{gaps}"
    )


def _safe_rel(key: str) -> PurePosixPath:
    rel = PurePosixPath(key[len(REPO_PREFIX) :])
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise PitrDriveError(f"refusing a repository path outside the repository: {key!r}")
    return rel


def _extract(
    destination: Destination,
    index: DriveIndex,
    unit: DriveUnit,
    stanza: str,
    repo_dir: Path,
    *,
    keyring: OrgKeyring | None,
    recovery: RecoveryIdentity | None,
    only_prefix: str | None = None,
) -> bytes | None:
    """Write one unit's repository files into ``repo_dir``; returns the key store it carries."""
    manifest = read_manifest(destination, unit, stanza, keyring=keyring, recovery=recovery)
    stored = index.data_file(unit, manifest["data_file"])
    if stored.size != manifest["data_size"] or (stored.sha256 and stored.sha256 != manifest["data_sha256"]):
        raise PitrDriveError(f"{stored.name} on Drive does not match its manifest (size or SHA-256)")
    from backup_pipeline.archive.stream_crypto import decrypt_stream

    counter = HashingCounter()
    plain = decrypt_stream(
        counter.wrap(destination.get(stored.id)),
        expected_backup_id=crypto_backup_id(stanza),
        expected_part_name=unit.unit,
        org_keyring=keyring,
        recovery_identity=recovery,
    )
    keystore: bytes | None = None
    written = 0
    for entry in read_bucket_archive(plain):
        if entry.key == KEYSTORE_ENTRY:
            keystore = entry.fileobj.read()
            continue
        rel = _safe_rel(entry.key)
        if only_prefix is not None and not str(rel).startswith(only_prefix):
            continue
        path = repo_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with path.open("wb") as out:
            shutil.copyfileobj(entry.fileobj, out, 1 << 20)
        written += 1
    if counter.sha256_hex != manifest["data_sha256"]:
        raise PitrDriveError(f"{stored.name}: the bytes read do not match the manifest's SHA-256")
    if written == 0 and only_prefix is None:
        raise PitrDriveError(f"{unit.unit} holds no repository file")
    return keystore


def rebuild_repository(
    destination: Destination,
    index: DriveIndex,
    chain: Chain,
    stanza: str,
    repo_dir: Path,
    *,
    keyring: OrgKeyring | None,
    recovery: RecoveryIdentity | None,
    log: Callable[[str], None] = lambda _m: None,
) -> str:
    """The posix repository of one base backup and its WAL chain; returns the repository passphrase."""
    base = chain.base
    manifest = read_manifest(destination, base, stanza, keyring=keyring, recovery=recovery)
    by_label = {u.properties.get(PROP_LABEL): u for u in index.bases}
    for ref in manifest.get("references", []):
        if ref == base.properties.get(PROP_LABEL):
            continue
        if ref not in by_label:
            raise PitrDriveError(f"base backup {ref}, which {base.unit} takes files from, is not on Drive")
        log(f"extracting referenced base backup {ref}")
        _extract(
            destination,
            index,
            by_label[ref],
            stanza,
            repo_dir,
            keyring=keyring,
            recovery=recovery,
            only_prefix=f"backup/{stanza}/{ref}/",
        )
    log(f"extracting {base.unit}")
    keystore = _extract(destination, index, base, stanza, repo_dir, keyring=keyring, recovery=recovery)
    if keystore is None:
        raise PitrDriveError(f"{base.unit} carries no PITR key store")
    for bundle in chain.bundles:
        log(f"extracting {bundle.unit}")
        _extract(destination, index, bundle, stanza, repo_dir, keyring=keyring, recovery=recovery)
    return unseal(keystore, stanza, keyring=keyring, recovery=recovery)


def restore_from_drive(
    destination: Destination,
    *,
    installation_id: str,
    cfg: EngineConfig,
    request: RestoreRequest,
    pg_bin: Path | None,
    keyring: OrgKeyring | None = None,
    recovery: RecoveryIdentity | None = None,
    scratch_root: Path | None = None,
    log: Callable[[str], None] = lambda _m: None,
    field: str = "--target-time",
) -> RestoreReport:
    """Refuse (nothing downloaded) → rebuild the repository → restore → report → remove the repository."""
    index = read_index(destination, installation_id, cfg.stanza)
    plan = plan_drive_restore(
        index,
        request,
        stanza=cfg.stanza,
        live_data_dir=cfg.pg_data_dir,
        live_port=cfg.pg_port,
        field=field,
    )
    label = plan.chain.base.properties.get(PROP_LABEL)
    log(
        f"Drive's recoverable window {window_text(plan.window.earliest, plan.window.latest)}; base backup "  # type: ignore[arg-type]
        f"{label}, {len(plan.chain.bundles)} WAL bundle(s)"
    )
    with scratch_repository(scratch_root, "bp-pitr-drive-") as scratch:
        passphrase = rebuild_repository(
            destination,
            index,
            plan.chain,
            cfg.stanza,
            scratch / "repo",
            keyring=keyring,
            recovery=recovery,
            log=log,
        )
        engine, secrets = scratch_repository_engine(cfg, scratch, passphrase)
        return restore_to_moment(
            engine, replace(request, backup_set=label), pg_bin=pg_bin, secrets_env=secrets.env(), log=log
        )
