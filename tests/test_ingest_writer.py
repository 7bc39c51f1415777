"""The IngestWriter on its own (both batch stores): poisoned batches, commit listeners."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import func, select
from test_grpc_ingest import new_event

from server.config import ServerConfig
from server.domain import HostFacts
from server.services import enrollment
from server.services.ingest import CommittedBatch, IngestWriter
from server.storage.batches import SessionStore, SqliteThreadStore, make_batch_store
from server.storage.db import create_engine_for_url, make_sessionmaker
from server.storage.models import UpdateEvent


@pytest.fixture(params=["default", "session"])
async def writer(
    request: pytest.FixtureRequest, server_config: ServerConfig
) -> AsyncIterator[tuple[IngestWriter, Any, str]]:
    """A started writer with the server's store for the database (``default``: the writer
    thread on SQLite) or the pooled-session store, plus sessions and an enrolled agent."""
    engine = create_engine_for_url(server_config.database_url)
    sessions = make_sessionmaker(engine)
    token = await enrollment.create_token(sessions, uses=1)
    agent_id, _ = await enrollment.enroll(sessions, token, HostFacts(hostname="h"))
    store = (
        make_batch_store(server_config, sessions)
        if request.param == "default"
        else SessionStore(sessions)
    )
    ingest = IngestWriter(server_config, sessions, store=store)
    ingest.start()
    try:
        yield ingest, sessions, agent_id
    finally:
        await ingest.stop()
        await engine.dispose()


async def test_sqlite_files_get_the_writer_thread(server_config: ServerConfig) -> None:
    engine = create_engine_for_url(server_config.database_url)
    store = make_batch_store(server_config, make_sessionmaker(engine))
    expected = SqliteThreadStore if server_config.is_sqlite else SessionStore
    assert isinstance(store, expected)
    await store.close()
    await engine.dispose()


async def test_a_poisoned_checkin_does_not_fail_its_batch_mates(
    writer: tuple[IngestWriter, Any, str],
) -> None:
    ingest, sessions, agent_id = writer
    ghost = str(uuid.uuid4())  # no such agent: its events violate the foreign key
    good = [[new_event(agent_id) for _ in range(3)] for _ in range(4)]
    results = await asyncio.gather(
        *(ingest.submit(agent_id, None, events) for events in good[:2]),
        ingest.submit(ghost, None, [new_event(ghost)]),
        *(ingest.submit(agent_id, None, events) for events in good[2:]),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results] == ["IngestResult"] * 2 + ["Unavailable"] + [
        "IngestResult"
    ] * 2
    assert ingest.events_stored == 12 and ingest.checkins == 4
    assert ingest.failed_batches == 2  # the shared batch, then the ghost retried on its own
    assert ingest.batches == 4  # each batch mate committed on its own after the split
    async with sessions() as session:
        ids = set((await session.execute(select(UpdateEvent.event_id))).scalars())
    assert ids == {e.event_id for events in good for e in events}


async def test_listeners_hear_every_commit_with_its_highest_id(
    writer: tuple[IngestWriter, Any, str],
) -> None:
    ingest, sessions, agent_id = writer
    heard: list[CommittedBatch] = []
    ingest.add_commit_listener(heard.append)
    events = [new_event(agent_id) for _ in range(5)]
    first = await ingest.submit(agent_id, HostFacts(hostname="h2"), events)
    again = await ingest.submit(agent_id, None, events[:2], sent=3)
    assert (first.stored, first.duplicates) == (5, 0)
    assert (again.stored, again.duplicates) == (0, 3)
    async with sessions() as session:
        top = (await session.execute(select(func.max(UpdateEvent.id)))).scalar_one()
    assert heard[0].stored == 5 and heard[0].max_id == top
    assert heard[0].agent_ids == frozenset({agent_id})
    assert heard[1].stored == 0 and heard[1].max_id is None
    assert ingest.duplicates == 3


class _WatchedStore(SessionStore):
    """The pooled-session store, holding each batch a moment before its transaction and
    recording which agents' batches were being stored at the same time."""

    def __init__(self, sessions: Any) -> None:
        super().__init__(sessions)
        self.active: list[frozenset[str]] = []  # the agents of each batch being stored
        self.peak = 0
        self.shared_agent = False
        self.entered = asyncio.Event()

    async def store(self, rows: Any, updates: Any, works: Any = ()) -> Any:
        agents = frozenset(work.agent_id for work in works)
        if any(agents & other for other in self.active):
            self.shared_agent = True
        self.active.append(agents)
        self.peak = max(self.peak, len(self.active))
        self.entered.set()
        try:
            await asyncio.sleep(0.3)  # long enough for the writer to start another batch
            return await super().store(rows, updates, works)
        finally:
            self.active.remove(agents)


