"""Fill a database and S3 buckets with a realistic sample application.

Buckets get nested keys, unicode and spaces, user metadata, tags, a few larger objects;
the database gets the schema in ``backup_pipeline/sql/sample_app_schema.sql``, one
``media_assets`` row per object in ``media``/``documents`` (avatars are referenced from
nowhere, like real orphans), thousands of ordinary rows, and optionally legacy
``google_drive`` rows whose content is reproducible (``legacy_drive_file``), so a
migration test can put the same bytes into a Drive server.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import quote

import psycopg
from minio import Minio
from minio.commonconfig import Tags

from .content import GeneratedStream, digest_of

PRIMARY_BUCKET = "media"
DEFAULT_BUCKETS = ("media", "avatars", "documents")
MiB = 1024 * 1024

# Keys that trip naive code: spaces, unicode (NFC and NFD), '+', '%', '#', '&', parentheses, deep nesting.
_AWKWARD_KEYS = (
    "users/7/photos/2024/06/Fête de la musique.jpg",
    "users/7/vidéos/été 2024/clip 01.mp4",
    "users/12/日本語/ファイル名.png",
    "users/12/emoji 😀 party.png",
    "users/3/notes & plans (draft) #1.txt",
    "users/3/100% done+final.txt",
    "users/5/Cafe\u0301 decomposed.jpg",
    "a/b/c/d/e/f/g/h/deeply nested.bin",
)


@dataclass(frozen=True)
class SeedSpec:
    """How much sample data to make. Defaults suit the demo; tests ask for more or less."""

    buckets: Sequence[str] = DEFAULT_BUCKETS
    small_objects: int = 300
    small_object_max_bytes: int = 64 * 1024
    large_object_bytes: Sequence[int] = (8 * MiB, 3 * MiB)
    users: int = 200
    comments: int = 3000
    audit_events: int = 5000
    sessions: int = 500
    legacy_drive_files: int = 0
    legacy_drive_file_max_bytes: int = 256 * 1024
    seed: int = 1
    upload_workers: int = 8


@dataclass(frozen=True)
class SeededObject:
    bucket: str
    key: str
    size: int
    sha256: str
    md5: str
    content_type: str
    metadata: dict[str, str]
    tags: dict[str, str]
    content_seed: str
    compressible: bool


@dataclass(frozen=True)
class LegacyDriveFile:
    """A file the app once stored in Google Drive: content is ``GeneratedStream(content_seed, size)``."""

    drive_file_id: str
    name: str
    content_type: str
    size: int
    sha256: str
    md5: str
    content_seed: str


@dataclass
class SeedReport:
    objects: list[SeededObject] = field(default_factory=list)
    legacy_files: list[LegacyDriveFile] = field(default_factory=list)
    table_rows: dict[str, int] = field(default_factory=dict)

    def objects_in(self, bucket: str) -> list[SeededObject]:
        return [o for o in self.objects if o.bucket == bucket]

    @property
    def total_bytes(self) -> int:
        return sum(o.size for o in self.objects)


def schema_sql() -> str:
    return resources.files("backup_pipeline").joinpath("sql/sample_app_schema.sql").read_text("utf-8")


def apply_schema(conn: psycopg.Connection) -> None:
    conn.execute(schema_sql())  # type: ignore[arg-type]  # a trusted, packaged multi-statement script


_CONTENT_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "mp4": "video/mp4",
    "txt": "text/plain; charset=utf-8",
    "pdf": "application/pdf",
    "json": "application/json",
    "bin": "application/octet-stream",
}


def _content_type(key: str) -> str:
    return _CONTENT_TYPES.get(key.rsplit(".", 1)[-1].lower(), "application/octet-stream")


def _compressible(key: str) -> bool:
    return key.rsplit(".", 1)[-1].lower() in ("txt", "json", "pdf")


@dataclass(frozen=True)
class _Planned:
    bucket: str
    key: str
    size: int
    owner: int


def plan_objects(spec: SeedSpec) -> list[_Planned]:
    """Every object to create, deterministic for a given spec."""
    rng = random.Random(spec.seed)
    buckets = list(spec.buckets)
    planned: list[_Planned] = []
    seen: set[tuple[str, str]] = set()

    def add(bucket: str, key: str, size: int, owner: int) -> None:
        if (bucket, key) not in seen:
            seen.add((bucket, key))
            planned.append(_Planned(bucket, key, size, owner))

    primary = PRIMARY_BUCKET if PRIMARY_BUCKET in buckets else buckets[0]
    for key in _AWKWARD_KEYS:
        add(
            primary,
            key,
            rng.randint(0, spec.small_object_max_bytes),
            int(key.split("/")[1]) if key.startswith("users/") else 1,
        )
    add(primary, "empty/zero-byte.txt", 0, 1)
    for i in range(spec.small_objects):
        bucket = buckets[i % len(buckets)]
        owner = rng.randint(1, max(spec.users, 1))
        if bucket == "avatars":
            key = f"avatars/{owner:05d}/{i:06d}.png"
        elif bucket == "documents":
            year = 2020 + i % 5
            key = f"invoices/{year}/Q{1 + i % 4}/Rechnung {i:06d}.{('pdf', 'txt', 'json')[i % 3]}"
        else:
            key = f"users/{owner}/photos/{2021 + i % 4}/{1 + i % 12:02d}/IMG_{i:06d}.{('jpg', 'png')[i % 2]}"
        add(bucket, key, rng.randint(1, spec.small_object_max_bytes), owner)
    for i, size in enumerate(spec.large_object_bytes):
        add(primary, f"users/1/videos/large upload {i + 1}.mp4", size, 1)
    return planned


def _upload(client: Minio, spec: SeedSpec, item: _Planned, index: int) -> SeededObject:
    content_seed = f"{spec.seed}:{item.bucket}:{item.key}"
    compressible = _compressible(item.key)
    stream = GeneratedStream(content_seed, item.size, compressible=compressible)
    metadata = {
        "uploaded-by": f"user-{item.owner}",
        # S3 user metadata is ASCII-only: the app stores the unicode filename percent-encoded.
        "original-filename": quote(item.key.rsplit("/", 1)[-1]),
    }
    tags: dict[str, str] = {}
    object_tags = None
    if index % 3 == 0:
        tags = {"source": "sample-app", "owner": str(item.owner)}
        object_tags = Tags.new_object_tags()
        object_tags.update(tags)
    content_type = _content_type(item.key)
    client.put_object(
        item.bucket,
        item.key,
        stream,  # type: ignore[arg-type]
        length=item.size,
        content_type=content_type,
        metadata=metadata,  # type: ignore[arg-type]
        tags=object_tags,
        part_size=16 * MiB if item.size > 16 * MiB else 0,
    )
    return SeededObject(
        bucket=item.bucket,
        key=item.key,
        size=item.size,
        sha256=stream.sha256.hexdigest(),
        md5=stream.md5.hexdigest(),
        content_type=content_type,
        metadata=metadata,
        tags=tags,
        content_seed=content_seed,
        compressible=compressible,
    )


def seed_buckets(
    client: Minio, spec: SeedSpec, progress: Callable[[str], None] | None = None
) -> list[SeededObject]:
    """Create the buckets (if missing) and upload every planned object; returns the inventory."""
    for bucket in spec.buckets:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
    planned = plan_objects(spec)
    with ThreadPoolExecutor(max_workers=spec.upload_workers) as pool:
        futures = [pool.submit(_upload, client, spec, item, i) for i, item in enumerate(planned)]
        objects = []
        for n, future in enumerate(futures, 1):
            objects.append(future.result())
            if progress and n % 500 == 0:
                progress(f"uploaded {n}/{len(planned)} objects")
    return objects


def legacy_drive_file(spec_seed: int, n: int, max_bytes: int = 256 * 1024) -> LegacyDriveFile:
    """The n-th legacy Drive file of a seed: id, name and reproducible content digests."""
    rng = random.Random(f"legacy:{spec_seed}:{n}")
    ext = ("jpg", "png", "pdf", "txt")[n % 4]
    size = rng.randint(1, max_bytes)
    content_seed = f"legacy:{spec_seed}:{n}"
    compressible = ext in ("pdf", "txt")
    sha256, md5 = digest_of(content_seed, size, compressible=compressible)
    name = f"Altes Foto {n:04d} — été.{ext}" if ext in ("jpg", "png") else f"Dokument {n:04d}.{ext}"
    return LegacyDriveFile(
        drive_file_id=f"1LegacyDrive{spec_seed:04d}x{n:06d}",
        name=name,
        content_type=_content_type(name),
        size=size,
        sha256=sha256,
        md5=md5,
        content_seed=content_seed,
    )


def legacy_drive_content(file: LegacyDriveFile) -> GeneratedStream:
    """A stream of a legacy file's bytes (to upload into a Drive server)."""
    return GeneratedStream(file.content_seed, file.size, compressible=file.name.endswith((".pdf", ".txt")))


