"""The comparator: snapshots of a database and of S3 buckets, and a report naming every difference.

A snapshot is taken of the source (the corpus as stored) and of the restored target; comparing
two snapshots gives a :class:`Report` whose ``differences`` are each one named thing (a schema
statement, a table's rows, a sequence's state, one header of one object...). Zero differences
is the pass; ``Report.render()`` is the readable diff a failing test prints.

Database: the normalised ``pg_dump --schema-only`` (without ``--`` comments, ``SET`` lines and
dump tokens; one block per dumped object, compared as a set so pg_dump's ordering of ties does
not matter), per-table row digests (MD5 of each row's text form, a multiset, so no ORDER BY and
no collation is involved; ``FROM ONLY`` so inherited rows count once, in their own table), the
state of every sequence (``last_value``, ``is_called``), large objects by content, comment,
ACL and owner (never by OID), whether each materialized view is populated, RLS enabled/forced,
each trigger's enabled state and each constraint's validity and deferrability. The product's
own bookkeeping table (the data lease) is left out: a backup leaves it out on purpose.

Buckets: the set of buckets and, per bucket, the set of keys (exact strings: NFC and NFD
forms are different keys), and per object the SHA-256 of the raw body (never content-decoded),
its size, the standard headers of ``COMPARED_HEADERS``, every ``x-amz-meta-*`` value as sent by
the server, and the tags. ETag and Last-Modified are recorded but not compared: a restore
writes a new object, so the server assigns both anew (a multipart object restored by a single
PUT gets a plain MD5 ETag).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from backup_pipeline.concurrency import DATA_LEASE_TABLE

from .. import s3_raw
from ..fixtures.s3 import S3Server

#: Tables the product itself writes into the application database, left out of every snapshot.
IGNORED_TABLES = (f"public.{DATA_LEASE_TABLE}",)
#: Standard object headers that a restore must give back as stored (names lower case).
COMPARED_HEADERS = (
    "content-type",
    "cache-control",
    "content-disposition",
    "content-language",
    "content-encoding",
    "expires",
)
_META_PREFIX = "x-amz-meta-"
_PREVIEW = 160
_READ = 256 * 1024


@dataclass(frozen=True)
class Difference:
    kind: str
    where: str
    expected: str
    actual: str

    def line(self) -> str:
        return f"[{self.kind}] {self.where}: expected {self.expected}, got {self.actual}"


@dataclass
class Report:
    differences: list[Difference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, where: str, expected: object, actual: object, *, limit: int = 300) -> None:
        self.differences.append(Difference(kind, where, _show(expected, limit), _show(actual, limit)))

    def extend(self, other: Report) -> Report:
        self.differences.extend(other.differences)
        self.notes.extend(other.notes)
        return self

    def kinds(self) -> set[str]:
        return {d.kind for d in self.differences}

    def render(self, limit: int = 200) -> str:
        lines = [f"{len(self.differences)} difference(s)"]
        by_kind = Counter(d.kind for d in self.differences)
        if by_kind:
            lines.append("by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())))
        lines += [d.line() for d in self.differences[:limit]]
        if len(self.differences) > limit:
            lines.append(f"... and {len(self.differences) - limit} more")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _show(value: object, limit: int = 300) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[: limit // 2]}…({len(text)} chars)…{text[-limit // 4 :]}"


def show_key(key: str) -> str:
    """A key as ASCII (``ascii()``): control characters and NFC/NFD forms stay distinguishable."""
    shown = ascii(key)
    return shown if len(shown) <= 120 else f"{shown[:60]}…({len(key)} chars)…{shown[-30:]}"


# --------------------------------------------------------------------------------------------
# Database


@dataclass(frozen=True)
class TableRows:
    count: int
    digests: Counter[str]
    previews: dict[str, str]


@dataclass
class DbSnapshot:
    schema: dict[str, list[str]]
    tables: dict[str, TableRows]
    sequences: dict[str, tuple[int, bool]]
    large_objects: Counter[tuple[str, str | None, str | None, str]]
    matviews: dict[str, bool]
    row_security: dict[str, tuple[bool, bool]]
    triggers: dict[str, str]
    constraints: dict[str, tuple[bool, bool, bool]]


_TOC_HEADER = re.compile(r"^--\n-- ((?:Data for )?Name: .*)\n--\n", re.M)
_NOISE = ("--", "SET ", "SELECT pg_catalog.set_config(", "\\restrict", "\\unrestrict")


def normalised_schema(url: str) -> dict[str, list[str]]:
    """``pg_dump --schema-only`` as {TOC header: [statement blocks]}, without comments, SET lines
    and the per-dump tokens."""
    excludes = [f"--exclude-table={t}" for t in IGNORED_TABLES]
    text = subprocess.run(
        ["pg_dump", "--schema-only", *excludes, "-d", url], check=True, capture_output=True
    ).stdout.decode("utf-8")
    pieces = _TOC_HEADER.split(text)
    blocks: dict[str, list[str]] = {}
    # pieces: [preamble, header1, body1, header2, body2, ...]
    for header, body in zip(pieces[1::2], pieces[2::2], strict=True):
        kept = [line for line in body.splitlines() if line.strip() and not line.startswith(_NOISE)]
        if kept:
            blocks.setdefault(header, []).append("\n".join(kept))
    for statements in blocks.values():
        statements.sort()
    return blocks


_RELATIONS = """
SELECT format('%I.%I', n.nspname, c.relname), c.relkind, c.relispopulated, c.relrowsecurity,
       c.relforcerowsecurity, c.oid
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%%'
  AND c.relkind IN ('r', 'p', 'm', 'S')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype = 'e')
