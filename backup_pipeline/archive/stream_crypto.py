"""The encrypted container: an authenticated header + the STREAM construction over AES-256-GCM.

Byte layout, key schedule and chunk rules are specified in ``docs/architecture/BACKUP-FORMAT.md``;
the constants below are that spec. Decryption emits a chunk's plaintext only after its GCM tag
verified (``AESGCM.decrypt`` checks the tag before returning), and raises a distinct
:mod:`~backup_pipeline.archive.errors` class for each way a part can be wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backup_pipeline.archive.errors import (
    ArchiveError,
    ChunkTamperedError,
    HeaderTamperedError,
    HeaderTruncatedError,
    IncompleteChunkError,
    MalformedHeaderError,
    NoMatchingStanzaError,
    NotAnArchiveError,
    PartMismatchError,
    ResourceLimitError,
    TrailingDataError,
    TruncatedError,
    UnknownKeyIdError,
    UnsupportedVersionError,
    WrongOrgSecretError,
    WrongRecoveryKeyError,
)
from backup_pipeline.archive.kdf import hkdf_sha256
from backup_pipeline.archive.keys import (
    KEY_ID_PATTERN,
    OrgKeyring,
    RecoveryIdentity,
    RecoveryPublicKey,
)

MAGIC = b"\x89BPA\r\n\x1a\n"
FORMAT_VERSION = 1
SUITE_AES256GCM_HKDF_SHA256_X25519 = 1
MIN_CHUNK_SIZE_LOG2 = 16
MAX_CHUNK_SIZE_LOG2 = 22
DEFAULT_CHUNK_SIZE_LOG2 = 20
MAX_STANZAS = 8
MAX_NAME_BYTES = 128
SALT_SIZE = 32
DEK_SIZE = 32
TAG_SIZE = 16
MAC_SIZE = 32
FINGERPRINT_SIZE = 8
WRAPPED_DEK_SIZE = DEK_SIZE + TAG_SIZE
STANZA_ORG = 0x01
STANZA_X25519 = 0x02
X25519_STANZA_SIZE = FINGERPRINT_SIZE + 32 + WRAPPED_DEK_SIZE
MAX_ORG_STANZA_SIZE = 1 + 64 + FINGERPRINT_SIZE + WRAPPED_DEK_SIZE
# How many trailing bytes after a short final chunk we try to strip to report "trailing data"
# rather than "incomplete chunk" (each try is one AES-GCM open of at most a chunk).
_TRAILING_PROBE = 256
_ZERO_NONCE = bytes(12)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=/-]{0,127}$")

_INFO_ORG = b"backup_pipeline v1 org-stanza|"
_INFO_X25519 = b"backup_pipeline v1 x25519-stanza"
_INFO_MAC = b"backup_pipeline v1 header-mac"
_INFO_PAYLOAD = b"backup_pipeline v1 payload|"


@dataclass(frozen=True)
class Stanza:
    kind: int
    body: bytes

    @property
    def org_key_id(self) -> str | None:
        if self.kind != STANZA_ORG:
            return None
        return self.body[1 : 1 + self.body[0]].decode("ascii")

    @property
    def fingerprint(self) -> bytes:
        if self.kind == STANZA_ORG:
            start = 1 + self.body[0]
            return self.body[start : start + FINGERPRINT_SIZE]
        return self.body[:FINGERPRINT_SIZE]

    @property
    def wrapped_dek(self) -> bytes:
        return self.body[-WRAPPED_DEK_SIZE:]

    def describe(self) -> str:
        if self.kind == STANZA_ORG:
            return f"org secret, key id {self.org_key_id}"
        return f"recovery key {self.fingerprint.hex()} (X25519)"


@dataclass(frozen=True)
class ArchiveHeader:
    """A parsed header. Until :func:`open_header` checked its MAC, no field may be trusted."""

    version: int
    suite: int
    chunk_size_log2: int
    backup_id: str
    part_name: str
    salt: bytes
    stanzas: tuple[Stanza, ...]
    fixed_fields: bytes
    raw: bytes

    @property
    def chunk_size(self) -> int:
        return 1 << self.chunk_size_log2

    @property
    def size(self) -> int:
        return len(self.raw)


def _chunk_nonce(index: int, final: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def _check_name(value: str, field_name: str) -> bytes:
    encoded = value.encode("utf-8")
    if not NAME_PATTERN.match(value) or len(encoded) > MAX_NAME_BYTES:
        raise ValueError(
            f"{field_name} {value!r} is invalid: 1-128 characters from A-Z a-z 0-9 . _ : @ + = / -, "
            "starting with a letter or digit"
        )
    return encoded


def _payload_key(dek: bytes, header: ArchiveHeader) -> bytes:
    return hkdf_sha256(dek, header.salt, _INFO_PAYLOAD + header.fixed_fields)


def _mac_key(dek: bytes, salt: bytes) -> bytes:
    return hkdf_sha256(dek, salt, _INFO_MAC)


def _org_wrap_key(secret: bytes, salt: bytes, key_id: str) -> bytes:
    return hkdf_sha256(secret, salt, _INFO_ORG + key_id.encode("ascii"))


def _x25519_wrap_key(shared: bytes, ephemeral_public: bytes, recipient_public: bytes) -> bytes:
    return hkdf_sha256(shared, ephemeral_public + recipient_public, _INFO_X25519)


def _fixed_fields(backup_id: bytes, part_name: bytes, chunk_size_log2: int, salt: bytes) -> bytes:
    return b"".join(
        [
            MAGIC,
            bytes([FORMAT_VERSION, SUITE_AES256GCM_HKDF_SHA256_X25519, chunk_size_log2, 0]),
            bytes([len(backup_id)]),
            backup_id,
            bytes([len(part_name)]),
            part_name,
            salt,
        ]
    )


def build_header(
    *,
    dek: bytes,
    backup_id: str,
    part_name: str,
    chunk_size_log2: int,
    org_keyring: OrgKeyring | None,
    recovery_public_keys: Sequence[RecoveryPublicKey],
    rng: Callable[[int], bytes] = os.urandom,
) -> ArchiveHeader:
    if not MIN_CHUNK_SIZE_LOG2 <= chunk_size_log2 <= MAX_CHUNK_SIZE_LOG2:
        raise ValueError(f"chunk_size_log2 must be in {MIN_CHUNK_SIZE_LOG2}..{MAX_CHUNK_SIZE_LOG2}")
    if org_keyring is None and not recovery_public_keys:
        raise ValueError("a part needs at least one key holder (org keyring or recovery public key)")
    backup_id_bytes = _check_name(backup_id, "backup_id")
    part_name_bytes = _check_name(part_name, "part_name")
    salt = rng(SALT_SIZE)
    fixed = _fixed_fields(backup_id_bytes, part_name_bytes, chunk_size_log2, salt)
    stanzas: list[Stanza] = []
    if org_keyring is not None:
        org_key = org_keyring.current
        key_id = org_key.key_id.encode("ascii")
        wrapped = AESGCM(_org_wrap_key(org_key.secret, salt, org_key.key_id)).encrypt(_ZERO_NONCE, dek, fixed)
        stanzas.append(Stanza(STANZA_ORG, bytes([len(key_id)]) + key_id + org_key.fingerprint + wrapped))
    for recipient in recovery_public_keys:
        ephemeral = X25519PrivateKey.from_private_bytes(rng(32))
        ephemeral_public = ephemeral.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        shared = ephemeral.exchange(recipient.key)
        wrapped = AESGCM(_x25519_wrap_key(shared, ephemeral_public, recipient.raw)).encrypt(
            _ZERO_NONCE, dek, fixed
        )
        stanzas.append(Stanza(STANZA_X25519, recipient.fingerprint + ephemeral_public + wrapped))
    if len(stanzas) > MAX_STANZAS:
        raise ValueError(f"at most {MAX_STANZAS} key holders per part")
    body = bytearray(fixed)
    body.append(len(stanzas))
    for stanza in stanzas:
        body += struct.pack(">BH", stanza.kind, len(stanza.body)) + stanza.body
    body += hmac.new(_mac_key(dek, salt), bytes(body), hashlib.sha256).digest()
    return ArchiveHeader(
        version=FORMAT_VERSION,
        suite=SUITE_AES256GCM_HKDF_SHA256_X25519,
        chunk_size_log2=chunk_size_log2,
        backup_id=backup_id,
        part_name=part_name,
        salt=salt,
        stanzas=tuple(stanzas),
        fixed_fields=fixed,
        raw=bytes(body),
    )


def encrypt_stream(
    plaintext: Iterable[bytes],
    *,
    backup_id: str,
    part_name: str,
    org_keyring: OrgKeyring | None,
    recovery_public_key: RecoveryPublicKey | Sequence[RecoveryPublicKey] | None,
    chunk_size_log2: int = DEFAULT_CHUNK_SIZE_LOG2,
    rng: Callable[[int], bytes] = os.urandom,
) -> Iterator[bytes]:
    """Encrypt a stream of byte chunks into a part: the header, then one sealed chunk per ``2**chunk_size_log2`` bytes.

    ``rng`` exists for the committed test vectors only; production code keeps ``os.urandom``.
    Memory: about two chunks.
    """
    if recovery_public_key is None:
        recipients: list[RecoveryPublicKey] = []
    elif isinstance(recovery_public_key, RecoveryPublicKey):
        recipients = [recovery_public_key]
    else:
        recipients = list(recovery_public_key)
    dek = rng(DEK_SIZE)
    header = build_header(
        dek=dek,
        backup_id=backup_id,
        part_name=part_name,
        chunk_size_log2=chunk_size_log2,
        org_keyring=org_keyring,
        recovery_public_keys=recipients,
        rng=rng,
    )
    return _encrypt_payload(plaintext, header, AESGCM(_payload_key(dek, header)))


def _encrypt_payload(plaintext: Iterable[bytes], header: ArchiveHeader, aead: AESGCM) -> Iterator[bytes]:
    yield header.raw
    chunk_size = header.chunk_size
    pending = bytearray()
    index = 0
    for piece in plaintext:
        if not piece:
            continue
        pending += piece
        # Keep at least one byte back: the final chunk must be non-empty unless the whole stream is.
        while len(pending) > chunk_size:
            yield aead.encrypt(_chunk_nonce(index, False), bytes(pending[:chunk_size]), None)
            del pending[:chunk_size]
            index += 1
    yield aead.encrypt(_chunk_nonce(index, True), bytes(pending), None)


# --- reading ------------------------------------------------------------------------------------


class _ByteSource:
    """A pull buffer over an iterator of chunks."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._iter = iter(chunks)
        self.buffer = bytearray()
        self.consumed = 0

    def fill(self, wanted: int) -> int:
        while len(self.buffer) < wanted:
            try:
                piece = next(self._iter)
            except StopIteration:
                break
            self.buffer += piece
        return len(self.buffer)

    def take(self, count: int) -> bytes:
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        self.consumed += len(data)
        return data

    def remaining(self) -> Iterator[bytes]:
        if self.buffer:
            data = bytes(self.buffer)
            self.buffer.clear()
            yield data
        yield from self._iter


