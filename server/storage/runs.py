"""Read queries of runs and their steps, and the run columns the web changes (cancel requests).

Plain domain dataclasses out, never ORM rows. Lists are keyset-paginated on
``(created_at, id)`` descending (index ``ix_migration_runs_created_at_id`` and its per-agent and
per-state siblings). The writes agents cause live in ``server.storage.run_ingest``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from server.domain import ACTIVE_RUN_STATES, InputRequest, RunState, RunStep, RunSummary
from server.storage.models import Agent, MigrationRun, RunStepRow

PAST_RUNS_FOR_ETA = 20

_SUMMARY_COLUMNS = (
    MigrationRun.id,
    MigrationRun.agent_id,
    func.coalesce(Agent.hostname, "").label("hostname"),
    MigrationRun.migration_id,
    MigrationRun.state,
    MigrationRun.steps_done,
    MigrationRun.steps_total,
    MigrationRun.migration_from,
    MigrationRun.migration_to,
    MigrationRun.error_message,
    MigrationRun.started_at,
    MigrationRun.finished_at,
    MigrationRun.created_at,
    MigrationRun.updated_at,
    MigrationRun.requested_by,
    MigrationRun.requested_action_id,
    MigrationRun.cancel_requested_by,
    MigrationRun.cancel_requested_at,
    MigrationRun.cancelled_by,
    MigrationRun.input_request,
    MigrationRun.input_requested_at,
    MigrationRun.input_answered_by,
    MigrationRun.input_answered_at,
    MigrationRun.spec_revision,
    MigrationRun.reverts_run_id,
)


def _summary(row: Any) -> RunSummary:
    return RunSummary(
        id=row.id,
        agent_id=row.agent_id,
        hostname=row.hostname,
        migration_id=row.migration_id,
        state=RunState(row.state),
        steps_done=int(row.steps_done),
        steps_total=int(row.steps_total),
        migration_from=row.migration_from,
        migration_to=row.migration_to,
        error_message=row.error_message,
        started_at=row.started_at,
        finished_at=row.finished_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        requested_by=row.requested_by,
        requested_action_id=row.requested_action_id,
        cancel_requested_by=row.cancel_requested_by,
        cancel_requested_at=row.cancel_requested_at,
        cancelled_by=row.cancelled_by,
        input_request=InputRequest.from_json(row.input_request) if row.input_request else None,
        input_requested_at=row.input_requested_at,
        input_answered_by=row.input_answered_by,
        input_answered_at=row.input_answered_at,
        spec_revision=int(row.spec_revision or 0),
        reverts_run_id=row.reverts_run_id or "",
    )


def _select_summaries() -> Any:
    return (
        select(*_SUMMARY_COLUMNS)
        .select_from(MigrationRun)
        .outerjoin(Agent, Agent.id == MigrationRun.agent_id)
    )


async def list_runs(
    session: AsyncSession,
    *,
    states: Sequence[RunState] = (),
    agent_id: str | None = None,
    before: tuple[datetime, str] | None = None,
    limit: int = 50,
) -> list[RunSummary]:
    """Up to ``limit`` runs, newest first (``created_at``, then ``id``, descending), older than
    the ``before`` keyset position when given."""
    query = _select_summaries()
    if states:
        query = query.where(MigrationRun.state.in_([s.value for s in states]))
    if agent_id is not None:
        query = query.where(MigrationRun.agent_id == agent_id)
    if before is not None:
        created, run_id = before
        query = query.where(
            or_(
                MigrationRun.created_at < created,
                and_(MigrationRun.created_at == created, MigrationRun.id < run_id),
            )
        )
    query = query.order_by(MigrationRun.created_at.desc(), MigrationRun.id.desc()).limit(limit)
    return [_summary(row) for row in await session.execute(query)]


async def get_run(session: AsyncSession, run_id: str) -> RunSummary | None:
    """One run, or None."""
    row = (await session.execute(_select_summaries().where(MigrationRun.id == run_id))).first()
    return None if row is None else _summary(row)


async def get_steps(session: AsyncSession, run_id: str) -> list[RunStep]:
    """The run's steps in plan order."""
    result = await session.execute(
        select(
            RunStepRow.idx,
            RunStepRow.name,
            RunStepRow.status,
            RunStepRow.error,
            RunStepRow.duration_ms,
        )
        .where(RunStepRow.run_id == run_id)
        .order_by(RunStepRow.idx)
    )
    return [
        RunStep(
            index=int(r.idx),
            name=r.name,
            status=r.status,
            error=r.error,
            duration_ms=int(r.duration_ms),
        )
        for r in result
    ]


async def past_step_durations(
    session: AsyncSession, migration_id: str, exclude_run_id: str
) -> dict[int, float]:
    """Average ``duration_ms`` of each succeeded step (by plan index) over the latest
    ``PAST_RUNS_FOR_ETA`` succeeded runs of ``migration_id`` (other than ``exclude_run_id``)."""
    recent = (
        select(MigrationRun.id)
        .where(
            MigrationRun.migration_id == migration_id,
            MigrationRun.state == RunState.SUCCEEDED.value,
            MigrationRun.id != exclude_run_id,
        )
        .order_by(MigrationRun.created_at.desc())
        .limit(PAST_RUNS_FOR_ETA)
        .subquery()
    )
    result = await session.execute(
        select(RunStepRow.idx, func.avg(RunStepRow.duration_ms))
        .where(RunStepRow.run_id.in_(select(recent.c.id)), RunStepRow.status == "succeeded")
        .group_by(RunStepRow.idx)
    )
    return {int(idx): float(avg) for idx, avg in result if avg is not None}


