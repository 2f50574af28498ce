"""Issue 18 must-show: a retention run SIGKILLed half-way through deleting old sets of an
incremental chain leaves every kept set restorable, and the next run finishes the job.

Real components (PostgreSQL, SeaweedFS, a local folder). The retention job runs in a child
process whose local-folder destination reports each deletion and then, at a chosen one, waits
on stdin — a test-only wrapper around the real destination, so the kill point does not depend on
timing; the parent then kills the child with SIGKILL.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.services.backup_parts import PART_MANIFEST
from backup_pipeline.services.backup_upload import has_manifest, list_sets
from backup_pipeline_tests.backup_helpers import start_child_script
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.restore_support import INSTALLATION, Installation, s3_snapshot, wipe_database
from backup_pipeline_tests.test_incremental import (
    BUCKET,
    OTHER,
    _files,
    chain,
    destination,
    manifest_of,
    restore_files,
    retention,
)


@pytest.fixture()
def installation(pg_database: PgDatabase, s3: S3Server, tmp_path: Path) -> Installation:
    wipe_database(pg_database)
    return Installation(pg_database, s3, tmp_path)


# Runs retention_job (keep_last=2) on the local folder; after the ``stop_after``-th file of the set
# ``stop_in`` is deleted it prints "stopped" and blocks until killed.
CRASHING_RETENTION = """
import json, sys
import dagster as dg
from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.ops.retention import retention_job
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.policy import BackupPolicyResource
from backup_pipeline.resources.postgres import PostgresResource
args = json.loads(sys.argv[1])
real_delete = LocalFolderDestination.delete
deleted = []

def delete(self, file_id):
    props = self.stat(file_id).properties
    real_delete(self, file_id)
    deleted.append([props["backupId"], props["partName"]])
    print(json.dumps(deleted[-1]), flush=True)
    if sum(1 for b, _ in deleted if b == args["stop_in"]) == args["stop_after"]:
        print("stopped", flush=True)
        sys.stdin.read()

LocalFolderDestination.delete = delete
resources = {
    "app_db": PostgresResource(database_url=args["db"]),
    "destination": DestinationResource(
        kind="local", installation_id=args["installation"], state_dir=args["state"], local_path=args["backups"]
    ),
    "keys": BackupKeysResource(org_secret_file=args["org_secret"], state_dir=args["state"]),
    "backup_policy": BackupPolicyResource(
        installation_id=args["installation"], state_dir=args["state"], retention_keep_last=2
    ),
}
with dg.instance_for_test() as instance:
    retention_job.execute_in_process(instance=instance, resources=resources)
print("finished", flush=True)
"""


def test_retention_killed_mid_deletion_leaves_every_kept_set_restorable(
    installation: Installation, instance: dg.DagsterInstance
) -> None:
    inst = installation
    (a, _), (b, _), (c, c_state), (d, d_state) = chain(inst, instance)
    referenced = {
        (ref.backup_id, ref.part_name): ref.ciphertext_sha256
        for kept in (c, d)
        for summary in manifest_of(inst, kept).buckets
        for ref in summary.referenced_parts or ()
    }
    # Of the sets retention forgets (A, B), only A's bucket parts and their indexes are
    # referenced (D also uses C's).
    a_kept = {f"{kind}-{name}" for kind in ("bucket", "index") for name in (BUCKET, OTHER)}
    referenced.update(
        ((ref.backup_id, ref.index_part_name), ref.index_ciphertext_sha256)
        for kept in (c, d)
        for summary in manifest_of(inst, kept).buckets
        for ref in summary.referenced_parts or ()
        if ref.index_part_name is not None and ref.index_ciphertext_sha256 is not None
    )
    assert {p for owner, p in referenced if owner == a} == a_kept
    assert {owner for owner, _ in referenced} == {a, c}
    a_files, b_files = set(_files(inst, a)), set(_files(inst, b))
    args = {
        "db": inst.db.url,
        "installation": INSTALLATION,
        "state": str(inst.state_dir),
        "backups": str(inst.backups_dir),
        "org_secret": str(inst.org_secret_file),
        "stop_in": b,
        "stop_after": 2,  # B's manifest (deleted first) and one of its parts
    }
    child = start_child_script(CRASHING_RETENTION, args, stdin=subprocess.PIPE)
    lines: list[str] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line.strip())
            if lines[-1] == "stopped":
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    assert lines and lines[-1] == "stopped", lines
    deleted = [tuple(json.loads(line)) for line in lines[:-1]]
    assert next(p for bid, p in deleted if bid == b) == PART_MANIFEST  # rule 5: manifest first
    assert not {(a, p) for p in a_kept} & set(deleted)
    # The killed run holds the data lease; freed at once here as fail_dead_lease_holder would.
    app_db = PostgresResource(database_url=inst.db.url)
    holder = app_db.data_lease_holder()
    if holder is not None:
        app_db.release_data_lease(holder.run_id)

    # After the crash: B is no longer complete, half of its parts remain; C and D are complete
    # and every part they reference is there, unchanged.
    sets = list_sets(destination(inst), INSTALLATION)
    assert sorted(bid for bid, files in sets.items() if has_manifest(files)) == sorted(
        {c, d} | ({a} if (a, PART_MANIFEST) not in deleted else set())
    )
    assert set(_files(inst, b)) == b_files - {p for bid, p in deleted if bid == b}
    assert len(_files(inst, b)) >= 1  # the kill came before B was gone
    assert_referenced_parts_intact(inst, referenced)
    for backup_id, expected in ((c, c_state), (d, d_state)):
        inst.s3.reset()
        restore_files(inst, instance, backup_id)
        assert s3_snapshot(inst.s3.client()) == expected, backup_id

    # The next run completes: what the killed run left of A and B goes, A's referenced parts stay.
    meta = retention(inst, instance, keep_last=2)
    assert meta["parts_kept_for_kept_sets"] == {a: dict.fromkeys(sorted(a_kept), sorted([c, d]))}
    assert _files(inst, b) == {}
    assert set(_files(inst, a)) == a_kept < a_files
    assert set(list_sets(destination(inst), INSTALLATION)) == {a, c, d}
    # The kept sets restored above; what they read is still there, byte for byte.
    assert_referenced_parts_intact(inst, referenced)
    assert sorted(
        b for b, f in list_sets(destination(inst), INSTALLATION).items() if has_manifest(f)
    ) == sorted([c, d])


def assert_referenced_parts_intact(inst: Installation, referenced: dict[tuple[str, str], str]) -> None:
    """Every part a kept set references exists with the ciphertext SHA-256 its manifest recorded."""
    for (owner, part), sha in referenced.items():
        stored = _files(inst, owner)[part]
        body = hashlib.sha256(b"".join(destination(inst).get(stored.id))).hexdigest()
        assert body == sha, (owner, part)
