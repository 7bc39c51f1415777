"""Live History: Server-Sent Events, the event bus, LISTEN/NOTIFY across replicas.

Real databases (SQLite and PostgreSQL), real aiohttp servers, real gRPC check-ins, and for the
cross-replica test a second server in its own process (``python -m server serve``), so the
in-process bus cannot be what carries the event.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp
from server_testlib import browser_logged_in, logged_in_http, make_server_config, save_screenshot
from sqlalchemy import text
from test_history_web import AGENTS, XSS_MESSAGE, _event, build_app, seed, start_client

from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server import app_keys
from server.app import RunningServer, bus_ctx, start_server
from server.config import ServerConfig, load_config
from server.domain import EventStatus, EventType, NewEvent
from server.services import enrollment
from server.services import users as users_service
from server.services.bus import EventBus, PostgresEventBus
from server.storage import notify
from server.storage.db import create_engine_for_url, make_sessionmaker
from server.storage.events import insert_events
from server.web.auth import SESSION_COOKIE
from server.web.history.stream import STREAM_SETTINGS, StreamSettings

if TYPE_CHECKING:
    from server_testlib import WatchedPage

FAST = StreamSettings(heartbeat_seconds=0.3, disconnect_check_seconds=0.05, batch_size=4)
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- SSE client


@dataclass
class Frame:
    """One SSE block: fields as sent (``id`` is None when absent)."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    comments: list[str] = field(default_factory=list)
    retry: str | None = None

    @property
    def payload(self) -> dict[str, Any]:
        assert self.data is not None
        return dict(json.loads(self.data))


