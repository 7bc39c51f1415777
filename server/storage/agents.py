"""SQL for agents and their credentials. Returns plain dataclasses, never ORM rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, Table, Update, bindparam, false, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from server.domain import HostFacts
from server.storage.models import Agent, AgentCredential


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """An agent as stored (health is derived by the service layer)."""

    id: str
    hostname: str
    os: str
    kernel: str
    agent_version: str
    config_version: str
    disk_free_bytes: int
    machine_id: str
    enrolled_at: datetime
    last_checkin_at: datetime | None
    checkin_interval_seconds: int
    revoked: bool
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class CredentialRecord:
    """What authentication needs to know about a presented credential."""

    agent_id: str
    agent_revoked: bool
    credential_revoked: bool
    expires_at: datetime | None
    machine_id: str = ""  # the agent's enrolled machine: the credential is bound to it
    credential_id: int = 0
    created_at: datetime | None = None
    last_used_at: datetime | None = None  # None: never used (a rotated-in credential)
    rotate_requested_at: datetime | None = None  # the agent's `agent rotate` request


@dataclass(frozen=True, slots=True)
class CheckinUpdate:
    """One agent's check-in: when, and its refreshed host facts (None: keep the old ones)."""

    agent_id: str
    at: datetime
    facts: HostFacts | None


def _fact_columns(facts: HostFacts) -> dict[str, Any]:
    return {
        "hostname": facts.hostname,
        "os": facts.os,
        "kernel": facts.kernel,
        "agent_version": facts.agent_version,
        "config_version": facts.config_version,
        "disk_free_bytes": facts.disk_free_bytes,
        "machine_id": facts.machine_id,
        "facts": dataclasses.asdict(facts),
        "labels": dict(facts.labels),
    }


async def create_agent(
    session: AsyncSession,
    agent_id: str,
    facts: HostFacts,
    enrolled_at: datetime,
    checkin_interval_seconds: int,
) -> None:
    """Insert a new, never-checked-in agent."""
    session.add(
        Agent(
            id=agent_id,
            enrolled_at=enrolled_at,
            last_checkin_at=None,
            checkin_interval_seconds=checkin_interval_seconds,
            revoked=False,
            revoked_at=None,
            **_fact_columns(facts),
        )
    )
    await session.flush()


# The SET clause comes from the parameter keys (SQLAlchemy's executemany UPDATE pattern); one
# statement object, built once, so its cache key is computed once (every check-in updates).
_AGENTS = cast(Table, Agent.__table__)
_CHECKIN_UPDATE = update(_AGENTS).where(_AGENTS.c.id == bindparam("agent_id"))


def _checkin_statements(
    updates: Sequence[CheckinUpdate],
) -> list[tuple[Update, list[dict[str, Any]]]]:
    """Two executemany UPDATEs by primary key: with facts, and last_checkin_at only."""
    with_facts = [
        {"agent_id": u.agent_id, "last_checkin_at": u.at, **_fact_columns(u.facts)}
        for u in updates
        if u.facts is not None
    ]
    without_facts = [
        {"agent_id": u.agent_id, "last_checkin_at": u.at} for u in updates if u.facts is None
    ]
    return [(_CHECKIN_UPDATE, rows) for rows in (with_facts, without_facts) if rows]


async def record_checkins(session: AsyncSession, updates: Sequence[CheckinUpdate]) -> None:
    """Set ``last_checkin_at`` (and the facts, when given) for many agents in at most two
    executemany UPDATEs by primary key."""
    for statement, rows in _checkin_statements(updates):
        await session.execute(statement, rows)


def record_checkins_sync(conn: Connection, updates: Sequence[CheckinUpdate]) -> None:
    """``record_checkins`` on a synchronous connection (the SQLite writer thread)."""
    for statement, rows in _checkin_statements(updates):
        conn.execute(statement, rows)


async def get_agent(session: AsyncSession, agent_id: str) -> AgentRecord | None:
    """The agent with ``agent_id``, or None."""
    row = await session.get(Agent, agent_id)
    if row is None:
        return None
    return agent_record(row)


