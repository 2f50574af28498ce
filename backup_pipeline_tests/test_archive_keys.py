"""Org keyring, recovery key store, BackupKeysResource, manifest and set completeness."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from backup_pipeline.archive import errors as e
from backup_pipeline.archive.keys import (
    OrgKeyring,
    RecoveryIdentity,
    RecoveryKeyStore,
    generate_org_secret_file,
)
from backup_pipeline.archive.manifest import (
    InventoryEntry,
    Manifest,
    ObjectAnomaly,
    PartRecord,
    StoredPart,
    check_set_complete,
)
from backup_pipeline.archive.stream_crypto import decrypt_stream, encrypt_stream
from backup_pipeline.resources.keys import BackupKeysResource


def test_keyring_file_rotation_and_errors_without_key_material(tmp_path: Path) -> None:
    path = tmp_path / "org"
    first = generate_org_secret_file(path, key_id="k1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = generate_org_secret_file(path, key_id="k2")
    keyring = OrgKeyring.from_file(path)
    assert (first, second, keyring.current_key_id) == ("k1", "k2", "k2")
    assert keyring.key_ids == ["k1", "k2"]
    assert "k1" in repr(keyring) and base64.b64encode(keyring.get("k1").secret).decode() not in repr(keyring)
    with pytest.raises(e.UnknownKeyIdError):
        keyring.get("nope")

    secret_text = base64.b64encode(os.urandom(31)).decode()
    bad = tmp_path / "bad"
    for content, rule in [
        (f"k1:{secret_text}\n", "31 bytes"),
        ("k1 no colon\n", "line 1"),
        ("bad id!:AAAA\n", "invalid key id"),
        ("k1:not base64!!\n", "base64"),
        ("# only a comment\n", "no `<key id>"),
    ]:
        bad.write_text(content)
        with pytest.raises(e.KeyringFormatError, match=rule) as info:
            OrgKeyring.from_file(bad)
        assert secret_text not in str(info.value)
    with pytest.raises(e.KeyringFormatError, match="twice"):
        OrgKeyring([("a", bytes(32)), ("a", bytes(32))])


def test_recovery_store_lifecycle(tmp_path: Path) -> None:
    generate_org_secret_file(tmp_path / "org", key_id="k1")
    keyring = OrgKeyring.from_file(tmp_path / "org")
    store = RecoveryKeyStore(tmp_path / "state", keyring)
    with pytest.raises(e.RecoveryKeyStoreError, match="set up"):
        store.public_key()
    public = store.ensure()
    assert store.ensure() == public == store.public_key()
    assert store.status().secret_held
    stored_text = store.path.read_text()
    assert public.to_bech32() in stored_text

    # The org secret rotates; the held recovery secret stays exportable (wrapped under k1).
    generate_org_secret_file(tmp_path / "org", key_id="k2")
    store = RecoveryKeyStore(tmp_path / "state", OrgKeyring.from_file(tmp_path / "org"))
    part = b"".join(
        encrypt_stream(
            [b"data"], backup_id="b1", part_name="database", org_keyring=None, recovery_public_key=public
        )
    )
    secret = store.export_secret()
    assert secret.startswith("BP-RECOVERY-SECRET-1") and secret not in stored_text
    assert secret not in store.path.read_text()
    identity = RecoveryIdentity.from_bech32(secret)
    assert (
        b"".join(
            decrypt_stream(
                [part], expected_backup_id="b1", expected_part_name="database", recovery_identity=identity
            )
        )
        == b"data"
    )
    with pytest.raises(e.RecoverySecretAlreadyExportedError):
        store.export_secret()
    status = store.status()
    assert not status.secret_held and status.exported_at

    new_public = store.rotate()
    assert new_public != public and store.public_key() == new_public
    assert set(store.public_keys()) == {public.key_id, new_public.key_id}
    assert store.status().previous_key_ids == [public.key_id] and store.status().secret_held
    # The old secret still opens old parts; it cannot open parts made for the new key.
    new_part = b"".join(
        encrypt_stream(
            [b"new"], backup_id="b2", part_name="database", org_keyring=None, recovery_public_key=new_public
        )
    )
    with pytest.raises(e.WrongRecoveryKeyError):
        list(
            decrypt_stream(
                [new_part], expected_backup_id="b2", expected_part_name="database", recovery_identity=identity
            )
        )


def test_recovery_store_with_the_wrong_org_secret_fails_clearly(tmp_path: Path) -> None:
    store = RecoveryKeyStore(tmp_path, OrgKeyring([("k1", os.urandom(32))]))
    store.ensure()
    other = RecoveryKeyStore(tmp_path, OrgKeyring([("k1", os.urandom(32))]))
    with pytest.raises(e.RecoveryKeyStoreError, match="cannot be unwrapped"):
        other.export_secret()
    assert store.status().secret_held  # a failed export erases nothing


def test_backup_keys_resource_creates_the_pair_on_first_use(tmp_path: Path) -> None:
    generate_org_secret_file(tmp_path / "org", key_id="k1")
    resource = BackupKeysResource(org_secret_file=str(tmp_path / "org"), state_dir=str(tmp_path / "state"))
    public = resource.recovery_public_key()
    assert resource.recovery_public_key() == public
    assert resource.keyring().current_key_id == "k1"


def manifest() -> Manifest:
    return Manifest(
        backup_id="b1",
        installation="prod",
        started_at="2026-01-01T00:00:00+00:00",
        finished_at="2026-01-01T00:10:00+00:00",
        versions={"pg_server": "15.8", "pg_dump": "15.8", "format": "1"},
        parts=[
            PartRecord("database", "database", 100, "a" * 64, 90, "b" * 64, ciphertext_md5="c" * 32),
            PartRecord("bucket-photos", "bucket", 200, "d" * 64, 190, "e" * 64, bucket="photos"),
        ],
        inventory=[InventoryEntry("photos", "x.jpg", 10, "f" * 64)],
        anomalies=[ObjectAnomaly("photos", "y.jpg", "vanished", 5, None)],
    )


def test_manifest_json_round_trip_and_schema_errors() -> None:
    original = manifest()
    assert Manifest.from_json(original.to_json()) == original
    with pytest.raises(e.ManifestError, match="format"):
        Manifest.from_json('{"format": "other"}')
    broken = original.to_json().replace("a" * 64, "xyz")
    with pytest.raises(e.ManifestError, match="ciphertext_sha256"):
        Manifest.from_json(broken)
    with pytest.raises(e.ManifestError, match="schema"):
        Manifest.from_json(original.to_json().replace('"kind": "database"', '"kind": "database", "extra": 1'))


def test_manifest_anomaly_detail_is_absent_when_none_and_kinds_are_checked() -> None:
    original = manifest()
    original.anomalies.append(
        ObjectAnomaly("photos", "b/../c", "unreadable", 7, None, "key has a '..' segment")
    )
    document = json.loads(original.to_json())
    assert document["anomalies"] == [
        {"bucket": "photos", "key": "y.jpg", "kind": "vanished", "declared_size": 5, "actual_size": None},
        {
            "bucket": "photos",
            "key": "b/../c",
            "kind": "unreadable",
            "declared_size": 7,
            "actual_size": None,
            "detail": "key has a '..' segment",
        },
    ]
    assert Manifest.from_json(original.to_json()) == original
    with pytest.raises(e.ManifestError, match="kind must be one of"):
        Manifest.from_json(original.to_json().replace('"unreadable"', '"lost"'))


def test_set_completeness_names_missing_unexpected_and_mismatched_parts() -> None:
    m = manifest()
    good = [
        StoredPart("database", 100, md5="c" * 32),
        StoredPart("bucket-photos", 200, "d" * 64),
        StoredPart("manifest", 5),
    ]
    assert check_set_complete(m, good).complete
    result = check_set_complete(m, [StoredPart("database", 100), StoredPart("bucket-other", 1)])
    assert not result.complete
    assert result.missing == ["bucket-photos"] and result.unexpected == ["bucket-other"]
    assert "missing parts: bucket-photos" in result.describe()
    mismatched = check_set_complete(
        m, [StoredPart("database", 101), StoredPart("bucket-photos", 200, "0" * 64)]
    )
    assert set(mismatched.mismatched) == {"database", "bucket-photos"}
    no_manifest = check_set_complete(None, good)
    assert not no_manifest.complete and no_manifest.missing == ["manifest"]


def test_a_mistyped_case_is_reported_as_a_typo() -> None:
    from backup_pipeline.archive.errors import RecoveryKeyFormatError
    from backup_pipeline.archive.keys import RecoveryIdentity

    good = RecoveryIdentity.generate().to_bech32()
    assert good == good.upper()
    position = next(i for i in range(len(good) - 1, 0, -1) if good[i].isalpha())
    mistyped = good[:position] + good[position].lower() + good[position + 1 :]
    with pytest.raises(RecoveryKeyFormatError, match="typo"):
        RecoveryIdentity.from_bech32(mistyped)
