"""The rollouts pages (``/rollouts``, ``/rollouts/new``, ``/rollouts/{id}``) and their form posts
(create, pause, resume, abort) on a real server (gRPC + web, its rollout scheduler running) on
SQLite and PostgreSQL; agents are real gRPC clients taking the rollout's run actions and
reporting runs."""

from __future__ import annotations

import html
import re
import uuid
from pathlib import Path

import aiohttp
import grpc
import pytest
from agent_tests.spec_testlib import SAMPLE
from rollouts_testlib import answer_until, until_state
from runs_testlib import AgentClient
from server_testlib import logged_in_http, make_server_config

from flagpost.v1 import agent_pb2
from server import app_keys
from server.app import RunningServer
from server.config import ServerConfig
from server.domain import RolloutHostState, RolloutState
from server.services import rollouts as rollouts_service
from server.services import specs as specs_service


@pytest.fixture
def server_config(db_url: str, tmp_path: Path) -> ServerConfig:
    """The default check-in interval: the agents stay online (selectable) for the whole test."""
    return make_server_config(db_url, tmp_path)


XSS = "<script>window.__pwned=1</script>"
ESCAPED = html.escape(XSS, quote=False)


async def enroll(
    server: RunningServer, channel: grpc.aio.Channel, *hosts: str
) -> list[AgentClient]:
    agents = []
    for host in hosts:
        agent = await AgentClient.enroll(server, channel, host)
        agent.facts.labels.update({"env": "prod"})
        await agent.checkin()
        agents.append(agent)
    return agents


def form(**fields: str) -> dict[str, str]:
    """A new-rollout form post: the defaults of the page, ``fields`` on top."""
    return {
        "spec_id": "myapp",
        "revision": "",
        "select": "",
        "waves": "1, 10%, 100%",
        "max_failure_rate": "",
        "max_failures": "",
        "soak": "0",
        "wave_timeout": "30m",
        **fields,
    }


def field_error(page: str) -> tuple[str, str]:
    """(the field the form's error names, its message) of a re-rendered form."""
    match = re.search(
        r'<div class="form-errors" id="rollout-errors" role="alert" data-field="([^"]*)">'
        r"(.*?)</div>",
        page,
        re.S,
    )
    assert match is not None, page
    return match.group(1), html.unescape(re.sub(r"<[^>]+>", "", match.group(2)))


def input_value(page: str, name: str) -> str:
    match = re.search(rf'<input[^>]*name="{name}" value="([^"]*)"', page)
    assert match is not None, name
    return html.unescape(match.group(1))


async def post(
    http: aiohttp.ClientSession, path: str, data: dict[str, str]
) -> aiohttp.ClientResponse:
    async with http.post(path, data=data, allow_redirects=False) as reply:
        await reply.read()
        return reply


