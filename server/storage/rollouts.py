"""SQL of rollouts (``rollouts``, ``rollout_hosts``, ``rollout_transitions``): what
``server.services.rollouts`` and its scheduler read and write. Domain dataclasses out.

The scheduler finds a started host's outcome through its action: the run the agent reported
for it (``migration_runs.requested_action_id``, indexed by alembic 0009) or, when the host was
already at the target or could not be planned, the detection event answering it
(``update_events.action_id``, partial index of alembic 0007).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from server.domain import (
    EventType,
    RevertState,
    RolloutGates,
    RolloutHost,
    RolloutHostState,
    RolloutState,
    RolloutSummary,
    RolloutTransition,
    RunState,
)
from server.storage.actions import WITHDRAWN_EXPIRY
from server.storage.models import (
    MigrationRun,
    PendingActionRow,
    RolloutHostRow,
    RolloutRow,
    RolloutTransitionRow,
    UpdateEvent,
)

_CHUNK = 500


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _summary(row: RolloutRow) -> RolloutSummary:
    next_wave_at = None
    if (
        row.state == RolloutState.RUNNING.value
        and row.wave_started_at is None
        and row.wave_finished_at is not None
    ):
        next_wave_at = row.wave_finished_at + timedelta(seconds=row.soak_seconds)
    return RolloutSummary(
        id=row.id,
        spec_id=row.spec_id,
        spec_revision=row.spec_revision,
        selector=tuple(str(s) for s in row.selector),
        wave_labels=tuple(str(s) for s in row.wave_labels),
        wave_sizes=tuple(int(n) for n in row.wave_sizes),
        gates=RolloutGates(row.max_failure_rate, row.max_failures),
        soak_seconds=row.soak_seconds,
        wave_timeout_seconds=row.wave_timeout_seconds,
        state=RolloutState(row.state),
        current_wave=row.current_wave,
        wave_started_at=row.wave_started_at,
        hosts_total=row.hosts_total,
        hosts_done=row.hosts_done,
        created_at=row.created_at,
        created_by=row.created_by,
        updated_at=row.updated_at,
        reason=row.reason,
        next_wave_at=next_wave_at,
        override_wave=row.override_wave,
        revert_wave=row.revert_wave,
    )


@dataclass(frozen=True, slots=True)
class NewHost:
    """A host to add to a new rollout."""

    agent_id: str
    hostname: str
    wave: int
    rank: str


async def insert_rollout(session: AsyncSession, values: dict[str, Any]) -> None:
    """Store a new rollout row (every column of ``RolloutRow`` in ``values``)."""
    await session.execute(insert(RolloutRow).values(**values))


async def insert_hosts(session: AsyncSession, rollout_id: str, hosts: Sequence[NewHost]) -> None:
    """Store the rollout's selected hosts, every one WAITING."""
    rows = [
        {
            "rollout_id": rollout_id,
            "agent_id": h.agent_id,
            "hostname": h.hostname,
            "wave": h.wave,
            "rank": h.rank,
            "state": RolloutHostState.WAITING.value,
            "action_id": "",
            "run_id": "",
            "error": "",
            "started_at": None,
            "finished_at": None,
            "revert_state": "",
            "revert_action_id": "",
            "revert_run_id": "",
        }
        for h in hosts
    ]
    for start in range(0, len(rows), _CHUNK):
        await session.execute(insert(RolloutHostRow), rows[start : start + _CHUNK])


async def insert_transition(
    session: AsyncSession,
    rollout_id: str,
    from_state: str,
    to_state: RolloutState,
    at: datetime,
    by: str,
    reason: str,
) -> None:
    """Record one state change."""
    await session.execute(
        insert(RolloutTransitionRow).values(
            rollout_id=rollout_id,
            from_state=from_state,
            to_state=to_state.value,
            at=at,
            by=by,
            reason=reason,
        )
    )


