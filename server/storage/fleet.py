"""Read queries behind the fleet overview and the agent page: agents with their facts, and
History counts per time bucket and severity.

Plain dataclasses out, never ORM rows. The time bucket is the one dialect-specific expression
(whole buckets since the epoch, computed by the database so only the counts travel).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncSession

from server.domain import AgentListQuery, AgentSort, AgentState, version_key
from server.storage.agents import AgentRecord, agent_record
from server.storage.models import Agent, UpdateEvent
from server.storage.targets import contains, label_is, labels_or_tags_contain

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class BucketCount:
    """``count`` History rows of ``severity`` whose ``occurred_at`` falls in the bucket starting
    at ``start``."""

    start: datetime
    severity: str
    count: int


_AGENT_COLUMNS = (
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
# Beyond this many distinct versions a version column sorts as plain text (a CASE per version
# would outgrow the query).
MAX_RANKED_VERSIONS = 500
_NEVER = datetime(1, 1, 1, tzinfo=UTC)  # "never checked in" sorts as the oldest check-in


@dataclass(frozen=True, slots=True)
class HealthCutoffs:
    """Online: a check-in at or after ``online_since``; offline: before ``offline_before``."""

    online_since: datetime
    offline_before: datetime


@dataclass(frozen=True, slots=True)
class AgentListOrder:
    """How the agent list sorts: its columns, and the cursor's values as those columns hold
    them (a version's rank, a health's rank)."""

    columns: tuple[ColumnElement[Any], ...]
    after: tuple[Any, ...] | None


def _state_where(state: AgentState, cut: HealthCutoffs) -> ColumnElement[bool]:
    last = Agent.last_checkin_at
    if state is AgentState.REVOKED:
        return Agent.revoked.is_(True)
    condition = {
        AgentState.ONLINE: last >= cut.online_since,
        AgentState.STALE: and_(last < cut.online_since, last >= cut.offline_before),
        AgentState.OFFLINE: last < cut.offline_before,
        AgentState.NEVER: last.is_(None),
    }[state]
    return and_(Agent.revoked.is_(False), condition)


_STATE_RANK = {state: rank for rank, state in enumerate(AgentState)}


def _state_rank(cut: HealthCutoffs) -> ColumnElement[int]:
    last = Agent.last_checkin_at
    return case(
        (Agent.revoked.is_(True), _STATE_RANK[AgentState.REVOKED]),
        (last.is_(None), _STATE_RANK[AgentState.NEVER]),
        (last >= cut.online_since, _STATE_RANK[AgentState.ONLINE]),
        (last >= cut.offline_before, _STATE_RANK[AgentState.STALE]),
        else_=_STATE_RANK[AgentState.OFFLINE],
    )


def _list_where(
    query: AgentListQuery, cut: HealthCutoffs, dialect: str
) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if query.state is not None:
        where.append(_state_where(query.state, cut))
    if query.config_version is not None:
        where.append(Agent.config_version == query.config_version)
    text = query.text
    if text:
        key, sep, value = text.partition("=")
        if sep and key.strip():
            where.append(label_is(key.strip(), value.strip()))
        else:
            where.append(
                or_(
                    contains(Agent.hostname.expression, text, dialect),
                    Agent.id.startswith(text.lower(), autoescape=True),
                    labels_or_tags_contain(text, dialect),
                )
            )
    return where


async def distinct_versions(session: AsyncSession, column: str) -> list[str]:
    """The distinct values of ``agents.config_version`` or ``agents.agent_version``, at most
    :data:`MAX_RANKED_VERSIONS` + 1 of them."""
    col = Agent.config_version if column == "config" else Agent.agent_version
    result = await session.execute(select(col).distinct().limit(MAX_RANKED_VERSIONS + 1))
    return [str(v or "") for (v,) in result]


def _version_rank(
    column: ColumnElement[str], ordered: Sequence[str], cursor: str | None
) -> tuple[ColumnElement[Any], Any]:
    """``column`` as its rank in ``ordered`` (even numbers) and the cursor's rank (a value no
    longer held sorts between its neighbours: an odd number)."""
    if not ordered or len(ordered) > MAX_RANKED_VERSIONS:  # no agent, or too many versions
        return column, cursor
    ranks = {version: 2 * i for i, version in enumerate(ordered)}
    expr: ColumnElement[Any] = case(ranks, value=column, else_=2 * len(ordered))
    if cursor is None:
        return expr, None
    if cursor in ranks:
        return expr, ranks[cursor]
    return expr, 2 * bisect.bisect(ordered, version_key(cursor), key=version_key) - 1


def agent_list_order(
    query: AgentListQuery,
    cut: HealthCutoffs,
    config_versions: Sequence[str] = (),
    agent_versions: Sequence[str] = (),
) -> AgentListOrder:
    """The sort columns of ``query.sort`` (hostname and id break ties) and the cursor
    ``query.after`` in their terms. ``*_versions``: the versions in their display order."""
    after = query.after
    tail: tuple[ColumnElement[Any], ...] = (Agent.hostname.expression, Agent.id.expression)
    if query.sort is AgentSort.HOST:
        return AgentListOrder(tail, after[1:] if after else None)
    lead: ColumnElement[Any]
    if query.sort is AgentSort.HEALTH:
        lead = _state_rank(cut)
        first: Any = _STATE_RANK[AgentState(after[0])] if after else None
    elif query.sort is AgentSort.LAST_CHECKIN:
        lead = func.coalesce(Agent.last_checkin_at, literal(_NEVER, Agent.last_checkin_at.type))
        first = datetime.fromisoformat(after[0]) if after and after[0] else _NEVER
    else:
        ordered = config_versions if query.sort is AgentSort.CONFIG_VERSION else agent_versions
        column = (
            Agent.config_version if query.sort is AgentSort.CONFIG_VERSION else Agent.agent_version
        ).expression
        lead, first = _version_rank(column, ordered, after[0] if after else None)
    return AgentListOrder((lead, *tail), (first, *after[1:]) if after else None)


async def list_agents(
    session: AsyncSession, query: AgentListQuery, cut: HealthCutoffs, order: AgentListOrder
) -> list[AgentRecord]:
    """Up to ``query.limit`` agents matching ``query`` in ``order``, after its cursor."""
    where = _list_where(query, cut, session.get_bind().dialect.name)
    if order.after is not None:
        keys = tuple_(*order.columns)
        values = tuple_(
            *(literal(v, c.type) for c, v in zip(order.columns, order.after, strict=True))
        )
        where.append(keys < values if query.descending else keys > values)
    stmt = select(*_AGENT_COLUMNS).where(*where)
    stmt = stmt.order_by(*(c.desc() if query.descending else c.asc() for c in order.columns))
    result = await session.execute(stmt.limit(query.limit))
    return [agent_record(row) for row in result]


async def count_listed(session: AsyncSession, query: AgentListQuery, cut: HealthCutoffs) -> int:
    """How many agents match ``query``'s filters (its cursor aside)."""
    where = _list_where(query, cut, session.get_bind().dialect.name)
    return int(
        (await session.execute(select(func.count()).select_from(Agent).where(*where))).scalar_one()
    )


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


