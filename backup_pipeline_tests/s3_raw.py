"""Raw, signed S3 requests for tests: header values as exact bytes, keys minio-py refuses.

minio-py cannot send a non-ASCII header value, an ``Expires`` header or a key with a ``..``
segment, and reads header values back decoded as ISO-8859-1. The object-fidelity tests need
all of these to make source objects the way other clients (the AWS SDKs, minio-go) make them,
independently of the product's own write path, so this module signs requests itself
(AWS Signature Version 4 over the exact bytes sent) and sends them with http.client.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote
from xml.etree import ElementTree

from .fixtures.s3 import S3Server


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: list[tuple[str, bytes]]  # names as sent, values as the exact bytes received
    body: bytes

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def _trimall(value: bytes) -> bytes:
    # SigV4 canonical header value: trimmed, and runs of spaces collapsed to one (servers that
    # check signatures, e.g. SeaweedFS, refuse a value with "  " signed as is; moto checks none).
    return re.sub(rb" +", b" ", value.strip())


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


@contextmanager
def open_request(
    server: S3Server,
    method: str,
    bucket: str,
    key: str = "",
    *,
    body: bytes = b"",
    headers: dict[str, bytes | str] | None = None,
    query: str = "",
) -> Iterator[http.client.HTTPResponse]:
    """One signed request whose response the caller reads (in chunks: constant memory);
    ``headers`` values are sent as given (str values as UTF-8)."""
    host = f"127.0.0.1:{server.port}"
    # S3 canonical URI: every byte but the unreserved ones percent-encoded, '/' kept, no
    # normalisation of '.'/'..' segments (S3 does not normalise keys).
    path = "/" + bucket + ("/" + quote(key, safe="/~") if key else "")
    now = dt.datetime.now(dt.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    payload = hashlib.sha256(body).hexdigest()
    wire: dict[str, bytes] = {
        "host": host.encode(),
        "x-amz-date": amz_date.encode(),
        "x-amz-content-sha256": payload.encode(),
    }
    for name, value in (headers or {}).items():
        wire[name.lower()] = value if isinstance(value, bytes) else value.encode()
    signed = ";".join(sorted(wire))
    canonical = b"\n".join(
        [
            method.encode(),
            path.encode(),
            query.encode(),
            b"".join(name.encode() + b":" + _trimall(wire[name]) + b"\n" for name in sorted(wire)),
            signed.encode(),
            payload.encode(),
        ]
    )
    scope = f"{now:%Y%m%d}/{server.region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical).hexdigest()])
    key_ = ("AWS4" + server.secret_key).encode()
    for part in (f"{now:%Y%m%d}", server.region, "s3", "aws4_request"):
        key_ = _hmac(key_, part)
    signature = hmac.new(key_, to_sign.encode(), hashlib.sha256).hexdigest()
    wire["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={server.access_key}/{scope}, SignedHeaders={signed}, "
        f"Signature={signature}"
    ).encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.putrequest(method, path + ("?" + query if query else ""), skip_host=True)
        for name, value in wire.items():
            connection.putheader(name, value)
        connection.putheader("content-length", str(len(body)))
        connection.endheaders(body)
        yield connection.getresponse()
    finally:
        connection.close()


def received_headers(response: http.client.HTTPResponse) -> list[tuple[str, bytes]]:
    # http.client decodes header bytes as ISO-8859-1: encoding back gives the exact bytes.
    return [(name, value.encode("latin-1")) for name, value in response.getheaders()]


def request(
    server: S3Server,
    method: str,
    bucket: str,
    key: str = "",
    *,
    body: bytes = b"",
    headers: dict[str, bytes | str] | None = None,
    query: str = "",
) -> RawResponse:
    """One signed request whose (small) response is read whole."""
    with open_request(server, method, bucket, key, body=body, headers=headers, query=query) as response:
        data = response.read()
        return RawResponse(response.status, received_headers(response), data)


def get_tags(server: S3Server, bucket: str, key: str) -> dict[str, str]:
    """The object's tags (GET ?tagging)."""
    response = request(server, "GET", bucket, key, query="tagging=")
    if response.status != 200:
        raise AssertionError(f"GET tagging of {key!r}: HTTP {response.status}: {response.body[:300]!r}")
    tags: dict[str, str] = {}
    for element in ElementTree.fromstring(response.body).iter():
        if element.tag.rsplit("}", 1)[-1] == "Tag":
            fields = {child.tag.rsplit("}", 1)[-1]: child.text or "" for child in element}
            tags[fields.get("Key", "")] = fields.get("Value", "")
    return tags


def put_object(
    server: S3Server, bucket: str, key: str, body: bytes, headers: dict[str, bytes | str] | None = None
) -> None:
    response = request(server, "PUT", bucket, key, body=body, headers=headers)
    if response.status != 200:
        raise AssertionError(f"PUT {key!r}: HTTP {response.status}: {response.body[:300]!r}")


def head_object(server: S3Server, bucket: str, key: str) -> RawResponse:
    response = request(server, "HEAD", bucket, key)
    if response.status != 200:
        raise AssertionError(f"HEAD {key!r}: HTTP {response.status}")
    return response
