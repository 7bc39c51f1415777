"""View models of the runs pages (``/runs``, ``/runs/{id}``) and the run stream's fragments.

Built from the runs service's domain objects; templates never see ORM rows. Agent-supplied
strings (step names, errors, log messages, metadata) stay plain ``str``: autoescaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote


@dataclass(frozen=True, slots=True)
class StateStyle:
    """How a run state looks: colour (``key`` -> ``state-<key>`` CSS class), icon, label."""

    key: str
    label: str
    icon: str


STATE_STYLES: dict[str, StateStyle] = {
    "PENDING": StateStyle("pending", "Pending", "pending"),
    "RUNNING": StateStyle("running", "Running", "running"),
    "AWAITING_INPUT": StateStyle("awaiting_input", "Waiting for input", "input"),
    "SUCCEEDED": StateStyle("succeeded", "Succeeded", "success"),
    "FAILED": StateStyle("failed", "Failed", "error"),
    "PARTIAL": StateStyle("partial", "Partial", "warning"),
    "CANCELLED": StateStyle("cancelled", "Cancelled", "cancelled"),
}
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "PARTIAL", "CANCELLED"})

STEP_STYLES: dict[str, StateStyle] = {
    "pending": StateStyle("pending", "Pending", "pending"),
    "running": StateStyle("running", "Running", "running"),
    "succeeded": StateStyle("succeeded", "Succeeded", "success"),
    "failed": StateStyle("failed", "Failed", "error"),
    "rolled_back": StateStyle("rolled_back", "Rolled back", "warning"),
    "skipped": StateStyle("skipped", "Skipped", "cancelled"),
}

LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR")


def state_style(state: str) -> StateStyle:
    """The style of a run state; an unknown one is shown neutrally under its own name."""
    key = state.upper()
    return STATE_STYLES.get(key) or StateStyle("pending", key.replace("_", " ").capitalize(), "info")


def step_style(status: str) -> StateStyle:
    """The style of a step status; unknown ones neutrally."""
    return STEP_STYLES.get(status.lower()) or StateStyle(
        "pending", status.replace("_", " ").capitalize() or "Unknown", "info"
    )


def run_url(run_id: str) -> str:
    """``/runs/{id}`` with the id percent-encoded."""
    return f"/runs/{quote(run_id, safe='')}"


def short_id(run_id: str) -> str:
    """The first block of a UUID (what people say out loud); the full id is shown alongside."""
    head = run_id.split("-", 1)[0]
    return head if 4 <= len(head) < len(run_id) else run_id


def format_duration(delta: timedelta | float | None) -> str:
    """``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``; ``—`` when unknown."""
    if delta is None:
        return "—"
    seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
    if seconds < 0:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def level_key(level: str) -> str:
    """CSS key of a log level (``level-<key>``); unknown levels look like INFO."""
    upper = level.upper()
    return upper.lower() if upper in LOG_LEVELS else "info"


@dataclass(frozen=True, slots=True)
class RunRow:
    """One row of a runs table."""

    id: str
    short_id: str
    url: str
    state: StateStyle
    agent_id: str
    hostname: str
    agent_url: str | None
    migration_id: str
    transition: str
    steps_done: int
    steps_total: int
    started_iso: str
    started_display: str
    duration: str


@dataclass(frozen=True, slots=True)
class StepRow:
    number: int
    name: str
    status_key: str
    status_label: str
    icon: str
    duration: str
    error: str


@dataclass(frozen=True, slots=True)
class LogLineRow:
    seq: int
    time_iso: str
    time_display: str
    level: str
    level_key: str
    source: str
    message: str
    metadata: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class CountChip:
    name: str
    key: str
    count: int


@dataclass(frozen=True, slots=True)
class LogStatsView:
    total: int
    levels: tuple[CountChip, ...]
    sources: tuple[CountChip, ...]


def log_stats_view(by_level: dict[str, int], by_source: dict[str, int]) -> LogStatsView:
    """Counts by level (in severity order, known levels always shown) and by source (busiest
    first)."""
    levels = [CountChip(name, level_key(name), by_level.get(name, 0)) for name in LOG_LEVELS]
    levels.extend(
        CountChip(name, level_key(name), n) for name, n in sorted(by_level.items())
        if name not in LOG_LEVELS
    )
    sources = tuple(
        CountChip(name, "source", n)
        for name, n in sorted(by_source.items(), key=lambda item: (-item[1], item[0]))
    )
    return LogStatsView(sum(by_level.values()), tuple(levels), sources)


def display_clock(value: datetime) -> str:
    """``14:30:05.123`` (UTC): log lines are read at sub-second resolution."""
    return value.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]


@dataclass(frozen=True, slots=True)
class RunDetailView:
    """The run page's status block (also streamed as the ``run`` frame)."""

    id: str
    short_id: str
    url: str
    state_name: str  # PENDING, RUNNING, ...
    state: StateStyle
    terminal: bool
    cancellable: bool
    agent_id: str
    hostname: str
    agent_url: str | None
    migration_id: str
    transition: str
    steps_done: int
    steps_total: int
    percent: int
    progress_text: str
    eta: str
    started_iso: str
    started_display: str
    finished_iso: str
    finished_display: str
    duration: str
    error_message: str
    input_request: str
    cancel_note: str
    steps: tuple[StepRow, ...]
    stats: LogStatsView


def run_json(run: RunDetailView) -> dict[str, object]:
    """The ``run`` object of a stream frame (what run.js reads; the HTML carries the rest)."""
    return {
        "id": run.id,
        "state": run.state_name,
        "terminal": run.terminal,
        "cancellable": run.cancellable,
        "steps_done": run.steps_done,
        "steps_total": run.steps_total,
        "percent": run.percent,
        "eta": run.eta,
        "error_message": run.error_message,
        "log_lines": run.stats.total,
    }


def log_line_json(line: LogLineRow) -> dict[str, object]:
    """The ``line`` object of a stream frame."""
    return {
        "seq": line.seq,
        "timestamp": line.time_iso,
        "level": line.level,
        "source": line.source,
        "message": line.message,
        "metadata": dict(line.metadata),
    }
