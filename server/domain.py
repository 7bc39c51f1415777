"""Domain types shared by services, transports and views. Imports nothing else of ours."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Category(StrEnum):
    MIGRATION = "migration"
    AGENT = "agent"  # other agent events (lifecycle, security, quarantine notices)


class EventType(StrEnum):
    MIGRATION_DETECTION = "migration_detection"
    MIGRATION_EXECUTION = "migration_execution"
    AGENT_NOTICE = "agent_notice"  # category AGENT: quarantine notices and other agent events


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
    """The one mapping from an event's status to its severity (DESIGN §3)."""
    return _SEVERITY[status]


def outcome_name(event_type: str, status: str) -> str:
    """``migration_execution_failed`` and friends: the outcome label the History shows."""
    return f"{event_type}_{status}"


class AgentHealth(StrEnum):
    ONLINE = "online"
    STALE = "stale"
    OFFLINE = "offline"
    NEVER = "never"  # enrolled, never checked in


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


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A validated event ready to store (what ingest hands to storage)."""

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


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as read back for the History page and the JSON API (a view model source)."""

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


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[StoredEvent]
    next_before_id: int | None  # cursor for the next (older) page, None at the end
    filters: EventFilter = field(default_factory=EventFilter)
