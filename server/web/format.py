"""Display formatting shared by every view model: absolute and relative times, transitions."""

from __future__ import annotations

from datetime import UTC, datetime


def relative_time(then: datetime, now: datetime) -> str:
    """``"5 minutes ago"`` style age of ``then`` at ``now``."""
    seconds = (now - then).total_seconds()
    if seconds < -60:
        return "in the future (agent clock ahead)"
    if seconds < 45:
        return "just now"
    for unit, size, limit in (
        ("minute", 60, 60),
        ("hour", 3600, 24),
        ("day", 86400, 30),
        ("month", 86400 * 30, 12),
    ):
        count = int(seconds // size)
        if count < limit:
            count = max(count, 1)
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    years = max(int(seconds // (86400 * 365)), 1)
    return f"{years} year{'s' if years != 1 else ''} ago"


def display_time(value: datetime) -> str:
    """``2026-01-31 14:30:05 UTC``."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def transition(source: str, target: str) -> str:
    """``"v1 → v2"`` (``?`` for an unknown end; ``""`` when both are unknown)."""
    if not source and not target:
        return ""
    return f"{source or '?'} → {target or '?'}"


def human_bytes(count: int) -> str:
    """``1.5 GiB`` style size; ``—`` for zero (not reported)."""
    if count <= 0:
        return "—"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover - the loop always returns
