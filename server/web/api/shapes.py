"""Every JSON body of the API, defined once: the ``TypedDict`` shapes and the functions that build
them from domain objects.

The OpenAPI document (``server.web.api.openapi``) derives its schemas from these classes
(``server.web.schema``), enums come from ``server.domain``, and the handlers return what the
builders here return: a key a builder sets that its shape lacks, or a value of the wrong type,
fails ``mypy``; ``tests/test_api_conformance.py`` validates real responses against the document.
The History's live stream and the error middleware send these shapes too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, NotRequired, TypedDict, overload

from server import domain
from server.domain import (
    ActionKind,
    AgentHealth,
    Category,
    EtaBasis,
    EventStatus,
    EventType,
    LogLevel,
    RunState,
    Severity,
    StepStatus,
)
from server.web.schema import Doc, Time, Uuid

if TYPE_CHECKING:
    from server.services.fleet import FleetAgent
    from server.services.targets import Selection

NonNegative = Annotated[int, Doc(minimum=0)]
StrMap = dict[str, str]


@overload
def iso(value: datetime) -> str: ...
@overload
def iso(value: datetime | None) -> str | None: ...
def iso(value: datetime | None) -> str | None:
    """A timestamp as ISO 8601 in UTC (None stays None): every time in the JSON API."""
    return None if value is None else value.astimezone(UTC).isoformat()


# --- errors -----------------------------------------------------------------------------------


class Error(TypedDict):
    """Every error of the API."""  # built by server.web.middleware

    error: Annotated[
        str, Doc(description="machine-readable reason, e.g. invalid_argument, not_found")
    ]
    message: Annotated[
        str, Doc(description="human-readable; names the offending parameter (`limit: ...`)")
    ]


# --- the History ------------------------------------------------------------------------------


class Event(TypedDict):
    """One History event on the wire. Its fields follow ``domain.StoredEvent`` on purpose, with
    the API's own types (ids as ``Uuid``, times as ``Time``): the two change for different
    reasons, and ``event_json`` is the one place that maps one to the other."""

    id: Annotated[int, Doc(description="monotonic; the keyset cursor")]
    event_id: Uuid
    agent_id: str
    hostname: str
    category: Category
    event_type: EventType
    status: EventStatus
    outcome: Annotated[str, Doc(examples=["migration_execution_failed"])]
    severity: Severity
    message: str
    error_message: str
    error_detail: dict[str, Any]
    migration_from: str
    migration_to: str
    run_id: str | None
    system_info: StrMap
    occurred_at: Time
    received_at: Time
    spec_id: Annotated[str, Doc(description='the migration spec this is about ("" if none)')]
    spec_revision: NonNegative
    action_id: Annotated[str, Doc(description='the action this answers ("" if none)')]


class EventPage(TypedDict):
    events: list[Event]
    next_before: Annotated[int | None, Doc(description="cursor of the next (older) page")]
    partial: Annotated[
        bool,
        Doc(
            description="a text of 1-2 characters was matched against the newest rows only; "
            "older rows, from next_before down, are searched by the next page"
        ),
    ]


def event_json(event: domain.StoredEvent) -> Event:
    """One event of ``/api/v1/events`` (and of the History's live stream)."""
    return Event(
        id=event.id,
        event_id=event.event_id,
        agent_id=event.agent_id,
        hostname=event.hostname,
        category=Category(event.category),
        event_type=EventType(event.event_type),
        status=EventStatus(event.status),
        outcome=event.outcome,
        severity=Severity(event.severity),
        message=event.message,
        error_message=event.error_message,
        error_detail=event.error_detail,
        migration_from=event.migration_from,
        migration_to=event.migration_to,
        run_id=event.run_id,
        system_info=event.system_info,
        occurred_at=iso(event.occurred_at),
        received_at=iso(event.received_at),
        spec_id=event.spec_id,
        spec_revision=event.spec_revision,
        action_id=event.action_id,
    )


def event_page_json(page: domain.EventPage) -> EventPage:
    """The body of ``GET /api/v1/events``."""
    return EventPage(
        events=[event_json(e) for e in page.events],
        next_before=page.next_before_id,
        partial=page.partial,
    )


# --- runs -------------------------------------------------------------------------------------


class Run(TypedDict):
    id: Uuid
    agent_id: str
    hostname: str
    migration_id: str
    state: RunState
    terminal: bool
    steps_done: NonNegative
    steps_total: NonNegative
    migration_from: str
    migration_to: str
    error_message: str
    started_at: Time | None
    finished_at: Time | None
    duration_seconds: float | None
    created_at: Time
    updated_at: Time
    requested_by: Annotated[str | None, Doc(description="who asked for the run from the web/API")]
    requested_action_id: str | None
    cancel_requested_by: str | None
    cancel_requested_at: Time | None
    cancelled_by: str | None
    spec_revision: Annotated[
        int, Doc(minimum=0, description="a spec run: the revision of spec migration_id")
    ]
    reverts_run_id: Annotated[str, Doc(description='a revert: the run it puts back ("" if none)')]


class Step(TypedDict):
    index: int
    name: str
    status: StepStatus
    error: str
    duration_ms: int


class RunDetail(Run):
    steps: list[Step]
    progress: Annotated[float, Doc(minimum=0, maximum=1)]
    eta_seconds: float | None
    eta_basis: EtaBasis | None
    log_lines: int
    cancel_pending: bool


class RunPage(TypedDict):
    runs: list[Run]
    next_before: Annotated[str | None, Doc(description="opaque cursor of the next page")]


def run_json(run: domain.RunSummary, now: datetime) -> Run:
    """A run as the API returns it."""
    return Run(
        id=run.id,
        agent_id=run.agent_id,
        hostname=run.hostname,
        migration_id=run.migration_id,
        state=run.state,
        terminal=run.terminal,
        steps_done=run.steps_done,
        steps_total=run.steps_total,
        migration_from=run.migration_from,
        migration_to=run.migration_to,
        error_message=run.error_message,
        started_at=iso(run.started_at),
        finished_at=iso(run.finished_at),
        duration_seconds=run.duration_seconds(now),
        created_at=iso(run.created_at),
        updated_at=iso(run.updated_at),
        requested_by=run.requested_by,
        requested_action_id=run.requested_action_id,
        cancel_requested_by=run.cancel_requested_by,
        cancel_requested_at=iso(run.cancel_requested_at),
        cancelled_by=run.cancelled_by,
        spec_revision=run.spec_revision,
        reverts_run_id=run.reverts_run_id,
    )


def run_page_json(page: domain.RunPage, now: datetime) -> RunPage:
    """The body of ``GET /api/v1/runs``."""
    return RunPage(runs=[run_json(r, now) for r in page.runs], next_before=page.next_before)


def run_detail_json(detail: domain.RunDetail, now: datetime) -> RunDetail:
    """One run with its steps, progress and ETA."""
    return RunDetail(
        **run_json(detail.run, now),
        steps=[
            Step(
                index=s.index,
                name=s.name,
                status=StepStatus(s.status),
                error=s.error,
                duration_ms=s.duration_ms,
            )
            for s in detail.steps
        ],
        progress=detail.progress,
        eta_seconds=detail.eta_seconds,
        eta_basis=EtaBasis(detail.eta_basis) if detail.eta_basis else None,
        log_lines=detail.log_lines,
        cancel_pending=detail.cancel_pending,
    )


# --- logs -------------------------------------------------------------------------------------


class LogLine(TypedDict):
    seq: Annotated[int, Doc(minimum=1)]
    timestamp: Time
    level: LogLevel
    source: str
    message: str
    metadata: StrMap


class LogPage(TypedDict):
    lines: list[LogLine]
    next_after_seq: Annotated[
        int | None, Doc(description="pass as after_seq for the next page; null: none now")
    ]


class LogStats(TypedDict):
    total: int
    by_level: dict[str, int]
    by_source: dict[str, int]


class LogSources(TypedDict):
    sources: list[str]


def log_line_json(line: domain.LogLineRecord) -> LogLine:
    """One log line."""
    return LogLine(
        seq=line.seq,
        timestamp=iso(line.timestamp),
        level=LogLevel(line.level),
        source=line.source,
        message=line.message,
        metadata=line.metadata,
    )


def log_page_json(page: domain.LogPage) -> LogPage:
    """The body of ``GET /api/v1/runs/{run_id}/logs``."""
    return LogPage(lines=[log_line_json(x) for x in page.lines], next_after_seq=page.next_after_seq)


def log_stats_json(stats: domain.LogStats) -> LogStats:
    """The body of ``GET /api/v1/runs/{run_id}/logs/stats``."""
    return LogStats(total=stats.total, by_level=stats.by_level, by_source=stats.by_source)


# --- actions ----------------------------------------------------------------------------------


class Action(TypedDict):
    action_id: Uuid
    agent_id: str
    kind: ActionKind
    params: StrMap
    created_at: Time
    expires_at: Time
    delivered_at: Time | None
    acknowledged_at: Time | None
    requested_by: str


class ActionAccepted(TypedDict):
    action: Action


class RunRequest(TypedDict):
    """The optional body of ``POST /api/v1/agents/{agent_id}/runs``."""

    migration_id: NotRequired[Annotated[str, Doc(maxLength=128)]]


def action_json(action: domain.PendingAction) -> Action:
    """A queued action."""
    return Action(
        action_id=action.action_id,
        agent_id=action.agent_id,
        kind=action.kind,
        params=action.params,
        created_at=iso(action.created_at),
        expires_at=iso(action.expires_at),
        delivered_at=iso(action.delivered_at),
        acknowledged_at=iso(action.acknowledged_at),
        requested_by=action.requested_by,
    )


def accepted_json(action: domain.PendingAction) -> ActionAccepted:
    """The 202 body of every POST that queues an action."""
    return ActionAccepted(action=action_json(action))


# --- agents -----------------------------------------------------------------------------------


class Agent(TypedDict):
    id: str
    hostname: str
    os: str
    agent_version: str
    config_version: str
    enrolled_at: Time
    last_checkin_at: Time | None
    revoked: bool
    health: AgentHealth
    labels: Annotated[StrMap, Doc(description="reported by the agent (its config's labels)")]
    tags: Annotated[list[str], Doc(description="server-side tags, sorted")]


class AgentList(TypedDict):
    agents: list[Agent]


class SelectedAgent(TypedDict):
    id: str
    hostname: str


class SelectCount(TypedDict):
    """``GET /api/v1/agents/select/count``: how many agents a selector picks, the first few."""

    count: NonNegative
    agents: Annotated[list[SelectedAgent], Doc(description="the first `limit`, by hostname")]


class TagChangeRequest(TypedDict):
    """The body of ``POST /api/v1/agents/tags``: tags to add and remove, on the agents picked
    by ``select`` (expressions, all must hold) or listed in ``agent_ids`` (exactly one)."""

    add: NotRequired[Annotated[list[str], Doc(maxItems=32)]]
    remove: NotRequired[Annotated[list[str], Doc(maxItems=32)]]
    select: NotRequired[Annotated[list[str], Doc(maxItems=32)]]
    agent_ids: NotRequired[Annotated[list[str], Doc(maxItems=100000)]]


class TagChangeResult(TypedDict):
    matched: Annotated[NonNegative, Doc(description="agents picked")]
    changed: Annotated[NonNegative, Doc(description="agents that gained or lost a tag")]


class BulkActionRequest(TypedDict):
    """The body of ``POST /api/v1/agents/bulk``: the action, the agents picked by ``select``
    (expressions, all must hold) or listed in ``agent_ids`` (exactly one; at most 10,000
    agents), and the action's arguments: ``spec_id`` (and ``revision``) for ``run_spec``,
    ``tags`` for ``add_tags`` / ``remove_tags``; others are refused."""

    action: domain.BulkAction
    select: NotRequired[Annotated[list[str], Doc(maxItems=32)]]
    agent_ids: NotRequired[Annotated[list[str], Doc(minItems=1, maxItems=10000)]]
    spec_id: NotRequired[Annotated[str, Doc(pattern="^[a-z0-9][a-z0-9_.-]{0,63}$")]]
    revision: NotRequired[Annotated[int, Doc(minimum=1)]]
    tags: NotRequired[Annotated[list[str], Doc(minItems=1, maxItems=32)]]


class BulkActionResult(TypedDict):
    matched: Annotated[NonNegative, Doc(description="agents picked")]
    changed: Annotated[
        NonNegative,
        Doc(
            description="agents queued a run, tagged, untagged or revoked; for cancel_runs "
            "the runs asked to cancel"
        ),
    ]


def select_count_json(selection: Selection) -> SelectCount:
    """The live count of a selector."""
    return SelectCount(
        count=selection.count,
        agents=[SelectedAgent(id=i, hostname=h) for i, h in selection.agents],
    )


class AgentDetail(Agent):
    kernel: str
    disk_free_bytes: int
    machine_id: str
    checkin_interval_seconds: int
    runs: Annotated[list[Run], Doc(maxItems=20)]
    pending_actions: list[Action]


def agent_json(agent: domain.AgentSummary) -> Agent:
    """An agent of the list."""
    return Agent(
        id=agent.id,
        hostname=agent.hostname,
        os=agent.os,
        agent_version=agent.agent_version,
        config_version=agent.config_version,
        enrolled_at=iso(agent.enrolled_at),
        last_checkin_at=iso(agent.last_checkin_at),
        revoked=agent.revoked,
        health=agent.health,
        labels=dict(agent.labels),
        tags=list(agent.tags),
    )


def agent_detail_json(agent: FleetAgent, runs: list[Run], actions: list[Action]) -> AgentDetail:
    """One agent: its facts, health, recent runs and pending actions."""
    record = agent.record
    return AgentDetail(
        id=record.id,
        hostname=record.hostname,
        os=record.os,
        kernel=record.kernel,
        agent_version=record.agent_version,
        config_version=record.config_version,
        disk_free_bytes=record.disk_free_bytes,
        machine_id=record.machine_id,
        enrolled_at=iso(record.enrolled_at),
        last_checkin_at=iso(record.last_checkin_at),
        checkin_interval_seconds=record.checkin_interval_seconds,
        revoked=record.revoked,
        health=agent.health,
        labels=dict(record.labels),
        tags=list(agent.tags),
        runs=runs,
        pending_actions=actions,
    )


# --- input requests ---------------------------------------------------------------------------


class InputField(TypedDict):
    name: Annotated[str, Doc(pattern="^[a-z0-9_]{1,64}$")]
    label: Annotated[str, Doc(maxLength=200)]
    secret: Annotated[bool, Doc(description="answer in a password field")]
    error: Annotated[str, Doc(description="why the previous answer was refused")]


class RunInputs(TypedDict):
    """What a run waiting for input asks for; never an answer."""

    run_id: Uuid
    state: RunState
    waiting: Annotated[bool, Doc(description="AWAITING_INPUT now")]
    request_id: Annotated[str | None, Doc(description="answer this request (null: never asked)")]
    fields: Annotated[list[InputField], Doc(maxItems=16)]
    requested_at: Time | None
    answers_sent: Annotated[
        bool, Doc(description="answers to the current request are on their way to the agent")
    ]
    answered_by: str | None
    answered_at: Time | None


class InputAnswers(TypedDict):
    """The body of ``POST /api/v1/runs/{run_id}/inputs``."""

    request_id: Uuid
    inputs: Annotated[
        dict[str, Annotated[str, Doc(minLength=1)]],
        Doc(description="one value per field asked (each at most input_max_bytes bytes)"),
    ]


def run_inputs_json(run: domain.RunSummary) -> RunInputs:
    """The body of ``GET /api/v1/runs/{run_id}/inputs``."""
    ask = run.input_request
    return RunInputs(
        run_id=run.id,
        state=run.state,
        waiting=run.waiting_for_input,
        request_id=ask.request_id if ask else None,
        fields=[
            InputField(name=f.name, label=f.label, secret=f.secret, error=f.error)
            for f in (ask.fields if ask else ())
        ],
        requested_at=iso(run.input_requested_at),
        answers_sent=run.waiting_for_input and run.input_answered,
        answered_by=run.input_answered_by,
        answered_at=iso(run.input_answered_at),
    )
