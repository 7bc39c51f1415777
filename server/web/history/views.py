"""View models for the History page and its JSON twin.

Templates only ever see these dataclasses (built from domain objects), never ORM rows. Every string
that came from an agent stays a plain ``str`` here: the templates autoescape it.
"""

from __future__ import annotations

import errno as errno_codes
import json
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from server.domain import (
    SHORT_TEXT_SCAN,
    Category,
    EventFilter,
    EventPage,
    EventStatus,
    EventType,
    Severity,
    StoredEvent,
    outcome_name,
)
from server.web.format import display_time, human_bytes, relative_time, transition
from server.web.forms import AgentChooser, Option, agent_chooser
from server.web.refused import RefusedParam
from server.web.request import event_export_url, filter_url, format_time, is_filtered
from server.web.runs.styles import EVENT_ENDS


@dataclass(frozen=True, slots=True)
class SeverityStyle:
    """How a severity looks: colour (``css_class``), an icon name and a text label."""

    key: str
    label: str
    icon: str  # name of an inline SVG icon in templates/icons.html
    css_class: str


SEVERITY_STYLES: dict[str, SeverityStyle] = {
    Severity.ERROR: SeverityStyle("error", "Error", "error", "sev-error"),
    Severity.WARNING: SeverityStyle("warning", "Warning", "warning", "sev-warning"),
    Severity.SUCCESS: SeverityStyle("success", "Success", "success", "sev-success"),
    Severity.INFO: SeverityStyle("info", "Info", "info", "sev-info"),
}
# Ends that are nobody's error (server.web.runs.styles.EVENT_ENDS): neutral, their own words.
END_STYLES: dict[str, SeverityStyle] = {
    "cancelled": SeverityStyle("cancelled", "Cancelled", "cancelled", "sev-cancelled"),
    "timed_out": SeverityStyle("timed_out", "Timed out", "cancelled", "sev-timed_out"),
}

OUTCOME_LABELS: dict[str, str] = {
    outcome_name(EventType.MIGRATION_DETECTION, EventStatus.SUCCESS): "Detection: migration needed",
    outcome_name(EventType.MIGRATION_DETECTION, EventStatus.FAILED): "Detection failed",
    outcome_name(EventType.MIGRATION_DETECTION, EventStatus.NOT_NEEDED): "Detection: up to date",
    outcome_name(EventType.MIGRATION_DETECTION, EventStatus.WARNING): "Detection: warning",
    outcome_name(EventType.MIGRATION_DETECTION, EventStatus.PARTIAL): "Detection: partial",
    outcome_name(EventType.MIGRATION_EXECUTION, EventStatus.SUCCESS): "Execution succeeded",
    outcome_name(EventType.MIGRATION_EXECUTION, EventStatus.FAILED): "Execution failed",
    outcome_name(EventType.MIGRATION_EXECUTION, EventStatus.PARTIAL): "Execution partial",
    outcome_name(EventType.MIGRATION_EXECUTION, EventStatus.WARNING): "Execution: warning",
    outcome_name(EventType.MIGRATION_EXECUTION, EventStatus.NOT_NEEDED): "Execution: nothing to do",
    outcome_name(EventType.MIGRATION_REVERT, EventStatus.SUCCESS): "Revert succeeded",
    outcome_name(EventType.MIGRATION_REVERT, EventStatus.FAILED): "Revert failed",
    outcome_name(EventType.MIGRATION_REVERT, EventStatus.PARTIAL): "Revert partial",
    outcome_name(EventType.MIGRATION_REVERT, EventStatus.WARNING): "Revert refused",
    outcome_name(EventType.MIGRATION_PREVIEW, EventStatus.SUCCESS): "Preview: changes planned",
    outcome_name(EventType.MIGRATION_PREVIEW, EventStatus.NOT_NEEDED): "Preview: up to date",
    outcome_name(EventType.MIGRATION_PREVIEW, EventStatus.FAILED): "Preview failed",
    outcome_name(EventType.MIGRATION_PREVIEW, EventStatus.WARNING): "Preview: warning",
}

