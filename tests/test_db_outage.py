"""The database goes away and comes back: the server says NOT_SERVING, check-ins fail fast with
UNAVAILABLE (retryable), nothing is lost or half-stored, and service resumes without a restart.

(a) PostgreSQL behind a TCP proxy started here, on port 0: stopping it makes connections really
    refused (and cuts the open ones); starting it again on the same port brings the database back.
(b) SQLite locked by another process holding ``BEGIN EXCLUSIVE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import select
from test_grpc_ingest import FACTS, auth, enroll, event

from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server import app_keys
from server.app import RunningServer, start_server
from server.config import ServerConfig
from server.storage.models import UpdateEvent

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class TcpProxy:
    """A tiny asyncio TCP forwarder to ``upstream`` that can be stopped and started again."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and cut every open one."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer)),
            asyncio.ensure_future(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._tasks.difference_update(pumps)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


async def health_status(port: int) -> tuple[int, int]:
    """The health status of the AgentService and of the server as a whole ("")."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="flagpost.v1.AgentService"), timeout=5
        )
        root = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return int(reply.status), int(root.status)


async def wait_for_status(port: int, status: int, within: float = 10.0) -> float:
    """Seconds until both gRPC health statuses are ``status`` (fails after ``within``). The two
    are set one after the other, so a read during a change may see them differ for a moment."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await health_status(port) == (status, status):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    pytest.fail(f"health status never became {status}: {await health_status(port)}")


async def healthz(server: RunningServer) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{server.web_url}/healthz") as reply:
        return reply.status


async def wait_for_healthz(server: RunningServer, status: int, within: float = 10.0) -> None:
    """``/healthz`` answers ``status`` within ``within`` seconds (the monitor probes every
    ``health_probe_interval_ms``; a pooled connection to the old database may fail once)."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await healthz(server) == status:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"/healthz never answered {status}")


async def stored(server: RunningServer, ids: list[str]) -> list[str]:
    async with server.app[app_keys.SESSIONS]() as session:
        rows = await session.execute(
            select(UpdateEvent.event_id).where(UpdateEvent.event_id.in_(ids))
        )
        return list(rows.scalars())


def outage_config(config: ServerConfig, **overrides: object) -> ServerConfig:
    return replace(
        config,
        health_probe_interval_ms=100,
        health_probe_timeout_ms=300,
        sqlite_busy_timeout_ms=300,
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
async def pg_proxy(server_config: ServerConfig) -> AsyncIterator[tuple[TcpProxy, str]]:
    assert server_config.database_url.startswith("postgresql")
    parts = urlsplit(server_config.database_url)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    await proxy.start()
    url = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
    try:
        yield proxy, url
    finally:
        if proxy._server is not None:
            await proxy.stop()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_postgresql_refusing_connections_then_back(
    server_config: ServerConfig, pg_proxy: tuple[TcpProxy, str]
) -> None:
    proxy, url = pg_proxy
    server = await start_server(outage_config(server_config, database_url=url))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            _, credential = await enroll(server, channel)
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            before = agent_pb2.CheckInRequest(facts=FACTS, events=[event() for _ in range(3)])
            await stub.CheckIn(before, metadata=auth(credential))
            await wait_for_status(server.grpc_port, SERVING)
            await wait_for_healthz(server, 200)

            await proxy.stop()  # connections refused from now on
            await wait_for_status(server.grpc_port, NOT_SERVING)
            await wait_for_healthz(server, 503)
            during = agent_pb2.CheckInRequest(facts=FACTS, events=[event() for _ in range(5)])
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CheckIn(during, metadata=auth(credential), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 2  # fails fast, no hanging on the database
            assert server.app[app_keys.METRICS].health is not None
            assert not server.app[app_keys.HEALTH].available

            await proxy.start()  # same port: the database is back
            await wait_for_status(server.grpc_port, SERVING)
            await wait_for_healthz(server, 200)
            reply = await stub.CheckIn(during, metadata=auth(credential), timeout=10)
            assert list(reply.acknowledged_event_ids) == [e.event_id for e in during.events]

        ids = [e.event_id for r in (before, during) for e in r.events]
        assert sorted(await stored(server, ids)) == sorted(ids)
    finally:
        await server.stop()


LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
conn.close()
"""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_sqlite_locked_by_another_process_then_released(server_config: ServerConfig) -> None:
    sqlite_file = Path(server_config.database_url.removeprefix("sqlite+aiosqlite:///"))
    server = await start_server(outage_config(server_config))
    locker: subprocess.Popen[str] | None = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            _, credential = await enroll(server, channel)
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            before = agent_pb2.CheckInRequest(facts=FACTS, events=[event() for _ in range(3)])
            await stub.CheckIn(before, metadata=auth(credential))

            locker = subprocess.Popen(
                [sys.executable, "-c", LOCKER, str(sqlite_file)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
            # Sent at once: it may reach the writer before the monitor notices the lock; either
            # way it fails with a retryable error and stores nothing.
            racing = agent_pb2.CheckInRequest(facts=FACTS, events=[event() for _ in range(4)])
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CheckIn(racing, metadata=auth(credential), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

            await wait_for_status(server.grpc_port, NOT_SERVING)
            during = agent_pb2.CheckInRequest(facts=FACTS, events=[event() for _ in range(5)])
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CheckIn(during, metadata=auth(credential), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 1  # refused at once while NOT_SERVING
            refused = [e.event_id for r in (racing, during) for e in r.events]
            assert await stored(server, refused) == []  # nothing half-stored

            assert locker.stdin is not None
            locker.stdin.write("release\n")
            locker.stdin.flush()
            assert locker.wait(timeout=10) == 0
            await wait_for_status(server.grpc_port, SERVING)
            for request in (racing, during):  # the same check-ins, sent again, succeed
                reply = await stub.CheckIn(request, metadata=auth(credential), timeout=10)
                assert list(reply.acknowledged_event_ids) == [e.event_id for e in request.events]

        ids = [e.event_id for r in (before, racing, during) for e in r.events]
        assert sorted(await stored(server, ids)) == sorted(ids)
        writer = server.app[app_keys.SERVICES].ingest
        assert writer.events_stored == len(ids) and writer.duplicates == 0
    finally:
        if locker is not None and locker.poll() is None:
            locker.kill()
            locker.wait()
        if locker is not None:
            for stream in (locker.stdin, locker.stdout):
                if stream is not None:
                    stream.close()
        await server.stop()
