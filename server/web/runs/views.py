"""View models of the runs pages (``/runs``, ``/runs/{id}``) and the run stream's fragments.

Built from the runs service's domain objects; templates never see ORM rows. Agent-supplied
strings (step names, errors, log messages, metadata) stay plain ``str``: autoescaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from server.domain import (
    LogLineRecord,
    LogStats,
    RunDetail,
    RunState,
    RunStep,
    RunSummary,
)
from server.web.format import transition
from server.web.forms import AgentChooser, Option
from server.web.refused import RefusedParam
from server.web.runs.styles import (
    LOG_LEVELS,
    StateStyle,
    display_clock,
    eta_text,
    format_duration,
    is_quiet,
    level_key,
    run_state_style,
    run_url,
    short_id,
    step_style,
)

RUNS_TEMPLATE = "_runs.html"  # the runs macros: rows, status, log lines, counts


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
    spec_revision: int = 0  # a run of migration spec ``migration_id``: its revision
    spec_url: str | None = None
    reverts_run_id: str = ""  # a revert: the run it puts back
    reverts_url: str | None = None
    quiet: bool = False  # cancelled, timed out, waiting, up to date: no error styling


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
        CountChip(name, level_key(name), n)
        for name, n in sorted(by_level.items())
        if name not in LOG_LEVELS
    )
    sources = tuple(
        CountChip(name, "source", n)
        for name, n in sorted(by_source.items(), key=lambda item: (-item[1], item[0]))
    )
    return LogStatsView(sum(by_level.values()), tuple(levels), sources)


@dataclass(frozen=True, slots=True)
class InputFieldView:
    """One field of the input prompt (``input_id``: the HTML id of its control)."""

    name: str
    label: str
    secret: bool
    error: str
    input_id: str


@dataclass(frozen=True, slots=True)
class InputPromptView:
    """The input prompt of a run (what was asked; never an answer). ``key`` changes exactly
    when the prompt must be rebuilt (a new ask, or answers sent), so run.js leaves a form the
    user is typing into alone while the rest of the page updates."""

    key: str
    waiting: bool  # the run is AWAITING_INPUT now
    request_id: str
    fields: tuple[InputFieldView, ...]
    requested_iso: str
    requested_display: str
    answered: bool  # answers to this request were sent (waiting for the agent)
    answered_by: str
    answered_iso: str
    answered_display: str
    action: str  # where the form posts


def input_prompt_view(run: RunSummary) -> InputPromptView | None:
    """The run's input prompt, or None when it never asked for input."""
    request = run.input_request
    if request is None:
        return None
    waiting = run.state == RunState.AWAITING_INPUT
    answered = waiting and run.input_answered
    key = f"{request.request_id}:{'sent' if answered else 'open'}" if waiting else ""
    return InputPromptView(
        key=key,
        waiting=waiting,
        request_id=request.request_id,
        fields=tuple(
            InputFieldView(f.name, f.label or f.name, f.secret, f.error, f"input-{f.name}")
            for f in request.fields
        ),
        requested_iso=_iso(run.input_requested_at),
        requested_display=_display(run.input_requested_at),
        answered=answered,
        answered_by=run.input_answered_by or "",
        answered_iso=_iso(run.input_answered_at),
        answered_display=_display(run.input_answered_at),
        action=f"{run_url(run.id)}/inputs",
    )


def input_prompt_json(prompt: InputPromptView | None) -> dict[str, object] | None:
    """The ``input_request`` object of a stream frame: what run.js builds the prompt from (the
    fields asked and their errors; never an answer)."""
    if prompt is None or not prompt.waiting:
        return None
    return {
        "key": prompt.key,
        "request_id": prompt.request_id,
        "fields": [
            {"name": f.name, "label": f.label, "secret": f.secret, "error": f.error}
            for f in prompt.fields
        ],
        "requested_at": prompt.requested_iso,
        "requested_display": prompt.requested_display,
        "answered": prompt.answered,
        "answered_by": prompt.answered_by,
        "answered_display": prompt.answered_display,
        "action": prompt.action,
    }


@dataclass(frozen=True, slots=True)
class RunDetailView:
    """The run page's status block (also streamed as the ``run`` frame): the run's table row
    (id, links, state, agent, transition, steps, start, duration) and what only the page shows."""

    row: RunRow
    state_name: str  # PENDING, RUNNING, ...
    terminal: bool
    cancellable: bool
    percent: int
    progress_text: str
    eta: str
    finished_iso: str
    finished_display: str
    error_message: str
    input_request: str
    cancel_note: str
    steps: tuple[StepRow, ...]
    stats: LogStatsView
    input_prompt: InputPromptView | None = None
    revertible: bool = False  # a succeeded run of a migration spec: its files can be put back


