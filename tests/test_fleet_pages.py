"""The fleet overview (``/``) and the agent page (``/agents/{id}``) on real databases and a real
aiohttp server (SQLite and PostgreSQL), seeded through the storage layer."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from test_history_web import Client, _event, build_app, html_row_ids, start_client

from server.domain import EventStatus, EventType, HostFacts, NewEvent
from server.services.fleet import newest_version, version_key
from server.storage.agents import CheckinUpdate, create_agent, record_checkins, set_revoked
from server.storage.db import create_engine_for_url, make_sessionmaker
from server.storage.events import insert_events
from server.web.fleet.charts import events_chart, nice_max

XSS_HOST = "<img src=x onerror=alert(1)>"


@dataclass(frozen=True)
class FleetAgentSeed:
    id: str
    hostname: str
    config_version: str
    silent_for: timedelta | None  # None: never checked in
    revoked: bool = False


def _agent_id(i: int) -> str:
    return str(uuid.UUID(int=0xF1EE7 << 64 | i))


# Default config: interval 60 s, stale after 3 intervals (180 s), offline after 10 (600 s).
FLEET = [
    FleetAgentSeed(_agent_id(1), "web-01", "3", timedelta(seconds=5)),
    FleetAgentSeed(_agent_id(2), "web-02", "3", timedelta(seconds=30)),
    FleetAgentSeed(_agent_id(3), "db-01", "10", timedelta(seconds=100)),  # newest: 10 > 3
    FleetAgentSeed(_agent_id(4), "db-02", "2", timedelta(seconds=400)),  # stale
    FleetAgentSeed(_agent_id(5), "cache-01", "2", timedelta(seconds=500)),  # stale
    FleetAgentSeed(_agent_id(6), "old-01", "1", timedelta(hours=3)),  # offline
    FleetAgentSeed(_agent_id(7), XSS_HOST, "", None),  # never checked in
    FleetAgentSeed(_agent_id(8), "gone-01", "10", timedelta(seconds=5), revoked=True),
]


@dataclass(frozen=True)
class FleetSeed:
    now: datetime
    events: list[NewEvent]


async def seed_fleet(db_url: str) -> FleetSeed:
    now = datetime.now(UTC)
    engine = create_engine_for_url(db_url)
    sessions = make_sessionmaker(engine)
    events: list[NewEvent] = []
    statuses = [
        EventStatus.FAILED,
        EventStatus.SUCCESS,
        EventStatus.WARNING,
        EventStatus.NOT_NEEDED,
    ]
    # Hours ago of each event: several in the current hour, some spread over the day, two
    # outside the window (25 h ago, and 2 days ago) that the chart must not count.
    # The chart's buckets are clock hours, so an earlier event sits in the middle of its hour:
    # "now minus 23 h 1 min" would leave the window when the test runs in a minute :00.
    hours_ago = [0, 0, 0, 1, 1, 5, 5, 5, 5, 12, 23, 25, 48]
    hour_start = now.replace(minute=0, second=0, microsecond=0)
    for i, ago in enumerate(hours_ago):
        when = now if ago == 0 else hour_start - timedelta(hours=ago) + timedelta(minutes=30)
        event = _event(
            5000 + i,
            FLEET[i % 3].id,
            EventType.MIGRATION_EXECUTION,
            statuses[i % 4],
            message=f"fleet event {i}",
        )
        events.append(_with_time(event, when))
    try:
        async with sessions() as session, session.begin():
            for a in FLEET:
                facts = HostFacts(
                    hostname=a.hostname,
                    os="Debian GNU/Linux 12",
                    kernel="6.1.0-18-amd64",
                    agent_version="0.4.0",
                    config_version=a.config_version,
                    disk_free_bytes=12 * 1024**3,
                )
                await create_agent(session, a.id, facts, now - timedelta(days=3), 60)
            await record_checkins(
                session,
                [
                    CheckinUpdate(a.id, now - a.silent_for, None)
                    for a in FLEET
                    if a.silent_for is not None
                ],
            )
            for a in FLEET:
                if a.revoked:
                    await set_revoked(session, a.id, now)
        for event in events:
            async with sessions() as session, session.begin():
                await insert_events(session, [event], now)
    finally:
        await engine.dispose()
    return FleetSeed(now, events)


def _with_time(event: NewEvent, when: datetime) -> NewEvent:
    from dataclasses import replace

    return replace(event, occurred_at=when)


@pytest.fixture
async def fleet(db_url: str) -> AsyncIterator[tuple[Client, FleetSeed]]:
    seeded = await seed_fleet(db_url)
    client = await start_client(build_app(db_url), role="admin")  # admins see "Run now"
    try:
        yield client, seeded
    finally:
        await client.close()


def card_value(body: str, key: str) -> int:
    match = re.search(
        rf'class="card card-{key}[^"]*".*?<span class="card-value">(\d+)</span>', body, re.S
    )
    assert match, f"no {key} card"
    return int(match.group(1))


async def test_overview_counts_a_seeded_fleet(fleet: tuple[Client, FleetSeed]) -> None:
    client, seeded = fleet
    resp = await client.get("/")
    assert resp.status == 200
    body = await resp.text()
    assert card_value(body, "online") == 3
    assert card_value(body, "stale") == 2
    assert card_value(body, "offline") == 1
    assert card_value(body, "never") == 1
    assert "8 agents enrolled" in body
    # Rollout: newest version is "10" (natural order); revoked gone-01 does not count.
    # The fleet (not revoked): 7, of which 6 report a version; on "10": 1. The figure and the
    # table's row for "10" are the same share of the same fleet.
    assert "<strong>14%</strong> of the fleet is on config version <code>10</code>" in body
    assert 'max="7" value="1"' in body
    assert "1 of 7 agents (1 not reporting a config version)." in body
    row = re.search(r'<tr class="version-target">.*?</tr>', body, re.S)
    assert row is not None and '<span class="muted">14%</span>' in row.group(0)
    # The chart: 11 events inside the last 24 hours (not the 25 h and 48 h old ones).
    in_window = seeded.events[:11]
    errors = sum(1 for e in in_window if e.status is EventStatus.FAILED)
    desc = re.search(r'<desc id="events-chart-desc">(.*?)</desc>', body, re.S)
    assert desc is not None
    assert desc.group(1).startswith(f"11 events in the last 24 hours: {errors} error")
    # The current hour holds 3 events: the last bar's title says so.
    titles = re.findall(r"<title>(\d\d:00 UTC: [^<]*)</title>", body)
    assert len(titles) == 24
    assert (
        "no events" not in titles[-1]
        and sum(int(n) for n in re.findall(r"(\d+) [a-z]+", titles[-1])) == 3
    )
    assert titles[-2].count(",") == 1  # 1 hour ago: two events of two severities
    # Agents table links to agent pages; agent-supplied hostnames are escaped.
    assert f'href="/agents/{FLEET[0].id}"' in body
    assert XSS_HOST not in body and html.escape(XSS_HOST, quote=False) in body
    assert "Revoked" in body


async def test_overview_with_an_empty_fleet(db_url: str) -> None:
    client = await start_client(build_app(db_url))
    try:
        body = await (await client.get("/")).text()
        assert "No agents yet." in body
        assert "No agent has reported a config version yet." in body
        assert "No events in the last 24 hours." in body
    finally:
        await client.close()


async def test_agent_page_shows_facts_and_only_its_events(
    fleet: tuple[Client, FleetSeed],
) -> None:
    client, seeded = fleet
    agent = FLEET[1]
    resp = await client.get(f"/agents/{agent.id}")
    assert resp.status == 200
    body = await resp.text()
    assert "<h1>web-02" in body and "Online" in body
    for fact in ("Debian GNU/Linux 12", "6.1.0-18-amd64", "0.4.0", "12.0 GiB", agent.id):
        assert fact in body
    rows = html_row_ids(body)
    mine = [e for e in seeded.events if e.agent_id == agent.id]
    assert len(rows) == len(mine) > 0
    messages = re.findall(r'<span class="cell cell-message">.*?</span>(.*?)</span>', body, re.S)
    assert sorted(m.strip() for m in messages) == sorted(e.message for e in mine)
    assert f'href="/history?agent={agent.id}"' in body
    assert 'action="/agents/' in body and "Run migration now" in body


async def test_agent_page_escapes_and_errors(fleet: tuple[Client, FleetSeed]) -> None:
    client, _ = fleet
    body = await (await client.get(f"/agents/{FLEET[6].id}")).text()
    assert XSS_HOST not in body and html.escape(XSS_HOST, quote=False) in body
    assert "never" in body
    revoked = await (await client.get(f"/agents/{FLEET[7].id}")).text()
    assert "revoked" in revoked and "disabled" in revoked
    missing = await client.get(f"/agents/{uuid.uuid4()}")
    assert missing.status == 404 and "no agent" in await missing.text()
    bad = await client.get("/agents/" + "x" * 65)
    assert bad.status == 400 and "agent_id" in await bad.text()


def test_version_order_and_chart_geometry() -> None:
    assert sorted(["10", "9", "2", "v1.10", "v1.9"], key=version_key) == [
        "2",
        "9",
        "10",
        "v1.9",
        "v1.10",
    ]
    assert newest_version({"": 3, "2": 1, "10": 1}) == "10"
    assert newest_version({"": 2}) is None
    assert [nice_max(v) for v in (0, 4, 5, 9, 21, 99, 101)] == [4, 4, 8, 20, 40, 100, 200]
    start = datetime(2026, 3, 1, tzinfo=UTC)
    hours = [(start + timedelta(hours=i), {"error": 2, "success": i}) for i in range(24)]
    chart = events_chart(hours, 3600)
    assert len(chart.bars) == 24 and chart.total == 48 + sum(range(24))
    tallest = chart.bars[-1]
    top = min(s.y for s in tallest.segments)
    # The tallest bar (25 events) on a 0..40 axis: 25/40 of the plot height.
    plot = chart.plot_bottom - chart.plot_top
    assert abs((chart.plot_bottom - top) - plot * 25 / 40) < 0.01
    assert [t.label for t in chart.y_ticks] == ["0", "10", "20", "30", "40"]
    # Segments stack without overlap, errors at the base.
    assert tallest.segments[0].severity == "error"
    assert abs(tallest.segments[0].y - (tallest.segments[1].y + tallest.segments[1].height)) < 1e-6
