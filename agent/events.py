"""Building ``MigrationEvent`` protos: ids, timestamps, error detail, system info.

A run of a server-defined spec says so on every event and RunUpdate (:class:`RunLabels`: the
spec id and revision, the action that asked for it, and for a revert the run it reverts). A
revert's outcome is ``EVENT_TYPE_MIGRATION_REVERT``; a preview (a spec planned without writing,
:mod:`agent.specs.preview`) is one ``EVENT_TYPE_MIGRATION_PREVIEW`` event with per-file diffs.

Besides migration outcomes the agent reports notices about itself (``EVENT_TYPE_AGENT_NOTICE``,
category "agent" in the History): :func:`quarantine_notice` is the warning that an event was set
aside because the server rejected it; :func:`agent_notice` builds the others (actions ignored
because expired or of an unknown kind, run updates or log lines the server rejected).
"""

from __future__ import annotations

import errno as errno_module
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from agent.uuid7 import uuid7_str
from flagpost.v1 import agent_pb2

DETECTION = agent_pb2.EVENT_TYPE_MIGRATION_DETECTION
EXECUTION = agent_pb2.EVENT_TYPE_MIGRATION_EXECUTION
AGENT_NOTICE = agent_pb2.EVENT_TYPE_AGENT_NOTICE
REVERT = agent_pb2.EVENT_TYPE_MIGRATION_REVERT
PREVIEW = agent_pb2.EVENT_TYPE_MIGRATION_PREVIEW
SUCCESS = agent_pb2.EVENT_STATUS_SUCCESS
FAILED = agent_pb2.EVENT_STATUS_FAILED
WARNING = agent_pb2.EVENT_STATUS_WARNING
NOT_NEEDED = agent_pb2.EVENT_STATUS_NOT_NEEDED
PARTIAL = agent_pb2.EVENT_STATUS_PARTIAL

MAX_MESSAGE_CHARS = 200


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Structured failure detail (mirrors ``flagpost.v1.ErrorDetail``)."""

    failing_step: str = ""
    file_path: str = ""
    errno: int = 0
    exception_type: str = ""
    line: int = 0
    rollback: str = ""
    rollback_error: str = ""
    backup_path: str = ""

    @property
    def errno_name(self) -> str:
        return errno_module.errorcode.get(self.errno, "") if self.errno else ""

    def to_proto(self) -> agent_pb2.ErrorDetail:
        return agent_pb2.ErrorDetail(
            failing_step=self.failing_step,
            file_path=self.file_path,
            errno=self.errno,
            errno_name=self.errno_name,
            exception_type=self.exception_type,
            line=self.line,
            rollback=self.rollback,
            rollback_error=self.rollback_error,
            backup_path=self.backup_path,
        )


@dataclass(frozen=True, slots=True)
class RunLabels:
    """Where a run comes from, carried by its events and RunUpdates: ``spec_id`` and
    ``spec_revision`` for a server-defined spec ("" / 0 for a built-in migration),
    ``action_id`` the server action that asked for it, ``reverts_run_id`` the run a revert
    restores (its execution event is then ``EVENT_TYPE_MIGRATION_REVERT``)."""

    spec_id: str = ""
    spec_revision: int = 0
    action_id: str = ""
    reverts_run_id: str = ""

    def asked_by(self, action_id: str) -> RunLabels:
        """These labels for a run that ``action_id`` asked for ("": none)."""
        return replace(self, action_id=action_id)

    @property
    def execution_type(self) -> int:
        """The event type of the run's outcome: a revert's, else an execution's."""
        kind: int = REVERT if self.reverts_run_id else EXECUTION
        return kind

    def stamp(self, event: agent_pb2.MigrationEvent) -> agent_pb2.MigrationEvent:
        """``event`` with these labels set (returned for chaining)."""
        event.spec_id = self.spec_id
        event.spec_revision = self.spec_revision
        event.action_id = self.action_id
        return event


NO_LABELS = RunLabels()


def short(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def migration_event(
    *,
    event_type: int,
    status: int,
    run_id: str,
    message: str,
    system_info: Mapping[str, str],
    error_message: str = "",
    error: ErrorInfo | None = None,
    migration_from: str = "",
    migration_to: str = "",
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    labels: RunLabels = NO_LABELS,
) -> agent_pb2.MigrationEvent:
    """A complete MigrationEvent; ``event_id`` defaults to a new UUIDv7, ``occurred_at`` to now;
    ``labels``: the spec and action the event is about."""
    event = agent_pb2.MigrationEvent(
        event_id=event_id or uuid7_str(),
        event_type=event_type,
        status=status,
        message=short(message),
        error_message=error_message,
        migration_from=migration_from,
        migration_to=migration_to,
        run_id=run_id,
    )
    if error is not None:
        event.error_detail.CopyFrom(error.to_proto())
    event.occurred_at.FromDatetime(occurred_at or datetime.now(UTC))
    event.system_info.update(dict(system_info))
    return labels.stamp(event)


_EVENT_TYPE_NAMES = {
    DETECTION: "migration_detection",
    EXECUTION: "migration_execution",
    AGENT_NOTICE: "agent_notice",
    REVERT: "migration_revert",
    PREVIEW: "migration_preview",
}
_STATUS_NAMES = {
    SUCCESS: "success",
    FAILED: "failed",
    WARNING: "warning",
    NOT_NEEDED: "not_needed",
    PARTIAL: "partial",
}


def describe(event: agent_pb2.MigrationEvent) -> str:
    """``migration_execution_failed "message"``: an event named the way the History names it."""
    kind = _EVENT_TYPE_NAMES.get(event.event_type, f"event_type_{event.event_type}")
    status = _STATUS_NAMES.get(event.status, f"status_{event.status}")
    return f"{kind}_{status} {short(event.message, 80)!r}"


def quarantine_notice(
    event: agent_pb2.MigrationEvent, reason: str, system_info: Mapping[str, str]
) -> agent_pb2.MigrationEvent:
    """The warning reported when ``event`` is quarantined: it names the event id and the
    server's reason. Its run id is left empty (a notice is not part of the run's outcome)."""
    what = describe(event)
    run = f" of run {event.run_id}" if event.run_id else ""
    return migration_event(
        event_type=AGENT_NOTICE,
        status=WARNING,
        run_id="",
        message=f"Event {event.event_id} set aside: {reason}",
        error_message=(
            f"The agent quarantined event {event.event_id} ({what}{run}): {reason}. It is kept "
            "in the agent's outbox, listed by `flagpost-agent status`, and no longer sent; the "
            "events behind it were delivered."
        ),
        system_info=system_info,
    )


def agent_notice(
    message: str,
    system_info: Mapping[str, str],
    *,
    status: int = WARNING,
    error_message: str = "",
    run_id: str = "",
    labels: RunLabels = NO_LABELS,
) -> agent_pb2.MigrationEvent:
    """A notice about the agent itself (``EVENT_TYPE_AGENT_NOTICE``): an action it ignored, an
    item it set aside. ``message`` is the History row; ``error_message`` defaults to it;
    ``labels``: the verified action (and spec) it is about, when there is one."""
    return migration_event(
        event_type=AGENT_NOTICE,
        status=status,
        run_id=run_id,
        message=message,
        error_message=error_message or message,
        system_info=system_info,
        labels=labels,
    )
