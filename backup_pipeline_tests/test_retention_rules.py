"""Grandfather-father-son retention (services/retention_rules.py through plan_retention), no Dagster.

Expected keeps come from ``gfs_reference.py`` (a calendar walk written from the docs) or are
written out by hand; never from the code under test.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from backup_pipeline.services.backup_parts import SET_KIND_SAFETY, new_backup_id
from backup_pipeline.services.retention import BackupSetInfo, RetentionError, plan_retention
from backup_pipeline.services.retention_rules import (
    DELETE,
    KEEP,
    PeriodRules,
    SetDecision,
    decisions_table,
    rule_counts,
    rule_problems,
)
from backup_pipeline.settings import SettingsError, load_settings
from backup_pipeline_tests.gfs_reference import reference_period_keeps

GRACE = timedelta(hours=24)


def _set(when: datetime, n: int = 0) -> BackupSetInfo:
    created = when.astimezone(UTC)
    return BackupSetInfo(new_backup_id(created, f"{n:08x}"), created, True, 3, 300)


def _local(zone: str, day: date, at: time, fold: int = 0) -> datetime:
    return datetime.combine(day, at, tzinfo=ZoneInfo(zone)).replace(fold=fold)


def _year_of_sets(zone: str) -> list[BackupSetInfo]:
    """A set at 02:30 local every day from 2026-01-01 to 2027-01-10, and on some days more:
    00:30 and 23:50 local (another UTC date than the local one in both zones), several a day,
    the repeated 02:30 of Berlin's autumn change twice, and the DST days of both zones."""
    sets: list[BackupSetInfo] = []
    day = date(2026, 1, 1)
    while day <= date(2027, 1, 10):
        times = [(time(2, 30), 0)]
        if day.toordinal() % 5 == 0 or day in (date(2026, 3, 29), date(2026, 3, 8)):
            times.insert(0, (time(0, 30), 0))
        if day.toordinal() % 3 == 0 or day in (date(2026, 11, 1), date(2026, 12, 31)):
            times += [(time(12, 0), 0), (time(23, 50), 0)]
        if zone == "Europe/Berlin" and day == date(2026, 10, 25):
            times.append((time(2, 30), 1))  # 02:30 CEST, then 02:30 CET an hour later
        for at, fold in sorted(times):
            sets.append(_set(_local(zone, day, at, fold), len(sets)))
        day += timedelta(days=1)
    return sets


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York"])
def test_a_year_of_daily_sets_across_dst_and_iso_week_53(zone: str) -> None:
    sets = _year_of_sets(zone)
    now = sets[-1].created + timedelta(hours=1)
    counts = {"daily": 10, "weekly": 9, "monthly": 14, "yearly": 3}
    plan = plan_retention(
        sets, keep_last=3, incomplete_grace=GRACE, now=now, periods=PeriodRules(**counts, timezone=zone)
    )
    expected = reference_period_keeps([(s.backup_id, s.created) for s in sets], zone, **counts)
    newest = sorted(sets, key=lambda s: s.created, reverse=True)
    for info in newest[:3]:
        expected[info.backup_id] = ["newest 3", *expected.get(info.backup_id, [])]
    got = {d.backup_id: list(d.reasons) for d in plan.decisions if d.action == KEEP}
    assert got == expected
    assert {d.backup_id for d in plan.delete} == {s.backup_id for s in sets} - set(expected)
    assert all(d.reason.startswith("kept by no rule: newest 3, daily 10, weekly 9") for d in plan.delete)
    # 10 daily + 9 weekly + 13 months that have sets (2026-01 to 2027-01) + 2 years, as labels.
    labels = [label for reasons in got.values() for label in reasons]
    assert [sum(lb.startswith(rule) for lb in labels) for rule in counts] == [10, 9, 13, 2]
    # 2027-01-01..03 are in ISO week 53 of 2026, with 2026-12-28..31: one weekly set for them.
    assert "weekly 2026-W53" in labels and "weekly 2027-W01" in labels and "yearly 2026" in labels