def _bucket_number(dialect: str, bucket_seconds: int) -> Any:
    """Whole buckets of ``bucket_seconds`` since the epoch of ``update_events.occurred_at``,
    per dialect."""
    if dialect == "sqlite":
        # Stored as naive UTC text; strftime('%s') reads it as UTC. Integer division.
        seconds = cast(func.strftime("%s", UpdateEvent.occurred_at), Integer)
        return cast(seconds / bucket_seconds, Integer)
    epoch = func.extract("epoch", UpdateEvent.occurred_at)
    return cast(func.floor(epoch / bucket_seconds), BigInteger)


async def count_events_by_bucket(
    session: AsyncSession, start: datetime, end: datetime, bucket_seconds: int
) -> list[BucketCount]:
    """History rows with ``start <= occurred_at < end`` counted per (bucket, severity): the
    buckets are ``bucket_seconds`` long and aligned to whole multiples of it since the epoch
    (UTC). Only buckets and severities holding rows come back."""
    dialect = session.get_bind().dialect.name
    bucket = _bucket_number(dialect, bucket_seconds).label("bucket")
    result = await session.execute(
        select(bucket, UpdateEvent.severity, func.count().label("n"))
        .where(UpdateEvent.occurred_at >= start, UpdateEvent.occurred_at < end)
        .group_by(bucket, UpdateEvent.severity)
    )
    return [
        BucketCount(
            _EPOCH + timedelta(seconds=int(row.bucket) * bucket_seconds),
            str(row.severity),
            int(row.n),
        )
        for row in result
    ]
