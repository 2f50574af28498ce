"""``backup-pipeline decrypt | verify | inspect``: exit codes, messages, and recovery on a fresh machine.

The fresh-machine test builds the project's wheel and installs it with ``constraints.txt`` into a
new virtual environment (once per session, about 40 s), then decrypts a bucket part and a real
``pg_dump -Fc`` part with nothing but the recovery key.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity
from backup_pipeline.archive.manifest import Manifest, ObjectAnomaly, PartRecord
from backup_pipeline.archive.stream_crypto import encrypt_stream
from backup_pipeline.archive.streams import HashingCounter
from backup_pipeline.archive.tar_parts import SourceObject, write_bucket_archive
from backup_pipeline.cli import main
from backup_pipeline_tests.fixtures.postgres import PgDatabase

ROOT = Path(__file__).resolve().parent.parent
BACKUP = "b-cli-0001"
ORG = OrgKeyring([("k1", bytes(range(32)))])
RECOVERY = RecoveryIdentity(bytes(range(100, 132)))


@pytest.fixture()
def key_files(tmp_path: Path) -> dict[str, Path]:
    org = tmp_path / "org-secret"
    org.write_text("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n")
    recovery = tmp_path / "recovery-key"
    recovery.write_text(RECOVERY.to_bech32() + "\n")
    return {"org": org, "recovery": recovery}


def write_part(path: Path, plaintext: list[bytes], part_name: str) -> PartRecord:
    plain = HashingCounter()
    cipher = HashingCounter(md5=True)
    stream = encrypt_stream(
        plain.wrap(plaintext),
        backup_id=BACKUP,
        part_name=part_name,
        org_keyring=ORG,
        recovery_public_key=RECOVERY.public_key,
    )
    with path.open("wb") as handle:
        for piece in cipher.wrap(stream):
            handle.write(piece)
    kind = "bucket" if part_name.startswith("bucket-") else "database"
    return PartRecord(
        part_name, kind, cipher.size, cipher.sha256_hex, plain.size, plain.sha256_hex, cipher.md5_hex
    )  # type: ignore[arg-type]


def bucket_objects() -> list[SourceObject]:
    return [
        SourceObject("notes/a.txt", 6, "text/plain", open=lambda: [b"hello\n"]),
        SourceObject("img/b.jpg", 4, "image/jpeg", open=lambda: [b"\xff\xd8\xff\x00"]),
    ]


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_decrypt_verify_and_inspect(tmp_path: Path, key_files: dict[str, Path]) -> None:
    part = tmp_path / "bucket-photos.bpa"
    record = write_part(part, list(write_bucket_archive(bucket_objects(), compress_level=6)), "bucket-photos")
    skipped = ObjectAnomaly("photos", "c/../d.jpg", "unreadable", 9, None, "key has a '..' segment")
    manifest = Manifest(
        BACKUP,
        "test",
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:01:00Z",
        {"format": "1"},
        [record],
        anomalies=[skipped],
    )
    manifest_part = tmp_path / "manifest.bpa"
    write_part(manifest_part, [manifest.to_bytes()], "manifest")

    out = tmp_path / "bucket.tar.gz"
    code, _, err = run("decrypt", part, "-o", out, "--recovery-key-file", key_files["recovery"])
    assert code == 0, err
    assert hashlib.sha256(out.read_bytes()).hexdigest() == record.plaintext_sha256
    assert not (tmp_path / "bucket.tar.gz.partial").exists()

    code, stdout, err = run(
        "verify", part, "--manifest", manifest_part, "--org-secret-file", key_files["org"]
    )
    assert code == 0, err
    assert "matches the manifest" in stdout

    code, stdout, _ = run("inspect", part)
    assert code == 0 and "NOT authenticated" in stdout and "bucket-photos" in stdout
    code, stdout, _ = run("inspect", manifest_part, "--recovery-key-file", key_files["recovery"])
    assert code == 0 and "authenticated" in stdout and "part bucket-photos (bucket)" in stdout
    assert "unreadable during backup: photos/c/../d.jpg (key has a '..' segment)" in stdout

    # The wrong part against the manifest, a tampered part, a typo in the key.
    code, _, err = run(
        "decrypt", part, "-o", out, "--part-name", "database", "--org-secret-file", key_files["org"]
    )
    assert code == 1 and "not the expected part" in err
    damaged = bytearray(part.read_bytes())
    damaged[-5] ^= 1
    part.write_bytes(bytes(damaged))
    out.unlink()
    code, _, err = run("decrypt", part, "-o", out, "--org-secret-file", key_files["org"])
    assert code == 1 and "fails authentication" in err
    assert not out.exists() and not (tmp_path / "bucket.tar.gz.partial").exists()
    code, _, err = run("verify", part, "--manifest", manifest_part, "--org-secret-file", key_files["org"])
    assert code == 1
    text = key_files["recovery"].read_text().strip()
    typo = text[:40] + ("Q" if text[40] != "Q" else "P") + text[41:]
    key_files["recovery"].write_text(typo + "\n")
    code, _, err = run("decrypt", part, "-o", out, "--recovery-key-file", key_files["recovery"])
    assert code == 2 and "checksum" in err and typo not in err
    code, _, err = run("decrypt", part, "-o", out)
    assert code == 2 and "a key is needed" in err
    code, _, err = run("decrypt", tmp_path / "missing.bpa", "--org-secret-file", key_files["org"])
    assert code == 2


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new virtual environment with only the project's wheel (+ its constrained dependencies)."""
    base = tmp_path_factory.mktemp("fresh-venv")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(base / "dist"), str(ROOT)],
        check=True,
        timeout=300,
    )
    venv.create(base / "venv", with_pip=True)
    wheel = next((base / "dist").glob("backup_pipeline-*.whl"))
    # No byte-compilation (as test_deployment_image): compiling the install's ~8 000 modules was
    # ~40 % of pip's CPU time; the test runs two `decrypt` commands, which compile what they import.
    subprocess.run(
        [str(base / "venv/bin/pip"), "install", "-q", "-c", str(ROOT / "constraints.txt"), str(wheel)],
        check=True,
        timeout=600,
        env={**os.environ, "PIP_NO_COMPILE": "0"},
    )
    yield base / "venv/bin/backup-pipeline"


