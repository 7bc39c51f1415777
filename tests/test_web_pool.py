"""The web has its own database pool (server.storage.db.create_web_engine): with every web
connection taken, agents still authenticate and check in, and the web sheds its requests as
503 with Retry-After (server.errors.Overloaded), never a 500 or a traceback. Real server (web
pool of one connection, short wait), real gRPC agents and HTTP client, both databases."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from server_testlib import logged_in_http
from streams_testlib import agents, start_streams_server
from test_grpc_ingest import event

from server import app_keys
from server.config import ServerConfig


async def test_web_pool_exhaustion_sheds_the_web_not_the_agents(
    server_config: ServerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    config = replace(
        server_config,
        web_database_pool_size=1,
        web_database_pool_timeout_seconds=0.2,
        retry_after_ms=1500,
    )
    server = await start_streams_server(config)
    web_engine = server.app[app_keys.WEB_ENGINE]
    assert web_engine is not server.app[app_keys.ENGINE]
    try:
        async with logged_in_http(server, "viewer") as http, agents(server, 4) as fleet:
            caplog.clear()
            with caplog.at_level(logging.INFO):
                async with web_engine.connect() as held, web_engine.connect() as overflow:
                    await held.exec_driver_sql("SELECT 1")
                    await overflow.exec_driver_sql("SELECT 1")
                    for agent in fleet:  # authentication and ingest use the main pool
                        reply = await agent.checkin(events=[event()])
                        assert len(reply.acknowledged_event_ids) == 1
                    for path in ("/history", "/api/v1/events", "/history/stream"):
                        async with http.get(f"{server.web_url}{path}") as shed:
                            assert shed.status == 503, (path, shed.status)
                            assert shed.headers["Retry-After"] == "2"
                            assert "busy" in await shed.text()
            assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
            # With its connections free again the web answers.
            async with http.get(f"{server.web_url}/history") as page:
                assert page.status == 200
    finally:
        await server.stop()
