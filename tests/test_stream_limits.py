"""Live streams are capped per web session (``max_streams_per_session``) and in all
(``max_streams_total``), History and run streams together: a stream beyond a cap is refused
with 429, Retry-After and a message naming the setting, before any byte of the stream; a closed
stream frees its place. Real server, real HTTP clients, both databases."""

from __future__ import annotations

import uuid
from dataclasses import replace

from runs_testlib import run_update
from server_testlib import logged_in_http
from streams_testlib import agents, start_streams_server, until
from test_history_live import open_stream

from flagpost.v1 import agent_pb2
from server.config import ServerConfig
from server.web.live import LIVE


async def test_streams_beyond_the_limits_are_429_with_retry_after(
    server_config: ServerConfig,
) -> None:
    config = replace(server_config, max_streams_per_session=2, max_streams_total=3)
    server = await start_streams_server(config)
    limits = server.app[LIVE].limits
    history = f"{server.web_url}/history/stream"
    try:
        async with agents(server, 1) as [agent]:
            run_id = str(uuid.uuid4())
            await agent.checkin(run_updates=[run_update(run_id, agent_pb2.RUN_STATE_RUNNING)])
            run = f"{server.web_url}/runs/{run_id}/stream"
            async with (
                logged_in_http(server, "viewer") as one,
                logged_in_http(server, "viewer") as two,
                logged_in_http(server, "viewer") as three,
            ):
                first = await open_stream(one, history)
                second = await open_stream(one, run)  # run streams count too
                async with one.get(history) as refused:
                    assert refused.status == 429
                    assert int(refused.headers["Retry-After"]) >= 1
                    body = await refused.text()
                    assert "max_streams_per_session" in body, body
                third = await open_stream(two, history)  # another session: 3 in all
                async with three.get(run) as refused:
                    assert refused.status == 429 and "Retry-After" in refused.headers
                    body = await refused.text()
                    assert "max_streams_total" in body, body
                assert limits.total == 3
                # A closed stream frees its place (for its session and in all).
                first.close()
                await until(lambda: limits.total == 2)
                again = await open_stream(one, history)
                for stream in (second, third, again):
                    stream.close()
            await until(lambda: limits.total == 0)
    finally:
        await server.stop()


async def test_the_json_api_explains_the_refusal(server_config: ServerConfig) -> None:
    config = replace(server_config, max_streams_per_session=1)
    server = await start_streams_server(config)
    try:
        async with logged_in_http(server, "viewer") as http:
            kept = await open_stream(http, f"{server.web_url}/history/stream")
            async with http.get(
                f"{server.web_url}/history/stream", headers={"Accept": "application/json"}
            ) as refused:
                assert refused.status == 429
                assert "Retry-After" in refused.headers
                assert "max_streams_per_session" in await refused.text()
            kept.close()
    finally:
        await server.stop()
