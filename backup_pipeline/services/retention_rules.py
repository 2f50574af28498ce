"""Grandfather-father-son (GFS) retention rules, and the per-set report of why a set is kept.

Pure functions, no Dagster and no destination: ``services/retention.py`` (``plan_retention``)
calls them with the complete regular sets it found, and ``ops/retention.py`` renders the report.
The rules are specified in docs/architecture/BACKUP-STRATEGY.md ("Retention rules"); in short:

- **Periods** are computed on the set's creation instant (its backup id, UTC) converted to the
  schedule's IANA time zone: ``daily`` = local calendar date, ``weekly`` = ISO 8601 week of that
  local date (ISO year + week, Monday to Sunday, weeks 1-53: 2026-12-31 and 2027-01-02 are both
  ``2026-W53``), ``monthly`` = local year and month, ``yearly`` = local calendar year. A DST
  change needs no special case: an instant has exactly one local date, the repeated hour of the
  autumn change belongs to that one date, the skipped hour of the spring change is never an
  instant's local time.
- A period rule with count *n* keeps, in each of the *n* newest periods that hold at least one
  candidate set, the newest candidate of that period (preferring, when verification is in use,
  the newest *verified* candidate of the period). Periods without a set do not use up a slot:
  ``daily 7`` after a week without backups still keeps seven sets, from the last seven days that
  had one (restic's ``forget --keep-daily``). Rules are independent: one set may be kept by
  several rules ("daily 2026-12-06", "weekly 2026-W49", "monthly 2026-12").
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

DAILY, WEEKLY, MONTHLY, YEARLY = "daily", "weekly", "monthly", "yearly"
PERIODS = (DAILY, WEEKLY, MONTHLY, YEARLY)
MAX_COUNT = 1000

# Reason labels of the guards (kept although no counting rule keeps the set).
NEWEST_COMPLETE = "newest complete"
NEWEST_VERIFIED = "newest verified"
# Rule 7's window: an unverified (or failed) set newer than the N-th verified set.
NOT_VERIFIED_YET = "not verified, newer than the newest {window} verified"
SAFETY = "safety"
IN_USE = "in use by a restore"
INCOMPLETE_YOUNG = "incomplete, may still be uploading"

KEEP, DELETE, LOCKED = "keep", "delete", "locked"


@dataclass(frozen=True)
class PeriodRules:
    """The daily/weekly/monthly/yearly counts (0 = rule off) and the zone their periods are in."""

    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    timezone: str = "UTC"

    def counts(self) -> list[tuple[str, int]]:
        return [(DAILY, self.daily), (WEEKLY, self.weekly), (MONTHLY, self.monthly), (YEARLY, self.yearly)]

    @property
    def active(self) -> bool:
        return any(count > 0 for _, count in self.counts())

    def describe(self) -> str:
        on = [f"{rule} {count}" for rule, count in self.counts() if count > 0]
        return f"{', '.join(on)} ({self.timezone})" if on else "no period rules"


# The names a caller's fields carry, for error messages (settings: env names; run config: keys).
SETTING_NAMES: Mapping[str, str] = {
    "keep_last": "BACKUP_PIPELINE_RETENTION_KEEP_LAST",
    DAILY: "BACKUP_PIPELINE_RETENTION_KEEP_DAILY",
    WEEKLY: "BACKUP_PIPELINE_RETENTION_KEEP_WEEKLY",
    MONTHLY: "BACKUP_PIPELINE_RETENTION_KEEP_MONTHLY",
    YEARLY: "BACKUP_PIPELINE_RETENTION_KEEP_YEARLY",
    "timezone": "BACKUP_PIPELINE_SCHEDULE_TIMEZONE",
}
CONFIG_NAMES: Mapping[str, str] = {
    "keep_last": "keep_last",
    DAILY: "keep_daily",
    WEEKLY: "keep_weekly",
    MONTHLY: "keep_monthly",
    YEARLY: "keep_yearly",
    "timezone": "timezone",
}


def rule_problems(keep_last: int, periods: PeriodRules, names: Mapping[str, str] = CONFIG_NAMES) -> list[str]:
    """Every problem of a rule set as "<field>: <rule>", fields named by ``names``; [] when valid."""
    return [f"{names[key]}: {text}" for key, text in rule_violations(keep_last, periods, names)]


def rule_violations(
    keep_last: int, periods: PeriodRules, names: Mapping[str, str] = CONFIG_NAMES
) -> list[tuple[str, str]]:
    """(field key, the rule it breaks) for every problem; ``names`` name the other fields in the text.

    All counts 0 is refused rather than read as "keep everything" or "delete everything": a
    policy that keeps nothing is a typo far more often than a wish (and the newest complete set
    would be kept anyway); keeping everything is done by not running retention.
    """
    problems = []
    if keep_last < 0:
        problems.append(
            (
                "keep_last",
                f"must be at least 1 (or 0 when a daily, weekly, monthly or yearly count is set), got {keep_last}",
            )
        )
    elif keep_last > MAX_COUNT:
        problems.append(("keep_last", f"must be at most {MAX_COUNT}, got {keep_last}"))
    elif keep_last == 0 and not periods.active:
        off = ", ".join(names[rule] for rule in PERIODS)
        problems.append(
            (
                "keep_last",
                f"must be at least 1 when {off} are all 0: rules that keep nothing are refused "
                "(to keep every backup, do not run retention), got 0",
            )
        )
    for rule, count in periods.counts():
        if count < 0 or count > MAX_COUNT:
            problems.append((rule, f"must be 0 (rule off) to {MAX_COUNT}, got {count}"))
    try:
        zoneinfo.ZoneInfo(periods.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        problems.append(
            ("timezone", f"must be an IANA time zone such as UTC or Europe/Berlin, got {periods.timezone!r}")
        )
    return problems


def period_label(rule: str, local: datetime) -> str:
    """The period of a local time under ``rule``; labels of one rule sort in time order."""
    if rule == DAILY:
        return local.date().isoformat()
    if rule == WEEKLY:
        iso = local.date().isocalendar()
        return f"{iso.year:04d}-W{iso.week:02d}"
    if rule == MONTHLY:
        return f"{local.year:04d}-{local.month:02d}"
    if rule == YEARLY:
        return f"{local.year:04d}"
    raise ValueError(f"unknown period rule {rule!r}")


@dataclass(frozen=True)
class Candidate:
    """A complete regular set a period rule may keep."""

    backup_id: str
    created: datetime  # timezone-aware
    preferred: bool = True  # verified (or verification not in use)


def select_periods(candidates: Iterable[Candidate], periods: PeriodRules) -> dict[str, list[str]]:
    """backup id → the period rules that keep it, e.g. ``["daily 2026-12-06", "weekly 2026-W49"]``."""
    zone = zoneinfo.ZoneInfo(periods.timezone)
    local = [(c, c.created.astimezone(zone)) for c in candidates]
    kept: dict[str, list[str]] = {}
    for rule, count in periods.counts():
        if count <= 0:
            continue
        groups: dict[str, list[Candidate]] = {}
        for candidate, when in local:
            groups.setdefault(period_label(rule, when), []).append(candidate)
        for label in sorted(groups, reverse=True)[:count]:
            # A verified set is the one worth keeping for its period; the newest of those.
            chosen = max(groups[label], key=lambda c: (c.preferred, c.created, c.backup_id))
            kept.setdefault(chosen.backup_id, []).append(f"{rule} {label}")
    return kept


@dataclass(frozen=True)
class SetDecision:
    """One set's fate and why: for a kept set the rules (or guard) keeping it, else why it is due."""

    backup_id: str
    created: datetime
    action: str  # KEEP, DELETE or LOCKED (due, but the destination keeps it for now)
    reasons: tuple[str, ...]
    kind: str = "regular"
    complete: bool = True


