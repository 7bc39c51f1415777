"""A History export's memory and throughput on a large History (SQLite).

    python -m tests.bench.export [--rows 1000000] [--formats csv,jsonl] [--filter severity=error]

Builds a migrated SQLite database with ``--rows`` events (agents through the storage layer,
events through stdlib ``sqlite3`` ``executemany`` with the rows ``server.storage.events``
encodes, so they are stored exactly as ingest stores them), starts a real server in a
subprocess (``python -m server serve``), logs in as a viewer and downloads
``/api/v1/events/export`` in each format, reading and discarding the body as it arrives. For
each export it prints the rows and bytes received, the time and rows/s, and the server's memory
from ``/proc/PID/status``: ``VmRSS`` before, the highest ``VmRSS`` sampled every 50 ms during
the export, and ``VmHWM`` (the kernel's peak) before and after; the peak growth is the highest
RSS during the export minus the RSS before it. A figure printer, not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from server.domain import Category, EventStatus, EventType, HostFacts, NewEvent, severity_for
from server.storage.events import COLUMNS, encode_events
from tests.bench.ingest import cli, create_user, serve, server_env, shut_down
from tests.server_testlib import WebAccount, login_http

AGENTS = 50
BATCH = 20_000
# Within retention (30 days by default; the bench also turns the retention job off): a purge
# during the export would delete rows under it.
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(days=14)
STATUSES = list(EventStatus)


def status_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0])
    return out


def agent_ids() -> list[str]:
    return [str(uuid.UUID(int=0xA << 64 | i)) for i in range(AGENTS)]


async def create_agents(db_url: str) -> None:
    from server.storage.agents import create_agent
    from server.storage.db import create_engine_for_url, make_sessionmaker

    engine = create_engine_for_url(db_url)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            for i, agent_id in enumerate(agent_ids()):
                await create_agent(session, agent_id, HostFacts(hostname=f"web-{i:03}"), BASE, 60)
    finally:
        await engine.dispose()


def event(i: int, agent_id: str) -> NewEvent:
    status = STATUSES[i % len(STATUSES)]
    failed = status is EventStatus.FAILED
    return NewEvent(
        event_id=str(uuid.UUID(int=i + 1)),
        agent_id=agent_id,
        category=Category.MIGRATION,
        event_type=EventType.MIGRATION_EXECUTION.value if i % 2 else "migration_detection",
        status=status,
        severity=severity_for(status),
        message=f"Migration 1 -> 2 on web-{i % AGENTS:03}: step {i % 7} of 7",
        error_message="[Errno 13] Permission denied: '/etc/app/config.ini'" if failed else "",
        error_detail={"failing_step": "move_legacy_config", "errno": 13} if failed else {},
        migration_from="1",
        migration_to="2",
        run_id=str(uuid.UUID(int=(0xB << 64) | (i // 4))),
        system_info={"os": "Debian 12", "kernel": "6.1.0-18-amd64", "python": "3.11.2"},
        occurred_at=BASE + timedelta(seconds=i),
    )


def insert_events(path: Path, rows: int) -> float:
    """``rows`` events in ``BATCH``-row ``executemany`` transactions; the seconds it took."""
    ids = agent_ids()
    sql = (
        f"INSERT INTO update_events ({', '.join(COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in COLUMNS)})"
    )
    started = time.monotonic()
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA journal_mode = WAL")
        for start in range(0, rows, BATCH):
            batch = [event(i, ids[i % AGENTS]) for i in range(start, min(rows, start + BATCH))]
            with conn:
                conn.executemany(sql, encode_events(batch, BASE, "sqlite"))
    finally:
        conn.close()
    return time.monotonic() - started


async def run_export(
    web: str, account: WebAccount, pid: int, fmt: str, params: list[tuple[str, str]]
) -> dict[str, float]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await login_http(http, web, account)
        async with http.get(f"{web}/api/v1/events?limit=200") as warm:  # imports, caches
            await warm.read()
        before = status_kib(pid)
        peak = before["VmRSS"]
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, status_kib(pid)["VmRSS"])
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        started = time.monotonic()
        size = lines = 0
        async with http.get(
            f"{web}/api/v1/events/export", params=[("format", fmt), *params], timeout=None
        ) as response:
            assert response.status == 200, await response.text()
            async for chunk in response.content.iter_chunked(1 << 16):
                size += len(chunk)
                lines += chunk.count(b"\n")
        seconds = time.monotonic() - started
        done.set()
        await sampler
        after = status_kib(pid)
    rows = lines - 1 if fmt == "csv" else lines  # the header; CSV cells here hold no newline
    return {
        "rows": rows,
        "mib": size / 2**20,
        "seconds": seconds,
        "rss_before": before["VmRSS"] / 1024,
        "rss_peak": peak / 1024,
        "hwm_before": before["VmHWM"] / 1024,
        "hwm_after": after["VmHWM"] / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", default="csv,jsonl")
    parser.add_argument("--filter", action="append", default=[], help="NAME=VALUE (repeat)")
    args = parser.parse_args()
    params = [tuple(item.split("=", 1)) for item in args.filter]
    workdir = Path(tempfile.mkdtemp(prefix="flagpost-export-"))
    server = None
    try:
        env, _ = server_env("sqlite", workdir)
        env["FLAGPOST_RETENTION_INTERVAL_MINUTES"] = "0"
        cli(env, "db", "upgrade")
        db_path = workdir / "bench.db"
        asyncio.run(create_agents(env["FLAGPOST_DATABASE_URL"]))
        seconds = insert_events(db_path, args.rows)
        print(f"inserted {args.rows} events in {seconds:.1f} s ({args.rows / seconds:,.0f}/s)")
        password = secrets.token_urlsafe(12)
        create_user(env, "bench", password)
        server, _, web = serve(env)
        account = WebAccount("bench", password, "viewer")
        for fmt in args.formats.split(","):
            r = asyncio.run(run_export(web, account, server.pid, fmt, params))  # type: ignore[arg-type]
            growth = r["rss_peak"] - r["rss_before"]
            print(
                f"{fmt}: {r['rows']:,.0f} rows, {r['mib']:.1f} MiB in {r['seconds']:.1f} s "
                f"= {r['rows'] / r['seconds']:,.0f} rows/s; server RSS {r['rss_before']:.1f} MiB "
                f"before, peak {r['rss_peak']:.1f} MiB during (+{growth:.1f} MiB); "
                f"VmHWM {r['hwm_before']:.1f} -> {r['hwm_after']:.1f} MiB"
            )
        return 0
    finally:
        shut_down(server, None)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
