"""Reads and pruning of ``auth_changes`` (rows written by the triggers of alembic 0015)."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import Table, bindparam, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.storage.models import AuthChange

_TABLE = cast(Table, AuthChange.__table__)
_LATEST = select(func.max(_TABLE.c.id))
_AFTER = (
    select(_TABLE.c.id, _TABLE.c.agent_id)
    .where(_TABLE.c.id > bindparam("after"))
    .order_by(_TABLE.c.id)
    .limit(bindparam("limit"))
)


async def latest_id(session: AsyncSession) -> int:
    """The newest change's id (0 when there is none)."""
    conn = await session.connection()
    return int((await conn.execute(_LATEST)).scalar() or 0)


async def changes_after(session: AsyncSession, after: int, limit: int) -> list[tuple[int, str]]:
    """``(id, agent_id)`` of at most ``limit`` changes with an id above ``after``, in id order."""
    conn = await session.connection()
    rows = await conn.execute(_AFTER, {"after": after, "limit": limit})
    return [(int(row.id), str(row.agent_id)) for row in rows]


async def delete_changes_before(session: AsyncSession, cutoff: datetime) -> int:
    """Delete the changes made before ``cutoff``; how many."""
    result = await session.execute(delete(AuthChange).where(AuthChange.changed_at < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)
