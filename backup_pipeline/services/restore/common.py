"""Restore options, the errors every restore step raises, and the manifest's view of an object."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

KEEP_BOTH_SUFFIX = ".restored-{backup_id}"


DEFAULT_CONSISTENCY_QUERY = (
    "SELECT bucket, object_key FROM media_assets WHERE bucket IS NOT NULL AND object_key IS NOT NULL"
)


class RestoreScope(StrEnum):
    FULL = "full"
    FILES = "files"
    DATABASE = "database"


class ConflictPolicy(StrEnum):
    SKIP = "skip"
    OVERWRITE = "overwrite"
    KEEP_BOTH = "keep_both"
    IF_DIFFERENT = "if_different"


class ObjectAction(StrEnum):
    ADD = "added"
    OVERWRITE = "overwritten"
    SKIP = "skipped"
    KEEP_BOTH = "kept_both"  # restored copy written under a suffixed key next to the current one


class OnUnrestorable(StrEnum):
    """What a restore does with an object the target server cannot hold exactly (it refuses the
    key or the put, or serves other headers than those written): ``fail`` stops the run and rolls
    the buckets back; ``continue`` goes on and lists every such object in the report."""

    FAIL = "fail"
    CONTINUE = "continue"


class Ownership(StrEnum):
    """Who owns the restored objects. ``source``: the roles of the backup (they must exist on the
    server); ``none``: the restoring role owns everything and the backup's grants are skipped
    (``pg_restore --no-owner --no-privileges``), for a new server without those roles."""

    SOURCE = "source"
    NONE = "none"


LATEST = "latest"


@dataclass(frozen=True)
class RestoreOptions:
    """What to restore; shared by the Dagster config and the CLI flags."""

    backup_id: str = LATEST
    scope: RestoreScope = RestoreScope.FULL
    buckets: tuple[str, ...] = ()  # empty: every bucket in the set
    key_prefix: str = ""
    conflict_policy: ConflictPolicy = ConflictPolicy.SKIP
    target_database: str | None = None  # None: the app's database
    schema_only: bool = False
    ownership: Ownership = Ownership.SOURCE
    keep_previous_database: bool = False  # keep the replaced database as bp_replaced_<token>
    on_unrestorable: OnUnrestorable = OnUnrestorable.FAIL
    dry_run: bool = True
    confirm: str = ""

    @property
    def restores_database(self) -> bool:
        return self.scope in (RestoreScope.FULL, RestoreScope.DATABASE)

    @property
    def restores_files(self) -> bool:
        return self.scope in (RestoreScope.FULL, RestoreScope.FILES)


def confirmation_phrase(backup_id: str) -> str:
    """The phrase an operator types to allow a destructive restore of ``backup_id``."""
    return f"restore {backup_id}"


class RestoreError(Exception):
    """A restore failed; the message says what and where, never a secret."""


class RestoreRefused(RestoreError):
    """Refused before anything was changed (bad input, incomplete or damaged set, versions)."""


def check_confirmation(options: RestoreOptions, backup_id: str) -> None:
    """Destructive runs need ``confirm`` to equal the phrase naming the resolved backup."""
    if options.dry_run:
        return
    expected = confirmation_phrase(backup_id)
    if options.confirm.strip() != expected:
        raise RestoreRefused(
            f"confirm: a restore that changes data needs confirm={expected!r} "
            f"(got {options.confirm!r}); or set dry_run=true to only see what would change"
        )


@dataclass(frozen=True)
class IncomingObject:
    """An object of the backup as the manifest's inventory lists it."""

    key: str
    size: int
    sha256: str


def _safe(exc: BaseException) -> str:
    return re.sub(r"(?i)(password|secret|token|signature)=\S+", r"\1=***", str(exc))[:300]
