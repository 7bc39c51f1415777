"""Targets: which agents a selector picks (``server.selectors``), and server-side tags.

Selection runs in SQL (``server.storage.targets``); "online" is the health the fleet shows
(``server.services.agents.agent_health``): a check-in within ``stale_after_intervals`` check-in
intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.errors import InvalidArgument, NotFound
from server.selectors import Selector, parse_selector, validate_tag
from server.services.health import unavailable_on_outage
from server.storage import targets as targets_db

MAX_TAGS_PER_CHANGE = 32
MAX_AGENT_IDS = 100_000
MAX_BULK_AGENTS = 10_000  # per bulk action request (POST /api/v1/agents/bulk)


@dataclass(frozen=True, slots=True)
class Selection:
    """The agents a selector picked: how many, and (up to the limit asked) their ids and
    hostnames by hostname."""

    count: int
    agents: tuple[tuple[str, str], ...]


def online_since(config: ServerConfig, now: datetime | None = None) -> datetime:
    """The earliest last check-in an online agent can have."""
    now = now or datetime.now(UTC)
    interval = timedelta(seconds=config.checkin_interval_seconds)
    return now - interval * config.stale_after_intervals


async def select_in(
    session: AsyncSession, config: ServerConfig, selector: Selector, limit: int | None = None
) -> Selection:
    """``selector`` evaluated in ``session``; every match when ``limit`` is None."""
    since = online_since(config)
    agents = await targets_db.selected_agents(session, selector, since, limit)
    if limit is None or len(agents) < limit:
        count = len(agents)
    else:
        count = await targets_db.count_selected(session, selector, since)
    return Selection(count, tuple(agents))


async def select_agents(
    sessions: async_sessionmaker[AsyncSession],
    config: ServerConfig,
    expressions: Sequence[str],
    limit: int | None = None,
) -> Selection:
    """Parse ``expressions`` (SelectorError naming the bad one) and return what they pick."""
    selector = parse_selector(expressions)
    with unavailable_on_outage("select agents"):
        async with sessions() as session:
            return await select_in(session, config, selector, limit)


@dataclass(frozen=True, slots=True)
class TagChange:
    """The outcome of a bulk tag change: agents addressed, agents whose tags changed."""

    matched: int
    changed: int


@dataclass(frozen=True, slots=True)
class Targets:
    """The agents a bulk action addresses: those a parsed selector picks, or listed ids
    (deduplicated, in order)."""

    selector: Selector | None
    agent_ids: tuple[str, ...] = ()


def targets_of(
    expressions: Sequence[str] | None,
    agent_ids: Sequence[str] | None,
    limit: int = MAX_AGENT_IDS,
) -> Targets:
    """Exactly one of ``expressions`` (SelectorError naming the bad one) and ``agent_ids``
    (1 to ``limit`` ids); InvalidArgument naming the field otherwise."""
    if (expressions is None) == (agent_ids is None):
        raise InvalidArgument("give either select or agent_ids", field="select")
    if expressions is not None:
        return Targets(parse_selector(expressions))
    assert agent_ids is not None
    ids = tuple(dict.fromkeys(agent_ids))
    if not ids:
        raise InvalidArgument("give at least one agent id", field="agent_ids")
    if len(ids) > limit:
        raise InvalidArgument(f"at most {limit} ids per request", field="agent_ids")
    return Targets(None, ids)


async def resolve_in(
    session: AsyncSession, config: ServerConfig, targets: Targets, limit: int = MAX_AGENT_IDS
) -> list[str]:
    """The ids ``targets`` addresses, read in ``session``: NotFound naming the first unknown
    listed id, InvalidArgument (field ``select``) when the selector picks more than ``limit``."""
    if targets.selector is not None:
        selection = await select_in(session, config, targets.selector, limit + 1)
        if selection.count > limit:
            raise InvalidArgument(
                f"picks {selection.count} agents; at most {limit} per request (narrow it)",
                field="select",
            )
        return [agent_id for agent_id, _ in selection.agents]
    ids = list(targets.agent_ids)
    known = await targets_db.existing_agent_ids(session, ids)
    missing = [agent_id for agent_id in ids if agent_id not in known]
    if missing:
        raise NotFound(f"no agent {missing[0]}")
    return ids


async def resolve(
    sessions: async_sessionmaker[AsyncSession],
    config: ServerConfig,
    targets: Targets,
    limit: int = MAX_AGENT_IDS,
) -> list[str]:
    """:func:`resolve_in` in a read transaction of its own."""
    with unavailable_on_outage("select agents"):
        async with sessions() as session:
            return await resolve_in(session, config, targets, limit)


async def change_tags(
    sessions: async_sessionmaker[AsyncSession],
    config: ServerConfig,
    *,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
    expressions: Sequence[str] | None = None,
    agent_ids: Sequence[str] | None = None,
    limit: int = MAX_AGENT_IDS,
) -> TagChange:
    """Add and remove tags on the agents ``expressions`` pick, or on ``agent_ids`` (exactly
    one of them, at most ``limit`` agents). InvalidArgument on a bad tag or selector, NotFound
    on an unknown agent id."""
    if not add and not remove:
        raise InvalidArgument("give at least one tag to add or remove", field="add")
    if len(add) + len(remove) > MAX_TAGS_PER_CHANGE:
        raise InvalidArgument(f"at most {MAX_TAGS_PER_CHANGE} tags per change", field="add")
    added = [validate_tag(tag, f"add[{i}]") for i, tag in enumerate(add)]
    removed = [validate_tag(tag, f"remove[{i}]") for i, tag in enumerate(remove)]
    return await change_tags_of(
        sessions, config, targets_of(expressions, agent_ids, limit), added, removed, limit
    )


async def change_tags_of(
    sessions: async_sessionmaker[AsyncSession],
    config: ServerConfig,
    targets: Targets,
    add: Sequence[str],
    remove: Sequence[str],
    limit: int = MAX_AGENT_IDS,
) -> TagChange:
    """Add and remove (already validated) tags on the agents ``targets`` addresses."""
    with unavailable_on_outage("change tags"):
        async with sessions() as session, session.begin():
            ids = await resolve_in(session, config, targets, limit)
            changed = await targets_db.change_tags(session, ids, add, remove)
    return TagChange(len(ids), changed)