def test_periods_are_local_days_not_utc_days() -> None:
    """Written out by hand: each set's UTC date differs from its local date."""
    berlin = [
        _set(_local("Europe/Berlin", date(2026, 3, 28), time(2, 30)), 1),
        # 00:30 CET on the spring-forward day = 2026-03-28T23:30Z: a set of 29 March, not 28.
        _set(_local("Europe/Berlin", date(2026, 3, 29), time(0, 30)), 2),
        # 00:30 CET on New Year's Day = 2026-12-31T23:30Z: January 2027, week 2026-W53.
        _set(_local("Europe/Berlin", date(2027, 1, 1), time(0, 30)), 3),
    ]
    assert berlin[1].created == datetime(2026, 3, 28, 23, 30, tzinfo=UTC)
    plan = plan_retention(
        berlin,
        keep_last=0,
        incomplete_grace=GRACE,
        now=berlin[-1].created,
        periods=PeriodRules(daily=3, weekly=3, monthly=3, yearly=3, timezone="Europe/Berlin"),
    )
    reasons = {d.backup_id: d.reasons for d in plan.decisions}
    assert reasons[berlin[2].backup_id] == (
        "daily 2027-01-01",
        "weekly 2026-W53",
        "monthly 2027-01",
        "yearly 2027",
    )
    assert reasons[berlin[1].backup_id] == (
        "daily 2026-03-29",
        "weekly 2026-W13",
        "monthly 2026-03",
        "yearly 2026",
    )
    assert reasons[berlin[0].backup_id] == ("daily 2026-03-28",)  # same ISO week and month as 29 March

    new_york = [
        # Sunday 1 November 2026, the autumn change; 23:50 EST = Monday 2026-11-02T04:50Z.
        _set(_local("America/New_York", date(2026, 11, 1), time(23, 50)), 4),
        _set(_local("America/New_York", date(2026, 11, 2), time(2, 30)), 5),
        # 23:50 EST on New Year's Eve = 2027-01-01T04:50Z: still 2026 in New York.
        _set(_local("America/New_York", date(2026, 12, 31), time(23, 50)), 6),
    ]
    assert new_york[0].created == datetime(2026, 11, 2, 4, 50, tzinfo=UTC)
    plan = plan_retention(
        new_york,
        keep_last=0,
        incomplete_grace=GRACE,
        now=new_york[-1].created,
        periods=PeriodRules(daily=5, weekly=5, yearly=2, timezone="America/New_York"),
    )
    reasons = {d.backup_id: d.reasons for d in plan.decisions}
    assert reasons[new_york[2].backup_id] == ("daily 2026-12-31", "weekly 2026-W53", "yearly 2026")
    assert reasons[new_york[1].backup_id] == ("daily 2026-11-02", "weekly 2026-W45")
    assert reasons[new_york[0].backup_id] == ("daily 2026-11-01", "weekly 2026-W44")
    # The same sets in UTC: the 1 November set falls on Monday 2 November with the next one.
    utc = plan_retention(
        new_york, keep_last=0, incomplete_grace=GRACE, now=new_york[-1].created, periods=PeriodRules(daily=5)
    )
    assert [d.action for d in utc.decisions] == [KEEP, KEEP, DELETE]


def test_several_sets_a_day_keep_the_newest_of_the_day_and_missed_days_use_no_slot() -> None:
    zone = "Europe/Berlin"
    day1, day2, day5 = date(2026, 6, 1), date(2026, 6, 2), date(2026, 6, 5)
    sets = [
        _set(_local(zone, day1, time(2, 30)), 1),
        _set(_local(zone, day1, time(23, 59)), 2),  # newest of 1 June
        _set(_local(zone, day2, time(2, 30)), 3),
        _set(_local(zone, day2, time(9, 0)), 4),  # newest of 2 June
        # no sets on 3 and 4 June
        _set(_local(zone, day5, time(0, 1)), 5),
        _set(_local(zone, day5, time(14, 0)), 6),  # newest of 5 June
    ]
    plan = plan_retention(
        sets,
        keep_last=0,
        incomplete_grace=GRACE,
        now=sets[-1].created,
        periods=PeriodRules(daily=3, timezone=zone),
    )
    kept = {d.backup_id: d.reasons for d in plan.decisions if d.action == KEEP}
    assert kept == {
        sets[5].backup_id: ("daily 2026-06-05",),
        sets[3].backup_id: ("daily 2026-06-02",),
        sets[1].backup_id: ("daily 2026-06-01",),
    }


def _days(n: int, zone: str = "UTC") -> list[BackupSetInfo]:
    return [_set(_local(zone, date(2026, 5, 1) + timedelta(days=i), time(2, 30)), i) for i in range(n)]