class SseStream:
    """A minimal, strict SSE reader over an aiohttp response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.last_id: str | None = None  # what an EventSource would send as Last-Event-ID

    async def frame(self, timeout: float = 5.0) -> Frame:
        frame = Frame()
        seen = False
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("stream ended")
                line = raw.decode("utf-8").rstrip("\n")
                assert "\r" not in line
                if line == "":
                    if seen:
                        if frame.id is not None:
                            self.last_id = frame.id
                        return frame
                    continue
                seen = True
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "":
                    frame.comments.append(value)
                elif name in {"id", "event", "retry"}:
                    setattr(frame, name, value)
                elif name == "data":
                    assert frame.data is None, "one data line per frame"
                    frame.data = value
                else:
                    raise AssertionError(f"unexpected field {name!r}")

    async def events(self, count: int, timeout: float = 5.0) -> list[Frame]:
        """The next ``count`` event frames (heartbeats and bare ids are consumed on the way)."""
        found: list[Frame] = []
        async with asyncio.timeout(timeout):
            while len(found) < count:
                frame = await self.frame(timeout)
                if frame.event == "event":
                    found.append(frame)
        return found

    async def quiet(self, seconds: float) -> list[Frame]:
        """Event frames arriving within ``seconds`` (expecting none, usually)."""
        found: list[Frame] = []
        try:
            async with asyncio.timeout(seconds):
                while True:
                    frame = await self.frame(seconds + 1)
                    if frame.event == "event":
                        found.append(frame)
        except TimeoutError:
            pass
        return found

    def close(self) -> None:
        self.response.close()


async def open_stream(
    session: aiohttp.ClientSession,
    url: str,
    params: list[tuple[str, str]] | None = None,
    last_event_id: str | None = None,
) -> SseStream:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    response = await session.get(url, params=params or [], headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    stream = SseStream(response)
    first = await stream.frame()
    assert first.retry is not None and first.comments and first.comments[0].startswith("after ")
    return stream


def ids_of(frames: list[Frame]) -> list[int]:
    return [int(f.id or "0") for f in frames]


# --------------------------------------------------------------------------- writing events


async def commit_events(
    db_url: str, bus: EventBus, batches: list[list[NewEvent]]
) -> list[list[int]]:
    """Store each batch in its own transaction exactly as the ingest writer does (ordered-write
    lock, insert, announce inside the transaction; publish after the commit). Returns the ids."""
    engine = create_engine_for_url(db_url)
    sessions = make_sessionmaker(engine)
    stored: list[list[int]] = []
    try:
        for batch in batches:
            async with sessions() as session, session.begin():
                await notify.lock_history_writes(session)
                inserted = await insert_events(session, batch, datetime.now(UTC))
                max_id = await notify.announce_history_commit(session)
            assert max_id is not None and inserted == len(batch)
            bus.publish_committed(max_id)
            # Under the ordered-write lock a batch's ids are consecutive and end at max_id.
            stored.append(list(range(max_id - inserted + 1, max_id + 1)))
    finally:
        await engine.dispose()
    return stored


_counter = iter(range(10_000, 1_000_000))


def new_event(
    agent: int = 0,
    status: EventStatus = EventStatus.FAILED,
    message: str = "",
    event_type: EventType = EventType.MIGRATION_EXECUTION,
) -> NewEvent:
    i = next(_counter)
    return _event(i, list(AGENTS)[agent], event_type, status, message=message or f"live {i}")


# --------------------------------------------------------------------------- app fixtures


def with_bus(settings: StreamSettings = FAST) -> Any:
    def extra(app: web.Application) -> None:
        app.cleanup_ctx.append(bus_ctx)
        app[STREAM_SETTINGS] = settings

    return extra


@pytest.fixture
async def live(db_url: str) -> AsyncIterator[tuple[Any, EventBus, str]]:
    """A web app with the bus (SQLite: in-process; PostgreSQL: LISTEN/NOTIFY) on a seeded DB."""
    await seed(db_url)
    client = await start_client(build_app(db_url, page_size=10, extra=with_bus()))
    try:
        yield client, client.app[app_keys.BUS], db_url
    finally:
        await client.close()


# --------------------------------------------------------------------------- tests: stream


async def test_stream_resumes_with_last_event_id_without_gap_or_duplicate(
    live: tuple[Any, EventBus, str],
) -> None:
    client, bus, db_url = live
    assert isinstance(bus, PostgresEventBus) == db_url.startswith("postgresql")
    url = str(client.make_url("/history/stream"))
    async with aiohttp.ClientSession(cookie_jar=client.session.cookie_jar) as http:
        first = await open_stream(http, url)
        written = await commit_events(
            db_url, bus, [[new_event()], [new_event(1), new_event(2)], [new_event()]]
        )
        frames = await first.events(3)
        first.close()
        # While nobody listens: more rows, in several commits (one has more than a batch).
        written += await commit_events(
            db_url, bus, [[new_event(i % 3) for i in range(6)], [new_event(2)]]
        )
        assert first.last_id == frames[-1].id
        second = await open_stream(http, url, last_event_id=first.last_id)
        expected = [i for batch in written for i in batch]
        frames += await second.events(len(expected) - 3)
        assert await second.quiet(0.5) == []
        second.close()

    assert ids_of(frames) == expected  # together: the stored sequence, no gap, no duplicate
    for frame in frames:
        body = frame.payload
        assert body["event"]["id"] == int(frame.id or 0)
        assert f'id="event-{body["event"]["id"]}"' in body["html"]


async def test_a_stream_ends_when_its_session_ends(live: tuple[Any, EventBus, str]) -> None:
    """Logging out (or the session expiring, or the user being deleted) also ends the live
    streams that session opened: they re-check it at every heartbeat."""
    client, _bus, _db_url = live
    url = str(client.make_url("/history/stream"))
    async with aiohttp.ClientSession(cookie_jar=client.session.cookie_jar) as http:
        stream = await open_stream(http, url)
        cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))[SESSION_COOKIE]
        assert await users_service.logout(client.app[app_keys.SESSIONS], cookie.value)
        rest = await asyncio.wait_for(stream.response.content.read(), timeout=5)
        assert b"event: event" not in rest  # ended at a heartbeat, nothing more sent
        assert stream.response.content.at_eof()


async def test_stream_respects_filters_and_moves_past_other_rows(
    live: tuple[Any, EventBus, str],
) -> None:
    client, bus, db_url = live
    url = str(client.make_url("/history/stream"))
    params = [("severity", "error"), ("agent", list(AGENTS)[1]), ("q", "wanted")]
    async with aiohttp.ClientSession(cookie_jar=client.session.cookie_jar) as http:
        stream = await open_stream(http, url, params)
        noise = [new_event(0, message="wanted but other agent"), new_event(1, EventStatus.SUCCESS)]
        wanted = new_event(1, message="wanted one")
        written = await commit_events(db_url, bus, [noise, [wanted], [new_event(2)]])
        frames = await stream.events(1)
        assert frames[0].payload["event"]["event_id"] == wanted.event_id
        # The rows after it did not match, but the cursor still moves past them (a bare id).
        async with asyncio.timeout(3):
            while stream.last_id != str(written[-1][-1]):
                frame = await stream.frame()
                assert frame.event != "event"
        stream.close()

        # Resume from there: only later matching rows come, none of the skipped ones.
        later = new_event(1, message="wanted again")
        more = await commit_events(db_url, bus, [[new_event(0)], [later]])
        resumed = await open_stream(http, url, params, last_event_id=stream.last_id)
        frames = await resumed.events(1)
        assert frames[0].payload["event"]["event_id"] == later.event_id
        assert int(frames[0].id or 0) == more[1][0]
        assert await resumed.quiet(0.4) == []
        resumed.close()


async def test_after_param_heartbeats_and_escaped_html(live: tuple[Any, EventBus, str]) -> None:
    client, bus, db_url = live
    page = await client.get("/history")
    body = await page.text()
    match = re.search(r'data-live-url="([^"]+)" data-live-after="(\d+)"', body)
    assert match is not None, "the first page is live"
    after = match.group(2)
    assert 'src="/static/history.js' in body
    # A row committed between the page render and the stream's start is not lost.
    hostile = new_event(2, EventStatus.WARNING, message=XSS_MESSAGE)
    [[hostile_id]] = await commit_events(db_url, bus, [[hostile]])
    async with aiohttp.ClientSession(cookie_jar=client.session.cookie_jar) as http:
        stream = await open_stream(
            http, str(client.make_url("/history/stream")), [("after", after)]
        )
        [frame] = await stream.events(1)
        assert int(frame.id or 0) == hostile_id
        html = frame.payload["html"]
        assert XSS_MESSAGE not in html
        assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
        assert frame.payload["event"]["message"] == XSS_MESSAGE
        # The streamed row is the page's own row markup.
        page_html = await (await client.get("/history")).text()
        start = page_html.index(f'id="event-{hostile_id}"')
        page_row = page_html[page_html.rindex("<li", 0, start) : page_html.index("</li>", start)]
        assert _without_relative(page_row) in _without_relative(html)
        # Heartbeats while nothing happens.
        heartbeat = await stream.frame(timeout=2)
        assert heartbeat.comments == ["keepalive"] and heartbeat.event is None
        stream.close()

    # An older page is not live.
    older = await (await client.get("/history", params={"before": str(hostile_id)})).text()
    assert "data-live-url" not in older and "history.js" not in older


def _without_relative(fragment: str) -> str:
    fragment = re.sub(r'<span class="relative">[^<]*</span>', "", fragment)
    return re.sub(r"\s+", " ", fragment).strip()


async def test_bad_stream_params_are_400_naming_the_param(
    live: tuple[Any, EventBus, str],
) -> None:
    client, _bus, _db_url = live
    for params, headers, name in [
        ({"after": "-1"}, {}, "after"),
        ({"after": "x"}, {}, "after"),
        ({}, {"Last-Event-ID": "12abc"}, "Last-Event-ID"),
        ({"before": "10"}, {}, "before"),
        ({"severity": "fatal"}, {}, "severity"),
    ]:
        response = await client.get("/history/stream", params=params, headers=headers)
        assert response.status == 400, params
        assert name in await response.text()
        assert "Content-Security-Policy" in response.headers


async def test_disconnects_and_shutdown_end_streams_cleanly(db_url: str) -> None:
    await seed(db_url, [])
    client = await start_client(build_app(db_url, extra=with_bus()))
    bus = client.app[app_keys.BUS]
    url = str(client.make_url("/history/stream"))
    try:
        async with aiohttp.ClientSession(cookie_jar=client.session.cookie_jar) as http:
            streams = [await open_stream(http, url) for _ in range(3)]
            assert bus.subscribers == 3
            streams[0].close()
            async with asyncio.timeout(3):
                while bus.subscribers != 2:
                    await asyncio.sleep(0.02)
            # Server shutdown ends the remaining streams (no waiting for the shutdown timeout).
            loop = asyncio.get_running_loop()
            started = loop.time()
            await client.close()
            assert loop.time() - started < 2
            for stream in streams[1:]:
                with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
                    while True:
                        await stream.frame(timeout=2)
                stream.close()
    finally:
        await client.close()


async def test_a_bus_without_subscribers_and_coalesced_wakeups() -> None:
    bus = EventBus()
    bus.publish_committed(5)  # nobody listening: nothing happens
    with bus.subscribe() as sub:
        assert bus.subscribers == 1
        assert await sub.wait(0.01) is False
        bus.publish_committed(7)
        bus.publish_committed(9)
        bus.publish_committed(8)
        assert await sub.wait(0.01) is True
        assert sub.take(9) is False  # nothing above the cursor
        assert await sub.wait(0.01) is False
        bus.publish_committed(None)
        assert await sub.wait(0.01) is True and sub.take(100) is True
        bus.publish_committed(12)
        assert sub.take(10) is True
        bus.end_streams()
        assert sub.closed and await sub.wait(1) is True
    assert bus.subscribers == 0
    assert bus.subscribe().closed  # after shutdown, new streams end at once


async def test_concurrent_writers_become_visible_in_id_order(
    live: tuple[Any, EventBus, str],
) -> None:
    """Two writers (as two replicas would be): the second cannot take ids while the first is
    uncommitted, so a stream never sees a higher id before a lower one (no skipped rows)."""
    client, bus, db_url = live
    engine = create_engine_for_url(db_url)
    sessions = make_sessionmaker(engine)
    first, second = new_event(0), new_event(1)
    async with aiohttp.ClientSession(cookie_jar=client.session.cookie_jar) as http:
        stream = await open_stream(http, str(client.make_url("/history/stream")))
        try:
            async with sessions() as session, session.begin():
                await notify.lock_history_writes(session)
                await insert_events(session, [first], datetime.now(UTC))
                other = asyncio.create_task(commit_events(db_url, bus, [[second]]))
                await asyncio.sleep(0.5)
                assert not other.done(), "a second writer must wait for the first to commit"
                max_id = await notify.announce_history_commit(session)
            assert max_id is not None
            bus.publish_committed(max_id)
            [[second_id]] = await other
            frames = await stream.events(2)
        finally:
            await engine.dispose()
        stream.close()
    assert [f.payload["event"]["event_id"] for f in frames] == [first.event_id, second.event_id]
    assert ids_of(frames) == [second_id - 1, second_id]


# --------------------------------------------------------------------------- through gRPC


def ts(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def failure_event(message: str, **overrides: Any) -> agent_pb2.MigrationEvent:
    fields: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": agent_pb2.EVENT_TYPE_MIGRATION_EXECUTION,
        "status": agent_pb2.EVENT_STATUS_FAILED,
        "message": message,
        "error_message": "[Errno 13] Permission denied: '/etc/flagpost-legacy/agent.conf'",
        "error_detail": agent_pb2.ErrorDetail(
            failing_step="move_legacy_config",
            errno=13,
            errno_name="EACCES",
            rollback="succeeded",
        ),
        "migration_from": "1",
        "migration_to": "2",
        "occurred_at": ts(datetime.now(UTC) - timedelta(seconds=1)),
        "system_info": {"os": "Debian 12"},
        "run_id": str(uuid.uuid4()),
    }
    fields.update(overrides)
    return agent_pb2.MigrationEvent(**fields)


class Agent:
    """A gRPC client enrolled on a server (token from any replica: they share the database)."""

    def __init__(self, channel: grpc.aio.Channel, agent_id: str, credential: str) -> None:
        self.stub = agent_pb2_grpc.AgentServiceStub(channel)
        self.agent_id = agent_id
        self.credential = credential
        self.facts = agent_pb2.HostFacts()

    @classmethod
    async def enroll(cls, channel: grpc.aio.Channel, token: str, hostname: str) -> Agent:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        facts = agent_pb2.HostFacts(hostname=hostname, os="Debian 12", agent_version="0.1.0")
        reply = await stub.Enroll(agent_pb2.EnrollRequest(token=token, facts=facts))
        agent = cls(channel, reply.agent_id, reply.credential)
        agent.facts = facts  # sent with every check-in: the credential is bound to its machine
        return agent

    async def check_in(self, *events: agent_pb2.MigrationEvent) -> list[str]:
        reply = await self.stub.CheckIn(
            agent_pb2.CheckInRequest(agent_id=self.agent_id, facts=self.facts, events=list(events)),
            metadata=(("authorization", f"Bearer {self.credential}"),),
        )
        return list(reply.acknowledged_event_ids)


def require_bus(server: RunningServer) -> EventBus:
    if app_keys.BUS not in server.app:
        pytest.fail(
            "the event bus is not wired into server.app: add bus_ctx to create_app's "
            "cleanup_ctx and writer.add_commit_listener(app[app_keys.BUS].on_ingest_commit)"
        )
    return server.app[app_keys.BUS]


async def test_grpc_checkins_reach_the_stream_and_resume(running_server: RunningServer) -> None:
    require_bus(running_server)
    token = await enrollment.create_token(running_server.app[app_keys.SESSIONS], uses=2)
    url = f"{running_server.web_url}/history/stream"
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as channel,
        logged_in_http(running_server, "viewer") as http,
    ):
        web_agent = await Agent.enroll(channel, token, "web-live")
        db_agent = await Agent.enroll(channel, token, "db-live")
        everything = await open_stream(http, url)
        only_db = await open_stream(http, url, [("agent", db_agent.agent_id)])

        sent: list[str] = []
        for i in range(4):
            batch = [failure_event(f"check-in {i} event {j}") for j in range(i + 1)]
            agent = db_agent if i % 2 else web_agent
            assert await agent.check_in(*batch) == [e.event_id for e in batch]
            sent += [e.event_id for e in batch]
        frames = await everything.events(4)
        everything.close()
        # Reconnect with the last id seen; meanwhile another check-in lands.
        late = [failure_event("while disconnected")]
        await web_agent.check_in(*late)
        sent += [e.event_id for e in late]
        resumed = await open_stream(http, url, last_event_id=everything.last_id)
        frames += await resumed.events(len(sent) - 4)
        assert await resumed.quiet(0.3) == []
        resumed.close()
        assert [f.payload["event"]["event_id"] for f in frames] == sent
        assert ids_of(frames) == sorted(set(ids_of(frames)))

        db_frames = await only_db.events(2 + 4)  # check-ins 1 and 3 (2 and 4 events): db-live
        assert {f.payload["event"]["hostname"] for f in db_frames} == {"db-live"}
        assert await only_db.quiet(0.3) == []
        only_db.close()


# --------------------------------------------------------------------------- across replicas


@pytest.fixture
def subprocess_replica(db_url: str, tmp_path: Path) -> Iterator[int]:
    """``python -m server serve`` on the same PostgreSQL: the ingesting replica. Yields its
    gRPC port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "serve",
            "--database-url",
            db_url,
            "--grpc-port",
            "0",
            "--web-port",
            "0",
            "--state-dir",
            str(tmp_path / "replica-a"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("grpc: "):
            process.kill()
            _, err = process.communicate(timeout=10)
            pytest.fail(f"replica did not start: {line!r} {err[-2000:]}")
        yield int(line.rsplit(":", 1)[1])
    finally:
        process.terminate()
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


async def _terminate_listener(db_url: str) -> int:
    engine = create_engine_for_url(db_url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :name AND datname = current_database()"
                ),
                {"name": notify.LISTENER_APPLICATION_NAME},
            )
            return len(result.all())
    finally:
        await engine.dispose()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_event_ingested_by_one_replica_reaches_the_others_stream(
    db_url: str, subprocess_replica: int, tmp_path: Path
) -> None:
    pg_db_url = db_url
    # Replicas share the signing and input keys (README: scale-out); B gets A's files.
    (tmp_path / "replica-b").mkdir()
    for name in ("signing-key.pem", "inputs.key"):
        shutil.copy2(tmp_path / "replica-a" / name, tmp_path / "replica-b" / name)
    config: ServerConfig = load_config(
        env={},
        overrides={
            "database_url": pg_db_url,
            "grpc_port": 0,
            "web_port": 0,
            "state_dir": tmp_path / "replica-b",
        },
    )
    replica_b = await start_server(config)
    try:
        bus = require_bus(replica_b)
        assert isinstance(bus, PostgresEventBus)
        token = await enrollment.create_token(replica_b.app[app_keys.SESSIONS])
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{subprocess_replica}") as channel_a,
            logged_in_http(replica_b, "viewer") as http,
        ):
            agent = await Agent.enroll(channel_a, token, "replica-a-host")
            stream = await open_stream(http, f"{replica_b.web_url}/history/stream")
            first = failure_event("ingested by replica A")
            assert await agent.check_in(first) == [first.event_id]
            [frame] = await stream.events(1, timeout=5)
            assert frame.payload["event"]["event_id"] == first.event_id
            assert frame.payload["event"]["hostname"] == "replica-a-host"
            assert bus.listener.notifications >= 1

            # The LISTEN connection dies; the listener reconnects and nothing is lost.
            assert await _terminate_listener(pg_db_url) >= 1  # both replicas' listeners
            async with asyncio.timeout(10):
                while bus.listener.connections < 2 or not bus.listener.connected:
                    await asyncio.sleep(0.05)
            second = failure_event("after the listener reconnected")
            assert await agent.check_in(second) == [second.event_id]
            [frame] = await stream.events(1, timeout=5)
            assert frame.payload["event"]["event_id"] == second.event_id
            stream.close()
    finally:
        await replica_b.stop()