async def get_rollout(session: AsyncSession, rollout_id: str) -> RolloutSummary | None:
    """One rollout, or None."""
    row = await session.get(RolloutRow, rollout_id)
    return None if row is None else _summary(row)


async def lock_rollout(
    session: AsyncSession, rollout_id: str, *, skip_locked: bool = False
) -> RolloutSummary | None:
    """``get_rollout`` holding the row for a read-modify-write until the transaction ends:
    PostgreSQL ``FOR UPDATE`` (``SKIP LOCKED``: None at once when another transaction, e.g.
    another replica's scheduler, holds it); on SQLite a no-op write as the transaction's first
    statement, which takes the database's write lock. Call it first in its transaction."""
    query = select(RolloutRow).where(RolloutRow.id == rollout_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=skip_locked)
    else:
        await session.execute(
            update(RolloutRow)
            .where(RolloutRow.id == rollout_id)
            .values(updated_at=RolloutRow.updated_at)
        )
    row = (await session.execute(query.execution_options(populate_existing=True))).scalar()
    return None if row is None else _summary(row)


async def update_rollout(session: AsyncSession, rollout_id: str, **values: Any) -> None:
    """Set columns of one rollout."""
    await session.execute(update(RolloutRow).where(RolloutRow.id == rollout_id).values(**values))


async def list_rollouts(
    session: AsyncSession, *, limit: int = 100, states: Sequence[RolloutState] = ()
) -> list[RolloutSummary]:
    """Rollouts, newest first."""
    query = select(RolloutRow)
    if states:
        query = query.where(RolloutRow.state.in_([s.value for s in states]))
    query = query.order_by(RolloutRow.created_at.desc(), RolloutRow.id.desc()).limit(limit)
    return [_summary(row) for row in (await session.execute(query)).scalars()]


async def unsettled_ids(session: AsyncSession) -> list[str]:
    """Rollouts the scheduler still looks after, oldest first."""
    query = (
        select(RolloutRow.id)
        .where(RolloutRow.settled.is_(False))
        .order_by(RolloutRow.created_at, RolloutRow.id)
    )
    return list((await session.execute(query)).scalars())


async def transitions(session: AsyncSession, rollout_id: str) -> list[RolloutTransition]:
    """The rollout's state changes, oldest first."""
    query = (
        select(RolloutTransitionRow)
        .where(RolloutTransitionRow.rollout_id == rollout_id)
        .order_by(RolloutTransitionRow.id)
    )
    return [
        RolloutTransition(
            from_state=row.from_state,
            to_state=RolloutState(row.to_state),
            at=row.at,
            by=row.by,
            reason=row.reason,
        )
        for row in (await session.execute(query)).scalars()
    ]


async def host_counts(session: AsyncSession, rollout_id: str) -> dict[tuple[int, str], int]:
    """Hosts per ``(wave, state)``."""
    query = (
        select(RolloutHostRow.wave, RolloutHostRow.state, func.count())
        .where(RolloutHostRow.rollout_id == rollout_id)
        .group_by(RolloutHostRow.wave, RolloutHostRow.state)
    )
    return {(int(w), str(s)): int(n) for w, s, n in await session.execute(query)}


async def revert_counts(session: AsyncSession, rollout_id: str) -> dict[str, int]:
    """Hosts per revert state."""
    query = (
        select(RolloutHostRow.revert_state, func.count())
        .where(RolloutHostRow.rollout_id == rollout_id)
        .group_by(RolloutHostRow.revert_state)
    )
    return {str(s): int(n) for s, n in await session.execute(query)}


def _host(row: RolloutHostRow) -> RolloutHost:
    return RolloutHost(
        agent_id=row.agent_id,
        hostname=row.hostname,
        wave=row.wave,
        state=RolloutHostState(row.state),
        run_id=row.run_id,
        error=row.error,
        started_at=row.started_at,
        finished_at=row.finished_at,
        revert_state=RevertState(row.revert_state),
        revert_run_id=row.revert_run_id,
    )