async def test_admin_creates_from_the_form_and_errors_name_the_field(
    running_server: RunningServer,
) -> None:
    server = running_server
    await specs_service.add_spec(server.app[app_keys.SESSIONS], SAMPLE, "toml", "alice")
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
        logged_in_http(server, "admin", base_url=True) as http,
    ):
        await enroll(server, channel, "web-1", "web-2", "web-3")
        async with http.get("/rollouts") as reply:
            assert reply.status == 200
            page = await reply.text()
        assert 'aria-current="page">Rollouts' in page and "No rollouts yet." in page
        assert 'id="new-rollout" href="/rollouts/new"' in page

        async with http.get("/migrations/myapp") as reply:
            assert 'id="new-rollout" href="/rollouts/new?spec=myapp"' in await reply.text()
        async with http.get("/rollouts/new?spec=myapp") as reply:
            assert reply.status == 200
            page = await reply.text()
        assert '<option value="myapp" selected>' in page
        assert input_value(page, "waves") == "1, 10%, 100%"
        assert 'id="selector-count"' in page and "targets.js" in page and "rollout_new.js" in page

        cases = [
            (form(waves="1, ten, 100%"), "waves", "wave 2 ('ten') is not a host count"),
            (form(waves="1, 50%"), "waves", "end the waves with 100%"),
            (form(select="env=dev"), "select", "picks no host"),
            (form(select="role in (web"), "select", "expected ')'"),
            (form(max_failure_rate="lots"), "max_failure_rate", "'lots' is not a percentage"),
            (form(max_failures="-1"), "max_failures", "must be an integer"),
            (form(soak="5 min"), "soak", "'5 min' is not a duration"),
            (form(wave_timeout="0"), "wave_timeout", "must be at least 1 second"),
            (form(revision="9"), "revision", "9"),
            (form(spec_id="nope"), "spec_id", "nope"),
            (form(spec_id=""), "spec_id", "choose the spec"),
        ]
        for data, field, words in cases:
            reply = await post(http, "/rollouts", data)
            assert reply.status == 400, (data, reply.status)
            async with http.post("/rollouts", data=data, allow_redirects=False) as again:
                page = await again.text()
            named, message = field_error(page)
            assert named == field and words in message, (field, named, message)
            # What was typed is kept.
            for name in ("select", "waves", "max_failure_rate", "soak", "wave_timeout"):
                assert input_value(page, name) == data[name], name
        assert await rollouts_service.list_rollouts(server.app[app_keys.SESSIONS]) == []

        async with http.post(
            "/rollouts",
            data=form(select="env=prod", waves="1, 100%", max_failure_rate="5%", soak="1h"),
            allow_redirects=False,
        ) as reply:
            assert reply.status == 303
            location = reply.headers["Location"]
        rollout_id = location.removeprefix("/rollouts/")
        assert uuid.UUID(rollout_id) and location == f"/rollouts/{rollout_id}"
        async with http.get(location) as reply:
            assert reply.status == 200
            page = await reply.text()
        assert 'id="rollout-state">RUNNING</span>' in page
        assert "halts when more than 5% of a wave fails" in page
        assert "<code>env=prod</code>" in page and "1h" in page
        # RUNNING: pause, abort and abort-and-revert show; resume does not.
        assert re.search(r'id="pause-form" data-to="PAUSED">', page)
        assert re.search(r'id="resume-form" data-to="RUNNING" hidden>', page)
        assert re.search(r'id="abort-form" data-to="ABORTED">', page)
        assert re.search(r'id="revert-form" data-to="REVERTING">', page)
        assert page.count('role="meter"') == 2
        assert 'data-gate="0.05"' in page

        async with http.get("/rollouts") as reply:
            page = await reply.text()
        assert f'href="/rollouts/{rollout_id}"' in page
        assert 'href="/migrations/myapp?revision=1"' in page
        assert "wave 1 of 2" in page and "0 / 3" in page
        # Newest first: a second rollout (by the service, as the CLI would) is listed above.
        newer = await rollouts_service.create_rollout(
            server.app[app_keys.SESSIONS], server.app[app_keys.CONFIG], "myapp", "cli:bob"
        )
        async with http.get("/rollouts") as reply:
            page = await reply.text()
        rows = re.findall(r'<tr id="rollout-([^"]+)" data-rollout-id=', page)
        assert rows == [newer.id, rollout_id]
        assert "cli:bob" in page and "wave 1 of 3" in page


