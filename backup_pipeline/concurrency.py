"""One data-touching run at a time: the run tag the queue limits and the lock the jobs take.

Import these from here (not from ``jobs.py``) so op modules do not import the job list.
"""

from __future__ import annotations

#: ``dagster.yaml`` limits runs with this tag key to one at a time (``tag_concurrency_limits``).
EXCLUSIVE_TAG_KEY = "backup_pipeline/exclusive"
#: Tags every backup, restore, retention and migration job carries.
EXCLUSIVE_RUN_TAGS = {EXCLUSIVE_TAG_KEY: "data"}
#: Name of the PostgreSQL advisory lock those jobs hold while they run (``PostgresResource.data_lock``).
DATA_LOCK_NAME = "backup_pipeline/exclusive"
