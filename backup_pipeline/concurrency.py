"""One data-touching run at a time: the run tag the queue limits and the lease the jobs take.

Import these from here (not from ``jobs.py``) so op modules do not import the job list.
"""

from __future__ import annotations

#: ``dagster.yaml`` limits runs with this tag key to one at a time (``tag_concurrency_limits``).
EXCLUSIVE_TAG_KEY = "backup_pipeline/exclusive"
#: Tags every backup, restore, retention and migration job carries.
EXCLUSIVE_RUN_TAGS = {EXCLUSIVE_TAG_KEY: "data"}
#: Name of the data lease those runs hold from their first to their last step (a row of
#: ``DATA_LEASE_TABLE``), and of the PostgreSQL advisory lock that makes taking it atomic.
DATA_LOCK_NAME = "backup_pipeline/exclusive"
#: Table in the application database (schema ``public``) holding the lease; pg_dump leaves it out,
#: so a database restore never brings back an old lease.
DATA_LEASE_TABLE = "backup_pipeline_data_lease"
#: How often a step (or the CLI migration) holding the lease refreshes its heartbeat.
DATA_LEASE_HEARTBEAT_SECONDS = 15.0
#: A lease whose heartbeat is older than this may be taken over. Every running step of the holder
#: heartbeats every ``DATA_LEASE_HEARTBEAT_SECONDS`` from a background thread, and the gap between
#: two steps of a run is a process start-up (seconds with the multiprocess/in-process executors),
#: so ten silent minutes mean no process of the holder is alive. Raise it for step launchers whose
#: pods may wait longer than that to be scheduled.
DATA_LEASE_STALE_SECONDS = 600.0
