"""A hand-rolled SVG bar chart (no plotting dependency): throughput per pipeline, grouped."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

COLOURS = {"ours": "#1f77b4", "baseline": "#9e9e9e", "reference": "#d0d0d0"}


@dataclass
class Bar:
    label: str
    value: float
    kind: str
    group: str


def throughput_svg(bars: list[Bar], *, title: str, unit: str = "MB/s") -> str:
    label_w, bar_w, row_h, top = 400, 420, 24, 56
    groups: list[str] = []
    for bar in bars:
        if bar.group not in groups:
            groups.append(bar.group)
    rows: list[tuple[str, Bar | None]] = []
    for group in groups:
        rows.append((group, None))
        rows.extend((group, b) for b in bars if b.group == group)
    height = top + row_h * len(rows) + 40
    width = label_w + bar_w + 90
    peak = max((b.value for b in bars), default=1.0) or 1.0
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
        f'<rect x="10" y="32" width="12" height="12" fill="{COLOURS["ours"]}"/>'
        '<text x="28" y="42">backup_pipeline</text>'
        f'<rect x="150" y="32" width="12" height="12" fill="{COLOURS["baseline"]}"/>'
        '<text x="168" y="42">standard tools</text>',
    ]
    y = top
    for group, bar_or_heading in rows:
        if bar_or_heading is None:
            out.append(f'<text x="10" y="{y + 16}" font-weight="bold">{escape(group)}</text>')
        else:
            bar = bar_or_heading
            length = max(1.0, bar_w * bar.value / peak)
            out.append(f'<text x="{label_w - 6}" y="{y + 16}" text-anchor="end">{escape(bar.label)}</text>')
            out.append(
                f'<rect x="{label_w}" y="{y + 4}" width="{length:.1f}" height="{row_h - 8}" '
                f'fill="{COLOURS.get(bar.kind, "#999")}"/>'
            )
            out.append(f'<text x="{label_w + length + 6:.1f}" y="{y + 16}">{bar.value:.0f} {unit}</text>')
        y += row_h
    out.append(
        f'<text x="10" y="{height - 12}" fill="#555">MB/s = dataset bytes (objects + database, or the part '
        "restored) / median wall time; see docs/benchmarks.md</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"