def _need(source: _ByteSource, offset: int, count: int, what: str) -> None:
    if source.fill(offset + count) < offset + count:
        raise HeaderTruncatedError(
            f"the data ends inside the header ({len(source.buffer)} bytes, while reading {what})"
        )


def parse_header(source: _ByteSource) -> ArchiveHeader:
    """Parse (without authenticating) the header at the start of ``source``; consume it."""
    available = source.fill(len(MAGIC))
    if available == 0:
        raise HeaderTruncatedError("the part is empty (0 bytes)")
    prefix = bytes(source.buffer[: len(MAGIC)])
    if prefix != MAGIC[: len(prefix)]:
        raise NotAnArchiveError("not a backup_pipeline archive part (bad magic bytes)")
    if available < len(MAGIC):
        raise HeaderTruncatedError(f"the data ends inside the header ({available} bytes)")
    _need(source, 8, 5, "the fixed fields")
    buf = source.buffer
    version, suite, chunk_size_log2, reserved, backup_id_len = buf[8], buf[9], buf[10], buf[11], buf[12]
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"format version {version} is not supported (this program reads {FORMAT_VERSION})"
        )
    if suite != SUITE_AES256GCM_HKDF_SHA256_X25519:
        raise UnsupportedVersionError(f"cipher suite {suite} is not supported")
    if not MIN_CHUNK_SIZE_LOG2 <= chunk_size_log2 <= MAX_CHUNK_SIZE_LOG2:
        raise ResourceLimitError(
            f"chunk size 2**{chunk_size_log2} is outside the allowed 2**{MIN_CHUNK_SIZE_LOG2}..2**{MAX_CHUNK_SIZE_LOG2}"
        )
    if reserved != 0:
        raise MalformedHeaderError("reserved header byte is not zero")
    offset = 13
    names: list[str] = []
    for what, length in (("backup id", backup_id_len), ("part name", None)):
        if length is None:
            _need(source, offset, 1, what + " length")
            length = buf[offset]
            offset += 1
        if not 1 <= length <= MAX_NAME_BYTES:
            raise ResourceLimitError(f"{what} length {length} is outside 1..{MAX_NAME_BYTES}")
        _need(source, offset, length, what)
        try:
            name = bytes(buf[offset : offset + length]).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedHeaderError(f"{what} is not UTF-8") from None
        if not NAME_PATTERN.match(name):
            raise MalformedHeaderError(f"{what} has characters the format does not allow")
        names.append(name)
        offset += length
    _need(source, offset, SALT_SIZE + 1, "salt and stanza count")
    salt = bytes(buf[offset : offset + SALT_SIZE])
    offset += SALT_SIZE
    fixed = bytes(buf[:offset])
    stanza_count = buf[offset]
    offset += 1
    if not 1 <= stanza_count <= MAX_STANZAS:
        raise ResourceLimitError(f"stanza count {stanza_count} is outside 1..{MAX_STANZAS}")
    stanzas: list[Stanza] = []
    for number in range(stanza_count):
        _need(source, offset, 3, f"stanza {number}")
        kind, length = struct.unpack_from(">BH", buf, offset)
        offset += 3
        if kind == STANZA_ORG:
            if not 1 + 1 + FINGERPRINT_SIZE + WRAPPED_DEK_SIZE <= length <= MAX_ORG_STANZA_SIZE:
                raise ResourceLimitError(f"stanza {number}: org stanza length {length} is out of range")
        elif kind == STANZA_X25519:
            if length != X25519_STANZA_SIZE:
                raise ResourceLimitError(
                    f"stanza {number}: X25519 stanza length {length} != {X25519_STANZA_SIZE}"
                )
        else:
            raise MalformedHeaderError(f"stanza {number}: unknown stanza type {kind}")
        _need(source, offset, length, f"stanza {number}")
        body = bytes(buf[offset : offset + length])
        if kind == STANZA_ORG:
            key_id_len = body[0]
            if 1 + key_id_len + FINGERPRINT_SIZE + WRAPPED_DEK_SIZE != length:
                raise MalformedHeaderError(
                    f"stanza {number}: org key id length does not match the stanza length"
                )
            try:
                key_id = body[1 : 1 + key_id_len].decode("ascii")
            except UnicodeDecodeError:
                raise MalformedHeaderError(f"stanza {number}: org key id is not ASCII") from None
            if not KEY_ID_PATTERN.match(key_id):
                raise MalformedHeaderError(
                    f"stanza {number}: org key id has characters the format does not allow"
                )
        stanzas.append(Stanza(kind, body))
        offset += length
    _need(source, offset, MAC_SIZE, "header MAC")
    offset += MAC_SIZE
    raw = source.take(offset)
    return ArchiveHeader(
        version=version,
        suite=suite,
        chunk_size_log2=chunk_size_log2,
        backup_id=names[0],
        part_name=names[1],
        salt=salt,
        stanzas=tuple(stanzas),
        fixed_fields=fixed,
        raw=raw,
    )


