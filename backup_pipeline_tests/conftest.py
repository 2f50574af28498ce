"""Test harness: every fixture starts a real component (see backup_pipeline_tests/fixtures)."""

pytest_plugins = [
    "backup_pipeline_tests.fixtures.postgres",
    "backup_pipeline_tests.fixtures.s3",
    "backup_pipeline_tests.fixtures.drive",
    "backup_pipeline_tests.fixtures.dagster",
    "backup_pipeline_tests.fixtures.alert_receivers",
    "backup_pipeline_tests.fixtures.scheduling",
]
