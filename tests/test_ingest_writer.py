"""The IngestWriter on its own (both batch stores): poisoned batches, commit listeners."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
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
