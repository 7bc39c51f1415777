"""Server-side SVG charts: geometry computed here, drawn by a template (no JavaScript).

The fleet overview shows events per time bucket (an hour, 6 hours, a day: the
:class:`server.domain.ChartRange`) by severity as stacked bars. This module turns the counts
into a view model of rectangles and axis ticks in SVG user units; ``_chart.html`` draws them
with presentation attributes and CSS classes only (the CSP forbids inline styles).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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
    """One bucket: its stacked segments and a tooltip (``<title>``) text."""

    x: float
    width: float
    label: str
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
    heading: str  # the panel's heading: "Events per hour, last 24 hours"
    description: str  # a text summary for assistive technology (<desc>)
    empty_text: str  # drawn over an empty plot
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


HOUR = 3600
DAY = 24 * HOUR


def _amount(count: int, unit: str) -> str:
    return f"{count} {unit}{'' if count == 1 else 's'}"


def bucket_words(seconds: int) -> str:
    """One bar's length as "Events per …" says it: ``hour``, ``6 hours``, ``day``."""
    count, unit = (seconds // DAY, "day") if seconds % DAY == 0 else (seconds // HOUR, "hour")
    return unit if count == 1 else _amount(count, unit)


def span_words(seconds: int) -> str:
    """A chart's whole span as "last …" says it: hours up to a day, else days."""
    if seconds <= DAY or seconds % DAY:
        return _amount(seconds // HOUR, "hour")
    return _amount(seconds // DAY, "day")


def _day(start: datetime) -> str:
    return f"{start:%a} {start.day} {start:%b}"  # Mon 3 Mar


@dataclass(frozen=True, slots=True)
class TimeAxis:
    """How one bucket size reads: a bar's label (its tooltip, before " UTC: …"), which bars get
    an axis label, and that label."""

    bar_label: Callable[[datetime], str]
    is_tick: Callable[[datetime], bool]
    tick_label: Callable[[datetime], str]


def time_axis(bucket_seconds: int) -> TimeAxis:
    """Hours for hourly bars (a label every 3 hours), day and hours for bars of a few hours
    (a label at each UTC midnight), dates for daily bars (a label on Mondays)."""
    length = timedelta(seconds=bucket_seconds)
    if bucket_seconds >= DAY:
        return TimeAxis(_day, lambda t: t.weekday() == 0, lambda t: f"{t.day} {t:%b}")
    if bucket_seconds > HOUR:
        return TimeAxis(
            lambda t: f"{_day(t)} {t:%H:%M}\N{EN DASH}{t + length:%H:%M}",
            lambda t: t.hour == 0,
            lambda t: f"{t:%a} {t.day}",
        )
    return TimeAxis(lambda t: f"{t:%H:%M}", lambda t: t.hour % 3 == 0, lambda t: f"{t:%H:%M}")


def events_chart(
    buckets: Sequence[tuple[datetime, Mapping[str, int]]],
    bucket_seconds: int,
    *,
    width: int = 720,
    height: int = 220,
) -> StackedBarChart:
    """A stacked bar chart of ``buckets``: ``(bucket start, {severity: count})``, oldest first,
    each ``bucket_seconds`` long; titles and labels name the bucket size and the span."""
    axis = time_axis(bucket_seconds)
    per, span = bucket_words(bucket_seconds), span_words(bucket_seconds * len(buckets))
    utc = [(start.astimezone(UTC), counts) for start, counts in buckets]
    left, right, top, bottom = 40.0, width - 8.0, 10.0, height - 26.0
    plot_w, plot_h = right - left, bottom - top
    totals = [sum(max(0, c) for c in counts.values()) for _, counts in utc]
    peak = nice_max(max(totals, default=0))
    slot = plot_w / max(len(utc), 1)
    bar_w = max(slot * 0.72, 1.0)
    bars: list[Bar] = []
    for i, ((start, counts), total) in enumerate(zip(utc, totals, strict=True)):
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
        label = axis.bar_label(start)
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
    x_ticks = tuple(
        Tick(round(left + i * slot + slot / 2, 2), axis.tick_label(start))
        for i, (start, _) in enumerate(utc)
        if axis.is_tick(start)
    )
    legend = tuple(
        LegendItem(
            s.value,
            SEVERITY_LABELS[s],
            f"bar-{s.value}",
            sum(max(0, counts.get(s.value, 0)) for _, counts in utc),
        )
        for s in STACK_ORDER
    )
    total = sum(totals)
    if total:
        summary = ", ".join(_count(item.total, Severity(item.severity)) for item in legend)
        busiest = max(range(len(utc)), key=lambda i: totals[i])
        description = (
            f"{_amount(total, 'event')} in the last {span}: {summary}. "
            f"Busiest {per}: {bars[busiest].label} UTC with {_amount(totals[busiest], 'event')}."
        )
    else:
        description = f"No events in the last {span}."
    return StackedBarChart(
        title=f"Events per {per} by severity, last {span}",
        heading=f"Events per {per}, last {span}",
        description=description,
        empty_text=f"No events in the last {span}",
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
