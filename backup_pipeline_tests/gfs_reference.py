"""An independent reading of the grandfather-father-son rules of BACKUP-STRATEGY.md, for tests.

``services/retention_rules.py`` groups sets by period label and takes the newest labels; this
walks the calendar backwards instead (day by day, Monday by Monday, month by month, year by
year) and asks which sets fall inside each span, so a mistake in one is not repeated in the
other. Nothing here imports the code under test.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo


def reference_period_keeps(
    sets: Sequence[tuple[str, datetime]],
    timezone: str,
    *,
    daily: int = 0,
    weekly: int = 0,
    monthly: int = 0,
    yearly: int = 0,
    verified: Collection[str] | None = None,
) -> dict[str, list[str]]:
    """backup id → the period labels that keep it, for complete regular sets ``(id, created)``."""
    zone = ZoneInfo(timezone)
    oldest_first = sorted(sets, key=lambda s: (s[1], s[0]))
    local_day = {backup_id: created.astimezone(zone).date() for backup_id, created in sets}
    first, last = min(local_day.values()), max(local_day.values())
    kept: dict[str, list[str]] = {}

    def newest_in(start: date, end: date) -> str | None:
        inside = [b for b, _ in oldest_first if start <= local_day[b] <= end]
        good = [b for b in inside if verified is None or b in verified]
        pool = good or inside
        return pool[-1] if pool else None

    def walk(count: int, spans: Callable[[int], tuple[date, date, str]]) -> None:
        found, step = 0, 0
        while found < count:
            start, end, label = spans(step)
            if end < first:
                return
            chosen = newest_in(start, end)
            if chosen is not None:
                kept.setdefault(chosen, []).append(label)
                found += 1
            step += 1

    def day_span(step: int) -> tuple[date, date, str]:
        day = last - timedelta(days=step)
        return day, day, f"daily {day.isoformat()}"

    def week_span(step: int) -> tuple[date, date, str]:
        monday = last - timedelta(days=last.weekday() + 7 * step)
        iso_year, iso_week, _ = monday.isocalendar()
        return monday, monday + timedelta(days=6), f"weekly {iso_year}-W{iso_week:02d}"

    def month_span(step: int) -> tuple[date, date, str]:
        index = last.year * 12 + last.month - 1 - step
        year, month = divmod(index, 12)
        start = date(year, month + 1, 1)
        after = date(year + (month + 1) // 12, (month + 1) % 12 + 1, 1)
        return start, after - timedelta(days=1), f"monthly {year}-{month + 1:02d}"

    def year_span(step: int) -> tuple[date, date, str]:
        year = last.year - step
        return date(year, 1, 1), date(year, 12, 31), f"yearly {year}"

    for count, spans in ((daily, day_span), (weekly, week_span), (monthly, month_span), (yearly, year_span)):
        walk(count, spans)
    return kept
