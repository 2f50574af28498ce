"""Restore: plain functions the restore job and the disaster-recovery CLI call.

Nothing here knows Dagster. The order a caller MUST follow (the ops and the CLI do):

1. ``sets.resolve_backup`` — find the set (ledger or destination), read and authenticate its
   manifest, refuse an incomplete set naming what is missing.
2. ``verify_parts`` — stream every needed part once, end to end: download → authenticate
   every chunk (AEAD) → compare ciphertext and plaintext SHA-256 with the manifest. No
   plaintext is kept; nothing is touched. Any damage refuses the restore here.
   The database part is read with ``verify_database_part``, which also reads the dump's table
   of contents (``DatabaseFacts``); ``check_privileges`` and ``check_roles`` then refuse a
   restore this server or role cannot complete, before anything is touched.
3. Only then act: ``restore_into_scratch`` (a new scratch database, never the target) and
   ``restore_bucket`` per bucket, each streaming the part a second time; at the end
   ``install_restored_database`` swaps the scratch database in (``scratch.py``: names, claims,
   cleanup of killed runs' leftovers, the one-transaction swap).

Why stream twice rather than stage: plaintext never touches disk (invariant 1) and no
staging space is needed. The second pass is as safe as the first for what it emits: every
chunk is authenticated before a byte is handed on, the header binds backup id and part
name, and truncation is caught by the final-chunk flag. A part changed on the destination
between the passes fails the second pass: the database restore goes into a scratch database
(dropped; the target is left as it was); a bucket restore stops with a summary of what it wrote,
and a rerun completes it.

The package: ``common`` (options, errors), ``download``, ``sets`` (listing, resolving, opening and
verifying parts), ``dump_info`` (what a dump says about its database), ``scratch`` (scratch
databases and the swap), ``database``, ``buckets``, ``report`` (consistency), ``run`` (the whole
procedure).
Callers use the names re-exported here.
"""

from backup_pipeline.services.backup_parts import PART_DATABASE
from backup_pipeline.services.restore.buckets import (
    LISTING_LOOKAHEAD,
    PUT_PART_BYTES,
    PUT_WINDOW_BYTES,
    PUT_WORKERS,
    SMALL_OBJECT_BYTES,
    BucketRestoreFailed,
    BucketSummary,
    ExistingSizes,
    RestoreEntry,
    Unrestorable,
    bucket_entries,
    decide,
    decompress_backup,
    keep_both_key,
    object_sha256,
    plan_bucket,
    put_entry,
    restore_bucket,
)
from backup_pipeline.services.restore.common import (
    DEFAULT_CONSISTENCY_QUERY,
    KEEP_BOTH_SUFFIX,
    LATEST,
    ConflictPolicy,
    IncomingObject,
    ObjectAction,
    OnUnrestorable,
    Ownership,
    RestoreError,
    RestoreOptions,
    RestoreRefused,
    RestoreScope,
    check_confirmation,
    confirmation_phrase,
)
from backup_pipeline.services.restore.database import (
    PgTarget,
    check_restore_versions,
    current_row_counts,
    database_has_tables,
    dump_row_counts,
    install_restored_database,
    plan_database,
    restore_into_scratch,
    server_version,
    verify_database_part,
)
from backup_pipeline.services.restore.download import (
    DOWNLOAD_CHUNK_BYTES,
    RangedSource,
    download_backup,
)
from backup_pipeline.services.restore.dump_info import (
    DatabaseFacts,
    database_facts_of,
    inspect_dump,
)
from backup_pipeline.services.restore.fidelity import (
    key_risk,
    served_differently,
    shown_key,
)
from backup_pipeline.services.restore.incremental import BucketSource, bucket_source
from backup_pipeline.services.restore.report import (
    consistency_report,
)
from backup_pipeline.services.restore.run import (
    RestoreRolledBack,
    recover_before_restore,
    run_restore,
)
from backup_pipeline.services.restore.scratch import (
    RESTORE,
    VERIFY,
    Cleanup,
    ScratchUnavailable,
    check_can_create,
    check_or_note,
    check_privileges,
    check_roles,
    claim_scratch,
    cleanup_leftovers,
    database_exists,
    drop_database,
    process_token,
    replaced_name,
    run_token,
    scratch_name,
    swap_into_place,
)
from backup_pipeline.services.restore.sets import (
    MANIFEST_LIMIT_BYTES,
    BackupSetInfo,
    PartRef,
    PartVerificationError,
    ResolvedBackup,
    RestoreKeys,
    decrypt_backup,
    list_backups,
    manifest_inventory,
    manifest_parts,
    needed_parts,
    open_part,
    parse_manifest,
    resolve_backup,
    verify_part,
    verify_parts,
)

__all__ = [
    "DEFAULT_CONSISTENCY_QUERY",
    "DOWNLOAD_CHUNK_BYTES",
    "KEEP_BOTH_SUFFIX",
    "LATEST",
    "LISTING_LOOKAHEAD",
    "MANIFEST_LIMIT_BYTES",
    "PART_DATABASE",
    "PUT_PART_BYTES",
    "PUT_WINDOW_BYTES",
    "PUT_WORKERS",
    "RESTORE",
    "SMALL_OBJECT_BYTES",
    "VERIFY",
    "BackupSetInfo",
    "BucketRestoreFailed",
    "BucketSource",
    "BucketSummary",
    "Cleanup",
    "ConflictPolicy",
    "DatabaseFacts",
    "ExistingSizes",
    "IncomingObject",
    "ObjectAction",
    "OnUnrestorable",
    "Ownership",
    "PartRef",
    "PartVerificationError",
    "PgTarget",
    "RangedSource",
    "ResolvedBackup",
    "RestoreEntry",
    "RestoreError",
    "RestoreKeys",
    "RestoreOptions",
    "RestoreRefused",
    "RestoreRolledBack",
    "RestoreScope",
    "ScratchUnavailable",
    "Unrestorable",
    "bucket_entries",
    "bucket_source",
    "check_can_create",
    "check_confirmation",
    "check_or_note",
    "check_privileges",
    "check_restore_versions",
    "check_roles",
    "claim_scratch",
    "cleanup_leftovers",
    "confirmation_phrase",
    "consistency_report",
    "current_row_counts",
    "database_exists",
    "database_facts_of",
    "database_has_tables",
    "decide",
    "decompress_backup",
    "decrypt_backup",
    "download_backup",
    "drop_database",
    "dump_row_counts",
    "inspect_dump",
    "install_restored_database",
    "keep_both_key",
    "key_risk",
    "list_backups",
    "manifest_inventory",
    "manifest_parts",
    "needed_parts",
    "object_sha256",
    "open_part",
    "parse_manifest",
    "plan_bucket",
    "plan_database",
    "process_token",
    "put_entry",
    "recover_before_restore",
    "replaced_name",
    "resolve_backup",
    "restore_bucket",
    "restore_into_scratch",
    "run_restore",
    "run_token",
    "scratch_name",
    "served_differently",
    "server_version",
    "shown_key",
    "swap_into_place",
    "verify_database_part",
    "verify_part",
    "verify_parts",
]
