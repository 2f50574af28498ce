"""Signed S3 requests with exact bytes on the wire, for what the minio client cannot express.

minio refuses non-ASCII user metadata, treats ``Expires`` as user metadata, and its HTTP stack
(urllib3) removes ``.``/``..`` path segments before sending. This client builds the request line
and headers itself (``http.client`` sends the path as given) and signs them with minio's own
Signature V4 code, so the server sees exactly the key and header bytes a test chose.
"""

from __future__ import annotations

import hashlib
import http.client
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import SplitResult, quote, urlsplit
from xml.etree import ElementTree

from minio.credentials import Credentials
from minio.signer import sign_v4_s3

# Characters S3 leaves unencoded in a canonical URI (RFC 3986 unreserved) plus the separator.
_PATH_SAFE = "-_.~/"


def key_path(bucket: str, key: str) -> str:
    """The request path of ``key``: every byte outside the unreserved set percent-encoded, and
    nothing normalised (a leading ``/``, ``//`` and ``..`` segments stay as they are)."""
    return f"/{bucket}/{quote(key.encode('utf-8'), safe=_PATH_SAFE)}"


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first header of that name (case-insensitive); values decoded as latin-1, i.e. the
        wire bytes one to one."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)


@dataclass(frozen=True)
class RawS3:
    host: str
    port: int
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    @classmethod
    def for_endpoint(
        cls, endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1"
    ) -> RawS3:
        split = urlsplit(endpoint)
        return cls(split.hostname or "127.0.0.1", split.port or 80, access_key, secret_key, region)

    @contextmanager
    def open(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Iterator[http.client.HTTPResponse]:
        """One signed request; the response is read by the caller (in chunks: constant memory).

        ``path`` is sent verbatim; header values go out as UTF-8, which is also what the
        signature covers (minio's signer hashes ``str.encode()``)."""
        content_sha256 = hashlib.sha256(body).hexdigest()
        netloc = f"{self.host}:{self.port}"
        now = datetime.now(UTC).replace(microsecond=0)
        all_headers: dict[str, str] = {
            "Host": netloc,
            "x-amz-content-sha256": content_sha256,
            "x-amz-date": now.strftime("%Y%m%dT%H%M%SZ"),
            **(headers or {}),
        }
        if body or method in ("PUT", "POST"):
            all_headers["Content-Length"] = str(len(body))
        signed = sign_v4_s3(
            method=method,
            url=SplitResult("http", netloc, path, query, ""),
            region=self.region,
            headers=all_headers,  # type: ignore[arg-type]
            credentials=Credentials(self.access_key, self.secret_key),
            content_sha256=content_sha256,
            date=now,
        )
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            target = f"{path}?{query}" if query else path
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in signed.items():
                for one in value if isinstance(value, list | tuple) else [value]:
                    conn.putheader(name, str(one).encode("utf-8"))
            conn.endheaders(body or None)
            yield conn.getresponse()
        finally:
            conn.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> RawResponse:
        """One signed request whose (small) response body is read whole."""
        with self.open(method, path, query=query, headers=headers, body=body) as response:
            return RawResponse(response.status, list(response.getheaders()), response.read())

    def tags(self, bucket: str, key: str) -> dict[str, str]:
        """The object's tags (GET ?tagging)."""
        response = self.request("GET", key_path(bucket, key), query="tagging=")
        if response.status != 200:
            raise RawS3Error(f"GET tagging of {key!r}: HTTP {response.status} {response.body[:200]!r}")
        root = ElementTree.fromstring(response.body)
        tags: dict[str, str] = {}
        for element in root.iter():
            if element.tag.rsplit("}", 1)[-1] == "Tag":
                fields = {child.tag.rsplit("}", 1)[-1]: child.text or "" for child in element}
                tags[fields.get("Key", "")] = fields.get("Value", "")
        return tags


class RawS3Error(Exception):
    """A raw request the server answered with an error status."""
