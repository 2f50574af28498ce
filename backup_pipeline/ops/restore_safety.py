"""The pre-restore safety backup: a database-only backup set of the target, made by the backup job's own
functions (manifest last) and labelled a safety set (``setKind=safety``, ``trigger=pre-restore``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import dagster as dg

from backup_pipeline.ops.backup import build_encryptor
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.services.backup_parts import SET_KIND_SAFETY, TRIGGER_PRE_RESTORE


def make_safety_backup(
    context: dg.OpExecutionContext,
    app_db: PostgresResource,
    destination: DestinationResource,
    keys: BackupKeysResource,
    dbname: str,
) -> dict[str, Any]:
    """A database-only backup set of ``dbname`` through the backup job's own functions."""
    from backup_pipeline.services.backup_database import dump_database
    from backup_pipeline.services.backup_finalize import FinalizeInput, finalize_backup
    from backup_pipeline.services.backup_parts import new_backup_id

    dest = destination.get_destination()
    pg = PostgresResource(
        database_url=app_db.url_for(dbname), password=app_db.password, pg_bin_dir=app_db.pg_bin_dir
    )
    backup_id = new_backup_id(run_id=context.run_id)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    encryptor, key_ids = build_encryptor(keys)
    context.log.info(f"safety backup {backup_id} of database {dbname} before the restore")
    database = dump_database(
        pg,
        dest,
        encryptor,
        installation_id=destination.installation_id,
        backup_id=backup_id,
        set_kind=SET_KIND_SAFETY,
    )
    entry = finalize_backup(
        dest,
        encryptor,
        FinalizeInput(
            installation_id=destination.installation_id,
            backup_id=backup_id,
            started_at=started_at,
            database=database.to_dict(),
            buckets=[],
            key_ids=key_ids,
            versions={"trigger": TRIGGER_PRE_RESTORE},
            set_kind=SET_KIND_SAFETY,
        ),
    )
    # The same ledger fields as a scheduled backup's entry: where the set is stored.
    entry["destination"] = dest.description
    return entry
