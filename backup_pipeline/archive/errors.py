"""Every way reading or writing an archive can fail, as distinct classes under :class:`ArchiveError`.

Messages name the part, the position and the rule that failed, never key material.
Classes marked *bad input* are problems with what the operator supplied (a key file, a
command-line value); the CLI maps them to exit code 2, everything else to exit code 1.
"""

from __future__ import annotations


class ArchiveError(Exception):
    """Base class of every archive-format failure."""

    bad_input: bool = False


# --- keys -----------------------------------------------------------------------------------


class ArchiveKeyError(ArchiveError):
    """Base class of key problems."""


class KeyringFormatError(ArchiveKeyError):
    """The org secret file is malformed (bad line, bad key id, not 32 bytes of base64...). *Bad input.*"""

    bad_input = True


class UnknownKeyIdError(ArchiveKeyError):
    """The part was encrypted under an org key id this keyring does not hold."""


class WrongOrgSecretError(ArchiveKeyError):
    """The keyring holds the key id, but a different secret than the one the part was made with."""


class NoMatchingStanzaError(ArchiveKeyError):
    """The header has no stanza the supplied key could open (e.g. only a recovery key was supplied
    and the part has no recovery stanza)."""


class RecoveryKeyFormatError(ArchiveKeyError):
    """A recovery key string is not a recovery key: wrong prefix, wrong length, bad characters. *Bad input.*"""

    bad_input = True


class RecoveryKeyChecksumError(RecoveryKeyFormatError):
    """A recovery key has the right shape but its Bech32 checksum fails: almost surely a typo. *Bad input.*"""


class WrongRecoveryKeyError(ArchiveKeyError):
    """A well-formed recovery key, but not the one this part was encrypted to."""


class RecoveryKeyStoreError(ArchiveKeyError):
    """The recovery key store is missing, corrupt or in the wrong state."""


class RecoverySecretAlreadyExportedError(RecoveryKeyStoreError):
    """The recovery secret was exported before and has been erased from the server."""


# --- container header ----------------------------------------------------------------------


class HeaderError(ArchiveError):
    """Base class of header problems."""


class NotAnArchiveError(HeaderError):
    """The data does not start with the archive magic bytes."""


class UnsupportedVersionError(HeaderError):
    """Unknown format version or cipher suite."""


class MalformedHeaderError(HeaderError):
    """A header field breaks a structural rule (unknown stanza type, bad stanza length, bad UTF-8...)."""


class ResourceLimitError(MalformedHeaderError):
    """A header field asks for more than the format allows (chunk size, stanza count, field length);
    rejected before anything is allocated."""


class HeaderTruncatedError(HeaderError):
    """The data ends inside the header."""


class HeaderTamperedError(HeaderError):
    """The header MAC (or a wrapped data key whose key check matched) failed: the header was modified."""


class PartMismatchError(HeaderError):
    """Authentic header, but of another backup or another part than the one asked for (substitution)."""


# --- payload ---------------------------------------------------------------------------------


class PayloadError(ArchiveError):
    """Base class of payload problems."""


class ChunkTamperedError(PayloadError):
    """Chunk ``index`` failed authentication: modified, reordered, duplicated or from another part."""

    def __init__(self, message: str, *, index: int) -> None:
        super().__init__(message)
        self.index = index


class TruncatedError(PayloadError):
    """The payload ended at a chunk boundary before the final chunk (the end of the part is missing)."""


class IncompleteChunkError(TruncatedError, ChunkTamperedError):
    """The last chunk is shorter than a full chunk and fails authentication: the part was cut
    mid-chunk, or its short final chunk was modified. No byte of it is emitted."""


class TrailingDataError(PayloadError):
    """Bytes follow the authenticated final chunk."""


# --- inner layers ------------------------------------------------------------------------------


class ArchiveContentError(ArchiveError):
    """The decrypted content (gzip/tar/manifest) is malformed."""


class ManifestError(ArchiveContentError):
    """A manifest does not follow the schema."""


class IntegrityError(ArchiveError):
    """Authentic data whose size or SHA-256 differs from what the manifest records."""
