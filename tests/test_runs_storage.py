"""Storage of runs without the transport: log batches that fail are retried row by row, and the
run state machine, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.domain import (
    HostFacts,
    LogLevel,
    NewLogLine,
    RunState,
    run_transition_allowed,
)
from server.storage import run_ingest
from server.storage.agents import create_agent
from server.storage.db import make_sessionmaker
from server.storage.models import TaskLog


def line(run_id: str, seq: int) -> NewLogLine:
    return NewLogLine(
        run_id=run_id,
        seq=seq,
        timestamp=datetime.now(UTC),
        level=LogLevel.INFO,
        source="executor",
        message=f"line {seq}",
        metadata={"k": "v"},
    )


async def test_failed_log_batch_is_retried_row_by_row(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    agent_id = str(uuid.uuid4())
    run_id = str(uuid.uuid4())
    sessions = make_sessionmaker(engine)
    async with sessions() as session, session.begin():
        await create_agent(session, agent_id, HostFacts(hostname="h"), now, 60)
        conn = await session.connection()
        await conn.run_sync(
            run_ingest.apply_run_batch,
            [run_ingest.RunWork(agent_id, log_run_ids=frozenset({run_id}))],
            now,
        )
    dialect = engine.dialect.name
    good = run_ingest.encode_log_lines([line(run_id, s) for s in (1, 2, 4, 5)], dialect)
    orphan = run_ingest.encode_log_lines([line(str(uuid.uuid4()), 3)], dialect)  # no such run
    rows = good[:2] + orphan + good[2:]

    async with engine.begin() as conn:
        stored, failed = await conn.run_sync(run_ingest.insert_log_rows, rows)
        # The transaction is still usable after the failed batch (PostgreSQL: savepoints).
        again, _ = await conn.run_sync(run_ingest.insert_log_rows, good)
    assert (stored, failed, again) == (4, 1, 0)
    async with engine.connect() as conn:
        seqs = (await conn.execute(select(TaskLog.seq).order_by(TaskLog.seq))).scalars().all()
    assert list(seqs) == [1, 2, 4, 5]


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        (None, RunState.SUCCEEDED, True),
        (RunState.PENDING, RunState.RUNNING, True),
        (RunState.PENDING, RunState.SUCCEEDED, False),
        (RunState.RUNNING, RunState.RUNNING, True),
        (RunState.RUNNING, RunState.AWAITING_INPUT, True),
        (RunState.RUNNING, RunState.PARTIAL, True),
        (RunState.AWAITING_INPUT, RunState.RUNNING, True),
        (RunState.AWAITING_INPUT, RunState.SUCCEEDED, False),
        (RunState.AWAITING_INPUT, RunState.CANCELLED, True),
        (RunState.SUCCEEDED, RunState.SUCCEEDED, False),
        (RunState.FAILED, RunState.RUNNING, False),
        (RunState.CANCELLED, RunState.FAILED, False),
    ],
)
def test_run_state_machine(old: RunState | None, new: RunState, allowed: bool) -> None:
    assert run_transition_allowed(old, new) is allowed
