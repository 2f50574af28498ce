"""Dagster resources, one module each, assembled from validated settings by ``build_resources``.

Secrets are passed as ``dagster.EnvVar`` so the UI and run config only ever show the
variable's name.
"""

from __future__ import annotations

import os
from typing import Any

from dagster import EnvVar

from backup_pipeline.settings import (
    APP_DATABASE_PASSWORD_ENV,
    S3_ACCESS_KEY_ENV,
    S3_SECRET_KEY_ENV,
    BackupSettings,
)

from .destination import DESTINATION, DestinationResource
from .keys import BackupKeysResource
from .policy import POLICY, BackupPolicyResource
from .postgres import PostgresResource
from .s3 import S3Resource

__all__ = [
    "BackupKeysResource",
    "BackupPolicyResource",
    "DestinationResource",
    "PostgresResource",
    "S3Resource",
    "build_resources",
]

# Resource keys the ops require (``required_resource_keys`` / typed op parameters).
APP_DB = "app_db"
S3 = "s3"
KEYS = "keys"


def build_postgres_resource(settings: BackupSettings) -> PostgresResource:
    # The password is optional (~/.pgpass and trust auth exist); an EnvVar for an unset
    # variable would fail every run, so it is only wired when the variable is set.
    password = EnvVar(APP_DATABASE_PASSWORD_ENV) if os.environ.get(APP_DATABASE_PASSWORD_ENV) else None
    return PostgresResource(
        database_url=settings.app_database_url,
        password=password,
        pg_bin_dir=str(settings.pg_bin_dir) if settings.pg_bin_dir else None,
    )


def build_s3_resource(settings: BackupSettings) -> S3Resource:
    return S3Resource(
        endpoint=settings.s3_endpoint,
        access_key=EnvVar(S3_ACCESS_KEY_ENV),
        secret_key=EnvVar(S3_SECRET_KEY_ENV),
        region=settings.s3_region,
        read_ahead=settings.s3_read_ahead,
        tag_reading=settings.s3_tag_reading,
    )


def build_resources(settings: BackupSettings) -> dict[str, Any]:
    """Every resource of the code location, keyed by the names ops ask for."""
    return {
        APP_DB: build_postgres_resource(settings),
        S3: build_s3_resource(settings),
        DESTINATION: DestinationResource.from_settings(settings),
        POLICY: BackupPolicyResource.from_settings(settings),
        # Without an org secret file the location still loads (health checks, restores with
        # the recovery key); a backup then fails naming the missing file.
        KEYS: BackupKeysResource(
            org_secret_file=str(settings.org_secret_file or ""), state_dir=str(settings.state_dir)
        ),
    }
