"""SQL of the action queue (``pending_actions``) outside ingest: queueing and listing.

Delivery and acknowledgement happen in the ingest transaction
(``server.storage.run_ingest``), which reads its rows with :func:`action_from_row` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.domain import ActionKind, PendingAction
from server.storage.models import PendingActionRow

WITHDRAWN_EXPIRY: Final = datetime(1970, 1, 1, tzinfo=UTC)
"""The expiry of a withdrawn action: before any check-in's clock, so none delivers it."""


def action_from_row(row: Any) -> PendingAction:
    """The domain object of a ``pending_actions`` row (an ORM row or a Core result row)."""
    return PendingAction(
        action_id=row.action_id,
        agent_id=row.agent_id,
        kind=ActionKind(row.kind),
        params={str(k): str(v) for k, v in (row.params or {}).items()},
        created_at=row.created_at,
        expires_at=row.expires_at,
        delivered_at=row.delivered_at,
        acknowledged_at=row.acknowledged_at,
        requested_by=row.requested_by,
        nonce=row.nonce or "",
    )


async def create_action(session: AsyncSession, action: PendingAction) -> None:
    """Queue ``action`` for its agent."""
    await session.execute(
        insert(PendingActionRow).values(
            action_id=action.action_id,
            agent_id=action.agent_id,
            kind=action.kind.value,
            params=dict(action.params),
            created_at=action.created_at,
            expires_at=action.expires_at,
            delivered_at=None,
            acknowledged_at=None,
            requested_by=action.requested_by,
            nonce=action.nonce,
        )
    )


async def open_actions(
    session: AsyncSession, agent_id: str, now: datetime, kind: ActionKind | None = None
) -> list[PendingAction]:
    """Unacknowledged, unexpired actions of ``agent_id`` (of ``kind`` when given), oldest
    first."""
    query = select(PendingActionRow).where(
        PendingActionRow.agent_id == agent_id,
        PendingActionRow.acknowledged_at.is_(None),
        PendingActionRow.expires_at > now,
    )
    if kind is not None:
        query = query.where(PendingActionRow.kind == kind.value)
    query = query.order_by(PendingActionRow.created_at, PendingActionRow.action_id)
    return [action_from_row(row) for row in (await session.execute(query)).scalars()]


async def get_action(session: AsyncSession, action_id: str) -> PendingAction | None:
    """One action, or None."""
    row = await session.get(PendingActionRow, action_id)
    return None if row is None else action_from_row(row)


async def create_actions(session: AsyncSession, actions: Sequence[PendingAction]) -> None:
    """Queue many actions in one statement per 500."""
    rows = [
        {
            "action_id": a.action_id,
            "agent_id": a.agent_id,
            "kind": a.kind.value,
            "params": dict(a.params),
            "created_at": a.created_at,
            "expires_at": a.expires_at,
            "delivered_at": None,
            "acknowledged_at": None,
            "requested_by": a.requested_by,
            "nonce": a.nonce,
        }
        for a in actions
    ]
    for start in range(0, len(rows), 500):
        await session.execute(insert(PendingActionRow), rows[start : start + 500])


async def open_action_counts(
    session: AsyncSession,
    agent_ids: Sequence[str],
    kinds: Sequence[ActionKind],
    now: datetime,
) -> dict[str, int]:
    """``agent id -> open (unacknowledged, unexpired) actions of kinds`` for ``agent_ids``
    (agents without any are absent)."""
    counts: dict[str, int] = {}
    for start in range(0, len(agent_ids), 500):
        chunk = list(agent_ids[start : start + 500])
        query = (
            select(PendingActionRow.agent_id, func.count())
            .where(
                PendingActionRow.agent_id.in_(chunk),
                PendingActionRow.kind.in_([k.value for k in kinds]),
                PendingActionRow.acknowledged_at.is_(None),
                PendingActionRow.expires_at > now,
            )
            .group_by(PendingActionRow.agent_id)
        )
        counts.update({str(a): int(n) for a, n in await session.execute(query)})
    return counts
