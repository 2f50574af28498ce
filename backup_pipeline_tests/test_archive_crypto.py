"""The encrypted container against the adversarial cases of the design note (backup-format.md).

Chunks are 64 KiB (the smallest allowed) so every boundary case stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import pytest

from backup_pipeline.archive import errors as e
from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity
from backup_pipeline.archive.stream_crypto import (
    MAX_STANZAS,
    TAG_SIZE,
    decrypt_stream,
    encrypt_stream,
    read_header,
)

LOG2 = 16
C = 1 << LOG2
SEALED = C + TAG_SIZE
BACKUP = "b-20260101-0001"
PART = "database"

ORG = OrgKeyring([("k1", bytes(range(32)))])
RECOVERY = RecoveryIdentity(bytes(range(32, 64)))


def encrypt(data: bytes, *, backup_id: str = BACKUP, part: str = PART, keyring: OrgKeyring = ORG) -> bytes:
    return b"".join(
        encrypt_stream(
            [data],
            backup_id=backup_id,
            part_name=part,
            org_keyring=keyring,
            recovery_public_key=RECOVERY.public_key,
            chunk_size_log2=LOG2,
        )
    )


def header_size(part: bytes) -> int:
    return read_header([part])[0].size


class Collector:
    """Collects what decrypt_stream emitted before it raised."""

    def __init__(self) -> None:
        self.emitted: list[bytes] = []

    def run(self, part: bytes | Iterable[bytes], **kwargs: object) -> bytes:
        chunks = [part] if isinstance(part, bytes) else part
        options: dict[str, object] = {
            "expected_backup_id": BACKUP,
            "expected_part_name": PART,
            "org_keyring": ORG,
        }
        options.update(kwargs)
        for piece in decrypt_stream(chunks, **options):  # type: ignore[arg-type]
            self.emitted.append(piece)
        return b"".join(self.emitted)

    @property
    def data(self) -> bytes:
        return b"".join(self.emitted)


def decrypt(part: bytes | Iterable[bytes], **kwargs: object) -> bytes:
    return Collector().run(part, **kwargs)


def split(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def chunks_of(part: bytes) -> tuple[bytes, list[bytes]]:
    size = header_size(part)
    payload = part[size:]
    return part[:size], [payload[i : i + SEALED] for i in range(0, len(payload), SEALED)]


# 1. round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, C - 1, C, C + 1, 3 * C])
@pytest.mark.parametrize("key", ["org", "recovery"])
def test_round_trip(size: int, key: str) -> None:
    data = os.urandom(size)
    part = encrypt(data)
    keys = {"org_keyring": ORG} if key == "org" else {"org_keyring": None, "recovery_identity": RECOVERY}
    # Odd input chunking must not matter.
    assert decrypt(split(part, 7777), **keys) == data
    expected_chunks = max(1, -(-size // C))
    assert len(part) == header_size(part) + size + expected_chunks * TAG_SIZE


def test_input_chunking_does_not_change_the_chunk_layout() -> None:
    data = os.urandom(3 * C + 5)
    part = b"".join(
        encrypt_stream(
            split(data, 1000),
            backup_id=BACKUP,
            part_name=PART,
            org_keyring=ORG,
            recovery_public_key=None,
            chunk_size_log2=LOG2,
        )
    )
    assert len(part) - header_size(part) == len(data) + 4 * TAG_SIZE
    assert decrypt(part) == data


# 2./3. truncation ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [C, 3 * C, 3 * C + 100])
def test_truncation_at_every_chunk_boundary(size: int) -> None:
    data = os.urandom(size)
    part = encrypt(data)
    header, chunks = chunks_of(part)
    for kept in range(len(chunks)):
        truncated = header + b"".join(chunks[:kept])
        collector = Collector()
        with pytest.raises(e.TruncatedError):
            collector.run(truncated)
        # Everything emitted is authentic plaintext, and nothing past the cut.
        assert collector.data == data[: kept * C]


def test_truncation_mid_chunk_emits_nothing_of_the_partial_chunk() -> None:
    data = os.urandom(3 * C)
    part = encrypt(data)
    hsize = header_size(part)
    for cut in (hsize + 1, hsize + SEALED // 2, hsize + SEALED + 17, len(part) - 1):
        collector = Collector()
        with pytest.raises(e.TruncatedError):
            collector.run(part[:cut])
        complete_chunks = (cut - hsize) // SEALED
        assert collector.data == data[: complete_chunks * C]


def test_truncation_inside_the_header_and_at_zero_bytes() -> None:
    part = encrypt(b"hello")
    with pytest.raises(e.HeaderTruncatedError, match="empty"):
        decrypt(b"")
    for cut in (1, 7, 8, 20, header_size(part) - 1):
        with pytest.raises(e.HeaderTruncatedError):
            decrypt(part[:cut])


# 4. swapped, duplicated, dropped chunks ----------------------------------------------------------


def test_swapped_duplicated_and_dropped_chunks_fail_at_the_first_bad_position() -> None:
    data = os.urandom(4 * C + 10)
    header, chunks = chunks_of(encrypt(data))
    cases = {
        "swapped": ([*chunks[:1], chunks[2], chunks[1], *chunks[3:]], 1),
        "duplicated": ([*chunks[:2], chunks[1], *chunks[2:]], 2),
        "dropped": (chunks[:2] + chunks[3:], 2),
    }
    for name, (layout, bad_index) in cases.items():
        collector = Collector()
        with pytest.raises(e.ChunkTamperedError) as info:
            collector.run(header + b"".join(layout))
        assert info.value.index == bad_index, name
        assert collector.data == data[: bad_index * C], name


# 5. trailing data -------------------------------------------------------------------------------


@pytest.mark.parametrize("extra_kind", ["1", "16", "C+16", "copy of final"])
def test_trailing_bytes_after_a_full_size_final_chunk(extra_kind: str) -> None:
    data = os.urandom(3 * C)
    part = encrypt(data)
    final = chunks_of(part)[1][-1]
    extra = {"1": b"\0", "16": os.urandom(16), "C+16": os.urandom(SEALED), "copy of final": final}[extra_kind]
    collector = Collector()
    with pytest.raises(e.TrailingDataError):
        collector.run(part + extra)
    # The final chunk is never emitted when something follows it.
    assert collector.data == data[: 2 * C]


@pytest.mark.parametrize("extra", [b"\0", b"x" * 16, b"y" * 200])
def test_trailing_bytes_after_a_short_final_chunk(extra: bytes) -> None:
    data = os.urandom(2 * C + 1000)
    collector = Collector()
    with pytest.raises(e.TrailingDataError):
        collector.run(encrypt(data) + extra)
    assert collector.data == data[: 2 * C]


@pytest.mark.parametrize("extra_kind", ["C+16", "copy of final"])
def test_large_trailing_data_after_a_short_final_chunk_is_rejected(extra_kind: str) -> None:
    # The boundary of a short final chunk cannot be found once more than a chunk follows it;
    # the part is still rejected and nothing unauthenticated is emitted (see BACKUP-FORMAT.md).
    data = os.urandom(2 * C + 1000)
    part = encrypt(data)
    extra = os.urandom(SEALED) if extra_kind == "C+16" else chunks_of(part)[1][-1]
    collector = Collector()
    with pytest.raises((e.TrailingDataError, e.ChunkTamperedError)):
        collector.run(part + extra)
    assert collector.data == data[: 2 * C]


# 6. bit flips ------------------------------------------------------------------------------------


def test_every_header_bit_flipped_is_rejected_before_any_plaintext() -> None:
    data = os.urandom(C + 10)
    part = encrypt(data)
    hsize = header_size(part)
    seen: set[type] = set()
    for bit in range(hsize * 8):
        damaged = bytearray(part)
        damaged[bit // 8] ^= 1 << (bit % 8)
        for keys in ({"org_keyring": ORG}, {"org_keyring": None, "recovery_identity": RECOVERY}):
            collector = Collector()
            with pytest.raises(e.ArchiveError) as info:
                collector.run(bytes(damaged), **keys)
            assert collector.emitted == [], f"bit {bit}"
            seen.add(type(info.value))
    # The MAC catches what the structural checks cannot.
    assert e.HeaderTamperedError in seen


def test_last_header_bytes_flipped_are_header_tampering() -> None:
    part = encrypt(b"data")
    hsize = header_size(part)
    for offset in range(hsize - 40, hsize):
        damaged = bytearray(part)
        damaged[offset] ^= 0x80
        with pytest.raises(e.HeaderTamperedError):
            decrypt(bytes(damaged))


@pytest.mark.parametrize("k", [0, 1, 3])
def test_flipped_byte_in_chunk_k_emits_chunks_before_k_then_fails(k: int) -> None:
    data = os.urandom(3 * C + 123)
    part = bytearray(encrypt(data))
    part[header_size(bytes(part)) + k * SEALED + 100] ^= 0x01
    collector = Collector()
    with pytest.raises(e.ChunkTamperedError) as info:
        collector.run(bytes(part))
    assert info.value.index == k
    assert collector.data == data[: k * C]


# 7. keys ---------------------------------------------------------------------------------------


def test_wrong_org_secret_under_the_same_key_id() -> None:
    part = encrypt(b"secret data")
    with pytest.raises(e.WrongOrgSecretError):
        decrypt(part, org_keyring=OrgKeyring([("k1", os.urandom(32))]))


def test_unknown_org_key_id() -> None:
    part = encrypt(b"secret data")
    with pytest.raises(e.UnknownKeyIdError, match="k1"):
        decrypt(part, org_keyring=OrgKeyring([("k2", os.urandom(32))]))


def test_org_rotation_keeps_old_parts_readable() -> None:
    old_part = encrypt(b"old", keyring=ORG)
    rotated = OrgKeyring([("k1", bytes(range(32))), ("k2", os.urandom(32))])
    new_part = encrypt(b"new", keyring=rotated)
    assert read_header([new_part])[0].stanzas[0].org_key_id == "k2"
    assert decrypt(old_part, org_keyring=rotated) == b"old"
    assert decrypt(new_part, org_keyring=rotated) == b"new"
    with pytest.raises(e.UnknownKeyIdError):
        decrypt(new_part, org_keyring=ORG)


def test_wrong_recovery_key() -> None:
    part = encrypt(b"secret data")
    with pytest.raises(e.WrongRecoveryKeyError):
        decrypt(part, org_keyring=None, recovery_identity=RecoveryIdentity.generate())


def test_recovery_key_typo_prefix_and_length_are_format_errors_not_authentication_errors() -> None:
    text = RECOVERY.to_bech32()
    position = len("BP-RECOVERY-SECRET-1") + 10
    typo = text[:position] + ("Q" if text[position] != "Q" else "P") + text[position + 1 :]
    with pytest.raises(e.RecoveryKeyChecksumError):
        RecoveryIdentity.from_bech32(typo)
    with pytest.raises(e.RecoveryKeyFormatError, match="prefix") as info:
        RecoveryIdentity.from_bech32("AGE-SECRET-KEY-1" + text.split("1", 1)[1])
    assert not isinstance(info.value, e.RecoveryKeyChecksumError)
    with pytest.raises(e.RecoveryKeyFormatError, match="length") as info:
        RecoveryIdentity.from_bech32(text[:-1])
    assert not isinstance(info.value, e.RecoveryKeyChecksumError)
    with pytest.raises(e.RecoveryKeyFormatError, match="public"):
        RecoveryIdentity.from_bech32(RECOVERY.public_key.to_bech32())
    # Key material never appears in the message.
    with pytest.raises(e.RecoveryKeyChecksumError) as checksum_info:
        RecoveryIdentity.from_bech32(typo)
    assert text[25:60] not in str(checksum_info.value)
    assert RecoveryIdentity.from_bech32(text.lower()).public_key == RECOVERY.public_key


def test_part_without_a_matching_stanza() -> None:
    part = b"".join(
        encrypt_stream([b"x"], backup_id=BACKUP, part_name=PART, org_keyring=ORG, recovery_public_key=None)
    )
    with pytest.raises(e.NoMatchingStanzaError):
        decrypt(part, org_keyring=None, recovery_identity=RECOVERY)


# 8. splicing and substitution ------------------------------------------------------------------


def test_header_of_one_part_with_payload_of_another() -> None:
    data_a, data_b = os.urandom(2 * C), os.urandom(2 * C)
    header_a, _ = chunks_of(encrypt(data_a))
    _, chunks_b = chunks_of(encrypt(data_b))
    collector = Collector()
    with pytest.raises(e.ChunkTamperedError) as info:
        collector.run(header_a + b"".join(chunks_b))
    assert info.value.index == 0
    assert collector.emitted == []


def test_chunk_of_one_part_inside_another() -> None:
    data_a, data_b = os.urandom(3 * C), os.urandom(3 * C)
    _, chunks_a = chunks_of(encrypt(data_a))
    header_b, chunks_b = chunks_of(encrypt(data_b))
    collector = Collector()
    with pytest.raises(e.ChunkTamperedError) as info:
        collector.run(header_b + chunks_b[0] + chunks_a[1] + chunks_b[2])
    assert info.value.index == 1
    assert collector.data == data_b[:C]


def test_part_of_another_backup_or_another_part_name_is_refused() -> None:
    other_backup = encrypt(b"x", backup_id="b-other")
    with pytest.raises(e.PartMismatchError, match="b-other"):
        decrypt(other_backup)
    other_part = encrypt(b"x", part="bucket-photos")
    with pytest.raises(e.PartMismatchError, match="bucket-photos"):
        decrypt(other_part)
    assert decrypt(other_part, expected_part_name=None) == b"x"


def test_renaming_the_part_in_the_header_is_tampering() -> None:
    part = encrypt(b"x", part="bucket-aaaa")
    forged = part.replace(b"bucket-aaaa", b"bucket-bbbb", 1)
    with pytest.raises(e.HeaderTamperedError):
        decrypt(forged, expected_part_name="bucket-bbbb")


# 9. resource limits ------------------------------------------------------------------------------


def _patched(part: bytes, offset: int, value: int) -> bytes:
    damaged = bytearray(part)
    damaged[offset] = value
    return bytes(damaged)


def test_absurd_chunk_size_is_rejected_before_allocation() -> None:
    part = encrypt(b"x")
    for value in (0, 15, 23, 63, 255):
        with pytest.raises(e.ResourceLimitError, match="chunk size"):
            decrypt(_patched(part, 10, value))


def test_absurd_stanza_count_and_length_are_rejected() -> None:
    part = encrypt(b"x")
    header = read_header([part])[0]
    count_offset = len(header.fixed_fields)
    for value in (0, MAX_STANZAS + 1, 255):
        with pytest.raises(e.ResourceLimitError, match="stanza count"):
            decrypt(_patched(part, count_offset, value))
    length_offset = count_offset + 2  # type byte, then a big-endian u16 length
    with pytest.raises(e.ResourceLimitError, match="length"):
        decrypt(_patched(part, length_offset, 0xFF))
    with pytest.raises(e.MalformedHeaderError, match="unknown stanza type"):
        decrypt(_patched(part, count_offset + 1, 0x7F))


def test_not_an_archive_and_unsupported_version() -> None:
    part = encrypt(b"x")
    with pytest.raises(e.NotAnArchiveError):
        decrypt(b"PK\x03\x04" + part[4:])
    with pytest.raises(e.UnsupportedVersionError):
        decrypt(_patched(part, 8, 2))


def test_stream_does_not_read_ahead_more_than_a_chunk() -> None:
    consumed = 0

    def counting(source: Iterable[bytes]) -> Iterator[bytes]:
        nonlocal consumed
        for piece in source:
            consumed += len(piece)
            yield piece

    data = os.urandom(10 * C)
    part = encrypt(data)
    plaintext = decrypt_stream(
        counting(split(part, 4096)), expected_backup_id=BACKUP, expected_part_name=PART, org_keyring=ORG
    )
    first = next(plaintext)
    assert first == data[:C]
    assert consumed <= header_size(part) + 2 * SEALED + 4096
