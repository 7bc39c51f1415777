"""History service: pages of events for the History page and the JSON API, and the health probe.

Services own the transaction: each function opens a session, calls the storage layer and returns
domain objects. Database connectivity failures become :class:`server.errors.Unavailable` (503),
with no driver internals in the message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from server.domain import EventFilter, EventPage, StoredEvent
from server.services.health import unavailable_on_outage
from server.storage import history as history_store

log = logging.getLogger(__name__)

AgentChoice = tuple[str, str]  # (agent id, hostname)
# A form lists the agents to choose from up to this many; a larger fleet gets a field for an
# agent id instead (every agent as an option is megabytes of HTML on every load at 100,000).
AGENT_CHOICES_MAX = 500


def _page(found: history_store.EventRows, f: EventFilter) -> EventPage:
    events = found.rows[: f.limit]
    if len(found.rows) > f.limit:
        return EventPage(events=events, next_before_id=events[-1].id, filters=f)
    unsearched = found.unsearched_below
    return EventPage(
        events=events, next_before_id=unsearched, filters=f, partial=unsearched is not None
    )


async def list_events(sessions: async_sessionmaker[AsyncSession], f: EventFilter) -> EventPage:
    """One page of events matching ``f``, newest first.

    ``next_before_id`` is the cursor of the next (older) page, or ``None`` when this page is the
    last one. Raises :class:`Unavailable` when the database cannot be reached.
    """
    with unavailable_on_outage("history"):
        async with sessions() as session, session.begin():
            rows = await history_store.query_events(session, f)
    return _page(rows, f)


async def list_events_live(
    sessions: async_sessionmaker[AsyncSession], f: EventFilter
) -> tuple[EventPage, int]:
    """Like :func:`list_events`, plus the live stream's starting cursor: the highest History id
    when the page was read. The page never shows a row above that cursor, so a stream started
    from it shows every newer row exactly once (no gap, no duplicate)."""
    with unavailable_on_outage("history"):
        async with sessions() as session, session.begin():
            horizon = await history_store.max_event_id(session)
            bounded = f if f.before_id is not None else replace(f, before_id=horizon + 1)
            rows = await history_store.query_events(session, bounded)
    return _page(rows, f), horizon


@dataclass(frozen=True, slots=True)
class StreamBatch:
    """What one read of the live stream found."""

    events: list[StoredEvent]  # rows matching the filter, oldest first
    cursor: int  # every row with an id up to here has been examined (matching or not)
    more: bool  # the batch was full: read again from ``cursor``


async def latest_event_id(sessions: async_sessionmaker[AsyncSession]) -> int:
    """The highest History id (0 when empty): where a stream with no cursor starts."""
    with unavailable_on_outage("history horizon"):
        async with sessions() as session, session.begin():
            return await history_store.max_event_id(session)


async def read_new_events(
    sessions: async_sessionmaker[AsyncSession], f: EventFilter, after_id: int, limit: int
) -> StreamBatch:
    """Events matching ``f`` committed after ``after_id``, oldest first, at most ``limit``.

    Reads up to the highest id visible when it starts (all lower ids are committed: History
    writers take ``server.storage.notify.lock_history_writes``), so the returned cursor can
    advance past rows that do not match without ever skipping one that was not yet visible."""
    with unavailable_on_outage("history stream"):
        async with sessions() as session, session.begin():
            upto = await history_store.max_event_id(session)
            if upto <= after_id:
                return StreamBatch([], after_id, False)
            rows = await history_store.query_events_after(session, f, after_id, upto, limit + 1)
    if len(rows) > limit:
        rows = rows[:limit]
        return StreamBatch(rows, rows[-1].id, True)
    return StreamBatch(rows, upto, False)


async def list_agent_choices(
    sessions: async_sessionmaker[AsyncSession],
) -> list[AgentChoice] | None:
    """Every agent as ``(id, hostname)``, ordered by hostname, for a form's list of agents;
    None when there are more than :data:`AGENT_CHOICES_MAX` (the form then takes an agent id)."""
    with unavailable_on_outage("agent list"):
        async with sessions() as session, session.begin():
            agents = await history_store.list_agents(session, AGENT_CHOICES_MAX + 1)
    return None if len(agents) > AGENT_CHOICES_MAX else agents


async def hostnames_of(
    sessions: async_sessionmaker[AsyncSession], agent_ids: Sequence[str]
) -> dict[str, str]:
    """``agent id -> hostname`` for those of ``agent_ids`` that exist."""
    with unavailable_on_outage("agent hostnames"):
        async with sessions() as session, session.begin():
            return await history_store.hostnames(session, agent_ids)


async def database_ok(engine: AsyncEngine, timeout_seconds: float = 3.0) -> bool:
    """True when ``SELECT 1`` succeeds within ``timeout_seconds`` (the ``/healthz`` probe)."""
    try:
        async with asyncio.timeout(timeout_seconds), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        log.warning("health check: database unreachable (%s)", type(exc).__name__)
        return False
    return True