def test_the_newest_verified_set_is_kept_even_when_no_rule_keeps_it() -> None:
    sets = _days(4)  # 1-4 May; 4 May failed verification, 1-3 May passed
    verified = frozenset(s.backup_id for s in sets[:3])
    plan = plan_retention(
        sets,
        keep_last=0,
        incomplete_grace=GRACE,
        now=sets[-1].created,
        verified=verified,
        periods=PeriodRules(daily=1),
    )
    reasons = {d.backup_id: d.reasons for d in plan.decisions}
    # 4 May has no verified set, so its newest complete set is the day's set; daily 1 is used up.
    assert reasons[sets[3].backup_id] == ("daily 2026-05-04",)
    assert reasons[sets[2].backup_id] == ("newest verified",)
    assert [d.backup_id for d in plan.delete] == [sets[1].backup_id, sets[0].backup_id]


def test_a_period_prefers_its_newest_verified_set_and_keeps_unverified_periods() -> None:
    zone = "UTC"
    may = [_set(_local(zone, date(2026, 5, d), time(h, 0)), d * 100 + h) for d in (1, 2) for h in (2, 14)]
    april = [_set(_local(zone, date(2026, 4, 30), time(2, 0)), 9)]  # before verification existed
    verified = frozenset({may[0].backup_id, may[2].backup_id})  # the 02:00 sets of 1 and 2 May
    plan = plan_retention(
        april + may,
        keep_last=0,
        incomplete_grace=GRACE,
        now=may[-1].created,
        verified=verified,
        periods=PeriodRules(daily=2, monthly=2),
    )
    reasons = {d.backup_id: d.reasons for d in plan.decisions}
    assert reasons[may[2].backup_id] == ("daily 2026-05-02", "monthly 2026-05")  # verified beats newer
    assert reasons[may[3].backup_id] == ("newest complete",)  # unverified, and the newest
    assert reasons[may[0].backup_id] == ("daily 2026-05-01",)
    assert reasons[april[0].backup_id] == ("monthly 2026-04",)  # no verified set that month
    assert [d.backup_id for d in plan.delete] == [may[1].backup_id]
    # Rule 7's window: with keep_last 2, 1 May 14:00 has only one verified set newer than it.
    plan = plan_retention(
        april + may,
        keep_last=2,
        incomplete_grace=GRACE,
        now=may[-1].created,
        verified=verified,
        periods=PeriodRules(daily=2, monthly=2),
    )
    reasons = {d.backup_id: d.reasons for d in plan.decisions}
    assert reasons[may[1].backup_id] == ("not verified, newer than the newest 2 verified",)
    assert reasons[may[2].backup_id] == ("newest 2 verified", "daily 2026-05-02", "monthly 2026-05")
    assert plan.delete == []


def test_safety_incomplete_and_locked_sets_keep_their_own_rules_beside_gfs() -> None:
    sets = _days(5)
    now = sets[-1].created + timedelta(hours=2)
    safety = BackupSetInfo(
        new_backup_id(now - timedelta(hours=1), "5afe5afe"),
        now - timedelta(hours=1),
        True,
        2,
        200,
        kind=SET_KIND_SAFETY,
    )
    young = BackupSetInfo(
        new_backup_id(now - timedelta(minutes=5), "0000beef"), now - timedelta(minutes=5), False
    )
    locked_until = now + timedelta(days=3)
    oldest = sets[0]
    locked = BackupSetInfo(oldest.backup_id, oldest.created, True, locked_until=locked_until)
    plan = plan_retention(
        [locked, *sets[1:], safety, young],
        keep_last=0,
        incomplete_grace=GRACE,
        now=now,
        periods=PeriodRules(weekly=1),
    )
    by_id = {d.backup_id: d for d in plan.decisions}
    assert by_id[young.backup_id].reasons == ("incomplete, may still be uploading",)
    assert by_id[safety.backup_id].reasons == ("safety",)
    assert by_id[sets[4].backup_id].reasons == ("weekly 2026-W19",)  # 1-3 May: W18; 4-5 May: W19
    assert [d.backup_id for d in plan.delete] == [s.backup_id for s in reversed(sets[1:4])]
    decision = by_id[oldest.backup_id]
    assert decision.action == "locked"
    assert decision.reasons[0] == f"locked until {locked_until.isoformat(timespec='seconds')}"
    assert [entry.backup_id for entry in plan.locked] == [oldest.backup_id]
    assert oldest.backup_id not in {d.backup_id for d in plan.delete}


