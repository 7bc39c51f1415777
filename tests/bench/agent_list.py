"""The fleet overview with its agent list on a large fleet: the time of ``GET /`` (the whole
page: health cards, versions, chart, one page of 100 agents) for each search, filter and sort.

    python -m tests.bench.agent_list --agents 100000 [--db sqlite|postgresql] [--reps 7]

Builds a fresh database with alembic (``flagpost-server db upgrade``), inserts ``--agents``
agents in batches (then ``VACUUM ANALYZE`` on PostgreSQL; hostnames ``web-000123.dc2``,
labels env / role, a few tags, config versions 1-12, agent versions, check-ins spread over
online / stale / offline / never, 1 % revoked),
starts a real server in a subprocess (``python -m server serve``), logs in as a viewer and
prints, per case, the agents matched, the median, p95 and max of ``--reps`` requests in
milliseconds (after one warm-up request). A figure printer, not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import insert

from server.domain import AgentHealth, AgentSort
from server.services.fleet import encode_list_cursor
from server.storage.agents import AgentRecord
from server.storage.db import create_engine_for_url, make_sessionmaker
from server.storage.models import Agent, AgentTag
from tests.bench.ingest import cli, create_user, serve, server_env, shut_down
from tests.server_testlib import WebAccount, login_http

ROLES = ("web", "db", "cache", "queue")


def hostname(i: int) -> str:
    return f"{ROLES[i % 4]}-{i:06d}.dc{i % 3 + 1}"


def agent_id_of(i: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"agent-{i}.bench"))


def fleet_rows(agents: int, now: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    tags: list[dict[str, Any]] = []
    for i in range(agents):
        agent_id = agent_id_of(i)
        silent = (i * 7919) % 1000  # 0-999: online < 180 s, stale < 600 s, the rest offline
        rows.append(
            {
                "id": agent_id,
                "hostname": hostname(i),
                "labels": {"env": "prod" if i % 3 else "staging", "role": ROLES[i % 4]},
                "facts": {},
                "config_version": str(1 + (i * 31) % 12),
                "agent_version": f"0.{4 + i % 7}.{i % 3}",
                "enrolled_at": now - timedelta(days=30),
                "last_checkin_at": None if i % 97 == 0 else now - timedelta(seconds=silent),
                "revoked": i % 100 == 42,
            }
        )
        if i % 50 == 0:
            tags.append({"agent_id": agent_id, "tag": "canary"})
    return rows, tags


async def seed(db_url: str, agents: int) -> None:
    engine = create_engine_for_url(db_url)
    sessions = make_sessionmaker(engine)
    rows, tags = fleet_rows(agents, datetime.now(UTC))
    try:
        async with sessions() as session, session.begin():
            for start in range(0, len(rows), 2000):
                await session.execute(insert(Agent), rows[start : start + 2000])
            await session.execute(insert(AgentTag), tags)
        if engine.dialect.name == "postgresql":  # what autovacuum does to a table this size
            async with engine.connect() as conn:
                autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await autocommit.exec_driver_sql("VACUUM ANALYZE agents")
    finally:
        await engine.dispose()


def deep_cursor(agents: int) -> str:
    """The host-sort cursor after the agent in the middle of the fleet (page 500 of 1,000)."""
    middle = sorted(range(agents), key=lambda i: (hostname(i), agent_id_of(i)))[agents // 2]
    record = AgentRecord(
        id=agent_id_of(middle),
        hostname=hostname(middle),
        os="",
        kernel="",
        agent_version="",
        config_version="",
        disk_free_bytes=0,
        machine_id="",
        enrolled_at=datetime.now(UTC),
        last_checkin_at=None,
        checkin_interval_seconds=60,
        revoked=False,
    )
    return encode_list_cursor(record, AgentSort.HOST, AgentHealth.ONLINE)


def cases(agents: int) -> list[tuple[str, dict[str, str]]]:
    found = [
        ("first page, by host", {}),
        ("page 500 (keyset), by host", {"after": deep_cursor(agents)}),
        ("search hostname 'db-00123'", {"q": "db-00123"}),
        ("search label role=cache", {"q": "role=cache"}),
        ("search label text 'stagi'", {"q": "stagi"}),
        ("search matching nothing", {"q": "no-such-host"}),
        ("search id prefix", {"q": agent_id_of(4242)[:8]}),
        ("health=online", {"health": "online"}),
        ("health=never", {"health": "never"}),
        ("version=7", {"version": "7"}),
        ("health=stale + version=7 + q=web", {"health": "stale", "version": "7", "q": "web"}),
    ]
    for sort in AgentSort:
        for order in ("asc", "desc"):
            found.append((f"sort {sort.value} {order}", {"sort": sort.value, "order": order}))
    return found


async def measure(web: str, account: WebAccount, agents: int, reps: int) -> None:
    jar = aiohttp.CookieJar(unsafe=True)  # the server is an IP address
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        await login_http(http, web, account)
        for name, params in cases(agents):
            async with http.get(f"{web}/", params=params) as resp:  # warm-up
                body = await resp.text()
                assert resp.status == 200, (name, resp.status)
            times = []
            for _ in range(reps):
                started = time.perf_counter()
                async with http.get(f"{web}/", params=params) as resp:
                    await resp.read()
                times.append((time.perf_counter() - started) * 1000)
            times.sort()
            count = re.search(r'id="agent-list-count" role="status">([^<]*)<', body)
            p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
            print(
                f"  {name:36} {statistics.median(times):7.1f} ms median  {p95:7.1f} p95"
                f"  {times[-1]:7.1f} max   ({count.group(1) if count else '?'})"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="flagpost-agent-list-"))
    server = None
    pg_name = None
    try:
        env, pg_name = server_env(args.db, workdir)
        env["FLAGPOST_RETENTION_INTERVAL_MINUTES"] = "0"
        cli(env, "db", "upgrade")
        started = time.perf_counter()
        asyncio.run(seed(env["FLAGPOST_DATABASE_URL"], args.agents))
        print(
            f"{args.agents:,} agents on {args.db} (seeded in {time.perf_counter() - started:.0f} s)"
        )
        password = secrets.token_urlsafe(12)
        create_user(env, "bench", password)
        server, _, web = serve(env)
        asyncio.run(measure(web, WebAccount("bench", password, "viewer"), args.agents, args.reps))
        return 0
    finally:
        shut_down(server, pg_name)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
