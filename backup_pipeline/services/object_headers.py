"""The object headers a backup records and a restore writes back, exactly as S3 carries them.

Recorded per object (BACKUP-FORMAT.md §5): the standard headers in :data:`RECORDED_HEADERS`
and every ``x-amz-meta-*`` header (user metadata). Content-Type has its own pax record.

**Values are the header bytes on the wire, read as UTF-8.** S3 servers differ in how they
carry a non-ASCII value: AWS S3 returns it RFC 2047-encoded (``=?UTF-8?B?…?=``, plain ASCII),
while MinIO, SeaweedFS and moto return the raw UTF-8 bytes they were given. Either way the
value is recorded as sent, never decoded further, and written back byte for byte, so an
object restored to the same kind of server serves the same header. (http.client hands header
bytes over decoded as ISO-8859-1; encoding back to ISO-8859-1 recovers the bytes losslessly.)
A value whose bytes are not UTF-8 cannot be recorded exactly: it is recorded with U+FFFD
replacements and reported (the backup's ``inexact`` anomalies).

**Writing them back.** minio-py's ``put_object`` has no parameter for arbitrary request
headers: its ``metadata`` turns any name but five standard ones into ``X-Amz-Meta-<name>``
(so ``Expires`` cannot be set, and a user metadata key named ``content-type`` would become
the Content-Type) and refuses non-ASCII values. Its ``sse`` parameter, though, takes any
:class:`minio.sse.Sse` whose ``headers()`` are merged verbatim into the PutObject and
CreateMultipartUpload requests; :class:`RequestHeaders` uses that. Non-ASCII values go out as
UTF-8 (:class:`_Utf8HeaderValue`): minio signs the UTF-8 bytes of the canonical request, and
the same bytes must be on the wire, where http.client would otherwise send ISO-8859-1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from minio.sse import Sse

from ..archive.tar_parts import RECORDED_HEADER_NAMES

#: Standard headers recorded with every object that has them, in their canonical spelling.
RECORDED_HEADERS: tuple[str, ...] = tuple(sorted(RECORDED_HEADER_NAMES))
_CANONICAL = {name.lower(): name for name in RECORDED_HEADERS}
META_PREFIX = "x-amz-meta-"


def wire_text(value: str) -> tuple[str, bool]:
    """A response header value (as http.client decoded it) as text: (text, exact).

    Not exact when its bytes are not UTF-8 (each bad byte becomes U+FFFD).
    """
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        # Not from http.client (already text): nothing to undo.
        return value, True
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), False


@dataclass
class RecordedHeaders:
    """What one GET response says about its object beyond size, type and ETag."""

    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    #: Header names (``x-amz-meta-…`` for metadata) whose value was not UTF-8.
    inexact: list[str] = field(default_factory=list)


def record_headers(response_headers: Iterable[tuple[str, str]]) -> RecordedHeaders:
    """The recorded headers and user metadata of a GET/HEAD response's ``(name, value)`` pairs.

    Metadata names are lower-cased without the ``x-amz-meta-`` prefix (S3 stores them in
    lower case; SeaweedFS echoes the prefix in another case).
    """
    recorded = RecordedHeaders()
    for name, value in response_headers:
        lowered = name.lower()
        if lowered.startswith(META_PREFIX):
            target, key = recorded.metadata, lowered[len(META_PREFIX) :]
        elif lowered in _CANONICAL:
            target, key = recorded.headers, _CANONICAL[lowered]
        else:
            continue
        text, exact = wire_text(value)
        if not exact:
            recorded.inexact.append(lowered)
        target[key] = text
    return recorded


class _Utf8HeaderValue(str):
    """A header value http.client sends as UTF-8 (it calls ``value.encode("latin-1")``)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return str.encode(self, "utf-8", errors)


def wire_value(value: str) -> str:
    """``value`` as a request header value that goes out as its UTF-8 bytes (see the module doc)."""
    return value if value.isascii() else _Utf8HeaderValue(value)


class RequestHeaders(Sse):
    """Extra request headers for ``Minio.put_object`` (passed as its ``sse``; see the module doc)."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = dict(headers)

    def headers(self) -> dict[str, str]:
        return dict(self._headers)

    def tls_required(self) -> bool:
        return False


def put_headers(headers: Mapping[str, str], metadata: Mapping[str, str]) -> RequestHeaders | None:
    """The request headers that give a new object these recorded headers and user metadata.

    Only the names of :data:`RECORDED_HEADERS` are sent; metadata names get their
    ``x-amz-meta-`` prefix back (so none is mistaken for a standard header).
    """
    wire: dict[str, str] = {}
    for name, value in headers.items():
        canonical = _CANONICAL.get(name.lower())
        if canonical is not None:
            wire[canonical] = wire_value(value)
    for key, value in metadata.items():
        wire[META_PREFIX + key.lower()] = wire_value(value)
    return RequestHeaders(wire) if wire else None
