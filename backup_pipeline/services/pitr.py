"""Point-in-time recovery (opt-in profile): what the ops and the CLI call. No Dagster here.

Modules: ``pitr_engine`` (pgBackRest CLI), ``pitr_keys`` (repository passphrase and its key
store), ``pitr_status`` (archiver health read from the server), ``pitr_restore`` (restore to a
moment). This module assembles them from settings and holds the base-backup procedure and the
recoverable window. Design and engine comparison: docs/architecture/PITR.md.

Base backup order (MUST): key store ensured (written, read back, opened) → ``stanza-create``
(idempotent) → ``backup`` → ``expire`` (the product's retention count of full backups; pgBackRest
expires WAL older than the oldest kept backup, never WAL a kept backup needs) → ``info`` and an
archive listing for the window and its gaps. A failed step fails the run; pgBackRest itself only
records a backup in its manifest once every file is in the repository.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from minio import Minio

from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity, RecoveryPublicKey
from backup_pipeline.services.errors import first_line
from backup_pipeline.services.pitr_engine import (
    EngineConfig,
    PgBackRest,
    PitrEngineError,
    PitrSecrets,
    RepoInfo,
    RepoLocation,
    missing_segments,
    render_config,
)
from backup_pipeline.services.pitr_keys import (
    PitrKeyError,
    ensure_keystore,
    load_passphrase,
    repo_client,
    write_private_file,
)
from backup_pipeline.services.pitr_restore import (
    RestoreReport,
    RestoreRequest,
    check_request,
    restore_to_moment,
)
from backup_pipeline.services.pitr_status import ArchiverStatus
from backup_pipeline.settings import PITR_S3_ACCESS_KEY_ENV, PITR_S3_SECRET_KEY_ENV, BackupSettings

#: Appended to a failure to open the repository: the way back when it was damaged or tampered with.
AS_OF_HINT = (
    "If the repository was damaged or tampered with (e.g. with its leaked S3 keys) and its bucket keeps "
    "object versions (object lock), restore from the repository as it was before: {field} <a moment before "
    "the damage> (BACKUP-RESTORE-GUIDE.md, PITR)"
)


class PitrSetupError(RuntimeError):
    """PITR cannot run with these settings or secrets; the message names what to set."""


def repo_location(settings: BackupSettings) -> RepoLocation:
    return RepoLocation(
        endpoint=settings.pitr_repo_s3_endpoint,
        bucket=settings.pitr_repo_s3_bucket,
        region=settings.pitr_repo_s3_region,
        path=settings.pitr_repo_path,
        ca_file=settings.pitr_repo_ca_file,
    )


def engine_config(settings: BackupSettings) -> EngineConfig:
    return EngineConfig(
        stanza=settings.pitr_stanza,
        repo=repo_location(settings),
        pg_data_dir=settings.pitr_pg_data_dir,
        pg_socket_dir=settings.pitr_pg_socket_dir,
        pg_port=settings.pitr_pg_port,
        pg_user=settings.pitr_pg_user,
        work_dir=settings.pitr_config_dir.absolute(),
        retention_full=max(settings.retention_keep_last, 1),  # pgBackRest needs at least 1
        os_user=settings.pitr_os_user,
    )


def repo_keys(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    source = os.environ if env is None else env
    access, secret = source.get(PITR_S3_ACCESS_KEY_ENV), source.get(PITR_S3_SECRET_KEY_ENV)
    missing = [
        name
        for name, value in ((PITR_S3_ACCESS_KEY_ENV, access), (PITR_S3_SECRET_KEY_ENV, secret))
        if not value
    ]
    if missing:
        raise PitrSetupError(f"{' and '.join(missing)} must be set: the PITR repository bucket's S3 keys")
    assert access and secret
    return access, secret


@dataclass
class PitrContext:
    """An engine ready to run (config written, secrets in hand) and the repository's S3 client."""

    engine: PgBackRest
    client: Minio
    secrets: PitrSecrets

    def secrets_env(self) -> dict[str, str]:
        return self.secrets.env()


