"""History query benchmark: p50/p95 of the History page's reads on a large, realistic History.

    python -m tests.bench.history --db sqlite --events 1000000
    python -m tests.bench.history --db postgresql --events 1000000
    python -m tests.bench.history --db sqlite --ingest-ab 100000
    python -m tests.bench.history --vs-0012 --events 1000000
    python -m tests.bench.history --db sqlite --events 10000000 --keep h10m.db --web

Creates a fresh database migrated by alembic up to 0010, seeds ``--events`` events quickly
(executemany on SQLite, COPY on PostgreSQL; 1,000 agents, 30 days, 80% success / 10% info /
7% error / 3% warning, messages from a small vocabulary plus a few rare words), upgrades to
head (so 0011's backfill / index build is timed too), then times ``--reps`` calls of each case
through :func:`server.services.history.list_events` (what the History page and the API call),
or with ``--web`` through the History page of a real server (HTTP, a logged-in viewer).
``--keep`` seeds into a named database (a PostgreSQL database, a SQLite file) and keeps it: a
later run with the same ``--keep`` reuses the seed, so new code is measured on the same rows.
Text cases are also timed with the plain scan (the query before 0011) for comparison.

``--vs-0012``: the cases side by side, each in turn on a SQLite copy at 0012 read without the
one-agent rule and at head (0013's time-window indexes, the rule).

``--ingest-ab N``: the SQLite insert cost of the search triggers and of 0013's window indexes:
N events inserted through the ingest's own statement (``storage.events.insert_rows_sync``,
batches of 500, one transaction each) into a fresh head database, into one without 0013's
indexes, and into one whose search insert trigger was dropped.
A figure printer, not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
from sqlalchemy import create_engine

from server.domain import EventFilter, Severity
from server.services.history import list_events
from server.storage import events as events_db
from server.storage import history as history_store
from server.storage import schema, search
from server.storage.db import create_engine_for_url, make_sessionmaker
from server.web.request import filter_params
from tests.bench.ingest import create_user, serve, server_env, shut_down
from tests.server_testlib import WebAccount, login_http

PG_BASE = "postgresql+asyncpg://postgres@127.0.0.1:5432"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAYS = 30
RARE_WORD = "quetzalcoatl"  # in about 1 event in 20,000
NOTHING = "no-event-says-this"
COMMON_WORD = "applied"  # in most success messages

SUCCESS = [
    "Config migrated 1 -> 4",
    "Migration applied in {n} ms",
    "Applied config version {n}",
    "Nothing to migrate: already at version 4",
]
INFO = ["Detected legacy config at /etc/aggregator/agent.conf", "Checked {n} files"]
ERRORS = [
    "Execution failed: permission denied",
    "Execution failed: disk full",
    "Rollback after failed step move_legacy_config",
]
WARNINGS = ["Partial migration: {n} of 5 steps", "Config validated with warnings"]
ERROR_MESSAGES = [
    "[Errno 13] Permission denied: '/etc/aggregator/agent.conf'",
    "[Errno 28] No space left on device",
    "step move_legacy_config exited 1",
]
# severity -> (event_type, status, messages)
KINDS = {
    "success": ("migration_execution", "success", SUCCESS),
    "info": ("migration_detection", "not_needed", INFO),
    "error": ("migration_execution", "failed", ERRORS),
    "warning": ("migration_execution", "partial", WARNINGS),
}
WEIGHTS = (("success", 80), ("info", 10), ("error", 7), ("warning", 3))


def hostname(i: int) -> str:
    return f"web-{i:04d}.dc{i % 3 + 1}.example.com"


def generate(
    n: int, agents: list[str], seed: int = 7, first: int = 0, total: int = 0
) -> list[tuple[Any, ...]]:
    """Rows ``first`` to ``first + n`` of ``total`` (default ``n``) spread evenly over the
    last :data:`DAYS` days, in ``events_db.COLUMNS`` order (SQLite encoding), oldest first:
    the ids arrive in time order, as a fleet's events do."""
    rnd = random.Random(seed)
    severities = rnd.choices([s for s, _ in WEIGHTS], [w for _, w in WEIGHTS], k=n)
    start = NOW - timedelta(days=DAYS)
    step = timedelta(days=DAYS) / (total or n)
    rows = []
    for i in range(first, first + n):
        severity = severities[i - first]
        event_type, status, messages = KINDS[severity]
        message = rnd.choice(messages).format(n=rnd.randint(1, 999))
        if rnd.random() < 1 / 20_000:
            message += f" ({RARE_WORD} seen)"
        error = rnd.choice(ERROR_MESSAGES) if severity == "error" else ""
        at = events_db.sqlite_timestamp(start + step * i)
        rows.append(
            (
                str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                agents[rnd.randrange(len(agents))],
                "migration",
                event_type,
                status,
                severity,
                message,
                error,
                "{}",
                "1",
                "4",
                str(uuid.UUID(int=rnd.getrandbits(128), version=4)) if i % 2 else None,
                "{}",
                at,
                at,
                "",
                0,
                "",
                None,
            )
        )
    return rows


