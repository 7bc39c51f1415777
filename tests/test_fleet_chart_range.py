"""The fleet page's events chart over a range (``?range=24h|7d|30d``): bucket counts from the
storage and the service on real databases (SQLite and PostgreSQL) at a fixed ``now``, the
chart's labels for each range, and the page through a real aiohttp server: the range links,
the links of the agent list keeping the range, and a refused range shown next to its links."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from server_testlib import new_event
from test_agent_list import link, listed_hosts
from test_history_web import Client, build_app, start_client

from server.domain import ChartRange, EventStatus, HostFacts, Severity, severity_for
from server.services import fleet as fleet_service
from server.storage import fleet as fleet_store
from server.storage.agents import CheckinUpdate, create_agent, record_checkins
from server.storage.db import create_engine_for_url, make_sessionmaker
from server.storage.events import insert_events
from server.web.fleet.charts import events_chart

# A Wednesday, in the middle of an hour: 15:37:12.345678 UTC.
NOW = datetime(2026, 3, 4, 15, 37, 12, 345678, tzinfo=UTC)
AGENT = str(uuid.UUID(int=0xC4A27 << 64 | 1))
SECOND = timedelta(seconds=1)
STATUS_OF = {severity_for(s): s for s in EventStatus if s is not EventStatus.PARTIAL}

# Worked out by hand from NOW: the bucket holding NOW and the oldest bucket of each range.
CURRENT = {
    ChartRange.DAY: datetime(2026, 3, 4, 15, tzinfo=UTC),
    ChartRange.WEEK: datetime(2026, 3, 4, 12, tzinfo=UTC),
    ChartRange.MONTH: datetime(2026, 3, 4, tzinfo=UTC),
}
OLDEST = {
    ChartRange.DAY: datetime(2026, 3, 3, 16, tzinfo=UTC),  # 23 hours before 15:00
    ChartRange.WEEK: datetime(2026, 2, 25, 18, tzinfo=UTC),  # 27 x 6 hours before 12:00
    ChartRange.MONTH: datetime(2026, 2, 3, tzinfo=UTC),  # 29 days before 4 March
}

# (when, severity): boundaries of every range, mid-bucket events, the current bucket.
SEEDS: list[tuple[datetime, Severity]] = [
    (NOW, Severity.ERROR),
    (NOW - timedelta(minutes=10), Severity.SUCCESS),
    (NOW + timedelta(minutes=5), Severity.INFO),  # later in the current hour (clock skew)
    (datetime(2026, 3, 4, 15, tzinfo=UTC), Severity.WARNING),  # the current hour's first instant
    (datetime(2026, 3, 4, 15, tzinfo=UTC) - SECOND, Severity.WARNING),  # the hour before
    (datetime(2026, 3, 4, 16, tzinfo=UTC), Severity.ERROR),  # next hour: not in 24h; in 7d, 30d
    (OLDEST[ChartRange.DAY], Severity.SUCCESS),  # the first instant of 24h
    (OLDEST[ChartRange.DAY] - SECOND, Severity.SUCCESS),  # just before 24h
    (datetime(2026, 3, 1, 9, 30, tzinfo=UTC), Severity.ERROR),  # mid-bucket, 3 days ago
    (datetime(2026, 3, 1, 9, 30, tzinfo=UTC), Severity.INFO),
    (OLDEST[ChartRange.WEEK], Severity.WARNING),  # the first instant of 7d
    (OLDEST[ChartRange.WEEK] - SECOND, Severity.WARNING),  # just before 7d
    (datetime(2026, 2, 22, 12, 30, tzinfo=UTC), Severity.INFO),  # mid-day, 10 days ago
    (OLDEST[ChartRange.MONTH], Severity.ERROR),  # the first instant of 30d
    (OLDEST[ChartRange.MONTH] - SECOND, Severity.ERROR),  # just before 30d
    (datetime(2026, 1, 20, 12, tzinfo=UTC), Severity.SUCCESS),  # 43 days ago: in no range
]


def expected_buckets(chart_range: ChartRange) -> list[dict[str, int]]:
    """The counts SEEDS should give, bucket by bucket, from the hand-worked OLDEST."""
    size = timedelta(seconds=chart_range.bucket_seconds)
    buckets = [{s.value: 0 for s in Severity} for _ in range(chart_range.buckets)]
    for when, severity in SEEDS:
        index = (when - OLDEST[chart_range]) // size
        if 0 <= index < chart_range.buckets:
            buckets[index][severity.value] += 1
    return buckets


async def seed_events(db_url: str, seeds: list[tuple[datetime, Severity]]) -> None:
    engine = create_engine_for_url(db_url)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            await create_agent(session, AGENT, HostFacts(hostname="chart-01"), NOW, 60)
            events = [
                replace(
                    new_event(AGENT, when),
                    status=STATUS_OF[severity],
                    severity=severity,
                    message=f"chart event {i}",
                )
                for i, (when, severity) in enumerate(seeds)
            ]
            await insert_events(session, events, NOW)
    finally:
        await engine.dispose()


@pytest.fixture
async def chart_db(db_url: str) -> str:
    await seed_events(db_url, SEEDS)
    return db_url


async def chart_of(db_url: str, chart_range: ChartRange) -> fleet_service.EventsChart:
    engine = create_engine_for_url(db_url)
    try:
        return await fleet_service.events_chart(make_sessionmaker(engine), chart_range, NOW)
    finally:
        await engine.dispose()


def test_each_range_declares_its_buckets() -> None:
    assert [r.value for r in ChartRange] == ["24h", "7d", "30d"]
    assert [(r.bucket_seconds, r.buckets) for r in ChartRange] == [
        (3600, 24),
        (6 * 3600, 28),
        (86400, 30),
    ]
    for r in ChartRange:
        start, end = fleet_service.chart_window(r, NOW)
        assert start == OLDEST[r] and end == CURRENT[r] + timedelta(seconds=r.bucket_seconds)


@pytest.mark.parametrize("chart_range", list(ChartRange), ids=[r.value for r in ChartRange])
async def test_buckets_count_each_range(chart_db: str, chart_range: ChartRange) -> None:
    chart = await chart_of(chart_db, chart_range)
    size = timedelta(seconds=chart_range.bucket_seconds)
    assert chart.chart_range is chart_range
    starts = [start for start, _ in chart.buckets]
    # Oldest first, aligned to UTC bucket boundaries, the last holding NOW.
    assert starts == [OLDEST[chart_range] + i * size for i in range(chart_range.buckets)]
    assert starts[-1] == CURRENT[chart_range] <= NOW < starts[-1] + size
    assert all(set(counts) == {s.value for s in Severity} for _, counts in chart.buckets)
    assert [counts for _, counts in chart.buckets] == expected_buckets(chart_range)


async def test_boundaries_empty_buckets_and_the_current_bucket(chart_db: str) -> None:
    day = await chart_of(chart_db, ChartRange.DAY)
    # The current hour: NOW, 10 min before, 5 min after, and 15:00:00 itself.
    assert day.buckets[-1][1] == {"error": 1, "warning": 1, "success": 1, "info": 1}
    assert day.buckets[-2][1] == {"error": 0, "warning": 1, "success": 0, "info": 0}  # 14:59:59
    assert day.buckets[0][1]["success"] == 1  # the window's first instant, not the one before
    assert sum(sum(c.values()) for _, c in day.buckets) == 6
    assert day.buckets[5][1] == {s.value: 0 for s in Severity}  # an empty hour: zeros

    week = await chart_of(chart_db, ChartRange.WEEK)
    # 12:00-18:00 holds the current hour's four, 14:59:59 and 16:00.
    assert sum(week.buckets[-1][1].values()) == 6
    assert week.buckets[0][1] == {"error": 0, "warning": 1, "success": 0, "info": 0}
    mid = [c for start, c in week.buckets if start == datetime(2026, 3, 1, 6, tzinfo=UTC)]
    assert mid == [{"error": 1, "warning": 0, "success": 0, "info": 1}]
    # The 6 of 24h, 16:00, 15:59:59 the day before, 1 March's 2 and 7d's first instant.
    assert sum(sum(c.values()) for _, c in week.buckets) == 11

    month = await chart_of(chart_db, ChartRange.MONTH)
    assert month.buckets[0][1] == {"error": 1, "warning": 0, "success": 0, "info": 0}
    assert sum(month.buckets[-1][1].values()) == 6  # 4 March
    assert sum(sum(c.values()) for _, c in month.buckets) == len(SEEDS) - 2  # 2 older


async def test_an_empty_history_gives_zeros_in_every_bucket(db_url: str) -> None:
    for chart_range in ChartRange:
        chart = await chart_of(db_url, chart_range)
        assert len(chart.buckets) == chart_range.buckets
        assert all(counts == {s.value: 0 for s in Severity} for _, counts in chart.buckets)


@pytest.mark.parametrize("bucket_seconds", [900, 7 * 86400])
async def test_storage_counts_any_bucket_size_aligned_to_the_epoch(
    chart_db: str, bucket_seconds: int
) -> None:
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
    engine = create_engine_for_url(chart_db)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            found = await fleet_store.count_events_by_bucket(session, start, end, bucket_seconds)
    finally:
        await engine.dispose()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    expected: dict[tuple[datetime, str], int] = {}
    for when, severity in SEEDS:
        bucket = epoch + (when - epoch) // timedelta(seconds=bucket_seconds) * timedelta(
            seconds=bucket_seconds
        )
        expected[bucket, severity.value] = expected.get((bucket, severity.value), 0) + 1
    # Only non-empty buckets travel, each once per severity.
    assert {(c.start, c.severity): c.count for c in found} == expected
    assert len(found) == len(expected)


# --------------------------------------------------------------------------- the chart's labels


def _chart(
    chart_range: ChartRange, counts: dict[int, int] | None = None
) -> list[tuple[datetime, dict[str, int]]]:
    """The buckets of ``chart_range`` at NOW with ``counts`` errors (bucket index -> count)."""
    start, _ = fleet_service.chart_window(chart_range, NOW)
    size = timedelta(seconds=chart_range.bucket_seconds)
    return [
        (start + i * size, {"error": (counts or {}).get(i, 0)}) for i in range(chart_range.buckets)
    ]


def test_labels_make_sense_for_each_range() -> None:
    day = events_chart(_chart(ChartRange.DAY, {23: 2}), 3600)
    assert day.heading == "Events per hour, last 24 hours"
    assert day.title == "Events per hour by severity, last 24 hours"
    assert [t.label for t in day.x_ticks] == [
        "18:00",
        "21:00",
        "00:00",
        "03:00",
        "06:00",
        "09:00",
        "12:00",
        "15:00",
    ]
    assert day.bars[-1].title == "15:00 UTC: 2 errors"
    assert day.description == (
        "2 events in the last 24 hours: 2 errors, 0 warnings, 0 successes, 0 info. "
        "Busiest hour: 15:00 UTC with 2 events."
    )

    week = events_chart(_chart(ChartRange.WEEK, {2: 1}), 6 * 3600)
    assert week.heading == "Events per 6 hours, last 7 days"
    assert len(week.bars) == 28
    # A label at each UTC midnight: day of the week and of the month.
    assert [t.label for t in week.x_ticks] == [
        "Thu 26",
        "Fri 27",
        "Sat 28",
        "Sun 1",
        "Mon 2",
        "Tue 3",
        "Wed 4",
    ]
    assert week.bars[0].title == "Wed 25 Feb 18:00\N{EN DASH}00:00 UTC: no events"
    assert week.bars[-1].title == "Wed 4 Mar 12:00\N{EN DASH}18:00 UTC: no events"
    assert week.description.endswith(
        "Busiest 6 hours: Thu 26 Feb 06:00\N{EN DASH}12:00 UTC with 1 event."
    )

    month = events_chart(_chart(ChartRange.MONTH, {27: 5}), 86400)
    assert month.heading == "Events per day, last 30 days"
    assert [t.label for t in month.x_ticks] == ["9 Feb", "16 Feb", "23 Feb", "2 Mar"]  # Mondays
    assert month.bars[0].title == "Tue 3 Feb UTC: no events"
    assert month.description.startswith("5 events in the last 30 days: 5 errors")
    assert month.description.endswith("Busiest day: Mon 2 Mar UTC with 5 events.")
    empty = events_chart(_chart(ChartRange.MONTH), 86400)
    assert empty.empty and empty.empty_text == "No events in the last 30 days"
    assert empty.description == "No events in the last 30 days."


# --------------------------------------------------------------------------- the page

NODES = 101  # one more than a page of the agent list: a next link


def mid_bucket(now: datetime, chart_range: ChartRange, ago: int) -> datetime:
    """The middle of the bucket ``ago`` buckets before the one holding ``now``: well away from
    any bucket boundary, so the test cannot flake when it runs at one."""
    start, _ = fleet_service.chart_window(chart_range, now)
    size = timedelta(seconds=chart_range.bucket_seconds)
    return start + (chart_range.buckets - 1 - ago) * size + size / 2


@pytest.fixture
async def page_client(db_url: str) -> AsyncIterator[Client]:
    now = datetime.now(UTC)
    # 2 events in the last 24 hours, 3 more in the last 7 days, 4 more in the last 30 days,
    # 1 older than that.
    seeds = [
        *[(mid_bucket(now, ChartRange.DAY, 2), Severity.ERROR)] * 2,
        *[(mid_bucket(now, ChartRange.WEEK, 12), Severity.SUCCESS)] * 3,
        *[(mid_bucket(now, ChartRange.MONTH, 12), Severity.INFO)] * 4,
        (mid_bucket(now, ChartRange.MONTH, 45), Severity.WARNING),
    ]
    await seed_events(db_url, seeds)
    engine = create_engine_for_url(db_url)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            for i, (host, version) in enumerate([("web-1", "2"), ("web-2", "3"), ("db-1", "3")]):
                agent_id = str(uuid.UUID(int=0xC4A27 << 64 | 100 + i))
                facts = HostFacts(hostname=host, config_version=version)
                await create_agent(session, agent_id, facts, now, 60)
                await record_checkins(session, [CheckinUpdate(agent_id, now, None)])
            for i in range(NODES):  # never checked in, no config version
                agent_id = str(uuid.UUID(int=0xC4A27 << 64 | 1000 + i))
                await create_agent(session, agent_id, HostFacts(hostname=f"node-{i:03d}"), now, 60)
    finally:
        await engine.dispose()
    client = await start_client(build_app(db_url), role="viewer")
    try:
        yield client
    finally:
        await client.close()


def heading(body: str) -> str:
    match = re.search(r'<h2 id="chart-title">([^<]*)</h2>', body)
    assert match, "no chart heading"
    return match.group(1)


def range_links(body: str) -> dict[str, tuple[str, bool]]:
    """The range links: label -> (URL, marked current)."""
    nav = re.search(r'<nav class="range-links"[^>]*>(.*?)</nav>', body, re.S)
    assert nav, "no range links"
    found = re.findall(
        r'<a href="([^"]+)" title="[^"]*"( aria-current="page")?>([^<]+)</a>', nav[1]
    )
    return {label: (html.unescape(url), bool(current)) for url, current, label in found}


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def chart_description(body: str) -> str:
    match = re.search(r'<desc id="events-chart-desc">(.*?)</desc>', body, re.S)
    assert match, "no chart description"
    return match.group(1)


async def test_each_range_on_the_page(page_client: Client) -> None:
    cases = [
        ("", "Events per hour, last 24 hours", 24, "2 events in the last 24 hours", "24 h"),
        ("7d", "Events per 6 hours, last 7 days", 28, "5 events in the last 7 days", "7 d"),
        ("30D", "Events per day, last 30 days", 30, "9 events in the last 30 days", "30 d"),
    ]
    for value, title, bars, summary, current in cases:
        resp = await page_client.get("/", params={"range": value} if value else {})
        assert resp.status == 200, value
        body = await resp.text()
        assert heading(body) == title
        assert f'<title id="events-chart-title">{title.replace(",", " by severity,")}' in body
        assert chart_description(body).startswith(summary)
        assert len(re.findall(r"<title>[^<]* UTC: [^<]*</title>", body)) == bars
        links = range_links(body)
        assert list(links) == ["24 h", "7 d", "30 d"]
        assert [label for label, (_, marked) in links.items() if marked] == [current]
        assert 'id="range-error"' not in body


async def test_range_links_keep_the_list_and_drop_its_cursor(page_client: Client) -> None:
    params = {"q": "node", "health": "never", "version": "-", "sort": "checkin"}
    first = await (await page_client.get("/", params={**params, "order": "desc"})).text()
    later = await page_client.get(link(first, "agent-list-next"))
    assert later.status == 200
    body = await later.text()
    assert "(a later page)" in body  # the page carries a cursor (after)
    kept = {name: [value] for name, value in {**params, "order": "desc"}.items()}
    for label, value in [("24 h", None), ("7 d", "7d"), ("30 d", "30d")]:
        url, _ = range_links(body)[label]
        assert urlsplit(url).path == "/" and urlsplit(url).fragment == "chart-title"
        assert query_of(url) == {**kept, **({"range": [value]} if value else {})}, label


async def test_agent_list_links_keep_the_range(page_client: Client) -> None:
    resp = await page_client.get("/", params={"range": "30d", "q": "node"})
    body = await resp.text()
    assert heading(body) == "Events per day, last 30 days"
    assert len(listed_hosts(body)) == 100
    urls = [html.unescape(u) for u in re.findall(r'<a class="sort-link" href="([^"]+)"', body)]
    urls += [
        html.unescape(u)
        for u in re.findall(
            r'<a class="card card-(?:online|stale|offline|never)[^"]*" href="([^"]+)"', body
        )
    ]
    urls += [html.unescape(u) for u in re.findall(r'<a href="([^"]+)" title="Show these', body)]
    urls += [link(body, "agent-list-next")]
    clear = re.search(r'<a href="([^"]+)">Clear</a>', body)
    assert clear is not None
    urls.append(html.unescape(clear.group(1)))
    assert len(urls) >= 5 + 4 + 3 + 2  # sort heads, cards, version rows, next, clear
    for url in urls:
        assert query_of(url).get("range") == ["30d"], url
    assert '<input type="hidden" name="range" value="30d">' in body  # the filter form
    # Page 2 keeps it too, and its own range links still do not carry the cursor.
    body = await (await page_client.get(link(body, "agent-list-next"))).text()
    assert heading(body) == "Events per day, last 30 days"
    assert query_of(link(body, "agent-list-first"))["range"] == ["30d"]
    assert "after" not in query_of(range_links(body)["7 d"][0])
    # At the default range the links stay as they were: no range parameter.
    body = await (await page_client.get("/", params={"q": "node"})).text()
    assert "range" not in query_of(link(body, "agent-list-next"))
    assert 'name="range"' not in body


async def test_a_bad_range_is_shown_next_to_its_links_and_the_rest_applies(
    page_client: Client,
) -> None:
    resp = await page_client.get("/", params={"range": "1y", "q": "web"})
    assert resp.status == 400
    body = await resp.text()
    nav = re.search(r'<nav class="range-links"([^>]*)>', body)
    assert nav is not None and 'aria-describedby="range-error"' in nav.group(1)
    error = (
        '<p class="field-error" id="range-error" role="alert">range: must be one of 24h, 7d, 30d'
    )
    assert error in body
    # Right after the links, above the chart.
    assert body.index("</nav>", nav.start()) < body.index(error) < body.index('class="chart"')
    assert heading(body) == "Events per hour, last 24 hours"  # the default range
    assert [label for label, (_, marked) in range_links(body).items() if marked] == ["24 h"]
    assert chart_description(body).startswith("2 events in the last 24 hours")
    assert listed_hosts(body) == ["web-1", "web-2"]  # the search still applies
    assert 'id="agent-list-error"' not in body
    assert "range" not in query_of(range_links(body)["24 h"][0])
    assert query_of(range_links(body)["7 d"][0]) == {"q": ["web"], "range": ["7d"]}

    # Both refused at once: both errors, each next to its field; still a 400.
    resp = await page_client.get("/", params={"range": "week", "health": "asleep", "q": "web"})
    assert resp.status == 400
    body = await resp.text()
    assert 'id="range-error" role="alert">range: must be one of' in body
    assert 'id="agent-health-error" role="alert">health: must be one of' in body
    assert listed_hosts(body) == ["web-1", "web-2"]

    resp = await page_client.get("/?range=7d&range=30d")
    assert resp.status == 400
    assert 'id="range-error" role="alert">range: must be given at most once' in await resp.text()
