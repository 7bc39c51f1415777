"""Validate and convert the runs part of a check-in: run updates, log lines, action acks; and
pending actions back to protobuf.

Same rules as events (``server.grpc.convert``): the first problem rejects the WHOLE check-in
with InvalidArgument naming the field (``run_updates[2].state``, ``log_lines[7].seq``), so a
rejected check-in stores nothing. Repeats inside one request are fine: the first occurrence of a
run update (by ``update_id``) or log line (by ``(run_id, seq)``) is kept, and every one sent is
acknowledged.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from flagpost.v1 import agent_pb2
from server.config import ServerConfig
from server.domain import (
    InputField,
    InputRequest,
    LogLevel,
    NewLogLine,
    NewRunUpdate,
    PendingAction,
    RunState,
    RunStep,
    StepStatus,
)
from server.errors import InvalidArgument
from server.grpc.convert import checked_text, checked_timestamp
from server.signing import ActionSigner

MAX_STEPS = 1_000
MAX_STEP_NAME = 255
MAX_STEP_ERROR = 16_384
MAX_MIGRATION_ID = 128
MAX_VERSION = 64
MAX_RUN_ERROR = 16_384
MAX_LOG_MESSAGE = 16_384
MAX_LOG_SOURCE = 128
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY = 128
MAX_METADATA_VALUE = 1_024
MAX_ACKED_ACTIONS = 1_000
MAX_SEQ = 2**62
MAX_INPUT_FIELDS = 16
MAX_INPUT_LABEL = 200
MAX_INPUT_ERROR = 500

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_INPUT_NAME = re.compile(r"[a-z0-9_]{1,64}\Z")
_STATES = {
    agent_pb2.RUN_STATE_PENDING: RunState.PENDING,
    agent_pb2.RUN_STATE_RUNNING: RunState.RUNNING,
    agent_pb2.RUN_STATE_AWAITING_INPUT: RunState.AWAITING_INPUT,
    agent_pb2.RUN_STATE_SUCCEEDED: RunState.SUCCEEDED,
    agent_pb2.RUN_STATE_FAILED: RunState.FAILED,
    agent_pb2.RUN_STATE_PARTIAL: RunState.PARTIAL,
    agent_pb2.RUN_STATE_CANCELLED: RunState.CANCELLED,
}
STEP_STATUSES = frozenset(s.value for s in StepStatus)
_LEVELS = {level.value: level for level in LogLevel}
_LEVELS.update({"WARN": LogLevel.WARNING})


@dataclass(frozen=True, slots=True)
class RunsPart:
    """The validated runs part of one check-in."""

    updates: list[NewRunUpdate]  # unique by update_id
    update_ack_ids: list[str]  # every update_id sent, as sent
    log_lines: list[NewLogLine]  # unique by (run_id, seq)
    log_acks: dict[str, list[int]]  # run_id as sent -> every seq sent
    acked_action_ids: list[str]  # lower-case, unique


def _uuid(value: str, field: str) -> str:
    if _UUID.match(value) is None:
        raise InvalidArgument("must be a UUID", field=field)
    return value.lower()


def _timestamp(
    msg: agent_pb2.RunUpdate | agent_pb2.LogLine, name: str, field: str, now_s: int
) -> datetime | None:
    if not msg.HasField(name):
        return None
    stamp: Timestamp = getattr(msg, name)
    return checked_timestamp(stamp, field, now_s)


def _step(msg: agent_pb2.StepResult, field: str) -> RunStep:
    if msg.status not in STEP_STATUSES:
        raise InvalidArgument(
            f"must be one of {', '.join(sorted(STEP_STATUSES))}", field=f"{field}.status"
        )
    return RunStep(
        index=int(msg.index),
        name=checked_text(msg.name, f"{field}.name", MAX_STEP_NAME),
        status=msg.status,
        error=checked_text(msg.error, f"{field}.error", MAX_STEP_ERROR),
        duration_ms=int(msg.duration_ms),
    )


def input_request_from_proto(msg: agent_pb2.InputRequest, field: str) -> InputRequest:
    """Validate an AWAITING_INPUT run's input request: a UUID ``request_id``, 1 to
    ``MAX_INPUT_FIELDS`` fields with unique ``[a-z0-9_]{1,64}`` names, labels of at most
    ``MAX_INPUT_LABEL`` and errors of at most ``MAX_INPUT_ERROR`` characters."""
    request_id = _uuid(msg.request_id, f"{field}.request_id")
    count = len(msg.fields)
    if not 1 <= count <= MAX_INPUT_FIELDS:
        raise InvalidArgument(
            f"has {count} fields; 1 to {MAX_INPUT_FIELDS} allowed", field=f"{field}.fields"
        )
    fields: list[InputField] = []
    seen: set[str] = set()
    for i, item in enumerate(msg.fields):
        where = f"{field}.fields[{i}]"
        if _INPUT_NAME.match(item.name) is None:
            raise InvalidArgument(
                "must be 1 to 64 characters of a-z, 0-9 and _", field=f"{where}.name"
            )
        if item.name in seen:
            raise InvalidArgument(f"repeats the name {item.name!r}", field=f"{where}.name")
        seen.add(item.name)
        fields.append(
            InputField(
                name=item.name,
                label=checked_text(item.label, f"{where}.label", MAX_INPUT_LABEL),
                secret=bool(item.secret),
                error=checked_text(item.error, f"{where}.error", MAX_INPUT_ERROR),
            )
        )
    return InputRequest(request_id=request_id, fields=tuple(fields))


def run_update_from_proto(
    msg: agent_pb2.RunUpdate, index: int, agent_id: str, now_s: int
) -> NewRunUpdate:
    """Validate one RunUpdate (``index`` names it in errors)."""
    field = f"run_updates[{index}]"
    update_id = _uuid(msg.update_id, f"{field}.update_id")
    run_id = _uuid(msg.run_id, f"{field}.run_id")
    state = _STATES.get(msg.state)
    if state is None:
        raise InvalidArgument("is unspecified or unknown", field=f"{field}.state")
    if len(msg.steps) > MAX_STEPS:
        raise InvalidArgument(
            f"has {len(msg.steps)} steps, at most {MAX_STEPS} allowed", field=f"{field}.steps"
        )
    if msg.steps_total > MAX_STEPS:
        raise InvalidArgument(f"must be at most {MAX_STEPS}", field=f"{field}.steps_total")
    if msg.steps_done > msg.steps_total:
        raise InvalidArgument("must not exceed steps_total", field=f"{field}.steps_done")
    steps: dict[int, RunStep] = {}
    for i, step in enumerate(msg.steps):
        if step.index >= MAX_STEPS:
            raise InvalidArgument(f"must be below {MAX_STEPS}", field=f"{field}.steps[{i}].index")
        steps[step.index] = _step(step, f"{field}.steps[{i}]")  # a repeated index: last wins
    input_request: InputRequest | None = None
    if state == RunState.AWAITING_INPUT:
        if not msg.HasField("input_request"):
            raise InvalidArgument(
                "is required when state is AWAITING_INPUT", field=f"{field}.input_request"
            )
        input_request = input_request_from_proto(msg.input_request, f"{field}.input_request")
    reverts_run_id = ""
    if msg.reverts_run_id:
        reverts_run_id = _uuid(msg.reverts_run_id, f"{field}.reverts_run_id")
    action_id: str | None = None
    if msg.requested_by_action_id:
        action_id = _uuid(msg.requested_by_action_id, f"{field}.requested_by_action_id")
    return NewRunUpdate(
        update_id=update_id,
        run_id=run_id,
        agent_id=agent_id,
        state=state,
        steps_done=int(msg.steps_done),
        steps_total=int(msg.steps_total),
        steps=tuple(steps[i] for i in sorted(steps)),
        started_at=_timestamp(msg, "started_at", f"{field}.started_at", now_s),
        finished_at=_timestamp(msg, "finished_at", f"{field}.finished_at", now_s),
        migration_id=checked_text(msg.migration_id, f"{field}.migration_id", MAX_MIGRATION_ID),
        migration_from=checked_text(msg.migration_from, f"{field}.migration_from", MAX_VERSION),
        migration_to=checked_text(msg.migration_to, f"{field}.migration_to", MAX_VERSION),
        error_message=checked_text(msg.error_message, f"{field}.error_message", MAX_RUN_ERROR),
        requested_by_action_id=action_id,
        occurred_at=_timestamp(msg, "occurred_at", f"{field}.occurred_at", now_s),
        input_request=input_request,
        spec_revision=int(msg.spec_revision),
        reverts_run_id=reverts_run_id,
    )


def _metadata(msg: agent_pb2.LogLine, field: str) -> dict[str, str]:
    meta = msg.metadata
    if len(meta) > MAX_METADATA_ENTRIES:
        raise InvalidArgument(
            f"has {len(meta)} entries, at most {MAX_METADATA_ENTRIES} allowed",
            field=f"{field}.metadata",
        )
    out: dict[str, str] = {}
    for key in sorted(meta):  # key iteration + lookup is ~3x faster than .items() on a map
        value = meta[key]
        if len(key) > MAX_METADATA_KEY or "\x00" in key:
            checked_text(key, f"{field}.metadata", MAX_METADATA_KEY)
        if len(value) > MAX_METADATA_VALUE or "\x00" in value:
            checked_text(value, f"{field}.metadata[{key!r}]", MAX_METADATA_VALUE)
        out[key] = value
    return out


class _LineValidator:
    """Validates the log lines of one request; caches what repeats across its lines (the run
    ids, the second-resolution part of the timestamps): log ingest is a hot path."""

    def __init__(self, now_s: int) -> None:
        self._now_s = now_s
        self._runs: dict[str, str] = {}
        self._seconds: dict[int, datetime] = {}

    def line(self, msg: agent_pb2.LogLine, index: int) -> NewLogLine:
        run_id = self._runs.get(msg.run_id)
        if run_id is None:
            if _UUID.match(msg.run_id) is None:
                raise InvalidArgument("must be a UUID", field=f"log_lines[{index}].run_id")
            run_id = self._runs[msg.run_id] = msg.run_id.lower()
        seq = msg.seq
        if not 1 <= seq <= MAX_SEQ:
            raise InvalidArgument("must be at least 1", field=f"log_lines[{index}].seq")
        level = _LEVELS.get(msg.level) or _LEVELS.get(msg.level.upper())
        if level is None:
            raise InvalidArgument(
                "must be DEBUG, INFO, WARNING or ERROR", field=f"log_lines[{index}].level"
            )
        if not msg.HasField("timestamp"):
            raise InvalidArgument("is required", field=f"log_lines[{index}].timestamp")
        stamp = msg.timestamp
        seconds, nanos = stamp.seconds, stamp.nanos
        base = self._seconds.get(seconds)
        if base is None or not 0 <= nanos < 1_000_000_000:
            checked = _timestamp(msg, "timestamp", f"log_lines[{index}].timestamp", self._now_s)
            assert checked is not None  # HasField was checked above
            base = self._seconds[seconds] = checked.replace(microsecond=0)
        timestamp = base.replace(microsecond=nanos // 1000) if nanos else base
        source = msg.source
        if not source or len(source) > MAX_LOG_SOURCE or "\x00" in source:
            if not source:
                raise InvalidArgument("is required", field=f"log_lines[{index}].source")
            checked_text(source, f"log_lines[{index}].source", MAX_LOG_SOURCE)
        message = msg.message
        if len(message) > MAX_LOG_MESSAGE or "\x00" in message:
            checked_text(message, f"log_lines[{index}].message", MAX_LOG_MESSAGE)
        return NewLogLine(
            run_id,
            int(seq),
            timestamp,
            level,
            source,
            message,
            _metadata(msg, f"log_lines[{index}]") if msg.metadata else {},
        )


def log_line_from_proto(msg: agent_pb2.LogLine, index: int, now_s: int) -> NewLogLine:
    """Validate one LogLine (``index`` names it in errors)."""
    return _LineValidator(now_s).line(msg, index)


def _per_checkin(count: int, limit: int, field: str) -> None:
    """Refuse more than ``limit`` items in the repeated ``field`` of one check-in."""
    if count > limit:
        what = field.replace("_", " ")
        raise InvalidArgument(
            f"{count} {what} in one check-in; the limit is {limit} "
            "(send the rest in the next check-in)",
            field=field,
        )


def runs_part_from_proto(
    request: agent_pb2.CheckInRequest, agent_id: str, config: ServerConfig, now_s: int
) -> RunsPart:
    """Validate the runs part of a CheckInRequest from the authenticated ``agent_id``."""
    _per_checkin(len(request.run_updates), config.max_run_updates_per_checkin, "run_updates")
    _per_checkin(len(request.log_lines), config.max_log_lines_per_checkin, "log_lines")
    count = len(request.acknowledged_action_ids)
    if count > MAX_ACKED_ACTIONS:
        raise InvalidArgument(
            f"{count} action ids; the limit is {MAX_ACKED_ACTIONS}",
            field="acknowledged_action_ids",
        )
    updates: dict[str, NewRunUpdate] = {}
    for index, msg in enumerate(request.run_updates):
        update = run_update_from_proto(msg, index, agent_id, now_s)
        updates.setdefault(update.update_id, update)
    lines: dict[tuple[str, int], NewLogLine] = {}
    log_acks: dict[str, list[int]] = {}
    validator = _LineValidator(now_s)
    for index, line_msg in enumerate(request.log_lines):
        line = validator.line(line_msg, index)
        key = (line.run_id, line.seq)
        if key not in lines:
            lines[key] = line
        acks = log_acks.get(line_msg.run_id)
        if acks is None:
            acks = log_acks[line_msg.run_id] = []
        acks.append(line.seq)
    acked: dict[str, None] = {}
    for index, action_id in enumerate(request.acknowledged_action_ids):
        acked[_uuid(action_id, f"acknowledged_action_ids[{index}]")] = None
    return RunsPart(
        updates=list(updates.values()),
        update_ack_ids=[msg.update_id for msg in request.run_updates],
        log_lines=list(lines.values()),
        log_acks=log_acks,
        acked_action_ids=list(acked),
    )


def timestamp_proto(value: datetime | None) -> Timestamp | None:
    """A datetime as a protobuf Timestamp (None stays None: the field is left unset)."""
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def action_nonce(action: PendingAction) -> bytes:
    """The action's 16-byte nonce. Actions queued before alembic 0003 have none stored: theirs
    is derived from the action id (deterministic, so every re-delivery carries the same one)."""
    if action.nonce:
        return bytes.fromhex(action.nonce)
    return hashlib.sha256(b"flagpost-action-nonce:" + action.action_id.encode()).digest()[:16]


def action_to_proto(action: PendingAction, signer: ActionSigner) -> agent_pb2.Action:
    """A pending action as the agent receives it: an ActionBody (id, agent, kind, params,
    issued/expiry times, nonce) serialized once, and the server's Ed25519 signature over exactly
    those bytes. ``action.params`` are what is signed: a caller may pass a copy with params
    added at delivery (``dataclasses.replace``) that are never stored."""
    body = agent_pb2.ActionBody(
        action_id=action.action_id,
        agent_id=action.agent_id,
        kind=action.kind.value,
        params=action.params,
        issued_at=timestamp_proto(action.created_at),
        expires_at=timestamp_proto(action.expires_at),
        nonce=action_nonce(action),
    )
    raw = body.SerializeToString(deterministic=True)
    return agent_pb2.Action(action_id=action.action_id, body=raw, signature=signer.sign(raw))


def log_acks_to_proto(acks: dict[str, list[int]]) -> list[agent_pb2.LogAck]:
    """``acknowledged_log_lines`` of the response: every (run_id, seq) sent, grouped by run."""
    return [agent_pb2.LogAck(run_id=run_id, seqs=seqs) for run_id, seqs in acks.items()]
