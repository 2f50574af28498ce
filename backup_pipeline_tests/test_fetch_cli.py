"""``backup-pipeline fetch``: a set (or one part) downloaded for offline work, then decrypted and verified
with nothing but the recovery key; against a local folder and the Drive v3 test server."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity
from backup_pipeline.archive.manifest import Manifest, PartRecord
from backup_pipeline.archive.stream_crypto import encrypt_stream
from backup_pipeline.archive.streams import HashingCounter
from backup_pipeline.cli import main
from backup_pipeline.destinations import Destination, LocalFolderDestination, RetryingDestination
from backup_pipeline.services.backup_parts import part_file_name, part_properties
from backup_pipeline.settings import DriveAuthMode
from backup_pipeline_tests.fixtures.drive import FAST_RETRY, DriveFixture

BACKUP = "20260102T030405Z-0a1b2c3d"
INSTALLATION = "acme"
ORG = OrgKeyring([("k1", bytes(range(32)))])
RECOVERY = RecoveryIdentity(bytes(range(100, 132)))
PLAINTEXT = {
    "database": [os.urandom(300_000)],
    "bucket-photos": [os.urandom(1 << 20) for _ in range(3)],
}


def encrypted(name: str, plaintext: list[bytes]) -> tuple[list[bytes], PartRecord]:
    plain, cipher = HashingCounter(), HashingCounter(md5=True)
    blocks = list(
        cipher.wrap(
            encrypt_stream(
                plain.wrap(plaintext),
                backup_id=BACKUP,
                part_name=name,
                org_keyring=ORG,
                recovery_public_key=RECOVERY.public_key,
            )
        )
    )
    kind = "bucket" if name.startswith("bucket-") else "database"
    record = PartRecord(
        name, kind, cipher.size, cipher.sha256_hex, plain.size, plain.sha256_hex, cipher.md5_hex
    )  # type: ignore[arg-type]
    return blocks, record


def put_part(dest: Destination, name: str, plaintext: list[bytes]) -> PartRecord:
    blocks, record = encrypted(name, plaintext)
    dest.put(part_file_name(INSTALLATION, BACKUP, name), blocks, part_properties(INSTALLATION, BACKUP, name))
    return record


def put_set(dest: Destination) -> dict[str, PartRecord]:
    records = {name: put_part(dest, name, plain) for name, plain in PLAINTEXT.items()}
    manifest = Manifest(
        BACKUP,
        INSTALLATION,
        "2026-01-02T03:04:05Z",
        "2026-01-02T03:05:00Z",
        {"format": "1"},
        list(records.values()),
    )
    records["manifest"] = put_part(dest, "manifest", [manifest.to_bytes()])
    return records


@pytest.fixture()
def recovery_key(tmp_path: Path) -> Path:
    path = tmp_path / "recovery-key"
    path.write_text(RECOVERY.to_bech32() + "\n")
    return path


def run(args: list[object], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    for key in list(os.environ):
        if key.startswith("BACKUP_PIPELINE_"):
            monkeypatch.delenv(key)
    result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    return result.exit_code, result.stdout, result.stderr


def local_env(folder: Path, tmp_path: Path) -> dict[str, str]:
    return {
        "BACKUP_PIPELINE_DESTINATION": "local",
        "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(folder),
        "BACKUP_PIPELINE_STATE_DIR": str(tmp_path / "state"),
    }


def test_a_fetched_set_is_verified_and_decrypted_offline_with_only_the_recovery_key(
    tmp_path: Path, recovery_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "backups"
    records = put_set(LocalFolderDestination(folder))
    out = tmp_path / "offline"
    code, stdout, stderr = run(
        ["fetch", "--backup-id", "latest", "--to", out, "--recovery-key-file", recovery_key],
        local_env(folder, tmp_path),
        monkeypatch,
    )
    assert code == 0, stderr
    assert f"backup {BACKUP} ({INSTALLATION}): 3 file(s)" in stdout and "parts match the manifest" in stdout
    names = {name: out / part_file_name(INSTALLATION, BACKUP, name) for name in records}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in names.values())
    for name, path in names.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == records[name].ciphertext_sha256
        assert path.stat().st_mode & 0o777 == 0o600

    # Offline, on any machine: the files and the recovery key are all that is needed.
    for name in PLAINTEXT:
        result = CliRunner().invoke(
            main,
            [
                "verify",
                str(names[name]),
                "--manifest",
                str(names["manifest"]),
                "--recovery-key-file",
                str(recovery_key),
            ],
        )
        assert result.exit_code == 0, result.output
        assert "matches the manifest" in result.stdout
    plain = tmp_path / "database.dump"
    result = CliRunner().invoke(
        main, ["decrypt", str(names["database"]), "-o", str(plain), "--recovery-key-file", str(recovery_key)]
    )
    assert result.exit_code == 0, result.output
    assert plain.read_bytes() == b"".join(PLAINTEXT["database"])

    # A second run finds everything in place and downloads nothing.
    code, stdout, stderr = run(
        ["fetch", "--backup-id", BACKUP, "--to", out, "--json"], local_env(folder, tmp_path), monkeypatch
    )
    assert code == 0 and stderr.count("already here") == 3
    result = json.loads(stdout)
    assert result["backup_id"] == BACKUP and result["complete"] is True
    assert sorted((f["part"], f["downloaded"]) for f in result["files"]) == [
        ("bucket-photos", 0),
        ("database", 0),
        ("manifest", 0),
    ]


def test_one_part_is_fetched_from_drive_resuming_a_partial_download(
    drive: DriveFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = put_set(RetryingDestination(drive.destination(), FAST_RETRY))
    out = tmp_path / "offline"
    out.mkdir()
    target = out / part_file_name(INSTALLATION, BACKUP, "bucket-photos")
    # An earlier fetch stopped half-way: the prefix is on disk (the part's real bytes).
    stored = next(f for f in drive.destination().list({"partName": "bucket-photos"}))
    half = stored.size // 2
    prefix = b"".join(drive.destination().get(stored.id, 0, half))
    (out / (target.name + ".partial")).write_bytes(prefix)
    sent_before = drive.stats().get("download_bytes_sent", 0)
    drive.fault("cut", route="download", after_bytes=100_000)

    env = dict(drive.env(), BACKUP_PIPELINE_INSTALLATION_ID="test-install")  # the fixture's folder name
    code, _, stderr = run(
        ["fetch", "--backup-id", BACKUP, "--part", "bucket-photos", "--to", out], env, monkeypatch
    )
    assert code == 0, stderr
    assert f"resuming at byte {half} of {stored.size}" in stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == records["bucket-photos"].ciphertext_sha256
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [target.name, part_file_name(INSTALLATION, BACKUP, "manifest")]
    )
    sent = drive.stats()["download_bytes_sent"] - sent_before
    # The prefix was not downloaded again; at most the bytes of the cut response were.
    assert sent <= (stored.size - half) + records["manifest"].ciphertext_size + 100_000
    assert drive.stats()["cuts"] == 1


def test_a_file_that_differs_from_the_listing_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "backups"
    put_set(LocalFolderDestination(folder))
    stored_file = folder / part_file_name(INSTALLATION, BACKUP, "database")
    damaged = bytearray(stored_file.read_bytes())
    damaged[1000] ^= 1  # same size: only the checksum can tell
    stored_file.write_bytes(bytes(damaged))
    out = tmp_path / "offline"
    code, _, stderr = run(
        ["fetch", "--backup-id", BACKUP, "--part", "database", "--to", out],
        local_env(folder, tmp_path),
        monkeypatch,
    )
    assert code == 1
    assert "part database: the downloaded" in stderr and "do not match" in stderr and "SHA-256" in stderr
    assert not any(p.name.startswith(f"{INSTALLATION}-{BACKUP}.database") for p in out.iterdir())
    assert "Traceback" not in stderr


def test_with_the_key_a_part_replaced_after_the_backup_is_caught(
    tmp_path: Path, recovery_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "backups"
    dest = LocalFolderDestination(folder)
    put_set(dest)
    put_part(dest, "database", [b"another dump"])  # valid ciphertext, listed correctly, not the backup's
    env = local_env(folder, tmp_path)
    code, _, stderr = run(["fetch", "--backup-id", BACKUP, "--to", tmp_path / "a"], env, monkeypatch)
    assert code == 0, stderr  # the listing alone cannot know
    code, _, stderr = run(
        ["fetch", "--backup-id", BACKUP, "--to", tmp_path / "b", "--recovery-key-file", recovery_key],
        env,
        monkeypatch,
    )
    assert code == 1
    assert "not the ones the manifest recorded: database (size or SHA-256 differ from the manifest)" in stderr


def test_bad_input_and_failures_are_one_line_with_their_exit_code(
    drive: DriveFixture, tmp_path: Path, recovery_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "backups"
    put_set(LocalFolderDestination(folder))
    env = local_env(folder, tmp_path)
    out = tmp_path / "offline"
    cases: list[tuple[list[object], dict[str, str], int, str]] = [
        (["--backup-id", BACKUP, "--part", "bucket-nope"], env, 2, "--part: bucket-nope not in backup"),
        (["--backup-id", "20990101T000000Z-ffffffff"], env, 1, "no backup '20990101T000000Z-ffffffff'"),
        (["--backup-id", BACKUP, "--org-secret-file", recovery_key], env, 2, "key file:"),
        (["--backup-id", BACKUP], dict(env, BACKUP_PIPELINE_RETENTION_KEEP_LAST="-3"), 2, "RETENTION"),
        (
            ["--backup-id", BACKUP],
            dict(
                drive.env(DriveAuthMode.SHARED_DRIVE), BACKUP_PIPELINE_DRIVE_SHARED_DRIVE_ID="0AnoSuchDrive"
            ),
            1,
            "is not a member of it",
        ),
    ]
    for args, case_env, expected, text in cases:
        code, stdout, stderr = run(["fetch", "--to", out, *args], case_env, monkeypatch)
        assert code == expected, (args, stdout, stderr)
        assert text in stderr, stderr
        assert "Traceback" not in stderr + stdout
    (tmp_path / "a-file").write_text("x")
    code, _, stderr = run(["fetch", "--backup-id", BACKUP, "--to", tmp_path / "a-file"], env, monkeypatch)
    assert code == 2 and "--to" in stderr


def test_fetch_and_restore_declare_the_destination_and_key_options_once() -> None:
    """One decorator (cli/destination_options.py); on main each command declared its own copy,
    and they had drifted (help texts, whether a key file must be readable)."""
    shared = ("destination_kind", "local_path", "installation_id", "recovery_key_file", "org_secret_file")
    fetch, restore = (
        {p.name: p for p in main.commands[name].params if p.name in shared} for name in ("fetch", "restore")
    )
    assert set(fetch) == set(restore) == set(shared)
    for name in ("destination_kind", "local_path", "installation_id"):
        assert fetch[name].to_info_dict() == restore[name].to_info_dict(), name
    for name in ("recovery_key_file", "org_secret_file"):
        assert fetch[name].type.to_info_dict() == restore[name].type.to_info_dict(), name
        assert fetch[name].type.to_info_dict()["readable"] is True