async def list_hosts(
    session: AsyncSession,
    rollout_id: str,
    *,
    waves: Sequence[int] | None = None,
    states: Sequence[RolloutHostState] = (),
    limit: int | None = None,
) -> list[RolloutHost]:
    """Hosts of the rollout by wave, then rank (the order the waves take them)."""
    query = select(RolloutHostRow).where(RolloutHostRow.rollout_id == rollout_id)
    if waves is not None:
        query = query.where(RolloutHostRow.wave.in_(list(waves)))
    if states:
        query = query.where(RolloutHostRow.state.in_([s.value for s in states]))
    query = query.order_by(RolloutHostRow.wave, RolloutHostRow.rank)
    if limit is not None:
        query = query.limit(limit)
    return [_host(row) for row in (await session.execute(query)).scalars()]


async def hosts_to_start(session: AsyncSession, rollout_id: str, wave: int) -> list[RolloutHost]:
    """The wave's hosts not started yet."""
    return await list_hosts(session, rollout_id, waves=[wave], states=[RolloutHostState.WAITING])


@dataclass(frozen=True, slots=True)
class OpenHost:
    """A started host whose outcome is not known yet, with what its action and run say."""

    agent_id: str
    wave: int
    state: RolloutHostState
    action_id: str
    started_at: datetime | None
    delivered_at: datetime | None
    acknowledged_at: datetime | None
    run_id: str
    run_state: RunState | None
    run_error: str


async def open_hosts(session: AsyncSession, rollout_id: str) -> list[OpenHost]:
    """Every started host of the rollout still pending, running or blocked."""
    query = (
        select(
            RolloutHostRow.agent_id,
            RolloutHostRow.wave,
            RolloutHostRow.state,
            RolloutHostRow.action_id,
            RolloutHostRow.started_at,
            PendingActionRow.delivered_at,
            PendingActionRow.acknowledged_at,
            MigrationRun.id.label("run_id"),
            MigrationRun.state.label("run_state"),
            MigrationRun.error_message,
        )
        .select_from(RolloutHostRow)
        .outerjoin(PendingActionRow, PendingActionRow.action_id == RolloutHostRow.action_id)
        .outerjoin(MigrationRun, MigrationRun.requested_action_id == RolloutHostRow.action_id)
        .where(
            RolloutHostRow.rollout_id == rollout_id,
            RolloutHostRow.state.in_(
                [
                    RolloutHostState.PENDING.value,
                    RolloutHostState.RUNNING.value,
                    RolloutHostState.BLOCKED.value,
                ]
            ),
        )
    )
    return [
        OpenHost(
            agent_id=row.agent_id,
            wave=int(row.wave),
            state=RolloutHostState(row.state),
            action_id=row.action_id,
            started_at=row.started_at,
            delivered_at=row.delivered_at,
            acknowledged_at=row.acknowledged_at,
            run_id=row.run_id or "",
            run_state=RunState(row.run_state) if row.run_state else None,
            run_error=row.error_message or "",
        )
        for row in await session.execute(query)
    ]


async def detection_answers(
    session: AsyncSession, action_ids: Sequence[str]
) -> dict[str, tuple[str, str]]:
    """``{action_id: (status, error_message)}`` of the detection events answering
    ``action_ids`` (an agent answers a run action without a run when the host is already at the
    target, or when it cannot tell the host's version)."""
    found: dict[str, tuple[str, str]] = {}
    for chunk in _chunks(list(action_ids)):
        query = select(UpdateEvent.action_id, UpdateEvent.status, UpdateEvent.error_message).where(
            # literal, so the planner can use the partial index ix_update_events_action_id
            text("update_events.action_id != ''"),
            UpdateEvent.action_id.in_(list(chunk)),
            UpdateEvent.event_type == EventType.MIGRATION_DETECTION.value,
        )
        for action_id, status, error in await session.execute(query):
            found[str(action_id)] = (str(status), str(error or ""))
    return found


