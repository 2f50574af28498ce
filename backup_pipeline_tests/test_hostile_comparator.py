"""The hostile corpus and its comparator, without the product: the corpus holds what it claims,
the reference tools (pg_dump | pg_restore into an empty database) round-trip it with zero
differences, and the comparator finds a planted difference of every kind — so the round-trip
tests of ``test_hostile_round_trip.py`` cannot pass vacuously."""

from __future__ import annotations

import dataclasses
import subprocess
import warnings
from collections.abc import Iterator

import psycopg
import pytest

from backup_pipeline_tests import s3_raw
from backup_pipeline_tests.fixtures.postgres import PgDatabase, create_database, drop_database
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.hostile.buckets import (
    BUCKETS,
    EMPTY_BUCKET,
    MANY_BUCKET,
    OBJECTS_BUCKET,
    build_bucket_corpus,
    hostile_objects,
    put_object,
)
from backup_pipeline_tests.hostile.compare import (
    DbSnapshot,
    compare_buckets,
    compare_databases,
    snapshot_buckets,
    snapshot_database,
)
from backup_pipeline_tests.hostile.database import (
    WANTED_EXTENSIONS,
    build_database_corpus,
    copy_database,
    dump_toc,
)


@dataclasses.dataclass
class Source:
    db: PgDatabase
    snapshot: DbSnapshot
    extensions: list[str]


@pytest.fixture(scope="module")
def source() -> Iterator[Source]:
    db = create_database("bp_hostile_src")
    try:
        corpus = build_database_corpus(db.url)
        if corpus.missing_extensions:
            warnings.warn(f"this PostgreSQL server offers none of {corpus.missing_extensions}", stacklevel=1)
        yield Source(db, snapshot_database(db.url), corpus.extensions)
    finally:
        drop_database(db.name)


def test_corpus_dump_holds_what_makes_restores_hard(source: Source) -> None:
    toc = dump_toc(source.db.url)
    assert 'RULE Weird "Schema" ü order totals _RETURN' in toc, "the GROUP BY-on-PK view is rule-split"
    assert "MATERIALIZED VIEW DATA select order_counts" in toc
    assert "MATERIALIZED VIEW DATA select never refreshed" not in toc, "WITH NO DATA stays unpopulated"
    assert toc.count(" BLOB ") == 3
    assert "ROW SECURITY" in toc and "POLICY" in toc
    assert sorted(source.extensions) == sorted(WANTED_EXTENSIONS), "every wanted extension is installed here"
    snap = source.snapshot
    assert snap.sequences['"Weird ""Schema"" ü"."shared seq"'] == (1000 + 7 * (300 + 200 + 5 - 1), True)
    assert snap.sequences['"select"."reset seq"'] == (42, False)
    assert snap.matviews == {'"select"."never refreshed"': False, '"select".order_counts': True}
    assert snap.row_security['"select"."forced secrets"'] == (True, True)
    assert snap.triggers['"UPPER"."IDENTITIES" "never fires"'] == "D"
    assert snap.constraints['"with space"."not valid" "amount positive"'] == (False, False, False)
    assert snap.constraints['"UPPER".ranks pos_unique'] == (True, True, True)
    assert snap.tables['"Weird ""Schema"" ü"."odd values"'].count == 5
    assert sum(snap.large_objects.values()) == 3


def test_reference_tools_round_trip_with_zero_differences(source: Source) -> None:
    """pg_dump -Fc | pg_restore --single-transaction into an empty database: the corpus is
    restorable as it is, and the comparator reports nothing on a faithful copy."""
    target = create_database("bp_hostile_ref")
    try:
        dump = subprocess.run(["pg_dump", "-Fc", "-d", source.db.url], check=True, capture_output=True).stdout
        subprocess.run(
            ["pg_restore", "--single-transaction", "-d", target.url],
            input=dump,
            check=True,
            capture_output=True,
        )
        report = compare_databases(source.snapshot, snapshot_database(target.url))
        assert report.differences == [], report.render()
        assert report.render().startswith("0 difference(s)")
    finally:
        drop_database(target.name)


DB_PLANTS: dict[str, tuple[str, set[str]]] = {
    "one row": ('UPDATE "Weird ""Schema"" ü".orders SET customer = customer || \'x\' WHERE id = 7', {"rows"}),
    "one byte of a bytea": (
        'UPDATE "Weird ""Schema"" ü"."odd values" SET blob = set_byte(blob, 100, 255 - get_byte(blob, 100)) WHERE id = 2',
        {"rows"},
    ),
    "a sequence value": ("""SELECT nextval('"Weird ""Schema"" ü"."shared seq"')""", {"sequence"}),
    "is_called of a sequence": ("""SELECT setval('"select"."reset seq"', 42, true)""", {"sequence"}),
    "a schema change": ('ALTER TABLE "UPPER".ranks ALTER COLUMN pos SET DEFAULT 0', {"schema"}),
    "a comment": ("COMMENT ON SCHEMA \"select\" IS 'changed'", {"schema"}),
    "a large object byte": (
        "SELECT lo_put(oid, 0, '\\x00') FROM pg_largeobject_metadata "
        "WHERE obj_description(oid, 'pg_largeobject') IS NOT NULL",
        {"large object"},
    ),
    "a populated matview": (
        'REFRESH MATERIALIZED VIEW "select"."never refreshed"',
        {"matview populated", "table"},
    ),
    "an enabled trigger": (
        'ALTER TABLE "UPPER"."IDENTITIES" ENABLE TRIGGER "never fires"',
        {"trigger enabled", "schema"},
    ),
    "a validated constraint": (
        'UPDATE "with space"."not valid" SET amount = 5 WHERE id = 1; '
        'ALTER TABLE "with space"."not valid" VALIDATE CONSTRAINT "amount positive"',
        {"constraint (validated, deferrable, deferred)", "schema", "rows"},
    ),
    "forced row security": (
        'ALTER TABLE "select".secrets FORCE ROW LEVEL SECURITY',
        {"row security (enabled, forced)", "schema"},
    ),
    "an extra table": ("CREATE TABLE public.only_in_target (x int)", {"schema", "table"}),
}