@pytest.mark.parametrize("seed", range(40))
def test_no_rule_set_ever_deletes_the_newest_complete_or_the_newest_verified_set(seed: int) -> None:
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    sets = [
        BackupSetInfo(new_backup_id(when, f"{i:08x}"), when, rng.random() > 0.2)
        for i, when in enumerate(sorted(start + timedelta(hours=rng.uniform(0, 24 * 400)) for _ in range(60)))
    ]
    complete = [s for s in sets if s.complete]
    verified = None if rng.random() < 0.3 else frozenset(s.backup_id for s in complete if rng.random() < 0.3)
    periods = PeriodRules(
        *(rng.choice([0, 0, 1, 2, 5]) for _ in range(4)),
        timezone=rng.choice(["UTC", "Asia/Kolkata", "America/New_York"]),
    )
    keep_last = rng.choice([0, 1, 3]) if periods.active else rng.choice([1, 3])
    plan = plan_retention(
        sets,
        keep_last=keep_last,
        incomplete_grace=GRACE,
        now=sets[-1].created,
        verified=verified,
        periods=periods,
    )
    kept = set(plan.keep)
    assert complete[-1].backup_id in kept
    newest_verified = [s.backup_id for s in complete if verified is not None and s.backup_id in verified]
    if newest_verified:
        assert newest_verified[-1] in kept
    # Every set has exactly one decision, and a kept set always says why.
    assert sorted(d.backup_id for d in plan.decisions) == sorted(s.backup_id for s in sets)
    assert all(d.reasons for d in plan.decisions)


def test_rule_problems_name_the_field_and_the_rule() -> None:
    assert rule_problems(7, PeriodRules()) == []
    assert rule_problems(0, PeriodRules(weekly=4)) == []
    assert rule_problems(-1, PeriodRules(daily=-2, yearly=1001, timezone="Mars/Olympus")) == [
        "keep_last: must be at least 1 (or 0 when a daily, weekly, monthly or yearly count is set), got -1",
        "keep_daily: must be 0 (rule off) to 1000, got -2",
        "keep_yearly: must be 0 (rule off) to 1000, got 1001",
        "timezone: must be an IANA time zone such as UTC or Europe/Berlin, got 'Mars/Olympus'",
    ]
    [all_zero] = rule_problems(0, PeriodRules())
    assert all_zero.startswith(
        "keep_last: must be at least 1 when keep_daily, keep_weekly, keep_monthly, keep_yearly are all 0"
    )
    with pytest.raises(RetentionError, match="retention_keep_weekly: must be 0"):
        plan_retention(
            [], keep_last=1, incomplete_grace=GRACE, now=datetime.now(UTC), periods=PeriodRules(weekly=-1)
        )


def test_settings_validate_the_counts_once_naming_the_variables() -> None:
    settings = load_settings(
        {
            "BACKUP_PIPELINE_RETENTION_KEEP_LAST": "0",
            "BACKUP_PIPELINE_RETENTION_KEEP_WEEKLY": "4",
            "BACKUP_PIPELINE_RETENTION_KEEP_MONTHLY": "12",
            "BACKUP_PIPELINE_SCHEDULE_TIMEZONE": "Europe/Berlin",
        }
    )
    assert settings.retention_periods == PeriodRules(weekly=4, monthly=12, timezone="Europe/Berlin")
    assert settings.s3_destination_retention_days >= 1
    with pytest.raises(SettingsError) as err:
        load_settings(
            {"BACKUP_PIPELINE_RETENTION_KEEP_LAST": "0", "BACKUP_PIPELINE_RETENTION_KEEP_DAILY": "-3"}
        )
    problems = err.value.problems
    assert any(p.startswith("BACKUP_PIPELINE_RETENTION_KEEP_DAILY: ") for p in problems)
    assert any(p.startswith("BACKUP_PIPELINE_RETENTION_KEEP_LAST: must be at least 1 when") for p in problems)
    with pytest.raises(SettingsError) as err:
        load_settings({"BACKUP_PIPELINE_RETENTION_KEEP_LAST": "0"})
    assert err.value.problems == [
        "BACKUP_PIPELINE_RETENTION_KEEP_LAST: must be at least 1 when BACKUP_PIPELINE_RETENTION_KEEP_DAILY, "
        "BACKUP_PIPELINE_RETENTION_KEEP_WEEKLY, BACKUP_PIPELINE_RETENTION_KEEP_MONTHLY, "
        "BACKUP_PIPELINE_RETENTION_KEEP_YEARLY are all 0: rules that keep nothing are refused (to keep every "
        "backup, do not run retention), got 0"
    ]