EVENT_TYPE_LABELS: dict[str, str] = {
    EventType.MIGRATION_DETECTION: "Detection",
    EventType.MIGRATION_EXECUTION: "Execution",
    EventType.AGENT_NOTICE: "Agent notice",
    EventType.MIGRATION_REVERT: "Revert",
    EventType.MIGRATION_PREVIEW: "Preview",
}

_ROLLBACK_LABELS: dict[str, tuple[str, str]] = {
    "succeeded": ("Rolled back successfully", "good"),
    "failed": ("Rollback FAILED", "bad"),
    "not_started": ("Rollback not started", "bad"),
}


def severity_style(severity: str) -> SeverityStyle:
    """The style of a severity; an unknown value is shown neutrally under its own name."""
    style = SEVERITY_STYLES.get(severity)
    if style is not None:
        return style
    return SeverityStyle(severity, severity.capitalize() or "Unknown", "info", "sev-info")


def outcome_label(event_type: str, status: str) -> str:
    """Human label of an outcome ("Execution failed"); a readable fallback for others."""
    name = outcome_name(event_type, status)
    if name in OUTCOME_LABELS:
        return OUTCOME_LABELS[name]
    kind = event_type.replace("_", " ").strip().capitalize() or "Event"
    return f"{kind}: {status.replace('_', ' ')}" if status else kind


@dataclass(frozen=True, slots=True)
class DetailItem:
    """One labelled fact in an event's expanded detail."""

    label: str
    value: str
    mono: bool = False  # paths, errno, exception names: monospace
    tone: str = ""  # "", "good" or "bad"


def _pick(detail: Mapping[str, Any], *keys: str) -> Any:
    """The first present, non-empty value among ``keys`` (snake_case and camelCase spellings)."""
    for key in keys:
        value = detail.get(key)
        if value not in (None, "", 0):
            return value
    return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def error_items(detail: Mapping[str, Any]) -> tuple[DetailItem, ...]:
    """The structured error detail as labelled items, in reading order."""
    items: list[DetailItem] = []
    step = _pick(detail, "failing_step", "failingStep")
    if step is not None:
        items.append(DetailItem("Failing step", str(step), mono=True))
    path = _pick(detail, "file_path", "filePath", "path")
    if path is not None:
        items.append(DetailItem("File", str(path), mono=True))
    number = _as_int(_pick(detail, "errno"))
    name = _pick(detail, "errno_name", "errnoName")
    if number is not None or name is not None:
        if name is None and number is not None:
            name = errno_codes.errorcode.get(number)
        if name is not None and number is not None:
            text = f"{name} (errno {number})"
        else:
            text = str(name) if name is not None else f"errno {number}"
        items.append(DetailItem("OS error", text, mono=True))
    exc_type = _pick(detail, "exception_type", "exceptionType")
    if exc_type is not None:
        items.append(DetailItem("Exception", str(exc_type), mono=True))
    line = _as_int(_pick(detail, "line"))
    if line is not None and line > 0:
        items.append(DetailItem("Line", str(line), mono=True))
    rollback = _pick(detail, "rollback")
    if rollback is not None:
        label, tone = _ROLLBACK_LABELS.get(str(rollback), (str(rollback), ""))
        items.append(DetailItem("Rollback", label, tone=tone))
    rollback_error = _pick(detail, "rollback_error", "rollbackError")
    if rollback_error is not None:
        items.append(DetailItem("Rollback error", str(rollback_error), mono=True, tone="bad"))
    backup = _pick(detail, "backup_path", "backupPath")
    if backup is not None:
        items.append(DetailItem("Backup", str(backup), mono=True))
    return tuple(items)


