"""Server-side SVG charts: geometry computed here, drawn by a template (no JavaScript).

The fleet overview shows events per hour by severity as stacked bars. This module turns the
counts into a view model of rectangles and axis ticks in SVG user units; ``_chart.html`` draws
them with presentation attributes and CSS classes only (the CSP forbids inline styles).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from server.domain import Severity

# Bottom to top: the eye reads errors first at the base of each bar.
STACK_ORDER: tuple[Severity, ...] = (
    Severity.ERROR,
    Severity.WARNING,
    Severity.SUCCESS,
    Severity.INFO,
)
SEVERITY_NOUNS: dict[str, tuple[str, str]] = {
    Severity.ERROR: ("error", "errors"),
    Severity.WARNING: ("warning", "warnings"),
    Severity.SUCCESS: ("success", "successes"),
    Severity.INFO: ("info", "info"),
}
SEVERITY_LABELS: dict[str, str] = {
    Severity.ERROR: "Errors",
    Severity.WARNING: "Warnings",
    Severity.SUCCESS: "Successes",
    Severity.INFO: "Info",
}


@dataclass(frozen=True, slots=True)
class Segment:
    """One severity's part of one bar."""

    severity: str
    css_class: str
    count: int
    y: float
    height: float


@dataclass(frozen=True, slots=True)
class Bar:
    """One hour: its stacked segments and a tooltip (``<title>``) text."""

    x: float
    width: float
    hour_label: str
    total: int
    segments: tuple[Segment, ...]
    title: str


@dataclass(frozen=True, slots=True)
class Tick:
    """An axis tick: its position (x for the time axis, y for the count axis) and label."""

    position: float
    label: str


@dataclass(frozen=True, slots=True)
class LegendItem:
    severity: str
    label: str
    css_class: str
    total: int


@dataclass(frozen=True, slots=True)
class StackedBarChart:
    """Everything ``_chart.html`` draws; sizes are SVG user units (the SVG scales)."""

    title: str
    description: str  # a text summary for assistive technology (<desc>)
    width: int
    height: int
    plot_left: float
    plot_top: float
    plot_right: float
    plot_bottom: float
    bars: tuple[Bar, ...]
    y_ticks: tuple[Tick, ...]
    x_ticks: tuple[Tick, ...]
    legend: tuple[LegendItem, ...]
    total: int

    @property
    def empty(self) -> bool:
        return self.total == 0


def nice_max(value: int, ticks: int = 4) -> int:
    """The smallest axis maximum at or above ``value`` whose ``ticks`` equal steps are "round"
    integers (1, 2, 2.5, 5 x 10^n): 4, 8, 20, 40, 80, 100, 200, ..."""
    needed = max(value, 1) / ticks
    magnitude = 10 ** max(0, math.floor(math.log10(needed)))
    for step in (1, 2, 2.5, 5, 10):
        size = step * magnitude
        if size >= needed and size == int(size):
            return int(size) * ticks
    return int(10 * magnitude * ticks)  # pragma: no cover - the loop always returns


def _count(count: int, severity: Severity) -> str:
    singular, plural = SEVERITY_NOUNS[severity]
    return f"{count} {singular if count == 1 else plural}"


def _hour_label(hour: datetime) -> str:
    return hour.astimezone(UTC).strftime("%H:%M")


def events_per_hour_chart(
    hours: Sequence[tuple[datetime, Mapping[str, int]]],
    *,
    width: int = 720,
    height: int = 220,
    title: str = "Events per hour by severity, last 24 hours",
) -> StackedBarChart:
    """A stacked bar chart of ``hours``: ``(hour start, {severity: count})``, oldest first."""
    left, right, top, bottom = 40.0, width - 8.0, 10.0, height - 26.0
    plot_w, plot_h = right - left, bottom - top
    totals = [sum(max(0, c) for c in counts.values()) for _, counts in hours]
    peak = nice_max(max(totals, default=0))
    slot = plot_w / max(len(hours), 1)
    bar_w = max(slot * 0.72, 1.0)
    bars: list[Bar] = []
    for i, ((hour, counts), total) in enumerate(zip(hours, totals, strict=True)):
        x = left + i * slot + (slot - bar_w) / 2
        y = bottom
        segments: list[Segment] = []
        for severity in STACK_ORDER:
            count = max(0, counts.get(severity.value, 0))
            if count == 0:
                continue
            h = plot_h * count / peak
            y -= h
            segments.append(Segment(severity.value, f"bar-{severity.value}", count, y, h))
        parts = [_count(counts.get(s.value, 0), s) for s in STACK_ORDER if counts.get(s.value, 0)]
        label = _hour_label(hour)
        detail = ", ".join(parts) if parts else "no events"
        bars.append(
            Bar(
                round(x, 2),
                round(bar_w, 2),
                label,
                total,
                tuple(segments),
                f"{label} UTC: {detail}",
            )
        )
    y_ticks = tuple(Tick(round(bottom - plot_h * k / 4, 2), str(peak * k // 4)) for k in range(5))
    every = max(1, math.ceil(len(hours) / 8))
    x_ticks = tuple(
        Tick(round(left + i * slot + slot / 2, 2), _hour_label(hour))
        for i, (hour, _) in enumerate(hours)
        if i % every == 0
    )
    legend = tuple(
        LegendItem(
            s.value,
            SEVERITY_LABELS[s],
            f"bar-{s.value}",
            sum(max(0, counts.get(s.value, 0)) for _, counts in hours),
        )
        for s in STACK_ORDER
    )
    total = sum(totals)
    if total:
        summary = ", ".join(_count(item.total, Severity(item.severity)) for item in legend)
        busiest = max(range(len(hours)), key=lambda i: totals[i])
        description = (
            f"{total} events in the last {len(hours)} hours: {summary}. "
            f"Busiest hour: {_hour_label(hours[busiest][0])} UTC with {totals[busiest]} events."
        )
    else:
        description = f"No events in the last {len(hours)} hours."
    return StackedBarChart(
        title=title,
        description=description,
        width=width,
        height=height,
        plot_left=left,
        plot_top=top,
        plot_right=right,
        plot_bottom=bottom,
        bars=tuple(bars),
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        legend=legend,
        total=total,
    )
