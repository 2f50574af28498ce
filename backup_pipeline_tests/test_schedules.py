"""The backup schedule: built from settings, DST-safe, skips a tick while a backup runs."""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from collections.abc import Iterator

import dagster as dg
import pytest
from dagster._utils.schedules import cron_string_iterator

from backup_pipeline.schedules import build_backup_schedule, describe_schedule
from backup_pipeline.settings import BackupSettings, SettingsError, load_settings

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


def _settings(**env: str) -> BackupSettings:
    return load_settings(env={f"BACKUP_PIPELINE_{k.upper()}": v for k, v in env.items()})


@pytest.fixture()
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def _ticks_on(schedule: dg.ScheduleDefinition, day: dt.date) -> list[dt.datetime]:
    """The tick times the daemon computes (same iterator it uses) that fall on `day` in Berlin."""
    start = dt.datetime.combine(day - dt.timedelta(days=1), dt.time(12), tzinfo=BERLIN).timestamp()
    ticks = cron_string_iterator(start, schedule.cron_schedule, schedule.execution_timezone)  # type: ignore[arg-type]
    found = []
    for tick in ticks:
        local = tick.astimezone(BERLIN)
        if local.date() > day:
            break
        if local.date() == day:
            found.append(local)
    return found


def test_daily_schedule_from_settings() -> None:
    settings = _settings(schedule_time="02:30", schedule_timezone="Europe/Berlin", retention_keep_last="5")
    schedule = build_backup_schedule(settings)
    assert schedule.cron_schedule == "30 2 * * *"
    assert schedule.execution_timezone == "Europe/Berlin"
    assert schedule.job_name == "backup_job"
    assert schedule.default_status is dg.DefaultScheduleStatus.RUNNING
    assert "Daily at 02:30" in (schedule.description or "")
    assert "Europe/Berlin" in (schedule.description or "")
    assert "newest 5 complete" in (schedule.description or "")


def test_weekly_schedule_and_disabled_default() -> None:
    settings = _settings(
        schedule_frequency="weekly",
        schedule_day="monday",
        schedule_time="23:05",
        schedule_timezone="America/New_York",
        schedule_enabled="false",
    )
    schedule = build_backup_schedule(settings)
    assert schedule.cron_schedule == "5 23 * * 1"
    assert schedule.default_status is dg.DefaultScheduleStatus.STOPPED
    assert describe_schedule(settings).startswith("Weekly on Monday at 23:05 (America/New_York")
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
    first = next(cron_string_iterator(start, "5 23 * * 1", "America/New_York"))
    assert first.weekday() == 0 and (first.hour, first.minute) == (23, 5)


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"schedule_time": "25:00"}, "BACKUP_PIPELINE_SCHEDULE_TIME"),
        ({"schedule_time": "2:30"}, "BACKUP_PIPELINE_SCHEDULE_TIME"),
        ({"schedule_timezone": "Mars/Olympus"}, "BACKUP_PIPELINE_SCHEDULE_TIMEZONE"),
        ({"retention_keep_last": "-1"}, "BACKUP_PIPELINE_RETENTION_KEEP_LAST"),
        ({"schedule_frequency": "hourly"}, "BACKUP_PIPELINE_SCHEDULE_FREQUENCY"),
    ],
)
def test_bad_schedule_settings_name_the_setting(env: dict[str, str], field: str) -> None:
    with pytest.raises(SettingsError, match=field):
        _settings(**env)


def test_settings_built_without_validation_still_fail_naming_the_setting() -> None:
    bad_zone = BackupSettings.model_construct(schedule_timezone="Not/AZone")
    with pytest.raises(SettingsError, match="BACKUP_PIPELINE_SCHEDULE_TIMEZONE"):
        build_backup_schedule(bad_zone)
    bad_time = BackupSettings.model_construct(schedule_time="24:61")
    with pytest.raises(SettingsError, match="BACKUP_PIPELINE_SCHEDULE_TIME"):
        build_backup_schedule(bad_time)


def test_dst_spring_forward_runs_once_at_0300() -> None:
    schedule = build_backup_schedule(_settings(schedule_time="02:30", schedule_timezone="Europe/Berlin"))
    # 2025-03-30: clocks jump 02:00 → 03:00 in Berlin; 02:30 does not exist.
    ticks = _ticks_on(schedule, dt.date(2025, 3, 30))
    assert len(ticks) == 1
    assert (ticks[0].hour, ticks[0].minute) == (3, 0)
    assert ticks[0].utcoffset() == dt.timedelta(hours=2)


