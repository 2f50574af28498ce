"""``backup-pipeline storage``: the Google Drive → MinIO migration and the primary-storage status.

``storage migrate-drive`` runs the same service functions as the ``migrate_drive_to_minio``
job, in this process (useful from a shell or a maintenance window; the Dagster job is the
path that records a ``storage_migration`` materialization). It holds the same data lease for the
whole migration (heartbeat thread), so it and the data-touching jobs exclude each other.
Exit codes: 0 nothing left in Drive (or a dry run), 1 assets remain / the run failed or stopped
(MinIO, Google Drive or PostgreSQL unavailable, the data lease held by a job), 2 bad input.
Errors are reported by the group (``cli/__init__.py``): one line, no traceback.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from typing import TYPE_CHECKING

import click

from backup_pipeline.services import migration as mig
from backup_pipeline.services.progress import format_bytes
from backup_pipeline.settings import (
    APP_DATABASE_PASSWORD_ENV,
    S3_ACCESS_KEY_ENV,
    S3_SECRET_KEY_ENV,
    BackupSettings,
    load_settings,
)

if TYPE_CHECKING:  # the resources import Dagster: only when a command runs (cli/__init__.py)
    from backup_pipeline.resources.destination import DestinationResource
    from backup_pipeline.resources.postgres import PostgresResource
    from backup_pipeline.resources.s3 import S3Resource

#: Failures that stop the run are reported once, as the run's error, not per asset.
_RUN_STOPPER_REASONS = {cls.reason for cls in mig.RUN_STOPPERS}


def _postgres(settings: BackupSettings) -> PostgresResource:
    from backup_pipeline.resources.postgres import PostgresResource

    return PostgresResource(
        database_url=settings.app_database_url,
        password=os.environ.get(APP_DATABASE_PASSWORD_ENV) or None,
        pg_bin_dir=str(settings.pg_bin_dir) if settings.pg_bin_dir else None,
    )


def _s3(settings: BackupSettings) -> S3Resource:
    missing = [name for name in (S3_ACCESS_KEY_ENV, S3_SECRET_KEY_ENV) if not os.environ.get(name)]
    if missing:
        raise click.UsageError(f"set {' and '.join(missing)} (the MinIO credentials)")
    from backup_pipeline.resources.s3 import S3Resource

    return S3Resource(
        endpoint=settings.s3_endpoint,
        access_key=os.environ[S3_ACCESS_KEY_ENV],
        secret_key=os.environ[S3_SECRET_KEY_ENV],
        region=settings.s3_region,
    )


def _legacy_drive(settings: BackupSettings) -> DestinationResource:
    if settings.drive_credentials_file is None:
        raise click.UsageError(
            "the legacy files are in Google Drive: set BACKUP_PIPELINE_DRIVE_CREDENTIALS_FILE "
            "(and the drive_* settings) to credentials that can read them"
        )
    from backup_pipeline.resources.destination import DestinationResource

    resource = DestinationResource.from_settings(settings)
    return DestinationResource(**{**resource.model_dump(), "kind": "google_drive"})


@click.group("storage")
def storage_group() -> None:
    """MinIO as the primary storage: migrate legacy Google Drive files, show the status."""


@storage_group.command("migrate-drive")
@click.option("--dry-run", is_flag=True, help="Count the assets and bytes that would move; change nothing.")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 16), default=4, show_default=True)
@click.option("--bucket", help="Target bucket (default: the primary_bucket setting).")
@click.option("--delete-source", is_flag=True, help="Delete the Drive files of verified, switched assets.")
@click.option(
    "--confirm", "confirmation", help=f"Required with --delete-source: {mig.DELETE_SOURCE_CONFIRMATION!r}."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def migrate_drive(
    dry_run: bool,
    batch_size: int,
    concurrency: int,
    bucket: str | None,
    delete_source: bool,
    confirmation: str | None,
    as_json: bool,
) -> None:
    """Copy every media asset still in Google Drive into MinIO, verify it and switch its row."""
    settings = load_settings()
    options = mig.MigrationOptions(
        dry_run=dry_run,
        batch_size=batch_size,
        concurrency=concurrency,
        delete_source=delete_source,
        confirmation=confirmation,
    )
    try:
        options.validate()
    except mig.MigrationError as exc:
        raise click.UsageError(str(exc)) from None
    app_db, s3, drive = _postgres(settings), _s3(settings), _legacy_drive(settings)
    run_id = f"cli-{uuid.uuid4().hex[:12]}"
    ctx = mig.MigrationContext(
        connect=app_db.connect,
        drive=drive.get_destination,
        minio=s3.client(),
        bucket=bucket or settings.primary_bucket,
        options=options,
        run_id=run_id,
        endpoint=s3.endpoint,
    )
    done = {"n": 0}

    def on_asset(outcome: mig.AssetOutcome) -> None:
        done["n"] += 1
        if outcome.result == "failed" and outcome.reason in _RUN_STOPPER_REASONS:
            return  # said once below, as the run's error
        if outcome.result == "failed" or done["n"] % 50 == 0:
            detail = f": {outcome.error}" if outcome.error else ""
            click.echo(f"[{done['n']}] asset {outcome.asset_id} {outcome.result}{detail}", err=True)

    with app_db.data_lock(run_id, job="storage migrate-drive (CLI)"):
        summary = mig.run_migration(ctx, on_asset=on_asset)
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2, sort_keys=True))
    elif summary.dry_run:
        # The same per-file reasons the real run would record, so they can be dealt with first.
        for failure in summary.failures:
            click.echo(f"asset {failure['asset_id']} would fail: {failure['error']}", err=True)
        click.echo(
            f"dry run: {summary.would_move} assets ({format_bytes(summary.would_move_bytes)}) would move, "
            f"{summary.would_fail} would fail"
        )
        for reason, count in sorted(summary.failure_reasons.items()):
            click.echo(f"  {count} × {reason}")
    else:
        click.echo(
            f"moved {summary.moved} ({format_bytes(summary.bytes_moved)}), adopted {summary.adopted}, "
            f"skipped {summary.skipped}, failed {summary.failed}; {summary.remaining_in_drive} left in Drive"
        )
        for reason, count in sorted(summary.failure_reasons.items()):
            click.echo(f"  {count} × {reason}")
        click.echo(summary.settings_message)
        if summary.stored_differently:
            click.echo(
                f"  {summary.stored_differently} × served by the S3 server with another Content-Type than "
                "the one sent (migrated, bytes verified; the recorded type is kept)"
            )
    if summary.stopped:
        click.echo(f"error: the migration stopped: {summary.stopped}", err=True)
    if not summary.dry_run and (summary.remaining_in_drive or summary.not_attempted or summary.stopped):
        sys.exit(1)


@storage_group.command("status")
@click.option("--bucket", help="Primary bucket (default: the primary_bucket setting).")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(bucket: str | None, as_json: bool) -> None:
    """MinIO health, buckets with object counts and bytes, assets still in Google Drive."""
    settings = load_settings()
    app_db, s3 = _postgres(settings), _s3(settings)
    result = mig.storage_status(app_db.connect, s3.client(), s3.endpoint, bucket or settings.primary_bucket)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2, sort_keys=True))
    else:
        click.echo(f"MinIO {result.endpoint}: {'reachable' if result.reachable else result.error}")
        for b in result.buckets:
            more = "+" if b.truncated else ""
            click.echo(f"  {b.name}: {b.objects}{more} objects, {format_bytes(b.bytes)}")
        click.echo(
            f"assets in MinIO: {result.assets_in_minio}, still in Google Drive: {result.assets_in_drive}"
        )
        click.echo(
            f"media_asset_settings: {result.settings_provider}; migration: {result.migration_status or '-'}"
        )
    if not result.healthy:
        problem = result.error or f"the primary bucket {result.primary_bucket!r} does not exist"
        click.echo(f"error: {problem}", err=True)
        sys.exit(1)


def register(group: click.Group) -> None:
    group.add_command(storage_group)