def read_header(ciphertext: Iterable[bytes]) -> tuple[ArchiveHeader, Iterator[bytes]]:
    """Parse the header (unauthenticated, for ``inspect``); returns it and the rest of the stream."""
    source = _ByteSource(ciphertext)
    header = parse_header(source)
    return header, source.remaining()


def _unwrap_dek(
    header: ArchiveHeader, org_keyring: OrgKeyring | None, recovery_identity: RecoveryIdentity | None
) -> bytes:
    problems: list[ArchiveError] = []
    if org_keyring is not None:
        org_stanzas = [s for s in header.stanzas if s.kind == STANZA_ORG]
        for stanza in org_stanzas:
            key_id = stanza.org_key_id
            assert key_id is not None
            if key_id not in org_keyring:
                continue
            org_key = org_keyring.get(key_id)
            if not hmac.compare_digest(stanza.fingerprint, org_key.fingerprint):
                problems.append(
                    WrongOrgSecretError(
                        f"the org secret under key id {key_id!r} is not the one this part was encrypted with"
                    )
                )
                continue
            try:
                return AESGCM(_org_wrap_key(org_key.secret, header.salt, key_id)).decrypt(
                    _ZERO_NONCE, stanza.wrapped_dek, header.fixed_fields
                )
            except InvalidTag:
                raise HeaderTamperedError(
                    f"the data key in the org stanza (key id {key_id!r}) fails authentication: the header was modified"
                ) from None
        if not problems and org_stanzas:
            ids = ", ".join(repr(s.org_key_id) for s in org_stanzas)
            problems.append(
                UnknownKeyIdError(
                    f"the part was encrypted under org key id {ids}, which the keyring does not hold "
                    f"(it has: {', '.join(org_keyring.key_ids)})"
                )
            )
    if recovery_identity is not None:
        recovery_stanzas = [s for s in header.stanzas if s.kind == STANZA_X25519]
        for stanza in recovery_stanzas:
            if not hmac.compare_digest(stanza.fingerprint, recovery_identity.public_key.fingerprint):
                continue
            ephemeral_public = stanza.body[FINGERPRINT_SIZE : FINGERPRINT_SIZE + 32]
            try:
                shared = recovery_identity.exchange(ephemeral_public)
                return AESGCM(
                    _x25519_wrap_key(shared, ephemeral_public, recovery_identity.public_key.raw)
                ).decrypt(_ZERO_NONCE, stanza.wrapped_dek, header.fixed_fields)
            except (InvalidTag, ValueError):
                raise HeaderTamperedError(
                    "the data key in the recovery stanza fails authentication: the header was modified"
                ) from None
        if recovery_stanzas:
            made_for = ", ".join(s.fingerprint.hex() for s in recovery_stanzas)
            problems.append(
                WrongRecoveryKeyError(
                    f"this recovery key ({recovery_identity.public_key.key_id}) is not the one the part was "
                    f"encrypted to (recovery key id {made_for}); a newer or older recovery key is needed"
                )
            )
    if problems:
        raise problems[0]
    kinds = ", ".join(s.describe() for s in header.stanzas)
    raise NoMatchingStanzaError(
        f"none of the supplied keys can open this part; it can be opened with: {kinds}"
    )