@pytest.mark.parametrize("plant", sorted(DB_PLANTS))
def test_comparator_finds_a_planted_database_difference(source: Source, plant: str) -> None:
    statement, kinds = DB_PLANTS[plant]
    copy = copy_database(source.db, "bp_hostile_copy")
    try:
        assert compare_databases(source.snapshot, snapshot_database(copy.url)).differences == []
        with psycopg.connect(copy.url, autocommit=True) as conn:
            conn.execute(statement.encode())
        report = compare_databases(source.snapshot, snapshot_database(copy.url))
        assert report.kinds() == kinds, report.render()
    finally:
        drop_database(copy.name)


def test_comparator_finds_a_planted_object_difference(s3: S3Server) -> None:
    client = s3.client()
    corpus = build_bucket_corpus(s3, many=30)
    assert sorted(corpus.stored) == sorted(BUCKETS)
    assert len(corpus.stored[MANY_BUCKET]) == 30 and corpus.stored[EMPTY_BUCKET] == {}
    # The multipart object really is one (ETag "<md5 of part md5s>-<parts>"), so a restore that
    # writes it with one PUT gets a different ETag: the reason ETags are not compared.
    assert corpus.stored[OBJECTS_BUCKET]["multipart/two-parts.bin"].etag.endswith("-2")
    expected = {OBJECTS_BUCKET: corpus.stored[OBJECTS_BUCKET]}
    specs = {o.key: o for o in hostile_objects()}

    def differences_after(plant: object) -> set[str]:
        report = compare_buckets(expected, snapshot_buckets(s3, [OBJECTS_BUCKET]))
        assert report.differences, f"{plant}: nothing found"
        return report.kinds()

    every_byte = specs["binary/every-byte.bin"]
    flipped = bytearray(every_byte.body)
    flipped[1000] ^= 0x01
    plants = [
        ("one byte of an object", dataclasses.replace(every_byte, body=bytes(flipped)), {"object bytes"}),
        (
            "one header",
            dataclasses.replace(
                specs["headers/all.txt"],
                headers={**specs["headers/all.txt"].headers, "Cache-Control": "no-cache"},
            ),
            {"object header"},
        ),
        (
            "gzip body decoded",
            dataclasses.replace(
                specs["encoded/page.html"], headers={"Content-Type": "text/html; charset=utf-8"}
            ),
            {"object header"},
        ),
        (
            "one metadata value",
            dataclasses.replace(
                specs["meta/non-ascii.txt"],
                headers={**specs["meta/non-ascii.txt"].headers, "x-amz-meta-raw-utf8": "Grusse"},
            ),
            {"object metadata"},
        ),
        (
            "one tag on an untagged object",
            dataclasses.replace(specs["folder/child.txt"], tags={"planted": "1"}),
            {"object tags"},
        ),
        (
            "one tag value",
            dataclasses.replace(
                specs["tags/ten.txt"], tags={**specs["tags/ten.txt"].tags, "tag3": "changed"}
            ),
            {"object tags"},
        ),
    ]
    for name, planted, kinds in plants:
        put_object(s3, OBJECTS_BUCKET, planted)
        assert differences_after(name) == kinds, name
        put_object(s3, OBJECTS_BUCKET, specs[planted.key])  # undo
    # A key that differs only by normalization: the NFD object gone, an extra object present.
    nfd = "unicode/cafe\u0301.txt"
    assert s3_raw.request(s3, "DELETE", OBJECTS_BUCKET, nfd).status == 204
    assert differences_after("NFD key deleted") == {"object missing"}
    put_object(s3, OBJECTS_BUCKET, specs[nfd])
    client.put_object(OBJECTS_BUCKET, "planted-extra", __import__("io").BytesIO(b"x"), 1)
    assert differences_after("extra object") == {"object unexpected"}
    untouched = snapshot_buckets(s3, [OBJECTS_BUCKET])
    allowed = compare_buckets(expected, untouched, untouched=untouched)
    assert allowed.differences == [] and any("planted-extra" in n for n in allowed.notes)
    client.remove_object(OBJECTS_BUCKET, "planted-extra")
    # Every plant undone: the comparator is back to zero.
    final = compare_buckets(corpus.stored, snapshot_buckets(s3, BUCKETS))
    assert final.differences == [], final.render()
    client.remove_bucket(EMPTY_BUCKET)
    assert compare_buckets(corpus.stored, snapshot_buckets(s3)).kinds() == {"bucket"}
