"""pgBackRest, the PITR engine, driven through its CLI (JSON output where it has one).

Why pgBackRest and not a WAL archiver of our own: docs/architecture/PITR.md.

Secrets never go on a command line or into the pipeline's own config file: the S3 keys and the
repository cipher passphrase reach pgbackrest as ``PGBACKREST_REPO1_*`` environment variables of
the child process (pgbackrest also redacts them in its own logs). The config file the application
server's ``archive_command`` reads *does* hold them (pgBackRest's standard set-up, file 0600 owned
by the server's OS user): :func:`render_config` with ``secrets``.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PGBACKREST = "pgbackrest"
#: pgBackRest's only repository cipher; the passphrase is the product's (services/pitr_keys.py).
CIPHER_TYPE = "aes-256-cbc"
#: The 16 MiB default; segment arithmetic below assumes it (initdb --wal-segsize changes it).
WAL_SEGMENT_BYTES = 16 * 1024 * 1024
SEGMENTS_PER_XLOGID = 0x1_0000_0000 // WAL_SEGMENT_BYTES


class PitrEngineError(RuntimeError):
    """A pgbackrest command failed; the message holds its ERROR lines (secrets are redacted by pgbackrest)."""


@dataclass(frozen=True)
class PitrSecrets:
    """S3 keys of the repository bucket and the repository cipher passphrase."""

    s3_access_key: str = field(repr=False)
    s3_secret_key: str = field(repr=False)
    cipher_pass: str = field(repr=False)

    def env(self) -> dict[str, str]:
        values = {
            "PGBACKREST_REPO1_S3_KEY": self.s3_access_key,
            "PGBACKREST_REPO1_S3_KEY_SECRET": self.s3_secret_key,
            "PGBACKREST_REPO1_CIPHER_PASS": self.cipher_pass,
        }
        # A posix repository (rebuilt from Drive) has no S3 keys: pgbackrest rejects S3 options there.
        return {k: v for k, v in values.items() if v}


@dataclass(frozen=True)
class RepoLocation:
    """Where the repository lives: an S3 bucket reached over HTTPS."""

    endpoint: str  # https://host[:port]
    bucket: str
    region: str
    path: str = "/pgbackrest"
    ca_file: Path | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.endpoint).port or 443


@dataclass(frozen=True)
class EngineConfig:
    """Everything pgbackrest needs besides the secrets."""

    stanza: str
    repo: RepoLocation
    pg_data_dir: Path
    pg_socket_dir: Path
    pg_port: int
    pg_user: str
    work_dir: Path  # the pipeline's config, spool, lock and log folders
    retention_full: int
    os_user: str | None = None  # run pgbackrest as this user when we are root
    pgbackrest: str = PGBACKREST
    archive_async: bool = True
    #: how long archive-push waits for the async process before it reports failure to PostgreSQL
    archive_push_timeout_seconds: int = 60
    #: pgbackrest processes for the restore's copy of the base backup and for archive-get's async
    #: prefetch during replay (fetch + decrypt + decompress several segments at once). 2: this is
    #: a restore-side setting and PostgreSQL's startup process replays on one core meanwhile.
    restore_process_max: int = 2
    #: how much WAL archive-get's async process fetches ahead of replay into the spool folder
    #: (pgBackRest's default, 8 segments). A larger queue was tried (1 GiB): the prefetcher then
    #: keeps fetching past the target after promotion and races the next restore's clean-up of
    #: the shared spool; see stop_wal_prefetch.
    archive_get_queue_max_mib: int = 128
    #: A repository in a local folder instead of the S3 bucket: the one a Drive restore rebuilds
    #: (services/pitr_drive_restore.py). None: the S3 repository of ``repo``.
    posix_repo_path: Path | None = None

    @property
    def config_dir(self) -> Path:
        return self.work_dir / "conf"

    @property
    def config_file(self) -> Path:
        return self.config_dir / "pgbackrest.conf"

    def for_cluster(self, *, data_dir: Path, socket_dir: Path, port: int) -> EngineConfig:
        return replace(self, pg_data_dir=data_dir, pg_socket_dir=socket_dir, pg_port=port)


def render_config(
    cfg: EngineConfig,
    secrets: PitrSecrets | None = None,
    *,
    spool_path: Path | None = None,
    lock_path: Path | None = None,
    log_path: Path | None = None,
) -> str:
    """pgbackrest.conf text. ``secrets`` only for the application server's copy (archive_command)."""
    lines = [
        "# Written by backup-pipeline (docs/guides/DEPLOYMENT.md, PITR). "
        + ("Holds secrets: keep it 0600." if secrets else "No secrets: they come from the environment."),
        "[global]",
        *(
            ["repo1-type=posix", f"repo1-path={cfg.posix_repo_path}"]
            if cfg.posix_repo_path is not None
            else [
                "repo1-type=s3",
                f"repo1-s3-endpoint={cfg.repo.host}",
                f"repo1-storage-port={cfg.repo.port}",
                f"repo1-s3-bucket={cfg.repo.bucket}",
                f"repo1-s3-region={cfg.repo.region}",
                "repo1-s3-uri-style=path",
                f"repo1-path={cfg.repo.path}",
            ]
        ),
        f"repo1-cipher-type={CIPHER_TYPE}",
        f"repo1-retention-full={cfg.retention_full}",
        "start-fast=y",
        f"archive-async={'y' if cfg.archive_async else 'n'}",
        f"archive-timeout={cfg.archive_push_timeout_seconds}",
        f"spool-path={spool_path or cfg.work_dir / 'spool'}",
        f"lock-path={lock_path or cfg.work_dir / 'lock'}",
        f"log-path={log_path or cfg.work_dir / 'log'}",
        "log-level-file=info",
    ]
    if cfg.repo.ca_file is not None and cfg.posix_repo_path is None:
        lines.append(f"repo1-storage-ca-file={cfg.repo.ca_file}")
    if secrets is not None:
        lines += [
            f"repo1-s3-key={secrets.s3_access_key}",
            f"repo1-s3-key-secret={secrets.s3_secret_key}",
            f"repo1-cipher-pass={secrets.cipher_pass}",
        ]
    lines += [
        "",
        f"[{cfg.stanza}]",
        f"pg1-path={cfg.pg_data_dir}",
        f"pg1-port={cfg.pg_port}",
        f"pg1-socket-path={cfg.pg_socket_dir}",
        f"pg1-user={cfg.pg_user}",
        "pg1-database=postgres",
        "",
        # Restore-side only: the application server's archive-push keeps pgBackRest's defaults.
        "[global:restore]",
        f"process-max={cfg.restore_process_max}",
        "",
        # archive-async (above) also makes archive-get (the restored server's restore_command)
        # prefetch segments in the background, so fetching overlaps replay.
        "[global:archive-get]",
        f"process-max={cfg.restore_process_max}",
        f"archive-get-queue-max={cfg.archive_get_queue_max_mib * 1024 * 1024}",
        "",
    ]
    return "\n".join(lines)


