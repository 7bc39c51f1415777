"""Validate and convert protobuf messages to domain objects (and back).

A check-in is validated as a whole before anything is queued: the first problem raises
InvalidArgument naming the field (``events[3].event_id``), so a rejected check-in stores
nothing. An ``agent_id`` in the request that is not the authenticated agent's is
PermissionDenied (the credential is valid, it just does not speak for that agent); an empty
``agent_id`` is accepted, the credential identifies the agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flagpost.v1 import agent_pb2
from server.config import ServerConfig
from server.domain import (
    Category,
    EventStatus,
    EventType,
    HostFacts,
    NewEvent,
    severity_for,
    uuid_is_valid,
)
from server.errors import InvalidArgument, PermissionDenied

MAX_MESSAGE = 1024
MAX_ERROR_MESSAGE = 16384
MAX_DETAIL_STRING = 4096
MAX_VERSION = 64
MAX_SYSTEM_INFO_ENTRIES = 64
MAX_SYSTEM_INFO_KEY = 128
MAX_SYSTEM_INFO_VALUE = 1024
MAX_FACT_STRING = 255
MAX_MACHINE_ID = 128
MAX_TOKEN = 128
EARLIEST_OCCURRED_AT = datetime(2000, 1, 1, tzinfo=UTC)
MAX_CLOCK_AHEAD = timedelta(hours=24)

_EVENT_TYPES = {
    agent_pb2.EVENT_TYPE_MIGRATION_DETECTION: EventType.MIGRATION_DETECTION,
    agent_pb2.EVENT_TYPE_MIGRATION_EXECUTION: EventType.MIGRATION_EXECUTION,
}
_STATUSES = {
    agent_pb2.EVENT_STATUS_SUCCESS: EventStatus.SUCCESS,
    agent_pb2.EVENT_STATUS_FAILED: EventStatus.FAILED,
    agent_pb2.EVENT_STATUS_WARNING: EventStatus.WARNING,
    agent_pb2.EVENT_STATUS_NOT_NEEDED: EventStatus.NOT_NEEDED,
    agent_pb2.EVENT_STATUS_PARTIAL: EventStatus.PARTIAL,
}
ALLOWED_STATUSES: dict[EventType, frozenset[EventStatus]] = {
    EventType.MIGRATION_DETECTION: frozenset(
        {EventStatus.SUCCESS, EventStatus.FAILED, EventStatus.NOT_NEEDED, EventStatus.WARNING}
    ),
    EventType.MIGRATION_EXECUTION: frozenset(
        {EventStatus.SUCCESS, EventStatus.FAILED, EventStatus.PARTIAL, EventStatus.WARNING}
    ),
}


@dataclass(frozen=True, slots=True)
class CheckIn:
    """A validated check-in: what ingest stores and what the response acknowledges."""

    agent_id: str
    facts: HostFacts | None
    events: list[NewEvent]  # deduplicated by event_id (first occurrence kept)
    ack_ids: list[str]  # every event id of the request, as sent, duplicates included


def _text(value: str, field: str, limit: int) -> str:
    """Enforce a length limit and refuse NUL (PostgreSQL text and JSONB cannot store it)."""
    if len(value) > limit:
        raise InvalidArgument(f"longer than {limit} characters ({len(value)})", field=field)
    if "\x00" in value:
        raise InvalidArgument("must not contain NUL characters", field=field)
    return value


def facts_from_proto(
    msg: agent_pb2.HostFacts, field: str = "facts", *, require_hostname: bool = True
) -> HostFacts:
    """Validate host facts. The hostname is required (every agent must be nameable)."""
    hostname = _text(msg.hostname.strip(), f"{field}.hostname", MAX_FACT_STRING)
    if require_hostname and not hostname:
        raise InvalidArgument("is required", field=f"{field}.hostname")
    return HostFacts(
        hostname=hostname,
        os=_text(msg.os, f"{field}.os", MAX_FACT_STRING),
        kernel=_text(msg.kernel, f"{field}.kernel", MAX_FACT_STRING),
        agent_version=_text(msg.agent_version, f"{field}.agent_version", MAX_VERSION),
        config_version=_text(msg.config_version, f"{field}.config_version", MAX_VERSION),
        disk_free_bytes=min(int(msg.disk_free_bytes), 2**63 - 1),
        machine_id=_text(msg.machine_id, f"{field}.machine_id", MAX_MACHINE_ID),
    )


def enroll_from_proto(request: agent_pb2.EnrollRequest) -> tuple[str, HostFacts]:
    """Validate an EnrollRequest: ``(token, facts)``."""
    if not request.token:
        raise InvalidArgument("is required", field="token")
    token = _text(request.token, "token", MAX_TOKEN)
    if not request.HasField("facts"):
        raise InvalidArgument("is required", field="facts")
    return token, facts_from_proto(request.facts)


def _error_detail(msg: agent_pb2.ErrorDetail, field: str) -> dict[str, Any]:
    detail: dict[str, Any] = {}
    for descriptor, value in msg.ListFields():  # only fields set to a non-default value
        name = descriptor.name
        if isinstance(value, str):
            detail[name] = _text(value, f"{field}.{name}", MAX_DETAIL_STRING)
        else:
            detail[name] = int(value)
    return detail


def _occurred_at(event: agent_pb2.MigrationEvent, field: str, now: datetime) -> datetime:
    if not event.HasField("occurred_at"):
        raise InvalidArgument("is required", field=field)
    try:
        when: datetime = event.occurred_at.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument(f"is not a valid timestamp ({exc})", field=field) from exc
    if when < EARLIEST_OCCURRED_AT:
        raise InvalidArgument("is before 2000-01-01 (agent clock wrong?)", field=field)
    if when > now + MAX_CLOCK_AHEAD:
        raise InvalidArgument("is more than 24h in the future (agent clock wrong?)", field=field)
    return when


def event_from_proto(
    event: agent_pb2.MigrationEvent, index: int, agent_id: str, now: datetime
) -> NewEvent:
    """Validate one MigrationEvent (``index`` names it in errors) into a NewEvent."""
    at = f"events[{index}]"
    if not uuid_is_valid(event.event_id):
        raise InvalidArgument("must be a UUID", field=f"{at}.event_id")
    event_type = _EVENT_TYPES.get(event.event_type)
    if event_type is None:
        raise InvalidArgument(
            "must be EVENT_TYPE_MIGRATION_DETECTION or EVENT_TYPE_MIGRATION_EXECUTION",
            field=f"{at}.event_type",
        )
    status = _STATUSES.get(event.status)
    if status is None:
        raise InvalidArgument("is unspecified or unknown", field=f"{at}.status")
    allowed = ALLOWED_STATUSES[event_type]
    if status not in allowed:
        names = "|".join(sorted(str(s) for s in allowed))
        raise InvalidArgument(
            f"{status} is not allowed for {event_type} (allowed: {names})", field=f"{at}.status"
        )
    run_id: str | None = None
    if event.run_id:
        if not uuid_is_valid(event.run_id):
            raise InvalidArgument("must be empty or a UUID", field=f"{at}.run_id")
        run_id = event.run_id.lower()
    occurred_at = _occurred_at(event, f"{at}.occurred_at", now)
    if len(event.system_info) > MAX_SYSTEM_INFO_ENTRIES:
        raise InvalidArgument(
            f"has {len(event.system_info)} entries, at most {MAX_SYSTEM_INFO_ENTRIES} allowed",
            field=f"{at}.system_info",
        )
    system_info: dict[str, str] = {}
    for key, value in sorted(event.system_info.items()):
        _text(key, f"{at}.system_info", MAX_SYSTEM_INFO_KEY)
        system_info[key] = _text(value, f"{at}.system_info[{key!r}]", MAX_SYSTEM_INFO_VALUE)
    return NewEvent(
        event_id=event.event_id.lower(),
        agent_id=agent_id,
        category=Category.MIGRATION,
        event_type=str(event_type),
        status=status,
        severity=severity_for(status),
        message=_text(event.message, f"{at}.message", MAX_MESSAGE),
        error_message=_text(event.error_message, f"{at}.error_message", MAX_ERROR_MESSAGE),
        error_detail=_error_detail(event.error_detail, f"{at}.error_detail")
        if event.HasField("error_detail")
        else {},
        migration_from=_text(event.migration_from, f"{at}.migration_from", MAX_VERSION),
        migration_to=_text(event.migration_to, f"{at}.migration_to", MAX_VERSION),
        run_id=run_id,
        system_info=system_info,
        occurred_at=occurred_at,
    )


def checkin_from_proto(
    request: agent_pb2.CheckInRequest,
    agent_id: str,
    config: ServerConfig,
    now: datetime | None = None,
) -> CheckIn:
    """Validate a whole CheckInRequest from the authenticated ``agent_id``."""
    if request.agent_id and request.agent_id.lower() != agent_id.lower():
        raise PermissionDenied("agent_id does not match the credential")
    count = len(request.events)
    if count > config.max_events_per_checkin:
        raise InvalidArgument(
            f"{count} events in one check-in; the limit is {config.max_events_per_checkin} "
            "(send the rest in the next check-in)",
            field="events",
        )
    now = now or datetime.now(UTC)
    facts = (
        facts_from_proto(request.facts, require_hostname=False)
        if request.HasField("facts")
        else None
    )
    if facts is not None and not facts.hostname:
        facts = None  # facts without a hostname cannot replace the stored ones
    events: list[NewEvent] = []
    seen: set[str] = set()
    for index, message in enumerate(request.events):
        event = event_from_proto(message, index, agent_id, now)
        if event.event_id not in seen:
            seen.add(event.event_id)
            events.append(event)
    return CheckIn(
        agent_id=agent_id,
        facts=facts,
        events=events,
        ack_ids=[message.event_id for message in request.events],
    )