def open_header(
    header: ArchiveHeader,
    *,
    org_keyring: OrgKeyring | None = None,
    recovery_identity: RecoveryIdentity | None = None,
    expected_backup_id: str | None = None,
    expected_part_name: str | None = None,
) -> AESGCM:
    """Unwrap the data key, check the header MAC, then the backup id / part name; return the payload AEAD."""
    if org_keyring is None and recovery_identity is None:
        raise ValueError("decrypting needs an org keyring or a recovery identity")
    dek = _unwrap_dek(header, org_keyring, recovery_identity)
    mac = hmac.new(_mac_key(dek, header.salt), header.raw[:-MAC_SIZE], hashlib.sha256).digest()
    if not hmac.compare_digest(mac, header.raw[-MAC_SIZE:]):
        raise HeaderTamperedError("the header MAC does not verify: the header was modified")
    if expected_backup_id is not None and header.backup_id != expected_backup_id:
        raise PartMismatchError(
            f"this part belongs to backup {header.backup_id!r}, not the expected backup {expected_backup_id!r}"
        )
    if expected_part_name is not None and header.part_name != expected_part_name:
        raise PartMismatchError(
            f"this part is {header.part_name!r} of its backup, not the expected part {expected_part_name!r}"
        )
    return AESGCM(_payload_key(dek, header))