def archive_command(config_dir: Path, stanza: str) -> str:
    """The ``archive_command`` line for postgresql.conf."""
    return f"pgbackrest --config-path={config_dir} --stanza={stanza} archive-push %p"


# --- info -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseBackup:
    label: str
    type: str
    started_at: datetime
    stopped_at: datetime
    wal_start: str
    wal_stop: str
    size_bytes: int
    repo_bytes: int
    error: bool
    #: labels of the older backups a diff/incr backup takes unchanged files from
    references: tuple[str, ...] = ()


@dataclass(frozen=True)
class RepoInfo:
    stanza: str
    status_code: int
    status_message: str
    backups: tuple[BaseBackup, ...]  # oldest first
    archive_min: str | None
    archive_max: str | None

    @property
    def usable_backups(self) -> tuple[BaseBackup, ...]:
        return tuple(b for b in self.backups if not b.error)

    @property
    def earliest_restorable(self) -> datetime | None:
        """One second after the end of the oldest usable base backup.

        pgBackRest picks the backup set whose stop time, in whole seconds, is strictly before the
        target (``[075] unable to find backup set with stop time less than …`` otherwise): a
        target within the stop's own second cannot be restored.
        """
        usable = self.usable_backups
        return usable[0].stopped_at + timedelta(seconds=1) if usable else None


