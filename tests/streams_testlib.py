"""Helpers for the live-stream tests (tests/test_streams_*.py, tests/test_stream_*.py): a real
server with the streams' tunables set before start-up, gRPC agents that check events in, and
SQL statement counting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
from aiohttp import web
from runs_testlib import AgentClient
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncEngine

from server import app_keys
from server.app import RunningServer, create_app
from server.config import ServerConfig
from server.web.history.stream import STREAM_SETTINGS, StreamSettings
from server.web.live import LIVE
from server.web.runs.stream import RUN_STREAM_SETTINGS, RunStreamSettings

FAST = StreamSettings(heartbeat_seconds=0.5, disconnect_check_seconds=0.05, batch_size=50)
FAST_RUNS = RunStreamSettings(
    heartbeat_seconds=0.5,
    disconnect_check_seconds=0.05,
    min_interval_seconds=0.02,
    poll_seconds=0.5,
    gap_grace_seconds=0.3,
)


async def start_streams_server(
    config: ServerConfig,
    history: StreamSettings = FAST,
    runs: RunStreamSettings = FAST_RUNS,
) -> RunningServer:
    """``server.app.start_server`` with the streams' tunables set before start-up."""
    app = create_app(config)
    app[STREAM_SETTINGS] = history
    app[RUN_STREAM_SETTINGS] = runs
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0, access_log=None)
    try:
        await runner.setup()
        await web.TCPSite(runner, config.web_host, 0).start()
    except BaseException:
        await runner.cleanup()
        raise
    port = int(runner.addresses[0][1])
    return RunningServer(app, runner, app[app_keys.PORTS].grpc, port, f"http://127.0.0.1:{port}")


@asynccontextmanager
async def agents(server: RunningServer, count: int) -> AsyncIterator[list[AgentClient]]:
    """``count`` enrolled gRPC agents on one channel."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield [await AgentClient.enroll(server, channel) for _ in range(count)]


def live_subscribers(server: RunningServer) -> int:
    """Streams registered with the app's shared readers."""
    return server.app[LIVE].subscribers()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (polling) until ``condition()`` holds; TimeoutError otherwise."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


class StatementCounter:
    """Counts SQL statements that read ``update_events`` on the given engines."""

    def __init__(self, *engines: AsyncEngine) -> None:
        self.count = 0
        self._engines = {id(e.sync_engine): e.sync_engine for e in engines}.values()

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        text = statement.lower()
        if text.lstrip().startswith("select") and "update_events" in text:
            self.count += 1

    def __enter__(self) -> StatementCounter:
        for engine in self._engines:
            sa_event.listen(engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *_exc: object) -> None:
        for engine in self._engines:
            sa_event.remove(engine, "before_cursor_execute", self._seen)
