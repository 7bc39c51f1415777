"""Hostile input through real servers: SQL-injection strings in every History, runs and log filter
(SQLite and PostgreSQL), and script / HTML payloads in every string an agent reports, rendered
by a real chromium.

Everything is seeded the way agents do it: real gRPC check-ins (events, run updates, log lines)
to the real server of the ``running_server`` fixture.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

import aiohttp
import grpc
import pytest
from markupsafe import escape
from playwright.async_api import expect
from runs_testlib import AgentClient, log_line, run_update, step
from server_testlib import browser_logged_in, logged_in_http
from sqlalchemy import func, select
from test_history_web import html_row_ids

from agent.uuid7 import uuid7_str as uuid7
from flagpost.v1 import agent_pb2
from server import app_keys
from server.app import RunningServer
from server.storage.models import Agent, MigrationRun, TaskLog, UpdateEvent

if TYPE_CHECKING:
    from server_testlib import WatchedPage

INJECTIONS = [
    "' OR 1=1 --",
    "'; DROP TABLE update_events; --",
    '"; DROP TABLE update_events; --',
    "1' UNION SELECT event_id, message FROM update_events --",
    "%",
    "_",
    "\\",
    "%' OR '1'='1",
    "\\%",
    "a_b",
    "ünïcødé ☃ 😀 ' --",
    "ÄÖÜ É' OR 'x'='x",
    "$1 ?; :name",
]
# Seeded next to the injection strings: literal %, _ and \ that a broken LIKE would confuse.
DECOYS = ["100% done", "file_name.toml", "C:\\path\\to", "plain message", "abc"]


@dataclass
class Seeded:
    messages: list[str]  # one event per message, in check-in order
    run_id: str
    log_messages: list[str]  # seq 1.. in order
    log_sources: list[str]
    agent_id: str
    counts: dict[str, int]


async def _counts(server: RunningServer) -> dict[str, int]:
    out: dict[str, int] = {}
    async with server.app[app_keys.SESSIONS]() as session:
        for name, model in (
            ("events", UpdateEvent),
            ("logs", TaskLog),
            ("runs", MigrationRun),
            ("agents", Agent),
        ):
            query = select(func.count()).select_from(model)
            out[name] = int((await session.execute(query)).scalar_one())
    return out


async def _seed(server: RunningServer) -> Seeded:
    messages = INJECTIONS + DECOYS
    run_id = uuid7()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agent = await AgentClient.enroll(server, channel, hostname="inj-host")
        events = [
            agent_pb2.MigrationEvent(
                event_id=uuid7(),
                event_type=agent_pb2.EVENT_TYPE_MIGRATION_EXECUTION,
                status=agent_pb2.EVENT_STATUS_FAILED,
                message=text,
                error_message=f"error for {i}",
                migration_from="1",
                migration_to="2",
                occurred_at=run_update(run_id, 1).occurred_at,
                run_id=run_id,
            )
            for i, text in enumerate(messages)
        ]
        sources = [f"src {text}"[:128] for text in messages]
        lines = [
            log_line(run_id, seq, message=text, source=sources[seq - 1])
            for seq, text in enumerate(messages, start=1)
        ]
        update = run_update(
            run_id,
            agent_pb2.RUN_STATE_FAILED,
            steps_done=1,
            steps_total=1,
            steps=[step(0, "rename_keys", "failed", 5, error="' OR 1=1 --")],
            error_message="'; DROP TABLE migration_runs; --",
        )
        reply = await agent.checkin(events=events, run_updates=[update], log_lines=lines)
        assert len(reply.acknowledged_event_ids) == len(events)
    return Seeded(messages, run_id, messages, sources, agent.agent_id, await _counts(server))


def _contains(haystack: str, needle: str) -> bool:
    """The filters' rule: case-insensitive substring (our strings change case only in ASCII)."""
    return needle.strip().lower() in haystack.lower()


async def _get(
    http: aiohttp.ClientSession, url: str, params: list[tuple[str, str]]
) -> tuple[int, str]:
    async with http.get(url, params=params) as resp:
        return resp.status, await resp.text()


def _clean_400(status: int, body: str, param: str) -> bool:
    return status == 400 and param in body


@pytest.fixture
async def seeded(running_server: RunningServer) -> Seeded:
    return await _seed(running_server)