async def test_halt_resume_pause_abort_through_the_forms(running_server: RunningServer) -> None:
    server = running_server
    sessions = server.app[app_keys.SESSIONS]
    await specs_service.add_spec(sessions, SAMPLE, "toml", "alice")
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
        logged_in_http(server, "admin", base_url=True) as admin,
        logged_in_http(server, "viewer", base_url=True) as viewer,
    ):
        agents = await enroll(server, channel, XSS, "web-2", "web-3", "web-4")
        made = await rollouts_service.create_rollout(
            sessions,
            server.app[app_keys.CONFIG],
            "myapp",
            "alice",
            waves=["1", "100%"],
            max_failure_rate=0.05,
            wave_timeout_seconds=600,
        )
        url = f"/rollouts/{made.id}"
        await answer_until(agents, agent_pb2.RUN_STATE_FAILED, error=f"convert: {XSS}")
        halted = await until_state(server, made.id, RolloutState.HALTED)
        [failed] = [h for h in halted.hosts if h.state == RolloutHostState.FAILED]

        async with viewer.get(url) as reply:
            assert reply.status == 200
            page = await reply.text()
        assert XSS not in page
        assert ESCAPED in page  # the failed host's error, and the hostname of the first agent
        assert f'<a href="/agents/{agents[0].agent_id}">{ESCAPED}</a>' in page
        assert f"convert: {ESCAPED}" in page
        assert f'href="/runs/{failed.run_id}"' in page
        assert 'id="rollout-state">HALTED</span>' in page
        assert 'class="rate-bar rate-bar-breached" id="wave-1-bar" role="meter"' in page
        assert 'aria-valuenow="100.0"' in page and 'data-breached="true"' in page
        assert 'id="pause-form"' not in page and 'id="rollout-actions"' not in page
        async with viewer.get("/rollouts") as reply:
            listed = await reply.text()
        assert "HALTED" in listed and 'id="new-rollout"' not in listed
        async with viewer.get("/rollouts/new") as reply:
            assert reply.status == 403
        for path, data in (
            ("/rollouts", form()),
            (f"{url}/pause", {}),
            (f"{url}/resume", {"reason": "x"}),
            (f"{url}/abort", {"revert": "1"}),
        ):
            reply = await post(viewer, path, data)
            assert reply.status == 403, path
        still = await rollouts_service.get_rollout(sessions, made.id)
        assert still.rollout.state == RolloutState.HALTED

        async with admin.get(url) as reply:
            page = await reply.text()
        assert re.search(r'id="pause-form" data-to="PAUSED" hidden>', page)
        assert re.search(r'id="resume-form" data-to="RUNNING">', page)
        assert 'name="reason" maxlength="500" autocomplete="off" required>' in page
        assert 'src="/static/rollout.js' in page and 'id="live-status"' in page

        # HALTED resumes only with a reason: the 400 names the field.
        async with admin.post(f"{url}/resume", data={}, allow_redirects=False) as reply:
            assert reply.status == 400
            page = await reply.text()
        [error] = re.findall(
            r'<p class="notice notice-error" id="action-error" role="alert">(.*?)</p>', page
        )
        assert error.startswith("reason: resuming a halted rollout overrides its gate")
        assert 'id="rollout-state">HALTED</span>' in page
        reply = await post(admin, f"{url}/resume", {"reason": f"known bad host {XSS}"})
        assert reply.status == 303 and reply.headers["Location"] == url
        detail = await rollouts_service.get_rollout(sessions, made.id)
        assert detail.rollout.state == RolloutState.RUNNING
        reply = await post(admin, f"{url}/pause", {})
        assert reply.status == 303
        assert (await rollouts_service.get_rollout(sessions, made.id)).rollout.state in (
            RolloutState.PAUSED,
            RolloutState.HALTED,  # the scheduler may halt a paused rollout
        )
        async with admin.get(url) as reply:
            page = await reply.text()
        assert XSS not in page and f"known bad host {ESCAPED}" in page
        assert re.search(r'id="resume-form" data-to="RUNNING">', page)

        reply = await post(admin, f"{url}/abort", {})
        assert reply.status == 303
        aborted = await rollouts_service.get_rollout(sessions, made.id)
        assert aborted.rollout.state == RolloutState.ABORTED
        moves = [(t.from_state, t.to_state.value) for t in aborted.transitions]
        assert moves[:3] == [("", "RUNNING"), ("RUNNING", "HALTED"), ("HALTED", "RUNNING")]
        assert moves[-1][1] == "ABORTED"
        async with admin.get(url) as reply:
            page = await reply.text()
        # ABORTED: only abort-and-revert is left.
        assert re.search(r'id="abort-form" data-to="ABORTED" hidden>', page)
        assert re.search(r'id="revert-form" data-to="REVERTING">', page)
        assert 'data-terminal="true"' in page and 'id="live-status"' not in page
        # A second abort is a conflict; abort and revert moves it on.
        reply = await post(admin, f"{url}/abort", {})
        assert reply.status == 409
        reply = await post(admin, f"{url}/abort", {"revert": "1"})
        assert reply.status == 303
        detail = await rollouts_service.get_rollout(sessions, made.id)
        assert detail.rollout.state in (RolloutState.REVERTING, RolloutState.REVERTED)
        async with admin.get(url) as reply:
            page = await reply.text()
        assert '<p class="muted" id="no-actions">No action applies while the rollout is' in page
        assert re.search(r'id="revert-form" data-to="REVERTING" hidden>', page)
        reply = await post(admin, f"{url}/abort", {"revert": "maybe"})
        assert reply.status == 400

        async with admin.get(f"/rollouts/{uuid.uuid4()}") as reply:
            assert reply.status == 404
        async with admin.get("/rollouts/not-a-uuid") as reply:
            assert reply.status == 404