def open_repo(
    settings: BackupSettings,
    *,
    keyring: OrgKeyring | None = None,
    recovery: RecoveryIdentity | None = None,
    recovery_keys: Sequence[RecoveryPublicKey] = (),
    create_keystore: bool = False,
    env: Mapping[str, str] | None = None,
    cfg: EngineConfig | None = None,
) -> PitrContext:
    """Everything to run pgbackrest: the passphrase from the key store (created when asked and absent)."""
    cfg = cfg or engine_config(settings)
    access, secret = repo_keys(env)
    client = repo_client(cfg.repo, access, secret)
    if create_keystore:
        if keyring is None:
            raise PitrSetupError(
                "setting up the PITR repository needs the org secret (BACKUP_PIPELINE_ORG_SECRET_FILE)"
            )
        passphrase = ensure_keystore(client, cfg.repo, cfg.stanza, keyring, recovery_keys)
    else:
        passphrase = load_passphrase(client, cfg.repo, cfg.stanza, keyring=keyring, recovery=recovery)
    secrets = PitrSecrets(access, secret, passphrase)
    engine = PgBackRest(cfg, secrets)
    engine.write_config()
    return PitrContext(engine, client, secrets)


def archive_segments(client: Minio, cfg: EngineConfig) -> list[str]:
    """Names of the WAL segments in the repository (pgBackRest keeps one object per segment)."""
    prefix = f"{cfg.repo.path.strip('/')}/archive/{cfg.stanza}/"
    names: list[str] = []
    for obj in client.list_objects(cfg.repo.bucket, prefix=prefix, recursive=True):
        leaf = (obj.object_name or "").rsplit("/", 1)[-1]
        if len(leaf) > 24 and leaf[24] == "-" and all(c in "0123456789ABCDEF" for c in leaf[:24]):
            names.append(leaf[:24])
    return sorted(set(names))


@dataclass(frozen=True)
class Window:
    """The recoverable window as the repository and the server see it."""

    earliest: datetime | None  # end of the oldest kept base backup
    latest: datetime | None  # the newest segment's arrival in the repository
    base_backups: int
    newest_backup: str | None
    first_segment: str | None
    last_segment: str | None
    missing: tuple[str, ...]

    def metadata(self) -> dict[str, Any]:
        return {
            "earliest_restorable": _iso(self.earliest),
            "latest_restorable": _iso(self.latest),
            "window_hours": round((self.latest - self.earliest).total_seconds() / 3600, 2)
            if self.earliest and self.latest and self.latest > self.earliest
            else 0.0,
            "base_backups": self.base_backups,
            "newest_base_backup": self.newest_backup or "none",
            "wal_first_needed": self.first_segment or "none",
            "wal_last_archived": self.last_segment or "none",
            "wal_missing_segments": len(self.missing),
            "wal_missing_examples": ", ".join(self.missing[:5]) or "none",
        }


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds") if value else "none"


def recoverable_window(info: RepoInfo, segments: Sequence[str], status: ArchiverStatus | None) -> Window:
    usable = info.usable_backups
    first = usable[0].wal_start if usable else None
    last = info.archive_max
    missing = tuple(missing_segments(segments, first, last)) if first and last and last >= first else ()
    latest = status.last_archived_time if status and status.last_archived_time else None
    if latest is None and usable:
        latest = usable[-1].stopped_at
    return Window(
        earliest=info.earliest_restorable,
        latest=latest,
        base_backups=len(usable),
        newest_backup=usable[-1].label if usable else None,
        first_segment=first,
        last_segment=last,
        missing=missing,
    )


def run_base_backup(ctx: PitrContext, backup_type: str) -> RepoInfo:
    """stanza-create (idempotent) → backup → expire → info. Raises PitrEngineError on any failure."""
    ctx.engine.stanza_create()
    ctx.engine.backup(backup_type)
    ctx.engine.expire()
    return ctx.engine.info()


