"""Fleet service: the overview's figures (agent health, config versions), its events chart
(events per time bucket over a :class:`server.domain.ChartRange`), and one agent's facts with
its recent events.

Health is derived in one place (:func:`server.services.agents.agent_health`); counting happens
in the database with the same thresholds. Database connectivity failures become
:class:`server.errors.Unavailable`.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.domain import (
    AgentHealth,
    AgentListQuery,
    AgentSort,
    AgentState,
    ChartRange,
    EventFilter,
    Severity,
    StoredEvent,
    version_key,
)
from server.errors import InvalidArgument, NotFound
from server.services.agents import agent_health, offline_window, stale_window
from server.services.health import unavailable_on_outage
from server.storage import agents as agents_store
from server.storage import fleet as fleet_store
from server.storage import history as history_store
from server.storage import targets as targets_store
from server.storage.agents import AgentRecord

log = logging.getLogger(__name__)

BucketCounts = tuple[datetime, dict[str, int]]  # (bucket start, {severity: events})


@dataclass(frozen=True, slots=True)
class FleetAgent:
    """An agent as the overview and the agent page show it."""

    record: AgentRecord
    health: AgentHealth
    tags: tuple[str, ...] = ()  # server-side tags (server.services.targets)


@dataclass(frozen=True, slots=True)
class FleetOverview:
    """The fleet at ``now``."""

    now: datetime
    health_counts: dict[str, int]  # online / stale / offline / never / revoked
    config_versions: dict[str, int]  # version ("" = not reported) -> agents, revoked excluded
    newest_version: str | None
    agents_total: int  # enrolled, revoked included

    @property
    def on_newest(self) -> int:
        """Agents (not revoked) reporting the newest config version."""
        return self.config_versions.get(self.newest_version or "", 0) if self.newest_version else 0

    @property
    def reporting(self) -> int:
        """Agents (not revoked) that reported any config version."""
        return sum(n for version, n in self.config_versions.items() if version)


@dataclass(frozen=True, slots=True)
class AgentDetail:
    """One agent's facts, health and its most recent events (newest first)."""

    agent: FleetAgent
    events: list[StoredEvent]


def newest_version(versions: dict[str, int]) -> str | None:
    """The highest reported config version (natural order), None when none is reported."""
    known = [v for v in versions if v]
    return max(known, key=version_key) if known else None


@dataclass(frozen=True, slots=True)
class EventsChart:
    """History events per bucket and severity over ``chart_range``: ``buckets`` oldest first,
    the last one holding now, every severity present (0 in an empty bucket)."""

    chart_range: ChartRange
    buckets: list[BucketCounts]


