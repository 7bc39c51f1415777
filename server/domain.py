"""Domain types shared by services, transports and views. Imports nothing else of ours."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple


class Category(StrEnum):
    MIGRATION = "migration"
    AGENT = "agent"  # other agent events (lifecycle, security, quarantine notices)


class EventType(StrEnum):
    MIGRATION_DETECTION = "migration_detection"
    MIGRATION_EXECUTION = "migration_execution"
    AGENT_NOTICE = "agent_notice"  # category AGENT: quarantine notices and other agent events
    MIGRATION_REVERT = "migration_revert"  # a spec run's files put back (``revert_run``)
    MIGRATION_PREVIEW = "migration_preview"  # a spec planned in memory (``preview_migration``)


class EventStatus(StrEnum):
    SUCCESS = "success"
    FAILED = "failed"
    WARNING = "warning"
    NOT_NEEDED = "not_needed"
    PARTIAL = "partial"


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    SUCCESS = "success"
    INFO = "info"


_SEVERITY: dict[EventStatus, Severity] = {
    EventStatus.FAILED: Severity.ERROR,
    EventStatus.PARTIAL: Severity.WARNING,
    EventStatus.WARNING: Severity.WARNING,
    EventStatus.SUCCESS: Severity.SUCCESS,
    EventStatus.NOT_NEEDED: Severity.INFO,
}


def severity_for(status: EventStatus) -> Severity:
    """The one mapping from an event's status to its severity."""
    return _SEVERITY[status]


def outcome_name(event_type: str, status: str) -> str:
    """``migration_execution_failed`` and friends: the outcome label the History shows."""
    return f"{event_type}_{status}"


class AgentHealth(StrEnum):
    ONLINE = "online"
    STALE = "stale"
    OFFLINE = "offline"
    NEVER = "never"  # enrolled, never checked in


class AgentState(StrEnum):
    """What the agent list filters by: a health, or revoked (whatever its check-ins)."""

    ONLINE = "online"
    STALE = "stale"
    OFFLINE = "offline"
    NEVER = "never"
    REVOKED = "revoked"


class AgentSort(StrEnum):
    """The agent list's sortable columns."""

    HOST = "host"
    HEALTH = "health"  # online, stale, offline, never checked in, revoked; by host within
    CONFIG_VERSION = "config"  # natural order ("2" < "10"), by host within
    AGENT_VERSION = "agent"
    LAST_CHECKIN = "checkin"  # never checked in sorts as the oldest


# The value of the agent list's config version filter that means "not reported yet".
UNREPORTED_VERSION = "-"


class ChartRange(StrEnum):
    """How far back the fleet page's events chart looks (``?range=``): ``buckets`` bars of
    ``bucket_seconds`` each, aligned to whole multiples of the bucket since the epoch (UTC
    midnight for the day-long and 6-hour buckets); the newest bar holds now."""

    DAY = "24h"  # 24 bars of an hour
    WEEK = "7d"  # 28 bars of 6 hours: 00, 06, 12 and 18 UTC
    MONTH = "30d"  # 30 bars of a day

    @property
    def bucket_seconds(self) -> int:
        return _CHART_BUCKETS[self][0]

    @property
    def buckets(self) -> int:
        return _CHART_BUCKETS[self][1]


_CHART_BUCKETS: dict[ChartRange, tuple[int, int]] = {  # range -> (bucket seconds, buckets)
    ChartRange.DAY: (3600, 24),
    ChartRange.WEEK: (6 * 3600, 28),
    ChartRange.MONTH: (24 * 3600, 30),
}


@dataclass(frozen=True, slots=True)
class AgentListQuery:
    """One page of the agent list. ``after``: the sort values of the last row of the previous
    page (a keyset cursor, see :func:`server.services.fleet.list_agents`)."""

    text: str = ""  # hostname or label substring, id prefix; "key=value": that label
    state: AgentState | None = None
    config_version: str | None = None  # "" = not reported
    sort: AgentSort = AgentSort.HOST
    descending: bool = False
    after: tuple[str, ...] | None = None
    limit: int = 100


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural sort key: ``"2" < "10"``, ``"v1.9" < "v1.10"``; numbers before text."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.findall(r"\d+|[^\d]+", version)
    )


