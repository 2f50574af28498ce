"""Google Drive → MinIO migration of the application's media assets (plain functions, no Dagster).

Every ``media_assets`` row whose provider is Google Drive is copied into MinIO, verified and
switched, one asset at a time, with its progress in the ``storage_migration`` table
(``backup_pipeline/sql/storage_migration.sql``). The write ordering is what makes a crash at
any instant harmless (docs/S3-STORAGE-IMPLEMENTATION.md states it as MUST rules):

1. the status row with the asset's fixed target key is committed (``pending``) before any
   upload, so the only object a crash can leave behind is at that key, and the next run
   overwrites or adopts it — never a second copy;
2. the Drive download is streamed into a MinIO upload (multipart above one part) while
   MD5, SHA-256 and size are computed; a multipart upload only becomes an object when it
   completes, so a killed upload leaves no object (its parts are aborted by the next run);
3. the copy is compared with Drive's ``size``/``md5Checksum`` (and ``sha256Checksum``
   when Drive reports one), with the values the application recorded (``size_bytes``,
   ``checksum_md5``, ``checksum_sha256``) and with MinIO's stat of the object; a mismatching
   object is removed, the asset is ``failed`` and retried by the next run;
4. only then, in one transaction, ``media_assets`` is pointed at the object and the status
   becomes ``switched``. Switched objects are never removed by this module.

Before any byte is copied, Drive's metadata is checked with :func:`check_drive_metadata`, the
same function the dry run applies, so both agree on what moves: a trashed file, a file Drive
no longer has, a Google Docs file or shortcut (no binary content) and a row whose recorded
size or checksums disagree with Drive fail with their own reason and leave the row as it is.
Only what the content itself reveals (bytes that do not match Drive's or the recorded
checksums, e.g. a recorded SHA-256 where Drive reports none) is found by the real run alone.

An object already at the target key (an earlier run died between upload and record) is read
back from MinIO and hashed: when it matches Drive's checksums it is adopted, not uploaded again.

The package: ``model`` (constants, errors, options, results), ``keys`` (object keys, content
type), ``status_table`` (the ``storage_migration`` table and the legacy rows), ``copy`` (one asset),
``run`` (batches, runs, dry run, summary), ``storage_status``. Callers use the names re-exported here.
"""

from backup_pipeline.services.migration.copy import (
    Digests,
    HashingReader,
    MigrationContext,
    check_drive_metadata,
    drive_metadata,
    migrate_asset,
)
from backup_pipeline.services.migration.keys import (
    choose_content_type,
    object_key_for,
    safe_object_name,
)
from backup_pipeline.services.migration.model import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_PART_SIZE,
    DELETE_SOURCE_CONFIRMATION,
    MAX_KEY_NAME_BYTES,
    PROVIDER_DRIVE,
    PROVIDER_MINIO,
    REASON_CHECKSUM,
    REASON_DRIVE_ERROR,
    REASON_NO_CONTENT,
    REASON_NOT_FOUND,
    REASON_RECORDED_MISMATCH,
    REASON_TRASHED,
    RUN_STOPPERS,
    STATUSES,
    STORED_DIFFERENTLY_EXAMPLES,
    AssetFailed,
    AssetOutcome,
    BatchResult,
    DriveFiles,
    DriveUnavailable,
    LegacyAsset,
    MigrationError,
    MigrationOptions,
    MigrationSummary,
    StorageUnavailable,
    stopped_text,
)
from backup_pipeline.services.migration.run import (
    STORAGE_CHOICE_SETTING,
    abort_stale_uploads,
    delete_sources,
    dry_run,
    ensure_bucket,
    finalize,
    flip_settings_to_minio,
    migrate_batch,
    plan_batches,
    run_migration,
)
from backup_pipeline.services.migration.status_table import (
    count_drive_assets,
    ensure_schema,
    find_drive_assets,
    migration_sql,
    register_assets,
)
from backup_pipeline.services.migration.storage_status import (
    BucketUsage,
    StorageStatus,
    storage_status,
)

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_PART_SIZE",
    "DELETE_SOURCE_CONFIRMATION",
    "MAX_KEY_NAME_BYTES",
    "PROVIDER_DRIVE",
    "PROVIDER_MINIO",
    "REASON_CHECKSUM",
    "REASON_DRIVE_ERROR",
    "REASON_NOT_FOUND",
    "REASON_NO_CONTENT",
    "REASON_RECORDED_MISMATCH",
    "REASON_TRASHED",
    "RUN_STOPPERS",
    "STATUSES",
    "STORAGE_CHOICE_SETTING",
    "STORED_DIFFERENTLY_EXAMPLES",
    "AssetFailed",
    "AssetOutcome",
    "BatchResult",
    "BucketUsage",
    "Digests",
    "DriveFiles",
    "DriveUnavailable",
    "HashingReader",
    "LegacyAsset",
    "MigrationContext",
    "MigrationError",
    "MigrationOptions",
    "MigrationSummary",
    "StorageStatus",
    "StorageUnavailable",
    "abort_stale_uploads",
    "check_drive_metadata",
    "choose_content_type",
    "count_drive_assets",
    "delete_sources",
    "drive_metadata",
    "dry_run",
    "ensure_bucket",
    "ensure_schema",
    "finalize",
    "find_drive_assets",
    "flip_settings_to_minio",
    "migrate_asset",
    "migrate_batch",
    "migration_sql",
    "object_key_for",
    "plan_batches",
    "register_assets",
    "run_migration",
    "safe_object_name",
    "stopped_text",
    "storage_status",
]
