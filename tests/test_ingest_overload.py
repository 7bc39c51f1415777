"""Overload: a full ingest queue answers RESOURCE_EXHAUSTED with a retry hint, stores nothing of
the refused check-ins, and the server recovers on its own. Real server, real databases; the
writer is held up by a real lock another connection takes on the database."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import grpc
import pytest
from sqlalchemy import func, select
from test_grpc_ingest import FACTS, auth, enroll, event

from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server import app_keys
from server.app import RunningServer, start_server
from server.config import ServerConfig
from server.storage.models import UpdateEvent


@contextlib.contextmanager
def sqlite_write_lock(url: str) -> Iterator[None]:
    """Hold SQLite's write lock from another connection (another thread) until the block ends."""
    path = Path(url.removeprefix("sqlite+aiosqlite:///"))
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(30)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert locked.wait(10)
        yield
    finally:
        release.set()
        thread.join(30)


@contextlib.asynccontextmanager
async def database_lock(url: str) -> AsyncIterator[None]:
    """Block the ingest writer's INSERTs until the block ends."""
    if url.startswith("sqlite"):
        with sqlite_write_lock(url):
            yield
        return
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE update_events IN EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()


async def stored_ids(server: RunningServer) -> list[str]:
    async with server.app[app_keys.SESSIONS]() as session:
        return list((await session.execute(select(UpdateEvent.event_id))).scalars())


@pytest.fixture
async def busy_server(server_config: ServerConfig) -> AsyncIterator[RunningServer]:
    config = replace(
        server_config,
        ingest_queue_max_events=25,  # room for two check-ins of 10 events
        retry_after_ms=750,
        health_probe_interval_ms=60_000,  # the lock must look like overload, not an outage
        sqlite_busy_timeout_ms=30_000,
    )
    server = await start_server(config)
    try:
        yield server
    finally:
        await server.stop()


async def test_overload_is_refused_with_a_hint_stores_nothing_and_recovers(
    busy_server: RunningServer, server_config: ServerConfig
) -> None:
    server = busy_server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        _, credential = await enroll(server, channel)
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        # The credential's first use is recorded (one write) before the lock is taken: what
        # this test holds up is the ingest writer, not that one-time bookkeeping.
        await stub.CheckIn(agent_pb2.CheckInRequest(facts=FACTS), metadata=auth(credential))
        requests = [
            agent_pb2.CheckInRequest(facts=FACTS, events=[event() for _ in range(10)])
            for _ in range(5)
        ]

        async with database_lock(server_config.database_url):
            calls = []
            for request in requests:  # in order: the first two fill the queue
                calls.append(
                    asyncio.ensure_future(stub.CheckIn(request, metadata=auth(credential)))
                )
                await asyncio.sleep(0.05)
            refused = await asyncio.wait_for(asyncio.gather(*calls[2:], return_exceptions=True), 10)
            assert not calls[0].done() and not calls[1].done()  # waiting for their commit
            assert server.app[app_keys.SERVICES].ingest.queued_events == 20
        accepted = await asyncio.wait_for(asyncio.gather(*calls[:2]), 30)

        for error in refused:
            assert isinstance(error, grpc.aio.AioRpcError)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert dict(error.trailing_metadata() or ())["retry-after-ms"] == "750"
        for request, reply in zip(requests[:2], accepted, strict=True):
            assert list(reply.acknowledged_event_ids) == [e.event_id for e in request.events]
        ids = await stored_ids(server)
        assert sorted(ids) == sorted(e.event_id for r in requests[:2] for e in r.events)

        # Recovery: the refused check-ins, sent again, are stored (exactly once each).
        for request in requests[2:]:
            reply = await stub.CheckIn(request, metadata=auth(credential))
            assert len(reply.acknowledged_event_ids) == 10
        ids = await stored_ids(server)
        assert len(ids) == len(set(ids)) == 50
        assert sorted(ids) == sorted(e.event_id for r in requests for e in r.events)

    writer = server.app[app_keys.SERVICES].ingest
    # 5 stored check-ins of events and the empty one that recorded the credential's first use
    assert writer.rejected == 3 and writer.checkins == 6 and writer.queued_events == 0
    async with server.app[app_keys.SESSIONS]() as session:
        count = (await session.execute(select(func.count()).select_from(UpdateEvent))).scalar()
    assert count == 50
