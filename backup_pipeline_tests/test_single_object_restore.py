"""Restore of one object or one prefix from a set through the part index (BACKUP-FORMAT.md §8),
against real components: the source bucket on SeaweedFS, the set on a local folder, on S3
(SeaweedFS) and on the Drive v3 test server over HTTP. No Dagster: the services the backup op
calls (``export_bucket`` with its index, ``finalize_backup``) make the set.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from minio import Minio
from minio.commonconfig import Tags

from backup_pipeline.archive.keys import OrgKeyring, generate_org_secret_file
from backup_pipeline.cli import main
from backup_pipeline.destinations import Destination, LocalFolderDestination, RetryingDestination
from backup_pipeline.ops.backup import build_archive_writer, build_encryptor
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.services.backup_buckets import export_bucket
from backup_pipeline.services.backup_finalize import FinalizeInput, finalize_backup
from backup_pipeline.services.backup_parts import PART_DATABASE, new_backup_id
from backup_pipeline.services.backup_upload import upload_part
from backup_pipeline.services.restore.sets import RestoreKeys, resolve_backup
from backup_pipeline.services.restore.single_object import (
    FolderTarget,
    S3Target,
    SingleObjectError,
    restore_objects,
    restore_selection,
)
from backup_pipeline.settings import DriveAuthMode
from backup_pipeline_tests.fixtures import s3_destination
from backup_pipeline_tests.fixtures.drive import FAST_RETRY, DriveFixture
from backup_pipeline_tests.fixtures.s3 import SeaweedFSServer

INSTALLATION = "bp-single"
SOURCE = "single-src"
CHUNK = (1 << 20) + 16  # one sealed chunk at the default chunk size


@dataclass
class MadeSet:
    destination: Destination
    keys: RestoreKeys
    backup_id: str
    content: dict[str, bytes]
    client: Minio


def _fill_source(client: Minio) -> dict[str, bytes]:
    """Many small text objects, medium ones, and big incompressible ones with headers and tags."""
    rng = random.Random(18)
    if not client.bucket_exists(SOURCE):
        client.make_bucket(SOURCE)
    content: dict[str, bytes] = {}
    for i in range(60):
        content[f"small/{i:03d}.txt"] = (f"small object {i} " * rng.randint(1, 300)).encode()
    for i in range(6):
        content[f"medium/{i}.bin"] = rng.randbytes(rng.randint(70_000, 400_000))
    for i in range(3):
        content[f"photos/big-{i}.jpg"] = rng.randbytes(rng.randint(2_500_000, 3_500_000))
    for key, data in content.items():
        tags = Tags.new_object_tags()
        tags["n"] = key.rsplit("/", 1)[1]
        client.put_object(
            SOURCE,
            key,
            io.BytesIO(data),
            len(data),
            content_type="image/jpeg" if key.endswith(".jpg") else "text/plain",
            metadata={"origin": "single-object test"},
            tags=tags,
        )
    return content


def _make_set(tmp_path: Path, destination: Destination, s3: SeaweedFSServer, *, with_index: bool) -> MadeSet:
    client = s3.client()
    content = _fill_source(client)
    secret = tmp_path / "org-secret"
    if not secret.exists():
        generate_org_secret_file(secret)
    keys = BackupKeysResource(org_secret_file=str(secret), state_dir=str(tmp_path / "state"))
    keys.recovery_public_key()
    encryptor, key_ids = build_encryptor(keys)
    backup_id = new_backup_id()
    bucket = export_bucket(
        client,
        SOURCE,
        destination,
        encryptor,
        build_archive_writer(6),
        installation_id=INSTALLATION,
        backup_id=backup_id,
        with_index=with_index,
    )
    assert (bucket.index_part is not None) is with_index
    # The database part is not what this test is about: an authentic stand-in.
    database = upload_part(
        destination,
        encryptor,
        installation_id=INSTALLATION,
        backup_id=backup_id,
        part_name=PART_DATABASE,
        plaintext=[b"not a dump"],
    )
    finalize_backup(
        destination,
        encryptor,
        FinalizeInput(
            installation_id=INSTALLATION,
            backup_id=backup_id,
            started_at=datetime.now(UTC).isoformat(),
            database={
                "part": database.to_dict(),
                "server_version": "17",
                "pg_dump_version": "17",
                "schema_version": None,
                "seconds": 0,
                "table_rows": {},
            },
            buckets=[bucket.to_dict()],
            key_ids=key_ids,
            versions={},
        ),
    )
    restore_keys = RestoreKeys(org_keyring=OrgKeyring.from_file(str(secret)))
    return MadeSet(destination, restore_keys, backup_id, content, client)


KINDS = ["local", "s3", "drive"]


@pytest.fixture(params=KINDS)
def made(request: pytest.FixtureRequest, tmp_path: Path, s3: SeaweedFSServer) -> MadeSet:
    kind = request.param
    inner: Destination
    if kind == "local":
        inner = LocalFolderDestination(tmp_path / "backups")
    elif kind == "s3":
        s3_destination.make_bucket(s3, object_lock=False)
        inner = s3_destination.destination(s3, tmp_path / "s3-state")
    else:
        drive: DriveFixture = request.getfixturevalue("drive")
        inner = drive.destination(DriveAuthMode.SHARED_DRIVE)
    return _make_set(tmp_path, RetryingDestination(inner, FAST_RETRY), s3, with_index=True)


def _fresh_bucket(client: Minio, name: str) -> str:
    if client.bucket_exists(name):
        for obj in client.list_objects(name, recursive=True):
            client.remove_object(name, obj.object_name or "")
    else:
        client.make_bucket(name)
    return name


def test_one_object_reads_only_its_range_with_equal_bytes_and_headers(
    made: MadeSet, request: pytest.FixtureRequest
) -> None:
    resolved = resolve_backup(made.destination, made.keys, made.backup_id, installation_id=INSTALLATION)
    key = "photos/big-1.jpg"
    size = len(made.content[key])
    drive: DriveFixture | None = (
        request.getfixturevalue("drive") if "drive" in request.node.callspec.id else None
    )
    before = drive.stats()["download_bytes_sent"] if drive else 0
    target = _fresh_bucket(made.client, "single-target")
    report = restore_objects(
        made.destination, made.keys, resolved, SOURCE, restore_selection([key]), S3Target(made.client, target)
    )
    assert report.indexed and [o["key"] for o in report.objects] == [key]
    assert report.object_bytes == size
    # The goal: at most twice the object plus one chunk from the bucket part.
    assert report.part_bytes_downloaded <= 2 * size + CHUNK, (report.part_bytes_downloaded, size)
    part_size = resolved.parts[f"bucket-{SOURCE}"].size
    # Its own members (compressed ≈ its size), the two chunks they straddle, the header fetch.
    assert report.part_bytes_downloaded <= size + 2 * CHUNK + 2048 < part_size
    if drive is not None:
        # What the server sent is what the report counts (index part + header + ranges).
        served = drive.stats()["download_bytes_sent"] - before
        assert served == report.part_bytes_downloaded + report.index_bytes_downloaded
    body = made.client.get_object(target, key)
    try:
        assert hashlib.sha256(body.read()).hexdigest() == hashlib.sha256(made.content[key]).hexdigest()
    finally:
        body.close()
        body.release_conn()
    stat = made.client.stat_object(target, key)
    assert stat.content_type == "image/jpeg"
    assert (stat.metadata or {}).get("x-amz-meta-origin") == "single-object test"
    tags = made.client.get_object_tags(target, key)
    assert dict(tags or {}) == {"n": "big-1.jpg"}
    print(
        f"\n[single object] {made.destination.description}: {size} B object, "
        f"{report.part_bytes_downloaded} B of a {part_size} B part downloaded "
        f"({report.part_bytes_downloaded / size:.2f} x), index {report.index_bytes_downloaded} B"
    )


def test_a_prefix_restores_into_a_folder(made: MadeSet, tmp_path: Path) -> None:
    resolved = resolve_backup(made.destination, made.keys, made.backup_id, installation_id=INSTALLATION)
    folder = tmp_path / "restored"
    report = restore_objects(
        made.destination,
        made.keys,
        resolved,
        SOURCE,
        restore_selection(prefix="medium/"),
        FolderTarget(folder),
    )
    wanted = {k: v for k, v in made.content.items() if k.startswith("medium/")}
    assert sorted(o["key"] for o in report.objects) == sorted(wanted)
    for key, data in wanted.items():
        assert (folder / key).read_bytes() == data
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(
        wanted
    )
    assert report.part_bytes_downloaded <= sum(len(v) for v in wanted.values()) + 3 * CHUNK * len(wanted)


def test_missing_keys_are_named_and_nothing_matching_is_refused(made: MadeSet) -> None:
    resolved = resolve_backup(made.destination, made.keys, made.backup_id, installation_id=INSTALLATION)
    folder = FolderTarget(Path("/nonexistent-never-written"))
    with pytest.raises(Exception, match="holds none of: 'nope'"):
        restore_objects(made.destination, made.keys, resolved, SOURCE, restore_selection(["nope"]), folder)


def test_a_tampered_chunk_in_the_range_fails_naming_the_object(tmp_path: Path, s3: SeaweedFSServer) -> None:
    made = _make_set(tmp_path, LocalFolderDestination(tmp_path / "backups"), s3, with_index=True)
    resolved = resolve_backup(made.destination, made.keys, made.backup_id, installation_id=INSTALLATION)
    key = "photos/big-2.jpg"
    # Flip a byte in the middle of the part's last big object: the chunks of its range.
    path = next((tmp_path / "backups").rglob(f"*.bucket-{SOURCE}.bpenc"))
    data = bytearray(path.read_bytes())
    data[len(data) - len(made.content[key]) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    folder = tmp_path / "restored"
    with pytest.raises(SingleObjectError, match=r"object 'photos/big-2.jpg': ChunkTamperedError"):
        restore_objects(
            made.destination, made.keys, resolved, SOURCE, restore_selection([key]), FolderTarget(folder)
        )
    assert not [p for p in folder.rglob("*") if p.is_file()]  # nothing renamed into place, no temporary left
    # An untouched object in the same part still restores.
    report = restore_objects(
        made.destination,
        made.keys,
        resolved,
        SOURCE,
        restore_selection(["small/007.txt"]),
        FolderTarget(folder),
    )
    assert (folder / "small/007.txt").read_bytes() == made.content["small/007.txt"]
    assert report.objects


def test_a_set_without_an_index_restores_through_the_whole_part(tmp_path: Path, s3: SeaweedFSServer) -> None:
    made = _make_set(tmp_path, LocalFolderDestination(tmp_path / "backups"), s3, with_index=False)
    resolved = resolve_backup(made.destination, made.keys, made.backup_id, installation_id=INSTALLATION)
    assert not [p for p in resolved.parts if p.startswith("index-")]
    folder = tmp_path / "restored"
    key = "medium/3.bin"
    report = restore_objects(
        made.destination, made.keys, resolved, SOURCE, restore_selection([key]), FolderTarget(folder)
    )
    assert not report.indexed
    assert (folder / key).read_bytes() == made.content[key]
    # Pass 1 verifies the whole part, pass 2 reads it again.
    assert report.part_bytes_downloaded == 2 * resolved.parts[f"bucket-{SOURCE}"].size


def test_cli_restores_a_prefix_to_a_folder_and_refuses_bad_input(
    tmp_path: Path, s3: SeaweedFSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = _make_set(tmp_path, LocalFolderDestination(tmp_path / "backups"), s3, with_index=True)
    for name in list(os.environ):
        if name.startswith("BACKUP_PIPELINE_"):
            monkeypatch.delenv(name)
    env = {
        "BACKUP_PIPELINE_DESTINATION": "local",
        "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(tmp_path / "backups"),
        "BACKUP_PIPELINE_STATE_DIR": str(tmp_path / "cli-state"),
    }
    common = ["restore-objects", "--org-secret-file", str(tmp_path / "org-secret"), "--bucket", SOURCE]
    out = tmp_path / "cli-out"
    result = CliRunner().invoke(main, [*common, "--prefix", "small/00", "--to-folder", str(out)], env=env)
    assert result.exit_code == 0, result.output
    wanted = {k: v for k, v in made.content.items() if k.startswith("small/00")}
    assert len(wanted) == 10
    for key, data in wanted.items():
        assert (out / key).read_bytes() == data
    assert "ranged reads through the part index" in result.stdout
    result = CliRunner().invoke(main, [*common, "--key", "nope", "--to-folder", str(out)], env=env)
    assert result.exit_code == 1 and "holds none of: 'nope'" in result.stderr
    result = CliRunner().invoke(main, [*common, "--to-folder", str(out)], env=env)
    assert result.exit_code == 2 and "--key or --prefix" in result.stderr
