"""The fleet overview's agent list on real databases (SQLite and PostgreSQL): search by
hostname / label / tag / id, health and config version filters, every sortable column in both
directions walked page by page (keyset: no row twice, none skipped), and the page's links, cards
and filter errors through a real aiohttp server."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from test_history_web import Client, build_app, start_client

from server.config import load_config
from server.domain import AgentListQuery, AgentSort, AgentState, HostFacts, version_key
from server.errors import InvalidArgument
from server.services import fleet as fleet_service
from server.storage.agents import CheckinUpdate, create_agent, record_checkins, set_revoked
from server.storage.db import create_engine_for_url, make_sessionmaker
from server.storage.targets import change_tags

# The default config: interval 60 s, online within 180 s, offline after 600 s.
CONFIG = load_config(env={})
STATE_ORDER = list(AgentState)


@dataclass(frozen=True)
class Seed:
    id: str
    hostname: str
    config_version: str
    agent_version: str
    silent_for: timedelta | None  # None: never checked in
    labels: tuple[tuple[str, str], ...] = ()
    revoked: bool = False

    def state(self) -> AgentState:
        if self.revoked:
            return AgentState.REVOKED
        if self.silent_for is None:
            return AgentState.NEVER
        if self.silent_for <= timedelta(seconds=180):
            return AgentState.ONLINE
        if self.silent_for <= timedelta(seconds=600):
            return AgentState.STALE
        return AgentState.OFFLINE


def _id(i: int) -> str:
    return str(uuid.UUID(int=0xA6E7 << 96 | i))


SILENCES = [timedelta(seconds=5), timedelta(seconds=300), timedelta(hours=2), None]
VERSIONS = ["2", "10", "9", "v1.10", "v1.9", ""]
AGENT_VERSIONS = ["0.4.0", "0.10.0", "0.9.1"]
ROLES = ["web", "db", "cache"]

# 31 agents: ties on every sort column (so hostname and id must break them), every health,
# natural-order versions, two agents sharing a hostname, one whose name holds LIKE wildcards.
FLEET = [
    Seed(
        _id(i),
        f"{ROLES[i % 3]}-{i // 3:02d}",
        VERSIONS[i % len(VERSIONS)],
        AGENT_VERSIONS[i % len(AGENT_VERSIONS)],
        SILENCES[i % len(SILENCES)],
        (("env", "prod" if i % 2 else "staging"), ("role", ROLES[i % 3])),
        revoked=i % 10 == 7,
    )
    for i in range(29)
] + [
    Seed(_id(100), "web-00", "10", "0.4.0", timedelta(seconds=1)),  # same name as agent 0
    Seed(_id(101), "odd_100%", "2", "0.4.0", timedelta(seconds=1), (("team", "ops"),)),
]
TAGGED = {_id(3): "canary", _id(4): "wave=1"}


async def seed(db_url: str) -> datetime:
    now = datetime.now(UTC)
    engine = create_engine_for_url(db_url)
    sessions = make_sessionmaker(engine)
    try:
        async with sessions() as session, session.begin():
            for a in FLEET:
                facts = HostFacts(
                    hostname=a.hostname,
                    agent_version=a.agent_version,
                    config_version=a.config_version,
                    labels=a.labels,
                )
                await create_agent(session, a.id, facts, now - timedelta(days=1), 60)
            await record_checkins(
                session,
                [CheckinUpdate(a.id, now - a.silent_for, None) for a in FLEET if a.silent_for],
            )
            for a in FLEET:
                if a.revoked:
                    await set_revoked(session, a.id, now)
            for agent_id, tag in TAGGED.items():
                await change_tags(session, [agent_id], [tag], [])
    finally:
        await engine.dispose()
    return now


def expected_key(a: Seed, sort: AgentSort, now: datetime) -> tuple[Any, ...]:
    lead: Any
    if sort is AgentSort.HOST:
        return (a.hostname, a.id)
    if sort is AgentSort.HEALTH:
        lead = STATE_ORDER.index(a.state())
    elif sort is AgentSort.CONFIG_VERSION:
        lead = version_key(a.config_version)
    elif sort is AgentSort.AGENT_VERSION:
        lead = version_key(a.agent_version)
    else:
        lead = (now - a.silent_for) if a.silent_for else datetime(1, 1, 1, tzinfo=UTC)
    return (lead, a.hostname, a.id)


@pytest.fixture
async def seeded(db_url: str) -> AsyncIterator[tuple[str, datetime]]:
    yield db_url, await seed(db_url)


async def walk(db_url: str, query: AgentListQuery, now: datetime) -> tuple[list[str], int]:
    """Every page of ``query`` (following next_after), the ids in order, and the page count."""
    engine = create_engine_for_url(db_url)
    sessions = make_sessionmaker(engine)
    ids: list[str] = []
    pages = 0
    try:
        while True:
            page = await fleet_service.list_agents(sessions, CONFIG, query, now)
            pages += 1
            assert page.matching >= len(page.agents)
            ids.extend(a.record.id for a in page.agents)
            if page.next_after is None:
                return ids, pages
            after = fleet_service.decode_list_cursor(page.next_after, query.sort)
            query = replace(query, after=after)
            assert pages < 50
    finally:
        await engine.dispose()


async def test_every_sort_walks_every_agent_once_in_order(seeded: tuple[str, datetime]) -> None:
    db_url, now = seeded
    for sort in AgentSort:
        for descending in (False, True):
            query = AgentListQuery(sort=sort, descending=descending, limit=4)
            ids, pages = await walk(db_url, query, now)
            expected = sorted(FLEET, key=lambda a: expected_key(a, sort, now), reverse=descending)
            assert ids == [a.id for a in expected], (sort, descending)
            assert pages == -(-len(FLEET) // 4)


async def test_version_sort_is_natural(seeded: tuple[str, datetime]) -> None:
    db_url, now = seeded
    ids, _ = await walk(db_url, AgentListQuery(sort=AgentSort.CONFIG_VERSION, limit=100), now)
    by_id = {a.id: a for a in FLEET}
    order = list(dict.fromkeys(by_id[i].config_version for i in ids))
    assert order == ["", "2", "9", "10", "v1.9", "v1.10"]


def _matching(pred: Any) -> list[str]:
    return [a.id for a in sorted(FLEET, key=lambda a: (a.hostname, a.id)) if pred(a)]


FILTERS: list[tuple[str, AgentListQuery, Any]] = [
    ("hostname any case", AgentListQuery(text="WEB-0"), lambda a: "web-0" in a.hostname),
    ("id prefix", AgentListQuery(text=_id(12)[:30]), lambda a: a.id.startswith(_id(12)[:30])),
    ("label key=value", AgentListQuery(text="role=db"), lambda a: ("role", "db") in a.labels),
    ("label text", AgentListQuery(text="stag"), lambda a: ("env", "staging") in a.labels),
    ("tag", AgentListQuery(text="canary"), lambda a: a.id == _id(3)),
    ("tag key=value", AgentListQuery(text="wave=1"), lambda a: a.id == _id(4)),
    ("wildcards are literal", AgentListQuery(text="_100%"), lambda a: a.id == _id(101)),
    ("percent alone", AgentListQuery(text="%"), lambda a: a.id == _id(101)),
    ("nothing", AgentListQuery(text="no-such-host"), lambda a: False),
    (
        "version",
        AgentListQuery(config_version="10"),
        lambda a: a.config_version == "10",
    ),
    (
        "not reported",
        AgentListQuery(config_version=""),
        lambda a: a.config_version == "",
    ),
    (
        "health and text",
        AgentListQuery(state=AgentState.ONLINE, text="db"),
        lambda a: a.state() is AgentState.ONLINE and "db" in a.hostname,
    ),
] + [
    (f"health {s.value}", AgentListQuery(state=s), lambda a, s=s: a.state() is s)
    for s in AgentState
]


async def test_filters(seeded: tuple[str, datetime]) -> None:
    db_url, now = seeded
    engine = create_engine_for_url(db_url)
    try:
        for name, query, pred in FILTERS:
            expected = _matching(pred)
            ids, _ = await walk(db_url, replace(query, limit=5), now)
            assert ids == expected, name
            page = await fleet_service.list_agents(make_sessionmaker(engine), CONFIG, query, now)
            assert page.matching == len(expected), name
    finally:
        await engine.dispose()


def test_cursor_of_another_sort_is_refused() -> None:
    record = fleet_service.AgentRecord(
        id=_id(1),
        hostname="web-01",
        os="",
        kernel="",
        agent_version="",
        config_version="3",
        disk_free_bytes=0,
        machine_id="",
        enrolled_at=datetime.now(UTC),
        last_checkin_at=None,
        checkin_interval_seconds=60,
        revoked=False,
    )
    cursor = fleet_service.encode_list_cursor(
        record, AgentSort.CONFIG_VERSION, fleet_service.AgentHealth.NEVER
    )
    assert fleet_service.decode_list_cursor(cursor, AgentSort.CONFIG_VERSION) == (
        "3",
        "web-01",
        _id(1),
    )
    for bad, sort in [(cursor, AgentSort.HOST), ("bm90IGpzb24", AgentSort.HOST), ("%%", None)]:
        with pytest.raises(InvalidArgument) as exc:
            fleet_service.decode_list_cursor(bad, sort or AgentSort.HOST)
        assert exc.value.field == "after"


# --------------------------------------------------------------------------- the page


@pytest.fixture
async def page_client(seeded: tuple[str, datetime]) -> AsyncIterator[Client]:
    db_url, _ = seeded
    client = await start_client(build_app(db_url), role="viewer")
    try:
        yield client
    finally:
        await client.close()


def listed_hosts(body: str) -> list[str]:
    table = re.search(r'<table class="data-table" id="agent-list">.*?</table>', body, re.S)
    if table is None:
        return []
    return [
        html.unescape(h)
        for h in re.findall(r'<th scope="row"><a href="/agents/[^"]+">([^<]*)</a>', table[0])
    ]


def link(body: str, element_id: str) -> str:
    match = re.search(rf'<a href="([^"]+)" id="{element_id}"', body)
    assert match, f"no link {element_id}"
    return html.unescape(match.group(1))


async def test_page_walks_with_next_links_and_sorts_from_headers(page_client: Client) -> None:
    resp = await page_client.get("/", params={"sort": "checkin", "order": "desc"})
    assert resp.status == 200
    body = await resp.text()
    assert 'aria-sort="descending"><a class="sort-link"' in body
    # The Last check-in head now sorts ascending; the Host head sorts by host.
    heads = dict(re.findall(r'<a class="sort-link" href="([^"]+)">([^<]+)', body))
    by_label = {label.strip(): html.unescape(url) for url, label in heads.items()}
    assert parse_qs(urlsplit(by_label["Last check-in"]).query) == {"sort": ["checkin"]}
    assert parse_qs(urlsplit(by_label["Host"]).query) == {}
    hosts = listed_hosts(body)
    assert len(hosts) == len(FLEET)  # one page of 100
    online = {a.hostname for a in FLEET if a.state() is AgentState.ONLINE}
    assert set(hosts[: len(online)]) <= online | {"web-00"}
    assert 'id="agent-list-next"' not in body


async def test_cards_and_version_rows_filter_the_list(page_client: Client) -> None:
    body = await (await page_client.get("/")).text()
    card = re.search(r'<a class="card card-stale[^"]*" href="([^"]+)"', body)
    assert card is not None
    resp = await page_client.get(html.unescape(card.group(1)))
    body = await resp.text()
    stale = sorted(a.hostname for a in FLEET if a.state() is AgentState.STALE)
    assert sorted(listed_hosts(body)) == stale
    assert re.search(r'class="card card-stale[^"]* card-current" href="[^"]+" aria-current', body)
    assert f"{len(stale)} of {len(FLEET)} agents match" in body
    version_link = re.search(r'<a href="([^"]+)" title="Show these agents"><code>10</code>', body)
    assert version_link is not None
    body = await (await page_client.get(html.unescape(version_link.group(1)))).text()
    assert sorted(listed_hosts(body)) == sorted(
        a.hostname for a in FLEET if a.config_version == "10"
    )


async def test_a_bad_value_is_shown_next_to_its_field_with_the_rest_kept(
    page_client: Client,
) -> None:
    resp = await page_client.get("/", params={"health": "sleepy", "q": "db"})
    assert resp.status == 400
    body = await resp.text()
    select = re.search(r'<select id="agent-health" name="health"([^>]*)>', body)
    assert select is not None and 'aria-invalid="true"' in select.group(1)
    assert 'aria-describedby="agent-health-error"' in select.group(1)
    assert re.search(r'id="agent-health-error" role="alert">health: must be one of online', body)
    # The search was kept and applied.
    assert 'id="agent-q" name="q" type="search" value="db"' in body
    assert sorted(listed_hosts(body)) == sorted(a.hostname for a in FLEET if "db" in a.hostname)
    resp = await page_client.get("/", params={"after": "garbage", "sort": "health"})
    assert resp.status == 400
    body = await resp.text()
    assert 'id="agent-list-error" role="alert">after: is not a cursor of this list' in body
    assert len(listed_hosts(body)) == len(FLEET)


async def test_next_links_walk_a_big_fleet_on_the_page(db_url: str) -> None:
    now = datetime.now(UTC)
    engine = create_engine_for_url(db_url)
    sessions = make_sessionmaker(engine)
    hosts = [f"node-{(i * 37) % 205:03d}" for i in range(205)]
    try:
        async with sessions() as session, session.begin():
            for i, host in enumerate(hosts):
                await create_agent(session, _id(1000 + i), HostFacts(hostname=host), now, 60)
    finally:
        await engine.dispose()
    client = await start_client(build_app(db_url), role="viewer")
    try:
        url, seen, pages = "/?sort=host&order=desc", [], 0
        while url:
            body = await (await client.get(url)).text()
            seen.extend(listed_hosts(body))
            pages += 1
            url = link(body, "agent-list-next") if 'id="agent-list-next"' in body else ""
            if pages > 1:
                assert 'id="agent-list-first"' in body and "(a later page)" in body
        assert seen == sorted(hosts, reverse=True) and pages == 3
    finally:
        await client.close()


async def test_an_empty_fleet_sorts_by_every_column(db_url: str) -> None:
    client = await start_client(build_app(db_url), role="viewer")
    try:
        for sort in AgentSort:
            resp = await client.get("/", params={"sort": sort.value, "order": "desc"})
            assert resp.status == 200, sort
            assert "No agents yet." in await resp.text()
    finally:
        await client.close()