def test_dst_fall_back_runs_once() -> None:
    schedule = build_backup_schedule(_settings(schedule_time="02:30", schedule_timezone="Europe/Berlin"))
    # 2025-10-26: clocks go 03:00 → 02:00; 02:30 happens twice, the backup runs once.
    ticks = _ticks_on(schedule, dt.date(2025, 10, 26))
    assert len(ticks) == 1
    assert (ticks[0].hour, ticks[0].minute) == (2, 30)
    # A normal day either side: exactly one tick too.
    assert len(_ticks_on(schedule, dt.date(2025, 10, 25))) == 1
    assert len(_ticks_on(schedule, dt.date(2025, 10, 27))) == 1


@pytest.mark.parametrize(
    "tick",
    [
        dt.datetime(2025, 3, 30, 3, 0, tzinfo=BERLIN),
        dt.datetime(2025, 10, 26, 2, 30, fold=1, tzinfo=BERLIN),
    ],
)
def test_tick_on_dst_day_requests_one_backup(instance: dg.DagsterInstance, tick: dt.datetime) -> None:
    schedule = build_backup_schedule(_settings(schedule_time="02:30", schedule_timezone="Europe/Berlin"))
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=tick)
    data = schedule.evaluate_tick(context)
    assert data.run_requests is not None and len(data.run_requests) == 1
    request = data.run_requests[0]
    assert request.run_key == f"scheduled-{tick.isoformat()}"
    assert request.tags["backup_pipeline/trigger"] == "schedule"


@pytest.mark.parametrize("status", [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING])
def test_tick_while_backup_runs_is_skipped(instance: dg.DagsterInstance, status: dg.DagsterRunStatus) -> None:
    running = dg.DagsterRun(job_name="backup_job", run_id=str(uuid.uuid4()), status=status)
    instance.add_run(running)
    schedule = build_backup_schedule(_settings())
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=dt.datetime(2026, 1, 5, 2, 30, tzinfo=dt.UTC)
    )
    data = schedule.evaluate_tick(context)
    assert not data.run_requests
    assert data.skip_message is not None
    assert "still in progress" in data.skip_message
    assert running.run_id[:8] in data.skip_message


def test_tick_after_backup_finished_runs(instance: dg.DagsterInstance) -> None:
    instance.add_run(
        dg.DagsterRun(job_name="backup_job", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.SUCCESS)
    )
    instance.add_run(
        dg.DagsterRun(job_name="retention_job", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED)
    )
    schedule = build_backup_schedule(_settings())
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=dt.datetime(2026, 1, 5, 2, 30, tzinfo=dt.UTC)
    )
    data = schedule.evaluate_tick(context)
    assert data.run_requests is not None and len(data.run_requests) == 1


def test_a_changed_schedule_time_after_a_reload_moves_the_next_tick(instance: dg.DagsterInstance) -> None:
    """The operator's procedure to change the time: new BACKUP_PIPELINE_SCHEDULE_TIME, reload. The
    reloaded definitions (built from the environment as the code server builds them) tick at the
    new Berlin minute, the old one no longer, and the tick requests one backup. (The end-to-end
    schedule module proves one real daemon tick; this is the second tick it used to wait for.)"""
    from backup_pipeline.definitions import build_definitions

    before, after = (
        build_definitions(
            _settings(schedule_time=t, schedule_timezone="Europe/Berlin", schedule_enabled="true")
        )
        for t in ("14:05", "14:07")
    )
    now = dt.datetime(2026, 7, 1, 14, 4, 30, tzinfo=BERLIN)  # summer time: UTC+2
    next_ticks = []
    for defs in (before, after):
        schedule = defs.get_schedule_def("backup_schedule")
        assert schedule.default_status is dg.DefaultScheduleStatus.RUNNING
        ticks = cron_string_iterator(now.timestamp(), schedule.cron_schedule, schedule.execution_timezone)  # type: ignore[arg-type]
        next_ticks.append(next(ticks))
    assert [t.astimezone(BERLIN).strftime("%H:%M") for t in next_ticks] == ["14:05", "14:07"]
    assert next_ticks[1].astimezone(dt.UTC).hour == 12  # Berlin, not UTC
    # After the reload nothing is due at the old minute, one backup at the new one.
    reloaded = after.get_schedule_def("backup_schedule")
    between = cron_string_iterator(next_ticks[0].timestamp() - 1, reloaded.cron_schedule, "Europe/Berlin")
    assert next(between) == next_ticks[1]
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=next_ticks[1])
    data = reloaded.evaluate_tick(context)
    assert data.run_requests is not None and len(data.run_requests) == 1
    assert data.run_requests[0].tags["backup_pipeline/trigger"] == "schedule"