def decrypt_stream(
    ciphertext: Iterable[bytes],
    *,
    expected_backup_id: str | None,
    expected_part_name: str | None,
    org_keyring: OrgKeyring | None = None,
    recovery_identity: RecoveryIdentity | None = None,
) -> Iterator[bytes]:
    """Authenticate and decrypt a part, yielding each chunk's plaintext once its tag verified.

    The header is parsed and authenticated on the first ``next()``; the stream is complete only
    when the iterator ends without an exception (a final chunk was authenticated and nothing
    followed it). Memory: about two chunks.
    """
    source = _ByteSource(ciphertext)
    header = parse_header(source)
    aead = open_header(
        header,
        org_keyring=org_keyring,
        recovery_identity=recovery_identity,
        expected_backup_id=expected_backup_id,
        expected_part_name=expected_part_name,
    )
    yield from _decrypt_payload(source, aead, header)


def _try_open(aead: AESGCM, index: int, final: bool, data: bytes) -> bytes | None:
    try:
        return aead.decrypt(_chunk_nonce(index, final), data, None)
    except InvalidTag:
        return None


def _decrypt_payload(source: _ByteSource, aead: AESGCM, header: ArchiveHeader) -> Iterator[bytes]:
    sealed_size = header.chunk_size + TAG_SIZE
    index = 0
    while True:
        available = source.fill(sealed_size + 1)
        if available == 0:
            if index == 0:
                raise TruncatedError("the part has a header but no payload (truncated after the header)")
            raise TruncatedError(
                f"the part ends after chunk {index - 1}, which is not the final chunk (the end of the part is missing)"
            )
        if available > sealed_size:
            sealed = source.take(sealed_size)
            plaintext = _try_open(aead, index, False, sealed)
            if plaintext is None:
                if _try_open(aead, index, True, sealed) is not None:
                    raise TrailingDataError(
                        f"chunk {index} is the final chunk but {len(source.buffer)}+ more bytes follow it"
                    )
                raise ChunkTamperedError(
                    f"chunk {index} fails authentication (modified, reordered, duplicated or from another part)",
                    index=index,
                )
            yield plaintext
            index += 1
            continue
        sealed = source.take(available)
        plaintext = _try_open(aead, index, True, sealed)
        if plaintext is not None:
            if not plaintext and index > 0:
                raise ChunkTamperedError(
                    f"chunk {index}: an empty final chunk is not allowed after data", index=index
                )
            yield plaintext
            return
        if len(sealed) == sealed_size:
            plaintext = _try_open(aead, index, False, sealed)
            if plaintext is not None:
                yield plaintext
                raise TruncatedError(
                    f"the part ends after chunk {index}, which is not the final chunk (the end of the part is missing)"
                )
            raise ChunkTamperedError(
                f"chunk {index} fails authentication (modified or from another part)", index=index
            )
        for extra in range(1, min(_TRAILING_PROBE, len(sealed) - TAG_SIZE) + 1):
            if _try_open(aead, index, True, sealed[:-extra]) is not None:
                raise TrailingDataError(f"{extra} bytes follow the final chunk {index}")
        raise IncompleteChunkError(
            f"the last chunk ({index}, {len(sealed)} bytes) fails authentication: the part was cut "
            "mid-chunk, or its final chunk was modified or has bytes appended",
            index=index,
        )


