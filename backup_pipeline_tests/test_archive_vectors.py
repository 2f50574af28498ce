"""The committed test vectors decrypt to their plaintext, and today's encoder reproduces them byte for byte."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity
from backup_pipeline.archive.manifest import MANIFEST_FORMAT_V3, Manifest
from backup_pipeline.archive.part_index import read_index
from backup_pipeline.archive.stream_crypto import decrypt_stream
from backup_pipeline.archive.tar_parts import read_bucket_archive

VECTORS = Path(__file__).parent / "vectors"
INDEX = json.loads((VECTORS / "vectors.json").read_text())


def load_generator() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "scripts" / "make_test_vectors.py"
    spec = importlib.util.spec_from_file_location("make_test_vectors", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("vector", INDEX, ids=[v["name"] for v in INDEX])
def test_vector_decrypts_with_org_secret_and_recovery_key(vector: dict[str, object]) -> None:
    part = (VECTORS / f"{vector['name']}.bpa").read_bytes()
    assert hashlib.sha256(part).hexdigest() == vector["ciphertext_sha256"]
    keys = (
        {"org_keyring": OrgKeyring.from_file(VECTORS / "org-secret.txt")},
        {"recovery_identity": RecoveryIdentity.from_file(VECTORS / "recovery-key.txt")},
    )
    for key in keys:
        plaintext = b"".join(
            decrypt_stream(
                [part[i : i + 4096] for i in range(0, len(part), 4096)],
                expected_backup_id=str(vector["backup_id"]),
                expected_part_name=str(vector["part_name"]),
                **key,  # type: ignore[arg-type]
            )
        )
        assert len(plaintext) == vector["plaintext_size"]
        assert hashlib.sha256(plaintext).hexdigest() == vector["plaintext_sha256"]
        assert plaintext == (VECTORS / f"{vector['name']}.plain").read_bytes()


def test_encoder_reproduces_every_vector_byte_for_byte() -> None:
    generator = load_generator()
    keyring = OrgKeyring.from_file(VECTORS / "org-secret.txt")
    recovery = RecoveryIdentity.from_file(VECTORS / "recovery-key.txt")
    cases = {case["name"]: case for case in generator.vector_cases()}
    cases["sharded-manifest"] = generator.sharded_manifest_case(keyring, recovery)
    assert set(cases) == {v["name"] for v in INDEX}
    for name, case in cases.items():
        # The plaintext of the bucket vector is committed; re-encrypting it must give the same part.
        case["plaintext"] = (VECTORS / f"{name}.plain").read_bytes()
        assert generator.encrypt_case(case, keyring, recovery) == (VECTORS / f"{name}.bpa").read_bytes(), name


def test_the_format_2_vectors_agree_with_the_bucket_vector() -> None:
    """``inventory`` lists exactly the objects of ``bucket`` (key, size, SHA-256 of the body), in key
    order, each in this set's ``bucket-photos``; ``manifest-v2`` is a valid format-2 manifest naming
    that inventory part, with no per-object list of its own."""
    from backup_pipeline.archive.inventory import read_inventory
    from backup_pipeline.archive.manifest import MANIFEST_FORMAT_V2, Manifest
    from backup_pipeline.archive.tar_parts import read_bucket_archive

    records = list(read_inventory([(VECTORS / "inventory.plain").read_bytes()]))
    assert [r.key for r in records] == sorted(r.key for r in records)
    archived = {}
    for entry in read_bucket_archive([(VECTORS / "bucket.plain").read_bytes()]):
        archived[entry.key] = (entry.size, hashlib.sha256(entry.fileobj.read()).hexdigest())
    assert {r.key: (r.size, r.sha256) for r in records} == archived
    assert {(r.backup_id, r.part) for r in records} == {(INDEX[0]["backup_id"], "bucket-photos")}
    manifest = Manifest.from_json((VECTORS / "manifest-v2.plain").read_bytes())
    assert manifest.format == MANIFEST_FORMAT_V2 and manifest.inventory == []
    summary = manifest.bucket("photos")
    assert summary is not None and summary.inventory_part == "inventory-photos" and summary.mode == "full"
    assert summary.total_objects == len(records) and summary.total_bytes == sum(r.size for r in records)


def _open(name: str, part_name: str) -> bytes:
    """The plaintext of vector ``name``, decrypted as part ``part_name`` of the vectors' set."""
    return b"".join(
        decrypt_stream(
            [(VECTORS / f"{name}.bpa").read_bytes()],
            expected_backup_id="vectors-20260101T000000Z",
            expected_part_name=part_name,
            org_keyring=OrgKeyring.from_file(VECTORS / "org-secret.txt"),
        )
    )


def test_the_format_3_vectors_are_one_complete_set_with_a_sharded_bucket() -> None:
    """What an independent reader of BACKUP-FORMAT.md §6.1 checks: the manifest names every
    other sharded-* vector with its real sizes and hashes, the shards tile the key space, each
    shard part holds exactly the inventory's objects of its range, and each shard's index
    (§8) names its part and lists its objects."""
    manifest = Manifest.from_json(_open("sharded-manifest", "manifest"))
    assert manifest.format == MANIFEST_FORMAT_V3
    files = {
        p.name: "sharded-database"
        if p.kind == "database"
        else f"sharded-{int(p.name.rsplit('@', 1)[1])}" + ("-index" if p.kind == "index" else "")
        for p in manifest.parts
    }
    assert sorted(files.values()) == sorted(
        v["name"] for v in INDEX if str(v["name"]).startswith("sharded-") and v["name"] != "sharded-manifest"
    )
    for part in manifest.parts:
        ciphertext = (VECTORS / f"{files[part.name]}.bpa").read_bytes()
        assert (len(ciphertext), hashlib.sha256(ciphertext).hexdigest()) == (
            part.ciphertext_size,
            part.ciphertext_sha256,
        )
        plaintext = _open(files[part.name], part.name)
        assert hashlib.sha256(plaintext).hexdigest() == part.plaintext_sha256

    [bucket] = manifest.buckets
    shards = bucket.shards or []
    assert len(shards) == 2 and shards[0].start_after is None and shards[-1].end is None
    assert shards[0].end == shards[1].start_after == "m"
    inventory = {e.key: e for e in manifest.inventory}
    restored: list[str] = []
    for shard in shards:
        plaintext = _open(files[shard.part_name], shard.part_name)
        keys = []
        for obj in read_bucket_archive([plaintext]):
            body = obj.fileobj.read()
            k = obj.key.encode()
            assert (shard.start_after is None or k > shard.start_after.encode()) and (
                shard.end is None or k <= shard.end.encode()
            ), (obj.key, shard)
            assert hashlib.sha256(body).hexdigest() == inventory[obj.key].sha256
            keys.append(obj.key)
        assert len(keys) == shard.object_count
        assert shard.index_part is not None
        index = list(read_index([_open(files[shard.index_part], shard.index_part)], shard.part_name))
        assert [e.key for e in index] == keys
        restored += keys
    # Every object once, in key order (UTF-8 bytes), "m" in the shard that ends there.
    assert restored == [e.key for e in manifest.inventory] == sorted(inventory, key=str.encode)
    assert "m" in restored[: shards[0].object_count]