def run_json(run: RunDetailView) -> dict[str, object]:
    """The ``run`` object of a stream frame (what run.js reads; the HTML carries the rest)."""
    return {
        "id": run.row.id,
        "state": run.state_name,
        "terminal": run.terminal,
        "cancellable": run.cancellable,
        "steps_done": run.row.steps_done,
        "steps_total": run.row.steps_total,
        "percent": run.percent,
        "eta": run.eta,
        "error_message": run.error_message,
        "log_lines": run.stats.total,
        "input_request": input_prompt_json(run.input_prompt),
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


def _agent_url(agent_id: str) -> str | None:
    return f"/agents/{quote(agent_id, safe='')}" if agent_id else None


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat() if value is not None else ""


def _display(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else ""


def _no_op(run: RunSummary) -> bool:
    """A succeeded run that changed nothing: already at its target version, no steps."""
    return (
        run.state == RunState.SUCCEEDED
        and run.steps_total == 0
        and bool(run.migration_to)
        and run.migration_from == run.migration_to
    )


def run_row(run: RunSummary, now: datetime) -> RunRow:
    """One runs-table row."""
    style = run_state_style(
        run.state, run.error_message, run.input_requested_at is not None, _no_op(run)
    )
    return RunRow(
        id=run.id,
        short_id=short_id(run.id),
        url=run_url(run.id),
        state=style,
        agent_id=run.agent_id,
        hostname=run.hostname or run.agent_id,
        agent_url=_agent_url(run.agent_id),
        migration_id=run.migration_id,
        transition=transition(run.migration_from, run.migration_to),
        steps_done=run.steps_done,
        steps_total=run.steps_total,
        started_iso=_iso(run.started_at),
        started_display=_display(run.started_at),
        duration=format_duration(run.duration_seconds(now)),
        spec_revision=run.spec_revision,
        spec_url=(
            f"/migrations/{quote(run.migration_id, safe='')}?revision={run.spec_revision}"
            if run.spec_revision > 0 and run.migration_id
            else None
        ),
        reverts_run_id=run.reverts_run_id,
        reverts_url=run_url(run.reverts_run_id) if run.reverts_run_id else None,
        quiet=is_quiet(style),
    )


def step_row(step: RunStep) -> StepRow:
    """One row of the step table."""
    style = step_style(step.status)
    return StepRow(
        number=step.index + 1,
        name=step.name,
        status_key=style.key,
        status_label=style.label,
        icon=style.icon,
        duration=format_duration(step.duration_ms / 1000) if step.duration_ms else "—",
        error=step.error,
    )


def log_line_row(line: LogLineRecord) -> LogLineRow:
    """One log line as the viewer shows it (metadata sorted by key)."""
    return LogLineRow(
        seq=line.seq,
        time_iso=_iso(line.timestamp),
        time_display=display_clock(line.timestamp),
        level=line.level.upper(),
        level_key=level_key(line.level),
        source=line.source,
        message=line.message,
        metadata=tuple(sorted((str(k), str(v)) for k, v in line.metadata.items())),
    )


def _cancel_note(run: RunSummary, cancel_pending: bool) -> str:
    if run.cancelled_by:
        return f"Cancelled by {run.cancelled_by}."
    if cancel_pending:
        who = f" by {run.cancel_requested_by}" if run.cancel_requested_by else ""
        when = f" at {_display(run.cancel_requested_at)}" if run.cancel_requested_at else ""
        return (
            f"Cancellation requested{who}{when}: the agent stops at the next step boundary "
            "and rolls back."
        )
    return ""


def run_detail_view(detail: RunDetail, stats: LogStats, now: datetime) -> RunDetailView:
    """The run page's status block."""
    run = detail.run
    percent = max(0, min(100, round(detail.progress * 100)))
    if run.steps_total:
        progress_text = f"{run.steps_done} of {run.steps_total} steps · {percent}%"
    elif _no_op(run):
        progress_text = f"already up to date ({run.migration_to}), nothing to do"
    else:
        progress_text = "done" if run.terminal else "planning…"
    estimating = run.state in (RunState.RUNNING, RunState.PENDING)
    input_request = ""
    if run.state == "AWAITING_INPUT":
        input_request = (
            "The migration needs a value the old configuration never held; the agent keeps the "
            "run open until it is provided or the run is cancelled."
        )
    return RunDetailView(
        row=run_row(run, now),
        state_name=str(run.state),
        terminal=run.terminal,
        cancellable=not run.terminal and not detail.cancel_pending,
        percent=percent,
        progress_text=progress_text,
        eta=eta_text(detail.eta_seconds, detail.eta_basis, run.steps_done) if estimating else "",
        finished_iso=_iso(run.finished_at),
        finished_display=_display(run.finished_at),
        error_message=run.error_message,
        input_request=input_request,
        cancel_note=_cancel_note(run, detail.cancel_pending),
        steps=tuple(step_row(s) for s in detail.steps),
        stats=log_stats_view(stats.by_level, stats.by_source),
        input_prompt=input_prompt_view(run),
        revertible=run.state == RunState.SUCCEEDED
        and run.spec_revision > 0
        and not run.reverts_run_id,
    )


@dataclass(frozen=True, slots=True)
class RunsPage:
    """Everything ``runs.html`` renders."""

    runs: tuple[RunRow, ...]
    states: tuple[Option, ...]
    agent: AgentChooser
    filtered: bool
    paged: bool
    newest_url: str
    more_url: str | None
    more_fragment_url: str | None
    limit: int | None  # only when it differs from the default
    live_url: str | None = None  # the first page's rows, polled by runs.js (first pages only)
    export_csv_url: str = ""  # every run matching the filters, as a download
    export_jsonl_url: str = ""
    refused: RefusedParam | None = None  # a bad filter value: shown next to its field (400)


@dataclass(frozen=True, slots=True)
class LogFilterForm:
    levels: tuple[Option, ...]
    sources: tuple[Option, ...]
    q: str
    active: bool
    refused: RefusedParam | None = None  # a bad filter value: shown next to its field (400)


@dataclass(frozen=True, slots=True)
class RunPage:
    """Everything ``run.html`` renders."""

    run: RunDetailView
    stats: LogStatsView
    lines: tuple[LogLineRow, ...]
    filters: LogFilterForm
    earlier_url: str | None
    stream_url: str
    log_cursor: int  # the stream's start: lines up to here were examined for this page
    cancel_action: str
    notice: str
    notice_until: str = ""  # "terminal" / "answered": run.js drops the notice when that passes
    revert_action: str = ""
    revert_run_url: str = ""  # the revert this page's Revert button asked for, once reported
    reverted_by_url: str = ""  # the succeeded revert of this run (then no Revert button)