# --- random access (part index, BACKUP-FORMAT.md §8) -------------------------------------------


def chunk_count(header: ArchiveHeader, ciphertext_size: int) -> int:
    """Chunks in a part of ``ciphertext_size`` bytes (from the manifest): the last one may be short."""
    payload = ciphertext_size - header.size
    sealed = header.chunk_size + TAG_SIZE
    if payload < TAG_SIZE:
        raise TruncatedError("the part is shorter than its header plus one chunk")
    return -(-payload // sealed)


def chunk_byte_range(header: ArchiveHeader, ciphertext_size: int, first: int, last: int) -> tuple[int, int]:
    """Ciphertext bytes ``[start, end)`` holding sealed chunks ``first..last`` (inclusive)."""
    sealed = header.chunk_size + TAG_SIZE
    start = header.size + first * sealed
    return start, min(ciphertext_size, header.size + (last + 1) * sealed)


def decrypt_chunks(
    ciphertext: Iterable[bytes], aead: AESGCM, header: ArchiveHeader, *, first: int, last: int, count: int
) -> Iterator[bytes]:
    """Open sealed chunks ``first..last`` of a part of ``count`` chunks, each alone, in order.

    The nonce of chunk i depends only on i and on whether i is the part's last chunk, so a run
    of chunks authenticates by itself; the final flag is still enforced: chunk ``count - 1``
    opens only as final, every other chunk only as non-final. ``ciphertext`` is exactly the
    bytes of :func:`chunk_byte_range`. Memory: about two chunks.
    """
    if not 0 <= first <= last < count:
        raise ValueError(f"chunks {first}..{last} are not within the part's {count} chunks")
    source = _ByteSource(ciphertext)
    sealed_size = header.chunk_size + TAG_SIZE
    for index in range(first, last + 1):
        final = index == count - 1
        if final:
            # The final chunk is whatever remains (1..C+16 bytes); a longer rest is not this part.
            available = source.fill(sealed_size + 1)
            if available > sealed_size:
                raise TrailingDataError(f"more bytes than the final chunk {index} follow its start")
        else:
            available = source.fill(sealed_size)
            if available < sealed_size:
                raise TruncatedError(f"the ranged read ended inside chunk {index} ({available} bytes)")
        sealed = source.take(min(available, sealed_size))
        plaintext = _try_open(aead, index, final, sealed)
        if plaintext is None:
            raise ChunkTamperedError(
                f"chunk {index} fails authentication (modified, reordered, or from another part)", index=index
            )
        yield plaintext
    if source.fill(1):
        raise TrailingDataError(f"bytes follow chunk {last} in the ranged read")
