"""Fleet service: the overview's figures (agent health, config versions, events per hour) and
one agent's facts with its recent events.

Health is derived in one place (:func:`server.services.agents.agent_health`); counting happens
in the database with the same thresholds. Database connectivity failures become
:class:`server.errors.Unavailable`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.domain import AgentHealth, EventFilter, Severity, StoredEvent
from server.errors import NotFound
from server.services.agents import agent_health, offline_window, stale_window
from server.services.health import unavailable_on_outage
from server.storage import agents as agents_store
from server.storage import fleet as fleet_store
from server.storage import history as history_store
from server.storage import targets as targets_store
from server.storage.agents import AgentRecord

log = logging.getLogger(__name__)

CHART_HOURS = 24
AGENT_LIST_LIMIT = 500
HourCounts = tuple[datetime, dict[str, int]]


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
    hours: list[HourCounts]  # CHART_HOURS entries, oldest first, every severity present
    agents: list[FleetAgent]  # up to AGENT_LIST_LIMIT, by hostname
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


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural sort key: ``"2" < "10"``, ``"v1.9" < "v1.10"``; numbers before text."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.findall(r"\d+|[^\d]+", version)
    )


def newest_version(versions: dict[str, int]) -> str | None:
    """The highest reported config version (natural order), None when none is reported."""
    known = [v for v in versions if v]
    return max(known, key=version_key) if known else None


def _hours(counts: list[fleet_store.HourlyCount], start: datetime) -> list[HourCounts]:
    buckets: list[HourCounts] = [
        (start + timedelta(hours=i), {s.value: 0 for s in Severity}) for i in range(CHART_HOURS)
    ]
    for item in counts:
        index = int((item.hour - start).total_seconds() // 3600)
        if 0 <= index < CHART_HOURS:
            per_severity = buckets[index][1]
            per_severity[item.severity] = per_severity.get(item.severity, 0) + item.count
    return buckets


async def fleet_overview(
    sessions: async_sessionmaker[AsyncSession], config: ServerConfig, now: datetime
) -> FleetOverview:
    """Agent health counts, config versions, events per hour over the last day (the current
    hour included) and the agent list, as of ``now``."""
    current_hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    start = current_hour - timedelta(hours=CHART_HOURS - 1)
    with unavailable_on_outage("fleet overview"):
        async with sessions() as session, session.begin():
            health = await fleet_store.count_agents_by_checkin(
                session,
                online_since=now - stale_window(config),
                offline_before=now - offline_window(config),
            )
            versions = await fleet_store.count_config_versions(session)
            hourly = await fleet_store.count_events_by_hour(
                session, start, current_hour + timedelta(hours=1)
            )
            records = await fleet_store.list_agent_records(session, AGENT_LIST_LIMIT)
            tags = await targets_store.tags_of(session, [r.id for r in records])
    return FleetOverview(
        now=now,
        health_counts=health,
        config_versions=versions,
        newest_version=newest_version(versions),
        hours=_hours(hourly, start),
        agents=[
            FleetAgent(r, agent_health(r.last_checkin_at, now, config), tags.get(r.id, ()))
            for r in records
        ],
        agents_total=sum(health.values()),
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
    return AgentDetail(agent=agent, events=rows[:events_limit])