def test_recovery_on_a_fresh_machine_with_only_the_recovery_key(
    tmp_path: Path, fresh_venv: Path, pg_database: PgDatabase
) -> None:
    with pg_database.connect() as conn:
        conn.execute("CREATE TABLE recovered (id int primary key, note text)")
        conn.execute("INSERT INTO recovered VALUES (1, 'kept')")
    dump = subprocess.run(
        ["pg_dump", "--format=custom", pg_database.url], capture_output=True, check=True
    ).stdout
    db_part = tmp_path / "database.bpa"
    write_part(db_part, [dump[i : i + 100_000] for i in range(0, len(dump), 100_000)], "database")
    bucket_part = tmp_path / "bucket-photos.bpa"
    write_part(bucket_part, list(write_bucket_archive(bucket_objects(), compress_level=6)), "bucket-photos")
    key = tmp_path / "recovery.txt"
    key.write_text(RECOVERY.to_bech32() + "\n")

    tarball = tmp_path / "photos.tar.gz"
    with tarball.open("wb") as handle:
        subprocess.run(
            [str(fresh_venv), "decrypt", str(bucket_part), "--recovery-key-file", str(key)],
            stdout=handle,
            check=True,
        )
    listing = subprocess.run(
        ["tar", "--warning=no-unknown-keyword", "-tzf", str(tarball)], capture_output=True, check=True
    )
    assert listing.stdout.decode().split() == ["notes/a.txt", "img/b.jpg"]
    target = tmp_path / "extracted"
    target.mkdir()
    subprocess.run(
        ["tar", "--warning=no-unknown-keyword", "-xzf", str(tarball), "-C", str(target)], check=True
    )
    assert (target / "notes/a.txt").read_bytes() == b"hello\n"

    restored = tmp_path / "database.dump"
    subprocess.run(
        [
            str(fresh_venv),
            "decrypt",
            str(db_part),
            "-o",
            str(restored),
            "--recovery-key-file",
            str(key),
            "--part-name",
            "database",
        ],
        check=True,
    )
    assert restored.read_bytes() == dump
    toc = subprocess.run(
        ["pg_restore", "--list", str(restored)], capture_output=True, check=True, text=True
    ).stdout
    assert "TABLE public recovered" in toc
