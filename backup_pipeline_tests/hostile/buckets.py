"""The hostile bucket corpus: objects S3 servers store but backup tools get wrong.

Uploaded through the minio client, and through signed raw requests (``backup_pipeline_tests/s3_raw.py``) where minio
cannot express the object (``..`` and ``.`` path segments, which urllib3 removes; ``Expires``,
which minio sends as user metadata; non-ASCII metadata, which minio refuses). After upload the
corpus reads back what the server actually stored: that — not what was sent — is what a round
trip must reproduce. Where the server refused or rewrote something at upload, the corpus says
so in ``BucketCorpus.server_notes`` (the server's behaviour, not the product's).
"""

from __future__ import annotations

import gzip
import io
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from minio import Minio
from minio.commonconfig import Tags

from .. import s3_raw
from ..fixtures.s3 import S3Server
from .compare import COMPARED_HEADERS, BucketSnapshot, show_key, snapshot_buckets

OBJECTS_BUCKET = "hostile-objects"
MANY_BUCKET = "hostile.many-keys"
EMPTY_BUCKET = "hostile-empty"
BUCKETS = (OBJECTS_BUCKET, MANY_BUCKET, EMPTY_BUCKET)
# Over two pages of S3's 1 000-key listing and past the restore's 1 000-item listing lookahead
# (services/restore/buckets.py), in a key order unlike the write order. Bulk beyond that only
# added time (5 100 keys until issue 16: the round trip's uploads, restores and snapshots).
MANY_KEYS = 2_100
MiB = 1024 * 1024
MULTIPART_PART = 5 * MiB  # the S3 minimum for every part but the last


@dataclass(frozen=True)
class CorpusObject:
    """One object to upload: ``via`` raw (exact bytes on the wire), minio, or multipart (minio)."""

    key: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    via: str = "raw"


@dataclass
class BucketCorpus:
    """What the server stored (the reference for every comparison) and how it differed from what
    was sent."""

    stored: BucketSnapshot
    server_notes: list[str]
    uploaded: int


def _gzip(data: bytes) -> bytes:
    # mtime=0: the same bytes on every build.
    return gzip.compress(data, mtime=0)


