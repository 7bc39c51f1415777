"""How the runs pages show things: run-state and step-status styles, durations, short ids,
log levels, clock times and ETAs (used by :mod:`server.web.runs.views` and the handlers)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from server.domain import LogLevel


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

# Ends that are nobody's error: shown neutrally (grey badge, no red error box) in the runs list,
# on the run page and in History. A run that timed out waiting for input is stored FAILED; it is
# told apart by the agent's reason ("no input within ...") after it asked for input.
TIMED_OUT = StateStyle("timed_out", "Timed out waiting for input", "cancelled")
UP_TO_DATE = StateStyle("up_to_date", "Already up to date", "success")
QUIET_KEYS = frozenset({"cancelled", "timed_out", "awaiting_input", "up_to_date"})
_TIMED_OUT_TEXT = "no input within"

# History: how an execution event of such an end reads, by the agent's exception type.
# (label, severity style key) — the key is a SeverityStyle of server.web.history.views.
EVENT_ENDS: dict[str, tuple[str, str]] = {
    "RunCancelled": ("Execution cancelled", "cancelled"),
    "InputTimeout": ("Execution timed out waiting for input", "timed_out"),
}

STEP_STYLES: dict[str, StateStyle] = {
    "pending": StateStyle("pending", "Pending", "pending"),
    "running": StateStyle("running", "Running", "running"),
    "succeeded": StateStyle("succeeded", "Succeeded", "success"),
    "failed": StateStyle("failed", "Failed", "error"),
    "rolled_back": StateStyle("rolled_back", "Rolled back", "warning"),
    "skipped": StateStyle("skipped", "Skipped", "cancelled"),
}

LOG_LEVELS: tuple[str, ...] = tuple(level.value for level in LogLevel)  # severity order


def state_style(state: str) -> StateStyle:
    """The style of a run state; an unknown one is shown neutrally under its own name."""
    key = state.upper()
    return STATE_STYLES.get(key) or StateStyle(
        "pending", key.replace("_", " ").capitalize(), "info"
    )


def run_state_style(
    state: str, error_message: str = "", asked_input: bool = False, no_op: bool = False
) -> StateStyle:
    """The style of a run as lists and its page show it: its state's, except a FAILED run that
    timed out waiting for input (``asked_input`` and the agent's reason) and a SUCCEEDED run
    that had nothing to do (``no_op``: already at the target version, no steps)."""
    key = state.upper()
    if key == "FAILED" and asked_input and _TIMED_OUT_TEXT in error_message:
        return TIMED_OUT
    if key == "SUCCEEDED" and no_op:
        return UP_TO_DATE
    return state_style(state)


def is_quiet(style: StateStyle) -> bool:
    """Whether a run in this style ended (or waits) without an error: no red error box."""
    return style.key in QUIET_KEYS


def step_style(status: str) -> StateStyle:
    """The style of a step status; unknown ones neutrally."""
    return STEP_STYLES.get(status.lower()) or StateStyle(
        "pending", status.replace("_", " ").capitalize() or "Unknown", "info"
    )


def run_url(run_id: str) -> str:
    """``/runs/{id}`` with the id percent-encoded."""
    return f"/runs/{quote(run_id, safe='')}"


def short_id(run_id: str) -> str:
    """The last 8 characters of a UUID: its random tail (agents make time-ordered UUIDv7 ids,
    whose leading characters are the same for every run of the same minute). The full id is
    shown alongside."""
    tail = run_id.rsplit("-", 1)[-1][-8:]
    return tail if 4 <= len(tail) < len(run_id) else run_id


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


def display_clock(value: datetime) -> str:
    """``14:30:05.123`` (UTC): log lines are read at sub-second resolution."""
    return value.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]


ESTIMATING = "estimating…"


def eta_text(seconds: float | None, basis: str, steps_done: int = 0) -> str:
    """``about 2 min 05 s left (from this run's steps)``; ``estimating…`` when there is nothing
    to estimate from yet. "almost done" only once a step is done (never at 0 of 3 steps)."""
    if seconds is None:
        return ESTIMATING
    source = {
        "this_run": " (from this run's steps so far)",
        "past_runs": " (from past runs of this migration)",
    }.get(basis, "")
    if seconds < 1:
        return f"almost done{source}" if steps_done > 0 else f"less than 1 s left{source}"
    return f"about {format_duration(seconds)} left{source}"
