"""History service: pages of events for the History page and the JSON API, and the health probe.

Services own the transaction: each function opens a session, calls the storage layer and returns
domain objects. Database connectivity failures become :class:`server.errors.Unavailable` (503),
with no driver internals in the message.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from server.domain import EventFilter, EventPage
from server.errors import Unavailable
from server.storage import history as history_store

log = logging.getLogger(__name__)

AgentChoice = tuple[str, str]  # (agent id, hostname)


async def list_events(sessions: async_sessionmaker[AsyncSession], f: EventFilter) -> EventPage:
    """One page of events matching ``f``, newest first.

    ``next_before_id`` is the cursor of the next (older) page, or ``None`` when this page is the
    last one. Raises :class:`Unavailable` when the database cannot be reached.
    """
    try:
        async with sessions() as session, session.begin():
            rows = await history_store.query_events(session, f)
    except (OperationalError, InterfaceError, OSError) as exc:
        log.warning("history query failed: %s", type(exc).__name__)
        raise Unavailable("the database is unavailable") from exc
    has_older = len(rows) > f.limit
    events = rows[: f.limit]
    next_before = events[-1].id if has_older and events else None
    return EventPage(events=events, next_before_id=next_before, filters=f)


async def list_agent_choices(sessions: async_sessionmaker[AsyncSession]) -> list[AgentChoice]:
    """Every agent as ``(id, hostname)`` for the History page's agent filter."""
    try:
        async with sessions() as session, session.begin():
            return await history_store.list_agents(session)
    except (OperationalError, InterfaceError, OSError) as exc:
        log.warning("agent list query failed: %s", type(exc).__name__)
        raise Unavailable("the database is unavailable") from exc


async def database_ok(engine: AsyncEngine, timeout_seconds: float = 3.0) -> bool:
    """True when ``SELECT 1`` succeeds within ``timeout_seconds`` (the ``/healthz`` probe)."""
    try:
        async with asyncio.timeout(timeout_seconds), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        log.warning("health check: database unreachable (%s)", type(exc).__name__)
        return False
    return True
