"""The restore job's request: ``RestoreConfig`` (the Launchpad form), its enums, run tags and error codes.

Apart from ``ops/restore.py`` so that the request's shape can be read (CLI, client, retention) without
the restore ops, and so that the ops module stays about the steps.
"""

from enum import Enum
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from backup_pipeline.services import restore as svc

TAG_PREFIX = "backup_pipeline/"
TAG_RESTORE_OF = TAG_PREFIX + "restore_of"
TAG_DRY_RUN = TAG_PREFIX + "dry_run"
TAG_LAUNCHED_BY = TAG_PREFIX + "launched_by"
TAG_OUTCOME = TAG_PREFIX + "restore_outcome"
TAG_SAFETY_BACKUP = TAG_PREFIX + "safety_backup_id"
#: Error codes of a restore step's expected failures (the step's one-line error starts with one).
RESTORE_REFUSED = "RESTORE_REFUSED"
RESTORE_VERIFY_FAILED = "RESTORE_VERIFY_FAILED"
RESTORE_DATABASE_FAILED = "RESTORE_DATABASE_FAILED"
RESTORE_BUCKET_FAILED = "RESTORE_BUCKET_FAILED"


class Scope(Enum):
    """Dagster shows and accepts enum member *names*: lowercase names so the Launchpad reads `full`."""

    full = "full"
    files = "files"
    database = "database"


class Conflict(Enum):
    skip = "skip"
    overwrite = "overwrite"
    keep_both = "keep_both"
    if_different = "if_different"


class Ownership(Enum):
    source = "source"
    none = "none"


class RestoreConfig(dg.Config):
    """What to restore. Enum fields are checked by Dagster before launch; the rest in the first step."""

    backup_id: str = Field(
        default=svc.LATEST,
        description="Backup id to restore (see the backup runs or `backup-pipeline history`), or `latest` for the newest complete backup.",
    )
    scope: Scope = Field(
        default=Scope.full,
        description="full: database and files; files: buckets only; database: the database only.",
    )
    buckets: list[str] = Field(
        default_factory=list, description="Buckets to restore (empty: every bucket in the backup)."
    )
    key_prefix: str = Field(default="", description="Restore only objects whose key starts with this prefix.")
    conflict_policy: Conflict = Field(
        default=Conflict.skip,
        description=(
            "When an object already exists: skip (keep the current one), overwrite, keep_both (restored copy "
            "under `<key>.restored-<backup id>`), if_different (overwrite only when size or SHA-256 differ)."
        ),
    )
    target_database: str = Field(
        default="",
        description="Database to restore into; empty: the application's. Another name restores a copy for inspection (created when missing).",
    )
    schema_only: bool = Field(default=False, description="Restore the database schema without data.")
    ownership: Ownership = Field(
        default=Ownership.source,
        description=(
            "source: objects keep the owners and grants of the backup (those roles must exist; the restore refuses "
            "before touching anything and names the missing ones). none: the restoring role owns everything and the "
            "backup's grants are skipped, for a new server without those roles."
        ),
    )
    keep_previous_database: bool = Field(
        default=False,
        description="Keep the database the restore replaces on the server as bp_replaced_<run id> (default: dropped once the restore succeeded).",
    )
    # A Literal, not an Enum: `continue` is a Python keyword, so no enum member can carry the name.
    on_unrestorable: Literal["fail", "continue"] = Field(
        default="fail",
        description=(
            "An object the target S3 server cannot hold exactly (it refuses the key or serves other headers "
            "than written): fail stops the restore and rolls the buckets back; continue restores the rest, "
            "succeeds with a warning and lists each such object."
        ),
    )
    dry_run: bool = Field(
        default=True,
        description="Only report what would change (objects added/overwritten/skipped per bucket, tables and row counts); nothing is touched.",
    )
    confirm: str = Field(
        default="",
        description="For a real restore (dry_run false): type `restore <backup id>` naming the backup being restored.",
    )
    destination: str = Field(
        default="",
        description="With several destinations: the one to read the backup from (a name of "
        "BACKUP_PIPELINE_DESTINATIONS); empty: the primary. A restore's safety backup still goes to the primary.",
    )
    consistency_query: str = Field(
        default=svc.DEFAULT_CONSISTENCY_QUERY,
        description="SQL returning (bucket, object key) of every object the application references; used by the consistency report after a full restore.",
    )

    def options(self) -> svc.RestoreOptions:
        return svc.RestoreOptions(
            backup_id=self.backup_id.strip() or svc.LATEST,
            scope=svc.RestoreScope(Scope(self.scope).value),
            buckets=tuple(self.buckets),
            key_prefix=self.key_prefix,
            conflict_policy=svc.ConflictPolicy(Conflict(self.conflict_policy).value),
            target_database=self.target_database.strip() or None,
            schema_only=self.schema_only,
            ownership=svc.Ownership(Ownership(self.ownership).value),
            keep_previous_database=self.keep_previous_database,
            on_unrestorable=svc.OnUnrestorable(self.on_unrestorable),
            dry_run=self.dry_run,
            confirm=self.confirm,
        )


def options_from_plan(plan: dict[str, Any]) -> svc.RestoreOptions:
    raw = dict(plan["options"])
    raw["scope"] = svc.RestoreScope(raw["scope"])
    raw["conflict_policy"] = svc.ConflictPolicy(raw["conflict_policy"])
    raw["buckets"] = tuple(raw["buckets"])
    raw["ownership"] = svc.Ownership(raw.get("ownership", svc.Ownership.SOURCE))
    raw["on_unrestorable"] = svc.OnUnrestorable(raw.get("on_unrestorable", svc.OnUnrestorable.FAIL))
    return svc.RestoreOptions(**raw)
