"""Key material: the org keyring, the X25519 recovery key (Bech32 encoded) and its file-based store.

Nothing in this module ever puts key material into an exception message, a ``repr`` or a log.

Bech32 (BIP-173 checksum, without its 90-character limit, like age's keys) is implemented
here in a few lines rather than taken from the ``bech32`` package: that package is the
segwit reference code (90-character limit, address helpers) and we need only the checksum.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backup_pipeline.archive.errors import (
    ArchiveKeyError,
    KeyringFormatError,
    RecoveryKeyChecksumError,
    RecoveryKeyFormatError,
    RecoveryKeyStoreError,
    RecoverySecretAlreadyExportedError,
    UnknownKeyIdError,
)
from backup_pipeline.archive.kdf import hkdf_sha256

ORG_SECRET_SIZE = 32
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
RECOVERY_SECRET_HRP = "bp-recovery-secret-"
RECOVERY_PUBLIC_HRP = "bprecoverypub"
_FINGERPRINT_SIZE = 8

# --- Bech32 (BIP-173) ------------------------------------------------------------------------

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_INDEX = {c: i for i, c in enumerate(_CHARSET)}
_GENERATORS = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: Sequence[int]) -> int:
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for i, generator in enumerate(_GENERATORS):
            if (top >> i) & 1:
                checksum ^= generator
    return checksum


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: Sequence[int], from_bits: int, to_bits: int, pad: bool) -> list[int] | None:
    acc = 0
    bits = 0
    out: list[int] = []
    max_value = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & max_value)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & max_value)
    elif bits >= from_bits or ((acc << (to_bits - bits)) & max_value):
        return None
    return out


def bech32_encode(hrp: str, payload: bytes) -> str:
    data = _convert_bits(payload, 8, 5, pad=True)
    assert data is not None
    checksum_value = _polymod([*_hrp_expand(hrp), *data, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(checksum_value >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in data + checksum)


def bech32_decode(text: str, *, expected_hrp: str, payload_size: int, what: str) -> bytes:
    """Decode a Bech32 string, telling a typo (checksum) apart from a wrong kind of string."""
    text = text.strip()
    if text.lower() != text and text.upper() != text:
        raise RecoveryKeyFormatError(
            f"{what}: mixes upper and lower case; almost surely a typo (a key is written in one case)"
        )
    text = text.lower()
    separator = text.rfind("1")
    if separator < 1:
        raise RecoveryKeyFormatError(f"{what}: not a Bech32 string (no '1' separator)")
    hrp, data_part = text[:separator], text[separator + 1 :]
    if hrp != expected_hrp:
        if hrp == RECOVERY_PUBLIC_HRP and expected_hrp == RECOVERY_SECRET_HRP:
            raise RecoveryKeyFormatError(
                f"{what}: this is a recovery *public* key; decrypting needs the recovery secret "
                f"(it starts with {RECOVERY_SECRET_HRP.upper()}1)"
            )
        raise RecoveryKeyFormatError(
            f"{what}: wrong prefix; expected a string starting with {expected_hrp.upper()}1"
        )
    for position, char in enumerate(data_part, start=separator + 2):
        if char not in _CHARSET_INDEX:
            raise RecoveryKeyFormatError(f"{what}: character {position} is not a Bech32 character (typo?)")
    expected_chars = (payload_size * 8 + 4) // 5 + 6
    if len(data_part) != expected_chars:
        raise RecoveryKeyFormatError(
            f"{what}: wrong length ({len(data_part)} characters after the prefix, expected {expected_chars})"
        )
    values = [_CHARSET_INDEX[c] for c in data_part]
    if _polymod([*_hrp_expand(hrp), *values]) != 1:
        raise RecoveryKeyChecksumError(
            f"{what}: checksum mismatch; the key was mistyped or damaged (check every character)"
        )
    payload = _convert_bits(values[:-6], 5, 8, pad=False)
    if payload is None or len(payload) != payload_size:
        raise RecoveryKeyFormatError(f"{what}: malformed padding")
    return bytes(payload)


# --- org keyring -------------------------------------------------------------------------------


def org_key_fingerprint(secret: bytes) -> bytes:
    """8 bytes that tell "wrong secret under this key id" apart from "tampered header"; reveals nothing useful."""
    return hmac.new(secret, b"backup_pipeline org-key fingerprint v1", hashlib.sha256).digest()[
        :_FINGERPRINT_SIZE
    ]


@dataclass(frozen=True)
class OrgKey:
    key_id: str
    secret: bytes = field(repr=False)

    @property
    def fingerprint(self) -> bytes:
        return org_key_fingerprint(self.secret)


def _read_key_file(path: str | os.PathLike[str], what: str, error: type[ArchiveKeyError]) -> str:
    """A key file's text, or ``error`` naming the file and the cause (never its content)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read the {what} {os.fspath(path)}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise error(f"{what} {os.fspath(path)} is not UTF-8 text") from None


