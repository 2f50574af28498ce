"""The ledger from Dagster records (materializations, deletion observations, failed runs) and reconcile."""

from __future__ import annotations

import dagster as dg

from backup_pipeline import ledger
from backup_pipeline.ops.backup import BACKUP_SET_ASSET


def _complete(instance: dg.DagsterInstance, backup_id: str) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=BACKUP_SET_ASSET,
            metadata={"backup_id": backup_id, "part_file_ids": {"database": "f1", "manifest": "f2"}},
        )
    )


def test_complete_then_deleted_sets_and_order() -> None:
    with dg.instance_for_test() as instance:
        _complete(instance, "20260101T000000Z-aaaaaaaa")
        _complete(instance, "20260102T000000Z-bbbbbbbb")
        instance.report_runless_asset_event(
            ledger.deletion_observation("20260101T000000Z-aaaaaaaa", "retention: keep_last=1")
        )
        entries = ledger.from_dagster(instance)
        assert [(e.backup_id, e.status) for e in entries] == [
            ("20260102T000000Z-bbbbbbbb", ledger.SetStatus.COMPLETE),
            ("20260101T000000Z-aaaaaaaa", ledger.SetStatus.DELETED),
        ]
        assert entries[0].file_ids == ("f1", "f2")
        latest = ledger.latest_complete(instance)
        assert latest is not None and latest.backup_id == "20260102T000000Z-bbbbbbbb"
        assert [e.backup_id for e in ledger.complete_sets(instance)] == ["20260102T000000Z-bbbbbbbb"]


def test_reconcile_names_sets_missing_on_either_side() -> None:
    def entry(backup_id: str, status: ledger.SetStatus, source: str) -> ledger.LedgerEntry:
        return ledger.LedgerEntry(backup_id, status, ledger.backup_id_time(backup_id), source=source)

    c, i = ledger.SetStatus.COMPLETE, ledger.SetStatus.INCOMPLETE
    dag = [entry("20260101T000000Z-aaaaaaaa", c, "dagster"), entry("20260102T000000Z-bbbbbbbb", c, "dagster")]
    dest = [
        entry("20260102T000000Z-bbbbbbbb", c, "destination"),
        entry("20260103T000000Z-cccccccc", c, "destination"),
        entry("20260104T000000Z-dddddddd", i, "destination"),
    ]
    recon = ledger.reconcile(dag, dest)
    assert recon.missing_on_destination == ["20260101T000000Z-aaaaaaaa"]
    assert recon.unknown_to_dagster == ["20260103T000000Z-cccccccc"]
    assert recon.incomplete_on_destination == ["20260104T000000Z-dddddddd"]


def test_safety_sets_are_labelled_and_never_the_latest() -> None:
    with dg.instance_for_test() as instance:
        _complete(instance, "20260101T000000Z-aaaaaaaa")
        for backup_id, meta in (
            ("20260102T000000Z-bbbbbbbb", {"trigger": "pre-restore"}),  # before sets had a kind
            ("20260103T000000Z-cccccccc", {"set_kind": "safety", "trigger": "pre-restore"}),
        ):
            instance.report_runless_asset_event(
                dg.AssetMaterialization(asset_key=BACKUP_SET_ASSET, metadata={"backup_id": backup_id, **meta})
            )
        latest = ledger.latest_complete(instance)
        assert latest is not None and latest.backup_id == "20260101T000000Z-aaaaaaaa"
        kinds = {e.backup_id: e.kind for e in ledger.complete_sets(instance)}
        assert kinds == {
            "20260103T000000Z-cccccccc": "safety",
            "20260102T000000Z-bbbbbbbb": "safety",
            "20260101T000000Z-aaaaaaaa": "regular",
        }
