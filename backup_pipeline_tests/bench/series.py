"""What the harness measured: several runs of one pipeline, and a goal's verdict."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from .measure import Measurement
from .timeline import RunTimeline

MB = 1e6


def cell(text: str) -> str:
    """A Markdown table cell: pipes of shell pipelines escaped."""
    return text.replace("|", "\\|")


@dataclass
class Series:
    """Several runs of one pipeline."""

    key: str
    label: str
    kind: str  # "ours" | "baseline" | "reference" | "floor"
    group: str  # "backup" | "restore" | "export" | "floor" | "cli"
    data_bytes: int
    runs: list[Measurement] = field(default_factory=list)
    timelines: list[RunTimeline] = field(default_factory=list)

    def med(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)

    def spread(self, attr: str) -> tuple[float, float]:
        values = [getattr(r, attr) for r in self.runs]
        return min(values), max(values)

    @property
    def wall(self) -> float:
        return self.med("wall_s")

    @property
    def cpu(self) -> float:
        return self.med("cpu_s")

    @property
    def mbps(self) -> float:
        return self.data_bytes / MB / self.wall

    @property
    def cpu_per_gb(self) -> float:
        return self.cpu / (self.data_bytes / 1e9)

    @property
    def peak(self) -> float:
        return max(r.peak_rss_mb for r in self.runs)

    def watched(self, key: str) -> float:
        return statistics.median(r.watched_cpu_s.get(key, 0.0) for r in self.runs)

    def timeline(self, key: str) -> float:
        """Median over the runs of one figure of ``RunTimeline.figures()``."""
        return statistics.median(t.figures()[key] for t in self.timelines)

    def median_timeline(self) -> RunTimeline:
        """The run whose wall time is the median one (the lower of the two middle runs)."""
        ordered = sorted(self.timelines, key=lambda t: t.wall)
        return ordered[(len(ordered) - 1) // 2]


@dataclass
class Goal:
    issue: str
    text: str
    met: bool
    measured: str
    reason: str = ""