def chart_window(chart_range: ChartRange, now: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` of ``chart_range`` at ``now``: its buckets are whole multiples of the
    bucket size since the epoch (UTC), the last one holding ``now``."""
    size = chart_range.bucket_seconds
    current = datetime.fromtimestamp(int(now.timestamp()) // size * size, UTC)
    bucket = timedelta(seconds=size)
    return current - (chart_range.buckets - 1) * bucket, current + bucket


def _fill_buckets(
    counts: list[fleet_store.BucketCount], start: datetime, chart_range: ChartRange
) -> list[BucketCounts]:
    size = timedelta(seconds=chart_range.bucket_seconds)
    buckets: list[BucketCounts] = [
        (start + i * size, {s.value: 0 for s in Severity}) for i in range(chart_range.buckets)
    ]
    for item in counts:
        index = (item.start - start) // size
        if 0 <= index < chart_range.buckets:
            per_severity = buckets[index][1]
            per_severity[item.severity] = per_severity.get(item.severity, 0) + item.count
    return buckets


async def events_chart(
    sessions: async_sessionmaker[AsyncSession], chart_range: ChartRange, now: datetime
) -> EventsChart:
    """History events per bucket of ``chart_range`` and severity, as of ``now`` (the bucket
    holding ``now`` included); counted in the database."""
    start, end = chart_window(chart_range, now)
    with unavailable_on_outage("events chart"):
        async with sessions() as session, session.begin():
            counts = await fleet_store.count_events_by_bucket(
                session, start, end, chart_range.bucket_seconds
            )
    return EventsChart(chart_range, _fill_buckets(counts, start, chart_range))


async def fleet_overview(
    sessions: async_sessionmaker[AsyncSession], config: ServerConfig, now: datetime
) -> FleetOverview:
    """Agent health counts and config versions as of ``now`` (the events chart:
    :func:`events_chart`)."""
    with unavailable_on_outage("fleet overview"):
        async with sessions() as session, session.begin():
            health = await fleet_store.count_agents_by_checkin(
                session,
                online_since=now - stale_window(config),
                offline_before=now - offline_window(config),
            )
            versions = await fleet_store.count_config_versions(session)
    return FleetOverview(
        now=now,
        health_counts=health,
        config_versions=versions,
        newest_version=newest_version(versions),
        agents_total=sum(health.values()),
    )


@dataclass(frozen=True, slots=True)
class AgentList:
    """One page of the agent list: ``next_after`` is the cursor of the next page (None on the
    last), ``matching`` how many agents the filters match in all."""

    agents: list[FleetAgent]
    next_after: str | None
    matching: int


def encode_list_cursor(record: AgentRecord, sort: AgentSort, health: AgentHealth) -> str:
    """The keyset position just after ``record`` in ``sort`` (its sort value, hostname and id),
    as URL-safe text."""
    lead = {
        AgentSort.HOST: "",
        AgentSort.HEALTH: AgentState.REVOKED.value if record.revoked else health.value,
        AgentSort.CONFIG_VERSION: record.config_version,
        AgentSort.AGENT_VERSION: record.agent_version,
        AgentSort.LAST_CHECKIN: record.last_checkin_at.astimezone(UTC).isoformat()
        if record.last_checkin_at
        else "",
    }[sort]
    raw = json.dumps([sort.value, lead, record.hostname, record.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_list_cursor(cursor: str, sort: AgentSort) -> tuple[str, str, str]:
    """Inverse of :func:`encode_list_cursor` for the same ``sort``; InvalidArgument (field
    ``after``) when malformed or made for another sort."""
    bad = InvalidArgument("is not a cursor of this list (open the first page)", field="after")
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        raise bad from None
    if (
        not isinstance(values, list)
        or len(values) != 4
        or not all(isinstance(v, str) for v in values)
        or values[0] != sort.value
    ):
        raise bad
    _, lead, hostname, agent_id = values
    try:
        if sort is AgentSort.HEALTH:
            AgentState(lead)
        elif sort is AgentSort.LAST_CHECKIN and lead:
            datetime.fromisoformat(lead)
    except ValueError:
        raise bad from None
    return lead, hostname, agent_id


async def list_agents(
    sessions: async_sessionmaker[AsyncSession],
    config: ServerConfig,
    query: AgentListQuery,
    now: datetime,
) -> AgentList:
    """One page of agents matching ``query`` (text, health, config version), sorted by its
    column with hostname and id breaking ties, after its keyset cursor. Version columns sort
    in natural order (:func:`server.domain.version_key`)."""
    cut = fleet_store.HealthCutoffs(now - stale_window(config), now - offline_window(config))
    with unavailable_on_outage("agent list"):
        async with sessions() as session, session.begin():
            versions: dict[AgentSort, list[str]] = {}
            if query.sort in (AgentSort.CONFIG_VERSION, AgentSort.AGENT_VERSION):
                column = "config" if query.sort is AgentSort.CONFIG_VERSION else "agent"
                found = await fleet_store.distinct_versions(session, column)
                versions[query.sort] = sorted(found, key=version_key)
            order = fleet_store.agent_list_order(
                query,
                cut,
                versions.get(AgentSort.CONFIG_VERSION, ()),
                versions.get(AgentSort.AGENT_VERSION, ()),
            )
            page = replace(query, limit=query.limit + 1)
            records = await fleet_store.list_agents(session, page, cut, order)
            if query.after is None and len(records) <= query.limit:
                matching = len(records)  # the first page holds them all: no second scan
            else:
                matching = await fleet_store.count_listed(session, query, cut)
            shown = records[: query.limit]
            tags = await targets_store.tags_of(session, [r.id for r in shown])
    agents = [
        FleetAgent(r, agent_health(r.last_checkin_at, now, config), tags.get(r.id, ()))
        for r in shown
    ]
    more = len(records) > query.limit and bool(agents)
    return AgentList(
        agents=agents,
        next_after=encode_list_cursor(agents[-1].record, query.sort, agents[-1].health)
        if more
        else None,
        matching=matching,
    )


async def agent_detail(
    sessions: async_sessionmaker[AsyncSession],
    config: ServerConfig,
    agent_id: str,
    now: datetime,
    events_limit: int = 20,
) -> AgentDetail:
    """One agent with its derived health and its ``events_limit`` newest events.
    Raises NotFound for an unknown agent."""
    with unavailable_on_outage("agent detail"):
        async with sessions() as session, session.begin():
            record = await agents_store.get_agent(session, agent_id)
            if record is None:
                raise NotFound(f"no agent {agent_id}")
            rows = await history_store.query_events(
                session, EventFilter(agent_id=agent_id, limit=events_limit)
            )
            tags = await targets_store.tags_of(session, [agent_id])
    agent = FleetAgent(
        record, agent_health(record.last_checkin_at, now, config), tags.get(agent_id, ())
    )
    return AgentDetail(agent=agent, events=rows.rows[:events_limit])