def _ts(value: Any) -> datetime:
    return datetime.fromtimestamp(int(value), UTC)


def parse_info(text: str, stanza: str) -> RepoInfo:
    """``pgbackrest info --output=json`` for one stanza."""
    entries = json.loads(text)
    entry = next((e for e in entries if e.get("name") == stanza), None)
    if entry is None:
        return RepoInfo(stanza, -1, "stanza not in the repository", (), None, None)
    backups = tuple(
        BaseBackup(
            label=b["label"],
            type=b["type"],
            started_at=_ts(b["timestamp"]["start"]),
            stopped_at=_ts(b["timestamp"]["stop"]),
            wal_start=b["archive"]["start"],
            wal_stop=b["archive"]["stop"],
            size_bytes=int(b["info"]["size"]),
            repo_bytes=int(b["info"]["repository"]["size"]),
            error=bool(b.get("error", False)),
            references=tuple(b.get("reference") or ()),
        )
        for b in entry.get("backup", [])
    )
    archives = entry.get("archive", [])
    current = archives[-1] if archives else {}
    message = str(entry["status"]["message"])
    # the stanza's status says only "other"; each repository's status carries the error itself
    details = [
        f"repo{r.get('key', '?')}: {r['status'].get('message')}"
        for r in entry.get("repo", [])
        if isinstance(r.get("status"), dict) and r["status"].get("code") not in (0, None)
    ]
    return RepoInfo(
        stanza=stanza,
        status_code=int(entry["status"]["code"]),
        status_message="; ".join([message, *details]),
        backups=backups,
        archive_min=current.get("min"),
        archive_max=current.get("max"),
    )


# --- WAL segment names ----------------------------------------------------------------------


def segment_number(name: str) -> tuple[int, int]:
    """(timeline, absolute segment number) of a 24-hex-digit WAL segment name."""
    if len(name) != 24:
        raise ValueError(f"not a WAL segment name: {name!r}")
    timeline, log, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:], 16)
    return timeline, log * SEGMENTS_PER_XLOGID + seg


def segment_name(timeline: int, number: int) -> str:
    log, seg = divmod(number, SEGMENTS_PER_XLOGID)
    return f"{timeline:08X}{log:08X}{seg:08X}"


def missing_segments(names: Sequence[str], first: str, last: str) -> list[str]:
    """Segments between ``first`` and ``last`` (inclusive, same timeline) absent from ``names``."""
    timeline, start = segment_number(first)
    _, stop = segment_number(last)
    have = {segment_number(n)[1] for n in names if segment_number(n)[0] == timeline}
    return [segment_name(timeline, n) for n in range(start, stop + 1) if n not in have]


# --- running pgbackrest ---------------------------------------------------------------------


def _error_lines(stderr: str, stdout: str) -> str:
    lines = [ln.strip() for ln in (stderr + "\n" + stdout).splitlines() if "ERROR" in ln or "WARN" in ln]
    return "; ".join(lines[-5:]) or (stderr.strip() or stdout.strip())[-2000:] or "no output"


