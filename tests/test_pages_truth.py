"""One truth for every state (issue 15 item 1), server side: what the History, runs list and run
pages say matches what is stored; a bad filter value is shown next to its field, the form kept.

Real servers (gRPC + web, the event bus wired in) on fresh SQLite and PostgreSQL databases; runs
arrive as gRPC check-ins like an agent's, History events through the storage functions (so a
test can set both clocks: the host's ``occurred_at`` and the server's ``received_at``).
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import grpc
import pytest
from runs_testlib import AgentClient, log_line, run_update, step
from server_testlib import form_values, logged_in_http, new_event, refused_value_error
from test_runs_pages import WAITING_FOR_PASSWORD, log_seqs_in, start_with_settings

from flagpost.v1 import agent_pb2
from server import app_keys
from server.app import RunningServer
from server.config import ServerConfig
from server.domain import EventStatus, EventType, NewEvent, Severity
from server.storage.events import insert_events

TIME_CELL = re.compile(r'<span class="cell cell-time">.*?<time[^>]*datetime="([^"]+)"', re.S)
RUN_LINK = re.compile(r'href="(/runs/[0-9a-f-]+)"')
TIMED_OUT = (
    "Migration 1 -> 2 failed: no input within 1 h for: database_password; nothing was changed"
)


@pytest.fixture
async def server(server_config: ServerConfig) -> AsyncIterator[RunningServer]:
    running = await start_with_settings(server_config)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def agent(server: RunningServer) -> AsyncIterator[AgentClient]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield await AgentClient.enroll(server, channel, "web-01")


async def store_events(
    server: RunningServer, events: Sequence[NewEvent], received: datetime
) -> None:
    async with server.app[app_keys.SESSIONS]() as session, session.begin():
        await insert_events(session, events, received)


async def get_text(http: aiohttp.ClientSession, url: str, status: int = 200) -> str:
    async with http.get(url) as resp:
        body = await resp.text()
        assert resp.status == status, (url, resp.status, body[:300])
        return body


def execution_failed(agent_id: str, run_id: str, kind: str, message: str) -> NewEvent:
    """The execution event an agent reports for a run that ended without changing anything."""
    return replace(
        new_event(agent_id),
        event_type=EventType.MIGRATION_EXECUTION,
        status=EventStatus.FAILED,
        severity=Severity.ERROR,
        message=message,
        error_message=message,
        error_detail={"exception_type": kind, "failing_step": "inputs", "rollback": "not_started"},
        run_id=run_id,
    )


# --------------------------------------------------------------------------- History


async def test_history_rows_are_ordered_by_the_time_they_show(
    server: RunningServer, agent: AgentClient
) -> None:
    """Arrival order is not the host's clock (a replayed outbox, a host clock behind): the rows
    show the received time they are ordered by, and the expanded row shows both clocks."""
    now = datetime.now(UTC).replace(microsecond=0)
    first = new_event(agent.agent_id, occurred_at=now - timedelta(minutes=5))
    late = replace(new_event(agent.agent_id, occurred_at=now - timedelta(hours=3)), message="late")
    await store_events(server, [first], now - timedelta(minutes=4))
    await store_events(server, [late], now - timedelta(minutes=1))  # arrived last, happened first
    async with logged_in_http(server, "viewer") as http:
        body = await get_text(http, f"{server.web_url}/history")
    shown = [datetime.fromisoformat(value) for value in TIME_CELL.findall(body)]
    assert len(shown) == 2
    assert shown == sorted(shown, reverse=True), shown  # "newest first" by what is shown
    assert shown[0] == now - timedelta(minutes=1)
    assert "newest received first" in body
    assert "<dt>Received</dt>" in body and "<dt>On the host</dt>" in body


async def test_history_links_only_to_runs_that_exist(
    server: RunningServer, agent: AgentClient
) -> None:
    """ "Detection: up to date" carries a run id no run row has: no link (it would 404)."""
    real, ghost = str(uuid.uuid4()), str(uuid.uuid4())
    await agent.checkin(run_updates=[run_update(real, agent_pb2.RUN_STATE_SUCCEEDED)])
    up_to_date = replace(
        new_event(agent.agent_id),
        status=EventStatus.NOT_NEEDED,
        severity=Severity.INFO,
        message="up to date",
        run_id=ghost,
    )
    executed = replace(
        new_event(agent.agent_id),
        event_type=EventType.MIGRATION_EXECUTION,
        message="migrated",
        run_id=real,
    )
    await store_events(server, [up_to_date, executed], datetime.now(UTC))
    async with logged_in_http(server, "viewer") as http:
        body = await get_text(http, f"{server.web_url}/history")
        links = set(RUN_LINK.findall(body))
        assert f"/runs/{real}" in links
        assert f"/runs/{ghost}" not in links
        assert f"<code>{ghost}</code>" in body  # the id is still shown
        for link in links:
            await get_text(http, f"{server.web_url}{link}")  # every link opens a run


async def test_cancelled_and_timed_out_ends_are_not_errors(
    server: RunningServer, agent: AgentClient
) -> None:
    cancelled, timed_out = str(uuid.uuid4()), str(uuid.uuid4())
    waiting = agent_pb2.RUN_STATE_AWAITING_INPUT
    for run_id in (cancelled, timed_out):
        await agent.checkin(
            run_updates=[run_update(run_id, waiting, input_request=WAITING_FOR_PASSWORD)]
        )
    await agent.checkin(
        run_updates=[
            run_update(
                cancelled,
                agent_pb2.RUN_STATE_CANCELLED,
                error_message="Migration 1 -> 2 cancelled while waiting for input",
            ),
            run_update(timed_out, agent_pb2.RUN_STATE_FAILED, error_message=TIMED_OUT),
        ]
    )
    await store_events(
        server,
        [
            execution_failed(agent.agent_id, cancelled, "RunCancelled", "cancelled; nothing"),
            execution_failed(agent.agent_id, timed_out, "InputTimeout", TIMED_OUT),
        ],
        datetime.now(UTC),
    )
    async with logged_in_http(server, "viewer") as http:
        history = await get_text(http, f"{server.web_url}/history")
        assert 'class="sev-badge sev-error"' not in history
        assert '<li class="event sev-error' not in history
        assert "Execution failed" not in history
        assert "Execution cancelled" in history
        assert "Execution timed out waiting for input" in history
        runs = await get_text(http, f"{server.web_url}/runs")
        assert "state-failed" not in runs
        assert "state-cancelled" in runs and "state-timed_out" in runs
        for run_id, label in ((cancelled, "Cancelled"), (timed_out, "Timed out waiting for input")):
            page = await get_text(http, f"{server.web_url}/runs/{run_id}")
            assert "error-text" not in page and "state-failed" not in page
            assert f"<span>{label}</span>" in page
            assert 'id="run-note"' in page  # the agent's words, neutrally


# --------------------------------------------------------------------------- runs


async def test_eta_is_estimating_until_there_is_data(
    server: RunningServer, agent: AgentClient
) -> None:
    fresh = str(uuid.uuid4())
    await agent.checkin(run_updates=[run_update(fresh, agent_pb2.RUN_STATE_RUNNING, steps_total=3)])
    async with logged_in_http(server, "viewer") as http:
        page = await get_text(http, f"{server.web_url}/runs/{fresh}")
        assert '<span class="run-eta">estimating…</span>' in page
        # A fast past run (steps of a few ms): at 0 of 3 steps it is not "almost done".
        past = str(uuid.uuid4())
        fast = [step(i, f"s{i}", "succeeded", duration_ms=5) for i in range(3)]
        await agent.checkin(
            run_updates=[
                run_update(
                    past, agent_pb2.RUN_STATE_SUCCEEDED, steps=fast, steps_total=3, steps_done=3
                )
            ]
        )
        later = str(uuid.uuid4())
        await agent.checkin(
            run_updates=[run_update(later, agent_pb2.RUN_STATE_RUNNING, steps_total=3)]
        )
        page = await get_text(http, f"{server.web_url}/runs/{later}")
        assert "0 of 3 steps" in page
        assert "almost done" not in page
        assert "from past runs" in page


async def test_a_run_with_nothing_to_do_says_so(server: RunningServer, agent: AgentClient) -> None:
    run_id = str(uuid.uuid4())
    await agent.checkin(
        run_updates=[
            run_update(run_id, agent_pb2.RUN_STATE_SUCCEEDED, migration_from="4", migration_to="4")
        ]
    )
    async with logged_in_http(server, "viewer") as http:
        page = await get_text(http, f"{server.web_url}/runs/{run_id}")
        assert "already up to date (4), nothing to do" in page
        assert "<span>Already up to date</span>" in page
        runs = await get_text(http, f"{server.web_url}/runs")
        assert "<span>Already up to date</span>" in runs


async def test_waiting_count_endpoint(server: RunningServer, agent: AgentClient) -> None:
    run_id = str(uuid.uuid4())
    async with logged_in_http(server, "viewer") as http:

        async def count() -> Any:
            async with http.get(f"{server.web_url}/runs/waiting") as resp:
                assert resp.status == 200
                return (await resp.json())["count"]

        assert await count() == 0
        await agent.checkin(
            run_updates=[
                run_update(
                    run_id, agent_pb2.RUN_STATE_AWAITING_INPUT, input_request=WAITING_FOR_PASSWORD
                )
            ]
        )
        assert await count() == 1
        await agent.checkin(run_updates=[run_update(run_id, agent_pb2.RUN_STATE_CANCELLED)])
        assert await count() == 0


async def test_a_bad_history_filter_is_shown_at_its_field_with_the_form_kept(
    server: RunningServer,
) -> None:
    async with logged_in_http(server, "viewer") as http:
        url = f"{server.web_url}/history"
        params = [("since", "yesterday-ish"), ("q", "disk full"), ("severity", "error")]
        async with http.get(url, params=params) as response:
            assert response.status == 400
            body = await response.text()
        assert 'id="f-since-error"' in body and "since:" in body
        assert refused_value_error(body, "since").startswith("must be an ISO 8601 date-time")
        assert 'value="yesterday-ish"' in body  # what was typed stays in its field
        assert form_values(body, "since") == ["yesterday-ish"]
        assert 'value="disk full"' in body  # the other filters are kept
        assert re.search(r'value="error"\s+checked', body)
        async with http.get(url, params=[("severity", "loud")]) as response:
            assert response.status == 400
            assert 'id="f-error"' in (body := await response.text()) and "severity" in body


# The runs list and the run page refuse a bad filter value the same way, the other filters
# applied to what they list.


async def test_a_bad_runs_filter_is_shown_at_its_field_with_the_others_applied(
    server: RunningServer, agent: AgentClient
) -> None:
    failed, succeeded, elsewhere = (str(uuid.uuid4()) for _ in range(3))
    await agent.checkin(
        run_updates=[
            run_update(failed, agent_pb2.RUN_STATE_FAILED),
            run_update(succeeded, agent_pb2.RUN_STATE_SUCCEEDED),
        ]
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        other = await AgentClient.enroll(server, channel, "db-01")
        await other.checkin(run_updates=[run_update(elsewhere, agent_pb2.RUN_STATE_FAILED)])
    long_id = "x" * 65
    async with logged_in_http(server, "viewer") as http:
        runs = f"{server.web_url}/runs"
        body = await get_text(http, f"{runs}?state=FAILED&agent={long_id}", status=400)
        assert refused_value_error(body, "agent") == "must be at most 64 characters"
        assert form_values(body, "agent") == [long_id]  # kept in the select, chosen
        assert form_values(body, "state") == ["FAILED"]
        assert set(RUN_LINK.findall(body)) == {f"/runs/{failed}", f"/runs/{elsewhere}"}

        body = await get_text(http, f"{runs}?state=DONE&agent={agent.agent_id}", status=400)
        assert refused_value_error(body, "state").startswith("must be one of PENDING")
        assert form_values(body, "agent") == [agent.agent_id]
        assert form_values(body, "state") == []
        assert set(RUN_LINK.findall(body)) == {f"/runs/{failed}", f"/runs/{succeeded}"}

        # A hidden page size and a cursor have no field: the form says it, the rest applies.
        for bad, detail in (("limit=0", "must be an integer"), ("before=x", "is not a valid")):
            body = await get_text(http, f"{runs}?state=failed&{bad}", status=400)
            assert refused_value_error(body, bad.split("=")[0]).startswith(detail)
            assert form_values(body, "state") == ["FAILED"]
            assert set(RUN_LINK.findall(body)) == {f"/runs/{failed}", f"/runs/{elsewhere}"}
        async with http.get(f"{runs}/rows?state=DONE") as response:  # a fragment: no form
            assert response.status == 400


async def test_a_bad_log_filter_is_shown_at_its_field_and_the_log_still_loads(
    server: RunningServer, agent: AgentClient
) -> None:
    run_id = str(uuid.uuid4())
    lines = [
        log_line(run_id, 1, level="INFO", source="detector"),
        log_line(run_id, 2, level="WARNING", source="executor"),
        log_line(run_id, 3, level="ERROR", source="executor"),
    ]
    await agent.checkin(
        run_updates=[run_update(run_id, agent_pb2.RUN_STATE_RUNNING)], log_lines=lines
    )
    page = f"{server.web_url}/runs/{run_id}"
    long_text = "x" * 201
    async with logged_in_http(server, "viewer") as http:
        body = await get_text(http, f"{page}?level=WARNING&level=error&q={long_text}", status=400)
        assert refused_value_error(body, "q") == "must be at most 200 characters"
        assert form_values(body, "q") == [long_text]  # as typed
        assert form_values(body, "level") == ["WARNING", "ERROR"]
        assert log_seqs_in(body) == [2, 3]
        # The log viewer loads: its live stream has the filters that applied, not the refused.
        stream = re.search(r'data-stream-url="([^"]+)"', body)
        assert stream is not None
        assert html.unescape(stream.group(1)) == f"/runs/{run_id}/stream?level=WARNING&level=ERROR"
        async with http.get(f"{server.web_url}{html.unescape(stream.group(1))}") as response:
            assert response.status == 200
            assert response.content_type == "text/event-stream"

        body = await get_text(http, f"{page}?level=LOUD&source=executor", status=400)
        assert refused_value_error(body, "level").startswith("must be one of DEBUG")
        assert form_values(body, "source") == ["executor"] and form_values(body, "level") == []
        assert log_seqs_in(body) == [2, 3]

        long_source = "s" * 129
        body = await get_text(http, f"{page}?level=ERROR&source={long_source}", status=400)
        assert refused_value_error(body, "source") == "must be at most 128 characters"
        assert form_values(body, "source") == [long_source]
        assert log_seqs_in(body) == [3]

        body = await get_text(http, f"{page}?source=detector&from_seq=-1", status=400)
        assert refused_value_error(body, "from_seq").startswith("must be an integer")
        assert log_seqs_in(body) == [1]