"""
_TRIGGERS = """
SELECT format('%I.%I %I', n.nspname, c.relname, t.tgname), t.tgenabled
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal
"""
_CONSTRAINTS = """
SELECT format('%I.%I %I', n.nspname, coalesce(c.relname, '-'), k.conname), k.convalidated,
       k.condeferrable, k.condeferred
FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace
LEFT JOIN pg_class c ON c.oid = k.conrelid
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
"""
_LARGE_OBJECTS = """
SELECT m.oid, obj_description(m.oid, 'pg_largeobject'), m.lomacl::text, pg_get_userbyid(m.lomowner)
FROM pg_largeobject_metadata m
"""


def _already_quoted(qualified: str) -> sql.Composable:
    """Quote a ``format('%I.%I')`` name back into an identifier pair (it is already quoted)."""
    return sql.SQL(qualified)


def _ignored(table_and_name: str) -> bool:
    """Whether a ``<table> <constraint or trigger>`` name belongs to an ignored table."""
    return table_and_name.split(" ", 1)[0] in IGNORED_TABLES


def snapshot_database(url: str) -> DbSnapshot:
    schema = normalised_schema(url)
    tables: dict[str, TableRows] = {}
    sequences: dict[str, tuple[int, bool]] = {}
    matviews: dict[str, bool] = {}
    row_security: dict[str, tuple[bool, bool]] = {}
    large_objects: Counter[tuple[str, str | None, str | None, str]] = Counter()
    with psycopg.connect(url, autocommit=True) as conn:
        # Superuser sessions bypass RLS; say so explicitly so a forced policy never hides rows.
        conn.execute("SET row_security = off")
        for name, kind, populated, rls, forced, _oid in conn.execute(_RELATIONS).fetchall():
            if name in IGNORED_TABLES:
                continue
            if kind in ("r", "p") and (rls or forced):  # absent: neither (keeps reports to the point)
                row_security[name] = (bool(rls), bool(forced))
            if kind == "m":
                matviews[name] = bool(populated)
            if kind == "S":
                row = conn.execute(
                    sql.SQL("SELECT last_value, is_called FROM {}").format(_already_quoted(name))
                ).fetchone()
                assert row is not None
                sequences[name] = (int(row[0]), bool(row[1]))
            if kind == "r" or (kind == "m" and populated):
                digests: Counter[str] = Counter()
                previews: dict[str, str] = {}
                # ROW(r.*), not r::text: a column named like the alias would be taken instead
                # of the row (the corpus has a column "t"; the self-test caught exactly that).
                query = sql.SQL("SELECT md5(ROW(r.*)::text), left(ROW(r.*)::text, {}) FROM ONLY {} r").format(
                    sql.Literal(_PREVIEW), _already_quoted(name)
                )
                for digest, preview in conn.execute(query):
                    digests[digest] += 1
                    previews.setdefault(digest, preview)
                tables[name] = TableRows(sum(digests.values()), digests, previews)
        triggers = {str(k): str(v) for k, v in conn.execute(_TRIGGERS).fetchall() if not _ignored(str(k))}
        constraints = {
            str(k): (bool(v), bool(d), bool(i))
            for k, v, d, i in conn.execute(_CONSTRAINTS).fetchall()
            if not _ignored(str(k))
        }
        for oid, comment, acl, owner in conn.execute(_LARGE_OBJECTS).fetchall():
            digest = hashlib.sha256()
            fd_row = conn.execute("SELECT lo_get(%s)", (oid,)).fetchone()
            assert fd_row is not None
            digest.update(bytes(fd_row[0]))
            large_objects[(digest.hexdigest(), comment, acl, str(owner))] += 1
    return DbSnapshot(
        schema=schema,
        tables=tables,
        sequences=sequences,
        large_objects=large_objects,
        matviews=matviews,
        row_security=row_security,
        triggers=triggers,
        constraints=constraints,
    )


def _compare_maps(report: Report, kind: str, expected: Mapping[str, Any], actual: Mapping[str, Any]) -> None:
    for name in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(name, "(absent)"), actual.get(name, "(absent)")
        if want != got:
            report.add(kind, name, want, got)


def compare_databases(expected: DbSnapshot, actual: DbSnapshot) -> Report:
    report = Report()
    for header in sorted(expected.schema.keys() | actual.schema.keys()):
        want, got = expected.schema.get(header), actual.schema.get(header)
        if want != got:
            report.add(
                "schema",
                header,
                "\n".join(want) if want else "(absent)",
                "\n".join(got) if got else "(absent)",
            )
    for name in sorted(expected.tables.keys() | actual.tables.keys()):
        want_rows, got_rows = expected.tables.get(name), actual.tables.get(name)
        if want_rows is None or got_rows is None:
            report.add(
                "table", name, "present" if want_rows else "(absent)", "present" if got_rows else "(absent)"
            )
            continue
        if want_rows.digests == got_rows.digests:
            continue
        missing = want_rows.digests - got_rows.digests
        extra = got_rows.digests - want_rows.digests
        example = next(iter(missing or extra))
        preview = (want_rows.previews if missing else got_rows.previews)[example]
        report.add(
            "rows",
            name,
            f"{want_rows.count} rows",
            f"{got_rows.count} rows ({sum(missing.values())} missing, {sum(extra.values())} unexpected; "
            f"e.g. {'missing' if missing else 'unexpected'} {preview!r})",
        )
    _compare_maps(report, "sequence", expected.sequences, actual.sequences)
    _compare_maps(report, "matview populated", expected.matviews, actual.matviews)
    _compare_maps(report, "row security (enabled, forced)", expected.row_security, actual.row_security)
    _compare_maps(report, "trigger enabled", expected.triggers, actual.triggers)
    _compare_maps(
        report, "constraint (validated, deferrable, deferred)", expected.constraints, actual.constraints
    )
    if expected.large_objects != actual.large_objects:
        for item in sorted((expected.large_objects - actual.large_objects).elements(), key=repr):
            report.add(
                "large object",
                f"sha256 {item[0][:16]}…",
                f"comment={item[1]!r} acl={item[2]} owner={item[3]}",
                "(absent or different)",
            )
        for item in sorted((actual.large_objects - expected.large_objects).elements(), key=repr):
            report.add(
                "large object",
                f"sha256 {item[0][:16]}…",
                "(absent)",
                f"comment={item[1]!r} acl={item[2]} owner={item[3]}",
            )
    return report


# --------------------------------------------------------------------------------------------
# Buckets


@dataclass(frozen=True)
class StoredObject:
    size: int
    sha256: str
    headers: tuple[tuple[str, str], ...]
    metadata: tuple[tuple[str, str], ...]
    tags: tuple[tuple[str, str], ...]
    etag: str = field(compare=False)


BucketSnapshot = dict[str, dict[str, StoredObject]]


def read_object(s3: S3Server, bucket: str, key: str, *, always_read_tags: bool = False) -> StoredObject:
    """One object as the server serves it: one GET, body hashed raw (never content-decoded) in
    chunks, plus its tags. Raw requests, because minio refuses to GET keys with ``.``/``..``
    segments, and a comparator must see every key the server lists."""
    with s3_raw.open_request(s3, "GET", bucket, key) as response:
        if response.status != 200:
            raise AssertionError(
                f"GET s3://{bucket}/{show_key(key)}: HTTP {response.status} {response.read(300)!r}"
            )
        digest = hashlib.sha256()
        size = 0
        while chunk := response.read(_READ):
            digest.update(chunk)
            size += len(chunk)
        headers: dict[str, str] = {}
        for name, value in s3_raw.received_headers(response):
            # Exact bytes compared; UTF-8 where it is, so a report shows "Grüße", not mojibake.
            headers.setdefault(name.lower(), value.decode("utf-8", "backslashreplace"))
    return StoredObject(
        size=size,
        sha256=digest.hexdigest(),
        headers=tuple((h, headers[h]) for h in COMPARED_HEADERS if h in headers),
        metadata=tuple(sorted((k, v) for k, v in headers.items() if k.startswith(_META_PREFIX))),
        tags=tuple(sorted(s3_raw.get_tags(s3, bucket, key).items()))
        if always_read_tags or _counted(headers)
        else (),
        etag=headers.get("etag", "").strip('"'),
    )


def _counted(headers: Mapping[str, str]) -> bool:
    count = headers.get("x-amz-tagging-count", "").strip()
    return bool(count) and count != "0"


def snapshot_buckets(
    s3: S3Server,
    buckets: Iterable[str] | None = None,
    *,
    workers: int = 8,
    always_read_tags: bool = False,
) -> BucketSnapshot:
    """Every object of ``buckets`` (default: every bucket on the server): the listing through
    minio (which decodes the server's URL-encoded keys), each object by a raw signed GET.

    Tags are read only for objects whose GET says ``x-amz-tagging-count`` (halves the requests
    on the 5 000-key bucket), unless ``always_read_tags``: the comparator's self-test plants a
    tag on an untagged object, so a server that stopped sending the count fails it."""
    client = s3.client()
    names = sorted(b.name for b in client.list_buckets()) if buckets is None else sorted(buckets)
    snapshot: BucketSnapshot = {}
    with ThreadPoolExecutor(workers) as pool:
        for bucket in names:
            keys = [
                o.object_name
                for o in client.list_objects(bucket, recursive=True)
                if o.object_name is not None
            ]
            objects = pool.map(
                lambda key, b=bucket: read_object(s3, b, key, always_read_tags=always_read_tags), keys
            )
            snapshot[bucket] = dict(zip(keys, objects, strict=True))
    return snapshot


def compare_buckets(
    expected: BucketSnapshot, actual: BucketSnapshot, *, untouched: BucketSnapshot | None = None
) -> Report:
    """Differences of ``actual`` from ``expected``.

    ``untouched``: what the target held before a restore into a populated target. Objects (and
    buckets) only in the target are then allowed, but must be exactly as they were (a restore
    adds and overwrites, it never deletes or alters what the backup does not hold); they are
    listed as notes. Without it, anything not in ``expected`` is a difference.
    """
    report = Report()
    for bucket in sorted(expected.keys() | actual.keys()):
        if bucket not in actual:
            report.add("bucket", bucket, f"present ({len(expected[bucket])} objects)", "(absent)")
            continue
        want, got = expected.get(bucket, {}), actual[bucket]
        before = (untouched or {}).get(bucket, {})
        if bucket not in expected and untouched is None:
            report.add("bucket", bucket, "(absent)", f"present ({len(got)} objects)")
            continue
        for key in sorted(want.keys() - got.keys()):
            report.add(
                "object missing", f"s3://{bucket}/{show_key(key)}", f"{want[key].size} bytes", "(absent)"
            )
        for key in sorted(got.keys() - want.keys()):
            where = f"s3://{bucket}/{show_key(key)}"
            if untouched is None:
                report.add("object unexpected", where, "(absent)", f"{got[key].size} bytes")
            elif before.get(key) != got[key]:
                report.add("object not in backup changed", where, before.get(key, "(absent)"), got[key])
            else:
                report.notes.append(f"kept (only in target, not in the backup): {where}")
        for key in sorted(want.keys() & got.keys()):
            _compare_object(report, f"s3://{bucket}/{show_key(key)}", want[key], got[key])
    return report


def _compare_object(report: Report, where: str, want: StoredObject, got: StoredObject) -> None:
    if (want.size, want.sha256) != (got.size, got.sha256):
        report.add(
            "object bytes",
            where,
            f"{want.size} bytes sha256 {want.sha256[:16]}…",
            f"{got.size} bytes sha256 {got.sha256[:16]}…",
        )
    want_h, got_h = dict(want.headers), dict(got.headers)
    for name in COMPARED_HEADERS:
        if want_h.get(name) != got_h.get(name):
            report.add(
                "object header", f"{where} {name}", want_h.get(name, "(absent)"), got_h.get(name, "(absent)")
            )
    want_m, got_m = dict(want.metadata), dict(got.metadata)
    for name in sorted(want_m.keys() | got_m.keys()):
        if want_m.get(name) != got_m.get(name):
            report.add(
                "object metadata",
                f"{where} {name}",
                want_m.get(name, "(absent)"),
                got_m.get(name, "(absent)"),
            )
    if want.tags != got.tags:
        report.add("object tags", where, dict(want.tags), dict(got.tags))
