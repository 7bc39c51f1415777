"""The SQL of retention: each function deletes at most ``limit`` rows in the caller's
transaction and returns how many it deleted, so the service can prune in bounded batches (one
short transaction each: a busy server's writer never waits long for a lock).

Selections use the existing indexes: events by ``occurred_at`` and by ``(agent_id, id)``; runs
by ``updated_at`` and ``(agent_id, created_at, id)``; logs by ``run_id``. A run in
AWAITING_INPUT is never selected.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.domain import RunState
from server.storage.models import (
    Agent,
    MigrationRun,
    PendingActionRow,
    RunStepRow,
    TaskLog,
    UpdateEvent,
)

_KEEP = RunState.AWAITING_INPUT.value


async def agent_ids(session: AsyncSession) -> list[str]:
    """Every agent id (the per-agent caps are checked for many agents per query)."""
    return list((await session.execute(select(Agent.id).order_by(Agent.id))).scalars())


async def agents_over_event_cap(
    session: AsyncSession, agent_ids: Sequence[str], cap: int
) -> list[str]:
    """Those of ``agent_ids`` holding more than ``cap`` events, in one query (each agent's
    check walks at most ``cap`` + 1 entries of ``(agent_id, id)``)."""
    beyond = (
        select(UpdateEvent.id)
        .where(UpdateEvent.agent_id == Agent.id)
        .order_by(UpdateEvent.id.desc())
        .offset(cap)
        .limit(1)
    )
    query = select(Agent.id).where(Agent.id.in_(list(agent_ids)), beyond.exists())
    return list((await session.execute(query.order_by(Agent.id))).scalars())


async def agents_over_run_cap(
    session: AsyncSession, agent_ids: Sequence[str], cap: int
) -> list[str]:
    """Those of ``agent_ids`` holding more than ``cap`` runs, in one query."""
    beyond = (
        select(MigrationRun.id)
        .where(MigrationRun.agent_id == Agent.id)
        .order_by(MigrationRun.created_at.desc(), MigrationRun.id.desc())
        .offset(cap)
        .limit(1)
    )
    query = select(Agent.id).where(Agent.id.in_(list(agent_ids)), beyond.exists())
    return list((await session.execute(query.order_by(Agent.id))).scalars())


async def delete_events_before(session: AsyncSession, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` of the oldest events with ``occurred_at < cutoff``."""
    ids = (
        select(UpdateEvent.id)
        .where(UpdateEvent.occurred_at < cutoff)
        .order_by(UpdateEvent.occurred_at)
        .limit(limit)
    )
    doomed = list((await session.execute(ids)).scalars())
    if doomed:
        await session.execute(delete(UpdateEvent).where(UpdateEvent.id.in_(doomed)))
    return len(doomed)


async def delete_events_over_cap(session: AsyncSession, agent_id: str, cap: int, limit: int) -> int:
    """Delete up to ``limit`` of ``agent_id``'s oldest events beyond its newest ``cap``."""
    newest_dropped = (
        await session.execute(
            select(UpdateEvent.id)
            .where(UpdateEvent.agent_id == agent_id)
            .order_by(UpdateEvent.id.desc())
            .offset(cap)
            .limit(1)
        )
    ).scalar()
    if newest_dropped is None:
        return 0
    doomed = list(
        (
            await session.execute(
                select(UpdateEvent.id)
                .where(UpdateEvent.agent_id == agent_id, UpdateEvent.id <= newest_dropped)
                .order_by(UpdateEvent.id)
                .limit(limit)
            )
        ).scalars()
    )
    if doomed:
        await session.execute(delete(UpdateEvent).where(UpdateEvent.id.in_(doomed)))
    return len(doomed)


async def runs_before(session: AsyncSession, cutoff: datetime, limit: int) -> list[str]:
    """Up to ``limit`` runs last updated before ``cutoff`` (never one awaiting input)."""
    result = await session.execute(
        select(MigrationRun.id)
        .where(MigrationRun.updated_at < cutoff, MigrationRun.state != _KEEP)
        .order_by(MigrationRun.updated_at)
        .limit(limit)
    )
    return list(result.scalars())


async def runs_over_cap(session: AsyncSession, agent_id: str, cap: int, limit: int) -> list[str]:
    """Up to ``limit`` of ``agent_id``'s runs beyond its newest ``cap`` (never one awaiting
    input; those still count towards the cap)."""
    result = await session.execute(
        select(MigrationRun.id, MigrationRun.state)
        .where(MigrationRun.agent_id == agent_id)
        .order_by(MigrationRun.created_at.desc(), MigrationRun.id.desc())
        .offset(cap)
        .limit(limit)
    )
    return [run_id for run_id, state in result if state != _KEEP]


async def delete_run_logs(session: AsyncSession, run_ids: Sequence[str], limit: int) -> int:
    """Delete up to ``limit`` log lines of ``run_ids`` (skipping a run now awaiting input)."""
    doomed = list(
        (
            await session.execute(
                select(TaskLog.id)
                .where(
                    TaskLog.run_id.in_(
                        select(MigrationRun.id).where(
                            MigrationRun.id.in_(list(run_ids)), MigrationRun.state != _KEEP
                        )
                    )
                )
                .limit(limit)
            )
        ).scalars()
    )
    if doomed:
        await session.execute(delete(TaskLog).where(TaskLog.id.in_(doomed)))
    return len(doomed)


async def delete_runs(session: AsyncSession, run_ids: Sequence[str]) -> int:
    """Delete ``run_ids`` (not awaiting input: re-checked here) with their steps; their log
    lines must be gone already (:func:`delete_run_logs`). Returns runs deleted."""
    ids = list(run_ids)
    await session.execute(
        delete(RunStepRow).where(
            RunStepRow.run_id.in_(
                select(MigrationRun.id).where(MigrationRun.id.in_(ids), MigrationRun.state != _KEEP)
            )
        )
    )
    result = await session.execute(
        delete(MigrationRun).where(MigrationRun.id.in_(ids), MigrationRun.state != _KEEP)
    )
    return max(0, result.rowcount or 0)  # type: ignore[attr-defined]


async def delete_old_actions(session: AsyncSession, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` actions acknowledged or expired before ``cutoff``."""
    doomed = list(
        (
            await session.execute(
                select(PendingActionRow.action_id)
                .where(
                    or_(
                        PendingActionRow.acknowledged_at < cutoff,
                        PendingActionRow.expires_at < cutoff,
                    )
                )
                .limit(limit)
            )
        ).scalars()
    )
    if doomed:
        await session.execute(
            delete(PendingActionRow).where(PendingActionRow.action_id.in_(doomed))
        )
    return len(doomed)