@pytest.fixture
async def http(running_server: RunningServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with logged_in_http(running_server, "viewer") as session:
        yield session


async def test_sql_injection_strings_in_every_filter_are_just_text(
    running_server: RunningServer, seeded: Seeded, http: aiohttp.ClientSession
) -> None:
    base = running_server.web_url
    run = seeded.run_id
    for text in INJECTIONS:
        # --- History text search: exactly the events whose text contains it, literally.
        want = [i for i, m in enumerate(seeded.messages) if _contains(m, text)]
        assert want, text  # each injection string is itself a seeded message
        status, body = await _get(http, f"{base}/api/v1/events", [("q", text), ("limit", "200")])
        assert status == 200, (text, body)
        got = sorted(e["message"] for e in json.loads(body)["events"])
        assert got == sorted(seeded.messages[i] for i in want), text
        status, body = await _get(http, f"{base}/history", [("q", text), ("limit", "200")])
        assert status == 200, (text, body)
        assert len(html_row_ids(body)) == len(want), text
        assert str(escape(text)) in body

        # --- Every other History filter: empty result or a 400 naming the parameter.
        history_params = ("agent", "severity", "event_type", "since", "until", "before", "limit")
        for param in (*history_params, "migration_only"):
            for url in (f"{base}/api/v1/events", f"{base}/history"):
                status, body = await _get(http, url, [(param, text)])
                if status == 200:
                    assert param == "agent", (param, text)
                    rows = html_row_ids(body) if url.endswith("/history") else []
                    if url.endswith("/events"):
                        rows = json.loads(body)["events"]
                    assert rows == [], (param, text)
                else:
                    assert _clean_400(status, body, param), (url, param, text, status, body)

        # --- Runs list (JSON and page): agent / state / before / limit.
        for param in ("agent", "state", "before", "limit"):
            for url in (f"{base}/api/v1/runs", f"{base}/runs", f"{base}/runs/rows"):
                status, body = await _get(http, url, [(param, text)])
                if status == 200:
                    assert param in {"agent", "before"}, (url, param, text)
                    if url.endswith("/api/v1/runs"):
                        assert json.loads(body)["runs"] == [], (param, text)
                    elif url.endswith("/rows"):
                        assert json.loads(body)["count"] == 0, (param, text)
                    else:
                        assert f'data-run-id="{run}"' not in body, (param, text)
                else:
                    assert _clean_400(status, body, param), (url, param, text, status, body)

        # --- Run logs: text and source match literally; level and cursors are validated.
        want_lines = [i + 1 for i, m in enumerate(seeded.log_messages) if _contains(m, text)]
        status, body = await _get(http, f"{base}/api/v1/runs/{run}/logs", [("q", text)])
        assert status == 200, (text, body)
        assert [x["seq"] for x in json.loads(body)["lines"]] == want_lines, text
        status, body = await _get(http, f"{base}/runs/{run}", [("q", text)])
        assert status == 200, (text, body)
        assert [int(s) for s in re.findall(r'data-seq="(\d+)"', body)] == want_lines, text
        source = f"src {text}"[:128]
        want_source = [i + 1 for i, s in enumerate(seeded.log_sources) if s == source]
        for url in (f"{base}/api/v1/runs/{run}/logs", f"{base}/runs/{run}"):
            status, body = await _get(http, url, [("source", source)])
            assert status == 200, (url, text, body)
            if url.endswith("/logs"):
                seqs = [x["seq"] for x in json.loads(body)["lines"]]
            else:
                seqs = [int(s) for s in re.findall(r'data-seq="(\d+)"', body)]
            assert seqs == want_source, (url, text)
            for param in ("level", "after_seq" if url.endswith("/logs") else "from_seq", "limit"):
                if param == "limit" and not url.endswith("/logs"):
                    continue
                status, body = await _get(http, url, [(param, text)])
                assert _clean_400(status, body, param), (url, param, text, status, body)

        # --- Ids in paths: a clean 404 (unknown) or 400 (not an id), never a 500.
        quoted = quote(text, safe="")
        for path in (
            f"/agents/{quoted}",
            f"/runs/{quoted}",
            f"/api/v1/runs/{quoted}",
            f"/api/v1/runs/{quoted}/logs",
            f"/api/v1/agents/{quoted}",
        ):
            status, body = await _get(http, f"{base}{path}", [])
            assert status in {400, 404}, (path, status, body)

    # The tables survived and nothing was added or removed.
    assert await _counts(running_server) == seeded.counts


# --------------------------------------------------------------------------- hostile strings

PAYLOADS = [
    '<img src=x onerror="window.__pwned=1">',
    "<script>window.__pwned=1</script>",
    '"><svg onload="window.__pwned=1"></svg><a href=\'javascript:window.__pwned=1\'>x</a>',
    "</textarea></title></style><script>window.__pwned=1</script>",
    "{{7*7}} ${7*7} <b>bold</b> &amp; &lt;",
]


def _payload(i: int, limit: int = 10_000) -> str:
    return PAYLOADS[i % len(PAYLOADS)][:limit]


async def _seed_hostile(server: RunningServer) -> tuple[str, str, list[str]]:
    """One agent whose every reported string carries a payload: facts, event fields, every
    error_detail string, system_info keys and values, run and step fields, log lines."""
    run_id = uuid7()
    facts = agent_pb2.HostFacts(
        hostname="evil-host<script>window.__pwned=1</script>",
        os=_payload(0),
        kernel=_payload(1),
        agent_version=_payload(4, 64),
        config_version="<b>1</b>",
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agent = await AgentClient.enroll(server, channel, hostname=facts.hostname)
        agent.facts.MergeFrom(facts)
        events = []
        for i in range(len(PAYLOADS)):
            detail = agent_pb2.ErrorDetail(
                failing_step=_payload(i),
                file_path=_payload(i + 1),
                errno=13,
                errno_name=_payload(i + 2),
                exception_type=_payload(i + 3),
                line=7,
                rollback=_payload(i + 4),
                rollback_error=_payload(i),
                backup_path=_payload(i + 1),
            )
            events.append(
                agent_pb2.MigrationEvent(
                    event_id=uuid7(),
                    event_type=agent_pb2.EVENT_TYPE_MIGRATION_EXECUTION,
                    status=agent_pb2.EVENT_STATUS_FAILED,
                    message=_payload(i),
                    error_message=_payload(i + 1),
                    error_detail=detail,
                    migration_from=_payload(i + 2, 64),
                    migration_to=_payload(i + 3, 64),
                    occurred_at=run_update(run_id, 1).occurred_at,
                    system_info={_payload(i, 128): _payload(i + 1), "<i>k</i>": _payload(i + 2)},
                    run_id=run_id,
                )
            )
        update = run_update(
            run_id,
            agent_pb2.RUN_STATE_FAILED,
            steps_done=1,
            steps_total=2,
            steps=[
                step(0, _payload(0), "succeeded", 3),
                step(1, _payload(1), "failed", 4, error=_payload(2)),
            ],
            migration_id=_payload(1, 128),
            migration_from=_payload(2, 64),
            migration_to=_payload(3, 64),
            error_message=_payload(4),
        )
        lines = [
            log_line(run_id, seq, message=_payload(seq), source=_payload(seq + 1, 128))
            for seq in range(1, 1 + len(PAYLOADS))
        ]
        reply = await agent.checkin(events=events, run_updates=[update], log_lines=lines)
        assert len(reply.acknowledged_event_ids) == len(events)
    return agent.agent_id, run_id, [_payload(i) for i in range(len(PAYLOADS))]


async def _assert_inert(watched: WatchedPage) -> None:
    page = watched.page
    assert await page.evaluate("typeof window.__pwned") == "undefined"
    # Elements only an injected payload would create (the page's own icons are plain SVG).
    injected = "main script, main img, main iframe, [onerror], [onload], a[href^='javascript:' i]"
    assert await page.locator(injected).count() == 0
    assert watched.dialogs == []


@pytest.mark.browser
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_hostile_strings_show_literally_and_never_run(
    running_server: RunningServer, browser_page: WatchedPage
) -> None:
    agent_id, run_id, payloads = await _seed_hostile(running_server)
    page = browser_page.page
    base = running_server.web_url

    await browser_logged_in(running_server, page, "viewer")
    await page.goto(f"{base}/history")
    rows = page.locator("li.event")
    await expect(rows).to_have_count(len(payloads))
    for index in range(len(payloads)):
        await rows.nth(index).locator("summary.event-summary").click()
    text = await page.locator("main").inner_text()
    for payload in payloads:
        assert payload in text, payload
    assert "evil-host<script>window.__pwned=1</script>" in text
    # The expanded detail: system_info keys and values, error detail strings, from -> to.
    details = rows.locator("details[open]")
    await expect(details).to_have_count(len(payloads))
    for index in range(len(payloads)):
        detail = await rows.nth(index).inner_text()
        assert "<i>k</i>" in detail and _payload(index, 128) in detail, detail
        assert _payload(index + 3) in detail and _payload(index + 2, 64) in detail, detail
    await _assert_inert(browser_page)

    for path in ("/", f"/agents/{agent_id}", f"/runs/{run_id}", "/runs"):
        await page.goto(f"{base}{path}")
        await expect(page.locator("main")).to_be_visible()
        text = await page.locator("main").inner_text()
        assert "<script>window.__pwned=1</script>" in text, path
        if path.startswith("/runs/"):
            for payload in payloads:
                assert payload in text, (path, payload)
        await _assert_inert(browser_page)

    assert browser_page.problems == []
    assert browser_page.bad_responses == []
