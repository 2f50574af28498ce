"""Issue 18: what each set of an incremental chain changed, in the ledger (``backup_set`` metadata).

Real components (PostgreSQL, SeaweedFS, a local folder, Dagster's instance); the chain of
test_incremental: a full, nothing changed, change + delete + add, re-add.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline_tests.backup_helpers import materializations
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.restore_support import Installation, wipe_database
from backup_pipeline_tests.test_incremental import MiB, chain


@pytest.fixture()
def installation(pg_database: PgDatabase, s3: S3Server, tmp_path: Path) -> Installation:
    wipe_database(pg_database)
    return Installation(pg_database, s3, tmp_path)


def changes(new: tuple[int, int], changed: tuple[int, int], deleted: tuple[int, int], shared: int) -> dict:
    return {
        "objects_new": new[0],
        "objects_new_bytes": new[1],
        "objects_changed": changed[0],
        "objects_changed_bytes": changed[1],
        "objects_deleted": deleted[0],
        "objects_deleted_bytes": deleted[1],
        "shared_bytes": shared,
    }


def test_each_set_records_new_changed_deleted_uploaded_and_shared(
    installation: Installation, instance: dg.DagsterInstance
) -> None:
    (a, _), (b, _), (c, _), (d, _) = chain(installation, instance)
    ledger = {m["backup_id"]: m for m in materializations(instance) if m["backup_id"] in {a, b, c, d}}
    assert set(ledger) == {a, b, c, d}
    # A (full): a.txt 11 B, b/über.txt 6 B, c.bin 2 MiB, dir/ 0 B, report.pdf 15 B — all new.
    everything = 11 + 6 + 2 * MiB + 0 + 15
    expected = {
        a: changes(new=(5, everything), changed=(0, 0), deleted=(0, 0), shared=0),
        b: changes(new=(0, 0), changed=(0, 0), deleted=(0, 0), shared=everything),
        # a.txt rewritten (11 B), c.bin deleted, e.txt added (11 B); über, dir/, report.pdf shared.
        c: changes(new=(1, 11), changed=(1, 11), deleted=(1, 2 * MiB), shared=6 + 0 + 15),
        # c.bin re-added (19 B); a.txt and e.txt now live in C's part, the rest in A's.
        d: changes(new=(1, 19), changed=(0, 0), deleted=(0, 0), shared=11 + 6 + 0 + 11 + 15),
    }
    for backup_id, want in expected.items():
        meta = ledger[backup_id]
        assert {k: meta[k] for k in want} == want, backup_id
        # What the set stored: every part's ciphertext, manifest included.
        assert meta["uploaded_bytes"] == sum(meta["part_sizes"].values()) == meta["total_bytes"]
    # Only A carries the 2 MiB body; the later sets upload kilobytes.
    assert ledger[a]["uploaded_bytes"] > 2 * MiB
    assert max(ledger[x]["uploaded_bytes"] for x in (b, c, d)) < 64 * 1024