async def test_postgresql_commits_batches_of_other_agents_at_once(
    server_config: ServerConfig,
) -> None:
    """With ``ingest_writers = 2``, on PostgreSQL, a batch without events (here: bare
    check-ins; in practice log lines and run updates) is stored while a batch of events still
    is; never two batches of events at once (they would only queue on the History lock), never
    two batches of one agent. SQLite has one writer."""
    engine = create_engine_for_url(server_config.database_url)
    sessions = make_sessionmaker(engine)
    token = await enrollment.create_token(sessions, uses=3)
    a, b, c = [
        (await enrollment.enroll(sessions, token, HostFacts(hostname=f"h{i}")))[0] for i in range(3)
    ]
    store = _WatchedStore(sessions)
    ingest = IngestWriter(server_config, sessions, store=store)
    ingest.start()

    async def beside_a_batch_of_a(*others: Any) -> int:
        """Submit one event of ``a``, then (while it is being stored) ``others``; the most
        batches stored at once."""
        store.peak = 0
        store.entered.clear()
        first = asyncio.ensure_future(ingest.submit(a, None, [new_event(a)]))
        await asyncio.wait_for(store.entered.wait(), 10)
        await asyncio.gather(first, *others)
        return store.peak

    try:
        bare = [ingest.submit(agent, HostFacts(hostname="again"), []) for agent in (b, c)]
        assert await beside_a_batch_of_a(*bare) == (1 if server_config.is_sqlite else 2)
        events = [ingest.submit(agent, None, [new_event(agent)]) for agent in (b, c)]
        assert await beside_a_batch_of_a(*events) == 1
        assert await beside_a_batch_of_a(ingest.submit(a, HostFacts(hostname="a2"), [])) == 1
        assert not store.shared_agent
        assert ingest.events_stored == 5 and ingest.checkins == 8
    finally:
        await ingest.stop()
    async with sessions() as session:
        stored = (await session.execute(select(func.count()).select_from(UpdateEvent))).scalar_one()
    await engine.dispose()
    assert stored == 5


async def test_batches_of_events_queued_together_are_stored_one_at_a_time(
    server_config: ServerConfig,
) -> None:
    """Three check-ins with events arriving at once, one per batch (a limit of one event):
    even on PostgreSQL with two writers they are stored one batch after the other."""
    engine = create_engine_for_url(server_config.database_url)
    sessions = make_sessionmaker(engine)
    token = await enrollment.create_token(sessions, uses=3)
    agents = [
        (await enrollment.enroll(sessions, token, HostFacts(hostname=f"h{i}")))[0] for i in range(3)
    ]
    store = _WatchedStore(sessions)
    ingest = IngestWriter(replace(server_config, ingest_batch_max_events=1), sessions, store=store)
    ingest.start()
    try:
        await asyncio.gather(*(ingest.submit(a, None, [new_event(a)]) for a in agents))
        assert store.peak == 1 and ingest.batches == 3
    finally:
        await ingest.stop()
        await engine.dispose()
