"""Validate and convert protobuf messages to domain objects (and back).

A check-in is validated as a whole before anything is queued: the first problem raises
InvalidArgument naming the field (``events[3].event_id``), so a rejected check-in stores
nothing. An ``agent_id`` in the request that is not the authenticated agent's is
PermissionDenied (the credential is valid, it just does not speak for that agent); an empty
``agent_id`` is accepted, the credential identifies the agent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from agent.specs.validate import SPEC_ID
from flagpost.v1 import agent_pb2
from server.config import ServerConfig
from server.domain import (
    Category,
    EventStatus,
    EventType,
    FileDiff,
    HostFacts,
    NewEvent,
    SpecVersionReport,
    severity_for,
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
MAX_DIFFS = 64
MAX_DIFF = 256 * 1024
MAX_DIFF_PATH = 4096
MAX_DIFF_OPERATIONS = 256
MAX_DIFF_OPERATION = 1024
MAX_DIFF_NOTE = 16384
MAX_SPECS = 256
MAX_SPEC_ERROR = 4096
MAX_LABELS = 32
MAX_LABEL_VALUE = 128
LABEL_KEY_MAX = 63
LABEL_KEY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}\Z")
EARLIEST_OCCURRED_AT = datetime(2000, 1, 1, tzinfo=UTC)
MAX_CLOCK_AHEAD = timedelta(hours=24)
_EARLIEST_SECONDS = int(EARLIEST_OCCURRED_AT.timestamp())
_MAX_AHEAD_SECONDS = int(MAX_CLOCK_AHEAD.total_seconds())

# The canonical hyphenated form, either case: what ``domain.uuid_is_valid`` accepts, ~10x faster
# (validation runs for every event of every check-in).
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")

_EVENT_TYPES = {
    agent_pb2.EVENT_TYPE_MIGRATION_DETECTION: EventType.MIGRATION_DETECTION,
    agent_pb2.EVENT_TYPE_MIGRATION_EXECUTION: EventType.MIGRATION_EXECUTION,
    agent_pb2.EVENT_TYPE_AGENT_NOTICE: EventType.AGENT_NOTICE,
    agent_pb2.EVENT_TYPE_MIGRATION_REVERT: EventType.MIGRATION_REVERT,
    agent_pb2.EVENT_TYPE_MIGRATION_PREVIEW: EventType.MIGRATION_PREVIEW,
}
# Migration events are the History's subject; agent notices (quarantine and the like) are the
# other category update_events holds.
_CATEGORIES = {
    EventType.MIGRATION_DETECTION: Category.MIGRATION,
    EventType.MIGRATION_EXECUTION: Category.MIGRATION,
    EventType.AGENT_NOTICE: Category.AGENT,
    EventType.MIGRATION_REVERT: Category.MIGRATION,
    EventType.MIGRATION_PREVIEW: Category.MIGRATION,
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
    EventType.AGENT_NOTICE: frozenset(
        {EventStatus.SUCCESS, EventStatus.FAILED, EventStatus.WARNING}
    ),
    # reverted | refused (a file changed since the run: nothing done) | failed | rolled back
    # partly
    EventType.MIGRATION_REVERT: frozenset(
        {EventStatus.SUCCESS, EventStatus.FAILED, EventStatus.PARTIAL, EventStatus.WARNING}
    ),
    # planned (diffs attached) | already at the target | cannot plan | planned, inputs missing
    EventType.MIGRATION_PREVIEW: frozenset(
        {EventStatus.SUCCESS, EventStatus.NOT_NEEDED, EventStatus.FAILED, EventStatus.WARNING}
    ),
}
_EVENT_TYPE_NAMES = ", ".join(agent_pb2.EventType.Name(number) for number in sorted(_EVENT_TYPES))


@dataclass(frozen=True, slots=True)
class CheckIn:
    """A validated check-in: what ingest stores and what the response acknowledges."""

    agent_id: str
    facts: HostFacts | None
    events: list[NewEvent]  # deduplicated by event_id (first occurrence kept)
    ack_ids: list[str]  # every event id of the request, as sent, duplicates included
    # facts.specs when facts were sent (every spec the agent holds; () deletes the stored ones)
    specs: tuple[SpecVersionReport, ...] | None = None


def checked_text(value: str, field: str, limit: int) -> str:
    """``value`` when it fits ``limit`` and has no NUL (PostgreSQL text and JSONB cannot store
    it); InvalidArgument naming ``field`` otherwise. Shared with ``convert_runs``."""
    if len(value) > limit:
        raise InvalidArgument(f"longer than {limit} characters ({len(value)})", field=field)
    if "\x00" in value:
        raise InvalidArgument("must not contain NUL characters", field=field)
    return value


def _event_text(value: str, index: int, name: str, limit: int) -> str:
    """``checked_text`` for ``events[index].name``; the field path is only built for an error."""
    if len(value) > limit or "\x00" in value:
        checked_text(value, f"events[{index}].{name}", limit)
    return value


def facts_from_proto(
    msg: agent_pb2.HostFacts, field: str = "facts", *, require_hostname: bool = True
) -> HostFacts:
    """Validate host facts. The hostname is required (every agent must be nameable)."""
    hostname = checked_text(msg.hostname.strip(), f"{field}.hostname", MAX_FACT_STRING)
    if require_hostname and not hostname:
        raise InvalidArgument("is required", field=f"{field}.hostname")
    return HostFacts(
        hostname=hostname,
        os=checked_text(msg.os, f"{field}.os", MAX_FACT_STRING),
        kernel=checked_text(msg.kernel, f"{field}.kernel", MAX_FACT_STRING),
        agent_version=checked_text(msg.agent_version, f"{field}.agent_version", MAX_VERSION),
        config_version=checked_text(msg.config_version, f"{field}.config_version", MAX_VERSION),
        disk_free_bytes=min(int(msg.disk_free_bytes), 2**63 - 1),
        machine_id=checked_text(msg.machine_id, f"{field}.machine_id", MAX_MACHINE_ID),
        labels=labels_from_proto(msg, field),
    )


def labels_from_proto(
    msg: agent_pb2.HostFacts, field: str = "facts"
) -> tuple[tuple[str, str], ...]:
    """Validate ``facts.labels``: at most ``MAX_LABELS``, keys ``[a-z0-9][a-z0-9_.-]{0,62}``,
    values of at most ``MAX_LABEL_VALUE`` printable characters; sorted by key."""
    count = len(msg.labels)
    if count > MAX_LABELS:
        raise InvalidArgument(
            f"has {count} entries, at most {MAX_LABELS} allowed", field=f"{field}.labels"
        )
    labels: list[tuple[str, str]] = []
    for key, value in msg.labels.items():
        if LABEL_KEY.match(key) is None:
            raise InvalidArgument(
                f"key must be 1 to {LABEL_KEY_MAX} of a-z, 0-9, '_', '.', '-', starting with a "
                "letter or digit",
                field=f"{field}.labels[{key[:64]!r}]",
            )
        if len(value) > MAX_LABEL_VALUE:
            raise InvalidArgument(
                f"longer than {MAX_LABEL_VALUE} characters ({len(value)})",
                field=f"{field}.labels[{key!r}]",
            )
        if not value.isprintable():
            raise InvalidArgument("must be printable characters", field=f"{field}.labels[{key!r}]")
        labels.append((key, value))
    return tuple(sorted(labels))


def spec_id_checked(value: str, field: str) -> str:
    """``value`` when it is "" or a spec id (``agent.specs.validate.SPEC_ID``); else
    InvalidArgument naming ``field``."""
    if value and SPEC_ID.fullmatch(value) is None:
        raise InvalidArgument(
            "must be empty or a spec id (1 to 64 of a-z, 0-9, '_', '.', '-', starting with a "
            "letter or digit)",
            field=field,
        )
    return value


def specs_from_proto(
    msg: agent_pb2.HostFacts, field: str = "facts"
) -> tuple[SpecVersionReport, ...]:
    """Validate ``facts.specs``: at most ``MAX_SPECS`` entries, each a non-empty spec id (the
    last of a repeated id wins), a version of at most ``MAX_VERSION`` and an error of at most
    ``MAX_SPEC_ERROR`` characters."""
    count = len(msg.specs)
    if count > MAX_SPECS:
        raise InvalidArgument(
            f"has {count} entries, at most {MAX_SPECS} allowed", field=f"{field}.specs"
        )
    reports: dict[str, SpecVersionReport] = {}
    for i, item in enumerate(msg.specs):
        where = f"{field}.specs[{i}]"
        if not item.spec_id:
            raise InvalidArgument("is required", field=f"{where}.spec_id")
        spec_id = spec_id_checked(item.spec_id, f"{where}.spec_id")
        reports[spec_id] = SpecVersionReport(
            spec_id=spec_id,
            revision=int(item.revision),
            version=checked_text(item.version, f"{where}.version", MAX_VERSION),
            error=checked_text(item.error, f"{where}.error", MAX_SPEC_ERROR),
        )
    return tuple(reports[key] for key in sorted(reports))


def _diffs(event: agent_pb2.MigrationEvent, index: int) -> tuple[FileDiff, ...]:
    count = len(event.diffs)
    if count > MAX_DIFFS:
        raise InvalidArgument(
            f"has {count} entries, at most {MAX_DIFFS} allowed", field=f"events[{index}].diffs"
        )
    diffs: list[FileDiff] = []
    for i, item in enumerate(event.diffs):
        where = f"events[{index}].diffs[{i}]"
        if len(item.operations) > MAX_DIFF_OPERATIONS:
            raise InvalidArgument(
                f"has {len(item.operations)} entries, at most {MAX_DIFF_OPERATIONS} allowed",
                field=f"{where}.operations",
            )
        diffs.append(
            FileDiff(
                path=checked_text(item.path, f"{where}.path", MAX_DIFF_PATH),
                diff=checked_text(item.diff, f"{where}.diff", MAX_DIFF),
                operations=tuple(
                    checked_text(op, f"{where}.operations[{j}]", MAX_DIFF_OPERATION)
                    for j, op in enumerate(item.operations)
                ),
                note=checked_text(item.note, f"{where}.note", MAX_DIFF_NOTE),
            )
        )
    return tuple(diffs)


def enroll_from_proto(request: agent_pb2.EnrollRequest) -> tuple[str, HostFacts]:
    """Validate an EnrollRequest: ``(token, facts)``."""
    if not request.token:
        raise InvalidArgument("is required", field="token")
    token = checked_text(request.token, "token", MAX_TOKEN)
    if not request.HasField("facts"):
        raise InvalidArgument("is required", field="facts")
    return token, facts_from_proto(request.facts)


def _error_detail(msg: agent_pb2.ErrorDetail, index: int) -> dict[str, Any]:
    detail: dict[str, Any] = {}
    for descriptor, value in msg.ListFields():  # only fields set to a non-default value
        name = descriptor.name
        if isinstance(value, str):
            detail[name] = _event_text(value, index, f"error_detail.{name}", MAX_DETAIL_STRING)
        else:
            detail[name] = int(value)
    return detail


def _occurred_at(event: agent_pb2.MigrationEvent, index: int, now_seconds: int) -> datetime:
    field = f"events[{index}].occurred_at"
    if not event.HasField("occurred_at"):
        raise InvalidArgument("is required", field=field)
    return checked_timestamp(event.occurred_at, field, now_seconds)


def checked_timestamp(stamp: Timestamp, field: str, now_seconds: int) -> datetime:
    """An agent-clock timestamp, refused (naming ``field``) when malformed, before 2000 or more
    than 24 h ahead of the server's clock."""
    seconds, nanos = stamp.seconds, stamp.nanos
    if not 0 <= nanos < 1_000_000_000:
        raise InvalidArgument(f"is not a valid timestamp (nanos={nanos})", field=field)
    if seconds < _EARLIEST_SECONDS:
        raise InvalidArgument("is before 2000-01-01 (agent clock wrong?)", field=field)
    if seconds > now_seconds + _MAX_AHEAD_SECONDS:
        raise InvalidArgument("is more than 24h in the future (agent clock wrong?)", field=field)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)