def rule_family(reason: str) -> str:
    """The rule a reason label belongs to: "daily 2026-12-05" → "daily", "newest 7" → "newest 7"."""
    head = reason.split(" ", 1)[0]
    return head if head in PERIODS else reason


def rule_counts(decisions: Sequence[SetDecision]) -> dict[str, int]:
    """Kept sets per rule (a set kept by several rules counts under each), plus deleted and locked."""
    counts: dict[str, int] = {}
    for decision in decisions:
        if decision.action == KEEP:
            for family in dict.fromkeys(rule_family(r) for r in decision.reasons):
                counts[family] = counts.get(family, 0) + 1
        else:
            key = "to delete" if decision.action == DELETE else "locked"
            counts[key] = counts.get(key, 0) + 1
    return counts


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def decisions_table(decisions: Sequence[SetDecision], timezone: str, limit: int = 50) -> str:
    """Markdown table of the newest ``limit`` decisions (bounded metadata), newest first."""
    zone = zoneinfo.ZoneInfo(timezone)
    lines = [
        f"| backup set | created ({timezone}) | decision | why |",
        "|---|---|---|---|",
    ]
    for d in decisions[:limit]:
        kind = "" if d.kind == "regular" else f" ({d.kind})"
        status = d.action + ("" if d.complete else ", incomplete")
        when = d.created.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
        lines.append(f"| `{d.backup_id}`{kind} | {when} | {status} | {_cell('; '.join(d.reasons))} |")
    if len(decisions) > limit:
        lines.append(f"| … {len(decisions) - limit} older sets not shown | | | |")
    return "\n".join(lines)
