"""backup_pipeline: Dagster jobs that back up, restore and migrate an app's PostgreSQL + MinIO data."""

__version__ = "0.1.0"