async def count_by_state(session: AsyncSession, agent_id: str | None = None) -> dict[str, int]:
    """Runs per state (of one agent when ``agent_id`` is given)."""
    query = select(MigrationRun.state, func.count()).group_by(MigrationRun.state)
    if agent_id is not None:
        query = query.where(MigrationRun.agent_id == agent_id)
    return {str(state): int(n) for state, n in await session.execute(query)}


async def latest_runs(session: AsyncSession, agent_ids: Sequence[str]) -> dict[str, RunSummary]:
    """The newest run of each of ``agent_ids`` (agents without runs are absent)."""
    found: dict[str, RunSummary] = {}
    for start in range(0, len(agent_ids), 500):
        chunk = list(agent_ids[start : start + 500])
        newest = (
            select(
                MigrationRun.id,
                func.row_number()
                .over(
                    partition_by=MigrationRun.agent_id,
                    order_by=(MigrationRun.created_at.desc(), MigrationRun.id.desc()),
                )
                .label("rank"),
            )
            .where(MigrationRun.agent_id.in_(chunk))
            .subquery()
        )
        query = _select_summaries().where(
            MigrationRun.id.in_(select(newest.c.id).where(newest.c.rank == 1))
        )
        for row in await session.execute(query):
            found[row.agent_id] = _summary(row)
    return found


async def mark_cancel_requested(session: AsyncSession, run_id: str, by: str, at: datetime) -> None:
    """Record who asked to cancel the run and when (first request wins)."""
    await session.execute(
        update(MigrationRun)
        .where(MigrationRun.id == run_id, MigrationRun.cancel_requested_at.is_(None))
        .values(cancel_requested_by=by, cancel_requested_at=at)
    )


async def lock_run(session: AsyncSession, run_id: str) -> RunSummary | None:
    """``get_run`` taking the row lock for a read-modify-write: PostgreSQL ``FOR UPDATE``; on
    SQLite a no-op write as the transaction's first statement, which takes the database's
    write lock (waiting up to the busy timeout), so two such transactions never interleave.
    Call it first in its transaction."""
    query = _select_summaries().where(MigrationRun.id == run_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(of=MigrationRun)
    else:
        await session.execute(
            update(MigrationRun)
            .where(MigrationRun.id == run_id)
            .values(updated_at=MigrationRun.updated_at)
        )
    row = (await session.execute(query)).first()
    return None if row is None else _summary(row)


async def run_for_action(session: AsyncSession, action_id: str) -> RunSummary | None:
    """The run an agent reported as asked for by ``action_id`` (newest first), or None."""
    query = (
        _select_summaries()
        .where(MigrationRun.requested_action_id == action_id)
        .order_by(MigrationRun.created_at.desc())
        .limit(1)
    )
    row = (await session.execute(query)).first()
    return None if row is None else _summary(row)


async def reverted_by(session: AsyncSession, run_id: str) -> RunSummary | None:
    """A succeeded revert run of ``run_id`` (``reverts_run_id``), or None."""
    query = (
        _select_summaries()
        .where(
            MigrationRun.reverts_run_id == run_id,
            MigrationRun.state == RunState.SUCCEEDED.value,
        )
        .limit(1)
    )
    row = (await session.execute(query)).first()
    return None if row is None else _summary(row)


async def lock_active_runs(session: AsyncSession, agent_ids: Sequence[str]) -> list[RunSummary]:
    """The active runs (``ACTIVE_RUN_STATES``) of ``agent_ids``, row-locked as ``lock_run``
    does (PostgreSQL ``FOR UPDATE``; SQLite: a no-op write first, the database's write lock).
    Call it first in its transaction."""
    active = [state.value for state in ACTIVE_RUN_STATES]
    postgresql = session.get_bind().dialect.name == "postgresql"
    runs: list[RunSummary] = []
    for start in range(0, len(agent_ids), 500):
        chunk = list(agent_ids[start : start + 500])
        where = and_(MigrationRun.agent_id.in_(chunk), MigrationRun.state.in_(active))
        query = _select_summaries().where(where).order_by(MigrationRun.id)
        if postgresql:
            query = query.with_for_update(of=MigrationRun)
        else:
            await session.execute(
                update(MigrationRun).where(where).values(updated_at=MigrationRun.updated_at)
            )
        runs.extend(_summary(row) for row in await session.execute(query))
    return runs


async def mark_cancels_requested(
    session: AsyncSession, run_ids: Sequence[str], by: str, at: datetime
) -> None:
    """``mark_cancel_requested`` for many runs."""
    for start in range(0, len(run_ids), 500):
        chunk = list(run_ids[start : start + 500])
        await session.execute(
            update(MigrationRun)
            .where(MigrationRun.id.in_(chunk), MigrationRun.cancel_requested_at.is_(None))
            .values(cancel_requested_by=by, cancel_requested_at=at)
        )
