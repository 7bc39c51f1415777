"""``auth_changes``: the triggers (alembic 0015) and the credential cache that reads them.

A revocation made by another process (the CLI, another replica) reaches a server's credential
cache through these rows within about a second, although the cache keeps a credential for
minutes (``server.services.agents``). Both databases, real engines, a moved clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.domain import HostFacts
from server.errors import PermissionDenied, Unauthenticated
from server.services import agents as agent_service
from server.services import enrollment, retention
from server.storage import agents as agents_db
from server.storage.db import create_engine_for_url, make_sessionmaker
from server.storage.models import AuthChange


@pytest.fixture
async def sessions(server_config: ServerConfig) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine_for_url(server_config.database_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


async def enrolled(sessions: async_sessionmaker[AsyncSession], n: int) -> list[tuple[str, str]]:
    token = await enrollment.create_token(sessions, uses=n)
    return [
        await enrollment.enroll(sessions, token, HostFacts(hostname=f"h{i}", machine_id=f"m{i}"))
        for i in range(n)
    ]


async def changed_agents(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessions() as session:
        rows = await session.execute(select(AuthChange.agent_id).order_by(AuthChange.id))
    return list(rows.scalars())


async def test_triggers_record_what_invalidates_a_cached_credential(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    (a, _), (b, _), (c, _) = await enrolled(sessions, 3)
    now = datetime.now(UTC)
    assert await changed_agents(sessions) == []  # enrolling changes nothing cached
    async with sessions() as session, session.begin():
        await agents_db.lock_agent(session, a)  # a no-op write on SQLite: not a change
        await agents_db.record_checkins(
            session, [agents_db.CheckinUpdate(a, now, HostFacts(hostname="h0", machine_id="m0"))]
        )
    assert await changed_agents(sessions) == []
    async with sessions() as session, session.begin():
        await agents_db.set_rotate_requested(session, b, now)
    async with sessions() as session, session.begin():
        await agents_db.store_credential(session, a, "f" * 64, now, None)  # a rotation's new one
        credentials = await session.execute(
            text("SELECT id FROM agent_credentials WHERE agent_id = :a ORDER BY id"), {"a": a}
        )
        old, new = [int(x) for x in credentials.scalars()]
        await agents_db.mark_credential_used(session, a, new, now, now)  # revokes the old one
    assert old < new
    async with sessions() as session, session.begin():
        await agents_db.set_revoked(session, c, now)
    assert await changed_agents(sessions) == [b, a, c]
    async with sessions() as session, session.begin():
        await session.execute(text("DELETE FROM agents WHERE id = :b"), {"b": b})
    assert await changed_agents(sessions) == [b, a, c, b]


async def test_a_revocation_by_another_process_reaches_the_cache_within_a_poll(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(agent_service, "monotonic", lambda: clock[0])
    (a, a_credential), (_, b_credential) = await enrolled(sessions, 2)
    authenticator = agent_service.Authenticator(sessions)
    assert (await authenticator.identify(a_credential)).agent_id == a
    await authenticator.identify(b_credential)
    assert authenticator.lookups == 2
    # A minute later (an agent's interval): still cached, although the cache was read again.
    clock[0] += 60
    await authenticator.identify(a_credential)
    await authenticator.identify(b_credential)
    assert authenticator.lookups == 2
    # "Another process" revokes a: nothing tells this authenticator but the table.
    async with sessions() as session, session.begin():
        await agents_db.set_revoked(session, a, datetime.now(UTC))
    clock[0] += agent_service.AUTH_CHANGES_POLL / 2
    await authenticator.identify(a_credential)  # not read yet: served from the cache
    clock[0] += agent_service.AUTH_CHANGES_POLL
    with pytest.raises(PermissionDenied):
        await authenticator.identify(a_credential)
    await authenticator.identify(b_credential)  # b's entry was not touched
    assert authenticator.lookups == 3
    # Past the backstop every entry is looked up again.
    clock[0] += agent_service.AUTH_CACHE_TTL
    await authenticator.identify(b_credential)
    assert authenticator.lookups == 4


async def test_a_change_committed_late_with_a_lower_id_is_still_applied(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL ids are drawn at insert, so a transaction may commit id 5 after another
    committed id 6 and the cache read 6: changes are looked for again for a while."""
    clock = [1000.0]
    monkeypatch.setattr(agent_service, "monotonic", lambda: clock[0])
    (a, a_credential), (b, b_credential) = await enrolled(sessions, 2)
    authenticator = agent_service.Authenticator(sessions)
    await authenticator.identify(a_credential)
    await authenticator.identify(b_credential)
    now = datetime.now(UTC)

    async def insert_change(change_id: int, agent_id: str) -> None:
        async with sessions() as session, session.begin():
            session.add(AuthChange(id=change_id, agent_id=agent_id, changed_at=now))

    await insert_change(1006, b)
    clock[0] += agent_service.AUTH_CHANGES_POLL
    await authenticator.identify(b_credential)  # forgotten, looked up again (not revoked)
    assert authenticator.lookups == 3
    await insert_change(1005, a)  # "committed" after 1006 was read
    clock[0] += agent_service.AUTH_CHANGES_POLL
    await authenticator.identify(a_credential)
    await authenticator.identify(b_credential)  # 1006 was applied once, not again
    assert authenticator.lookups == 4


async def test_retention_prunes_authentication_changes_after_an_hour(
    sessions: async_sessionmaker[AsyncSession], server_config: ServerConfig
) -> None:
    ((a, _),) = await enrolled(sessions, 1)
    now = datetime.now(UTC)
    async with sessions() as session, session.begin():
        for minutes in (90, 61, 59, 1):
            session.add(AuthChange(agent_id=a, changed_at=now - timedelta(minutes=minutes)))
    await retention.prune(sessions, server_config, now=now)
    async with sessions() as session:
        left: Any = await session.execute(select(func.count()).select_from(AuthChange))
    assert left.scalar_one() == 2


async def test_an_unknown_credential_is_still_refused_after_a_poll(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    authenticator = agent_service.Authenticator(sessions)
    with pytest.raises(Unauthenticated):
        await authenticator.identify(enrollment.CREDENTIAL_PREFIX + "nope")
