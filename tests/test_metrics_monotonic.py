"""Every ``*_total`` series of ``GET /metrics`` only ever grows (``rate()`` depends on it).

Real server, real gRPC agent, real HTTP logins; /metrics scraped before and after each kind of
operation, on both databases. A run-update notice is the case that once made
``flagpost_events_duplicate_total`` go down (notices are History rows no check-in sent).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import aiohttp
import grpc
import pytest
from runs_testlib import AgentClient, run_update
from server_testlib import _HIDDEN_CSRF, create_web_user
from test_grpc_ingest import event
from test_metrics import scrape

from flagpost.v1 import agent_pb2
from server.app import RunningServer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def totals(samples: Samples) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {key: v for key, v in samples.items() if key[0].endswith("_total")}


async def test_every_total_series_never_decreases(running_server: RunningServer) -> None:
    server = running_server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agent = await AgentClient.enroll(server, channel)
        sent = [event() for _ in range(3)]
        run_id = str(uuid.uuid4())

        async def new_events() -> None:
            await agent.checkin(events=sent)

        async def duplicate_resend() -> None:
            await agent.checkin(events=sent)

        async def notice() -> None:  # FAILED -> RUNNING is refused and noted in the History
            await agent.checkin(
                run_updates=[run_update(run_id, agent_pb2.RUN_STATE_FAILED, steps_total=1)]
            )
            await agent.checkin(
                run_updates=[run_update(run_id, agent_pb2.RUN_STATE_RUNNING, steps_total=1)]
            )

        async def notice_with_events() -> None:
            await agent.checkin(
                events=[event()],
                run_updates=[run_update(run_id, agent_pb2.RUN_STATE_RUNNING, steps_total=1)],
            )

        async def rejected() -> None:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await agent.checkin(events=[event(event_id="not-a-uuid")])
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        async def unauthenticated() -> None:
            with pytest.raises(grpc.aio.AioRpcError):
                await AgentClient(channel, agent.agent_id, "fpa_wrong").checkin(events=[event()])

        async def login_failure() -> None:
            account = await create_web_user(server, "viewer")
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as http:
                async with http.get(f"{server.web_url}/login") as reply:
                    match = _HIDDEN_CSRF.search(await reply.text())
                assert match is not None
                form = {"name": account.name, "password": "wrong", "csrf_token": match.group(1)}
                async with http.post(f"{server.web_url}/login", data=form) as reply:
                    assert reply.status == 401

        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("check-in with new events", new_events),
            ("duplicate re-send", duplicate_resend),
            ("run-update notice", notice),
            ("notice and new event together", notice_with_events),
            ("rejected check-in", rejected),
            ("unauthenticated check-in", unauthenticated),
            ("login failure", login_failure),
            ("duplicate re-send after a notice", duplicate_resend),
        ]
        previous = totals(await scrape(server))
        assert previous, "no _total series scraped"
        for name, step in steps:
            await step()
            current = totals(await scrape(server))
            for key, before in previous.items():
                assert key in current, f"{key} vanished after {name}"
                assert current[key] >= before, (
                    f"{key} went down after {name}: {before} -> {current[key]}"
                )
            previous = current
        assert previous[("flagpost_events_duplicate_total", ())] == 6  # two re-sends of 3