def event_from_proto(
    event: agent_pb2.MigrationEvent, index: int, agent_id: str, now: datetime
) -> NewEvent:
    """Validate one MigrationEvent (``index`` names it in errors) into a NewEvent."""
    return _event(event, index, agent_id, int(now.timestamp()))


def _event(event: agent_pb2.MigrationEvent, index: int, agent_id: str, now_s: int) -> NewEvent:
    event_id = event.event_id
    if _UUID.match(event_id) is None:
        raise InvalidArgument("must be a UUID", field=f"events[{index}].event_id")
    event_type = _EVENT_TYPES.get(event.event_type)
    if event_type is None:
        raise InvalidArgument(
            f"must be one of {_EVENT_TYPE_NAMES}", field=f"events[{index}].event_type"
        )
    status = _STATUSES.get(event.status)
    if status is None:
        raise InvalidArgument("is unspecified or unknown", field=f"events[{index}].status")
    allowed = ALLOWED_STATUSES[event_type]
    if status not in allowed:
        names = "|".join(sorted(str(s) for s in allowed))
        raise InvalidArgument(
            f"{status} is not allowed for {event_type} (allowed: {names})",
            field=f"events[{index}].status",
        )
    run_id: str | None = None
    if event.run_id:
        if _UUID.match(event.run_id) is None:
            raise InvalidArgument("must be empty or a UUID", field=f"events[{index}].run_id")
        run_id = event.run_id.lower()
    action_id = ""
    if event.action_id:
        if _UUID.match(event.action_id) is None:
            raise InvalidArgument("must be empty or a UUID", field=f"events[{index}].action_id")
        action_id = event.action_id.lower()
    spec_id = event.spec_id
    if spec_id and SPEC_ID.fullmatch(spec_id) is None:
        spec_id_checked(spec_id, f"events[{index}].spec_id")
    occurred_at = _occurred_at(event, index, now_s)
    info = event.system_info
    if len(info) > MAX_SYSTEM_INFO_ENTRIES:
        raise InvalidArgument(
            f"has {len(info)} entries, at most {MAX_SYSTEM_INFO_ENTRIES} allowed",
            field=f"events[{index}].system_info",
        )
    # Key iteration + lookup is ~3x faster than .items() on a protobuf map.
    system_info: dict[str, str] = {key: info[key] for key in sorted(info)}
    for key, value in system_info.items():
        if len(key) > MAX_SYSTEM_INFO_KEY or "\x00" in key:
            checked_text(key, f"events[{index}].system_info", MAX_SYSTEM_INFO_KEY)
        if len(value) > MAX_SYSTEM_INFO_VALUE or "\x00" in value:
            checked_text(value, f"events[{index}].system_info[{key!r}]", MAX_SYSTEM_INFO_VALUE)
    return NewEvent(
        event_id=event_id.lower(),
        agent_id=agent_id,
        category=_CATEGORIES[event_type],
        event_type=event_type.value,
        status=status,
        severity=severity_for(status),
        message=_event_text(event.message, index, "message", MAX_MESSAGE),
        error_message=_event_text(event.error_message, index, "error_message", MAX_ERROR_MESSAGE),
        error_detail=_error_detail(event.error_detail, index)
        if event.HasField("error_detail")
        else {},
        migration_from=_event_text(event.migration_from, index, "migration_from", MAX_VERSION),
        migration_to=_event_text(event.migration_to, index, "migration_to", MAX_VERSION),
        run_id=run_id,
        system_info=system_info,
        occurred_at=occurred_at,
        spec_id=spec_id,
        spec_revision=int(event.spec_revision),
        action_id=action_id,
        diffs=_diffs(event, index) if event.diffs else (),
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
    now_s = int((now or datetime.now(UTC)).timestamp())
    facts = (
        facts_from_proto(request.facts, require_hostname=False)
        if request.HasField("facts")
        else None
    )
    if facts is not None and not facts.hostname:
        facts = None  # facts without a hostname cannot replace the stored ones
    specs = specs_from_proto(request.facts) if facts is not None else None
    events: list[NewEvent] = []
    seen: set[str] = set()
    for index, message in enumerate(request.events):
        event = _event(message, index, agent_id, now_s)
        if event.event_id not in seen:
            seen.add(event.event_id)
            events.append(event)
    return CheckIn(
        agent_id=agent_id,
        facts=facts,
        events=events,
        ack_ids=[message.event_id for message in request.events],
        specs=specs,
    )
