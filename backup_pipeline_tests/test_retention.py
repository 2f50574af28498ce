"""Retention rules and safe deletion, on a real local-folder destination (no Dagster)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup_pipeline.destinations.base import PermanentError
from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.services.backup_parts import (
    PART_DATABASE,
    PART_MANIFEST,
    SET_KIND_SAFETY,
    bucket_part_name,
    new_backup_id,
    part_file_name,
    part_properties,
)
from backup_pipeline.services.retention import (
    BackupSetInfo,
    RetentionError,
    apply_retention,
    check_manual_deletion,
    delete_backup_set,
    discover_sets,
    plan_retention,
)

INSTALLATION = "acme"
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
GRACE = timedelta(hours=24)


def _put_set(dest: LocalFolderDestination, when: datetime, *, complete: bool, size: int = 100) -> str:
    backup_id = new_backup_id(when)
    parts = [PART_DATABASE, bucket_part_name("media")] + ([PART_MANIFEST] if complete else [])
    for part in parts:
        dest.put(
            part_file_name(INSTALLATION, backup_id, part),
            [os.urandom(size)],
            part_properties(INSTALLATION, backup_id, part),
        )
    return backup_id


def _info(hours_ago: float, complete: bool = True, suffix: str = "0") -> BackupSetInfo:
    created = NOW - timedelta(hours=hours_ago)
    return BackupSetInfo(new_backup_id(created, suffix * 8), created, complete, 3, 300)


@pytest.fixture()
def dest(tmp_path: Path) -> LocalFolderDestination:
    return LocalFolderDestination(tmp_path / "backups")


def test_discover_sets_groups_by_backup_id_and_spots_missing_manifest(dest: LocalFolderDestination) -> None:
    old = _put_set(dest, NOW - timedelta(days=2), complete=True)
    partial = _put_set(dest, NOW - timedelta(days=1), complete=False)
    # Another installation sharing the folder is not ours to count or delete.
    dest.put("other.bpenc", [b"x"], part_properties("other-inst", new_backup_id(NOW), PART_MANIFEST))
    sets = discover_sets(dest, INSTALLATION)
    assert [(s.backup_id, s.complete, s.files, s.size_bytes) for s in sets] == [
        (partial, False, 2, 200),
        (old, True, 3, 300),
    ]


def test_keep_newest_n_complete_and_clean_old_incomplete() -> None:
    sets = [
        _info(0.5, complete=False, suffix="a"),  # maybe still uploading: kept
        _info(30, complete=False, suffix="b"),  # failed, past the grace period, nothing complete newer
        _info(48, suffix="c"),
        _info(50, complete=False, suffix="d"),  # failed before a newer complete one: dead at any age
        _info(72, suffix="e"),
        _info(96, suffix="f"),
        _info(120, suffix="g"),
    ]
    plan = plan_retention(sets, keep_last=3, incomplete_grace=timedelta(hours=100), now=NOW)
    assert plan.keep == [
        sets[0].backup_id,
        sets[1].backup_id,
        sets[2].backup_id,
        sets[4].backup_id,
        sets[5].backup_id,
    ]
    reasons = {d.backup_id: (d.complete, d.reason) for d in plan.delete}
    assert reasons == {
        sets[3].backup_id: (False, "incomplete (no manifest) and older than a complete set"),
        sets[6].backup_id: (True, "older than the newest 3 complete sets"),
    }
    plan = plan_retention(sets, keep_last=3, incomplete_grace=GRACE, now=NOW)
    reasons = {d.backup_id: (d.complete, d.reason) for d in plan.delete}
    assert reasons[sets[1].backup_id] == (False, "incomplete (no manifest) and older than 24 h")
    assert sets[0].backup_id in plan.keep


def test_keep_one_never_deletes_the_newest_complete_even_if_incomplete_sets_are_newer() -> None:
    sets = [_info(30, complete=False, suffix="a"), _info(40, suffix="b"), _info(50, suffix="c")]
    plan = plan_retention(sets, keep_last=1, incomplete_grace=GRACE, now=NOW)
    assert sets[1].backup_id in plan.keep
    assert {d.backup_id for d in plan.delete} == {sets[0].backup_id, sets[2].backup_id}


def test_sets_in_use_by_a_restore_are_protected() -> None:
    sets = [_info(1, suffix="a"), _info(48, suffix="b"), _info(30, complete=False, suffix="c")]
    in_use = {sets[1].backup_id, sets[2].backup_id}
    plan = plan_retention(sets, keep_last=1, incomplete_grace=GRACE, now=NOW, in_use=in_use)
    assert plan.delete == []
    assert set(plan.protected) == in_use


def test_keep_last_below_one_is_rejected() -> None:
    with pytest.raises(RetentionError, match="retention_keep_last"):
        plan_retention([], keep_last=0, incomplete_grace=GRACE, now=NOW)


def test_apply_deletes_manifest_first_and_reports_freed_bytes(dest: LocalFolderDestination) -> None:
    ids = [_put_set(dest, NOW - timedelta(days=d), complete=True) for d in (1, 2, 3, 4)]
    plan = plan_retention(discover_sets(dest, INSTALLATION), keep_last=2, incomplete_grace=GRACE, now=NOW)
    recorded: list[str] = []
    result = apply_retention(dest, INSTALLATION, plan, on_deleted=lambda d: recorded.append(d.backup_id))
    assert recorded == [ids[2], ids[3]]
    assert result.failed == {}
    assert result.bytes_freed == 2 * 300
    assert all(d.files == 3 and d.was_complete for d in result.deleted)
    assert [s.backup_id for s in discover_sets(dest, INSTALLATION)] == ids[:2]
    # Idempotent: deleting a set that is gone deletes nothing and does not fail.
    again = delete_backup_set(dest, INSTALLATION, ids[3])
    assert again.files == 0 and again.bytes_freed == 0


class _DeleteFailsFor(LocalFolderDestination):
    """The real folder, with one file whose delete fails (as a Drive 403/5xx would)."""

    def __init__(self, root: Path, stuck: str):
        super().__init__(root)
        self.stuck: str | None = stuck

    def delete(self, file_id: str) -> None:
        if file_id == self.stuck:
            raise PermanentError(f"{self.description}: cannot delete {file_id!r}: permission denied")
        super().delete(file_id)


def test_failed_deletion_is_reported_and_retried_next_time(tmp_path: Path) -> None:
    plain = LocalFolderDestination(tmp_path / "backups")
    ids = [_put_set(plain, NOW - timedelta(days=d), complete=True) for d in (1, 2, 3)]
    dest = _DeleteFailsFor(tmp_path / "backups", part_file_name(INSTALLATION, ids[2], PART_DATABASE))
    plan = plan_retention(discover_sets(dest, INSTALLATION), keep_last=1, incomplete_grace=GRACE, now=NOW)
    recorded: list[str] = []
    result = apply_retention(dest, INSTALLATION, plan, on_deleted=lambda d: recorded.append(d.backup_id))
    assert recorded == [ids[1]]  # the ledger hears only of the set that is fully gone
    assert list(result.failed) == [ids[2]]
    assert "permission denied" in result.failed[ids[2]]
    # Manifest went first, so the half-deleted set now shows as incomplete, never complete.
    leftover = {s.backup_id: s.complete for s in discover_sets(dest, INSTALLATION)}
    assert leftover == {ids[0]: True, ids[2]: False}

    # The obstacle is gone: the next run finishes the job (no grace period: a complete set is newer).
    dest.stuck = None
    plan2 = plan_retention(discover_sets(dest, INSTALLATION), keep_last=1, incomplete_grace=GRACE, now=NOW)
    result2 = apply_retention(dest, INSTALLATION, plan2)
    assert [d.backup_id for d in result2.deleted] == [ids[2]]
    assert [s.backup_id for s in discover_sets(dest, INSTALLATION)] == [ids[0]]


def test_manual_deletion_rules() -> None:
    sets = [_info(30, complete=False, suffix="a"), _info(40, suffix="b"), _info(50, suffix="c")]
    newest_complete = sets[1].backup_id
    with pytest.raises(RetentionError, match=r"newest complete backup.*force"):
        check_manual_deletion(sets, newest_complete, force=False, in_use=set())
    assert check_manual_deletion(sets, newest_complete, force=True, in_use=set()).backup_id == newest_complete
    assert check_manual_deletion(sets, sets[2].backup_id, force=False, in_use=set()).complete
    with pytest.raises(RetentionError, match="no backup set"):
        check_manual_deletion(sets, "20200101T000000Z-deadbeef", force=True, in_use=set())
    with pytest.raises(RetentionError, match="restore in progress"):
        check_manual_deletion(sets, sets[2].backup_id, force=True, in_use={sets[2].backup_id})


def _safety(hours_ago: float, suffix: str) -> BackupSetInfo:
    created = NOW - timedelta(hours=hours_ago)
    return BackupSetInfo(new_backup_id(created, suffix * 8), created, True, 2, 200, kind=SET_KIND_SAFETY)


def test_safety_sets_do_not_count_and_live_until_keep_last_regular_sets_are_newer(
    dest: LocalFolderDestination,
) -> None:
    """Safety sets counted in keep-last-N: a few restores pushed every regular backup out, and the
    newest complete set to protect could be a database-only safety set."""
    sets = [
        _safety(1, "a"),  # newest of all: still not "the newest complete set"
        _info(24, suffix="b"),
        _safety(30, "c"),  # one regular set newer: kept with keep_last=2
        _info(48, suffix="d"),
        _safety(60, "e"),  # two regular sets newer: deleted
        _info(72, suffix="f"),
    ]
    plan = plan_retention(sets, keep_last=2, incomplete_grace=GRACE, now=NOW)
    assert plan.keep == [s.backup_id for s in sets[:4]]
    reasons = {d.backup_id: d.reason for d in plan.delete}
    assert reasons == {
        sets[4].backup_id: "safety set older than the newest 2 complete regular sets",
        sets[5].backup_id: "older than the newest 2 complete sets",
    }
    # keep_last=1 keeps the newest regular set although two safety sets are newer or in between.
    plan = plan_retention(sets, keep_last=1, incomplete_grace=GRACE, now=NOW, in_use={sets[4].backup_id})
    assert sets[1].backup_id in plan.keep and sets[4].backup_id in plan.protected
    assert {d.backup_id for d in plan.delete} == {sets[2].backup_id, sets[3].backup_id, sets[5].backup_id}
    # The newest complete set a manual delete protects is the newest regular one.
    assert check_manual_deletion(sets, sets[0].backup_id, force=False, in_use=set()).is_safety
    with pytest.raises(RetentionError, match="newest complete backup"):
        check_manual_deletion(sets, sets[1].backup_id, force=False, in_use=set())
    # On the destination the kind is a file property of every part of the set.
    backup_id = new_backup_id(NOW - timedelta(hours=2))
    for part in (PART_DATABASE, PART_MANIFEST):
        dest.put(
            part_file_name(INSTALLATION, backup_id, part),
            [b"x"],
            part_properties(INSTALLATION, backup_id, part, SET_KIND_SAFETY),
        )
    assert [s.kind for s in discover_sets(dest, INSTALLATION)] == [SET_KIND_SAFETY]


def test_a_locked_set_due_for_deletion_is_planned_as_locked_not_deleted() -> None:
    """Rule 9: the lock date from the listing keeps a due set out of the deletions, with its date."""
    newest, due, unlocked = _info(1, suffix="1"), _info(48, suffix="2"), _info(72, suffix="3")
    until = NOW + timedelta(days=3)
    locked = BackupSetInfo(due.backup_id, due.created, True, locked_until=until)
    expired = BackupSetInfo(unlocked.backup_id, unlocked.created, True, locked_until=NOW - timedelta(days=1))
    plan = plan_retention([newest, locked, expired], keep_last=1, incomplete_grace=GRACE, now=NOW)
    assert plan.keep == [newest.backup_id]
    assert [d.backup_id for d in plan.delete] == [unlocked.backup_id]
    [entry] = plan.locked
    assert (entry.backup_id, entry.until) == (due.backup_id, until)
    assert entry.describe().startswith(f"{due.backup_id}: locked until {until.isoformat(timespec='seconds')}")
    # The set keeps its place: a later run, after the date, deletes it.
    later = plan_retention(
        [newest, locked, expired], keep_last=1, incomplete_grace=GRACE, now=until + timedelta(seconds=1)
    )
    assert [d.backup_id for d in later.delete] == [due.backup_id, unlocked.backup_id] and later.locked == []
