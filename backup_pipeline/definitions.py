"""The one ``Definitions`` of the code location (loaded by ``workspace.yaml``).

Settings are loaded and validated here, once, when the code location loads: a missing or
malformed setting makes the location fail to load with ``SettingsError`` naming every
bad field (the same verdict ``backup-pipeline check`` prints).

To add something: jobs go into ``JOBS`` in ``jobs.py``; schedules, sensors and asset specs
are appended to the lists in ``build_definitions`` below (build them from ``settings``).
"""

from __future__ import annotations

import dagster as dg

from backup_pipeline import admin_view
from backup_pipeline.audit import record_settings_at_load
from backup_pipeline.executors import executor_for
from backup_pipeline.jobs import JOBS
from backup_pipeline.ops import backup as backup_ops
from backup_pipeline.ops import migration as migration_ops
from backup_pipeline.ops import pitr as pitr_ops
from backup_pipeline.ops import verification as verification_ops
from backup_pipeline.resources import DestinationResource, build_resources
from backup_pipeline.schedules import build_backup_schedule, build_pitr_schedule, build_verify_schedule
from backup_pipeline.sensors import build_pitr_archive_sensor, build_sensors
from backup_pipeline.settings import BackupSettings, DestinationKind, load_settings


def build_definitions(settings: BackupSettings) -> dg.Definitions:
    schedules: list[dg.ScheduleDefinition] = [
        build_backup_schedule(settings),
        build_verify_schedule(settings),
    ]
    sensors: list[dg.SensorDefinition] = [
        *build_sensors(settings),
        verification_ops.build_verification_alert_sensor(settings),
        verification_ops.build_verify_after_backup_sensor(settings.run_sensor_interval_seconds),
        admin_view.build_status_sensor(settings),
    ]
    assets: list[dg.AssetSpec] = [
        migration_ops.STORAGE_MIGRATION_SPEC,
        backup_ops.BACKUP_SET_SPEC,
        admin_view.BACKUP_HEALTH_SPEC,
    ]
    backup_job = backup_ops.build_backup_job(
        backup_ops.backup_config_from_settings(settings),
        executor_def=executor_for(settings),
        description=admin_view.backup_job_description(settings),
        record_checks=admin_view.build_record_checks_op(settings),
    )
    jobs: list[dg.JobDefinition] = [*JOBS, backup_job]
    checks: list[dg.AssetChecksDefinition] = [
        migration_ops.build_storage_status_check(settings.primary_bucket),
        verification_ops.build_verification_check(),
        *admin_view.build_backup_checks(settings),
    ]
    if settings.incremental_objects and settings.primary.kind == DestinationKind.GOOGLE_DRIVE:
        # Only here can a backup seed (Drive's daily upload cap); BACKUP-STRATEGY.md, Seeding.
        from backup_pipeline.seed_sensor import build_continue_seed_sensor

        sensors.append(
            build_continue_seed_sensor(
                DestinationResource.from_settings(settings), settings.run_sensor_interval_seconds
            )
        )
    if settings.copy_targets:  # several destinations: copies, their sensors and alert
        from backup_pipeline.copy_sensors import build_copy_sensors
        from backup_pipeline.ops.copy import copy_backup_job

        jobs.append(copy_backup_job)
        sensors += build_copy_sensors(settings)
    if settings.pitr_enabled:  # opt-in profile: with it off, nothing of PITR loads
        jobs += pitr_ops.build_pitr_jobs(settings)
        schedules.append(build_pitr_schedule(settings))
        sensors.append(build_pitr_archive_sensor(settings))
        assets.append(pitr_ops.PITR_ARCHIVE_SPEC)
        checks += pitr_ops.build_pitr_checks(settings)
        if settings.pitr_drive_copy_enabled:  # base backups + WAL bundles on Drive (opt-in)
            from backup_pipeline.ops import pitr_drive

            jobs.append(pitr_drive.build_pitr_drive_job(settings))
            schedules.append(pitr_drive.build_pitr_drive_schedule(settings))
            assets.append(pitr_drive.PITR_DRIVE_SPEC)
            checks.append(pitr_drive.build_pitr_drive_check(settings))
    return dg.Definitions(
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        assets=assets,
        asset_checks=checks,
        resources={
            **build_resources(settings),
            migration_ops.LEGACY_DRIVE: migration_ops.build_legacy_drive_resource(settings),
        },
        executor=executor_for(settings),
    )


settings = load_settings()
defs = build_definitions(settings)
record_settings_at_load(settings)