def insert_legacy_drive_rows(
    conn: psycopg.Connection, files: Iterable[LegacyDriveFile], owner_id: int = 1
) -> int:
    """``media_assets`` rows with storage_provider='google_drive' for the given files."""
    count = 0
    with conn.cursor() as cur:
        for f in files:
            cur.execute(
                "INSERT INTO media_assets (owner_id, storage_provider, drive_file_id, original_filename, "
                "content_type, size_bytes, checksum_sha256, checksum_md5) "
                "VALUES (%s, 'google_drive', %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (owner_id, f.drive_file_id, f.name, f.content_type, f.size, f.sha256, f.md5),
            )
            count += cur.rowcount
    return count


def seed_database(
    conn: psycopg.Connection, spec: SeedSpec, objects: Sequence[SeededObject]
) -> tuple[dict[str, int], list[LegacyDriveFile]]:
    """Apply the schema and fill every table; returns row counts per table and the legacy files."""
    apply_schema(conn)
    rng = random.Random(spec.seed)
    names = ["Ana", "Jürgen", "Zoë", "Søren", "李雷", "Фёдор", "Chloé", "Ole", "Łucja", "Ömer"]
    with conn.cursor() as cur:
        with cur.copy("COPY users (id, email, display_name, locale) FROM STDIN") as copy:
            for uid in range(1, spec.users + 1):
                copy.write_row(
                    (
                        uid,
                        f"user{uid}@example.com",
                        f"{names[uid % len(names)]} {uid}",
                        ("en", "de", "fr")[uid % 3],
                    )
                )
        cur.execute("SELECT setval('users_id_seq', greatest(%s, 1))", (spec.users,))
        referenced = [o for o in objects if o.bucket != "avatars"]
        with cur.copy(
            "COPY media_assets (owner_id, storage_provider, bucket, object_key, original_filename, "
            "content_type, size_bytes, checksum_sha256, checksum_md5, visibility) FROM STDIN"
        ) as copy:
            for o in referenced:
                owner = rng.randint(1, spec.users) if spec.users else None
                copy.write_row(
                    (
                        owner,
                        "minio",
                        o.bucket,
                        o.key,
                        o.key.rsplit("/", 1)[-1],
                        o.content_type,
                        o.size,
                        o.sha256,
                        o.md5,
                        ("private", "shared", "public")[rng.randint(0, 2)],
                    )
                )
        legacy = [
            legacy_drive_file(spec.seed, n, spec.legacy_drive_file_max_bytes)
            for n in range(spec.legacy_drive_files)
        ]
        insert_legacy_drive_rows(conn, legacy)
        provider = "google_drive" if legacy else "minio"
        cur.execute(
            "INSERT INTO media_asset_settings (id, storage_provider, default_bucket) VALUES (1, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET storage_provider = EXCLUDED.storage_provider",
            (provider, PRIMARY_BUCKET),
        )
        cur.execute(
            "INSERT INTO app_settings (key, value) VALUES "
            "('media.storage_backend', to_jsonb(%s::text)), ('site.title', '\"Beispiel-App ✓\"'), "
            "('uploads.max_mb', '100') ON CONFLICT (key) DO NOTHING",
            (provider,),
        )
        if spec.users:
            cur.execute(
                "INSERT INTO albums (owner_id, title, description) "
                "SELECT 1 + (g %% %s), 'Album ' || g || ' — Urlaub', CASE WHEN g %% 3 = 0 THEN NULL ELSE 'Beschreibung ' || g END "
                "FROM generate_series(1, %s) g",
                (spec.users, spec.users * 2),
            )
            cur.execute(
                "INSERT INTO album_assets (album_id, asset_id, position) "
                "SELECT a.id, m.id, row_number() OVER (PARTITION BY a.id ORDER BY m.id) "
                "FROM albums a JOIN media_assets m ON m.id % (SELECT count(*) FROM albums) = a.id % (SELECT count(*) FROM albums) "
                "ON CONFLICT DO NOTHING"
            )
            cur.execute(
                "WITH ids AS (SELECT array_agg(id ORDER BY id) AS a FROM media_assets) "
                "INSERT INTO comments (asset_id, author_id, body, created_at) "
                "SELECT ids.a[1 + g %% array_length(ids.a, 1)], 1 + (g %% %s), "
                "'Kommentar ' || g || E' — schön! \\U0001F44D\\nzweite Zeile', now() - (g || ' minutes')::interval "
                "FROM generate_series(1, %s) g, ids WHERE ids.a IS NOT NULL",
                (spec.users, spec.comments),
            )
            cur.execute(
                "INSERT INTO audit_log (actor_id, action, details, created_at) "
                "SELECT 1 + (g %% %s), (ARRAY['login','upload','delete','share','settings.update'])[1 + g %% 5], "
                "jsonb_build_object('ip', '10.0.' || (g %% 256) || '.' || (g %% 200), 'n', g), "
                "now() - (g || ' seconds')::interval FROM generate_series(1, %s) g",
                (spec.users, spec.audit_events),
            )
            cur.execute(
                "INSERT INTO sessions (token, user_id, expires_at) "
                "SELECT md5('session' || g), 1 + (g %% %s), now() + interval '1 day' FROM generate_series(1, %s) g "
                "ON CONFLICT DO NOTHING",
                (spec.users, spec.sessions),
            )
            cur.execute(
                "INSERT INTO thumbnail_cache (asset_id, thumbnail) "
                "SELECT id, decode(md5(id::text), 'hex') FROM media_assets WHERE id % 10 = 0 ON CONFLICT DO NOTHING"
            )
        counts = {}
        for table in (
            "users",
            "media_assets",
            "media_asset_settings",
            "app_settings",
            "albums",
            "album_assets",
            "comments",
            "audit_log",
            "sessions",
            "thumbnail_cache",
            "schema_migrations",
        ):
            row = cur.execute(f"SELECT count(*) FROM {table}").fetchone()
            counts[table] = int(row[0]) if row else 0
    conn.commit()
    return counts, legacy


def seed_sample_app(
    conn: psycopg.Connection,
    client: Minio,
    spec: SeedSpec = SeedSpec(),
    progress: Callable[[str], None] | None = None,
) -> SeedReport:
    """Seed buckets first (rows point at real objects), then the database."""
    objects = seed_buckets(client, spec, progress)
    counts, legacy = seed_database(conn, spec, objects)
    return SeedReport(objects=objects, legacy_files=legacy, table_rows=counts)


def read_object(client: Minio, bucket: str, key: str) -> bytes:
    """Whole content of a (small) object — for tests."""
    response = client.get_object(bucket, key)
    try:
        return response.read(decode_content=False)
    finally:
        response.close()
        response.release_conn()


__all__ = [
    "DEFAULT_BUCKETS",
    "PRIMARY_BUCKET",
    "LegacyDriveFile",
    "SeedReport",
    "SeedSpec",
    "SeededObject",
    "apply_schema",
    "insert_legacy_drive_rows",
    "legacy_drive_content",
    "legacy_drive_file",
    "plan_objects",
    "read_object",
    "seed_buckets",
    "seed_database",
    "seed_sample_app",
]