def uuid_is_valid(value: str) -> bool:
    """True for a canonical (hyphenated, lower- or upper-case) UUID string."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return str(parsed) == value.lower()


@dataclass(frozen=True, slots=True)
class HostFacts:
    hostname: str
    os: str = ""
    kernel: str = ""
    agent_version: str = ""
    config_version: str = ""
    disk_free_bytes: int = 0
    machine_id: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # sorted by key (HostFacts.labels)


@dataclass(frozen=True, slots=True)
class FileDiff:
    """One file of a spec preview: its redacted unified diff, the operations on it, a note."""

    path: str
    diff: str
    operations: tuple[str, ...] = ()
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        """The stored form (one item of ``update_events.diffs``)."""
        return {
            "path": self.path,
            "diff": self.diff,
            "operations": list(self.operations),
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileDiff:
        """Inverse of :meth:`to_json`."""
        return cls(
            path=str(data.get("path", "")),
            diff=str(data.get("diff", "")),
            operations=tuple(str(op) for op in data.get("operations", ())),
            note=str(data.get("note", "")),
        )


@dataclass(frozen=True, slots=True)
class SpecVersionReport:
    """One entry of ``HostFacts.specs``: the revision of a spec an agent holds and the version
    its host detects as (``error``: why detection failed; then ``version`` is "")."""

    spec_id: str
    revision: int
    version: str
    error: str = ""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A validated event ready to store (what ingest hands to storage).

    Its fields repeat in :class:`StoredEvent` on purpose: this one carries the domain enums
    ingest checked, that one the stored strings plus the row's id, hostname and receipt time."""

    event_id: str
    agent_id: str
    category: Category
    event_type: str
    status: EventStatus
    severity: Severity
    message: str
    error_message: str
    error_detail: dict[str, Any]
    migration_from: str
    migration_to: str
    run_id: str | None
    system_info: dict[str, str]
    occurred_at: datetime
    spec_id: str = ""
    spec_revision: int = 0
    action_id: str = ""
    diffs: tuple[FileDiff, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as read back for the History page and the JSON API (a view model source).

    The fields shared with :class:`NewEvent` repeat on purpose: a read model of plain stored
    strings, kept apart from the write model's enums."""

    id: int
    event_id: str
    agent_id: str
    hostname: str
    category: str
    event_type: str
    status: str
    severity: str
    message: str
    error_message: str
    error_detail: dict[str, Any]
    migration_from: str
    migration_to: str
    run_id: str | None
    system_info: dict[str, str]
    occurred_at: datetime
    received_at: datetime
    spec_id: str = ""
    spec_revision: int = 0
    action_id: str = ""
    diffs: tuple[FileDiff, ...] = ()

    @property
    def outcome(self) -> str:
        return outcome_name(self.event_type, self.status)


@dataclass(frozen=True, slots=True)
class AgentSummary:
    id: str
    hostname: str
    os: str
    agent_version: str
    config_version: str
    enrolled_at: datetime
    last_checkin_at: datetime | None
    revoked: bool
    health: AgentHealth
    labels: tuple[tuple[str, str], ...] = ()
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EventFilter:
    """History filters; every field optional. ``before_id`` is the keyset cursor."""

    migration_only: bool = False
    severities: tuple[Severity, ...] = ()
    event_types: tuple[str, ...] = ()
    agent_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None
    before_id: int | None = None
    after_id: int | None = None
    limit: int = 50
    spec_id: str | None = None


# A History text of 1-2 characters has no trigram to look up: a page examines at most this many
# of the rows the other filters select, newest first, then says where it stopped
# (EventPage.partial; on SQLite a plain scan of 10M events took 7.6 s, this many about 25 ms).
SHORT_TEXT_SCAN = 25_000


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[StoredEvent]
    next_before_id: int | None  # cursor for the next (older) page, None at the end
    filters: EventFilter = field(default_factory=EventFilter)
    # The page stopped where a short text's bounded scan did (SHORT_TEXT_SCAN): older rows,
    # from next_before_id down, were not searched yet.
    partial: bool = False


# --- Runs -----------------------------------------------------------------------------------------


class RunState(StrEnum):
    """The state of one migration run. Values are the proto names without prefix."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    AWAITING_INPUT = "AWAITING_INPUT"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    PARTIAL = "PARTIAL"
    CANCELLED = "CANCELLED"


TERMINAL_RUN_STATES: frozenset[RunState] = frozenset(
    {RunState.SUCCEEDED, RunState.FAILED, RunState.PARTIAL, RunState.CANCELLED}
)
ACTIVE_RUN_STATES: frozenset[RunState] = frozenset(
    {RunState.PENDING, RunState.RUNNING, RunState.AWAITING_INPUT}
)
# Allowed state changes. Staying in a non-terminal state (a progress update) is always allowed;
# a terminal state is final. A run the server has never seen may start in any state (its
# earlier updates may have been lost or quarantined on the agent).
RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.PENDING: frozenset({RunState.RUNNING}),
    RunState.RUNNING: frozenset(
        {
            RunState.AWAITING_INPUT,
            RunState.SUCCEEDED,
            RunState.FAILED,
            RunState.PARTIAL,
            RunState.CANCELLED,
        }
    ),
    RunState.AWAITING_INPUT: frozenset({RunState.RUNNING, RunState.FAILED, RunState.CANCELLED}),
    RunState.SUCCEEDED: frozenset(),
    RunState.FAILED: frozenset(),
    RunState.PARTIAL: frozenset(),
    RunState.CANCELLED: frozenset(),
}


def run_transition_allowed(old: RunState | None, new: RunState) -> bool:
    """True when a run in ``old`` (``None``: not seen yet) may move to ``new``."""
    if old is None:
        return True
    if old == new:
        return old not in TERMINAL_RUN_STATES
    return new in RUN_TRANSITIONS[old]


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class ActionKind(StrEnum):
    """What a pending action asks the agent to do (``Action.kind`` on the wire)."""

    RUN_MIGRATION = "run_migration"
    CANCEL_RUN = "cancel_run"
    PROVIDE_INPUT = "provide_input"  # answers to an input request (only in the signed body)
    PREVIEW_MIGRATION = "preview_migration"  # plan a spec in memory, report its diffs
    REVERT_RUN = "revert_run"  # put a finished spec run's files back


class BulkAction(StrEnum):
    """What a bulk action on many agents does (``POST /api/v1/agents/bulk`` ``action``)."""

    RUN_SPEC = "run_spec"  # one run_migration action per agent
    CANCEL_RUNS = "cancel_runs"  # cancel every active run of the agents
    ADD_TAGS = "add_tags"
    REMOVE_TAGS = "remove_tags"
    REVOKE = "revoke"  # revoke the agents' credentials


@dataclass(frozen=True, slots=True)
class BulkOutcome:
    """The outcome of a bulk action: agents addressed, and how many changed (agents queued,
    tagged or revoked; for ``cancel_runs`` runs asked to cancel)."""

    matched: int
    changed: int


class StepStatus(StrEnum):
    """The status of one step of a run (``StepResult.status`` on the wire)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    SKIPPED = "skipped"


class EtaBasis(StrEnum):
    """How a run's remaining time was estimated (``RunDetail.eta_basis``)."""

    THIS_RUN = "this_run"  # from the run's own completed steps
    PAST_RUNS = "past_runs"  # from past runs of the same migration


@dataclass(frozen=True, slots=True)
class RunStep:
    """One step of a run: ``index`` is its 0-based position in the plan."""

    index: int
    name: str
    status: str  # a StepStatus value (validated on ingest)
    error: str = ""
    duration_ms: int = 0


@dataclass(frozen=True, slots=True)
class InputField:
    """One input a waiting run asks for. ``error``: why the previous answer was refused."""

    name: str  # [a-z0-9_]{1,64}
    label: str
    secret: bool
    error: str = ""


@dataclass(frozen=True, slots=True)
class InputRequest:
    """What an AWAITING_INPUT run asks for: every missing input at once. Never an answer."""

    request_id: str  # a UUID, new for every ask
    fields: tuple[InputField, ...]

    def to_json(self) -> dict[str, Any]:
        """The stored form (``migration_runs.input_request``)."""
        return {
            "request_id": self.request_id,
            "fields": [
                {"name": f.name, "label": f.label, "secret": f.secret, "error": f.error}
                for f in self.fields
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InputRequest:
        """Inverse of :meth:`to_json`."""
        return cls(
            request_id=str(data.get("request_id", "")),
            fields=tuple(
                InputField(
                    name=str(f.get("name", "")),
                    label=str(f.get("label", "")),
                    secret=bool(f.get("secret", False)),
                    error=str(f.get("error", "")),
                )
                for f in data.get("fields", ())
            ),
        )


@dataclass(frozen=True, slots=True)
class NewRunUpdate:
    """A validated ``RunUpdate`` (a snapshot of one run) from an authenticated agent."""

    update_id: str
    run_id: str
    agent_id: str
    state: RunState
    steps_done: int
    steps_total: int
    steps: tuple[RunStep, ...]
    started_at: datetime | None
    finished_at: datetime | None
    migration_id: str
    migration_from: str
    migration_to: str
    error_message: str
    requested_by_action_id: str | None
    occurred_at: datetime | None
    input_request: InputRequest | None = None  # set exactly when state is AWAITING_INPUT
    spec_revision: int = 0  # a spec run: the revision of spec ``migration_id``
    reverts_run_id: str = ""  # a revert: the run it puts back


class NewLogLine(NamedTuple):
    """A validated log line of one run (``seq``: per run, gap-free from 1, set by the agent).
    A NamedTuple rather than a frozen dataclass: thousands are built per check-in and a frozen
    dataclass's ``__init__`` costs ~4x more."""

    run_id: str
    seq: int
    timestamp: datetime
    level: LogLevel
    source: str
    message: str
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class RunSummary:
    """A run as lists show it (no steps)."""

    id: str
    agent_id: str
    hostname: str
    migration_id: str
    state: RunState
    steps_done: int
    steps_total: int
    migration_from: str
    migration_to: str
    error_message: str
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime
    updated_at: datetime
    requested_by: str | None  # who asked for it from the web ("" / None: the agent on its own)
    requested_action_id: str | None
    cancel_requested_by: str | None
    cancel_requested_at: datetime | None
    cancelled_by: str | None
    # Input requests: the last one (kept after the run moved on), when the server got it,
    # and who answered last and when.
    input_request: InputRequest | None = None
    input_requested_at: datetime | None = None
    input_answered_by: str | None = None
    input_answered_at: datetime | None = None
    spec_revision: int = 0  # a spec run: the revision of spec ``migration_id``
    reverts_run_id: str = ""  # a revert: the run it puts back

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_RUN_STATES

    @property
    def waiting_for_input(self) -> bool:
        """AWAITING_INPUT with a request the server knows."""
        return self.state == RunState.AWAITING_INPUT and self.input_request is not None

    @property
    def input_answered(self) -> bool:
        """Answers were sent for the current request (the agent has not asked again since)."""
        return (
            self.input_answered_at is not None
            and self.input_requested_at is not None
            and self.input_answered_at >= self.input_requested_at
        )

    def duration_seconds(self, now: datetime) -> float | None:
        """Seconds from start to finish (to ``now`` while active); None before it started."""
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else now
        return max(0.0, (end - self.started_at).total_seconds())


@dataclass(frozen=True, slots=True)
class RunDetail:
    """One run with its steps, progress and ETA (``get_run``)."""

    run: RunSummary
    steps: tuple[RunStep, ...]
    progress: float  # 0.0 .. 1.0 (steps_done / steps_total; 1.0 when terminal with 0 steps)
    eta_seconds: float | None  # remaining time estimate; None when unknown or not active
    eta_basis: str  # an EtaBasis value, or "" when there is no estimate
    log_lines: int  # lines stored for this run
    cancel_pending: bool  # a cancel was requested and the run is not terminal yet


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Runs list filters. ``before`` is the opaque keyset cursor from ``RunPage.next_before``."""

    states: tuple[RunState, ...] = ()
    agent_id: str | None = None
    before: str | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class RunPage:
    runs: list[RunSummary]  # newest first (created_at, id descending)
    next_before: str | None  # cursor of the next (older) page; None at the end


@dataclass(frozen=True, slots=True)
class LogLineRecord:
    """A stored log line."""

    run_id: str
    seq: int
    timestamp: datetime
    level: str
    source: str
    message: str
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class LogQuery:
    """Log viewer filters: levels/sources (empty: all), case-insensitive text, seq cursor."""

    levels: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    text: str | None = None
    after_seq: int = 0
    limit: int = 500


@dataclass(frozen=True, slots=True)
class LogPage:
    lines: list[LogLineRecord]  # ascending seq
    next_after_seq: int | None  # pass as after_seq for the next page; None: no more lines now


@dataclass(frozen=True, slots=True)
class LogStats:
    total: int
    by_level: dict[str, int]
    by_source: dict[str, int]


@dataclass(frozen=True, slots=True)
class PendingAction:
    """An action queued for an agent, delivered with its next check-ins until acknowledged."""

    action_id: str
    agent_id: str
    kind: ActionKind
    params: dict[str, str]
    created_at: datetime
    expires_at: datetime
    delivered_at: datetime | None
    acknowledged_at: datetime | None
    requested_by: str
    # 16 random bytes, hex, signed into the action (the agent executes a nonce at most once);
    # "" for actions queued before alembic 0003 (see ``server.grpc.convert_runs.action_nonce``)
    nonce: str = ""


# --- Migration specs ------------------------------------------------------------------------------


class SpecFormat(StrEnum):
    """How a spec was uploaded (``migration_specs.source_format``)."""

    TOML = "toml"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class SpecRevision:
    """One immutable revision of a spec. ``canonical``: the JSON agents receive."""

    spec_id: str
    revision: int
    title: str
    target: str
    source: str
    source_format: SpecFormat
    canonical: str
    sha256: str
    created_at: datetime
    created_by: str


@dataclass(frozen=True, slots=True)
class VersionCount:
    """How many agents report ``version`` of a spec ("" with ``error`` set: detection failed)."""

    version: str
    agents: int


@dataclass(frozen=True, slots=True)
class SpecSummary:
    """A spec as lists show it: its latest revision and its hosts per version."""

    spec_id: str
    latest_revision: int
    title: str
    target: str
    updated_at: datetime
    versions: tuple[VersionCount, ...]  # by version; the key "" counts unknown/error hosts
    agents: int  # agents reporting the spec at all

    @property
    def at_target(self) -> int:
        return sum(v.agents for v in self.versions if v.version == self.target)


@dataclass(frozen=True, slots=True)
class AgentSpecState:
    """What one agent last reported for a spec."""

    agent_id: str
    hostname: str
    revision: int
    version: str
    error: str
    reported_at: datetime


@dataclass(frozen=True, slots=True)
class SpecDetail:
    """One revision of a spec with every revision's number and the agents reporting it."""

    spec: SpecRevision
    revisions: tuple[SpecRevision, ...]  # oldest first; ``source`` and ``canonical`` included
    versions: tuple[VersionCount, ...]
    agents: tuple[AgentSpecState, ...]


@dataclass(frozen=True, slots=True)
class PreviewResult:
    """The answer to one ``preview_migration`` action: ``pending`` until the agent reports it."""

    action_id: str
    agent_id: str
    spec_id: str
    spec_revision: int
    pending: bool
    status: str = ""  # an EventStatus value once answered
    migration_from: str = ""
    migration_to: str = ""
    message: str = ""
    error_message: str = ""
    diffs: tuple[FileDiff, ...] = ()
    occurred_at: datetime | None = None


# --- Rollouts -------------------------------------------------------------------------------------


class RolloutState(StrEnum):
    """Where a rollout is (``server.services.rollouts`` validates every transition)."""

    RUNNING = "RUNNING"  # starting its waves as their turn comes
    PAUSED = "PAUSED"  # an admin paused it: no new host starts
    HALTED = "HALTED"  # a gate was breached: no new host starts until resumed or aborted
    COMPLETED = "COMPLETED"  # every wave ran within its gates
    ABORTED = "ABORTED"  # stopped for good; hosts it migrated stay migrated
    REVERTING = "REVERTING"  # aborted with revert: its hosts revert, newest wave first
    REVERTED = "REVERTED"  # every host it migrated was asked to revert and answered


TERMINAL_ROLLOUT_STATES: frozenset[RolloutState] = frozenset(
    {RolloutState.COMPLETED, RolloutState.ABORTED, RolloutState.REVERTED}
)


class RolloutHostState(StrEnum):
    """One selected host within a rollout."""

    WAITING = "waiting"  # its wave has not started it
    PENDING = "pending"  # its run action is queued; the agent has not taken it yet
    RUNNING = "running"  # the agent took it / reports the run
    BLOCKED = "blocked"  # the run awaits input (holds its wave open)
    SUCCEEDED = "succeeded"  # migrated, or already at the target
    FAILED = "failed"  # the run failed, or it did not finish within the wave timeout
    NOT_REACHED = "not_reached"  # offline for the whole wave timeout: never took the action
    SKIPPED = "skipped"  # never started: the rollout was aborted first


OPEN_HOST_STATES: frozenset[RolloutHostState] = frozenset(
    {RolloutHostState.PENDING, RolloutHostState.RUNNING, RolloutHostState.BLOCKED}
)
# Hosts the gates count as failed.
FAILED_HOST_STATES: frozenset[RolloutHostState] = frozenset(
    {RolloutHostState.FAILED, RolloutHostState.NOT_REACHED}
)


class RevertState(StrEnum):
    """A host's revert within an aborted-and-reverted rollout ("" while none was asked)."""

    NONE = ""
    QUEUED = "queued"
    REVERTED = "reverted"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RolloutGates:
    """When a wave halts the rollout: more than ``max_failures`` of its hosts failed, or more
    than ``max_failure_rate`` (a fraction) of them; None leaves that gate out."""

    max_failure_rate: float | None
    max_failures: int | None

    def breached(self, failed: int, hosts: int) -> bool:
        if self.max_failures is not None and failed > self.max_failures:
            return True
        if self.max_failure_rate is not None and hosts > 0:
            return failed / hosts > self.max_failure_rate
        return False


@dataclass(frozen=True, slots=True)
class WaveCounts:
    """One wave of a rollout: its hosts (this wave's own, beyond the previous wave) by state."""

    index: int  # 0-based
    label: str  # as given: "5", "25%"
    size: int  # cumulative host count up to and including this wave
    hosts: int  # this wave's own hosts
    counts: dict[RolloutHostState, int]
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def failed(self) -> int:
        return sum(self.counts.get(state, 0) for state in FAILED_HOST_STATES)

    @property
    def failure_rate(self) -> float:
        return self.failed / self.hosts if self.hosts else 0.0


@dataclass(frozen=True, slots=True)
class RolloutTransition:
    """One recorded state change: who (a user, ``cli:<user>`` or ``scheduler``), when, why."""

    from_state: str  # "" for the creation
    to_state: RolloutState
    at: datetime
    by: str
    reason: str


@dataclass(frozen=True, slots=True)
class RolloutSummary:
    """A rollout as lists show it."""

    id: str
    spec_id: str
    spec_revision: int
    selector: tuple[str, ...]
    wave_labels: tuple[str, ...]
    wave_sizes: tuple[int, ...]  # cumulative
    gates: RolloutGates
    soak_seconds: int
    wave_timeout_seconds: int
    state: RolloutState
    current_wave: int
    wave_started_at: datetime | None  # when the current wave started (None: not yet)
    hosts_total: int
    hosts_done: int  # succeeded + failed + not reached
    created_at: datetime
    created_by: str
    updated_at: datetime
    reason: str  # why it is in its state (the last transition's reason)
    next_wave_at: datetime | None  # RUNNING between waves: when the soak ends
    override_wave: int  # a wave whose gates an admin overrode on resume (-1: none)
    revert_wave: int  # REVERTING: the wave reverting now (-1: none)


@dataclass(frozen=True, slots=True)
class RolloutHost:
    """One host of a rollout."""

    agent_id: str
    hostname: str
    wave: int
    state: RolloutHostState
    run_id: str
    error: str
    started_at: datetime | None
    finished_at: datetime | None
    revert_state: RevertState
    revert_run_id: str


@dataclass(frozen=True, slots=True)
class RolloutDetail:
    """A rollout with its waves' counts, its transitions and (some of) its hosts."""

    rollout: RolloutSummary
    waves: tuple[WaveCounts, ...]
    transitions: tuple[RolloutTransition, ...]
    hosts: tuple[RolloutHost, ...]
    reverts: dict[RevertState, int]


# --- Webhooks -------------------------------------------------------------------------------------


class WebhookEvent(StrEnum):
    """What a webhook may subscribe to (``server.services.webhook_events`` enqueues them)."""

    ROLLOUT_HALTED = "rollout.halted"
    ROLLOUT_COMPLETED = "rollout.completed"
    ROLLOUT_ABORTED = "rollout.aborted"  # also an abort with revert (REVERTING)
    RUN_FAILED = "run.failed"  # aggregated: one delivery per webhook per minute at most
    RUN_WAITING_INPUT = "run.waiting_input"  # aggregated like run.failed
    # aggregated like run.failed: agents whose last check-in became older than the offline
    # threshold (server.services.agents.offline_window) in that minute
    AGENT_OFFLINE = "agent.offline"


RUN_WEBHOOK_EVENTS: frozenset[WebhookEvent] = frozenset(
    {WebhookEvent.RUN_FAILED, WebhookEvent.RUN_WAITING_INPUT}
)


class WebhookFormat(StrEnum):
    """The body a webhook receives: the full JSON payload, or Slack's ``{"text": ...}``."""

    JSON = "json"
    SLACK = "slack"


class DeliveryState(StrEnum):
    """One delivery of the webhook outbox (``webhook_deliveries``)."""

    PENDING = "pending"  # due at next_attempt_at (retries included)
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # gave up after webhook_max_attempts


@dataclass(frozen=True, slots=True)
class Webhook:
    """A registered receiver (never its secret)."""

    id: str
    url: str
    events: tuple[WebhookEvent, ...]
    format: WebhookFormat
    created_by: str
    created_at: datetime
    enabled: bool


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One row of a webhook's delivery log."""

    id: int
    webhook_id: str
    event: WebhookEvent
    payload: dict[str, Any]
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime | None  # None once delivered or failed
    last_status: int | None  # the receiver's HTTP status (None: no answer)
    last_error: str
    last_latency_ms: int | None
    created_at: datetime
    delivered_at: datetime | None