def _long_key(total: int, segment: int) -> str:
    """An ASCII key of exactly ``total`` bytes made of path segments of about ``segment`` bytes."""
    key = ("k" * segment + "/") * (total // segment + 1)
    key = key[:total]
    return key[:-1] + "k" if key.endswith("/") else key


NON_ASCII_META = "Grüße, €100 — 日本"


def hostile_objects() -> list[CorpusObject]:
    rng = random.Random(15)
    html = b"<html><body>" + b"hello, compressed world " * 200 + b"</body></html>"
    objects = [
        # Bodies and encodings.
        CorpusObject(
            "encoded/page.html",
            _gzip(html),
            {"Content-Type": "text/html; charset=utf-8", "Content-Encoding": "gzip"},
        ),
        CorpusObject(
            "encoded/data.json.br-like",
            _gzip(b'{"a": 1}' * 50),
            {"Content-Type": "application/json", "Content-Encoding": "gzip, identity"},
        ),
        CorpusObject("empty.bin", b""),
        CorpusObject(
            "binary/every-byte.bin", bytes(range(256)) * 16, {"Content-Type": "application/octet-stream"}
        ),
        CorpusObject(
            "multipart/two-parts.bin",
            rng.randbytes(MULTIPART_PART + 4321),
            {"Content-Type": "application/x-multipart-test"},
            via="multipart",
        ),
        # Keys ending in '/': zero-byte "folders" and one with a body.
        CorpusObject("folder/", b""),
        CorpusObject("folder/child.txt", b"child of a folder object"),
        CorpusObject("nonempty-folder/", b"a folder object with a body", {"Content-Type": "text/plain"}),
        CorpusObject("deep/er/", b""),
        # Long keys: 1 024 bytes in short segments, and one 300-byte segment.
        CorpusObject(_long_key(1024, 200), b"1024-byte key, 200-byte segments"),
        CorpusObject("long-segment/" + "s" * 300, b"one 300-byte path segment"),
        CorpusObject("unicode/" + "ü" * 200 + ".txt", b"non-ASCII key of 400+ bytes"),
        # Keys that differ only by Unicode normalization: two different objects.
        CorpusObject("unicode/caf\u00e9.txt", b"NFC"),
        CorpusObject("unicode/cafe\u0301.txt", b"NFD, a different object"),
        CorpusObject("unicode/emoji 🎉/日本語.txt", "日本語".encode()),
        # Path-like oddities.
        CorpusObject("a//double-slash.txt", b"//"),
        CorpusObject("dots/../escape.txt", b".."),
        CorpusObject("dots/./same.txt", b"."),
        CorpusObject("/leading-slash.txt", b"leading /"),
        CorpusObject("..", b"a key that is only .."),
        CorpusObject("spaces  in name .txt ", b"spaces, trailing space"),
        CorpusObject("percent%20and%25.txt", b"%"),
        CorpusObject("plus+sign and=equals&amp;.txt", b"+"),
        CorpusObject("question?hash#.txt", b"?#"),
        CorpusObject("back\\slash.txt", b"\\"),
        CorpusObject("control\x01\x1f\x7f.txt", b"control characters"),
        CorpusObject("tab\there.txt", b"tab"),
        CorpusObject("newline\nhere.txt", b"newline"),
        # Standard headers.
        CorpusObject(
            "headers/all.txt",
            b"every standard header",
            {
                "Content-Type": "text/plain; charset=iso-8859-1",
                "Cache-Control": "public, max-age=31536000, immutable",
                "Content-Disposition": "attachment; filename=\"euro.txt\"; filename*=UTF-8''%E2%82%AC.txt",
                "Content-Language": "de-CH, en",
                "Expires": "Wed, 21 Oct 2037 07:28:00 GMT",
            },
        ),
        CorpusObject(
            "headers/odd-type",
            b"{}",
            {"Content-Type": 'application/vnd.weird+json; charset="utf-8"; x="a;b"'},
        ),
        CorpusObject("headers/no-type", b"no content type was sent"),
        CorpusObject("headers/x-empty-type", b"empty type", {"Content-Type": "x-unknown/x-unknown"}),
        # User metadata: non-ASCII as raw UTF-8 and as RFC 2047, mixed case, many keys.
        CorpusObject(
            "meta/non-ascii.txt",
            b"metadata",
            {
                "x-amz-meta-raw-utf8": NON_ASCII_META,
                "x-amz-meta-rfc2047": "=?UTF-8?B?R3LDvMOfZSwg4oKsMTAw?=",
                "X-Amz-Meta-Mixed-Case": "Value With Spaces  and  doubles",
                "x-amz-meta-empty": "",
                **{f"x-amz-meta-k{i}": f"v{i}" for i in range(8)},
            },
        ),
        # Tags: ten (the S3 maximum per object), non-ASCII and punctuation allowed by S3.
        CorpusObject(
            "tags/ten.txt",
            b"ten tags",
            tags={
                **{f"tag{i}": f"value {i}" for i in range(7)},
                "ünïcode": "wert ü",
                "punct +-=._:/@": "a+b=c.d_e:f/g@h",
                "empty": "",
            },
            via="minio",
        ),
        # Everything at once.
        CorpusObject(
            "everything/all.json.gz",
            _gzip(b'{"everything": true}'),
            {
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
                "Cache-Control": "no-store",
                "Content-Disposition": "inline",
                "Content-Language": "fr",
                "x-amz-meta-owner": "Zoë",
            },
            tags={"kind": "everything", "level": "9"},
        ),
    ]
    return objects


def _put(s3: S3Server, client: Minio, bucket: str, obj: CorpusObject) -> str | None:
    """Upload one object; the server's refusal as text, or None."""
    if obj.via == "raw":
        headers: dict[str, bytes | str] = dict(obj.headers)
        if obj.tags:
            from urllib.parse import quote

            headers["x-amz-tagging"] = "&".join(
                f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in obj.tags.items()
            )
        response = s3_raw.request(s3, "PUT", bucket, obj.key, headers=headers, body=obj.body)
        if response.status != 200:
            return f"HTTP {response.status} {response.body[:200]!r}"
        return None
    tags = Tags.new_object_tags()
    tags.update(obj.tags)
    content_type = obj.headers.get("Content-Type", "application/octet-stream")
    extra = {k: v for k, v in obj.headers.items() if k != "Content-Type"}
    try:
        client.put_object(
            bucket,
            obj.key,
            io.BytesIO(obj.body),
            len(obj.body) if obj.via == "minio" else -1,
            content_type=content_type,
            metadata=extra or None,  # type: ignore[arg-type]
            tags=tags if obj.tags else None,
            part_size=MULTIPART_PART,
        )
    except Exception as exc:  # the server's refusal is recorded, not raised
        return f"{type(exc).__name__}: {exc}"
    return None


def many_keys(count: int = MANY_KEYS) -> list[CorpusObject]:
    types = ("text/plain", "image/png", "application/pdf")
    return [
        CorpusObject(
            f"tenant-{i % 7}/year-{2020 + i % 5}/month-{i % 12:02d}/item {i:05d}.txt",
            f"object {i}\n".encode(),
            {"Content-Type": types[i % 3]},
            via="minio",
        )
        for i in range(count)
    ]


def _server_notes(
    bucket: str, specs: list[CorpusObject], stored: BucketSnapshot, refused: dict[str, str]
) -> list[str]:
    """What the server stored differently from what was sent, object by object."""
    import hashlib

    notes = []
    held = stored.get(bucket, {})
    for spec in specs:
        where = f"s3://{bucket}/{show_key(spec.key)}"
        if spec.key in refused:
            notes.append(f"{where}: refused at upload ({refused[spec.key]})")
            continue
        got = held.get(spec.key)
        if got is None:
            notes.append(f"{where}: accepted but not listed under that key")
            continue
        if got.sha256 != hashlib.sha256(spec.body).hexdigest():
            notes.append(f"{where}: stored {got.size} bytes, not the {len(spec.body)} sent")
        sent = {k.lower(): v for k, v in spec.headers.items()}
        stored_headers = dict(got.headers) | dict(got.metadata)
        for name, value in sent.items():
            if name in COMPARED_HEADERS or name.startswith("x-amz-meta-"):
                served = stored_headers.get(name)
                if served != value and served != value.encode("utf-8").decode("latin-1"):
                    notes.append(f"{where}: {name} sent {value!r}, served {served!r}")
        if dict(got.tags) != spec.tags:
            notes.append(f"{where}: tags sent {spec.tags}, stored {dict(got.tags)}")
    listed_only = set(held) - {s.key for s in specs}
    for key in sorted(listed_only):
        notes.append(f"s3://{bucket}/{show_key(key)}: listed although no such key was sent")
    return notes


def put_object(s3: S3Server, bucket: str, obj: CorpusObject, client: Minio | None = None) -> None:
    """Upload one corpus object (also used to plant and undo differences in the self-test)."""
    refused = _put(s3, client or s3.client(), bucket, obj)
    if refused:
        raise RuntimeError(f"s3://{bucket}/{show_key(obj.key)}: {refused}")


def build_bucket_corpus(s3: S3Server, *, many: int = MANY_KEYS) -> BucketCorpus:
    """Create the corpus buckets (which must not exist yet) and upload every object; ``many``:
    the number of keys in the many-keys bucket."""
    client = s3.client()
    for bucket in BUCKETS:
        client.make_bucket(bucket)
    specs = {OBJECTS_BUCKET: hostile_objects(), MANY_BUCKET: many_keys(many)}
    refused: dict[str, dict[str, str]] = {}
    with ThreadPoolExecutor(8) as pool:
        for bucket, objects in specs.items():
            results = pool.map(lambda o, b=bucket: _put(s3, client, b, o), objects)
            refused[bucket] = {o.key: r for o, r in zip(objects, results, strict=True) if r is not None}
    stored = snapshot_buckets(s3, BUCKETS)
    notes: list[str] = []
    for bucket, objects in specs.items():
        notes += _server_notes(bucket, objects, stored, refused[bucket])
    return BucketCorpus(stored=stored, server_notes=notes, uploaded=sum(len(v) for v in specs.values()))
