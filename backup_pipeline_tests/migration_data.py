"""Legacy media assets for the migration tests: rows in the app database + files in a "Drive".

The source is anything with the destination contract's ``put`` (the Drive v3 test server
through the Drive destination, or a local folder); files get whatever id the source assigns
and the ``media_assets`` rows are written with those ids, as the application once did.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from backup_pipeline.sample_app.content import GeneratedStream
from backup_pipeline.sample_app.seed import apply_schema

MiB = 1024 * 1024


@dataclass(frozen=True)
class LegacySpec:
    name: str
    size: int
    content_type: str = "image/jpeg"
    missing: bool = False  # the row points to a Drive file that no longer exists
    wrong_checksum: bool = False  # the app recorded a checksum the Drive content does not have
    wrong_size: bool = False  # the app recorded a size_bytes the Drive file does not have
    wrong_md5: bool = False  # the app recorded a checksum_md5 the Drive content does not have

    @property
    def seed(self) -> str:
        return f"legacy-test:{self.name}:{self.size}"


@dataclass
class LegacyRow:
    spec: LegacySpec
    asset_id: int
    drive_file_id: str
    sha256: str

    @property
    def migratable(self) -> bool:
        spec = self.spec
        return not (spec.missing or spec.wrong_checksum or spec.wrong_size or spec.wrong_md5)


def standard_specs(count: int, large_sizes: list[int]) -> list[LegacySpec]:
    """``count`` assets: the awkward cases first, a few large files, then small ordinary ones."""
    specs = [
        LegacySpec("empty.bin", 0, "application/octet-stream"),
        LegacySpec("reports/2024/Q1 — Übersicht.pdf", 40_000, "application/pdf"),
        LegacySpec("日本語/ファイル名 😀.png", 12_345, "image/png"),
        LegacySpec("../../etc/passwd", 100, "text/plain"),
        LegacySpec("wrong content type.jpg", 5_000, "not a content type\r\nX-Injected: 1"),
        LegacySpec("gone-1.jpg", 1_000, missing=True),
        LegacySpec("gone-2.jpg", 2_000, missing=True),
        LegacySpec("gone-3.png", 3_000, missing=True),
        LegacySpec("tampered.jpg", 7_777, wrong_checksum=True),
    ]
    specs += [LegacySpec(f"large-{i}.mp4", size, "video/mp4") for i, size in enumerate(large_sizes)]
    n = 0
    while len(specs) < count:
        specs.append(LegacySpec(f"Foto {n:04d} — été.jpg", 1 + (n * 7919) % 20_000))
        n += 1
    return specs[:count]


def create_legacy_assets(
    conn: psycopg.Connection, specs: list[LegacySpec], put: Callable[[str, GeneratedStream], str]
) -> list[LegacyRow]:
    """Apply the sample-app schema, upload each file with ``put(name, stream) -> file id``, insert rows."""
    apply_schema(conn)
    conn.execute(
        "INSERT INTO media_asset_settings (id, storage_provider) VALUES (1, 'google_drive') "
        "ON CONFLICT (id) DO UPDATE SET storage_provider = 'google_drive'"
    )
    conn.execute(
        "INSERT INTO app_settings (key, value) VALUES ('media.storage_backend', '\"google_drive\"') "
        "ON CONFLICT (key) DO NOTHING"
    )
    rows = []
    for index, spec in enumerate(specs):
        stream = GeneratedStream(spec.seed, spec.size)
        if spec.missing:
            while stream.read(MiB):
                pass
            file_id = f"1MissingInDrive{index:06d}"
        else:
            file_id = put(spec.name, stream)
        sha256 = stream.sha256.hexdigest()
        md5 = stream.md5.hexdigest()
        recorded = hashlib.sha256(b"not the content").hexdigest() if spec.wrong_checksum else sha256
        recorded_md5 = hashlib.md5(b"not the content").hexdigest() if spec.wrong_md5 else md5
        recorded_size = spec.size + 1 if spec.wrong_size else spec.size
        row = conn.execute(
            "INSERT INTO media_assets (storage_provider, drive_file_id, original_filename, content_type, "
            "size_bytes, checksum_sha256, checksum_md5) VALUES ('google_drive', %s, %s, %s, %s, %s, %s) RETURNING id",
            (file_id, spec.name, spec.content_type, recorded_size, recorded, recorded_md5),
        ).fetchone()
        assert row is not None
        rows.append(LegacyRow(spec, int(row[0]), file_id, sha256))
    conn.commit()
    return rows