class OrgKeyring:
    """The org secrets by key id; the last one is current (used for new backups), older ones decrypt old backups."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise KeyringFormatError(
                "the org keyring is empty; it needs at least one `<key id>:<base64>` line"
            )
        self._keys: dict[str, OrgKey] = {}
        for key_id, secret in keys:
            if not KEY_ID_PATTERN.match(key_id):
                raise KeyringFormatError(
                    f"org key id {key_id!r} is invalid: use 1-64 characters from A-Z a-z 0-9 . _ -"
                )
            if len(secret) != ORG_SECRET_SIZE:
                raise KeyringFormatError(f"org key {key_id!r}: the secret must be exactly 32 bytes")
            if key_id in self._keys:
                raise KeyringFormatError(f"org key id {key_id!r} appears twice")
            self._keys[key_id] = OrgKey(key_id, bytes(secret))
        self._current = keys[-1][0]

    @classmethod
    def from_text(cls, text: str, *, source: str = "org secret") -> OrgKeyring:
        keys: list[tuple[str, bytes]] = []
        for line_number, raw_line in enumerate(text.splitlines(), start=1):
            line = raw_line.strip()
            if not line or line.startswith("#"):
                continue
            key_id, sep, encoded = line.partition(":")
            if not sep:
                raise KeyringFormatError(
                    f"{source}, line {line_number}: expected `<key id>:<base64 32 bytes>`"
                )
            key_id = key_id.strip()
            if not KEY_ID_PATTERN.match(key_id):
                raise KeyringFormatError(
                    f"{source}, line {line_number}: invalid key id (1-64 characters from A-Z a-z 0-9 . _ -)"
                )
            try:
                secret = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise KeyringFormatError(
                    f"{source}, line {line_number}: the secret is not valid base64"
                ) from None
            if len(secret) != ORG_SECRET_SIZE:
                raise KeyringFormatError(
                    f"{source}, line {line_number}: the secret decodes to {len(secret)} bytes, expected 32"
                )
            keys.append((key_id, secret))
        if not keys:
            raise KeyringFormatError(f"{source}: no `<key id>:<base64 32 bytes>` line found")
        return cls(keys)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> OrgKeyring:
        text = _read_key_file(path, "org secret file", KeyringFormatError)
        return cls.from_text(text, source=f"org secret file {os.fspath(path)}")

    @property
    def current_key_id(self) -> str:
        return self._current

    @property
    def current(self) -> OrgKey:
        return self._keys[self._current]

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def get(self, key_id: str) -> OrgKey:
        try:
            return self._keys[key_id]
        except KeyError:
            raise UnknownKeyIdError(
                f"org key id {key_id!r} is not in the keyring (it has: {', '.join(self._keys)}); "
                "add the older secret line to the org secret file"
            ) from None

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __repr__(self) -> str:
        return f"OrgKeyring(key_ids={self.key_ids!r}, current={self._current!r})"


def new_org_key_line(key_id: str | None = None) -> tuple[str, str]:
    """A fresh ``<key id>:<base64>`` line and its key id."""
    key_id = key_id or "org-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    if not KEY_ID_PATTERN.match(key_id):
        raise KeyringFormatError(
            f"org key id {key_id!r} is invalid: use 1-64 characters from A-Z a-z 0-9 . _ -"
        )
    return key_id, f"{key_id}:{base64.b64encode(os.urandom(ORG_SECRET_SIZE)).decode('ascii')}"


def generate_org_secret_file(path: str | os.PathLike[str], *, key_id: str | None = None) -> str:
    """Create the org secret file (mode 0600), or append a new current secret to it (rotation).

    Older lines stay, so older backups remain decryptable. Returns the new key id.
    """
    target = Path(path)
    existing: OrgKeyring | None = OrgKeyring.from_file(target) if target.exists() else None
    key_id, line = new_org_key_line(key_id)
    if existing is not None and key_id in existing:
        raise KeyringFormatError(f"org key id {key_id!r} already exists in {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        if existing is not None and not target.read_text(encoding="utf-8").endswith("\n"):
            handle.write("\n")
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return key_id


# --- recovery key (X25519) --------------------------------------------------------------------


def _recovery_fingerprint(public_bytes: bytes) -> bytes:
    return hashlib.sha256(b"backup_pipeline recovery-key fingerprint v1" + public_bytes).digest()[
        :_FINGERPRINT_SIZE
    ]


class RecoveryPublicKey:
    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise RecoveryKeyFormatError("a recovery public key is 32 bytes")
        self.raw = bytes(raw)
        self.key = X25519PublicKey.from_public_bytes(self.raw)

    @property
    def fingerprint(self) -> bytes:
        return _recovery_fingerprint(self.raw)

    @property
    def key_id(self) -> str:
        return self.fingerprint.hex()

    def to_bech32(self) -> str:
        return bech32_encode(RECOVERY_PUBLIC_HRP, self.raw)

    @classmethod
    def from_bech32(cls, text: str) -> RecoveryPublicKey:
        return cls(
            bech32_decode(text, expected_hrp=RECOVERY_PUBLIC_HRP, payload_size=32, what="recovery public key")
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecoveryPublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"RecoveryPublicKey(key_id={self.key_id!r})"


class RecoveryIdentity:
    """The recovery secret key. ``to_bech32()`` is what the administrator keeps offline."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise RecoveryKeyFormatError("a recovery secret is 32 bytes")
        self._raw = bytes(raw)
        self._key = X25519PrivateKey.from_private_bytes(self._raw)
        public_raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = RecoveryPublicKey(public_raw)

    @classmethod
    def generate(cls) -> RecoveryIdentity:
        return cls(os.urandom(32))

    @classmethod
    def from_bech32(cls, text: str) -> RecoveryIdentity:
        return cls(
            bech32_decode(text, expected_hrp=RECOVERY_SECRET_HRP, payload_size=32, what="recovery key")
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> RecoveryIdentity:
        """Read a recovery key file: the first line that is not blank or a ``#`` comment."""
        text = _read_key_file(path, "recovery key file", RecoveryKeyFormatError)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        if not lines:
            raise RecoveryKeyFormatError(f"recovery key file {os.fspath(path)} holds no key")
        return cls.from_bech32(lines[0])

    def to_bech32(self) -> str:
        return bech32_encode(RECOVERY_SECRET_HRP, self._raw).upper()

    def exchange(self, peer_public: bytes) -> bytes:
        return self._key.exchange(X25519PublicKey.from_public_bytes(peer_public))

    def __repr__(self) -> str:
        return f"RecoveryIdentity(public_key_id={self.public_key.key_id!r})"


# --- recovery key store -------------------------------------------------------------------------

_STORE_FILE = "recovery-keys.json"
_LOCK_FILE = "recovery-keys.lock"
_STORE_FORMAT = 1


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _secret_wrap_key(org_secret: bytes, salt: bytes, key_id: str) -> bytes:
    return hkdf_sha256(org_secret, salt, b"backup_pipeline recovery-secret wrap v1|" + key_id.encode())


@dataclass(frozen=True)
class RecoveryKeyStatus:
    current_key_id: str
    current_public_key: str
    created_at: str
    secret_held: bool
    exported_at: str | None
    previous_key_ids: list[str]


class RecoveryKeyStore:
    """File-based store of recovery key pairs in ``state_dir`` (``recovery-keys.json``, mode 0600).

    Holds every public key ever used (by key id) and, until the one-time export, the current
    secret wrapped with AES-256-GCM under a key derived (HKDF) from the current org secret.
    Changes are written to a temporary file, fsynced and renamed over the old file, under an
    exclusive ``flock`` so two processes cannot both export the secret.
    """

    def __init__(self, state_dir: str | os.PathLike[str], org_keyring: OrgKeyring) -> None:
        self.state_dir = Path(state_dir)
        self.org_keyring = org_keyring

    @property
    def path(self) -> Path:
        return self.state_dir / _STORE_FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.state_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _load(self) -> dict[str, Any] | None:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            state = json.loads(raw)
            if state.get("format") != _STORE_FORMAT or not isinstance(state.get("keys"), list):
                raise ValueError
            return state  # type: ignore[no-any-return]
        except ValueError:
            raise RecoveryKeyStoreError(
                f"recovery key store {self.path} is corrupt or of an unknown format"
            ) from None

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.state_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _new_entry(self) -> dict[str, Any]:
        identity = RecoveryIdentity.generate()
        org_key = self.org_keyring.current
        salt = os.urandom(16)
        nonce = os.urandom(12)
        public = identity.public_key
        wrapped = AESGCM(_secret_wrap_key(org_key.secret, salt, public.key_id)).encrypt(
            nonce, identity._raw, public.raw
        )
        return {
            "key_id": public.key_id,
            "public_key": public.to_bech32(),
            "created_at": _now(),
            "wrapped_secret": {
                "org_key_id": org_key.key_id,
                "salt": base64.b64encode(salt).decode(),
                "nonce": base64.b64encode(nonce).decode(),
                "ciphertext": base64.b64encode(wrapped).decode(),
            },
            "exported_at": None,
        }

    @staticmethod
    def _current_entry(state: dict[str, Any]) -> dict[str, Any]:
        for entry in state["keys"]:
            if entry["key_id"] == state["current"]:
                return entry  # type: ignore[no-any-return]
        raise RecoveryKeyStoreError("recovery key store: the current key id has no entry")

    def ensure(self) -> RecoveryPublicKey:
        """Create the first recovery key pair if there is none; return the current public key."""
        with self._locked():
            state = self._load()
            if state is None:
                entry = self._new_entry()
                state = {"format": _STORE_FORMAT, "current": entry["key_id"], "keys": [entry]}
                self._save(state)
            return RecoveryPublicKey.from_bech32(self._current_entry(state)["public_key"])

    def _require(self) -> dict[str, Any]:
        state = self._load()
        if state is None:
            raise RecoveryKeyStoreError(
                f"no recovery key has been set up in {self.state_dir}; run 'backup-pipeline keys init' first (or make a first backup)"
            )
        return state

    def public_key(self) -> RecoveryPublicKey:
        """The current public key (new backups are encrypted to it)."""
        return RecoveryPublicKey.from_bech32(self._current_entry(self._require())["public_key"])

    def public_keys(self) -> dict[str, RecoveryPublicKey]:
        """Every public key the store has ever had, by key id (old backups carry stanzas for these)."""
        return {e["key_id"]: RecoveryPublicKey.from_bech32(e["public_key"]) for e in self._require()["keys"]}

    def export_secret(self, key_id: str | None = None) -> str:
        """Return the recovery secret (Bech32) once and erase the held copy; a second call raises.

        The caller shows it to the administrator and records the export in the audit trail.
        """
        with self._locked():
            state = self._require()
            if key_id is None:
                entry = self._current_entry(state)
            else:
                matches = [e for e in state["keys"] if e["key_id"] == key_id]
                if not matches:
                    raise RecoveryKeyStoreError(f"no recovery key with id {key_id!r} in the store")
                entry = matches[0]
            wrapped = entry.get("wrapped_secret")
            if wrapped is None:
                raise RecoverySecretAlreadyExportedError(
                    f"the recovery secret {entry['key_id']} was already exported at {entry.get('exported_at')} "
                    "and is no longer held by the server; rotate() to make a new pair"
                )
            org_key = self.org_keyring.get(wrapped["org_key_id"])
            public = RecoveryPublicKey.from_bech32(entry["public_key"])
            try:
                raw = AESGCM(
                    _secret_wrap_key(org_key.secret, base64.b64decode(wrapped["salt"]), public.key_id)
                ).decrypt(
                    base64.b64decode(wrapped["nonce"]), base64.b64decode(wrapped["ciphertext"]), public.raw
                )
            except Exception:
                raise RecoveryKeyStoreError(
                    f"the held recovery secret {public.key_id} cannot be unwrapped with org key "
                    f"{org_key.key_id!r} (wrong org secret or damaged store)"
                ) from None
            identity = RecoveryIdentity(raw)
            if identity.public_key != public:
                raise RecoveryKeyStoreError("the held recovery secret does not match its public key")
            entry["wrapped_secret"] = None
            entry["exported_at"] = _now()
            self._save(state)
            return identity.to_bech32()

    def status(self) -> RecoveryKeyStatus:
        state = self._require()
        entry = self._current_entry(state)
        return RecoveryKeyStatus(
            current_key_id=entry["key_id"],
            current_public_key=entry["public_key"],
            created_at=entry["created_at"],
            secret_held=entry.get("wrapped_secret") is not None,
            exported_at=entry.get("exported_at"),
            previous_key_ids=[e["key_id"] for e in state["keys"] if e["key_id"] != entry["key_id"]],
        )

    def rotate(self) -> RecoveryPublicKey:
        """Make a new pair for future backups; earlier public keys (and any unexported secret) stay."""
        with self._locked():
            state = self._require()
            entry = self._new_entry()
            state["keys"].append(entry)
            state["current"] = entry["key_id"]
            self._save(state)
            return RecoveryPublicKey.from_bech32(entry["public_key"])
