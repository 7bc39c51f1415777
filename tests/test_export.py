"""Exports of the History and of the runs list (``/api/v1/events/export``,
``/api/v1/runs/export``) on a real server and both databases (``db_url``: SQLite, PostgreSQL).

What an export holds is compared with what the list API answers for the same filter (paged
through to its end): same rows, same order, same fields. CSV is parsed back with the stdlib
reader; formula-like cells are escaped; chunk boundaries (small chunks, and the real 1000-row
chunk) neither drop nor repeat a row; a bad parameter is a 400 naming it before any byte of a
download; a client that goes away ends the export, and no chunk holds a database connection
while it is written.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from runs_testlib import AgentClient, run_update, ts
from server_testlib import logged_in_http, make_server_config
from test_history_web import AGENTS, BASE_TIME, _event, sample_events, seed

from flagpost.v1 import agent_pb2
from server import app_keys
from server.app import RunningServer, start_server
from server.domain import EventStatus, EventType, NewEvent
from server.errors import Unavailable
from server.services import history as history_service
from server.storage.db import create_engine_for_url, make_sessionmaker
from server.storage.events import insert_events
from server.web.api import export
from server.web.api.export import EVENT_FIELDS, RUN_FIELDS, csv_cell

AGENT_A = next(iter(AGENTS))
HOSTILE = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "plain = fine"]
FILENAME = re.compile(r'^attachment; filename="flagpost-(history|runs)-\d{8}T\d{6}Z\.(csv|jsonl)"$')


def hostile_events() -> list[NewEvent]:
    return [
        replace(
            _event(100 + i, AGENT_A, EventType.MIGRATION_EXECUTION, EventStatus.FAILED),
            message=text,
            error_message=text,
        )
        for i, text in enumerate(HOSTILE)
    ]


async def bulk_events(db_url: str, count: int, start: int = 1000) -> None:
    """``count`` more events, in one transaction (fast)."""
    engine = create_engine_for_url(db_url)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            events = [
                _event(start + i, AGENT_A, EventType.MIGRATION_DETECTION, EventStatus.SUCCESS)
                for i in range(count)
            ]
            await insert_events(session, events, BASE_TIME + timedelta(hours=2))
    finally:
        await engine.dispose()


@pytest.fixture
async def server(db_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    await seed(db_url, [*sample_events(), *hostile_events()])
    running = await start_server(make_server_config(db_url, tmp_path))
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def viewer(server: RunningServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with logged_in_http(server, "viewer", base_url=True) as http:
        yield http


async def api_events(http: aiohttp.ClientSession, params: list[tuple[str, str]]) -> list[Any]:
    """Every event ``GET /api/v1/events`` lists for ``params``, paged to the end."""
    events: list[Any] = []
    before: list[tuple[str, str]] = []
    while True:
        async with http.get("/api/v1/events", params=[*params, ("limit", "200"), *before]) as r:
            assert r.status == 200, await r.text()
            page = await r.json()
        events.extend(page["events"])
        if page["next_before"] is None:
            return events
        before = [("before", str(page["next_before"]))]


async def api_runs(http: aiohttp.ClientSession, params: list[tuple[str, str]]) -> list[Any]:
    runs: list[Any] = []
    before: list[tuple[str, str]] = []
    while True:
        async with http.get("/api/v1/runs", params=[*params, ("limit", "500"), *before]) as r:
            assert r.status == 200, await r.text()
            page = await r.json()
        runs.extend(page["runs"])
        if page["next_before"] is None:
            return runs
        before = [("before", page["next_before"])]


async def download(
    http: aiohttp.ClientSession, path: str, params: list[tuple[str, str]], fmt: str
) -> str:
    async with http.get(path, params=[("format", fmt), *params]) as response:
        assert response.status == 200, await response.text()
        assert FILENAME.match(response.headers["Content-Disposition"])
        assert response.headers["Content-Disposition"].endswith(f'.{fmt}"')
        assert response.content_type == ("text/csv" if fmt == "csv" else "application/x-ndjson")
        assert response.headers["Cache-Control"] == "no-store"
        return await response.text()


def jsonl(text: str) -> list[Any]:
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def csv_rows(text: str, fields: tuple[str, ...]) -> list[dict[str, str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    assert tuple(next(reader)) == fields
    return [dict(zip(fields, row, strict=True)) for row in reader]


def as_csv(item: dict[str, Any], fields: tuple[str, ...]) -> dict[str, str]:
    return {name: csv_cell(item[name]) for name in fields}


FILTERS: list[list[tuple[str, str]]] = [
    [],
    [("severity", "error")],
    [("severity", "warning"), ("severity", "error"), ("migration_only", "1")],
    [("agent", AGENT_A)],
    [("event_type", "migration_execution_failed")],
    [("q", "FAILED_1")],
    [("q", "=hyperlink")],
    [("since", "2026-03-01T12:10"), ("until", "2026-03-01T12:30:00Z")],
    [("before", "20")],
    [("severity", "success"), ("limit", "3")],  # limit: the list's page size, not an export cap
]


@pytest.mark.parametrize("params", FILTERS, ids=lambda p: "&".join(f"{k}={v}" for k, v in p))
async def test_an_event_export_holds_what_the_api_lists(
    viewer: aiohttp.ClientSession, params: list[tuple[str, str]]
) -> None:
    listed = await api_events(viewer, [p for p in params if p[0] != "limit"])
    lines = jsonl(await download(viewer, "/api/v1/events/export", params, "jsonl"))
    assert lines == listed
    rows = csv_rows(await download(viewer, "/api/v1/events/export", params, "csv"), EVENT_FIELDS)
    assert rows == [as_csv(e, EVENT_FIELDS) for e in listed]
    if not params:
        assert len(rows) == len(sample_events()) + len(HOSTILE)


async def test_csv_escapes_formulas_and_round_trips_objects(
    viewer: aiohttp.ClientSession,
) -> None:
    rows = csv_rows(await download(viewer, "/api/v1/events/export", [], "csv"), EVENT_FIELDS)
    messages = [row["message"] for row in rows]
    for text in HOSTILE:
        expected = text if text == "plain = fine" else "'" + text
        assert expected in messages
        assert [r["error_message"] for r in rows if r["message"] == expected] == [expected]
    assert not any(m.startswith(("=", "+", "-", "@", "\t")) for m in messages)
    # JSON lines keep the text as the API shows it
    lines = jsonl(await download(viewer, "/api/v1/events/export", [], "jsonl"))
    assert set(HOSTILE) <= {e["message"] for e in lines}
    # objects and nulls: compact JSON, empty cells
    by_id = {str(e["id"]): e for e in lines}
    for row in rows:
        event = by_id[row["id"]]
        assert json.loads(row["system_info"]) == event["system_info"]
        assert json.loads(row["error_detail"]) == event["error_detail"]
        assert row["run_id"] == (event["run_id"] or "")


@pytest.mark.parametrize("chunk", [1, 7, 1000])
async def test_chunk_boundaries_drop_and_repeat_nothing(
    server: RunningServer,
    viewer: aiohttp.ClientSession,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    chunk: int,
) -> None:
    if chunk == 1000:
        await bulk_events(db_url, 2100)  # three chunks of the real size
    monkeypatch.setattr(export, "EVENT_CHUNK_ROWS", chunk)
    for params in ([], [("severity", "success")]):
        listed = await api_events(viewer, params)
        lines = jsonl(await download(viewer, "/api/v1/events/export", params, "jsonl"))
        ids = [e["id"] for e in lines]
        assert ids == sorted(set(ids), reverse=True)
        assert lines == listed
        rows = csv_rows(
            await download(viewer, "/api/v1/events/export", params, "csv"), EVENT_FIELDS
        )
        assert [int(r["id"]) for r in rows] == ids
    if chunk == 1000:
        assert len(ids) > 2100


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/v1/events/export", [], "format"),
        ("/api/v1/events/export", [("format", "xlsx")], "format"),
        ("/api/v1/events/export", [("format", "csv"), ("format", "jsonl")], "format"),
        ("/api/v1/events/export", [("format", "csv"), ("severity", "fatal")], "severity"),
        ("/api/v1/events/export", [("format", "csv"), ("since", "yesterday")], "since"),
        ("/api/v1/events/export", [("format", "jsonl"), ("before", "x")], "before"),
        ("/api/v1/events/export", [("format", "jsonl"), ("limit", "0")], "limit"),
        ("/api/v1/events/export", [("format", "csv"), ("spec", "Bad Spec")], "spec"),
        ("/api/v1/runs/export", [("format", "yaml")], "format"),
        ("/api/v1/runs/export", [("format", "csv"), ("state", "DONE")], "state"),
        ("/api/v1/runs/export", [("format", "csv"), ("before", "garbage")], "before"),
        ("/api/v1/runs/export", [("format", "jsonl"), ("limit", "501")], "limit"),
    ],
)
async def test_a_bad_parameter_is_a_400_naming_it(
    viewer: aiohttp.ClientSession, path: str, params: list[tuple[str, str]], field: str
) -> None:
    async with viewer.get(path, params=params) as response:
        assert response.status == 400
        assert "Content-Disposition" not in response.headers
        body = await response.json()
    assert body["error"] == "invalid_argument"
    assert body["message"].startswith(f"{field}: "), body


async def test_an_export_needs_a_session(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as anonymous:
        for path in ("/api/v1/events/export", "/api/v1/runs/export"):
            async with anonymous.get(f"{server.web_url}{path}?format=csv") as response:
                assert response.status == 401


async def test_head_answers_headers_only(viewer: aiohttp.ClientSession) -> None:
    async with viewer.head("/api/v1/events/export", params={"format": "csv"}) as response:
        assert response.status == 200
        assert FILENAME.match(response.headers["Content-Disposition"])
        assert await response.read() == b""


async def test_a_client_that_goes_away_ends_the_export_and_no_chunk_holds_a_connection(
    server: RunningServer,
    viewer: aiohttp.ClientSession,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await bulk_events(db_url, 3000)
    pool: Any = server.app[app_keys.WEB_ENGINE].pool
    original = history_service.list_events
    reads: list[int] = []  # connections checked out of the web pool when each chunk is read

    async def slow_read(sessions: Any, f: Any) -> Any:
        reads.append(pool.checkedout())
        await asyncio.sleep(0.02)
        return await original(sessions, f)

    monkeypatch.setattr(export.history_service, "list_events", slow_read)
    monkeypatch.setattr(export, "EVENT_CHUNK_ROWS", 10)  # 300+ chunks: ~6 s to the end
    async with viewer.get("/api/v1/events/export", params={"format": "jsonl"}) as response:
        assert response.status == 200
        first = await response.content.readline()
        assert json.loads(first)["id"]
        response.connection.transport.abort()  # type: ignore[union-attr]
    await asyncio.sleep(0.5)
    seen = len(reads)
    await asyncio.sleep(0.5)
    assert len(reads) == seen, "the export kept reading after its client went away"
    assert seen < 100
    assert set(reads) == {0}, reads
    # the server still answers, and a full export still works
    monkeypatch.setattr(export.history_service, "list_events", original)
    lines = jsonl(await download(viewer, "/api/v1/events/export", [], "jsonl"))
    assert len(lines) == len(sample_events()) + len(HOSTILE) + 3000


# --------------------------------------------------------------------------- runs


async def seed_runs(server: RunningServer, count: int) -> list[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        web = await AgentClient.enroll(server, channel, hostname="web-1")
        db = await AgentClient.enroll(server, channel, hostname="=db-1")  # a hostile hostname
        ids = []
        states = [
            agent_pb2.RUN_STATE_SUCCEEDED,
            agent_pb2.RUN_STATE_FAILED,
            agent_pb2.RUN_STATE_RUNNING,
        ]
        for i in range(count):
            run_id = str(uuid.uuid4())
            ids.append(run_id)
            agent = web if i % 2 else db
            await agent.checkin(
                run_updates=[
                    run_update(
                        run_id,
                        states[i % 3],
                        steps_total=2,
                        steps_done=1,
                        started_at=ts(),
                        error_message="-1 is not a port" if i % 3 == 1 else "",
                    )
                ]
            )
    return ids


async def test_a_run_export_holds_what_the_api_lists(
    server: RunningServer, viewer: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await seed_runs(server, 9)
    monkeypatch.setattr(export, "RUN_CHUNK_ROWS", 2)  # chunk boundaries with 9 runs
    for params in ([], [("state", "failed")], [("state", "RUNNING"), ("state", "succeeded")]):
        listed = await api_runs(viewer, params)
        lines = jsonl(await download(viewer, "/api/v1/runs/export", params, "jsonl"))
        # duration_seconds of a running run depends on "now": compare everything else
        strip = [{**r, "duration_seconds": None} for r in listed]
        assert [{**r, "duration_seconds": None} for r in lines] == strip
        rows = csv_rows(await download(viewer, "/api/v1/runs/export", params, "csv"), RUN_FIELDS)
        assert [r["id"] for r in rows] == [r["id"] for r in listed]
        for row, run in zip(rows, listed, strict=True):
            expected = as_csv(run, RUN_FIELDS)
            assert {**row, "duration_seconds": ""} == {**expected, "duration_seconds": ""}
    everything = await api_runs(viewer, [])
    assert {r["id"] for r in everything} == set(ids)
    rows = csv_rows(await download(viewer, "/api/v1/runs/export", [], "csv"), RUN_FIELDS)
    assert {r["hostname"] for r in rows} == {"web-1", "'=db-1"}
    assert {r["error_message"] for r in rows} == {"", "'-1 is not a port"}
    assert {r["terminal"] for r in rows} == {"true", "false"}


async def test_a_failure_mid_export_ends_the_download_incomplete(
    server: RunningServer, viewer: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = history_service.list_events
    calls = 0

    async def failing(sessions: Any, f: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise Unavailable("the database is unavailable")
        return await original(sessions, f)

    monkeypatch.setattr(export.history_service, "list_events", failing)
    monkeypatch.setattr(export, "EVENT_CHUNK_ROWS", 5)
    async with viewer.get("/api/v1/events/export", params={"format": "csv"}) as response:
        assert response.status == 200  # the first chunk was read before the answer started
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    # before the first byte: a proper 503
    calls = 2
    async with viewer.get("/api/v1/events/export", params={"format": "csv"}) as response:
        assert response.status == 503
        assert "Content-Disposition" not in response.headers


async def test_an_export_ends_when_its_session_ends(
    server: RunningServer,
    viewer: aiohttp.ClientSession,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await bulk_events(db_url, 500)
    original = history_service.list_events

    async def slow_read(sessions: Any, f: Any) -> Any:
        await asyncio.sleep(0.02)
        return await original(sessions, f)

    monkeypatch.setattr(export.history_service, "list_events", slow_read)
    monkeypatch.setattr(export, "EVENT_CHUNK_ROWS", 10)
    monkeypatch.setattr(export, "SESSION_CHECK_SECONDS", 0.0)
    async with viewer.get("/api/v1/events/export", params={"format": "jsonl"}) as response:
        assert response.status == 200
        assert json.loads(await response.content.readline())["id"]
        async with viewer.post("/logout", allow_redirects=False) as out:
            assert out.status == 303
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
