"""Read queries behind the fleet overview and the agent page: agents with their facts, and
History counts per hour and severity.

Plain dataclasses out, never ORM rows. The hour bucket is the one dialect-specific expression
(integer hours since the epoch, computed by the database so only the counts travel).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Integer, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.storage.agents import AgentRecord, agent_record
from server.storage.models import Agent, UpdateEvent

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class HourlyCount:
    """``count`` History rows of ``severity`` whose ``occurred_at`` falls in the hour starting
    at ``hour``."""

    hour: datetime
    severity: str
    count: int


async def list_agent_records(session: AsyncSession, limit: int) -> list[AgentRecord]:
    """Up to ``limit`` agents with their facts, ordered by hostname then id."""
    result = await session.execute(
        select(
            Agent.id,
            Agent.hostname,
            Agent.os,
            Agent.kernel,
            Agent.agent_version,
            Agent.config_version,
            Agent.disk_free_bytes,
            Agent.machine_id,
            Agent.enrolled_at,
            Agent.last_checkin_at,
            Agent.checkin_interval_seconds,
            Agent.revoked,
            Agent.labels,
        )
        .order_by(Agent.hostname, Agent.id)
        .limit(limit)
    )
    return [agent_record(row) for row in result]


async def count_agents_by_checkin(
    session: AsyncSession, online_since: datetime, offline_before: datetime
) -> dict[str, int]:
    """Agents (not revoked) counted by freshness of their last check-in: ``online`` (at or after
    ``online_since``), ``stale`` (between), ``offline`` (before ``offline_before``), ``never``
    (no check-in) and ``revoked``. Counted in the database: the fleet may be large."""
    last = Agent.last_checkin_at
    bucket = select(
        Agent.revoked,
        func.count().filter(last.is_(None)).label("never"),
        func.count().filter(last >= online_since).label("online"),
        func.count().filter(last < offline_before).label("offline"),
        func.count().label("total"),
    ).group_by(Agent.revoked)
    counts = {"online": 0, "stale": 0, "offline": 0, "never": 0, "revoked": 0}
    for row in await session.execute(bucket):
        if row.revoked:
            counts["revoked"] += int(row.total)
            continue
        counts["never"] += int(row.never)
        counts["online"] += int(row.online)
        counts["offline"] += int(row.offline)
        counts["stale"] += int(row.total) - int(row.never) - int(row.online) - int(row.offline)
    return counts


async def count_config_versions(session: AsyncSession) -> dict[str, int]:
    """Agents (not revoked) per reported config version (``""``: not reported yet)."""
    result = await session.execute(
        select(Agent.config_version, func.count())
        .where(Agent.revoked.is_(False))
        .group_by(Agent.config_version)
    )
    return {str(version or ""): int(count) for version, count in result}


def _hour_number(dialect: str) -> Any:
    """Whole hours since the epoch of ``update_events.occurred_at``, per dialect."""
    if dialect == "sqlite":
        # Stored as naive UTC text; strftime('%s') reads it as UTC.
        seconds = cast(func.strftime("%s", UpdateEvent.occurred_at), Integer)
        return cast(seconds / 3600, Integer)
    return cast(func.floor(func.extract("epoch", UpdateEvent.occurred_at) / 3600), BigInteger)


async def count_events_by_hour(
    session: AsyncSession, since: datetime, until: datetime
) -> list[HourlyCount]:
    """History rows with ``since <= occurred_at < until`` counted per (hour, severity)."""
    dialect = session.get_bind().dialect.name
    hour = _hour_number(dialect).label("hour")
    result = await session.execute(
        select(hour, UpdateEvent.severity, func.count().label("n"))
        .where(UpdateEvent.occurred_at >= since, UpdateEvent.occurred_at < until)
        .group_by(hour, UpdateEvent.severity)
    )
    return [
        HourlyCount(_EPOCH + timedelta(hours=int(row.hour)), str(row.severity), int(row.n))
        for row in result
    ]