def _agent_rows(count: int) -> list[tuple[str, str]]:
    return [(str(uuid.UUID(int=i + 1, version=4)), hostname(i)) for i in range(count)]


AGENT_SQL = (
    "INSERT INTO agents (id, hostname, machine_id, os, kernel, agent_version, config_version, "
    "disk_free_bytes, facts, labels, enrolled_at, checkin_interval_seconds, revoked) "
    "VALUES (?, ?, '', '', '', '', '', 0, '{}', '{}', ?, 60, 0)"
)
EVENT_SQL = (
    f"INSERT INTO update_events ({', '.join(events_db.COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in events_db.COLUMNS)})"
)


def seed_sqlite(path: Path, n: int, agents: list[tuple[str, str]]) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    enrolled = events_db.sqlite_timestamp(NOW - timedelta(days=60))
    db.executemany(AGENT_SQL, [(a, h, enrolled) for a, h in agents])
    ids = [a for a, _ in agents]
    done = 0
    while done < n:
        chunk = min(100_000, n - done)
        db.executemany(EVENT_SQL, generate(chunk, ids, seed=done, first=done, total=n))
        done += chunk
    db.commit()
    db.close()


async def seed_postgresql(dsn: str, n: int, agents: list[tuple[str, str]]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        enrolled = NOW - timedelta(days=60)
        await conn.executemany(
            AGENT_SQL.replace("?", "$1", 1)
            .replace("?", "$2", 1)
            .replace("?", "$3", 1)
            .replace("60, 0)", "60, false)"),
            [(a, h, enrolled) for a, h in agents],
        )
        ids = [a for a, _ in agents]
        done = 0
        while done < n:
            chunk = min(100_000, n - done)
            records = [
                (
                    *r[:13],
                    datetime.fromisoformat(r[13]).replace(tzinfo=UTC),
                    datetime.fromisoformat(r[14]).replace(tzinfo=UTC),
                    *r[15:],
                )
                for r in generate(chunk, ids, seed=done, first=done, total=n)
            ]
            await conn.copy_records_to_table(
                "update_events", records=records, columns=list(events_db.COLUMNS)
            )
            done += chunk
        await conn.execute("VACUUM ANALYZE")  # the visibility map, as autovacuum keeps it
    finally:
        await conn.close()


def cases(agent: str, host: str, events: int) -> list[tuple[str, EventFilter, bool]]:
    """(name, filter, is a text case); ``events``: how many were seeded (ids 1..events)."""
    day = NOW - timedelta(days=20)
    return [
        ("first page", EventFilter(), False),
        ("severity=error", EventFilter(severities=(Severity.ERROR,)), False),
        ("one agent", EventFilter(agent_id=agent), False),
        (f"text rare word {RARE_WORD!r}", EventFilter(text=RARE_WORD), True),
        ("text matching nothing", EventFilter(text=NOTHING), True),
        (f"text hostname {host!r}", EventFilter(text=host), True),
        (f"text common word {COMMON_WORD!r}", EventFilter(text=COMMON_WORD), True),
        ("text 2 chars 'zq' (no trigram: bounded scan)", EventFilter(text="zq"), True),
        (
            "errors in one day 20 days ago",
            EventFilter(severities=(Severity.ERROR,), since=day, until=day + timedelta(days=1)),
            False,
        ),
        (
            "rare word + severity=error",
            EventFilter(text=RARE_WORD, severities=(Severity.ERROR,)),
            True,
        ),
        # Combinations (issue 16, item 2): time windows with the other filters, deep pages.
        ("last hour", EventFilter(since=NOW - timedelta(hours=1)), False),
        (
            "errors in the last hour",
            EventFilter(severities=(Severity.ERROR,), since=NOW - timedelta(hours=1)),
            False,
        ),
        (
            "one agent in one day 20 days ago",
            EventFilter(agent_id=agent, since=day, until=day + timedelta(days=1)),
            False,
        ),
        (
            "outcome failed in one day 20 days ago",
            EventFilter(
                event_types=("migration_execution_failed",),
                since=day,
                until=day + timedelta(days=1),
            ),
            False,
        ),
        (
            "warnings in the 7 days before 20 days ago",
            EventFilter(severities=(Severity.WARNING,), since=day - timedelta(days=7), until=day),
            False,
        ),
        (
            "one agent + severity=error",
            EventFilter(agent_id=agent, severities=(Severity.ERROR,)),
            False,
        ),
        ("deep page (keyset, half way)", EventFilter(before_id=events // 2), False),
        (
            "errors, deep page (keyset, a quarter in)",
            EventFilter(severities=(Severity.ERROR,), before_id=events // 4),
            False,
        ),
        (
            f"hostname {host!r} in one day 20 days ago",
            EventFilter(text=host, since=day, until=day + timedelta(days=1)),
            True,
        ),
        (
            f"rare word {RARE_WORD!r} in the last 7 days",
            EventFilter(text=RARE_WORD, since=NOW - timedelta(days=7)),
            True,
        ),
    ]


async def timed(call: Callable[[], Awaitable[int]], reps: int) -> tuple[float, float, int]:
    """p50 and p95 in ms of ``reps`` calls of ``call``, and the row count the last returned."""
    times = []
    count = 0
    for _ in range(reps):
        t = time.perf_counter()
        count = await call()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return statistics.median(times), p95, count


async def run_cases(
    url: str, reps: int, plain_reps: int, agents: list[tuple[str, str]], events: int
) -> None:
    engine = create_engine_for_url(url)
    sessions = make_sessionmaker(engine)
    agent, host = agents[420]

    async def rows(f: EventFilter) -> int:
        return len((await list_events(sessions, f)).events)

    async def plain_rows(f: EventFilter) -> int:
        """The page as it was read before 0011: one plain scan, whatever the text."""
        async with sessions() as session:
            hosts = await history_store._agents_by_hostname(session, f.text or "")
            dialect = engine.dialect.name
            where = history_store._conditions(f, dialect, hosts, indexed=False)
            return min(f.limit, len(await history_store._fetch(session, where, f.limit + 1, True)))

    try:
        for name, f, is_text in cases(agent, host, events):
            p50, p95, count = await timed(lambda f=f: rows(f), reps)
            print(f"  {name:<44} p50={p50:9.1f}ms p95={p95:9.1f}ms rows={count}")
            if is_text and plain_reps and f.text and len(f.text) >= 3:
                p50, p95, count = await timed(lambda f=f: plain_rows(f), plain_reps)
                print(
                    f"    {'(plain scan, before 0011)':<42} p50={p50:9.1f}ms "
                    f"p95={p95:9.1f}ms rows={count} reps={plain_reps}"
                )
    finally:
        await engine.dispose()


async def web_cases(
    url: str, reps: int, agents: list[tuple[str, str]], events: int, state_dir: Path
) -> None:
    """The same cases through the History page of a real ``flagpost-server serve`` on the
    seeded database (HTTP on 127.0.0.1, a logged-in viewer, the whole page read), timed from
    the request to the last byte; the rows are counted in the page's HTML. Retention is off
    (the seed's 30 days end on ``NOW``, which may lie days back). ``state_dir``: the server's
    (its signing key is registered in the database: a kept database needs the same one)."""
    agent, host = agents[420]
    with tempfile.TemporaryDirectory() as tmp:
        env, _ = server_env("sqlite", Path(tmp))
        env["FLAGPOST_DATABASE_URL"] = url
        env["FLAGPOST_STATE_DIR"] = str(state_dir)
        env["FLAGPOST_RETENTION_INTERVAL_MINUTES"] = "0"
        env["FLAGPOST_LOGIN_RATE_PER_MINUTE"] = "0"
        # a new name each run: a kept database keeps the users of earlier runs
        account = WebAccount(f"bench-{uuid.uuid4().hex[:8]}", "bench-password-long", "viewer")
        create_user(env, account.name, account.password)
        server, _, base = serve(env)
        try:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                await login_http(http, base, account)
                for name, f, _ in cases(agent, host, events):
                    query = urlencode(filter_params(f, 50, before_id=f.before_id))
                    page = f"{base}/history?{query}"

                    async def get(page: str = page) -> int:
                        async with http.get(page) as reply:
                            body = await reply.text()
                            if reply.status != 200:
                                raise RuntimeError(f"{page}: HTTP {reply.status}")
                        return body.count('<li class="event ')

                    p50, p95, rows = await timed(get, reps)
                    print(f"  {name:<44} p50={p50:9.1f}ms p95={p95:9.1f}ms rows={rows}")
        finally:
            shut_down(server, None)


async def pg_database_exists(name: str) -> bool:
    conn = await asyncpg.connect(PG_BASE.replace("+asyncpg", "") + "/postgres")
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


async def pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_BASE.replace("+asyncpg", "") + "/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def ingest_ab(n: int) -> None:
    agents = _agent_rows(64)
    ids = [a for a, _ in agents]
    rows = generate(n, ids, seed=99)
    window_indexes = (
        "DROP INDEX ix_update_events_severity_occurred_at",
        "DROP INDEX ix_update_events_event_type_status_occurred_at",
    )
    variants: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("head", ()),
        ("0013 window indexes dropped", window_indexes),
        ("insert trigger dropped", ("DROP TRIGGER update_events_search_ai",)),
    )
    for label, drops in variants:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite+aiosqlite:///{tmp}/ab.db"
            schema.upgrade(url)
            engine = create_engine(f"sqlite:///{tmp}/ab.db")
            with engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                enrolled = events_db.sqlite_timestamp(NOW)
                conn.exec_driver_sql(AGENT_SQL, [(a, h, enrolled) for a, h in agents])
                for statement in drops:
                    conn.exec_driver_sql(statement)
            t = time.perf_counter()
            for i in range(0, n, 500):
                with engine.begin() as conn:
                    events_db.insert_rows_sync(conn, rows[i : i + 500])
            elapsed = time.perf_counter() - t
            engine.dispose()
        print(f"  {label:<28} {n / elapsed:10,.0f} events/s ({elapsed * 1e6 / n:.1f} us/event)")


def vs_0012(n: int, reps: int, agents: list[tuple[str, str]]) -> None:
    """The cases side by side: a database at 0012 read without the agent rule of
    ``storage.history._conditions`` (before) and the same rows at head (after), in turn."""
    with tempfile.TemporaryDirectory() as tmp:
        before, after = Path(tmp) / "before.db", Path(tmp) / "after.db"
        schema.upgrade(f"sqlite+aiosqlite:///{before}", "0010")
        seed_sqlite(before, n, agents)
        schema.upgrade(f"sqlite+aiosqlite:///{before}", "0012")
        shutil.copyfile(before, after)
        schema.upgrade(f"sqlite+aiosqlite:///{after}")
        print(f"db=sqlite events={n:,} agents={len(agents)} reps={reps}: 0012 vs head, in turn")
        asyncio.run(_vs_0012(before, after, reps, agents, n))


async def _vs_0012(
    before: Path, after: Path, reps: int, agents: list[tuple[str, str]], n: int
) -> None:
    engines = [create_engine_for_url(f"sqlite+aiosqlite:///{p}") for p in (before, after)]
    old, new = (make_sessionmaker(e) for e in engines)
    agent_rule = history_store._unindexed
    agent, host = agents[420]
    try:
        for name, f, _ in cases(agent, host, n):
            if f.text and len(f.text) < search.MIN_INDEXED_LENGTH:
                continue  # a plain scan either way
            times: tuple[list[float], list[float]] = ([], [])
            for _ in range(reps):
                for i, sessions in enumerate((old, new)):
                    history_store._unindexed = agent_rule if i else history_store._column
                    t = time.perf_counter()
                    await list_events(sessions, f)
                    times[i].append((time.perf_counter() - t) * 1000)
            history_store._unindexed = agent_rule
            p50_old, p50_new = (statistics.median(t) for t in times)
            print(f"  {name:<44} 0012 p50={p50_old:8.1f}ms  head p50={p50_new:8.1f}ms")
    finally:
        history_store._unindexed = agent_rule
        for engine in engines:
            await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--plain-reps", type=int, default=5, help="0: skip the plain scans")
    parser.add_argument("--ingest-ab", type=int, default=0, metavar="N")
    parser.add_argument(
        "--vs-0012",
        action="store_true",
        help="SQLite: each case in turn on a copy at 0012 without the agent rule, then at head",
    )
    parser.add_argument(
        "--keep",
        metavar="DATABASE",
        help="seed into DATABASE (PostgreSQL: a database name; SQLite: a file path) and keep "
        "it; when it exists already, reuse its seed (upgrade to head, then the queries)",
    )
    parser.add_argument(
        "--web",
        action="store_true",
        help="time the cases through the History page of a real server (HTTP, logged in)",
    )
    args = parser.parse_args()
    if args.vs_0012:
        vs_0012(args.events, args.reps, _agent_rows(args.agents))
        return
    if args.ingest_ab:
        print(f"db=sqlite ingest A/B events={args.ingest_ab:,}")
        ingest_ab(args.ingest_ab)
        return
    agents = _agent_rows(args.agents)
    with tempfile.TemporaryDirectory() as tmp:
        name = args.keep or f"flagpost_bench_{uuid.uuid4().hex[:8]}"
        reuse = False
        if args.db == "sqlite":
            path = Path(args.keep).resolve() if args.keep else Path(tmp) / "history.db"
            reuse = path.exists()
            url = f"sqlite+aiosqlite:///{path}"
        else:
            reuse = bool(args.keep) and asyncio.run(pg_database_exists(name))
            if not reuse:
                asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
            url = f"{PG_BASE}/{name}"
        try:
            t = time.perf_counter()
            if not reuse:
                schema.upgrade(url, "0010")
                if args.db == "sqlite":
                    seed_sqlite(path, args.events, agents)
                else:
                    asyncio.run(seed_postgresql(url.replace("+asyncpg", ""), args.events, agents))
            seeded = time.perf_counter() - t
            t = time.perf_counter()
            schema.upgrade(url)
            migrated = time.perf_counter() - t
            print(
                f"db={args.db} events={args.events:,} agents={args.agents} reps={args.reps} "
                f"seed={seeded:.1f}s upgrade_0011={migrated:.1f}s"
            )
            if args.web:
                state = Path(f"{path}.state" if args.db == "sqlite" else f"{tmp}/state")
                if args.db == "postgresql" and args.keep:
                    state = Path(tempfile.gettempdir()) / f"flagpost-bench-{name}.state"
                asyncio.run(web_cases(url, args.reps, agents, args.events, state))
            else:
                asyncio.run(run_cases(url, args.reps, args.plain_reps, agents, args.events))
        finally:
            if args.db == "postgresql" and not args.keep:
                asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