def test_report_counts_every_set_and_lists_only_the_newest() -> None:
    created = datetime(2026, 12, 6, 1, 30, tzinfo=UTC)
    decisions = [
        SetDecision(f"20261206T0130{i:02d}Z-0000000{i % 10}", created, KEEP, ("newest 2", "daily 2026-12-06"))
        for i in range(2)
    ] + [SetDecision(f"20261205T0130{i:02d}Z-0000000{i % 10}", created, DELETE, ("a | b",)) for i in range(5)]
    assert rule_counts(decisions) == {"newest 2": 2, "daily": 2, "to delete": 5}
    table = decisions_table(decisions, "Europe/Berlin", limit=3)
    lines = table.splitlines()
    assert lines[0] == "| backup set | created (Europe/Berlin) | decision | why |"
    assert len(lines) == 2 + 3 + 1 and lines[-1].startswith("| … 4 older sets not shown")
    assert "2026-12-06 02:30 CET" in lines[2] and "newest 2; daily 2026-12-06" in lines[2]
    assert "a \\| b" in lines[4]


def test_the_example_of_backup_strategy_md() -> None:
    """docs/architecture/BACKUP-STRATEGY.md, Retention rules, Example: the table as written."""

    def utc(text: str) -> datetime:
        return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)

    created = {
        "A": "2026-12-06 01:30",
        "B": "2026-12-05 13:00",
        "C": "2026-12-05 01:30",
        "D": "2026-12-03 23:30",
        "E": "2026-11-29 01:30",
        "F": "2026-11-27 01:30",
        "G": "2026-10-31 23:30",
        "H": "2026-10-25 00:30",
        "I": "2026-10-25 01:30",
    }
    sets = {name: _set(utc(when), i) for i, (name, when) in enumerate(created.items())}
    name_of = {info.backup_id: name for name, info in sets.items()}

    def kept(monthly: int, verified: frozenset[str] | None = None) -> dict[str, tuple[str, ...]]:
        plan = plan_retention(
            sets.values(),
            keep_last=2,
            incomplete_grace=GRACE,
            now=utc("2026-12-06 12:00"),
            verified=verified,
            periods=PeriodRules(daily=3, weekly=2, monthly=monthly, timezone="Europe/Berlin"),
        )
        return {name_of[d.backup_id]: d.reasons for d in plan.decisions if d.action == KEEP}

    assert kept(2) == {
        "A": ("newest 2", "daily 2026-12-06", "weekly 2026-W49", "monthly 2026-12"),
        "B": ("newest 2", "daily 2026-12-05"),
        "D": ("daily 2026-12-04",),
        "E": ("weekly 2026-W48", "monthly 2026-11"),
    }
    assert kept(3)["I"] == ("monthly 2026-10",)
    assert kept(2, frozenset({sets["B"].backup_id, sets["C"].backup_id})) == {
        "A": ("daily 2026-12-06",),
        "B": ("newest 2 verified", "daily 2026-12-05", "weekly 2026-W49", "monthly 2026-12"),
        "C": ("newest 2 verified",),
        "D": ("daily 2026-12-04",),
        "E": ("weekly 2026-W48", "monthly 2026-11"),
    }


def test_the_schedule_description_states_the_period_rules() -> None:
    from backup_pipeline.schedules import describe_schedule

    settings = load_settings(
        {
            "BACKUP_PIPELINE_RETENTION_KEEP_LAST": "0",
            "BACKUP_PIPELINE_RETENTION_KEEP_DAILY": "7",
            "BACKUP_PIPELINE_RETENTION_KEEP_YEARLY": "2",
            "BACKUP_PIPELINE_SCHEDULE_TIMEZONE": "Europe/Berlin",
        }
    )
    assert (
        "Retention keeps the newest set of each of the last 7 days, plus the newest set of each of the last 2 years;"
        in describe_schedule(settings)
    )
    assert "Retention keeps the newest 7 complete backup sets;" in describe_schedule(load_settings({}))