class PgBackRest:
    """One stanza's pgbackrest commands with the pipeline's config file and secrets from the environment."""

    def __init__(self, cfg: EngineConfig, secrets: PitrSecrets) -> None:
        self.cfg = cfg
        self._secrets = secrets

    def write_config(self) -> Path:
        """The pipeline's config (no secrets) and the spool/lock/log folders, owned by the run-as user."""
        for sub in ("conf", "spool", "lock", "log"):
            (self.cfg.work_dir / sub).mkdir(parents=True, exist_ok=True)
        self.cfg.config_file.write_text(render_config(self.cfg))
        self._give_to_os_user(
            self.cfg.work_dir, *(self.cfg.work_dir / s for s in ("conf", "spool", "lock", "log"))
        )
        self._give_to_os_user(self.cfg.config_file)
        return self.cfg.config_file

    def _give_to_os_user(self, *paths: Path) -> None:
        user = self.run_as_user()
        if user is not None:
            for path in paths:
                shutil.chown(path, user)

    def run_as_user(self) -> str | None:
        """The user to switch to (only when we are root and another user owns the cluster)."""
        user = self.cfg.os_user
        if user is None or os.geteuid() != 0 or user == getpass.getuser():
            return None
        return user

    def argv(self, command: str, *options: str) -> list[str]:
        # --config-path (not --config): also moves the include folder away from /etc/pgbackrest/conf.d.
        base = [self.cfg.pgbackrest, f"--config-path={self.cfg.config_dir}", f"--stanza={self.cfg.stanza}"]
        argv = [*base, *options, command]
        user = self.run_as_user()
        # runuser keeps the environment (no -l), so the PGBACKREST_* secrets reach the child.
        return ["runuser", "-u", user, "--", *argv] if user else argv

    def run(self, command: str, *options: str, timeout: float | None = None) -> str:
        env = {**os.environ, **self._secrets.env()}
        try:
            proc = subprocess.run(
                self.argv(command, *options),
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except FileNotFoundError as exc:
            raise PitrEngineError(
                f"pgbackrest not found ({exc.filename}): install the Debian package 'pgbackrest'"
            ) from None
        except subprocess.TimeoutExpired:
            raise PitrEngineError(f"pgbackrest {command} did not finish within {timeout:.0f} s") from None
        if proc.returncode != 0:
            raise PitrEngineError(
                f"pgbackrest {command} failed (exit {proc.returncode}): {_error_lines(proc.stderr, proc.stdout)}"
            )
        return proc.stdout

    # The commands the pipeline uses; each is idempotent or safe to retry.

    def stanza_create(self) -> None:
        self.run("stanza-create")

    def check(self) -> None:
        """pgbackrest check: connects, forces a WAL switch and waits for that segment in the repository."""
        self.run("check")

    def backup(self, backup_type: str) -> None:
        self.run("backup", f"--type={backup_type}")

    def expire(self) -> None:
        self.run("expire")

    def info(self) -> RepoInfo:
        return parse_info(self.run("info", "--output=json"), self.cfg.stanza)

    def verify(self) -> str:
        """pgbackrest verify (checksums of every backup file and WAL segment); returns its text report."""
        return self.run("verify", "--output=text")

    def stop_wal_prefetch(self) -> list[int]:
        """SIGTERM this config's ``archive-get:async`` processes; returns their PIDs.

        The restored server started them through ``restore_command`` with the repository secrets in
        their environment; once recovery ended nothing reads what they fetch, and a running one
        makes the next restore fail while it cleans the spool (``unable to remove file …tmp``).
        """
        marker = f"--config-path={self.cfg.config_dir}"
        found: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            words = [a.decode(errors="replace") for a in argv]
            if "archive-get:async" in words and marker in words:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(entry.name), signal.SIGTERM)
                    found.append(int(entry.name))
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in found) and time.monotonic() < deadline:
            time.sleep(0.1)
        return found

    def restore(self, data_dir: Path, target: datetime | None, backup_set: str | None = None) -> str:
        """Restore into ``data_dir`` (empty or absent; pgBackRest picks the base backup before ``target``).

        ``target`` None: replay to the end of the archive. Archiving is off in the copy, so it never
        pushes WAL into this stanza. Returns pgbackrest's info-level output (names the backup set).
        """
        options = [f"--pg1-path={data_dir}", "--archive-mode=off", "--log-level-console=info"]
        if backup_set is not None:  # a rebuilt repository holds only this set's files (and its references)
            options.append(f"--set={backup_set}")
        if target is None:
            options.append("--type=default")
        else:
            options += [
                "--type=time",
                f"--target={target.astimezone(UTC).isoformat(sep=' ')}",
                "--target-action=promote",
            ]
        return self.run("restore", *options)
