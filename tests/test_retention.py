"""Retention on SQLite and PostgreSQL: a seeded database pruned to the limits in bounded
batches, a run awaiting input survives; the ``flagpost-server prune`` command."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from server_testlib import new_event
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from server.config import ServerConfig, load_config
from server.domain import (
    HostFacts,
    LogLevel,
    NewLogLine,
    RunState,
)
from server.services.retention import PruneResult, RetentionJob, prune
from server.storage import retention as retention_store
from server.storage import run_ingest
from server.storage.agents import create_agent
from server.storage.db import make_sessionmaker
from server.storage.events import insert_events
from server.storage.models import MigrationRun, RunStepRow, TaskLog, UpdateEvent

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)


def config_for(db_url: str, **overrides: object) -> ServerConfig:
    base = {
        "database_url": db_url,
        "retention_days": 30,
        "max_events_per_agent": 10,
        "max_runs_per_agent": 3,
        "retention_batch_size": 1000,
    }
    return load_config(env={}, overrides=base | overrides)


async def add_run(
    sessions: async_sessionmaker[AsyncSession],
    agent_id: str,
    state: RunState,
    at: datetime,
    lines: int = 0,
) -> str:
    run_id = str(uuid.uuid4())
    async with sessions() as session, session.begin():
        session.add(
            MigrationRun(
                id=run_id,
                agent_id=agent_id,
                migration_id="agent-config",
                state=state.value,
                steps_done=1,
                steps_total=2,
                migration_from="1",
                migration_to="2",
                error_message="",
                created_at=at,
                updated_at=at,
            )
        )
        session.add(
            RunStepRow(run_id=run_id, idx=0, name="a", status="succeeded", error="", duration_ms=5)
        )
        await session.flush()
        conn = await session.connection()
        rows = run_ingest.encode_log_lines(
            [
                NewLogLine(run_id, seq, at, LogLevel.INFO, "executor", f"line {seq}", {})
                for seq in range(1, lines + 1)
            ],
            conn.dialect.name,
        )
        await conn.run_sync(run_ingest.insert_log_rows, rows)
    return run_id


async def scalar(sessions: async_sessionmaker[AsyncSession], query: object) -> int:
    async with sessions() as session:
        return int((await session.execute(query)).scalar_one())  # type: ignore[call-overload]


async def seed(sessions: async_sessionmaker[AsyncSession]) -> dict[str, object]:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    async with sessions() as session, session.begin():
        for agent_id, name in ((a, "a"), (b, "b")):
            await create_agent(session, agent_id, HostFacts(hostname=name), OLD, 60)
        # a: 5 old + 25 recent events; b: 4 recent.
        events = [new_event(a, OLD + timedelta(minutes=i)) for i in range(5)]
        events += [new_event(a, NOW - timedelta(minutes=30 - i)) for i in range(25)]
        events += [new_event(b, NOW - timedelta(minutes=i)) for i in range(4)]
        await insert_events(session, events, NOW)
    old_big = await add_run(sessions, a, RunState.SUCCEEDED, OLD, lines=2_500)
    waiting = await add_run(sessions, a, RunState.AWAITING_INPUT, OLD - timedelta(days=1), 3)
    recent = [
        await add_run(sessions, a, RunState.SUCCEEDED, NOW - timedelta(hours=10 - i), lines=10)
        for i in range(5)
    ]
    b_run = await add_run(sessions, b, RunState.FAILED, NOW, lines=1)
    return {
        "a": a,
        "b": b,
        "old_big": old_big,
        "waiting": waiting,
        "recent": recent,
        "b_run": b_run,
    }


async def test_prune_to_the_limits_waiting_run_survives(engine: AsyncEngine, db_url: str) -> None:
    sessions = make_sessionmaker(engine)
    seeded = await seed(sessions)
    recent = seeded["recent"]
    assert isinstance(recent, list)
    reports: list[PruneResult] = []

    result = await prune(
        sessions, config_for(db_url), progress=lambda r: reports.append(dataclasses.replace(r))
    )

    # Events: a's 5 old ones by age, then a down to its newest 10; b untouched.
    async def events_of(agent: object) -> list[datetime]:
        async with sessions() as session:
            rows = await session.execute(
                select(UpdateEvent.occurred_at).where(UpdateEvent.agent_id == agent)
            )
            return list(rows.scalars())

    a_events = await events_of(seeded["a"])
    assert sorted(a_events) == [NOW - timedelta(minutes=30 - i) for i in range(15, 25)]
    assert len(await events_of(seeded["b"])) == 4
    assert result.events == 20

    # Runs: the old one (and its 2,500 lines, in 3 bounded transactions) by age; a's two
    # oldest recent ones over the cap of 3; the waiting run is never pruned.
    async with sessions() as session:
        left = set((await session.execute(select(MigrationRun.id))).scalars())
    assert left == {seeded["waiting"], *recent[2:], seeded["b_run"]}
    assert result.runs == 3
    assert result.log_lines == 2_500 + 20
    lines_left = await scalar(sessions, select(func.count()).select_from(TaskLog))
    assert lines_left == 3 + 30 + 1
    steps_left = await scalar(sessions, select(func.count()).select_from(RunStepRow))
    assert steps_left == len(left)
    assert reports[-1].phase == "done" and reports[-1].total == result.total
    log_reports = [r.log_lines for r in reports]
    assert 1000 in log_reports and 2000 in log_reports  # bounded: 1,000 lines per transaction

    again = await prune(sessions, config_for(db_url))
    assert again.total == 0


async def test_the_agents_over_a_cap_are_found_in_one_query_per_chunk(engine: AsyncEngine) -> None:
    """a holds 30 events and 7 runs, b 4 and 1: only a is over caps of 10 and 3, only b
    over no cap at 0 (``> cap``), and an agent without rows is over nothing."""
    sessions = make_sessionmaker(engine)
    seeded = await seed(sessions)
    a, b, nobody = seeded["a"], seeded["b"], str(uuid.uuid4())
    assert isinstance(a, str) and isinstance(b, str)
    async with sessions() as session:
        assert await retention_store.agents_over_event_cap(session, [a, b, nobody], 10) == [a]
        assert await retention_store.agents_over_event_cap(session, [b], 3) == [b]
        assert await retention_store.agents_over_event_cap(session, [b], 4) == []
        assert await retention_store.agents_over_run_cap(session, [a, b, nobody], 3) == [a]
        assert await retention_store.agents_over_run_cap(session, [b], 0) == [b]
        assert await retention_store.agents_over_run_cap(session, [b], 1) == []


async def test_zero_disables_limits(engine: AsyncEngine, db_url: str) -> None:
    sessions = make_sessionmaker(engine)
    await seed(sessions)
    config = config_for(db_url, retention_days=0, max_events_per_agent=0, max_runs_per_agent=0)
    assert (await prune(sessions, config)).total == 0


async def test_prune_command_shows_progress(engine: AsyncEngine, db_url: str) -> None:
    await seed(make_sessionmaker(engine))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    env.update(
        FLAGPOST_RETENTION_DAYS="30",
        FLAGPOST_MAX_EVENTS_PER_AGENT="10",
        FLAGPOST_MAX_RUNS_PER_AGENT="3",
    )
    done = subprocess.run(
        [sys.executable, "-m", "server", "prune", "--database-url", db_url],
        capture_output=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
        check=False,
    )
    stderr = done.stderr.decode()  # bytes: text mode would turn the progress "\r" into "\n"
    assert done.returncode == 0, stderr
    assert "\rpruning (" in stderr
    assert "pruned 20 events, 3 runs, 2520 log lines" in done.stdout.decode()


async def test_background_job_prunes_and_stops(engine: AsyncEngine, db_url: str) -> None:
    sessions = make_sessionmaker(engine)
    seeded = await seed(sessions)
    job = RetentionJob(sessions, config_for(db_url), first_delay=0)
    job.start()
    try:
        for _ in range(200):
            if job.runs:
                break
            await asyncio.sleep(0.05)
    finally:
        await job.stop()
    assert job.runs == 1 and job.last is not None and job.last.runs == 3
    async with sessions() as session:
        assert await session.get(MigrationRun, seeded["waiting"]) is not None
        assert await session.get(MigrationRun, seeded["old_big"]) is None


@pytest.mark.parametrize("ratio", [0.0, 2.0])
async def test_each_transaction_is_followed_by_a_pause_in_proportion(
    engine: AsyncEngine, db_url: str, monkeypatch: pytest.MonkeyPatch, ratio: float
) -> None:
    """``retention_pause_ratio``: after every pruning transaction the prune sleeps that many
    times the transaction's duration (a clock that advances 0.25 s per reading makes each
    transaction last 0.25 s); 0 never sleeps."""
    from server.services import retention

    sessions = make_sessionmaker(engine)
    await seed(sessions)
    readings = iter(range(10_000))
    monkeypatch.setattr(retention, "monotonic", lambda: next(readings) * 0.25)
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(retention, "pause", sleep)
    config = config_for(db_url, retention_batch_size=1000, retention_pause_ratio=ratio)
    result = await prune(sessions, config)
    assert result.log_lines == 2520 and result.events == 20  # what the other tests prune
    if ratio == 0:
        assert pauses == []
    else:
        # events by age and over the cap, old runs' logs in batches of 1,000 and the runs, ...
        assert len(pauses) >= 6
        assert set(pauses) == {0.25 * ratio}


async def test_a_negative_pause_ratio_is_refused() -> None:
    from server.config import ConfigError

    with pytest.raises(ConfigError, match="retention_pause_ratio must be 0 or more"):
        load_config(env={}, overrides={"retention_pause_ratio": -1})