async def list_agents(session: AsyncSession) -> list[AgentRecord]:
    """Every agent, by hostname then id."""
    result = await session.execute(select(Agent).order_by(Agent.hostname, Agent.id))
    return [agent_record(row) for row in result.scalars()]


def agent_record(row: Any) -> AgentRecord:
    """An ``agents`` row (ORM object or selected columns with the same names) as a record."""
    return AgentRecord(
        id=row.id,
        hostname=row.hostname,
        os=row.os,
        kernel=row.kernel,
        agent_version=row.agent_version,
        config_version=row.config_version,
        disk_free_bytes=row.disk_free_bytes,
        machine_id=row.machine_id,
        enrolled_at=row.enrolled_at,
        last_checkin_at=row.last_checkin_at,
        checkin_interval_seconds=row.checkin_interval_seconds,
        revoked=row.revoked,
        labels=tuple(sorted((getattr(row, "labels", None) or {}).items())),
    )


async def set_revoked(session: AsyncSession, agent_id: str, at: datetime) -> bool:
    """Revoke an agent (its credentials stop working). False when no such agent."""
    result = await session.execute(
        update(Agent)
        .where(Agent.id == agent_id)
        .values(revoked=True, revoked_at=at)
        .returning(Agent.id)
    )
    return result.first() is not None


async def store_credential(
    session: AsyncSession,
    agent_id: str,
    secret_hash: str,
    created_at: datetime,
    expires_at: datetime | None = None,
) -> None:
    """Keep the SHA-256 hex of a new agent credential."""
    session.add(
        AgentCredential(
            agent_id=agent_id,
            secret_hash=secret_hash,
            created_at=created_at,
            expires_at=expires_at,
            revoked_at=None,
        )
    )
    await session.flush()


def _credential_query(key: ColumnElement[Any]) -> Select[Any]:
    """A credential with its agent's fields, by ``key`` = the bound parameter ``key``: Core
    columns and one statement object per key, built once (check-ins look credentials up on
    every authentication cache miss; an ORM statement built per call cost ~1 ms of CPU)."""
    credentials = cast(Table, AgentCredential.__table__)
    agents = cast(Table, Agent.__table__)
    return (
        select(
            credentials.c.agent_id,
            agents.c.revoked,
            credentials.c.revoked_at,
            credentials.c.expires_at,
            agents.c.machine_id,
            credentials.c.id,
            credentials.c.created_at,
            credentials.c.last_used_at,
            agents.c.rotate_requested_at,
        )
        .select_from(credentials.join(agents, agents.c.id == credentials.c.agent_id))
        .where(key == bindparam("key"))
    )


_BY_HASH = _credential_query(cast(Table, AgentCredential.__table__).c.secret_hash)
_BY_ID = _credential_query(cast(Table, AgentCredential.__table__).c.id)


async def _credential_where(
    session: AsyncSession, query: Select[Any], key: object
) -> CredentialRecord | None:
    conn = await session.connection()
    row = (await conn.execute(query, {"key": key})).first()
    if row is None:
        return None
    return CredentialRecord(
        agent_id=row.agent_id,
        agent_revoked=bool(row.revoked),
        credential_revoked=row.revoked_at is not None,
        expires_at=row.expires_at,
        machine_id=row.machine_id,
        credential_id=int(row.id),
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        rotate_requested_at=row.rotate_requested_at,
    )


async def find_credential(session: AsyncSession, secret_hash: str) -> CredentialRecord | None:
    """Look a credential up by its hash (unique index), with its agent's revoked flag."""
    return await _credential_where(session, _BY_HASH, secret_hash)


async def get_credential(session: AsyncSession, credential_id: int) -> CredentialRecord | None:
    """The credential with ``credential_id`` as stored now (``find_credential`` by id)."""
    return await _credential_where(session, _BY_ID, credential_id)


