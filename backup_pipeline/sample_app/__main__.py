"""Seed the sample app: ``python -m backup_pipeline.sample_app --database-url ... --s3-endpoint ...``.

S3 credentials come from BACKUP_PIPELINE_S3_ACCESS_KEY / BACKUP_PIPELINE_S3_SECRET_KEY,
the database password (if any) from BACKUP_PIPELINE_APP_DATABASE_PASSWORD.
"""

from __future__ import annotations

import contextlib
import os
import sys

import click

from backup_pipeline.resources.postgres import PostgresResource, PostgresUnavailable
from backup_pipeline.resources.s3 import S3Resource
from backup_pipeline.settings import APP_DATABASE_PASSWORD_ENV, S3_ACCESS_KEY_ENV, S3_SECRET_KEY_ENV

from .seed import MiB, SeedSpec, seed_sample_app


@click.command()
@click.option(
    "--database-url", required=True, help="postgresql://user@host:port/dbname (created if missing)."
)
@click.option("--s3-endpoint", required=True, help="http(s)://host:port")
@click.option("--small-objects", default=300, show_default=True, type=click.IntRange(0))
@click.option(
    "--large-object-mb", multiple=True, type=click.IntRange(0), help="Add an object of N MiB (repeatable)."
)
@click.option("--legacy-drive-files", default=0, show_default=True, type=click.IntRange(0))
@click.option("--if-empty", is_flag=True, help="Do nothing when the database already has media_assets rows.")
def main(
    database_url: str,
    s3_endpoint: str,
    small_objects: int,
    large_object_mb: tuple[int, ...],
    legacy_drive_files: int,
    if_empty: bool,
) -> None:
    """Create the sample app's schema, rows and bucket objects."""
    db = PostgresResource(database_url=database_url, password=os.environ.get(APP_DATABASE_PASSWORD_ENV))
    s3 = S3Resource(
        endpoint=s3_endpoint,
        access_key=os.environ.get(S3_ACCESS_KEY_ENV, ""),
        secret_key=os.environ.get(S3_SECRET_KEY_ENV, ""),
    )
    try:
        _ensure_database(db)
        with db.connect() as conn:
            if if_empty:
                row = conn.execute("SELECT to_regclass('public.media_assets') IS NOT NULL").fetchone()
                if row and row[0] and conn.execute("SELECT count(*) FROM media_assets").fetchone() != (0,):
                    click.echo(f"sample app already seeded in {db.endpoint}; nothing to do")
                    return
            spec = SeedSpec(
                small_objects=small_objects,
                large_object_bytes=tuple(n * MiB for n in large_object_mb) or SeedSpec().large_object_bytes,
                legacy_drive_files=legacy_drive_files,
            )
            report = seed_sample_app(conn, s3.client(), spec, progress=click.echo)
    except PostgresUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    rows = ", ".join(f"{t} {n}" for t, n in report.table_rows.items())
    click.echo(
        f"seeded {db.endpoint}: {rows}; {len(report.objects)} objects "
        f"({report.total_bytes / MiB:.1f} MiB) in {s3.endpoint}"
    )


def _ensure_database(db: PostgresResource) -> None:
    from psycopg import errors, sql

    with db.connect("postgres", autocommit=True) as conn, contextlib.suppress(errors.DuplicateDatabase):
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db.database_name)))


if __name__ == "__main__":
    sys.exit(main())
