"""The PITR repository's cipher passphrase: derived from the org secret, kept beside the repository
in a key-store object sealed to the org secret AND the recovery key.

pgBackRest encrypts every file of the repository (base backups, WAL, its own manifests) with
AES-256-CBC under one passphrase fixed when the stanza is created. The product does not invent a
second secret for it:

* at set-up the passphrase is HKDF-SHA-256(current org secret, info = ``INFO`` + stanza),
  base64url (43 characters);
* it is sealed with the product's own container (``archive/stream_crypto.py``: one stanza for the
  org key, one per recovery public key) and stored in the repository bucket at
  :func:`keystore_key` — outside pgBackRest's path, so ``pgbackrest verify`` never sees it;
* every later use opens that object: with the org keyring in normal operation, with the
  recovery key alone in disaster recovery (``backup-pipeline restore --target-time``). An org-key
  rotation therefore never changes the repository's passphrase. A recovery key the store is not
  sealed to yet (``keys rotate-recovery``) gets it re-sealed by the next base backup.

Write order (MUST): the key store is written, read back and opened BEFORE ``stanza-create``; a
stanza is never created with a passphrase that is not stored beside it.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from pathlib import Path

import urllib3
from minio import Minio
from minio.error import S3Error

from backup_pipeline.archive.errors import ArchiveError
from backup_pipeline.archive.kdf import hkdf_sha256
from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity, RecoveryPublicKey
from backup_pipeline.archive.stream_crypto import decrypt_stream, encrypt_stream, read_header
from backup_pipeline.services.pitr_engine import RepoLocation

INFO = b"backup_pipeline pitr repo-cipher-pass v1\x00"
PART_NAME = "repo-cipher-pass"
KEYSTORE_PREFIX = "backup_pipeline/"
MAX_KEYSTORE_BYTES = 64 * 1024


class PitrKeyError(RuntimeError):
    """The key store is missing, unreadable, or cannot be opened with the keys at hand."""


def keystore_key(stanza: str) -> str:
    return f"{KEYSTORE_PREFIX}pitr-{stanza}.{PART_NAME}.bpenc"


def keystore_backup_id(stanza: str) -> str:
    return f"pitr-{stanza}"


def derive_cipher_pass(keyring: OrgKeyring, stanza: str) -> str:
    """The passphrase a new stanza gets: from the current org key, so it is reproducible by its holder."""
    raw = hkdf_sha256(keyring.current.secret, b"", INFO + stanza.encode("utf-8"))
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def seal(
    passphrase: str, stanza: str, keyring: OrgKeyring, recovery_keys: Sequence[RecoveryPublicKey]
) -> bytes:
    if not recovery_keys:
        raise PitrKeyError(
            "no recovery public key: run `backup-pipeline keys status` to create the key pair first"
        )
    return b"".join(
        encrypt_stream(
            [passphrase.encode("ascii")],
            backup_id=keystore_backup_id(stanza),
            part_name=PART_NAME,
            org_keyring=keyring,
            recovery_public_key=list(recovery_keys),
        )
    )


def unseal(
    blob: bytes, stanza: str, *, keyring: OrgKeyring | None = None, recovery: RecoveryIdentity | None = None
) -> str:
    try:
        plain = b"".join(
            decrypt_stream(
                [blob],
                expected_backup_id=keystore_backup_id(stanza),
                expected_part_name=PART_NAME,
                org_keyring=keyring,
                recovery_identity=recovery,
            )
        )
    except ArchiveError as exc:
        raise PitrKeyError(f"the PITR key store {keystore_key(stanza)} cannot be opened: {exc}") from None
    return plain.decode("ascii")


def repo_client(repo: RepoLocation, access_key: str, secret_key: str) -> Minio:
    """A minio client for the repository bucket (HTTPS; the configured CA file when given)."""
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10, read=60),
        ca_certs=str(repo.ca_file) if repo.ca_file else None,
        retries=urllib3.Retry(total=3, backoff_factor=0.5, status_forcelist=[500, 502, 503, 504]),
    )
    client = Minio(
        f"{repo.host}:{repo.port}",
        access_key=access_key,
        secret_key=secret_key,
        secure=True,
        region=repo.region,
        http_client=http,
    )
    client.disable_virtual_style_endpoint()
    return client


def read_keystore(client: Minio, repo: RepoLocation, stanza: str) -> bytes | None:
    try:
        response = client.get_object(repo.bucket, keystore_key(stanza))
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject"):
            return None
        raise PitrKeyError(f"reading the PITR key store from bucket {repo.bucket}: {exc.code}") from None
    try:
        blob = response.read(MAX_KEYSTORE_BYTES + 1)
    finally:
        response.close()
        response.release_conn()
    if len(blob) > MAX_KEYSTORE_BYTES:
        raise PitrKeyError(f"{keystore_key(stanza)} is larger than a key store can be: not ours?")
    return blob


def ensure_keystore(
    client: Minio,
    repo: RepoLocation,
    stanza: str,
    keyring: OrgKeyring,
    recovery_keys: Sequence[RecoveryPublicKey],
) -> str:
    """The repository passphrase: opened from the key store, or derived, stored and verified first."""
    blob = read_keystore(client, repo, stanza)
    if blob is not None:
        passphrase = unseal(blob, stanza, keyring=keyring)
        if not _sealed_to(blob, recovery_keys):
            # A rotated recovery key: until the store is re-sealed only the old key opens the repository.
            _store(
                client, repo, stanza, seal(passphrase, stanza, keyring, recovery_keys), keyring, passphrase
            )
        return passphrase
    if not client.bucket_exists(repo.bucket):
        raise PitrKeyError(f"the PITR repository bucket {repo.bucket!r} does not exist on {repo.endpoint}")
    passphrase = derive_cipher_pass(keyring, stanza)
    _store(client, repo, stanza, seal(passphrase, stanza, keyring, recovery_keys), keyring, passphrase)
    return passphrase


def _sealed_to(blob: bytes, recovery_keys: Sequence[RecoveryPublicKey]) -> bool:
    """Whether every given recovery public key can open the key store (its header's stanzas)."""
    header, _rest = read_header([blob])
    sealed = {stanza.fingerprint for stanza in header.stanzas if stanza.org_key_id is None}
    return all(key.fingerprint in sealed for key in recovery_keys)


def _store(
    client: Minio, repo: RepoLocation, stanza: str, sealed: bytes, keyring: OrgKeyring, passphrase: str
) -> None:
    """Write, read back, open: an S3 put replaces the object whole, so a reader sees old or new."""
    client.put_object(repo.bucket, keystore_key(stanza), io.BytesIO(sealed), len(sealed))
    stored = read_keystore(client, repo, stanza)
    if stored != sealed or unseal(stored, stanza, keyring=keyring) != passphrase:
        raise PitrKeyError(f"the PITR key store {keystore_key(stanza)} did not read back as written")


def load_passphrase(
    client: Minio,
    repo: RepoLocation,
    stanza: str,
    *,
    keyring: OrgKeyring | None = None,
    recovery: RecoveryIdentity | None = None,
) -> str:
    blob = read_keystore(client, repo, stanza)
    if blob is None:
        raise PitrKeyError(
            f"no PITR key store at {repo.bucket}/{keystore_key(stanza)}: the stanza was not set up by "
            "backup-pipeline, or the bucket/stanza settings are wrong"
        )
    return unseal(blob, stanza, keyring=keyring, recovery=recovery)


def write_private_file(path: Path, text: str) -> None:
    """Create ``path`` 0600 before writing (a secret must never be readable for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode on O_CREAT
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
