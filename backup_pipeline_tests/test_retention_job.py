"""retention_job and delete_backup_job wired in Dagster (execute_in_process, real folder + Postgres)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from backup_pipeline.audit import AuditLog
from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.ops.retention import BACKUP_SET_ASSET, delete_backup_job, retention_job
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.policy import BackupPolicyResource
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.services.backup_parts import (
    PART_DATABASE,
    PART_MANIFEST,
    new_backup_id,
    part_file_name,
    part_properties,
)
from backup_pipeline.services.retention import discover_sets
from backup_pipeline_tests.backup_helpers import expected_failures
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.gfs_reference import reference_period_keeps
from backup_pipeline_tests.restore_support import step_metadata

INSTALLATION = "acme"


@pytest.fixture()
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture()
def folder(tmp_path: Path) -> LocalFolderDestination:
    return LocalFolderDestination(tmp_path / "backups")


def _resources(tmp_path: Path, pg: PgDatabase, folder: Path, keep: int = 2) -> dict[str, Any]:
    return {
        "destination": DestinationResource(
            kind="local", local_path=str(folder), installation_id=INSTALLATION
        ),
        "backup_policy": BackupPolicyResource(
            installation_id=INSTALLATION, state_dir=str(tmp_path / "state"), retention_keep_last=keep
        ),
        "app_db": PostgresResource(database_url=pg.url),
        # Read only for sets with an inventory part (their manifests name parts kept sets need).
        "keys": BackupKeysResource(
            org_secret_file=str(tmp_path / "org-secret"), state_dir=str(tmp_path / "state")
        ),
    }


def _put_set(dest: LocalFolderDestination, days_ago: float, complete: bool = True) -> str:
    backup_id = new_backup_id(datetime.now(UTC) - timedelta(days=days_ago), os.urandom(4).hex())
    for part in [PART_DATABASE] + ([PART_MANIFEST] if complete else []):
        dest.put(
            part_file_name(INSTALLATION, backup_id, part),
            [os.urandom(64)],
            part_properties(INSTALLATION, backup_id, part),
        )
    return backup_id


def _deletions(instance: dg.DagsterInstance) -> list[dict[str, Any]]:
    records = instance.fetch_observations(BACKUP_SET_ASSET, limit=100).records
    out = []
    for record in records:
        obs = record.asset_observation
        assert obs is not None
        out.append({k: v.value for k, v in obs.metadata.items()})
    return out


def test_retention_job_deletes_and_records_in_ledger_and_audit(
    tmp_path: Path, pg_database: PgDatabase, folder: LocalFolderDestination, instance: dg.DagsterInstance
) -> None:
    ids = [_put_set(folder, d) for d in (1, 2, 3, 4)]
    stale = _put_set(folder, 5, complete=False)
    result = retention_job.execute_in_process(
        instance=instance, resources=_resources(tmp_path, pg_database, folder.root)
    )
    assert result.success
    assert [s.backup_id for s in discover_sets(folder, INSTALLATION)] == ids[:2]
    deleted = {d["backup_id"]: d for d in _deletions(instance)}
    assert set(deleted) == {ids[2], ids[3], stale}
    assert all(d["event"] == "deleted" for d in deleted.values())
    assert deleted[ids[3]]["bytes_freed"] == 128 and deleted[stale]["was_complete"] is False
    audited = AuditLog(tmp_path / "state").records(action="retention_deleted")
    assert {r.details["backup_id"] for r in audited} == set(deleted)
    # The run carries the exclusive tag the queue limits on.
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.tags["backup_pipeline/exclusive"] == "data"


def test_retention_job_with_gfs_rules_deletes_exactly_the_planned_sets_and_says_why(
    tmp_path: Path, pg_database: PgDatabase, folder: LocalFolderDestination, instance: dg.DagsterInstance
) -> None:
    zone = "America/New_York"
    # ~7 weeks of sets, one a day and a few days with a second one (the hour shifts local days).
    ages = [d + 0.05 for d in range(48)] + [d + 0.6 for d in range(0, 48, 5)]
    ids = [_put_set(folder, age) for age in ages]
    resources = _resources(tmp_path, pg_database, folder.root)
    resources["backup_policy"] = BackupPolicyResource(
        installation_id=INSTALLATION,
        state_dir=str(tmp_path / "state"),
        retention_keep_last=2,
        retention_keep_daily=5,
        retention_keep_weekly=4,
        retention_keep_monthly=3,
        schedule_timezone=zone,
    )
    created = {s.backup_id: s.created for s in discover_sets(folder, INSTALLATION)}
    expected = reference_period_keeps(list(created.items()), zone, daily=5, weekly=4, monthly=3)
    for backup_id in sorted(created, key=lambda b: created[b], reverse=True)[:2]:
        expected[backup_id] = ["newest 2", *expected.get(backup_id, [])]
    doomed = set(ids) - set(expected)
    assert len(doomed) > 30

    dry = retention_job.execute_in_process(
        instance=instance,
        resources=resources,
        run_config={"ops": {"apply_retention_op": {"config": {"dry_run": True}}}},
    )
    assert dry.success and len(discover_sets(folder, INSTALLATION)) == len(ids)
    planned = step_metadata(dry, "apply_retention_op")["apply_retention_op"]
    newest_first = sorted(doomed, key=lambda b: created[b], reverse=True)
    # Bounded metadata: the count of every planned deletion, the ids of the newest 50.
    assert planned["planned"] == newest_first[:50] and planned["planned_count"] == len(doomed)
    assert planned["dry_run"] is True

    result = retention_job.execute_in_process(instance=instance, resources=resources)
    assert result.success
    assert {s.backup_id for s in discover_sets(folder, INSTALLATION)} == set(expected)
    deleted = {d["backup_id"]: d for d in _deletions(instance)}
    assert set(deleted) == doomed
    assert {d["reason"] for d in deleted.values()} == {
        f"kept by no rule: newest 2, daily 5, weekly 4, monthly 3 ({zone})"
    }
    meta = step_metadata(result, "apply_retention_op")["apply_retention_op"]
    assert meta["deleted"] == newest_first[:50] and meta["deleted_count"] == len(doomed)
    assert meta["rules"] == f"newest 2, daily 5, weekly 4, monthly 3 ({zone})"
    assert meta["kept_by_rule"] == {
        "newest 2": 2,
        "daily": 5,
        "weekly": 4,
        "monthly": sum(any(r.startswith("monthly") for r in why) for why in expected.values()),
        "to delete": len(doomed),
    }
    table = meta["decisions"].splitlines()
    assert len(table) == 2 + 50 + 1 and table[-1].startswith(f"| … {len(ids) - 50} older sets not shown")
    for line in table[2:-1]:
        backup_id = line.split("`")[1]
        if backup_id in expected:
            assert f"| keep | {'; '.join(expected[backup_id])} |" in line
        else:
            assert "| delete | kept by no rule" in line


def test_retention_negative_keep_last_fails_naming_the_field(
    tmp_path: Path, pg_database: PgDatabase, folder: LocalFolderDestination, instance: dg.DagsterInstance
) -> None:
    _put_set(folder, 1)
    result = retention_job.execute_in_process(
        instance=instance,
        resources=_resources(tmp_path, pg_database, folder.root),
        run_config={"ops": {"apply_retention_op": {"config": {"keep_last": -1}}}},
        raise_on_error=False,
    )
    assert not result.success
    # One line naming the field, no stack trace in the run view (main: dg.Failure's frames).
    [failure] = expected_failures(result)
    assert failure.code == "BAD_INPUT" and failure.message.startswith("keep_last: must be at least 1")
    # The period overrides are checked the same way, every bad field named in one message.
    result = retention_job.execute_in_process(
        instance=instance,
        resources=_resources(tmp_path, pg_database, folder.root),
        run_config={"ops": {"apply_retention_op": {"config": {"keep_last": 0, "keep_weekly": -2}}}},
        raise_on_error=False,
    )
    [failure] = expected_failures(result)
    assert failure.code == "BAD_INPUT"
    assert failure.message == (
        "keep_last: must be at least 1 when keep_daily, "
        "keep_weekly, keep_monthly, keep_yearly are all 0: rules that keep nothing are refused (to keep every "
        "backup, do not run retention), got 0; keep_weekly: must be 0 (rule off) to 1000, got -2"
    )


def test_retention_with_unreachable_destination_fails_and_deletes_nothing(
    tmp_path: Path, pg_database: PgDatabase, instance: dg.DagsterInstance
) -> None:
    # The ledger knows a complete backup; the destination folder is gone (unmounted NAS).
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=BACKUP_SET_ASSET, metadata={"backup_id": "20260101T000000Z-aaaaaaaa"}
        )
    )
    result = retention_job.execute_in_process(
        instance=instance,
        resources=_resources(tmp_path, pg_database, tmp_path / "not-mounted"),
        raise_on_error=False,
    )
    assert not result.success
    [failure] = expected_failures(result)
    assert failure.code == "DESTINATION_UNAVAILABLE" and "unreachable" in failure.message
    assert _deletions(instance) == []


def test_delete_backup_job_confirmation_and_newest_guard(
    tmp_path: Path, pg_database: PgDatabase, folder: LocalFolderDestination, instance: dg.DagsterInstance
) -> None:
    older = _put_set(folder, 2)
    newest = _put_set(folder, 1)
    resources = _resources(tmp_path, pg_database, folder.root)

    def run(config: dict[str, Any]) -> dg.ExecuteInProcessResult:
        return delete_backup_job.execute_in_process(
            instance=instance,
            resources=resources,
            run_config={"ops": {"delete_backup_op": {"config": config}}},
            raise_on_error=False,
        )

    def error(result: dg.ExecuteInProcessResult) -> str:
        # Every refusal is one line with its code and no stack trace (main: dg.Failure's frames).
        [failure] = expected_failures(result)
        assert failure.step == "delete_backup_op" and failure.code in ("BAD_INPUT", "DELETE_REFUSED")
        return failure.message

    assert "confirm: type exactly" in error(run({"backup_id": older, "confirm": "yes"}))
    assert "no backup set" in error(
        run({"backup_id": "20200101T000000Z-deadbeef", "confirm": "delete 20200101T000000Z-deadbeef"})
    )
    assert "backup_id: 'nope' is not a backup id" in error(
        run({"backup_id": "nope", "confirm": "delete nope"})
    )
    assert "newest complete backup" in error(run({"backup_id": newest, "confirm": f"delete {newest}"}))
    assert {s.backup_id for s in discover_sets(folder, INSTALLATION)} == {older, newest}

    assert run({"backup_id": older, "confirm": f"delete {older}"}).success
    assert run({"backup_id": newest, "confirm": f"delete {newest}", "force": True}).success
    assert discover_sets(folder, INSTALLATION) == []
    assert [d["backup_id"] for d in _deletions(instance)] == [newest, older]
    audited = AuditLog(tmp_path / "state").records(action="backup_deleted")
    assert [(r.details["backup_id"], r.details["forced"]) for r in audited] == [
        (older, False),
        (newest, True),
    ]


def test_delete_backup_config_missing_confirmation_rejected_before_launch() -> None:
    with pytest.raises(dg.DagsterInvalidConfigError, match="confirm"):
        delete_backup_job.execute_in_process(
            run_config={"ops": {"delete_backup_op": {"config": {"backup_id": "20200101T000000Z-deadbeef"}}}},
            resources={
                "destination": DestinationResource(kind="local"),
                "backup_policy": BackupPolicyResource(),
                "app_db": PostgresResource(database_url="postgresql://postgres@127.0.0.1:5432/x"),
                "keys": BackupKeysResource(org_secret_file="unused", state_dir="unused"),
            },
        )
