"""The runs pages (``/runs``, ``/runs/{id}``), the run stream, the cancel and "Run migration now"
forms, and the run figures of the overview and the agent page.

Real servers (gRPC + web on one loop, the event bus wired in) on fresh SQLite and PostgreSQL
databases; runs, steps and log lines arrive the way agents send them: gRPC ``CheckIn`` calls
carrying ``run_updates`` and ``log_lines``.
"""

from __future__ import annotations

import asyncio
import html
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp
from server_testlib import action_body, create_web_user, logged_in_http
from test_history_live import Frame, SseStream, open_stream

from agent.uuid7 import uuid7_str
from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server import app_keys
from server.app import RunningServer, create_app
from server.config import ServerConfig
from server.services import enrollment
from server.services import users as users_service
from server.services.bus import EventBus, PostgresEventBus
from server.storage import notify, run_ingest
from server.storage.db import create_engine_for_url, make_sessionmaker
from server.web.runs.stream import RUN_STREAM_SETTINGS, RunStreamSettings

FAST = RunStreamSettings(
    heartbeat_seconds=0.5,
    batch_size=4,
    disconnect_check_seconds=0.05,
    min_interval_seconds=0.02,
    poll_seconds=5.0,
    gap_grace_seconds=1.5,
)
XSS = "<script>window.__pwned=1</script>"
STATES = {
    "PENDING": agent_pb2.RUN_STATE_PENDING,
    "RUNNING": agent_pb2.RUN_STATE_RUNNING,
    "AWAITING_INPUT": agent_pb2.RUN_STATE_AWAITING_INPUT,
    "SUCCEEDED": agent_pb2.RUN_STATE_SUCCEEDED,
    "FAILED": agent_pb2.RUN_STATE_FAILED,
    "PARTIAL": agent_pb2.RUN_STATE_PARTIAL,
    "CANCELLED": agent_pb2.RUN_STATE_CANCELLED,
}
# An AWAITING_INPUT update must say what it waits for.
WAITING_FOR_PASSWORD = agent_pb2.InputRequest(
    request_id="7f1e4a52-3c1b-4b8e-9d0a-5f2e6c7b8a91",
    fields=[agent_pb2.InputField(name="database_password", label="Database password", secret=True)],
)
STEP_NAMES = ["move_legacy_config", "convert_format", "rename_keys", "split_secrets"]


# --------------------------------------------------------------------------- server


async def start_with_settings(
    config: ServerConfig, settings: RunStreamSettings = FAST
) -> RunningServer:
    """``server.app.start_server`` with the run stream's tunables set before start-up."""
    app = create_app(config)
    app[RUN_STREAM_SETTINGS] = settings
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0, access_log=None)
    try:
        await runner.setup()
        await web.TCPSite(runner, config.web_host, 0).start()
    except BaseException:
        await runner.cleanup()
        raise
    port = int(runner.addresses[0][1])
    return RunningServer(app, runner, app[app_keys.PORTS].grpc, port, f"http://127.0.0.1:{port}")


@pytest.fixture
async def server(server_config: ServerConfig) -> AsyncIterator[RunningServer]:
    running = await start_with_settings(server_config)
    try:
        yield running
    finally:
        await running.stop()


# --------------------------------------------------------------------------- a gRPC agent


