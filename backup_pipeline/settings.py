"""Operator settings: everything an administrator sets, validated once at load.

Settings come from environment variables prefixed ``BACKUP_PIPELINE_`` or from a
settings file (``BACKUP_PIPELINE_SETTINGS_FILE``, dotenv syntax). Secrets are *not*
fields here: only the names of the environment variables or files that hold them, so
a settings dump (``backup-pipeline settings``) can never print a secret.
"""

from __future__ import annotations

import os
import re
import zoneinfo
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from backup_pipeline import destination_settings as named
from backup_pipeline import shard_settings
from backup_pipeline.services.retention_rules import PERIODS, SETTING_NAMES, PeriodRules, rule_violations

ENV_PREFIX = "BACKUP_PIPELINE_"
SETTINGS_FILE_ENV = "BACKUP_PIPELINE_SETTINGS_FILE"

# Names of the environment variables that carry secrets. Resources read them through
# dagster.EnvVar so the UI shows only the variable name, never the value.
APP_DATABASE_PASSWORD_ENV = "BACKUP_PIPELINE_APP_DATABASE_PASSWORD"
S3_ACCESS_KEY_ENV = "BACKUP_PIPELINE_S3_ACCESS_KEY"
S3_SECRET_KEY_ENV = "BACKUP_PIPELINE_S3_SECRET_KEY"
# Credentials of the PITR repository's S3 bucket (a different bucket/endpoint than the app's S3).
PITR_S3_ACCESS_KEY_ENV = "BACKUP_PIPELINE_PITR_S3_ACCESS_KEY"
PITR_S3_SECRET_KEY_ENV = "BACKUP_PIPELINE_PITR_S3_SECRET_KEY"
# The S3 destination's key pair (when no credentials file is set): read when the destination
# first connects, never a setting.
S3_DESTINATION_ACCESS_KEY_ENV = "BACKUP_PIPELINE_S3_DESTINATION_ACCESS_KEY"
S3_DESTINATION_SECRET_KEY_ENV = "BACKUP_PIPELINE_S3_DESTINATION_SECRET_KEY"

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_CRON = re.compile(r"^([0-9*/,\-A-Za-z]+\s+){4}[0-9*/,\-A-Za-z]+$")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_STORAGE_CLASS = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
# Archive tiers answer a GET only after a restore request the product does not make.
_COLD_STORAGE_CLASSES = {"GLACIER", "DEEP_ARCHIVE"}


class DestinationKind(StrEnum):
    LOCAL = "local"
    GOOGLE_DRIVE = "google_drive"
    S3 = "s3"


class S3LockMode(StrEnum):
    GOVERNANCE = "governance"
    COMPLIANCE = "compliance"
    NONE = "none"


class DriveAuthMode(StrEnum):
    SHARED_DRIVE = "shared_drive"  # service account, member of a shared drive
    DELEGATION = "delegation"  # service account with domain-wide delegation (subject)
    OAUTH = "oauth"  # OAuth user refresh token


