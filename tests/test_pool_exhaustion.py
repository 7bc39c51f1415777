"""An exhausted database pool sheds check-ins as overload: RESOURCE_EXHAUSTED with the
``retry-after-ms`` hint, never INTERNAL or a traceback.

Real server (pool of one connection, short wait), real gRPC agents, both databases. The test
holds the pool's only connection itself (plus its overflow of one), so the check-ins that need
a connection meanwhile cannot get one; after it lets go, the same check-ins succeed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import grpc
import pytest
from runs_testlib import AgentClient
from test_grpc_ingest import event

from server import app_keys
from server.app import start_server
from server.config import ServerConfig
from server.grpc.interceptors import RETRY_AFTER_KEY

AGENTS = 8


async def test_pool_timeout_is_resource_exhausted_with_a_hint(
    server_config: ServerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    config = replace(
        server_config, database_pool_size=1, database_pool_timeout_seconds=0.2, retry_after_ms=1234
    )
    server = await start_server(config)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            agents = [await AgentClient.enroll(server, channel) for _ in range(AGENTS)]
            engine = server.app[app_keys.ENGINE]
            caplog.clear()
            with caplog.at_level(logging.INFO):
                async with engine.connect() as held, engine.connect() as overflow:
                    await held.exec_driver_sql("SELECT 1")
                    await overflow.exec_driver_sql("SELECT 1")
                    results = await asyncio.gather(
                        *(agent.checkin(events=[event()]) for agent in agents),
                        return_exceptions=True,
                    )
            shed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert shed, results  # the first use of each credential needs a connection
            for error in shed:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                trailers = dict(error.trailing_metadata() or ())
                assert trailers[RETRY_AFTER_KEY] == "1234"
            assert not [r for r in results if isinstance(r, BaseException) and r not in shed]
            assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]

            # With connections free again every agent checks in.
            for agent in agents:
                reply = await agent.checkin(events=[event()])
                assert len(reply.acknowledged_event_ids) == 1
    finally:
        await server.stop()
