"""Issue 18: single-object restore from an incremental set, through the part index of the part
that holds the body — an older set's, after retention forgot that set.

Real components (PostgreSQL, SeaweedFS, a local folder, Dagster's in-process backup, retention and
verification jobs); the restore goes through the ``restore-objects`` CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from backup_pipeline.archive.part_index import index_part_name
from backup_pipeline.cli import main
from backup_pipeline.ops.verification import verify_backup_job
from backup_pipeline.resources.policy import BackupPolicyResource
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.restore_support import INSTALLATION, Installation, wipe_database
from backup_pipeline_tests.test_incremental import (
    BUCKET,
    MiB,
    _files,
    backup,
    inventory_of,
    manifest_of,
    put,
    retention,
)

CHUNK = (1 << 20) + 16  # one sealed chunk at the default chunk size
PART = f"bucket-{BUCKET}"


@pytest.fixture()
def installation(pg_database: PgDatabase, s3: S3Server, tmp_path: Path) -> Installation:
    wipe_database(pg_database)
    with pg_database.connect() as conn:  # verification restores the dump: it needs a table
        conn.execute("CREATE TABLE notes (id int primary key, body text)")
        conn.execute("INSERT INTO notes VALUES (1, 'one')")
        conn.commit()
    return Installation(pg_database, s3, tmp_path)


def restore_objects_cli(inst: Installation, backup_id: str, out: Path, *args: str) -> dict:
    env = {
        "BACKUP_PIPELINE_DESTINATION": "local",
        "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(inst.backups_dir),
        "BACKUP_PIPELINE_INSTALLATION_ID": INSTALLATION,
        "BACKUP_PIPELINE_STATE_DIR": str(inst.root / "cli-state"),
    }
    result = CliRunner().invoke(
        main,
        [
            "restore-objects",
            "--org-secret-file",
            str(inst.org_secret_file),
            "--backup-id",
            backup_id,
            "--bucket",
            BUCKET,
            "--to-folder",
            str(out),
            "--json",
            *args,
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_an_object_of_the_base_set_restores_by_ranges_from_the_third_set(
    installation: Installation, instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inst = installation
    for name in list(os.environ):
        if name.startswith("BACKUP_PIPELINE_"):
            monkeypatch.delenv(name)
    client = inst.s3.client()
    client.make_bucket(BUCKET)
    content = {"base/big.bin": os.urandom(3 * MiB), "base/other.bin": os.urandom(3 * MiB)}
    content |= {f"k/{n}": f"small object {n}".encode() * (n + 1) for n in range(6)}
    for key, data in content.items():
        put(client, BUCKET, key, data)
    a = backup(inst, instance, incremental_min_live_share=0.0)
    content["k/0"] = b"changed in B"
    content["k/new"] = b"added in B"
    for key in ("k/0", "k/new"):
        put(client, BUCKET, key, content[key])
    b = backup(inst, instance, incremental_min_live_share=0.0)
    content["k/2"] = b"changed in C"
    put(client, BUCKET, "k/2", content["k/2"])
    client.remove_object(BUCKET, "k/1")
    del content["k/1"]
    c = backup(inst, instance, incremental_min_live_share=0.0)

    # Every set has its own part's index; C's manifest carries the index of each part it references.
    summary = manifest_of(inst, c).bucket(BUCKET)
    assert summary is not None and summary.mode == "incremental"
    assert {p.name for p in manifest_of(inst, c).parts} >= {PART, index_part_name(PART)}
    refs = {r.backup_id: r for r in summary.referenced_parts or ()}
    assert set(refs) == {a, b}
    assert {r.index_part_name for r in refs.values()} == {index_part_name(PART)}
    placed = {r.key: r.backup_id for r in inventory_of(inst, c, BUCKET)}
    assert placed["base/big.bin"] == a and placed["k/0"] == b and placed["k/2"] == c

    # Retention forgets A: its bucket part and that part's index stay (C and B reference them).
    meta = retention(inst, instance, keep_last=2)
    assert meta["parts_kept_for_kept_sets"] == {
        a: {PART: sorted([b, c]), index_part_name(PART): sorted([b, c])}
    }
    assert set(_files(inst, a)) == {PART, index_part_name(PART)}

    # One object of A's part, restored from C: only its ranges of A's part are downloaded.
    size = len(content["base/big.bin"])
    report = restore_objects_cli(inst, c, tmp_path / "one", "--key", "base/big.bin")
    assert report["indexed"] is True and report["objects"] == 1
    assert report["part_bytes_downloaded"] <= 2 * size + CHUNK, report
    assert report["part_bytes_downloaded"] < _files(inst, a)[PART].size
    print(
        f"\n[incremental single object] {size} B object of the base set, from the 3rd set: "
        f"{report['part_bytes_downloaded']} B of a {_files(inst, a)[PART].size} B part "
        f"({report['part_bytes_downloaded'] / size:.2f} x), index {report['index_bytes_downloaded']} B, "
        f"inventory {report['inventory_bytes_downloaded']} B"
    )
    restored = (tmp_path / "one" / "base/big.bin").read_bytes()
    assert hashlib.sha256(restored).digest() == hashlib.sha256(content["base/big.bin"]).digest()

    # A prefix whose objects live in all three parts: C's version of each, nothing deleted comes back.
    report = restore_objects_cli(inst, c, tmp_path / "prefix", "--prefix", "k/")
    assert report["indexed"] is True
    wanted = {k: v for k, v in content.items() if k.startswith("k/")}
    assert sorted(o["key"] for o in report["restored"]) == sorted(wanted)
    for key, data in wanted.items():
        assert (tmp_path / "prefix" / key).read_bytes() == data, key
    assert not (tmp_path / "prefix" / "k/1").exists()
    assert report["part_bytes_downloaded"] < size  # no 3 MiB body read for the small ones

    # Verification checks C's own index against its inventory.
    verified = verify_backup_job.execute_in_process(
        instance=instance,
        resources={
            **{k: v for k, v in inst.resources().items() if k != "s3"},
            "backup_policy": BackupPolicyResource(
                installation_id=INSTALLATION, state_dir=str(inst.state_dir)
            ),
        },
        run_config={"ops": {"verify_backup_set_op": {"config": {"backup_id": c, "sample_share": 1.0}}}},
        raise_on_error=False,
    )
    assert verified.success, [
        getattr(getattr(e.event_specific_data, "user_failure_data", None), "description", e.message)
        for e in verified.all_events
        if e.is_failure
    ]
    logged = [str(e.user_message) for e in instance.all_logs(verified.run_id)]
    [index_check] = [m for m in logged if m.startswith(f"part:{index_part_name(PART)}: ")]
    assert index_check.endswith(f", {sum(1 for r in placed.values() if r == c)} entries"), index_check