async def set_hosts(
    session: AsyncSession, rollout_id: str, changes: Sequence[dict[str, Any]]
) -> None:
    """Apply ``changes`` (each: ``agent_id`` and the same set of columns to set)."""
    if not changes:
        return
    columns = [key for key in changes[0] if key != "agent_id"]
    table = cast(Table, RolloutHostRow.__table__)
    statement = (
        update(table)
        .where(table.c.rollout_id == rollout_id, table.c.agent_id == bindparam("b_agent_id"))
        .values({column: bindparam(f"b_{column}") for column in columns})
    )
    params = [{f"b_{key}": value for key, value in change.items()} for change in changes]
    for start in range(0, len(params), _CHUNK):
        await session.execute(statement, params[start : start + _CHUNK])


async def withdraw_actions(session: AsyncSession, action_ids: Sequence[str]) -> set[str]:
    """Withdraw those of ``action_ids`` no agent took (never delivered, whether or not they
    expired already); returns them. Their expiry goes to :data:`WITHDRAWN_EXPIRY`, not ``now``:
    a check-in batch whose clock was read before this transaction committed (it waited for the
    database) must not find them deliverable either."""
    withdrawn: set[str] = set()
    for chunk in _chunks(list(action_ids)):
        result = await session.execute(
            update(PendingActionRow)
            .where(
                PendingActionRow.action_id.in_(list(chunk)),
                PendingActionRow.delivered_at.is_(None),
            )
            .values(expires_at=WITHDRAWN_EXPIRY)
            .returning(PendingActionRow.action_id)
            .execution_options(synchronize_session=False)
        )
        withdrawn.update(str(action_id) for action_id in result.scalars())
    return withdrawn


@dataclass(frozen=True, slots=True)
class RevertingHost:
    """A host whose revert was asked, with the revert run the agent reported (if yet)."""

    agent_id: str
    revert_action_id: str
    run_id: str
    run_state: RunState | None
    acknowledged_at: datetime | None


async def queued_reverts(session: AsyncSession, rollout_id: str, wave: int) -> list[RevertingHost]:
    """The wave's hosts whose revert is queued, with their revert runs."""
    query = (
        select(
            RolloutHostRow.agent_id,
            RolloutHostRow.revert_action_id,
            MigrationRun.id.label("run_id"),
            MigrationRun.state.label("run_state"),
            PendingActionRow.acknowledged_at,
        )
        .select_from(RolloutHostRow)
        .outerjoin(PendingActionRow, PendingActionRow.action_id == RolloutHostRow.revert_action_id)
        .outerjoin(
            MigrationRun, MigrationRun.requested_action_id == RolloutHostRow.revert_action_id
        )
        .where(
            RolloutHostRow.rollout_id == rollout_id,
            RolloutHostRow.wave == wave,
            RolloutHostRow.revert_state == RevertState.QUEUED.value,
        )
    )
    return [
        RevertingHost(
            agent_id=row.agent_id,
            revert_action_id=row.revert_action_id,
            run_id=row.run_id or "",
            run_state=RunState(row.run_state) if row.run_state else None,
            acknowledged_at=row.acknowledged_at,
        )
        for row in await session.execute(query)
    ]


async def action_ids(
    session: AsyncSession, rollout_id: str, agent_ids: Sequence[str]
) -> dict[str, str]:
    """``{agent_id: action_id}`` of those of ``agent_ids`` the rollout started."""
    found: dict[str, str] = {}
    for chunk in _chunks(list(agent_ids)):
        query = select(RolloutHostRow.agent_id, RolloutHostRow.action_id).where(
            RolloutHostRow.rollout_id == rollout_id,
            RolloutHostRow.agent_id.in_(list(chunk)),
            RolloutHostRow.action_id != "",
        )
        found.update({str(a): str(b) for a, b in await session.execute(query)})
    return found
