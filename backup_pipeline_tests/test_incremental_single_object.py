"""Issue 18: single-object restore from an incremental set, through the part index of the part
that holds the body — an older set's, after retention forgot that set.

Real components (PostgreSQL, SeaweedFS, a local folder, Dagster's in-process backup, retention and
verification jobs); the restore goes through the ``restore-objects`` CLI. The same from an S3
destination (SeaweedFS, object lock, behind a byte-counting proxy) and the Drive v3 test server,
through the service the CLI calls, with the bytes the server sent counted on its side.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from backup_pipeline.archive.keys import OrgKeyring
from backup_pipeline.archive.part_index import index_part_name
from backup_pipeline.cli import main
from backup_pipeline.ops.verification import verify_backup_job
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.policy import BackupPolicyResource
from backup_pipeline.services.backup_parts import PROP_PART_NAME
from backup_pipeline.services.restore.sets import RestoreKeys, resolve_backup
from backup_pipeline.services.restore.single_object import (
    FolderTarget,
    S3Target,
    restore_objects,
    restore_selection,
)
from backup_pipeline_tests.backup_helpers import drive_destination
from backup_pipeline_tests.fixtures import s3_destination as sd
from backup_pipeline_tests.fixtures.cutting_proxy import CuttingProxy
from backup_pipeline_tests.fixtures.drive import DriveFixture
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


def _remote_destination(
    kind: str, inst: Installation, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[DestinationResource, DriveFixture | None]:
    """The destination the backups write to: S3 (object lock, the writer's least-privilege key)
    or the Drive v3 test server (shared drive)."""
    if kind == "s3":
        sd.make_bucket(inst.s3, object_lock=True)
        return sd.writer_resource(inst.s3, tmp_path / "s3-state", INSTALLATION), None
    drive: DriveFixture = request.getfixturevalue("drive")
    resource = drive_destination(
        drive, tmp_path, installation_id=INSTALLATION, retry_attempts=3, retry_max_wait_seconds=0.2
    )
    return resource, drive


@pytest.mark.parametrize("kind", ["s3", "drive"])
def test_on_s3_and_drive_an_object_of_the_base_set_restores_by_ranged_downloads(
    kind: str,
    installation: Installation,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inst = installation
    for name in list(os.environ):
        if name.startswith("BACKUP_PIPELINE_"):
            monkeypatch.delenv(name)
    resource, drive = _remote_destination(kind, inst, tmp_path, request)
    client = inst.s3.client()
    client.make_bucket(BUCKET)
    content = {"base/big.bin": os.urandom(3 * MiB), "base/other.bin": os.urandom(3 * MiB)}
    content |= {f"k/{n}": f"small object {n}".encode() * (n + 1) for n in range(6)}
    for key, data in content.items():
        put(client, BUCKET, key, data)
    a = backup(inst, instance, resource, incremental_min_live_share=0.0)
    content["k/0"] = b"changed in B"
    put(client, BUCKET, "k/0", content["k/0"])
    b = backup(inst, instance, resource, incremental_min_live_share=0.0)
    content["k/2"] = b"changed in C"
    put(client, BUCKET, "k/2", content["k/2"])
    c = backup(inst, instance, resource, incremental_min_live_share=0.0)

    keys = RestoreKeys(org_keyring=OrgKeyring.from_file(str(inst.org_secret_file)))
    written = resource.get_destination()
    resolved = resolve_backup(written, keys, c, installation_id=INSTALLATION)
    incremental = resolved.manifest["incremental"][BUCKET]
    assert {r["backup_id"] for r in incremental["referenced"]} == {a, b}
    part_a = next(
        f for f in written.list({"backupId": a}) if f.properties[PROP_PART_NAME] == PART
    )  # the base set's bucket part: both 3 MiB bodies

    # What the server sent is counted on the wire: a proxy in front of S3, the Drive server's own counter.
    proxy = CuttingProxy("127.0.0.1", inst.s3.port) if kind == "s3" else None
    source = resource.replace(s3_endpoint=proxy.endpoint).get_destination() if proxy is not None else written

    def sent() -> int:
        if proxy is not None:
            return proxy.downstream_bytes
        assert drive is not None
        return int(drive.stats()["download_bytes_sent"])

    try:
        size = len(content["base/big.bin"])
        before = sent()
        one = restore_objects(
            source,
            keys,
            resolved,
            BUCKET,
            restore_selection(["base/big.bin"]),
            FolderTarget(tmp_path / "one"),
        )
        on_the_wire = sent() - before
        assert one.indexed and [o["key"] for o in one.objects] == ["base/big.bin"]
        # The goal: from the 1 GB-part case of issue 18, ≤ 2 × the object plus one chunk of the part.
        assert one.part_bytes_downloaded <= 2 * size + CHUNK, one
        assert one.part_bytes_downloaded < part_a.size  # not the whole 6 MiB part
        read = one.part_bytes_downloaded + one.index_bytes_downloaded + one.inventory_bytes_downloaded
        if drive is not None:
            assert on_the_wire == read  # the server counts body bytes only
        else:
            # Response headers (and no listing bodies) on top of the bodies: a few KiB at most.
            assert read <= on_the_wire <= read + 32 * 1024, (on_the_wire, read)
        restored = (tmp_path / "one" / "base/big.bin").read_bytes()
        assert hashlib.sha256(restored).digest() == hashlib.sha256(content["base/big.bin"]).digest()
        print(
            f"\n[incremental single object, {kind}] {size} B object of the base set, from the 3rd set: "
            f"{one.part_bytes_downloaded} B of a {part_a.size} B part ({one.part_bytes_downloaded / size:.2f} x), "
            f"index {one.index_bytes_downloaded} B, inventory {one.inventory_bytes_downloaded} B, "
            f"{on_the_wire} B on the wire"
        )

        # A prefix whose objects live in the three sets' parts, restored into a bucket: C's versions.
        target = "incr-single-target"
        client.make_bucket(target)
        prefix = restore_objects(
            source, keys, resolved, BUCKET, restore_selection(prefix="k/"), S3Target(client, target)
        )
        wanted = {k: v for k, v in content.items() if k.startswith("k/")}
        assert sorted(o["key"] for o in prefix.objects) == sorted(wanted)
        assert prefix.part_bytes_downloaded < size  # no 3 MiB body read for the small ones
        for key, data in wanted.items():
            body = client.get_object(target, key)
            try:
                assert body.read() == data, key
            finally:
                body.close()
                body.release_conn()
    finally:
        if proxy is not None:
            proxy.close()
