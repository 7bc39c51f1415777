"""Selector evaluation over a large fleet: N agents with labels and tags, then the time of
``server.services.targets.select_agents`` for a few typical selectors (count + every id).

    python -m tests.bench.selectors --agents 10000 [--db sqlite|postgresql]

Builds a fresh database with alembic (a temp SQLite file, or a temp PostgreSQL database on
127.0.0.1:5432), inserts the agents in batches, and prints one line per selector: matches and
the median of 5 runs in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from server.config import load_config
from server.services import targets
from server.storage import schema
from server.storage.db import create_engine, make_sessionmaker
from server.storage.models import Agent, AgentTag

PG_BASE = "postgresql+asyncpg://postgres@127.0.0.1:5432"
SELECTORS = [
    ["env=prod"],
    ["env=prod", "role in (db,cache)", "!canary"],
    ["host=web-*"],
    ["canary"],
    ["health=any"],
]


async def _pg(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _fleet(agents: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    now = datetime.now(UTC)
    roles = ["web", "db", "cache", "queue"]
    rows: list[dict[str, Any]] = []
    tags: list[dict[str, Any]] = []
    for i in range(agents):
        agent_id = str(uuid.uuid4())
        rows.append(
            {
                "id": agent_id,
                "hostname": f"{roles[i % 4]}-{i}",
                "labels": {"env": "prod" if i % 3 else "staging", "role": roles[i % 4]},
                "facts": {},
                "enrolled_at": now,
                "last_checkin_at": now - timedelta(seconds=(i % 10) * 30),
                "revoked": False,
            }
        )
        if i % 10 == 0:
            tags.append({"agent_id": agent_id, "tag": "canary"})
    return rows, tags


async def bench(agents: int, db: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="flagpost-bench-selectors-"))
    name = f"bench_selectors_{uuid.uuid4().hex[:8]}"
    if db == "postgresql":
        await _pg(f'CREATE DATABASE "{name}"')
        url = f"{PG_BASE}/{name}"
    else:
        url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    try:
        await asyncio.to_thread(schema.upgrade, url)
        config = load_config(None, env={}, overrides={"database_url": url, "state_dir": str(tmp)})
        engine = create_engine(config)
        sessions = make_sessionmaker(engine)
        rows, tags = _fleet(agents)
        async with sessions() as session, session.begin():
            for start in range(0, len(rows), 1000):
                await session.execute(insert(Agent), rows[start : start + 1000])
            await session.execute(insert(AgentTag), tags)
        print(f"{agents} agents on {db}")
        for expressions in SELECTORS:
            times, matched = [], 0
            for _ in range(5):
                started = time.perf_counter()
                selection = await targets.select_agents(sessions, config, expressions)
                times.append((time.perf_counter() - started) * 1000)
                matched = selection.count
            median = statistics.median(times)
            print(f"  {' '.join(expressions):40} {matched:7} matches  {median:7.1f} ms")
        await engine.dispose()
    finally:
        if db == "postgresql":
            await _pg(f'DROP DATABASE IF EXISTS "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    asyncio.run(bench(args.agents, args.db))


if __name__ == "__main__":
    main()