def ts(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


@dataclass
class RunState:
    """What a fake agent knows about one of its runs."""

    run_id: str
    state: str = "RUNNING"
    steps: list[agent_pb2.StepResult] = field(default_factory=list)
    steps_total: int = len(STEP_NAMES)
    next_seq: int = 1
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class RunAgent:
    """An enrolled agent that reports runs, steps and log lines over gRPC like the real one."""

    def __init__(self, channel: grpc.aio.Channel, agent_id: str, credential: str) -> None:
        self.stub = agent_pb2_grpc.AgentServiceStub(channel)
        self.agent_id = agent_id
        self.credential = credential
        self.facts = agent_pb2.HostFacts()
        self.actions: list[agent_pb2.Action] = []

    @classmethod
    async def enroll(cls, server: RunningServer, channel: grpc.aio.Channel, host: str) -> RunAgent:
        token = await enrollment.create_token(server.app[app_keys.SESSIONS])
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        facts = agent_pb2.HostFacts(hostname=host, os="Debian 12", config_version="1")
        reply = await stub.Enroll(agent_pb2.EnrollRequest(token=token, facts=facts))
        agent = cls(channel, reply.agent_id, reply.credential)
        agent.facts = facts  # sent with every check-in: the credential is bound to its machine
        return agent

    async def check_in(
        self,
        updates: Sequence[agent_pb2.RunUpdate] = (),
        lines: Sequence[agent_pb2.LogLine] = (),
        acked_actions: Sequence[str] = (),
    ) -> agent_pb2.CheckInResponse:
        reply: agent_pb2.CheckInResponse = await self.stub.CheckIn(
            agent_pb2.CheckInRequest(
                agent_id=self.agent_id,
                facts=self.facts,
                run_updates=list(updates),
                log_lines=list(lines),
                acknowledged_action_ids=list(acked_actions),
            ),
            metadata=(("authorization", f"Bearer {self.credential}"),),
        )
        self.actions.extend(reply.actions)
        assert len(reply.acknowledged_run_update_ids) == len(updates)
        return reply

    def update(self, run: RunState, error: str = "") -> agent_pb2.RunUpdate:
        done = sum(1 for s in run.steps if s.status == "succeeded")
        finished = run.state in {"SUCCEEDED", "FAILED", "PARTIAL", "CANCELLED"}
        return agent_pb2.RunUpdate(
            update_id=uuid7_str(),
            run_id=run.run_id,
            state=STATES[run.state],
            steps_done=done,
            steps_total=run.steps_total,
            steps=list(run.steps),
            started_at=ts(run.started_at),
            finished_at=ts(datetime.now(UTC)) if finished else None,
            migration_id="agent-config",
            migration_from="1",
            migration_to="3",
            error_message=error,
            occurred_at=ts(datetime.now(UTC)),
            input_request=WAITING_FOR_PASSWORD if run.state == "AWAITING_INPUT" else None,
        )

    def line(
        self,
        run: RunState,
        message: str,
        level: str = "INFO",
        source: str = "executor",
        **meta: str,
    ) -> agent_pb2.LogLine:
        seq, run.next_seq = run.next_seq, run.next_seq + 1
        return agent_pb2.LogLine(
            run_id=run.run_id,
            seq=seq,
            timestamp=ts(datetime.now(UTC)),
            level=level,
            source=source,
            message=message,
            metadata=meta,
        )

    async def start_run(self, state: str = "RUNNING") -> RunState:
        run = RunState(run_id=str(uuid.uuid4()), state=state)
        await self.check_in([self.update(run)])
        return run


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        yield ch


async def step(agent: RunAgent, run: RunState, status: str = "succeeded", error: str = "") -> None:
    """The agent finished its next step: report the step and a log line about it."""
    index = len(run.steps)
    name = STEP_NAMES[index]
    run.steps.append(
        agent_pb2.StepResult(
            index=index, name=name, status=status, error=error, duration_ms=100 * (index + 1)
        )
    )
    level = "ERROR" if status == "failed" else "INFO"
    await agent.check_in(
        [agent.update(run)], [agent.line(run, f"step {name}: {status}", level, source=name)]
    )


# --------------------------------------------------------------------------- helpers

RUN_ROW = re.compile(r'<tr class="run-row" id="run-([0-9a-f-]+)"')
LOG_ROW = re.compile(r'<li class="log-line level-(\w+)" id="log-(\d+)"')


def run_ids_in(body: str) -> list[str]:
    return RUN_ROW.findall(body)


def log_seqs_in(body: str) -> list[int]:
    return [int(seq) for _level, seq in LOG_ROW.findall(body)]


async def get_text(http: aiohttp.ClientSession, url: str, status: int = 200, **kw: Any) -> str:
    async with http.get(url, **kw) as resp:
        body = await resp.text()
        assert resp.status == status, (url, resp.status, body[:500])
        return body


async def log_frames(stream: SseStream, count: int, timeout: float = 5.0) -> list[Frame]:
    """The next ``count`` log frames (run frames, bare ids and heartbeats consumed)."""
    found: list[Frame] = []
    async with asyncio.timeout(timeout):
        while len(found) < count:
            frame = await stream.frame(timeout)
            if frame.event == "log":
                found.append(frame)
    return found


async def run_frame(stream: SseStream, state: str, timeout: float = 5.0) -> Frame:
    """The next run frame showing ``state``."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await stream.frame(timeout)
            if frame.event == "run" and frame.payload["run"]["state"] == state:
                assert frame.id is None  # state frames never move the log cursor
                return frame


async def quiet_logs(stream: SseStream, seconds: float) -> list[Frame]:
    found: list[Frame] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                frame = await stream.frame(seconds + 1)
                if frame.event == "log":
                    found.append(frame)
    except TimeoutError:
        pass
    return found


# --------------------------------------------------------------------------- /runs


async def test_runs_list_pages_filters_and_load_more(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    a = await RunAgent.enroll(server, channel, "web-01")
    b = await RunAgent.enroll(server, channel, "db-01")
    created: list[tuple[RunState, RunAgent]] = []
    states = ["RUNNING", "SUCCEEDED", "FAILED", "RUNNING", "AWAITING_INPUT", "SUCCEEDED", "FAILED"]
    for i, state in enumerate(states):
        agent = a if i % 2 == 0 else b
        run = RunState(run_id=str(uuid.uuid4()), state="RUNNING")
        await agent.check_in([agent.update(run)])
        if state != "RUNNING":
            run.state = state
            await agent.check_in([agent.update(run, error="boom" if state == "FAILED" else "")])
        created.append((run, agent))
        await asyncio.sleep(0.002)  # distinct created_at
    newest_first = [run.run_id for run, _ in reversed(created)]

    async with logged_in_http(server, "admin", base_url=True) as http:
        # Page through with the plain links (no JavaScript): 3 + 3 + 1, no gap, no duplicate.
        seen: list[str] = []
        url: str | None = "/runs?limit=3"
        pages = 0
        while url is not None:
            body = await get_text(http, html.unescape(url))
            seen += run_ids_in(body)
            pages += 1
            match = re.search(r'id="load-more" rel="next" href="([^"]+)"', body)
            url = match.group(1) if match else None
        assert seen == newest_first and pages == 3

        # "Load more" fragments append the same rows.
        body = await get_text(http, "/runs?limit=3")
        appended = run_ids_in(body)
        fragment = re.search(r'data-fragment-url="([^"]+)"', body)
        assert fragment is not None and "runs.js" in body
        next_url: str | None = html.unescape(fragment.group(1))
        while next_url:
            async with http.get(next_url) as resp:
                assert resp.status == 200
                data = await resp.json()
            appended += run_ids_in(data["html"])
            next_url = data["more_fragment_url"]
        assert appended == newest_first

        # Filters: state (repeatable, any case) and agent.
        failed = [r.run_id for r, _ in reversed(created) if r.state == "FAILED"]
        body = await get_text(http, "/runs?state=failed")
        assert run_ids_in(body) == failed
        both = {r.run_id for r, _ in created if r.state in ("FAILED", "AWAITING_INPUT")}
        body = await get_text(http, "/runs?state=FAILED&state=AWAITING_INPUT")
        assert set(run_ids_in(body)) == both and len(run_ids_in(body)) == 3
        assert 'class="state-badge state-awaiting_input"' in body
        body = await get_text(http, f"/runs?agent={b.agent_id}")
        assert run_ids_in(body) == [r.run_id for r, ag in reversed(created) if ag is b]
        assert "db-01" in body and f'href="/agents/{b.agent_id}"' in body
        empty = await get_text(http, f"/runs?agent={uuid.uuid4()}")
        assert "No runs match these filters." in empty

        # Bad parameters name themselves.
        for query, name in [
            ("state=DONE", "state"),
            ("limit=0", "limit"),
            ("limit=x", "limit"),
            ("before=garbage", "before"),
        ]:
            body = await get_text(http, f"/runs?{query}", status=400)
            assert name in body, query
        async with http.get("/runs/rows?state=nope") as resp:
            assert resp.status == 400


# --------------------------------------------------------------------------- /runs/{id}


async def test_run_page_shows_state_steps_logs_and_filters(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    agent = await RunAgent.enroll(server, channel, "web-01")
    run = await agent.start_run()
    await agent.check_in(
        [],
        [
            agent.line(run, "detecting config version", "DEBUG", "detector"),
            agent.line(run, "legacy config found", "INFO", "detector", path="/etc/old"),
            agent.line(run, XSS, "WARNING", "detector"),
        ],
    )
    await step(agent, run)
    await step(agent, run, "failed", error="[Errno 13] Permission denied: '/etc/x' <b>")
    run.state = "FAILED"
    await agent.check_in([agent.update(run, error="step convert_format failed")])

    async with logged_in_http(server, "admin", base_url=True) as http:
        body = await get_text(http, f"/runs/{run.run_id}")
        assert "state-badge state-failed" in body and "Failed" in body
        assert "1 of 4 steps · 25%" in body
        assert 'max="4" value="1"' in body
        assert "move_legacy_config" in body and "convert_format" in body
        assert "step-status-succeeded" in body and "step-status-failed" in body
        assert "Permission denied: &#39;/etc/x&#39; &lt;b&gt;" in body
        assert "step convert_format failed" in body
        assert "web-01" in body and f'href="/agents/{agent.agent_id}"' in body
        assert log_seqs_in(body) == [1, 2, 3, 4, 5]
        assert XSS not in body and "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in body
        assert 'class="log-meta-key">path</span>=<span class="log-meta-value">/etc/old' in body
        # Counts by level and by source.
        assert 'data-count-level="INFO">INFO <strong>2</strong>' in body
        assert 'data-count-level="ERROR">ERROR <strong>1</strong>' in body
        assert 'count-source">detector <strong>3</strong>' in body
        assert "<strong>5</strong> lines" in body
        # The run is over: no cancel button; the stream URL and cursor are on the page.
        assert re.search(r'id="cancel-form"\s+hidden', body)
        assert f'data-stream-url="/runs/{run.run_id}/stream" data-after="5"' in body

        # Filters: level (repeatable), source, text, and together.
        body = await get_text(http, f"/runs/{run.run_id}?level=ERROR&level=warning")
        assert log_seqs_in(body) == [3, 5]
        assert f'data-stream-url="/runs/{run.run_id}/stream?level=WARNING&amp;level=ERROR"' in body
        body = await get_text(http, f"/runs/{run.run_id}?source=detector")
        assert log_seqs_in(body) == [1, 2, 3]
        body = await get_text(http, f"/runs/{run.run_id}?q=CONFIG%20Found")
        assert log_seqs_in(body) == [2]
        body = await get_text(http, f"/runs/{run.run_id}?level=INFO&source=move_legacy_config")
        assert log_seqs_in(body) == [4]
        body = await get_text(http, f"/runs/{run.run_id}?q=nothing-like-this")
        assert log_seqs_in(body) == [] and "No log lines match these filters." in body
        # Paging back through a long log: from_seq shows lines after it.
        body = await get_text(http, f"/runs/{run.run_id}?from_seq=3")
        assert log_seqs_in(body) == [4, 5]

        await get_text(http, f"/runs/{uuid.uuid4()}", status=404)
        assert "level" in await get_text(http, f"/runs/{run.run_id}?level=LOUD", status=400)
        assert "from_seq" in await get_text(http, f"/runs/{run.run_id}?from_seq=-1", status=400)

        # History rows link to their run, and the link resolves.
        await agent.stub.CheckIn(
            agent_pb2.CheckInRequest(
                agent_id=agent.agent_id,
                facts=agent.facts,
                events=[
                    agent_pb2.MigrationEvent(
                        event_id=uuid7_str(),
                        event_type=agent_pb2.EVENT_TYPE_MIGRATION_EXECUTION,
                        status=agent_pb2.EVENT_STATUS_FAILED,
                        message="execution failed",
                        occurred_at=ts(datetime.now(UTC)),
                        run_id=run.run_id,
                    )
                ],
            ),
            metadata=(("authorization", f"Bearer {agent.credential}"),),
        )
        history = await get_text(http, "/history")
        link = re.search(rf'href="(/runs/{run.run_id})"', history)
        assert link is not None
        assert "Run <code>" in await get_text(http, link.group(1))


# --------------------------------------------------------------------------- the run stream


async def test_run_stream_resumes_with_last_event_id_without_gap_or_duplicate(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    agent = await RunAgent.enroll(server, channel, "web-01")
    run = await agent.start_run()
    url = f"{server.web_url}/runs/{run.run_id}/stream"
    async with logged_in_http(server, "viewer") as http:
        first = await open_stream(http, url)
        opening = await first.frame()
        assert opening.event == "run" and opening.payload["run"]["state"] == "RUNNING"
        assert 'id="run-status"' in opening.payload["status_html"]
        # Lines in several check-ins (one bigger than the stream's read batch of 4).
        await agent.check_in([], [agent.line(run, f"line {i}") for i in range(2)])
        await agent.check_in([], [agent.line(run, f"line {i}") for i in range(2, 8)])
        frames = await log_frames(first, 5)
        first.close()
        assert first.last_id == "5"
        # While nobody listens: more lines and a step.
        await agent.check_in([], [agent.line(run, f"line {i}") for i in range(8, 11)])
        await step(agent, run)
        second = await open_stream(http, url, last_event_id=first.last_id)
        status = await run_frame(second, "RUNNING")
        assert status.payload["run"]["steps_done"] == 1
        frames += await log_frames(second, 7)
        assert await quiet_logs(second, 0.4) == []
        # The end of the run arrives as a run frame.
        run.state = "SUCCEEDED"
        await agent.check_in([agent.update(run)], [agent.line(run, "done")])
        done = await run_frame(second, "SUCCEEDED")
        assert done.payload["run"]["terminal"] is True
        assert done.payload["run"]["cancellable"] is False
        frames += await log_frames(second, 1)
        second.close()

    seqs = [int(f.id or 0) for f in frames]
    assert seqs == list(range(1, 14))  # together: the stored sequence, no gap, no duplicate
    for frame in frames:
        body = frame.payload
        assert body["line"]["seq"] == int(frame.id or 0)
        assert f'id="log-{body["line"]["seq"]}"' in body["html"]


async def test_run_stream_filters_escapes_and_waits_for_late_lines(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    agent = await RunAgent.enroll(server, channel, "web-01")
    run = await agent.start_run()
    url = f"{server.web_url}/runs/{run.run_id}/stream"
    async with logged_in_http(server, "viewer") as http:
        errors = await open_stream(http, url, [("level", "error"), ("source", "executor")])
        everything = await open_stream(http, url, [("after", "0")])
        lines = [
            agent.line(run, "fine"),
            agent.line(run, XSS, "ERROR"),
            agent.line(run, "other source", "ERROR", source="detector"),
            agent.line(run, "fine again"),
        ]
        await agent.check_in([], lines)
        [only] = await log_frames(errors, 1)
        assert only.id == "2" and only.payload["line"]["message"] == XSS
        assert XSS not in only.payload["html"]
        assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in only.payload["html"]
        # Non-matching lines still move the cursor (a bare id), so a resume skips them.
        async with asyncio.timeout(3):
            while errors.last_id != "4":
                frame = await errors.frame()
                assert frame.event != "log"
        errors.close()
        assert [f.id for f in await log_frames(everything, 4)] == ["1", "2", "3", "4"]

        # A late line: 6 arrives before 5. The stream holds its cursor at 5 ...
        six = agent.line(run, "six")
        six.seq = 6
        five = agent.line(run, "five")
        five.seq = 5
        run.next_seq = 7
        await agent.check_in([], [six])
        assert await quiet_logs(everything, 0.5) == []
        # ... and when 5 shows up, both come, in order.
        await agent.check_in([], [five])
        assert [f.id for f in await log_frames(everything, 2)] == ["5", "6"]
        # A line that never arrives holds the cursor only for the grace period.
        eight = agent.line(run, "eight")
        eight.seq = 8
        await agent.check_in([], [eight])
        [late] = await log_frames(everything, 1, timeout=FAST.gap_grace_seconds + 3)
        assert late.id == "8"
        heartbeat = await everything.frame(timeout=2)
        assert heartbeat.comments == ["keepalive"]
        everything.close()

        # Bad requests are refused before streaming.
        for params, headers, status in [
            ({"after": "x"}, {}, 400),
            ({}, {"Last-Event-ID": "-3"}, 400),
            ({"level": "LOUD"}, {}, 400),
        ]:
            async with http.get(url, params=params, headers=headers) as resp:
                assert resp.status == status, params
        async with http.get(f"{server.web_url}/runs/{uuid.uuid4()}/stream") as resp:
            assert resp.status == 404


async def test_stream_ends_cleanly_on_disconnect_and_shutdown(
    server_config: ServerConfig,
) -> None:
    server = await start_with_settings(server_config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agent = await RunAgent.enroll(server, channel, "web-01")
        run = await agent.start_run()
    bus = server.app[app_keys.BUS]
    async with logged_in_http(server, "viewer") as http:
        url = f"{server.web_url}/runs/{run.run_id}/stream"
        gone = await open_stream(http, url)
        gone.close()
        kept = await open_stream(http, url)
        async with asyncio.timeout(3):
            while bus.subscribers != 1:
                await asyncio.sleep(0.02)
        await server.stop()  # ends the open stream instead of waiting for it
        with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
            while True:
                await kept.frame(timeout=3)
        kept.close()
    assert bus.subscribers == 0


async def test_a_run_stream_ends_when_its_user_is_deleted(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    agent = await RunAgent.enroll(server, channel, "web-01")
    run = await agent.start_run()
    account = await create_web_user(server, "viewer")
    async with logged_in_http(server, account=account) as http:
        stream = await open_stream(http, f"{server.web_url}/runs/{run.run_id}/stream")
        await users_service.delete_user(server.app[app_keys.SESSIONS], account.name)
        with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
            while True:  # frames until the next heartbeat finds the session gone
                await stream.frame(timeout=5)
        stream.close()


# --------------------------------------------------------------------------- forms and pages


async def test_cancel_button_and_run_now_queue_actions_for_the_agent(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    agent = await RunAgent.enroll(server, channel, "web-01")
    run = await agent.start_run()
    await step(agent, run)
    alice = await create_web_user(server, "admin", name="alice")
    async with logged_in_http(server, base_url=True, account=alice) as http:
        page = await get_text(http, f"/runs/{run.run_id}")
        assert re.search(
            r'<form class="inline-form" method="post" action="([^"]+)" id="cancel-form"[^>]*>', page
        )
        stream = await open_stream(http, f"{server.web_url}/runs/{run.run_id}/stream")
        await run_frame(stream, "RUNNING")

        # A cross-site form post is refused.
        async with http.post(
            f"/runs/{run.run_id}/cancel", headers={"Origin": "http://evil.example"}
        ) as resp:
            assert resp.status == 403
        async with http.post(
            f"/runs/{run.run_id}/cancel", headers={"Sec-Fetch-Site": "cross-site"}
        ) as resp:
            assert resp.status == 403

        async with http.post(
            f"/runs/{run.run_id}/cancel", headers={"Origin": server.web_url}, allow_redirects=False
        ) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == f"/runs/{run.run_id}?cancel=requested"
        # Live: the open stream hears about it at once (cancel pending: no more cancel button).
        async with asyncio.timeout(3):
            while True:
                frame = await run_frame(stream, "RUNNING")
                if not frame.payload["run"]["cancellable"]:
                    break
        assert "Cancellation requested by alice" in frame.payload["status_html"]  # who asked
        stream.close()
        page = await get_text(http, f"/runs/{run.run_id}?cancel=requested")
        assert "Cancellation requested: the agent stops at the next step boundary" in page
        assert re.search(r'id="cancel-form"\s+hidden', page)
        # Asking twice is harmless: one action.
        async with http.post(f"/runs/{run.run_id}/cancel", allow_redirects=False) as resp:
            assert resp.status == 303

        # The agent receives the cancel with its next check-in, and reports CANCELLED.
        reply = await agent.check_in()
        cancels = [b for b in map(action_body, reply.actions) if b.kind == "cancel_run"]
        assert len(cancels) == 1 and cancels[0].params["run_id"] == run.run_id
        run.state = "CANCELLED"
        await agent.check_in([agent.update(run)], acked_actions=[cancels[0].action_id])
        page = await get_text(http, f"/runs/{run.run_id}")
        assert "state-badge state-cancelled" in page
        async with http.post(f"/runs/{run.run_id}/cancel") as resp:
            assert resp.status == 409  # already ended
        async with http.post(f"/runs/{uuid.uuid4()}/cancel") as resp:
            assert resp.status == 404

        # "Run migration now" on the agent page.
        agent_page = await get_text(http, f"/agents/{agent.agent_id}")
        assert f'action="/agents/{agent.agent_id}/runs"' in agent_page
        assert run.run_id in agent_page  # its runs are listed
        async with http.post(
            f"/agents/{agent.agent_id}/runs", headers={"Origin": "http://evil.example"}
        ) as resp:
            assert resp.status == 403
        async with http.post(f"/agents/{agent.agent_id}/runs", allow_redirects=False) as resp:
            assert resp.status == 303
            location = resp.headers["Location"]
        assert location.startswith(f"/agents/{agent.agent_id}?requested=")
        agent_page = await get_text(http, location)
        assert "Run requested: the agent starts it with its next check-in." in agent_page
        assert "Run requested by alice" not in agent_page  # said once
        agent_page = await get_text(http, f"/agents/{agent.agent_id}")
        assert "Run requested by alice just now: waiting for the agent" in agent_page
        assert 'http-equiv="refresh"' in await get_text(http, location)  # until the run exists
        reply = await agent.check_in()
        [asked] = [action_body(a) for a in reply.actions]
        assert asked.kind == "run_migration"
        # The agent reports the run it was asked for: the banner links to it at once.
        requested = RunState(run_id=str(uuid.uuid4()), state="RUNNING")
        update = agent.update(requested)
        update.requested_by_action_id = asked.action_id
        await agent.check_in([update], acked_actions=[asked.action_id])
        agent_page = await get_text(http, location)
        assert "Run requested: the agent started it." in agent_page
        assert f'<a href="/runs/{requested.run_id}">Open the run</a>' in agent_page
        assert 'http-equiv="refresh"' not in agent_page
        async with http.post(f"/agents/{uuid.uuid4()}/runs") as resp:
            assert resp.status == 404


async def test_overview_counts_runs_and_shows_latest_run(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    a = await RunAgent.enroll(server, channel, "web-01")
    b = await RunAgent.enroll(server, channel, "db-01")
    await a.start_run("AWAITING_INPUT")
    await a.start_run("RUNNING")
    latest = await b.start_run("RUNNING")
    latest.state = "SUCCEEDED"
    await b.check_in([b.update(latest)])
    async with logged_in_http(server, "admin", base_url=True) as http:
        body = await get_text(http, "/")
    waiting = re.search(
        r'card-waiting card-attention".*?card-value">(\d+)<.*?card-note">(\d+) run', body, re.S
    )
    assert waiting is not None and waiting.groups() == ("1", "1")
    assert f'href="/runs/{latest.run_id}"><span class="state-badge state-succeeded"' in body
    assert 'href="/runs?state=AWAITING_INPUT"' in body


def test_run_notification_channel_matches_the_writer() -> None:
    assert notify.RUNS_CHANNEL == run_ingest.RUNS_CHANNEL


# --------------------------------------------------------------------------- the run topic


async def test_run_topic_wakes_only_that_runs_streams() -> None:
    bus = EventBus()
    with bus.subscribe_run("a") as a, bus.subscribe_run("b") as b, bus.subscribe() as history:
        assert bus.subscribers == 3
        bus.publish_runs(["a"])
        assert await a.wait(0.01) and a.take(-1)
        assert not await b.wait(0.01) and not await history.wait(0.01)
        bus.publish_runs(None)  # "look at every run"
        assert await a.wait(0.01) and await b.wait(0.01)
        assert not await history.wait(0.01)
        a.take(-1)
        b.take(-1)
        bus.publish_committed(7)  # a History commit does not wake run streams
        assert not await a.wait(0.01) and await history.wait(0.01)
        bus.end_streams()
        assert a.closed and b.closed and history.closed
    assert bus.subscribers == 0
    assert bus.subscribe_run("c").closed  # after shutdown began


async def test_run_notifications_cross_processes_through_postgresql(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    bus = PostgresEventBus(db_url)
    await bus.start()
    engine = create_engine_for_url(db_url)
    try:
        with bus.subscribe_run("r-1") as one, bus.subscribe_run("r-2") as two:
            async with make_sessionmaker(engine)() as session, session.begin():
                await notify.announce_runs_changed(session, ["r-1"])
            assert await one.wait(3) and one.take(-1)
            assert not await two.wait(0.2)
            async with make_sessionmaker(engine)() as session, session.begin():
                ids = [f"run-{i}" for i in range(notify.MAX_RUN_NOTIFICATIONS + 1)]
                await notify.announce_runs_changed(session, ids)  # too many: one "look"
            assert await two.wait(3) and two.take(-1)
            # A rolled-back transaction notifies nobody.
            with pytest.raises(LookupError):
                async with make_sessionmaker(engine)() as session, session.begin():
                    await notify.announce_runs_changed(session, ["r-2"])
                    raise LookupError("roll back")
            assert not await two.wait(0.3)
    finally:
        await engine.dispose()
        await bus.close()


def test_short_run_ids_tell_time_ordered_runs_apart() -> None:
    from agent.uuid7 import uuid7_str
    from server.web.runs.styles import short_id

    ids = [uuid7_str() for _ in range(50)]  # same millisecond or close: same leading block
    shorts = {short_id(run_id) for run_id in ids}
    assert len(shorts) == len(ids)
    assert all(len(short_id(run_id)) == 8 and short_id(run_id) in run_id for run_id in ids)
