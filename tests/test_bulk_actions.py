"""Bulk actions on agents (``POST /api/v1/agents/bulk``) against a real server on SQLite and
PostgreSQL: each action on a selection and on ids, with the counts; real gRPC agents take the
queued actions, and revoked ones are refused; validation names the field; viewers get 403.
Also the CLI forms ``agent revoke --select`` and ``migration run --select``."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from runs_testlib import AgentClient, run_update, ts
from server_testlib import action_body, logged_in_http

from flagpost.v1 import agent_pb2
from server import app_keys
from server.app import RunningServer
from server.services import agents as agents_service
from server.services import runs as runs_service
from server.services import specs as specs_service
from server.services import targets as targets_service

SPEC_SAMPLE = Path(__file__).parent / "agent_tests" / "specs" / "myapp.toml"
BULK = "/api/v1/agents/bulk"
ROOT = Path(__file__).resolve().parent.parent
WEB = "role=web health=any"  # online or not: a loaded machine may miss a check-in


@pytest.fixture
async def channel(running_server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as channel:
        yield channel


async def fleet(server: RunningServer, channel: grpc.aio.Channel) -> dict[str, AgentClient]:
    """web-1, web-2 (role=web), db-1 (role=db), all online."""
    agents: dict[str, AgentClient] = {}
    for host, role in (("web-1", "web"), ("web-2", "web"), ("db-1", "db")):
        agent = await AgentClient.enroll(server, channel, host)
        agent.facts.labels.update({"role": role})
        await agent.checkin()
        agents[host] = agent
    return agents


async def add_spec(server: RunningServer) -> None:
    await specs_service.add_spec(
        server.app[app_keys.SESSIONS], SPEC_SAMPLE.read_text(), "toml", "tester"
    )


async def post(http: aiohttp.ClientSession, url: str, body: Any, status: int = 200) -> Any:
    async with http.post(url, json=body) as reply:
        answer = await reply.json()
        assert reply.status == status, (reply.status, answer)
        return answer


async def kinds_taken(agent: AgentClient) -> list[tuple[str, dict[str, str]]]:
    reply = await agent.checkin()
    return [(body.kind, dict(body.params)) for body in (action_body(a) for a in reply.actions)]


async def test_run_spec_on_a_selection_and_on_ids(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    agents = await fleet(running_server, channel)
    await add_spec(running_server)
    url = running_server.web_url + BULK
    async with logged_in_http(running_server) as admin:
        body = {"action": "run_spec", "spec_id": "myapp", "select": [WEB]}
        assert await post(admin, url, body) == {"matched": 2, "changed": 2}
        for host in ("web-1", "web-2"):
            taken = await kinds_taken(agents[host])
            assert [(k, p["spec_id"], p["spec_revision"]) for k, p in taken] == [
                ("run_migration", "myapp", "1")
            ]
        assert await kinds_taken(agents["db-1"]) == []
        ids = {"agent_ids": [agents["db-1"].agent_id, agents["db-1"].agent_id]}
        body = {"action": "run_spec", "spec_id": "myapp", "revision": 1, **ids}
        assert await post(admin, url, body) == {"matched": 1, "changed": 1}
        assert [k for k, _ in await kinds_taken(agents["db-1"])] == ["run_migration"]
        missing = await post(admin, url, {**body, "revision": 9}, 404)
        assert "revision 9" in missing["message"]


async def test_cancel_runs_marks_cancel_requested(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    agents = await fleet(running_server, channel)
    runs: dict[str, str] = {}
    for host in ("web-1", "web-2", "db-1"):
        runs[host] = str(uuid.uuid4())
        update = run_update(runs[host], agent_pb2.RUN_STATE_RUNNING, steps_total=3, started_at=ts())
        await agents[host].checkin(run_updates=[update])
    done = str(uuid.uuid4())
    await agents["web-1"].checkin(
        run_updates=[run_update(done, agent_pb2.RUN_STATE_SUCCEEDED, finished_at=ts())]
    )
    sessions = running_server.app[app_keys.SESSIONS]
    url = running_server.web_url + BULK
    async with logged_in_http(running_server) as admin:
        body = {"action": "cancel_runs", "select": ["host=web-* health=any"]}
        assert await post(admin, url, body) == {"matched": 2, "changed": 2}
        assert await post(admin, url, body) == {"matched": 2, "changed": 0}  # asked already
        for host in ("web-1", "web-2"):
            detail = await runs_service.get_run(sessions, runs[host])
            assert detail.cancel_pending and detail.run.cancel_requested_by
            assert await kinds_taken(agents[host]) == [("cancel_run", {"run_id": runs[host]})]
        assert not (await runs_service.get_run(sessions, runs["db-1"])).cancel_pending
        assert (await runs_service.get_run(sessions, done)).run.cancel_requested_at is None
        ids = {"action": "cancel_runs", "agent_ids": [agents["db-1"].agent_id]}
        assert await post(admin, url, ids) == {"matched": 1, "changed": 1}
        assert (await runs_service.get_run(sessions, runs["db-1"])).cancel_pending


async def test_tags_on_a_selection_and_on_ids(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    agents = await fleet(running_server, channel)
    app = running_server.app
    url = running_server.web_url + BULK
    async with logged_in_http(running_server) as admin:
        body = {"action": "add_tags", "tags": ["canary", "wave=1"], "select": [WEB]}
        assert await post(admin, url, body) == {"matched": 2, "changed": 2}
        assert await post(admin, url, body) == {"matched": 2, "changed": 0}
        ids = [agents["web-1"].agent_id, agents["db-1"].agent_id]
        body = {"action": "remove_tags", "tags": ["canary"], "agent_ids": ids}
        assert await post(admin, url, body) == {"matched": 2, "changed": 1}
    picked = await targets_service.select_agents(
        app[app_keys.SESSIONS], app[app_keys.CONFIG], ["canary health=any"]
    )
    assert [h for _, h in picked.agents] == ["web-2"]


async def test_revoked_agents_can_no_longer_check_in(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    agents = await fleet(running_server, channel)
    url = running_server.web_url + BULK
    async with logged_in_http(running_server) as admin:
        body = {"action": "revoke", "select": [WEB]}
        assert await post(admin, url, body) == {"matched": 2, "changed": 2}
        for host in ("web-1", "web-2"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await agents[host].checkin()
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        await agents["db-1"].checkin()  # not picked: still checks in
        # a selection never picks revoked agents; listed ids count as matched, not changed
        assert await post(admin, url, body) == {"matched": 0, "changed": 0}
        ids = [agents["web-1"].agent_id, agents["db-1"].agent_id]
        assert await post(admin, url, {"action": "revoke", "agent_ids": ids}) == {
            "matched": 2,
            "changed": 1,
        }
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await agents["db-1"].checkin()
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # run_spec skips revoked agents
        await add_spec(running_server)
        run = {"action": "run_spec", "spec_id": "myapp", "agent_ids": ids}
        assert await post(admin, url, run) == {"matched": 2, "changed": 0}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"select": []}, 400, "action"),
        ({"action": "reboot", "select": []}, 400, "action"),
        ({"action": 3, "select": []}, 400, "action"),
        ({"action": "revoke"}, 400, "select"),
        ({"action": "revoke", "select": [], "agent_ids": ["x"]}, 400, "select"),
        ({"action": "revoke", "select": "role=web"}, 400, "select"),
        ({"action": "revoke", "select": ["role in (web"]}, 400, "select[0]"),
        ({"action": "revoke", "agent_ids": []}, 400, "agent_ids"),
        ({"action": "revoke", "agent_ids": [1]}, 400, "agent_ids"),
        ({"action": "revoke", "select": [], "spec_id": "myapp"}, 400, "spec_id"),
        ({"action": "revoke", "select": [], "colour": "red"}, 400, "colour"),
        ({"action": "run_spec", "select": []}, 400, "spec_id"),
        ({"action": "run_spec", "select": [], "spec_id": "Bad Id"}, 400, "spec_id"),
        ({"action": "run_spec", "select": [], "spec_id": "myapp", "revision": 0}, 400, "revision"),
        ({"action": "run_spec", "select": [], "spec_id": "myapp", "tags": ["x"]}, 400, "tags"),
        ({"action": "add_tags", "select": []}, 400, "tags"),
        ({"action": "add_tags", "select": [], "tags": "canary"}, 400, "tags"),
        ({"action": "remove_tags", "select": [], "tags": ["Bad"]}, 400, "tags[0]"),
        ({"action": "cancel_runs", "agent_ids": ["no-such-agent"]}, 404, ""),
        ({"action": "run_spec", "select": [], "spec_id": "nope"}, 404, ""),
    ],
)
async def test_validation_names_the_field(
    running_server: RunningServer, body: dict[str, Any], status: int, field: str
) -> None:
    async with logged_in_http(running_server) as admin:
        answer = await post(admin, running_server.web_url + BULK, body, status)
    if field:
        assert answer["message"].startswith(f"{field}: "), answer


async def test_the_cap_and_who_may_call(
    running_server: RunningServer, channel: grpc.aio.Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents = await fleet(running_server, channel)
    url = running_server.web_url + BULK
    for module in (targets_service, agents_service):  # the revoke service and the parser
        monkeypatch.setattr(module, "MAX_BULK_AGENTS", 2)
    async with logged_in_http(running_server) as admin:
        many = await post(admin, url, {"action": "revoke", "select": ["health=any"]}, 400)
        assert many["message"] == "select: picks 3 agents; at most 2 per request (narrow it)"
        ids = [a.agent_id for a in agents.values()]
        many = await post(admin, url, {"action": "revoke", "agent_ids": ids}, 400)
        assert many["message"] == "agent_ids: at most 2 ids per request"
    revoke_all = {"action": "revoke", "select": []}
    async with logged_in_http(running_server, "viewer") as viewer:
        assert (await post(viewer, url, revoke_all, 403))["message"]
    async with logged_in_http(running_server, csrf_header=False) as no_csrf:
        await post(no_csrf, url, revoke_all, 403)
    async with (
        logged_in_http(running_server) as admin,
        admin.post(url, data="action=revoke") as reply,
    ):
        assert reply.status == 415
    for agent in agents.values():
        await agent.checkin()  # nothing was revoked


async def cli(server: RunningServer, *args: str) -> tuple[int, str, str]:
    """``flagpost-server ARGS --database-url URL`` as a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    url = server.app[app_keys.CONFIG].database_url
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "server", *args, "--database-url", url),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def refused_within(agent: AgentClient, seconds: float) -> grpc.StatusCode:
    """The status of the first refused check-in of ``agent`` within ``seconds`` (another
    process revoked it: this server forgets its cached credential when it next reads
    ``auth_changes``, about every AUTH_CHANGES_POLL seconds)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            await agent.checkin()
        except grpc.aio.AioRpcError as error:
            return error.code()
        assert time.monotonic() < deadline, "still checking in"
        await asyncio.sleep(0.5)


# each CLI call is a fresh interpreter (~1 s): SQLite only (the services run on both above)
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_cli_select_forms(running_server: RunningServer, channel: grpc.aio.Channel) -> None:
    agents = await fleet(running_server, channel)
    await add_spec(running_server)
    code, out, err = await cli(running_server, "migration", "run", "myapp", "--select", WEB)
    assert (code, out) == (0, "queued myapp on 2 of 2 agents picked\n"), err
    assert [k for k, _ in await kinds_taken(agents["web-2"])] == ["run_migration"]
    run_wait = ("migration", "run", "myapp", "--select", WEB, "--wait")
    code, out, err = await cli(running_server, *run_wait)
    assert code == 1 and err.startswith("flagpost-server: --wait: ") and err.count("\n") == 1
    both = ("agent", "revoke", agents["db-1"].agent_id, "--select", "role=db health=any")
    code, out, err = await cli(running_server, *both)
    assert (code, err) == (1, "flagpost-server: --select: give AGENT_ID or --select, not both\n")
    code, out, err = await cli(running_server, "agent", "revoke")
    assert code == 1 and err.startswith("flagpost-server: AGENT_ID: ") and err.count("\n") == 1
    code, out, err = await cli(running_server, "agent", "revoke", "--select", "role=db health=any")
    assert code == 0 and out.startswith("revoked 1 of 1 agents picked"), err
    # Well within the credential cache's lifetime (AUTH_CACHE_TTL, minutes): the revocation
    # reached this server through auth_changes.
    assert await refused_within(agents["db-1"], 3) == grpc.StatusCode.PERMISSION_DENIED
    await agents["web-1"].checkin()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_only_admins_get_the_bulk_controls(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    await fleet(running_server, channel)
    await add_spec(running_server)
    for role, shown in (("admin", True), ("viewer", False)):
        async with (
            logged_in_http(running_server, role) as http,
            http.get(running_server.web_url + "/") as reply,
        ):
            page = await reply.text()
        assert reply.status == 200
        assert ('id="bulk-action"' in page) is shown
        assert (page.count('class="bulk-row"') == 3) is shown
        assert ("bulk.js" in page) is shown
        assert ('<option value="myapp">myapp</option>' in page) is shown
