"""A History text of 1-2 characters has no trigram: each page examines at most
``SHORT_TEXT_SCAN`` rows (lowered here) of those the other filters select, says where it
stopped, and the next page goes on from there; paged to the end, the results are exactly the
plain substring scan's. On SQLite and PostgreSQL, through the service and through the page of
a real server."""

from __future__ import annotations

import html
import re
from dataclasses import replace
from datetime import UTC, datetime

import grpc
import pytest
from runs_testlib import AgentClient
from server_testlib import logged_in_http, new_event
from sqlalchemy.ext.asyncio import AsyncEngine
from test_history_search import expected, seed

from server import app_keys
from server.app import RunningServer
from server.domain import EventFilter, Severity
from server.services.history import list_events
from server.storage import history
from server.storage.db import make_sessionmaker
from server.storage.events import insert_events

SCAN = 150


async def test_paged_to_the_end_a_short_text_finds_every_match(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "SHORT_TEXT_SCAN", SCAN)
    sessions = make_sessionmaker(engine)
    rows = await seed(sessions)
    ascii_only = engine.dialect.name == "sqlite"
    partial_pages = 0
    for q in ("a", "E", "%", "_", "ß", "日本", "Σ", "qq"):
        for severity in (None, Severity.ERROR):
            f = EventFilter(text=q, severities=(severity,) if severity else (), limit=40)
            ids: list[int] = []
            while True:
                page = await list_events(sessions, f)
                assert len(page.events) <= f.limit
                ids.extend(e.id for e in page.events)
                partial_pages += page.partial
                if page.partial:  # stopped at the bound: the cursor is where it stopped
                    assert page.next_before_id is not None
                    assert all(e.id >= page.next_before_id for e in page.events)
                if page.next_before_id is None:
                    break
                f = replace(f, before_id=page.next_before_id)
            want = expected(rows, q, ascii_only, severity.value if severity else None)
            assert ids == want, (q, severity)
    assert partial_pages > 20  # the bound was reached, often (the test is not vacuous)


async def test_the_page_says_where_it_stopped_and_goes_on(
    running_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "SHORT_TEXT_SCAN", SCAN)
    server = running_server
    sessions = server.app[app_keys.SESSIONS]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agent_id = (await AgentClient.enroll(server, channel, "web-1")).agent_id
    events = [
        replace(new_event(agent_id), message="mentions qx" if i % 100 == 0 else "plain")
        for i in range(1000)
    ]
    async with sessions() as session, session.begin():
        await insert_events(session, events, datetime.now(UTC))
    found: list[str] = []
    partial_pages = 0
    async with logged_in_http(server, "viewer", base_url=True) as http:
        url: str | None = "/history?q=qx"
        while url is not None:
            async with http.get(url) as reply:
                assert reply.status == 200
                text = await reply.text()
            found.extend(re.findall(r'data-event-id="([^"]+)"', text))
            if 'id="partial-search"' in text:
                partial_pages += 1
                assert "Search older events" in text
            nxt = re.search(r'<a class="button button-quiet" rel="next" href="([^"]+)"', text)
            url = html.unescape(nxt.group(1)) if nxt else None
        async with http.get("/api/v1/events?q=qx&limit=50") as reply:
            body = await reply.json()
        assert body["partial"] is True and body["next_before"] is not None
    assert found == [e.event_id for e in reversed(events) if "qx" in e.message]
    assert partial_pages >= 5
