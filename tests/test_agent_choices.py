"""A form's agent field at fleet scale: the History, runs and migration pages list the agents
to choose from while the fleet is small, and take an agent id once it has more than
``server.services.history.AGENT_CHOICES_MAX`` (lowered to 2 here; 500 in the product), so a
page never renders the whole fleet. Real servers on SQLite and PostgreSQL, agents enrolled
over gRPC, pages read over HTTP as a logged-in admin."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest
from runs_testlib import AgentClient
from server_testlib import logged_in_http, new_event
from test_migrations_pages import SOURCE

from server import app_keys
from server.app import RunningServer
from server.services import history as history_service
from server.services import specs
from server.storage.events import insert_events

LISTED = re.compile(r'<select id="f-agent" name="agent"')


def typed_field(agent_id: str = "") -> re.Pattern[str]:
    return re.compile(rf'<input id="f-agent" name="agent" type="text" value="{agent_id}"')


async def test_a_small_fleet_is_listed_a_large_one_takes_an_agent_id(
    running_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_service, "AGENT_CHOICES_MAX", 2)
    server = running_server
    sessions = server.app[app_keys.SESSIONS]
    await specs.add_spec(sessions, SOURCE, "toml", "alice")
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
        logged_in_http(server, "admin", base_url=True) as http,
    ):

        async def page(path: str) -> str:
            async with http.get(path) as reply:
                assert reply.status == 200, (path, reply.status)
                return await reply.text()

        a = await AgentClient.enroll(server, channel, "web-1")
        b = await AgentClient.enroll(server, channel, "web-2")
        for path in ("/history", "/runs"):
            text = await page(path)
            assert LISTED.search(text) and not typed_field().search(text), path
            assert f'<option value="{a.agent_id}">web-1</option>' in text, path
            assert f'<option value="{b.agent_id}">web-2</option>' in text, path
        text = await page("/migrations/myapp")
        assert f'<input type="checkbox" name="agent" value="{b.agent_id}">' in text
        assert '<select id="run-agent" name="agent">' in text

        c = await AgentClient.enroll(server, channel, "web-3")
        received = datetime.now(UTC)
        async with sessions() as session, session.begin():
            await insert_events(
                session,
                [
                    replace(new_event(a.agent_id), message="said by web-1"),
                    replace(new_event(c.agent_id), message="said by web-3"),
                ],
                received,
            )
        for path in ("/history", "/runs"):
            text = await page(path)
            assert typed_field().search(text) and not LISTED.search(text), path
            assert "web-1</option>" not in text and "web-2</option>" not in text, path
            text = await page(f"{path}?agent={c.agent_id}")
            assert typed_field(c.agent_id).search(text), path
        text = await page(f"/history?agent={c.agent_id}")
        assert "said by web-3" in text and "said by web-1" not in text

        # The migration forms take agent ids: several, separated by spaces, for a preview.
        text = await page("/migrations/myapp")
        assert 'id="preview-agent" name="agent" type="text"' in text
        assert 'id="run-agent" name="agent" type="text"' in text
        assert 'type="checkbox" name="agent"' not in text
        async with http.post(
            "/migrations/myapp/previews",
            data={"agent": f" {a.agent_id}  {c.agent_id} ", "revision": "1"},
            allow_redirects=False,
        ) as reply:
            assert reply.status == 303
            location = reply.headers["Location"]
        assert len(parse_qs(urlsplit(location).query)["action"]) == 2
        text = await page(location)
        assert text.count('data-pending="true"') == 2
        assert ">web-1</a>" in text and ">web-3</a>" in text and ">web-2</a>" not in text