def write_server_config(ctx: PitrContext, folder: Path) -> Path:
    """The application server's pgbackrest config (WITH the secrets, 0600) and its spool/lock/log folders.

    Run where the server runs, as its OS user; ``archive_command`` then is
    :func:`~backup_pipeline.services.pitr_engine.archive_command` of ``folder``.
    """
    cfg = ctx.engine.cfg
    text = render_config(
        cfg, ctx.secrets, spool_path=folder / "spool", lock_path=folder / "lock", log_path=folder / "log"
    )
    path = folder / "pgbackrest.conf"
    write_private_file(path, text)
    for sub in ("spool", "lock", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    user = ctx.engine.run_as_user()
    if user is not None:
        for item in (folder, path, *(folder / s for s in ("spool", "lock", "log"))):
            shutil.chown(item, user)
    return path


def server_status(settings: BackupSettings) -> ArchiverStatus:
    """The application server's archiver status over its Unix socket, as the PITR role (pg_monitor)."""
    import psycopg

    from backup_pipeline.services.pitr_status import read_archiver_status

    with psycopg.connect(
        host=str(settings.pitr_pg_socket_dir),
        port=settings.pitr_pg_port,
        dbname="postgres",
        user=settings.pitr_pg_user,
        connect_timeout=10,
    ) as conn:
        return read_archiver_status(conn)


def restore_database_to_moment(
    settings: BackupSettings,
    request: RestoreRequest,
    *,
    keyring: OrgKeyring | None = None,
    recovery: RecoveryIdentity | None = None,
    log: Callable[[str], None] = lambda _m: None,
    actor: str | None = None,
    field: str = "target",
    repo_as_of: datetime | None = None,
    as_of_field: str = "pitr_repo_as_of",
) -> RestoreReport:
    """The PITR restore for the jobs and the CLI: open the repository (org secret or recovery key),
    refuse what is unsafe (nothing touched), restore, verify, report. ``field`` names the target
    in refusals (``target_time``, ``--target-time``).

    ``repo_as_of``: restore from the repository as it was at that moment (its bucket's object
    versions, ``services/pitr_lock.py``), for a repository damaged or tampered with since; the key
    store is read as of that moment too. ``as_of_field`` names it in refusals."""
    if repo_as_of is not None:
        from backup_pipeline.services.pitr_lock import restore_repo_as_of

        cfg = engine_config(settings)
        access, secret = repo_keys()
        report = restore_repo_as_of(
            repo_client(cfg.repo, access, secret),
            cfg,
            request,
            repo_as_of,
            pg_bin=settings.pg_bin_dir,
            keyring=keyring,
            recovery=recovery,
            scratch_root=settings.pitr_config_dir.absolute() / "as-of-restore",
            log=log,
            field=field,
            as_of_field=as_of_field,
        )
        record_restore(settings, report, actor)
        return report
    try:
        ctx = open_repo(settings, keyring=keyring, recovery=recovery)
        info = ctx.engine.info()
    except (PitrKeyError, PitrEngineError) as exc:
        raise type(exc)(f"{exc}. {AS_OF_HINT.format(field=as_of_field)}") from None
    if not info.usable_backups and info.status_code not in (0, 2):  # 2: no backup yet, a normal state
        # pgbackrest info reports an unreadable backup.info in the stanza's status, exit code 0
        raise PitrEngineError(
            f"the repository of stanza {info.stanza} does not open (pgbackrest info: {info.status_message}). "
            + AS_OF_HINT.format(field=as_of_field)
        )
    check_request(
        request,
        live_data_dir=settings.pitr_pg_data_dir,
        live_port=settings.pitr_pg_port,
        info=info,
        latest=_latest_restorable(settings, log) if request.target is not None else None,
        field=field,
    )
    report = restore_to_moment(
        ctx.engine, request, pg_bin=settings.pg_bin_dir, secrets_env=ctx.secrets_env(), log=log
    )
    record_restore(settings, report, actor)
    return report


def _latest_restorable(settings: BackupSettings, log: Callable[[str], None]) -> datetime | None:
    """The newest archived segment's arrival, or None when the live server does not answer (the
    disaster the restore is for): then only PostgreSQL's own check at the end of replay remains."""
    try:
        return server_status(settings).last_archived_time
    except Exception as exc:  # psycopg's errors of every kind: the restore goes on without the bound
        log(f"latest restorable moment unknown (live server not readable: {first_line(exc)})")
        return None


def record_restore(settings: BackupSettings, report: RestoreReport, actor: str | None) -> None:
    """The audit trail records PITR restores like the other restores; an unwritable state dir (a
    fresh disaster-recovery machine) must not fail a restore that already succeeded."""
    from backup_pipeline.audit import audit_log

    keep = ("target", "reached", "backup_set", "data_dir", "port", "repo_as_of")
    details = {
        k: v for k, v in report.as_dict().items() if k in keep and (v is not None or k != "repo_as_of")
    }
    try:
        audit_log(settings).append("pitr_restore", details, actor=actor)
    except OSError as exc:
        logging.getLogger(__name__).warning(f"audit trail not written ({exc.strerror}): {settings.state_dir}")
