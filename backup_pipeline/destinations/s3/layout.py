"""Where a file lives in the bucket, how its id is spelled, and how its properties are stored.

Keys: ``<prefix><group>/<name>``. The group is the file's ``backupId`` property when it is a
plain token (letters, digits, ``.``, ``_``, ``-``; it never starts with ``_``), else ``_``.
So a listing filtered by backup id reads one key prefix — the parts of one set, not the
whole bucket — and an operator browsing the bucket sees one folder per backup set.

Ids: the key below the prefix, plus ``?versionId=<id>`` when the bucket gave the object a
version. A versioned id pins the bytes that were written: a later PUT of the same key (an
attacker with the product's credentials, on a bucket that cannot refuse it) creates a newer
version, and reads of the id still return the pinned one.

Properties: user metadata ``x-amz-meta-bp-properties``, the properties as compact JSON with
``%``-escapes for everything outside a readable ASCII set (S3 lowercases metadata *names*,
so property keys cannot be header names; values with spaces or non-ASCII would not survive
SigV4's header canonicalisation). Metadata is immutable per version and covered by the
object lock; tags would not be (anyone with s3:PutObjectTagging could rewrite them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from urllib.parse import quote, unquote

from ..base import PermanentError

PROPERTIES_HEADER = "x-amz-meta-bp-properties"
MD5_HEADER = "x-amz-meta-bp-md5"
SHA256_HEADER = "x-amz-meta-bp-sha256"
#: Full-object hashes of a multipart object, known only after its upload: tags, not metadata.
MD5_TAG = "bp-md5"
SHA256_TAG = "bp-sha256"
#: AWS S3 allows 2 KB of user metadata per object (names + values).
MAX_METADATA_BYTES = 2048
#: S3 keys are at most 1 024 bytes; SeaweedFS stores each path segment as a file name (255).
MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255

GROUP_OTHER = "_"
VERSION_MARK = "?versionId="
BACKUP_ID_PROPERTY = "backupId"
#: Keys of connection-check probes (group ``_``), found and swept without reading properties.
PROBE_NAME_PREFIX = ".check-"

_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SAFE_IN_HEADER = '{}[]":,/-_.~@+=()'


class Layout:
    def __init__(self, prefix: str):
        self.prefix = prefix

    # --- keys and ids -----------------------------------------------------------------------

    def key_for(self, name: str, properties: Mapping[str, str]) -> str:
        key = f"{self.prefix}{group_of(properties)}/{checked_name(name)}"
        if len(key.encode()) > MAX_KEY_BYTES:
            raise PermanentError(
                f"file name {name!r}: the S3 key would be {len(key.encode())} bytes; at most {MAX_KEY_BYTES}"
            )
        return key

    def listing_prefix(self, properties: Mapping[str, str] | None) -> str:
        """The narrowest key prefix holding every file with these properties."""
        backup_id = (properties or {}).get(BACKUP_ID_PROPERTY)
        if backup_id is not None and _GROUP.fullmatch(backup_id):
            return f"{self.prefix}{backup_id}/"
        if backup_id is not None:
            return f"{self.prefix}{GROUP_OTHER}/"
        return self.prefix

    def probe_prefix(self) -> str:
        return f"{self.prefix}{GROUP_OTHER}/{PROBE_NAME_PREFIX}"

    def file_id(self, key: str, version_id: str | None) -> str:
        relative = key[len(self.prefix) :]
        return relative if not pinned(version_id) else f"{relative}{VERSION_MARK}{version_id}"

    def parse_id(self, file_id: str) -> tuple[str, str | None]:
        """(key, version id or None) of an id made by :meth:`file_id`."""
        relative, mark, version = file_id.rpartition(VERSION_MARK)
        if not mark:
            relative, version = file_id, ""
        group, slash, name = relative.partition("/")
        if not slash or not group or not name or (group != GROUP_OTHER and not _GROUP.fullmatch(group)):
            raise PermanentError(f"{file_id!r} is not a file id of an S3 destination (<group>/<name>)")
        return self.prefix + relative, version or None

    def name_of(self, key: str) -> str | None:
        """The file name of a key below the prefix, or None for a key that is not a file of ours."""
        if not key.startswith(self.prefix):
            return None
        group, slash, name = key[len(self.prefix) :].partition("/")
        if not slash or not name or (group != GROUP_OTHER and not _GROUP.fullmatch(group)):
            return None
        return name


def pinned(version_id: str | None) -> bool:
    """Whether a version id names one version ("null" is the version of an unversioned write)."""
    return bool(version_id) and version_id != "null"


def group_of(properties: Mapping[str, str]) -> str:
    backup_id = properties.get(BACKUP_ID_PROPERTY)
    return backup_id if backup_id is not None and _GROUP.fullmatch(backup_id) else GROUP_OTHER


def checked_name(name: str) -> str:
    segments = name.split("/")
    problems = []
    if not name:
        problems.append("it is empty")
    if any(seg in ("", ".", "..") for seg in segments):
        problems.append("empty, '.' or '..' segments (S3 servers that store keys as paths rewrite them)")
    if any(ord(ch) < 0x20 or ch in "\\\x7f" for ch in name):
        problems.append("control characters or '\\'")
    if VERSION_MARK in name:
        problems.append(f"{VERSION_MARK!r} (it marks a version in file ids)")
    if any(len(seg.encode()) > MAX_SEGMENT_BYTES for seg in segments):
        problems.append(f"a segment longer than {MAX_SEGMENT_BYTES} bytes")
    if problems:
        raise PermanentError(f"invalid file name {name!r}: " + "; ".join(problems))
    return name


def encode_properties(properties: Mapping[str, str], md5: str | None, sha256: str | None) -> dict[str, str]:
    """User metadata headers of a new object; refuses more than S3's 2 KB of metadata."""
    text = json.dumps(dict(properties), separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    headers = {PROPERTIES_HEADER: quote(text, safe=_SAFE_IN_HEADER)}
    if md5 is not None and sha256 is not None:
        headers[MD5_HEADER] = md5
        headers[SHA256_HEADER] = sha256
    size = sum(len(k.removeprefix("x-amz-meta-")) + len(v) for k, v in headers.items())
    if size > MAX_METADATA_BYTES:
        raise PermanentError(
            f"properties: they take {size} bytes of S3 user metadata once encoded; S3 allows at most "
            f"{MAX_METADATA_BYTES}"
        )
    return headers


def decode_properties(value: str | None) -> dict[str, str]:
    if not value:
        return {}
    try:
        data = json.loads(unquote(value))
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items()}
