"""The runs part of the ingest transaction: run updates, log lines, action acks and delivery.

Everything here runs inside the ingest writer's transaction on a *synchronous* ``Connection``:
the SQLite writer thread calls it directly, the PostgreSQL store through
``AsyncConnection.run_sync`` (one greenlet hop for the whole part). So the SQL exists once.

Run updates are snapshots. For each run of the batch (rows locked ``FOR UPDATE`` on PostgreSQL,
so replicas sharing the database apply one run's updates one at a time):

- an update whose ``update_id`` is not newer than the stored ``last_update_id`` is ignored
  (a duplicate or an out-of-order older snapshot): acknowledged, nothing recorded;
- an update for a run of another agent is ignored and recorded as an agent notice event;
- an update whose state change is not allowed (``domain.run_transition_allowed``: terminal
  states are final, PENDING -> RUNNING -> ...) is ignored and recorded as an agent notice event
  (category ``agent``, status ``warning``) naming the run and the refused transition, with a
  deterministic event id (uuid5 of the update id), so a resent update is not recorded twice.
  Ignored updates are still acknowledged: resending them could never succeed.

A run the server has not seen starts in whatever state its first update says (earlier updates
may have been set aside on the agent). Log lines that arrive before any update of their run
create the run row (PENDING, ``last_update_id`` NULL, which still accepts any first state).
Lines for another agent's run are dropped (and acknowledged).

Acknowledged actions are marked first; an acknowledged ``provide_input`` action's ciphertext is
deleted (``run_inputs``). Its run is locked and read with the batch's runs, and after the run
updates are applied, a run that still waits for the same request had those answers refused by
the agent (it acknowledges refused actions too): its ``input_answered_by/at`` are cleared so the
prompt opens again (unless newer answers wait for delivery).

Log lines are inserted with ``ON CONFLICT (run_id, seq) DO NOTHING`` as multi-row statements
(SQLite) or one ``unnest`` statement (PostgreSQL). If that fails, the lines are inserted one by
one, skipping (and counting) only the rows that fail, so one bad row cannot lose the rest: on
PostgreSQL inside a SAVEPOINT (a failed statement aborts the transaction there); SQLite rolls back
only the failed statement.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import chain
from typing import Any

from sqlalchemy import Table, bindparam, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from server.domain import (
    TERMINAL_RUN_STATES,
    ActionKind,
    Category,
    EventStatus,
    EventType,
    NewEvent,
    NewLogLine,
    NewRunUpdate,
    PendingAction,
    RunState,
    RunStep,
    Severity,
    SpecVersionReport,
    run_transition_allowed,
)
from server.storage.actions import action_from_row
from server.storage.bulk import BulkInsert
from server.storage.events import json_text, sqlite_timestamp
from server.storage.models import MigrationRun, PendingActionRow, RunInput, RunStepRow
from server.storage.notify import RUNS_CHANNEL  # payload: a run id ('' = look at every run)

log = logging.getLogger(__name__)

NOTIFY_MAX_RUNS = 100
NOTICE_NAMESPACE = uuid.UUID("5d0c6f1e-9a59-4c55-9f0e-2f1f8a7c4b10")
_IN_CHUNK = 500
_ACTIONS: Table = PendingActionRow.__table__  # type: ignore[assignment]
_RUNS: Table = MigrationRun.__table__  # type: ignore[assignment]
_INPUTS: Table = RunInput.__table__  # type: ignore[assignment]

Row = tuple[Any, ...]
LOG_COLUMNS = ("run_id", "seq", "timestamp", "level", "source", "message", "metadata_json")
_LOG_PG_TYPES = ("varchar", "int8", "timestamptz", "varchar", "varchar", "text", "jsonb")


def encode_log_lines(lines: Sequence[NewLogLine], dialect: str) -> list[Row]:
    """Driver-ready rows (``LOG_COLUMNS`` order) for :func:`insert_log_rows` on ``dialect``.
    (Hot path: tuples unpacked, one C call per timestamp; a UTC datetime's isoformat without its
    "+00:00" is exactly SQLAlchemy's SQLite form.)"""
    if dialect == "sqlite":
        return [
            (
                run_id,
                seq,
                stamp.isoformat(" ", "microseconds")[:26]
                if stamp.tzinfo is UTC
                else sqlite_timestamp(stamp),
                level,
                source,
                message,
                json_text(metadata) if metadata else "{}",
            )
            for run_id, seq, stamp, level, source, message, metadata in lines
        ]
    return [
        (
            run_id,
            seq,
            stamp,
            level,
            source,
            message,
            json_text(metadata) if metadata else "{}",
        )
        for run_id, seq, stamp, level, source, message, metadata in lines
    ]


_LOGS = BulkInsert("task_logs", LOG_COLUMNS, _LOG_PG_TYPES, conflict="run_id, seq")
_PG_NOTIFY_RUNS = "SELECT pg_notify($1, x) FROM unnest($2::varchar[]) AS x"


def _insert_logs_once(conn: Connection, rows: Sequence[Row]) -> int:
    if conn.dialect.name == "postgresql":
        columns = tuple(list(column) for column in zip(*rows, strict=True))
        return max(0, conn.exec_driver_sql(_LOGS.postgresql, columns).rowcount)
    stored = 0
    for sql, params in _LOGS.sqlite_statements(rows):
        stored += max(0, conn.exec_driver_sql(sql, params).rowcount)
    return stored


def insert_log_rows(conn: Connection, rows: Sequence[Row]) -> tuple[int, int]:
    """Insert encoded log ``rows`` (duplicates by (run_id, seq) skipped) in the connection's
    transaction. Returns ``(stored, failed)``: on a failure of the batch statement every row is
    retried alone and only the rows that fail again are dropped (and counted)."""
    if not rows:
        return 0, 0
    postgresql = conn.dialect.name == "postgresql"
    try:
        if postgresql:
            with conn.begin_nested():
                return _insert_logs_once(conn, rows), 0
        return _insert_logs_once(conn, rows), 0
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise
        log.warning("log batch of %d lines failed (%s); retrying row by row", len(rows), exc.orig)
    stored = failed = 0
    for row in rows:
        try:
            if postgresql:
                with conn.begin_nested():
                    stored += _insert_logs_once(conn, [row])
            else:
                stored += _insert_logs_once(conn, [row])
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            failed += 1
            log.warning("log line run=%s seq=%s dropped: %s", row[0], row[1], exc.orig)
    return stored, failed


@dataclass(slots=True)
class RunWork:
    """The runs part of one check-in."""

    agent_id: str
    updates: Sequence[NewRunUpdate] = ()
    log_rows: Sequence[Row] = ()  # encoded, unique by (run_id, seq)
    log_run_ids: frozenset[str] = frozenset()
    acked_action_ids: Sequence[str] = ()
    # facts.specs when the check-in carried facts (``server.storage.spec_versions``)
    spec_versions: Sequence[SpecVersionReport] | None = None


@dataclass(slots=True)
class RunBatchResult:
    """What the runs part of one transaction did."""

    changed_run_ids: set[str] = field(default_factory=set)
    actions: dict[str, list[PendingAction]] = field(default_factory=dict)  # by agent id
    notices: list[NewEvent] = field(default_factory=list)
    log_lines_stored: int = 0
    log_lines_dropped: int = 0  # another agent's run, or a row that failed alone
    updates_applied: int = 0
    updates_ignored: int = 0


@dataclass(slots=True)
class _Run:
    agent_id: str
    values: dict[str, Any]
    dirty: bool = False


_RUN_COLUMNS = (
    MigrationRun.id,
    MigrationRun.agent_id,
    MigrationRun.state,
    MigrationRun.last_update_id,
    MigrationRun.requested_by,
    MigrationRun.requested_action_id,
    MigrationRun.cancel_requested_by,
    MigrationRun.cancelled_by,
    MigrationRun.input_request,
    MigrationRun.input_requested_at,
)
_UPDATABLE = (
    "state",
    "steps_done",
    "steps_total",
    "migration_id",
    "migration_from",
    "migration_to",
    "error_message",
    "started_at",
    "finished_at",
    "updated_at",
    "last_update_id",
    "requested_by",
    "requested_action_id",
    "cancelled_by",
    "input_request",
    "input_requested_at",
    "spec_revision",
    "reverts_run_id",
)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


def _dialect_insert(conn: Connection) -> Any:
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


@dataclass(frozen=True, slots=True)
class _AckedInput:
    """A ``provide_input`` action acknowledged by this batch (for the first time)."""

    agent_id: str
    run_id: str
    request_id: str


def _ack_actions(conn: Connection, works: Sequence[RunWork], now: datetime) -> list[_AckedInput]:
    """Mark the acknowledged actions; returns the ``provide_input`` ones among them."""
    table = _ACTIONS
    acked: list[_AckedInput] = []
    for work in works:
        if not work.acked_action_ids:
            continue
        for chunk in _chunks(list(dict.fromkeys(work.acked_action_ids))):
            result = conn.execute(
                update(table)
                .where(
                    table.c.action_id.in_(chunk),
                    table.c.agent_id == work.agent_id,
                    table.c.acknowledged_at.is_(None),
                )
                .values(acknowledged_at=now)
                .returning(table.c.kind, table.c.params)
            )
            for kind, params in result:
                if kind == ActionKind.PROVIDE_INPUT.value:
                    params = params or {}
                    acked.append(
                        _AckedInput(
                            work.agent_id,
                            str(params.get("run_id", "")),
                            str(params.get("request_id", "")),
                        )
                    )
            # An acknowledged provide_input action was received: its answers' ciphertext goes
            # in the same transaction (the agent keeps them in memory only).
            conn.execute(
                delete(_INPUTS).where(
                    _INPUTS.c.action_id.in_(
                        select(table.c.action_id).where(
                            table.c.action_id.in_(chunk),
                            table.c.agent_id == work.agent_id,
                            table.c.kind == ActionKind.PROVIDE_INPUT.value,
                        )
                    )
                )
            )
    return acked


def _ensure_runs(
    conn: Connection, works: Sequence[RunWork], now: datetime, also: Collection[str] = ()
) -> dict[str, _Run]:
    """Create missing run rows (placeholders), then lock and read every run of the batch and
    the existing runs among ``also`` (the runs of acknowledged ``provide_input`` actions)."""
    owners: dict[str, str] = {}
    for work in works:
        for run_id in chain((u.run_id for u in work.updates), work.log_run_ids):
            owners.setdefault(run_id, work.agent_id)
    if not owners and not also:
        return {}
    insert = _dialect_insert(conn)
    placeholders = [
        {
            "id": run_id,
            "agent_id": agent_id,
            "migration_id": "",
            "state": RunState.PENDING.value,
            "steps_done": 0,
            "steps_total": 0,
            "migration_from": "",
            "migration_to": "",
            "error_message": "",
            "created_at": now,
            "updated_at": now,
        }
        for run_id, agent_id in owners.items()
    ]
    if placeholders:
        conn.execute(
            insert(MigrationRun).on_conflict_do_nothing(index_elements=["id"]), placeholders
        )
    runs: dict[str, _Run] = {}
    ids = sorted(owners.keys() | set(also))  # a fixed lock order: replicas never deadlock
    for chunk in _chunks(ids):
        query = select(*_RUN_COLUMNS).where(MigrationRun.id.in_(chunk)).order_by(MigrationRun.id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        for row in conn.execute(query):
            runs[row.id] = _Run(
                agent_id=row.agent_id,
                values={
                    "state": RunState(row.state),
                    "last_update_id": row.last_update_id,
                    "requested_by": row.requested_by,
                    "requested_action_id": row.requested_action_id,
                    "cancel_requested_by": row.cancel_requested_by,
                    "cancelled_by": row.cancelled_by,
                    "input_request": row.input_request,
                    "input_requested_at": row.input_requested_at,
                },
            )
    return runs


def _requesters(conn: Connection, works: Sequence[RunWork]) -> dict[tuple[str, str], str]:
    """(agent_id, action_id) -> requested_by, for the actions run updates name."""
    wanted = {
        (w.agent_id, u.requested_by_action_id)
        for w in works
        for u in w.updates
        if u.requested_by_action_id
    }
    if not wanted:
        return {}
    table = _ACTIONS
    found: dict[tuple[str, str], str] = {}
    ids = sorted({action_id for _, action_id in wanted})
    for chunk in _chunks(ids):
        result = conn.execute(
            select(table.c.agent_id, table.c.action_id, table.c.requested_by).where(
                table.c.action_id.in_(chunk)
            )
        )
        for agent_id, action_id, requested_by in result:
            if (agent_id, action_id) in wanted:
                found[(agent_id, action_id)] = requested_by
    return found


def _notice(
    agent_id: str, update: NewRunUpdate, reason: str, own_run: bool, now: datetime
) -> NewEvent:
    return NewEvent(
        event_id=str(uuid.uuid5(NOTICE_NAMESPACE, f"run-update:{update.update_id}")),
        agent_id=agent_id,
        category=Category.AGENT,
        event_type=EventType.AGENT_NOTICE.value,
        status=EventStatus.WARNING,
        severity=Severity.WARNING,
        message=f"run update ignored: {reason}"[:1024],
        error_message="",
        error_detail={"run_update_id": update.update_id, "run_id": update.run_id},
        migration_from="",
        migration_to="",
        run_id=update.run_id if own_run else None,
        system_info={},
        occurred_at=update.occurred_at or update.finished_at or update.started_at or now,
    )


def _apply_updates(
    works: Sequence[RunWork],
    runs: dict[str, _Run],
    requesters: dict[tuple[str, str], str],
    now: datetime,
    result: RunBatchResult,
) -> dict[tuple[str, int], RunStep]:
    steps: dict[tuple[str, int], RunStep] = {}
    for work in works:
        for u in sorted(work.updates, key=lambda item: item.update_id):
            run = runs[u.run_id]
            if run.agent_id != work.agent_id:
                result.updates_ignored += 1
                result.notices.append(
                    _notice(
                        work.agent_id, u, f"run {u.run_id} belongs to another agent", False, now
                    )
                )
                continue
            values = run.values
            last = values["last_update_id"]
            if last is not None and u.update_id <= last:
                result.updates_ignored += 1  # a duplicate or an older snapshot
                continue
            old: RunState | None = values["state"] if last is not None else None
            if not run_transition_allowed(old, u.state):
                result.updates_ignored += 1
                result.notices.append(
                    _notice(
                        work.agent_id,
                        u,
                        f"run {u.run_id}: state change {old} -> {u.state} is not allowed",
                        True,
                        now,
                    )
                )
                continue
            values.update(
                state=u.state,
                steps_done=u.steps_done,
                steps_total=u.steps_total,
                migration_id=u.migration_id,
                migration_from=u.migration_from,
                migration_to=u.migration_to,
                error_message=u.error_message,
                started_at=u.started_at,
                finished_at=u.finished_at,
                updated_at=now,
                last_update_id=u.update_id,
                spec_revision=u.spec_revision,
                reverts_run_id=u.reverts_run_id,
            )
            action_id = u.requested_by_action_id
            if action_id and values.get("requested_action_id") is None:
                values["requested_action_id"] = action_id
                values["requested_by"] = requesters.get((work.agent_id, action_id))
            if u.state == RunState.CANCELLED:
                values["cancelled_by"] = values.get("cancel_requested_by") or "agent"
            if u.input_request is not None:
                # A new ask (a new request_id) restarts the clock; a resent snapshot of the same
                # ask keeps it, so answers already sent stay "sent". The request stays on the
                # run after it moves on (the record of what was asked; never an answer).
                stored = values.get("input_request") or {}
                if stored.get("request_id") != u.input_request.request_id:
                    values["input_requested_at"] = now
                values["input_request"] = u.input_request.to_json()
            run.dirty = True
            result.updates_applied += 1
            result.changed_run_ids.add(u.run_id)
            for step in u.steps:
                steps[(u.run_id, step.index)] = step
    return steps


def _write_runs(
    conn: Connection, runs: dict[str, _Run], steps: dict[tuple[str, int], RunStep]
) -> None:
    dirty = [(run_id, run) for run_id, run in runs.items() if run.dirty]
    if dirty:
        table = _RUNS
        params = []
        for run_id, run in dirty:
            row: dict[str, Any] = {"b_id": run_id}
            for name in _UPDATABLE:
                value = run.values.get(name)
                row[f"b_{name}"] = value.value if isinstance(value, RunState) else value
            params.append(row)
        statement = (
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values({name: bindparam(f"b_{name}") for name in _UPDATABLE})
        )
        # requested_by / requested_action_id / cancelled_by are only ever filled in, never
        # cleared: the values above carry the stored ones forward (read in _ensure_runs).
        conn.execute(statement, params)
        ended = [run_id for run_id, run in dirty if run.values["state"] in TERMINAL_RUN_STATES]
        for chunk in _chunks(ended):  # answers never delivered to a run that ended go too
            conn.execute(delete(_INPUTS).where(_INPUTS.c.run_id.in_(chunk)))
    if steps:
        insert = _dialect_insert(conn)
        statement = insert(RunStepRow)
        statement = statement.on_conflict_do_update(
            index_elements=["run_id", "idx"],
            set_={
                "name": statement.excluded.name,
                "status": statement.excluded.status,
                "error": statement.excluded.error,
                "duration_ms": statement.excluded.duration_ms,
            },
        )
        conn.execute(
            statement,
            [
                {
                    "run_id": run_id,
                    "idx": index,
                    "name": step.name,
                    "status": step.status,
                    "error": step.error,
                    "duration_ms": step.duration_ms,
                }
                for (run_id, index), step in sorted(steps.items())
            ],
        )


def _reopen_refused_inputs(
    conn: Connection, acked: Sequence[_AckedInput], runs: dict[str, _Run]
) -> set[str]:
    """Runs whose ``provide_input`` action was acknowledged but which, with this batch's run
    updates applied, still wait for the same request: the agent refused those answers (expired
    by its clock, a bad signature, ...). Their answered mark is cleared, so the prompt opens
    again, unless newer answers are already waiting for delivery. Returns those run ids."""
    candidates: set[str] = set()
    for item in acked:
        run = runs.get(item.run_id)
        if run is None or run.agent_id != item.agent_id:
            continue
        asked = run.values.get("input_request") or {}
        if (
            run.values["state"] == RunState.AWAITING_INPUT
            and asked.get("request_id") == item.request_id
        ):
            candidates.add(item.run_id)
    if not candidates:
        return set()
    ids = sorted(candidates)
    pending = set(conn.execute(select(_INPUTS.c.run_id).where(_INPUTS.c.run_id.in_(ids))).scalars())
    reopened = [run_id for run_id in ids if run_id not in pending]
    if reopened:
        conn.execute(
            update(_RUNS)
            .where(_RUNS.c.id.in_(reopened))
            .values(input_answered_by=None, input_answered_at=None)
        )
    return set(reopened)


def _insert_logs(
    conn: Connection, works: Sequence[RunWork], runs: dict[str, _Run]
) -> tuple[int, int, set[str]]:
    rows: list[Row] = []
    dropped = 0
    touched: set[str] = set()
    for work in works:
        if not work.log_rows:
            continue
        foreign = {r for r in work.log_run_ids if runs[r].agent_id != work.agent_id}
        if foreign:
            kept = [row for row in work.log_rows if row[0] not in foreign]
            dropped += len(work.log_rows) - len(kept)
            log.warning("agent %s sent log lines for runs of another agent; dropped", work.agent_id)
            rows.extend(kept)
            touched.update(work.log_run_ids - foreign)
        else:
            rows.extend(work.log_rows)
            touched.update(work.log_run_ids)
    stored, failed = insert_log_rows(conn, rows)
    return stored, dropped + failed, touched if stored else set()


_PG_OPEN_ACTIONS = (
    "SELECT DISTINCT agent_id FROM pending_actions WHERE agent_id = ANY($1::varchar[]) "
    "AND acknowledged_at IS NULL AND expires_at > $2"
)


def _agents_with_actions(conn: Connection, agent_ids: list[str], now: datetime) -> list[str]:
    """The agents (of ``agent_ids``) with open actions: one plain indexed query per batch (the
    common answer is "none", and a Core statement costs several times more to build and run)."""
    if conn.dialect.name == "postgresql":
        result = conn.exec_driver_sql(_PG_OPEN_ACTIONS, (agent_ids, now))
        return [str(row[0]) for row in result]
    found: list[str] = []
    stamp = sqlite_timestamp(now)
    for chunk in _chunks(agent_ids):
        sql = (
            "SELECT DISTINCT agent_id FROM pending_actions WHERE agent_id IN ("  # noqa: S608
            + ",".join("?" * len(chunk))
            + ") AND acknowledged_at IS NULL AND expires_at > ?"
        )
        found.extend(str(row[0]) for row in conn.exec_driver_sql(sql, (*chunk, stamp)))
    return found


def deliver_actions(
    conn: Connection, agent_ids: Sequence[str], now: datetime
) -> dict[str, list[PendingAction]]:
    """The open actions of ``agent_ids`` (by agent, oldest first), marked delivered."""
    table = _ACTIONS
    found: dict[str, list[PendingAction]] = {}
    undelivered: list[str] = []
    with_actions = _agents_with_actions(conn, sorted(set(agent_ids)), now)
    for chunk in _chunks(sorted(with_actions)):
        result = conn.execute(
            select(table)
            .where(
                table.c.agent_id.in_(chunk),
                table.c.acknowledged_at.is_(None),
                table.c.expires_at > now,
            )
            .order_by(table.c.created_at, table.c.action_id)
        )
        for row in result:
            # acknowledged_at is NULL (the query's condition); delivered from now on
            action = action_from_row(row)
            found.setdefault(row.agent_id, []).append(
                replace(action, delivered_at=row.delivered_at or now)
            )
            if row.delivered_at is None:
                undelivered.append(row.action_id)
    # Marked delivered only if still deliverable: on PostgreSQL another transaction (a rollout
    # withdrawing its untaken actions, server/storage/rollouts.py) may have changed the row since
    # the SELECT; an action it withdrew is not sent.
    taken: set[str] = set()
    for chunk in _chunks(undelivered):
        marked = conn.execute(
            update(table)
            .where(
                table.c.action_id.in_(chunk),
                table.c.delivered_at.is_(None),
                table.c.expires_at > now,
            )
            .values(delivered_at=now)
            .returning(table.c.action_id)
        )
        taken.update(str(action_id) for action_id in marked.scalars())
    if len(taken) < len(undelivered):
        lost = set(undelivered) - taken
        found = {
            agent_id: kept
            for agent_id, actions in found.items()
            if (kept := [a for a in actions if a.action_id not in lost])
        }
    return found


def _notify(conn: Connection, run_ids: set[str]) -> None:
    if conn.dialect.name != "postgresql" or not run_ids:
        return
    payloads = sorted(run_ids) if len(run_ids) <= NOTIFY_MAX_RUNS else [""]
    conn.exec_driver_sql(_PG_NOTIFY_RUNS, (RUNS_CHANNEL, payloads))


def apply_run_batch(conn: Connection, works: Sequence[RunWork], now: datetime) -> RunBatchResult:
    """Apply the runs part of a batch of check-ins in the connection's transaction (see the
    module docstring): acknowledge actions, apply run updates, store log lines, pick the actions
    to deliver (marking them delivered) and, on PostgreSQL, queue the ``flagpost_runs``
    notifications (delivered at COMMIT)."""
    result = RunBatchResult()
    if not works:
        return result
    acked_inputs = _ack_actions(conn, works, now)
    runs = _ensure_runs(conn, works, now, {item.run_id for item in acked_inputs})
    requesters = _requesters(conn, works)
    steps = _apply_updates(works, runs, requesters, now, result)
    _write_runs(conn, runs, steps)
    # After the run updates of the same check-ins: an agent that accepted the answers reports
    # its run RUNNING (or a new request) in the check-in that acknowledges them.
    result.changed_run_ids |= _reopen_refused_inputs(conn, acked_inputs, runs)
    stored, dropped, touched = _insert_logs(conn, works, runs)
    result.log_lines_stored = stored
    result.log_lines_dropped = dropped
    result.changed_run_ids |= touched
    result.actions = deliver_actions(conn, [w.agent_id for w in works], now)
    _notify(conn, result.changed_run_ids)
    return result