class ScheduleFrequency(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"


class Weekday(StrEnum):
    MONDAY = "monday"
    TUESDAY = "tuesday"
    WEDNESDAY = "wednesday"
    THURSDAY = "thursday"
    FRIDAY = "friday"
    SATURDAY = "saturday"
    SUNDAY = "sunday"


class ExecutorKind(StrEnum):
    IN_PROCESS = "in_process"
    MULTIPROCESS = "multiprocess"
    K8S = "k8s"
    CELERY = "celery"
    DOCKER = "docker"


#: Dagster's own default interval of a sensor (dagster.SensorDefinition, 30 s): the run-status
#: sensors keep it unless ``run_sensor_interval_seconds`` says otherwise.
DEFAULT_RUN_SENSOR_INTERVAL_SECONDS = 30
#: What one seeding run uploads at most (``seed_run_budget_bytes``): 50 GiB.
SEED_RUN_BUDGET_DEFAULT = 50 * 2**30


class BackupSettings(BaseSettings):
    """Everything an operator sets. Field descriptions double as the README's settings table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=None,
        extra="ignore",
        validate_default=True,
    )

    # --- identity -------------------------------------------------------------------
    installation_id: str = Field(
        "backup-pipeline",
        description="Short name of this installation; prefixes backup file names and is stored in Drive appProperties.",
    )
    state_dir: Path = Field(
        Path(".backup_pipeline_state"),
        description="Directory for local state: the key store (recovery public key, wrapped recovery secret), upload sessions, the audit log.",
    )

    # --- application database ---------------------------------------------------------
    app_database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/app",
        description=f"libpq URL of the application database, WITHOUT the password (set {APP_DATABASE_PASSWORD_ENV} or use ~/.pgpass).",
    )
    schema_version_query: str = Field(
        "SELECT max(version) FROM schema_migrations",
        description="Query returning the application's latest applied migration; stored in the manifest. Empty to skip. "
        "When the table (or column) it reads does not exist, the version is not recorded and the backup and "
        "`backup-pipeline check` warn naming this setting; any other error fails the backup.",
    )
    exclude_table_patterns: list[str] = Field(
        default_factory=lambda: ["public.sessions", "public.*_cache"],
        description="pg_dump --exclude-table-data patterns: runtime data not worth restoring (sessions, caches). The tables' schema is still dumped.",
    )
    pg_bin_dir: Path | None = Field(
        None,
        description="Directory with pg_dump/pg_restore; default: found on PATH (newest of /usr/lib/postgresql/*/bin).",
    )

    # --- object storage (MinIO / S3) --------------------------------------------------
    s3_endpoint: str = Field(
        "http://127.0.0.1:9000", description="S3/MinIO endpoint URL (http:// or https://)."
    )
    s3_region: str = Field("us-east-1", description="S3 region sent in signatures.")
    buckets_include: list[str] = Field(
        default_factory=list,
        description="Buckets to back up; empty means every bucket the credentials can list.",
    )
    buckets_exclude: list[str] = Field(default_factory=list, description="Buckets never backed up.")
    s3_read_ahead: int = Field(
        8,
        ge=1,
        le=15,
        description="GETs of small objects (up to 2 MiB) in flight at once per bucket export; 1 reads one object at a time.",
    )
    s3_tag_reading: Literal["when_counted", "always"] = Field(
        "when_counted",
        description="`when_counted`: read an object's tags only when its GET reports some (x-amz-tagging-count: AWS S3, MinIO, Ceph RGW); `always`: one tagging request per object, for servers without that header.",
    )
    primary_bucket: str = Field(
        "media", description="Bucket that holds application media (migration target)."
    )

    # --- destination ------------------------------------------------------------------
    destination: DestinationKind = Field(
        DestinationKind.LOCAL,
        description="Where backups go: `google_drive` (off-site), `s3` (an S3-compatible bucket, off-site, immutable with object lock) or `local` (a folder, e.g. a NAS mount; NOT off-site).",
    )
    local_destination_path: Path = Field(
        Path(".backup_pipeline_state/backups"), description="Folder for the `local` destination."
    )
    drive_auth_mode: DriveAuthMode = Field(
        DriveAuthMode.SHARED_DRIVE, description="Google Workspace setup: shared_drive, delegation or oauth."
    )
    drive_credentials_file: Path | None = Field(
        None,
        description="Service-account JSON key (shared_drive/delegation) or OAuth authorized-user JSON (oauth). A file path, never the content.",
    )
    drive_shared_drive_id: str | None = Field(None, description="Shared drive id (shared_drive mode).")
    drive_subject: str | None = Field(
        None, description="User to impersonate (delegation mode), e.g. backup@example.com."
    )
    drive_folder_id: str | None = Field(
        None,
        description="Existing folder id for backups; empty: a folder named after the installation is created.",
    )
    drive_scope: str = Field(
        "https://www.googleapis.com/auth/drive.file", description="OAuth scope requested."
    )
    drive_api_root: str = Field(
        "https://www.googleapis.com/",
        description="Drive API root URL (point at the Drive test server in tests).",
    )
    drive_token_uri: str | None = Field(None, description="Override of the OAuth token endpoint (tests).")
    drive_daily_upload_cap_bytes: int = Field(
        750 * 10**9, ge=0, description="Google's per-user daily upload cap."
    )
    drive_daily_download_threshold_bytes: int = Field(
        10**12,
        ge=0,
        description="Downloads per day above which a Cloud project's Drive access is throttled or billed: "
        "a restore reading more is warned about (never refused).",
    )
    s3_destination_endpoint: str | None = Field(
        None,
        description="`s3` destination: endpoint URL, e.g. https://s3.eu-central-1.amazonaws.com or https://s3.eu-central-003.backblazeb2.com. Not the application's S3.",
    )
    s3_destination_bucket: str | None = Field(
        None,
        description="`s3` destination: an existing bucket (create it with object lock enabled for immutable backups).",
    )
    s3_destination_prefix: str = Field(
        "",
        description="`s3` destination: key prefix inside the bucket, e.g. `backups/` (empty: the bucket root).",
    )
    s3_destination_region: str = Field(
        "us-east-1", description="`s3` destination: region sent in signatures."
    )
    s3_destination_credentials_file: Path | None = Field(
        None,
        description=f"`s3` destination: AWS credentials file ([default] aws_access_key_id / aws_secret_access_key). Empty: {S3_DESTINATION_ACCESS_KEY_ENV} and {S3_DESTINATION_SECRET_KEY_ENV}.",
    )
    s3_destination_storage_class: str | None = Field(
        None,
        description="`s3` destination: x-amz-storage-class of every part, e.g. STANDARD_IA or GLACIER_IR; empty: the bucket's default. GLACIER and DEEP_ARCHIVE are refused (not readable without a thaw request).",
    )
    s3_destination_part_size_mib: int = Field(
        16,
        ge=5,
        le=512,
        description="`s3` destination: multipart part size in MiB (one part is held in memory; 16 MiB parts cover parts up to 156 GiB).",
    )
    s3_destination_lock_mode: S3LockMode = Field(
        S3LockMode.GOVERNANCE,
        description="`s3` destination, bucket with object lock: retention written on every part, `governance` (early delete only with s3:BypassGovernanceRetention), `compliance` (nobody can delete early) or `none`.",
    )
    s3_destination_lock_days: int | None = Field(
        None,
        ge=1,
        le=36500,
        description="`s3` destination: retention of each part in days; empty: ceil(retention_keep_last × schedule interval in hours / 24) + s3_destination_lock_margin_days.",
    )
    s3_destination_lock_margin_days: int = Field(
        2,
        ge=0,
        le=365,
        description="`s3` destination: days added to the computed retention (a late or failed backup keeps a set longer than planned).",
    )
    destinations: list[str] = Field(
        default_factory=list,
        description="Several destinations: their names, e.g. `drive,s3lock,nas`; each is set by "
        "BACKUP_PIPELINE_DESTINATION_<NAME>_<FIELD> (KIND, PATH, DRIVE_*, S3_*, OFFSITE, KEEP_LAST; "
        "docs/guides/SEVERAL-DESTINATIONS.md). The backup writes the primary; copy_backup_job copies each "
        "complete set to the others. Empty: the one destination of BACKUP_PIPELINE_DESTINATION.",
    )
    primary_destination: str | None = Field(
        None, description="Which of `destinations` the backup writes; empty: the first."
    )
    copy_policy: str = Field(
        "",
        description="3-2-1 policy of the backup_3_2_1 check on the newest set: `copies=<n>,kinds=<n>,"
        "offsite=<n>,immutable=<n>` (e.g. `copies=3,kinds=2,offsite=1,immutable=1`); empty: one copy.",
    )
    copy_policy_severity: Literal["warn", "error"] = Field(
        "warn", description="Severity of a failing backup_3_2_1 check (and of its alert)."
    )
    destination_retry_attempts: int = Field(
        8,
        ge=1,
        le=20,
        description="Attempts of each destination request that failed transiently (Google Drive or S3 "
        "destination: 5xx, throttling, connection errors), the first included; 1 = no retry.",
    )
    destination_retry_max_wait_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Longest wait between two attempts: exponential back-off with full jitter from 1 s, "
        "or the server's Retry-After, capped here. The defaults ride out a few minutes of outage.",
    )

    # --- archive ------------------------------------------------------------------------
    org_secret_file: Path | None = Field(
        None,
        description="File holding the org secret(s) (`<key id>:<base64 32 bytes>` per line, newest last). Required to back up.",
    )
    compression_level: int = Field(
        1, ge=0, le=9, description="gzip level for compressible objects (media is stored)."
    )
    incremental_objects: bool = Field(
        False,
        description="Incremental object backups: each set writes an inventory per bucket and uploads only "
        "objects new or changed since the last set of that bucket (docs/architecture/BACKUP-STRATEGY.md, "
        "Incremental object backups).",
    )
    full_every: int = Field(
        7,
        ge=1,
        le=1000,
        description="With incremental_objects: every Nth backup of a bucket is a full one (1 = always full).",
    )
    incremental_min_live_share: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="With incremental_objects: take a full when the share of bytes still used in the older parts "
        "a set references falls below this.",
    )
    seed_margin_share: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="With incremental_objects on Google Drive: a backup larger than what is left of the daily "
        "upload cap seeds over several runs, keeping this share of the cap unused (framing, ledger lag).",
    )
    seed_run_budget_bytes: int = Field(
        SEED_RUN_BUDGET_DEFAULT,
        ge=2**20,
        description="With incremental_objects on Google Drive: at most this many bytes of objects per seeding run "
        "(below what is left of the daily cap), so a seeding run killed midway loses at most this much; the "
        "continue_seed sensor starts the next run while the 24-hour window has room. At least 1 MiB; "
        "default 50 GiB.",
    )
    seed_abandon_days: int = Field(
        14,
        ge=1,
        description="A seed (a first full spread over days) without progress for this many days is abandoned: "
        "retention reports it and deletes its files.",
    )
    shard_max_objects: int = shard_settings.MAX_OBJECTS_FIELD
    shard_max_bytes: int = shard_settings.MAX_BYTES_FIELD

    # --- schedule & retention ---------------------------------------------------------
    schedule_enabled: bool = Field(
        True, description="Whether the backup schedule starts enabled (the UI toggle wins once used)."
    )
    schedule_frequency: ScheduleFrequency = Field(ScheduleFrequency.DAILY, description="daily or weekly.")
    schedule_day: Weekday = Field(Weekday.SUNDAY, description="Day of the week for weekly backups.")
    schedule_time: str = Field("02:30", description="Local time of day, HH:MM (24 h).")
    schedule_timezone: str = Field("UTC", description="IANA time zone of schedule_time, e.g. Europe/Berlin.")
    retention_keep_daily: int = Field(
        0,
        ge=0,
        le=1000,
        description="Grandfather-father-son: also keep the newest set of each of the last N days that have one "
        "(days in schedule_timezone); 0 = rule off. See docs/architecture/BACKUP-STRATEGY.md, Retention rules.",
    )
    retention_keep_weekly: int = Field(
        0,
        ge=0,
        le=1000,
        description="Also keep the newest set of each of the last N ISO weeks (Monday-Sunday, in schedule_timezone) that have one; 0 = off.",
    )
    retention_keep_monthly: int = Field(
        0,
        ge=0,
        le=1000,
        description="Also keep the newest set of each of the last N calendar months that have one; 0 = off.",
    )
    retention_keep_yearly: int = Field(
        0,
        ge=0,
        le=1000,
        description="Also keep the newest set of each of the last N calendar years that have one; 0 = off.",
    )
    retention_keep_last: int = Field(
        7,
        ge=0,
        le=1000,
        description="The newest N complete backup sets are kept; older ones are deleted unless a daily/weekly/"
        "monthly/yearly rule keeps them. 0 only with one of those rules set.",
    )
    incomplete_grace_hours: int = Field(
        24, ge=1, description="Incomplete sets (no manifest) older than this are removed by retention."
    )
    min_manual_backup_interval_minutes: int = Field(
        10, ge=0, description="A manual backup this soon after the last one is refused unless forced."
    )
    run_sensor_interval_seconds: int = Field(
        DEFAULT_RUN_SENSOR_INTERVAL_SECONDS,
        ge=5,
        le=3600,
        description="Seconds between two evaluations of each sensor that reacts to finished runs "
        "(retention, copies and verification after a backup, failure alerts, heartbeats): the longest wait "
        "between a run's end and what follows it. 30 is Dagster's default; its daemon cannot go below 5.",
    )

    # --- execution ----------------------------------------------------------------------
    executor: ExecutorKind = Field(
        ExecutorKind.MULTIPROCESS, description="Dagster executor for the jobs (multiprocess uses both cores)."
    )
    max_concurrent_exports: int = Field(
        4,
        ge=1,
        le=64,
        description="Steps (database dump, bucket exports) running at once within a run; they mostly wait on S3 and the destination, so more than the core count pays.",
    )

    # --- alerts -------------------------------------------------------------------------
    alert_smtp_host: str | None = Field(
        None, description="SMTP server for alert e-mail; empty disables e-mail."
    )
    alert_smtp_port: int = Field(25, ge=1, le=65535, description="SMTP port.")
    alert_email_from: str = Field("backup-pipeline@localhost", description="Sender address of alerts.")
    alert_email_to: list[str] = Field(default_factory=list, description="Recipients of alerts.")
    alert_webhook_url: str | None = Field(None, description="URL receiving JSON alerts (HMAC-SHA256 signed).")
    alert_webhook_secret_file: Path | None = Field(None, description="File with the webhook HMAC key.")
    alert_apprise_urls_file: Path | None = Field(
        None,
        description="File with Apprise URLs, one per line (Slack, Teams, Discord, Telegram, ntfy, Matrix, ...: https://github.com/caronc/apprise/wiki). They embed tokens, so they are never settings; BACKUP_PIPELINE_ALERT_APPRISE_URLS in the environment (whitespace-separated) works too.",
    )
    alert_failures_only: bool = Field(
        True,
        description="Alert channels get failures only (failed runs, stale backups, failed verifications); false: each successful backup and verification is announced too.",
    )

    # --- heartbeat (dead-man's switch) -----------------------------------------------------
    heartbeat_url_file: Path | None = Field(
        None,
        description="File holding the URL pinged after every backup and verification (success or failure), so an external monitor alerts when pings stop. It embeds a token, so it is never a setting; BACKUP_PIPELINE_HEARTBEAT_URL in the environment works too.",
    )
    heartbeat_kind: Literal["healthchecks", "uptime_kuma"] = Field(
        "healthchecks",
        description="`healthchecks`: POST <url> on success, <url>/fail on failure, body = status (Healthchecks.io); `uptime_kuma`: GET <url>?status=up|down&msg=<status> (Uptime Kuma push monitor).",
    )

    # --- point-in-time recovery (opt-in profile, docs/architecture/PITR.md) ------------------
    pitr_enabled: bool = Field(
        False,
        description="Load the PITR profile: WAL archive monitoring, scheduled pgBackRest base backups, restore to a moment. Off: nothing of it loads.",
    )
    pitr_stanza: str = Field("app", description="pgBackRest stanza name of the application's cluster.")
    pitr_repo_s3_endpoint: str = Field(
        "https://127.0.0.1:9443",
        description="https:// URL of the S3 server holding the WAL archive and base backups (pgBackRest speaks HTTPS only). Not the application's S3.",
    )
    pitr_repo_s3_bucket: str = Field("pitr", description="Bucket of the PITR repository.")
    pitr_repo_s3_region: str = Field("us-east-1", description="S3 region of the PITR repository.")
    pitr_repo_path: str = Field(
        "/pgbackrest", description="Path of the pgBackRest repository inside the bucket."
    )
    pitr_repo_ca_file: Path | None = Field(
        None, description="CA certificate (PEM) of the PITR S3 server, for a self-signed or private CA."
    )
    pitr_pg_data_dir: Path = Field(
        Path("/var/lib/postgresql/15/main"),
        description="Data directory of the application's PostgreSQL server (pgBackRest reads it for base backups).",
    )
    pitr_pg_socket_dir: Path = Field(
        Path("/var/run/postgresql"),
        description="Unix socket directory of the application's server (pgBackRest connects only over the socket).",
    )
    pitr_pg_port: int = Field(5432, ge=1, le=65535, description="Port of the application's server.")
    pitr_pg_user: str = Field(
        "bp_pitr",
        description="Least-privilege role for base backups and monitoring (docs/guides/DEPLOYMENT.md).",
    )
    pitr_os_user: str | None = Field(
        None,
        description="OS user owning the data directory; when the pipeline runs as root, pgbackrest and pg_ctl run as this user (runuser).",
    )
    pitr_config_dir: Path = Field(
        Path(".backup_pipeline_state/pitr"),
        description="Folder of the pipeline's own pgBackRest config (no secrets), spool, lock and log files, and restore scratch.",
    )
    pitr_base_backup_cron: str = Field(
        "30 1 * * *", description="Cron expression (in schedule_timezone) of the pgBackRest base backups."
    )
    pitr_base_backup_type: Literal["full", "diff", "incr"] = Field(
        "full",
        description="Type of the scheduled base backup (pgBackRest makes a full one when none exists).",
    )
    pitr_archive_lag_alert_seconds: int = Field(
        300, ge=30, description="Alert when WAL written this long ago is still not archived."
    )
    pitr_wal_dir_alert_mb: int = Field(
        2048,
        ge=16,
        description="Alert when the server's pg_wal holds more than this (archive outage fills the disk).",
    )
    pitr_drive_copy_enabled: bool = Field(
        False,
        description="PITR on Google Drive: pitr_drive_copy_job copies each new base backup and a bundle of the WAL archived since the last bundle (one Drive file per bundle) to the Drive destination, on pitr_drive_copy_cron. Needs pitr_enabled and a google_drive destination.",
    )
    pitr_drive_copy_cron: str = Field(
        "*/30 * * * *",
        description="Cron expression (in schedule_timezone) of pitr_drive_copy_job: how often a WAL bundle goes to Drive (Drive's RPO).",
    )
    pitr_drive_destination: str | None = Field(
        None,
        description="With several destinations: the name of the google_drive destination PITR copies go to; empty: the first google_drive destination (the primary when it is one).",
    )
    pitr_drive_lag_alert_seconds: int = Field(
        7200,
        ge=60,
        description="Alert when Drive's newest restorable moment is this far behind the S3 repository's (newest archived WAL).",
    )

    _named: list[named.NamedDestination] | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings() reads the environment and the settings file itself (comma-separated
        # lists, one error naming every field); pydantic-settings' own env parsing would expect
        # JSON for list fields and fail before our validators run.
        return (init_settings,)

    @field_validator("retention_keep_last")
    @classmethod
    def _check_keep_last(cls, value: int, info: ValidationInfo) -> int:
        # The period counts are declared (so validated) before this field: all zero is checked
        # here, beside the other field errors, not in a model validator that runs only without them.
        counts = [info.data.get(f"retention_keep_{rule}", 0) for rule in PERIODS]
        periods = PeriodRules(*counts)
        problems = [
            text for key, text in rule_violations(value, periods, SETTING_NAMES) if key == "keep_last"
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("schedule_time")
    @classmethod
    def _check_time(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError(f"must be HH:MM in 24-hour time (00:00-23:59), got {value!r}")
        return value

    @field_validator("schedule_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"must be an IANA time zone such as UTC or Europe/Berlin, got {value!r}"
            ) from exc
        return value

    @field_validator("app_database_url")
    @classmethod
    def _check_db_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL, e.g. postgresql://user@host:5432/dbname")
        if parts.password:
            raise ValueError(f"must not contain a password; set {APP_DATABASE_PASSWORD_ENV} instead")
        if not parts.path.strip("/"):
            raise ValueError("must name a database, e.g. postgresql://user@host:5432/dbname")
        return value

    @field_validator("pitr_repo_s3_endpoint")
    @classmethod
    def _check_https_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(
                f"must be an https:// URL with a host (pgBackRest's S3 driver speaks HTTPS only), got {value!r}"
            )
        return value

    @field_validator("pitr_stanza")
    @classmethod
    def _check_stanza(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,39}", value):
            raise ValueError("must be 1-40 characters of letters, digits, '_' or '-'")
        return value

    @field_validator("pitr_base_backup_cron")
    @classmethod
    def _check_cron(cls, value: str) -> str:
        # Shape only (no Dagster in this module); build_pitr_schedule re-checks with Dagster's parser.
        if not _CRON.match(value.strip()):
            raise ValueError(f"must be a 5-field cron expression such as '30 1 * * *', got {value!r}")
        return value

    @field_validator("pitr_repo_s3_bucket")
    @classmethod
    def _check_pitr_bucket(cls, value: str) -> str:
        if not _BUCKET_NAME.match(value):
            raise ValueError(f"not a valid S3 bucket name: {value!r}")
        return value

    @field_validator("s3_endpoint", "drive_api_root", "s3_destination_endpoint")
    @classmethod
    def _check_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
        return value

    @field_validator("buckets_include", "buckets_exclude")
    @classmethod
    def _check_buckets(cls, value: list[str]) -> list[str]:
        bad = [b for b in value if not _BUCKET_NAME.match(b)]
        if bad:
            raise ValueError(f"not valid S3 bucket names: {', '.join(bad)}")
        return value

    @field_validator("s3_destination_bucket")
    @classmethod
    def _check_destination_bucket(cls, value: str | None) -> str | None:
        if value is not None and not _BUCKET_NAME.match(value):
            raise ValueError(f"not a valid S3 bucket name: {value!r} (3-63 of a-z, 0-9, '.', '-')")
        return value

    @field_validator("s3_destination_prefix")
    @classmethod
    def _check_destination_prefix(cls, value: str) -> str:
        if not value:
            return value
        segments = value.removesuffix("/").split("/")
        if value.startswith("/") or any(seg in ("", ".", "..") for seg in segments) or "\\" in value:
            raise ValueError(
                f"must be '/'-separated segments without a leading '/', empty, '.' or '..' segments, got {value!r}"
            )
        if len(value.encode()) > 200:
            raise ValueError("must be at most 200 bytes")
        return value if value.endswith("/") else value + "/"

    @field_validator("s3_destination_storage_class")
    @classmethod
    def _check_storage_class(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not _STORAGE_CLASS.match(value):
            raise ValueError(f"must be an S3 storage class in capitals such as STANDARD_IA, got {value!r}")
        if value in _COLD_STORAGE_CLASSES:
            raise ValueError(
                f"{value} objects cannot be read until restored from the archive tier, which the product does "
                "not request; use GLACIER_IR or STANDARD_IA"
            )
        return value

    @field_validator("installation_id")
    @classmethod
    def _check_installation(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,39}", value):
            raise ValueError("must be 1-40 characters of letters, digits, '.', '_' or '-'")
        return value

    @field_validator("copy_policy")
    @classmethod
    def _check_copy_policy(cls, value: str) -> str:
        named.parse_copy_policy(value)
        return value.strip()

    @model_validator(mode="after")
    def _check_pitr_drive(self) -> BackupSettings:
        if not self.pitr_drive_copy_enabled:
            return self
        problems = []
        if not self.pitr_enabled:
            problems.append(
                "pitr_drive_copy_enabled needs pitr_enabled=true (the copy reads the PITR repository)"
            )
        if not _CRON.match(self.pitr_drive_copy_cron.strip()):
            problems.append(
                f"pitr_drive_copy_cron: must be a 5-field cron expression such as '*/30 * * * *', got "
                f"{self.pitr_drive_copy_cron!r}"
            )
        if self.pitr_drive_destination and self.pitr_drive_destination not in self.destinations:
            problems.append(
                f"pitr_drive_destination: {self.pitr_drive_destination!r} is not one of destinations "
                f"({', '.join(self.destinations) or 'none set'})"
            )
        if not self.destinations and self.destination is not DestinationKind.GOOGLE_DRIVE:
            problems.append(
                "pitr_drive_copy_enabled needs a google_drive destination: destination=google_drive, or one "
                "of several destinations (destinations) of kind google_drive"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _check_destination_names(self) -> BackupSettings:
        problems = named.check_names(self.destinations, self.primary_destination)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _check_shards(self) -> BackupSettings:
        shard_settings.check_shards_with_incremental(self.incremental_objects, self.model_fields_set)
        return self

    @model_validator(mode="after")
    def _check_incremental_destinations(self) -> BackupSettings:
        # A copy carries a set's own files only; an incremental set copied alone would lack the
        # older parts it references (docs/architecture/BACKUP-STRATEGY.md, Incremental object backups).
        if self.incremental_objects and len(self.destinations) > 1:
            raise ValueError(
                "BACKUP_PIPELINE_INCREMENTAL_OBJECTS: not supported with several destinations "
                "(BACKUP_PIPELINE_DESTINATIONS) yet; turn one of them off"
            )
        return self

    @model_validator(mode="after")
    def _check_destination(self) -> BackupSettings:
        if self.destination is DestinationKind.GOOGLE_DRIVE:
            missing = []
            if self.drive_credentials_file is None:
                missing.append("drive_credentials_file")
            if self.drive_auth_mode is DriveAuthMode.SHARED_DRIVE and not self.drive_shared_drive_id:
                missing.append("drive_shared_drive_id")
            if self.drive_auth_mode is DriveAuthMode.DELEGATION and not self.drive_subject:
                missing.append("drive_subject")
            if missing:
                raise ValueError(
                    f"destination=google_drive with drive_auth_mode={self.drive_auth_mode.value} needs "
                    + ", ".join(f"{ENV_PREFIX}{m.upper()}" for m in missing)
                )
        if self.destination is DestinationKind.S3:
            missing = [
                f for f in ("s3_destination_endpoint", "s3_destination_bucket") if not getattr(self, f)
            ]
            if missing:
                raise ValueError(
                    "destination=s3 needs " + ", ".join(f"{ENV_PREFIX}{m.upper()}" for m in missing)
                )
            credentials = self.s3_destination_credentials_file
            if credentials is not None and not credentials.is_file():
                raise ValueError(
                    f"{ENV_PREFIX}S3_DESTINATION_CREDENTIALS_FILE: file not found: {credentials}"
                )
        return self

    # --- derived values -----------------------------------------------------------------
    @property
    def app_database_name(self) -> str:
        return urlsplit(self.app_database_url).path.strip("/")

    def app_database_url_for(self, dbname: str) -> str:
        parts = urlsplit(self.app_database_url)
        return urlunsplit(parts._replace(path="/" + dbname))

    @property
    def cron_schedule(self) -> str:
        hour, minute = (int(x) for x in self.schedule_time.split(":"))
        if self.schedule_frequency is ScheduleFrequency.WEEKLY:
            dow = list(Weekday).index(self.schedule_day) + 1  # cron: 0/7=Sunday, 1=Monday
            return f"{minute} {hour} * * {dow % 7}"
        return f"{minute} {hour} * * *"

    @property
    def retention_periods(self) -> PeriodRules:
        """The grandfather-father-son counts, in the schedule's time zone."""
        return PeriodRules(
            daily=self.retention_keep_daily,
            weekly=self.retention_keep_weekly,
            monthly=self.retention_keep_monthly,
            yearly=self.retention_keep_yearly,
            timezone=self.schedule_timezone,
        )

    @property
    def schedule_interval_hours(self) -> int:
        return 24 * 7 if self.schedule_frequency is ScheduleFrequency.WEEKLY else 24

    @property
    def drive_configured(self) -> bool:
        return self.destination is DestinationKind.GOOGLE_DRIVE

    @property
    def off_site_destination(self) -> bool:
        """Whether backups leave this host's disks (Drive, S3); a local folder does not."""
        return self.destination is not DestinationKind.LOCAL

    @property
    def s3_destination_retention_days(self) -> int:
        """Retention written on each S3 part: the setting, or when keep-last-N would delete it + margin."""
        if self.s3_destination_lock_days is not None:
            return self.s3_destination_lock_days
        from backup_pipeline.destinations.s3.config import lock_days_for

        # keep_last 0 (period rules only): a lock of one interval + margin; a lock shorter than what
        # the period rules keep is harmless, it only stops deleting early.
        return lock_days_for(
            max(self.retention_keep_last, 1),
            self.schedule_interval_hours,
            self.s3_destination_lock_margin_days,
        )

    def named_destinations(self) -> list[named.NamedDestination]:
        """Every destination, the primary first: the named ones (``destinations``) or the one of
        ``destination``, named after its kind."""
        if not self.destinations:
            return [named.single(self)]
        if self._named is None:  # built in code rather than by load_settings: the environment's fields
            found, problems = named.build_named(
                self, named.options_from_env(self.destinations, dict(os.environ))
            )
            if problems:
                raise SettingsError(problems)
            self._named = found
        return sorted(self._named, key=lambda d: not d.primary)

    @property
    def primary(self) -> named.NamedDestination:
        return self.named_destinations()[0]

    @property
    def copy_targets(self) -> list[named.NamedDestination]:
        """The destinations copy_backup_job fills (all but the primary)."""
        return self.named_destinations()[1:]

    @property
    def parsed_copy_policy(self) -> named.CopyPolicy:
        return named.parse_copy_policy(self.copy_policy)

    def redacted(self) -> dict[str, Any]:
        """Effective settings for display. No field holds a secret; paths to secret files are shown as paths."""
        shown = self.model_dump(mode="json")
        if self.destinations:
            shown["named_destinations"] = {
                d.name: {
                    "kind": d.kind,
                    "primary": d.primary,
                    "offsite": d.offsite,
                    "keep_last": d.keep_last,
                    **{
                        suffix.lower(): d.settings.model_dump(mode="json")[field]
                        for suffix, field in named.FIELDS.items()
                        if suffix != "KIND"
                    },
                }
                for d in self.named_destinations()
            }
        return shown


class SettingsError(Exception):
    """Settings failed validation; ``str(err)`` names every bad field and its rule."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid backup_pipeline settings:\n" + "\n".join(f"  - {p}" for p in problems))


def _format_validation_error(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        field = f"{ENV_PREFIX}{loc.upper()}" if loc else "settings"
        msg = err["msg"].removeprefix("Value error, ")
        if not loc and msg.startswith(ENV_PREFIX):  # a model rule that names its variables itself
            problems.extend(msg.splitlines())
            continue
        problems.append(f"{field}: {msg}")
    return problems


def load_settings(
    env: dict[str, str] | None = None, settings_file: str | os.PathLike[str] | None = None
) -> BackupSettings:
    """Load and validate settings from the environment (or ``env``) and an optional dotenv file.

    Raises SettingsError naming every bad field, so a code location fails to load with
    a message an operator can act on.
    """
    source = dict(os.environ if env is None else env)
    file = settings_file or source.get(SETTINGS_FILE_ENV)
    values: dict[str, str] = {}
    if file:
        path = Path(file)
        if not path.is_file():
            raise SettingsError([f"{SETTINGS_FILE_ENV}: file not found: {path}"])
        from dotenv import dotenv_values

        values.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    values.update(source)
    kwargs: dict[str, Any] = {}
    for name in BackupSettings.model_fields:
        key = f"{ENV_PREFIX}{name.upper()}"
        if key in values:
            raw = values[key]
            annotation = str(BackupSettings.model_fields[name].annotation)
            kwargs[name] = _split_list(raw) if annotation.startswith("list") else raw
    try:
        settings = BackupSettings.model_validate(kwargs)
    except ValidationError as exc:
        raise SettingsError(_format_validation_error(exc)) from None
    if not settings.destinations:
        return settings
    found, problems = named.build_named(settings, named.options_from_env(settings.destinations, values))
    if problems:
        raise SettingsError(problems)
    # The primary's fields become the top-level destination fields, so everything that knows one
    # destination (backup_job, restore_job, retention_job, the checks) works on the primary unchanged.
    primary = next(d for d in found if d.primary)
    settings = settings.model_copy(
        update={field: getattr(primary.settings, field) for field in named.FIELDS.values()}
    )
    settings._named = found
    return settings


def _split_list(raw: str) -> list[str]:
    raw = raw.strip()
    if raw.startswith("["):
        import json

        return list(json.loads(raw))
    return [item.strip() for item in raw.split(",") if item.strip()]