def pretty_json(value: Any) -> str:
    """Indented, key-sorted JSON for the raw-detail view."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


@dataclass(frozen=True, slots=True)
class EventRow:
    """One History row and its expanded detail."""

    id: int
    event_id: str
    agent_id: str
    hostname: str
    category: str
    is_migration: bool
    event_type: str
    status: str
    outcome: str
    outcome_label: str
    severity: SeverityStyle
    message: str
    summary: str  # what the collapsed row shows: message, else error, else outcome
    error_message: str
    migration_from: str
    migration_to: str
    transition: str  # "1 → 2", "" when neither version is known
    occurred_iso: str  # on the host (the agent's clock)
    occurred_display: str
    occurred_relative: str
    received_iso: str  # by the server: what the page orders by (and shows in the row)
    received_display: str
    run_id: str | None
    run_url: str | None
    error_items: tuple[DetailItem, ...]
    system_items: tuple[tuple[str, str], ...]
    detail_json: str
    awaiting_input: bool = False  # the event's run waits for input now: a badge on the row
    spec_id: str = ""  # the migration spec the event is about ("" if none)
    spec_revision: int = 0
    spec_url: str | None = None
    received_relative: str = ""


def _end_key(event: StoredEvent, run_state: str | None) -> str | None:
    """``cancelled`` / ``timed_out`` for an execution that ended so (no one's error), else None."""
    if event.event_type != EventType.MIGRATION_EXECUTION or event.status != EventStatus.FAILED:
        return None
    kind = _pick(event.error_detail, "exception_type", "exceptionType")
    if kind is not None and str(kind) in EVENT_ENDS:
        return EVENT_ENDS[str(kind)][1]
    return "cancelled" if run_state == "CANCELLED" else None


def event_row(
    event: StoredEvent,
    now: datetime,
    waiting_runs: Set[str] = frozenset(),
    run_states: Mapping[str, str] | None = None,
) -> EventRow:
    """Build the view model of one event (``now`` anchors the relative time; ``waiting_runs``:
    ids of runs waiting for input, whose rows get a badge; ``run_states``: the state of each run
    that exists (storage, one query per page): a row links to its run only when it exists, and
    is badged while that run waits for input)."""
    run_state = run_states.get(event.run_id) if run_states and event.run_id else None
    if run_states is not None:
        waiting_runs = {r for r, state in run_states.items() if state == "AWAITING_INPUT"}
    has_run = event.run_id is not None and (run_states is None or run_state is not None)
    label = outcome_label(event.event_type, event.status)
    severity = severity_style(event.severity)
    end = _end_key(event, run_state)
    if end is not None:
        severity = END_STYLES[end]
        label = next(words for words, key in EVENT_ENDS.values() if key == end)
    return EventRow(
        id=event.id,
        event_id=event.event_id,
        agent_id=event.agent_id,
        hostname=event.hostname,
        category=event.category,
        is_migration=event.category == Category.MIGRATION,
        event_type=event.event_type,
        status=event.status,
        outcome=event.outcome,
        outcome_label=label,
        severity=severity,
        message=event.message,
        summary=event.message or event.error_message or label,
        error_message=event.error_message,
        migration_from=event.migration_from,
        migration_to=event.migration_to,
        transition=transition(event.migration_from, event.migration_to),
        occurred_iso=event.occurred_at.astimezone(UTC).isoformat(),
        occurred_display=display_time(event.occurred_at),
        occurred_relative=relative_time(event.occurred_at, now),
        received_iso=event.received_at.astimezone(UTC).isoformat(),
        received_display=display_time(event.received_at),
        run_id=event.run_id,
        run_url=f"/runs/{quote(event.run_id, safe='')}" if has_run and event.run_id else None,
        error_items=error_items(event.error_detail),
        system_items=system_items(event.system_info),
        detail_json=pretty_json(event.error_detail),
        awaiting_input=event.run_id is not None and event.run_id in waiting_runs,
        spec_id=event.spec_id,
        spec_revision=event.spec_revision,
        spec_url=_spec_url(event.spec_id, event.spec_revision) if event.spec_id else None,
        received_relative=relative_time(event.received_at, now),
    )


def system_items(info: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The host facts of an event, sorted; a byte count (``disk_free_bytes``) also in units."""
    items = []
    for key, value in sorted(info.items()):
        if key.endswith("_bytes") and value.isdigit():
            value = f"{human_bytes(int(value))} ({int(value):,} bytes)"
        items.append((key, value))
    return tuple(items)


def _spec_url(spec_id: str, revision: int) -> str:
    url = f"/migrations/{quote(spec_id, safe='')}"
    return f"{url}?revision={revision}" if revision > 0 else url


@dataclass(frozen=True, slots=True)
class FilterForm:
    """The filter form's current values."""

    migration_only: bool
    severities: tuple[Option, ...]
    event_types: tuple[Option, ...]
    agent: AgentChooser
    since: str
    until: str
    q: str
    limit: int | None  # only when it differs from the default page size
    spec: str = ""  # a migration spec id
    refused: RefusedParam | None = None  # a bad value (the page then shows no rows)


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Everything ``history.html`` renders."""

    rows: tuple[EventRow, ...]
    form: FilterForm
    filtered: bool
    paged: bool  # showing an older page (a cursor is set)
    older_url: str | None
    newest_url: str
    clear_url: str
    live_url: str | None  # the live stream of this view (first pages only), without its cursor
    live_after: int | None  # the stream cursor: the highest id when the page was read
    export_csv_url: str = ""  # every event matching the filters, as a download
    export_jsonl_url: str = ""
    # A short text's page stopped at its scan bound (EventPage.partial): how many rows a page
    # examines, as shown; older_url continues the search.
    partial_scan: str = ""


def _filter_form(
    f: EventFilter, agents: Iterable[tuple[str, str]] | None, default_limit: int
) -> FilterForm:
    chosen_types = set(f.event_types)
    type_choices = [
        Option(t.value, EVENT_TYPE_LABELS.get(t, t.value), t.value in chosen_types)
        for t in EventType
    ]
    # Outcome names are accepted in the URL; keep them as (uncheckable) form choices.
    type_choices.extend(
        Option(value, OUTCOME_LABELS.get(value, value), True)
        for value in f.event_types
        if value not in EVENT_TYPE_LABELS
    )
    chosen_severities = {s.value for s in f.severities}
    return FilterForm(
        migration_only=f.migration_only,
        severities=tuple(
            Option(s.value, SEVERITY_STYLES[s].label, s.value in chosen_severities)
            for s in Severity
        ),
        event_types=tuple(type_choices),
        agent=agent_chooser(agents, f.agent_id),
        since=format_time(f.since) if f.since else "",
        until=format_time(f.until) if f.until else "",
        q=f.text or "",
        limit=f.limit if f.limit != default_limit else None,
        spec=f.spec_id or "",
    )


def history_page(
    page: EventPage,
    agents: Iterable[tuple[str, str]] | None,
    *,
    default_limit: int,
    now: datetime,
    path: str = "/history",
    live_after: int | None = None,
    waiting_runs: Set[str] = frozenset(),
    run_states: Mapping[str, str] | None = None,
) -> HistoryPage:
    """The History page's view model: rows, the filter form and pagination links. With
    ``live_after`` (and no ``before`` cursor) the page also carries its live stream's URL."""
    f = page.filters
    live = live_after is not None and f.before_id is None
    return HistoryPage(
        rows=tuple(event_row(e, now, waiting_runs, run_states) for e in page.events),
        form=_filter_form(f, agents, default_limit),
        filtered=is_filtered(f),
        paged=f.before_id is not None,
        older_url=(
            filter_url(path, f, default_limit, before_id=page.next_before_id)
            if page.next_before_id is not None
            else None
        ),
        newest_url=filter_url(path, f, default_limit),
        clear_url=path,
        live_url=stream_url(f, default_limit) if live else None,
        live_after=live_after if live else None,
        export_csv_url=event_export_url(f, default_limit, "csv"),
        export_jsonl_url=event_export_url(f, default_limit, "jsonl"),
        partial_scan=f"{SHORT_TEXT_SCAN:,}" if page.partial else "",
    )


def stream_url(f: EventFilter, default_limit: int, path: str = "/history/stream") -> str:
    """The live stream URL for the filters of ``f`` (no cursor, no page size)."""
    return filter_url(path, replace(f, before_id=None, limit=default_limit), default_limit)
