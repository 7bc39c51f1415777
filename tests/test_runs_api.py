"""The runs / logs / agents JSON API on a real server, runs and logs seeded through real gRPC
check-ins, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from runs_testlib import AgentClient, log_line, run_update, step, ts
from server_testlib import create_web_user, logged_in_http

from flagpost.v1 import agent_pb2
from server.app import RunningServer

RUNNING = agent_pb2.RUN_STATE_RUNNING


@pytest.fixture
async def channel(running_server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as ch:
        yield ch


@pytest.fixture
async def http(running_server: RunningServer) -> AsyncIterator[aiohttp.ClientSession]:
    account = await create_web_user(running_server, "admin", name="alice")
    async with logged_in_http(running_server, base_url=True, account=account) as session:
        yield session


async def get(http: aiohttp.ClientSession, path: str, status: int = 200, **params: Any) -> Any:
    async with http.get(path, params=params or None) as response:
        body = await response.json()
        assert response.status == status, body
        return body


LEVELS = ["DEBUG", "INFO", "INFO", "WARNING", "ERROR"]
SOURCES = ["detector", "executor", "move_legacy_config"]


async def seed_run(agent: AgentClient, lines: int = 60) -> str:
    """A running run with two steps and ``lines`` log lines: level LEVELS[seq % 5], source
    SOURCES[seq % 3], "needle" in every 10th message."""
    run_id = str(uuid.uuid4())
    await agent.checkin(
        run_updates=[
            run_update(
                run_id,
                RUNNING,
                steps_total=4,
                steps_done=1,
                started_at=ts(),
                steps=[step(0, "move_legacy_config", "succeeded", 500), step(1, "b", "running")],
            )
        ],
        log_lines=[
            log_line(
                run_id,
                seq,
                level=LEVELS[seq % 5],
                source=SOURCES[seq % 3],
                message=("found the NEEDLE" if seq % 10 == 0 else "plain") + f" {seq}",
                metadata={"seq": str(seq)},
            )
            for seq in range(1, lines + 1)
        ],
    )
    return run_id


async def test_run_logs_filters_stats_and_sources(
    running_server: RunningServer, channel: grpc.aio.Channel, http: aiohttp.ClientSession
) -> None:
    agent = await AgentClient.enroll(running_server, channel)
    run_id = await seed_run(agent, 60)

    run = await get(http, f"/api/v1/runs/{run_id}")
    assert run["state"] == "RUNNING" and run["hostname"] == "web-1"
    assert run["steps_done"] == 1 and run["steps_total"] == 4 and run["log_lines"] == 60
    assert [s["name"] for s in run["steps"]] == ["move_legacy_config", "b"]
    assert run["progress"] == 0.25 and run["eta_seconds"] == pytest.approx(1.5)

    stats = await get(http, f"/api/v1/runs/{run_id}/logs/stats")
    assert stats == {
        "total": 60,
        "by_level": {"DEBUG": 12, "INFO": 24, "WARNING": 12, "ERROR": 12},
        "by_source": {"detector": 20, "executor": 20, "move_legacy_config": 20},
    }
    sources = await get(http, f"/api/v1/runs/{run_id}/logs/sources")
    assert sources == {"sources": SOURCES}

    page = await get(http, f"/api/v1/runs/{run_id}/logs", limit="25")
    assert [x["seq"] for x in page["lines"]] == list(range(1, 26))
    assert page["next_after_seq"] == 25
    assert page["lines"][0]["metadata"] == {"seq": "1"}
    rest = await get(http, f"/api/v1/runs/{run_id}/logs", after_seq="25", limit="100")
    assert [x["seq"] for x in rest["lines"]] == list(range(26, 61))
    assert rest["next_after_seq"] is None

    async with http.get(
        f"/api/v1/runs/{run_id}/logs",
        params=[("level", "error"), ("level", "WARNING"), ("source", "executor")],
    ) as response:
        filtered = await response.json()
    expected = [s for s in range(1, 61) if LEVELS[s % 5] in ("ERROR", "WARNING") and s % 3 == 1]
    assert [x["seq"] for x in filtered["lines"]] == expected
    found = await get(http, f"/api/v1/runs/{run_id}/logs", q="needle")
    assert [x["seq"] for x in found["lines"]] == [10, 20, 30, 40, 50, 60]
    none = await get(http, f"/api/v1/runs/{run_id}/logs", q="100%_")
    assert none["lines"] == []


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/v1/runs", {"limit": "0"}, "limit"),
        ("/api/v1/runs", {"state": "DANCING"}, "state"),
        ("/api/v1/runs", {"before": "garbage"}, "before"),
        ("/api/v1/runs/{run}/logs", {"level": "LOUD"}, "level"),
        ("/api/v1/runs/{run}/logs", {"after_seq": "-1"}, "after_seq"),
        ("/api/v1/runs/{run}/logs", {"limit": "99999"}, "limit"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter(
    running_server: RunningServer,
    channel: grpc.aio.Channel,
    http: aiohttp.ClientSession,
    path: str,
    params: dict[str, str],
    field: str,
) -> None:
    agent = await AgentClient.enroll(running_server, channel)
    run_id = await seed_run(agent, 1)
    body = await get(http, path.format(run=run_id), 400, **params)
    assert body["error"] == "invalid_argument"
    assert body["message"].startswith(f"{field}:")


async def test_unknown_run_and_agent_are_404(
    running_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    missing = str(uuid.uuid4())
    for path in (
        f"/api/v1/runs/{missing}",
        f"/api/v1/runs/{missing}/logs",
        f"/api/v1/runs/{missing}/logs/stats",
        f"/api/v1/runs/{missing}/logs/sources",
        f"/api/v1/agents/{missing}",
    ):
        assert (await get(http, path, 404))["error"] == "not_found"


async def test_runs_list_pages_and_filters(
    running_server: RunningServer, channel: grpc.aio.Channel, http: aiohttp.ClientSession
) -> None:
    one = await AgentClient.enroll(running_server, channel, "web-1")
    two = await AgentClient.enroll(running_server, channel, "web-2")
    ids = [await seed_run(one, 0) for _ in range(5)] + [await seed_run(two, 0) for _ in range(2)]
    await two.checkin(
        run_updates=[run_update(ids[-1], agent_pb2.RUN_STATE_SUCCEEDED, finished_at=ts())]
    )

    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "3"} | ({"before": cursor} if cursor else {})
        page = await get(http, "/api/v1/runs", **params)
        seen.extend(r["id"] for r in page["runs"])
        cursor = page["next_before"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 7  # every run once, no gap

    mine = await get(http, "/api/v1/runs", agent=two.agent_id)
    assert {r["id"] for r in mine["runs"]} == set(ids[5:])
    done = await get(http, "/api/v1/runs", state="succeeded")
    assert [r["id"] for r in done["runs"]] == [ids[-1]]
    assert done["runs"][0]["terminal"] is True


async def test_cancel_and_request_run(
    running_server: RunningServer, channel: grpc.aio.Channel, http: aiohttp.ClientSession
) -> None:
    agent = await AgentClient.enroll(running_server, channel)
    run_id = await seed_run(agent, 0)
    json_headers = {"Content-Type": "application/json"}

    # A cross-site form post (form encoding) cannot trigger it.
    async with http.post(f"/api/v1/runs/{run_id}/cancel", data={"x": "1"}) as response:
        assert response.status == 415
        assert (await response.json())["error"] == "unsupported_media_type"
    async with http.post(
        f"/api/v1/runs/{run_id}/cancel", data="{}", headers=json_headers
    ) as response:
        assert response.status == 202
        action = (await response.json())["action"]
    assert action["kind"] == "cancel_run" and action["params"] == {"run_id": run_id}
    assert action["requested_by"] == "alice"  # the logged-in user
    run = await get(http, f"/api/v1/runs/{run_id}")
    assert run["cancel_pending"] is True and run["cancel_requested_by"] == "alice"
    reply = await agent.checkin()
    assert [a.action_id for a in reply.actions] == [action["action_id"]]

    await agent.checkin(
        run_updates=[run_update(run_id, agent_pb2.RUN_STATE_CANCELLED, finished_at=ts())]
    )
    async with http.post(f"/api/v1/runs/{run_id}/cancel", json={}) as response:
        assert response.status == 409
        assert (await response.json())["error"] == "conflict"

    async with http.post(
        f"/api/v1/agents/{agent.agent_id}/runs", json={"migration_id": "agent-config"}
    ) as response:
        assert response.status == 202
        requested = (await response.json())["action"]
    assert requested["kind"] == "run_migration"
    assert requested["params"] == {"migration_id": "agent-config"}
    detail = await get(http, f"/api/v1/agents/{agent.agent_id}")
    assert [a["action_id"] for a in detail["pending_actions"]] == [
        action["action_id"],
        requested["action_id"],
    ]
    assert detail["hostname"] == "web-1" and detail["health"] == "online"
    assert [r["id"] for r in detail["runs"]] == [run_id]
    async with http.post(f"/api/v1/agents/{uuid.uuid4()}/runs", json={}) as response:
        assert response.status == 404
    async with http.post(
        f"/api/v1/agents/{agent.agent_id}/runs", data="[1]", headers=json_headers
    ) as response:
        assert response.status == 400
        assert (await response.json())["message"].startswith("body:")

    agents = await get(http, "/api/v1/agents")
    assert [a["id"] for a in agents["agents"]] == [agent.agent_id]