# --------------------------------------------------------------------------- in a browser

LIVE_SCREENSHOT = Path("/tmp/history-live.png")


@pytest.mark.browser
async def test_new_failure_appears_in_chromium_without_reload(
    sqlite_db_url: str, tmp_path: Path, browser_page: WatchedPage
) -> None:
    from playwright.async_api import expect

    config = make_server_config(sqlite_db_url, tmp_path)
    server = await start_server(config)
    page = browser_page.page
    try:
        require_bus(server)
        token = await enrollment.create_token(server.app[app_keys.SESSIONS])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            agent = await Agent.enroll(channel, token, "edge-07")
            healthy = failure_event(
                "Migration 1 → 2 applied",
                status=agent_pb2.EVENT_STATUS_SUCCESS,
                error_message="",
                error_detail=agent_pb2.ErrorDetail(),
            )
            await agent.check_in(healthy)

            # Failures only: the page starts empty (the one event is a success).
            await browser_logged_in(server, page, "viewer")
            await page.goto(f"{server.web_url}/history?severity=error")
            await expect(page.locator(".empty-state")).to_be_visible()
            live = page.locator("#live-status")
            await expect(live).to_have_attribute("data-state", "live")
            await expect(live).to_contain_text("Live")
            await page.evaluate("window.__noReload = 1")

            failure = failure_event("Migration 1 → 2 failed: config directory is read-only")
            hostile = failure_event(XSS_MESSAGE)
            other_success = failure_event("not a failure", status=agent_pb2.EVENT_STATUS_SUCCESS)
            await agent.check_in(other_success, failure, hostile)
            rows = page.locator("li.event")
            new_row = page.locator("li.event", has_text="config directory is read-only")
            await expect(new_row).to_be_visible(timeout=2000)
            await expect(rows).to_have_count(2, timeout=2000)
            await expect(page.locator(".empty-state")).to_be_hidden()
            await expect(live).to_contain_text("2 new")
            # Newest first, shown as text, never run; the success was filtered out.
            await expect(rows.first.locator(".cell-message")).to_contain_text(XSS_MESSAGE)
            await expect(page.locator("li.event", has_text="not a failure")).to_have_count(0)
            assert await page.evaluate("typeof window.__pwned") == "undefined"
            assert await page.evaluate("window.__noReload") == 1

            # The live row expands like any other (no JavaScript involved).
            await new_row.locator("summary.event-summary").click()
            detail = new_row.locator(".event-detail")
            await expect(detail).to_contain_text("EACCES (errno 13)")
            await expect(detail).to_contain_text("move_legacy_config")
            await save_screenshot(page, str(LIVE_SCREENSHOT))

            # A reload shows the same rows, once each.
            await page.reload()
            await expect(rows).to_have_count(2)
            await expect(live).to_have_attribute("data-state", "live")
    finally:
        await server.stop()
    assert browser_page.dialogs == []
    assert browser_page.problems == []  # includes CSP violations, reported as console errors