_CREDENTIALS = cast(Table, AgentCredential.__table__)
# A fleet's first check-ins each run these (a credential's first use): Core statements built
# once, on the session's connection (the ORM's bulk UPDATE path cost more than the SQL).
_LOCK_PG = select(_AGENTS.c.id).where(_AGENTS.c.id == bindparam("agent")).with_for_update()
_LOCK_SQLITE = (
    update(_AGENTS)
    .where(_AGENTS.c.id == bindparam("agent"))
    .values(rotate_requested_at=_AGENTS.c.rotate_requested_at)
)
_MARK_USED = (
    update(_CREDENTIALS)
    .where(_CREDENTIALS.c.id == bindparam("credential"))
    .values(last_used_at=bindparam("at", type_=_CREDENTIALS.c.last_used_at.type))
)
_REVOKE_OTHERS = (
    update(_CREDENTIALS)
    .where(
        _CREDENTIALS.c.agent_id == bindparam("agent"),
        _CREDENTIALS.c.id != bindparam("credential"),
        _CREDENTIALS.c.revoked_at.is_(None),
    )
    .values(revoked_at=bindparam("at", type_=_CREDENTIALS.c.revoked_at.type))
)
_ANSWERED = (
    update(_AGENTS)
    .where(
        _AGENTS.c.id == bindparam("agent"), _AGENTS.c.rotate_requested_at <= bindparam("created")
    )
    .values(rotate_requested_at=None)
)


async def lock_agent(session: AsyncSession, agent_id: str) -> None:
    """Serialize changes to one agent's credentials across processes: PostgreSQL locks the
    agent row (``FOR UPDATE``); SQLite takes the database's write lock with a no-op write.
    Call it first in its transaction; what is read after it is current until commit."""
    conn = await session.connection()
    postgresql = conn.dialect.name == "postgresql"
    await conn.execute(_LOCK_PG if postgresql else _LOCK_SQLITE, {"agent": agent_id})


async def set_rotate_requested(session: AsyncSession, agent_id: str, at: datetime) -> bool:
    """Ask for a new credential at the agent's next check-in. False when no such agent."""
    result = await session.execute(
        update(Agent).where(Agent.id == agent_id).values(rotate_requested_at=at).returning(Agent.id)
    )
    return result.first() is not None


async def mark_credential_used(
    session: AsyncSession, agent_id: str, credential_id: int, created_at: datetime, at: datetime
) -> None:
    """First use of a credential: record it, revoke every other credential of the agent that is
    still valid (older ones, and a newer one a concurrent rotation may have issued), and clear a
    rotation request that this credential answers (one made before it was created)."""
    conn = await session.connection()
    await conn.execute(_MARK_USED, {"credential": credential_id, "at": at})
    await conn.execute(_REVOKE_OTHERS, {"agent": agent_id, "credential": credential_id, "at": at})
    await conn.execute(_ANSWERED, {"agent": agent_id, "created": created_at})


async def revoke_unused_newer(
    session: AsyncSession, agent_id: str, credential_id: int, at: datetime
) -> int:
    """Revoke the agent's credentials newer than ``credential_id`` that were never used (a
    rotation whose response the agent did not receive). Returns how many."""
    result = await session.execute(
        update(AgentCredential)
        .where(
            AgentCredential.agent_id == agent_id,
            AgentCredential.id > credential_id,
            AgentCredential.last_used_at.is_(None),
            AgentCredential.revoked_at.is_(None),
        )
        .values(revoked_at=at)
        .returning(AgentCredential.id)
    )
    return len(result.all())


async def set_revoked_many(
    session: AsyncSession, agent_ids: Sequence[str], at: datetime
) -> list[str]:
    """Revoke those of ``agent_ids`` not revoked yet; returns the ids revoked now."""
    revoked: list[str] = []
    for start in range(0, len(agent_ids), 500):
        chunk = list(agent_ids[start : start + 500])
        result = await session.execute(
            update(Agent)
            .where(Agent.id.in_(chunk), Agent.revoked == false())
            .values(revoked=True, revoked_at=at)
            .returning(Agent.id)
        )
        revoked.extend(result.scalars())
    return revoked
