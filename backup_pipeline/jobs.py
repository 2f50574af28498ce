"""Every job of the code location.

Each job is added to ``JOBS`` here (one import + one list entry); ``definitions.py``
registers the list. Jobs that touch the application's data (backup, restore, retention,
migration) carry ``backup_pipeline.concurrency.EXCLUSIVE_RUN_TAGS`` so the run queue runs one at a time
(``dagster.yaml``), and also hold the run-level data lease (``ops/data_lease.py``) inside, because
``execute_in_process`` bypasses the queue and Launchpad users can edit tags.
"""

from __future__ import annotations

from dagster import JobDefinition

from backup_pipeline.concurrency import EXCLUSIVE_RUN_TAGS, EXCLUSIVE_TAG_KEY
from backup_pipeline.ops.health import storage_health_job
from backup_pipeline.ops.migration import migrate_drive_to_minio
from backup_pipeline.ops.restore import restore_job
from backup_pipeline.ops.retention import delete_backup_job, retention_job
from backup_pipeline.ops.verification import verify_backup_job

__all__ = ["EXCLUSIVE_RUN_TAGS", "EXCLUSIVE_TAG_KEY", "JOBS"]

JOBS: list[JobDefinition] = [
    storage_health_job,
    migrate_drive_to_minio,
    retention_job,
    delete_backup_job,
    restore_job,
    verify_backup_job,
]
