"""SQL of run inputs: the encrypted answers of a waiting run (``run_inputs``) and the
answer record on ``migration_runs``.

Only ciphertext passes through here; encryption and decryption live in
``server.services.inputs``. The row is deleted when the agent acknowledges the action carrying
it, or when its run ends (both in the ingest transaction, ``server.storage.run_ingest``), or
when it can no longer be delivered (its action expired unacknowledged, or its agent was revoked:
:func:`delete_undeliverable`, run by the retention job).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from server.domain import RunState
from server.storage.models import Agent, MigrationRun, PendingActionRow, RunInput

_IN_CHUNK = 500


@dataclass(frozen=True, slots=True)
class StoredAnswers:
    """One ``run_inputs`` row (with the state of the action that carries it)."""

    run_id: str
    request_id: str
    action_id: str
    ciphertext: bytes
    answered_by: str
    answered_at: datetime
    action_open: bool  # its action is neither acknowledged nor expired


def _stored_answers(row: RunInput, *, action_open: bool) -> StoredAnswers:
    return StoredAnswers(
        run_id=row.run_id,
        request_id=row.request_id,
        action_id=row.action_id,
        ciphertext=row.ciphertext,
        answered_by=row.answered_by,
        answered_at=row.answered_at,
        action_open=action_open,
    )


async def get_answers(session: AsyncSession, run_id: str, now: datetime) -> StoredAnswers | None:
    """The run's stored answers, or None."""
    query = (
        select(
            RunInput,
            PendingActionRow.acknowledged_at,
            PendingActionRow.expires_at,
        )
        .outerjoin(PendingActionRow, PendingActionRow.action_id == RunInput.action_id)
        .where(RunInput.run_id == run_id)
    )
    row = (await session.execute(query)).first()
    if row is None:
        return None
    open_ = row.acknowledged_at is None and row.expires_at is not None and row.expires_at > now
    return _stored_answers(row[0], action_open=open_)


async def store_answers(
    session: AsyncSession,
    run_id: str,
    request_id: str,
    action_id: str,
    ciphertext: bytes,
    by: str,
    at: datetime,
) -> None:
    """Keep the answers' ciphertext for ``run_id`` (replacing an older, undelivered one) and
    record who answered and when on the run."""
    await session.execute(delete(RunInput).where(RunInput.run_id == run_id))
    await session.execute(
        insert(RunInput).values(
            run_id=run_id,
            request_id=request_id,
            action_id=action_id,
            ciphertext=ciphertext,
            answered_by=by,
            answered_at=at,
        )
    )
    await session.execute(
        update(MigrationRun)
        .where(MigrationRun.id == run_id)
        .values(input_answered_by=by, input_answered_at=at)
    )


async def ciphertexts(session: AsyncSession, action_ids: Sequence[str]) -> dict[str, StoredAnswers]:
    """The stored answers carried by each of ``action_ids`` (absent: none any more)."""
    found: dict[str, StoredAnswers] = {}
    ids = sorted(set(action_ids))
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        rows = await session.execute(select(RunInput).where(RunInput.action_id.in_(chunk)))
        for row in rows.scalars():
            found[row.action_id] = _stored_answers(row, action_open=True)
    return found


async def count_awaiting(session: AsyncSession) -> int:
    """How many runs are AWAITING_INPUT (index ``ix_migration_runs_state_created_at_id``)."""
    query = select(func.count()).where(MigrationRun.state == RunState.AWAITING_INPUT.value)
    return int((await session.execute(query)).scalar_one())


async def awaiting_among(session: AsyncSession, run_ids: Sequence[str]) -> set[str]:
    """Those of ``run_ids`` that are AWAITING_INPUT."""
    found: set[str] = set()
    ids = sorted(set(run_ids))
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        rows = await session.execute(
            select(MigrationRun.id).where(
                MigrationRun.id.in_(chunk),
                MigrationRun.state == RunState.AWAITING_INPUT.value,
            )
        )
        found.update(str(run_id) for run_id in rows.scalars())
    return found


async def run_states_among(session: AsyncSession, run_ids: Sequence[str]) -> dict[str, str]:
    """The state of each of ``run_ids`` that has a run (an id without one is absent): which
    History rows may link to their run, and which wait for input. One query per chunk."""
    found: dict[str, str] = {}
    ids = sorted(set(run_ids))
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        rows = await session.execute(
            select(MigrationRun.id, MigrationRun.state).where(MigrationRun.id.in_(chunk))
        )
        found.update((str(row.id), str(row.state)) for row in rows)
    return found


async def delete_undeliverable(session: AsyncSession, now: datetime) -> int:
    """Delete the ciphertext of answers that can no longer reach their agent: the action
    carrying them expired without an acknowledgement (or is gone), or the agent was revoked.
    Returns how many rows went. (The admin can answer again while the run still waits.)"""
    live_actions = select(PendingActionRow.action_id).where(
        PendingActionRow.expires_at > now, PendingActionRow.acknowledged_at.is_(None)
    )
    revoked_runs = (
        select(MigrationRun.id)
        .join(Agent, Agent.id == MigrationRun.agent_id)
        .where(Agent.revoked.is_(True))
    )
    result = await session.execute(
        delete(RunInput).where(
            RunInput.action_id.not_in(live_actions) | RunInput.run_id.in_(revoked_runs)
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
