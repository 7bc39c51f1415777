"""Rollout scheduler figures: its cost per 1,000 hosts per wave, and the time from a gate
breach to HALTED.

    python -m tests.bench.rollouts [--agents 10000] [--db sqlite|postgresql] [--trials 10]

1. *Cost*: a fresh database (alembic) with ``--agents`` online agents and the sample spec; one
   rollout over all of them in waves ``1000,5000,100%``. For each wave, the time of the
   scheduler tick (``server.services.rollout_scheduler.tick``) that starts it (one signed-to-be
   ``run_migration`` action per host), of a tick while its hosts run and nothing changed, and
   of the tick that learns every host's outcome after each agent's run was written (as ingest
   writes it); each also per 1,000 hosts.
2. *Breach to HALTED*: a real server (``start_server``, ``rollout_tick_seconds`` 1.0: the
   scheduler also ticks at once when ingest commits a run update) and one agent over real gRPC;
   per trial a new rollout with gate ``max_failures 0``; the agent takes its action and reports
   a FAILED run; the time from that check-in's answer (the run is committed) until the rollout
   reads HALTED, polling every 5 ms. Median and max of ``--trials``.
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

import grpc
from sqlalchemy import insert, select, update

from agent.uuid7 import uuid7_str
from flagpost.v1 import agent_pb2
from server import app_keys
from server.app import start_server
from server.config import load_config
from server.domain import RolloutState
from server.services import rollouts, specs
from server.services.rollout_scheduler import tick
from server.storage import schema
from server.storage.db import create_engine, make_sessionmaker
from server.storage.models import Agent, MigrationRun, PendingActionRow, RolloutHostRow
from tests.bench.selectors import PG_BASE, _pg
from tests.runs_testlib import AgentClient, run_update
from tests.server_testlib import action_body

SAMPLE = (Path(__file__).resolve().parents[1] / "agent_tests/specs/myapp.toml").read_text()


async def _database(db: str, tmp: Path) -> tuple[str, str]:
    name = f"bench_rollouts_{uuid.uuid4().hex[:8]}"
    if db == "postgresql":
        await _pg(f'CREATE DATABASE "{name}"')
        return f"{PG_BASE}/{name}", name
    return f"sqlite+aiosqlite:///{tmp / 'bench.db'}", name


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def cost(agents: int, db: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="flagpost-bench-rollouts-"))
    url, name = await _database(db, tmp)
    try:
        await asyncio.to_thread(schema.upgrade, url)
        config = load_config(None, env={}, overrides={"database_url": url, "state_dir": str(tmp)})
        engine = create_engine(config)
        sessions = make_sessionmaker(engine)
        now = datetime.now(UTC)
        rows = [
            {
                "id": str(uuid.uuid4()),
                "hostname": f"web-{i}",
                "labels": {"env": "prod"},
                "facts": {},
                "enrolled_at": now,
                "last_checkin_at": now,
            }
            for i in range(agents)
        ]
        async with sessions() as session, session.begin():
            for start in range(0, len(rows), 1000):
                await session.execute(insert(Agent), rows[start : start + 1000])
        await specs.add_spec(sessions, SAMPLE, "toml", "bench")
        started = time.perf_counter()
        created = await rollouts.create_rollout(
            sessions,
            config,
            "myapp",
            "bench",
            waves=["1000", "5000", "100%"],
            max_failures=agents,
            soak_seconds=3600,
        )
        print(f"{agents} agents on {db}: create_rollout {_ms(started):.0f} ms")
        print(f"  {'wave':>4} {'hosts':>6} {'start':>16} {'idle tick':>16} {'outcomes':>16}")
        for wave, _ in enumerate(created.wave_sizes):
            # the soak (1 h) keeps each tick to one thing; the clock jumps past it per wave
            at = datetime.now(UTC) + timedelta(hours=2 * wave)
            started = time.perf_counter()
            await tick(sessions, config, created.id, at)
            start_ms = _ms(started)
            started = time.perf_counter()
            await tick(sessions, config, created.id, at)
            idle_ms = _ms(started)
            hosts = await _report_all(sessions, created.id, wave)
            started = time.perf_counter()
            await tick(sessions, config, created.id, at)
            outcome_ms = _ms(started)
            per = 1000 / hosts
            print(
                f"  {wave + 1:>4} {hosts:>6} {start_ms:>7.0f} ms ({start_ms * per:>3.0f}/k) "
                f"{idle_ms:>7.0f} ms ({idle_ms * per:>3.0f}/k) "
                f"{outcome_ms:>7.0f} ms ({outcome_ms * per:>3.0f}/k)"
            )
        detail = await rollouts.get_rollout(sessions, created.id, limit=1)
        print(f"  state {detail.rollout.state.value}, {detail.rollout.hosts_done} hosts done")
        await engine.dispose()
    finally:
        if db == "postgresql":
            await _pg(f'DROP DATABASE IF EXISTS "{name}"')


async def _report_all(sessions: Any, rollout_id: str, wave: int) -> int:
    """Write, as ingest would, a SUCCEEDED run for every started host of ``wave``."""
    now = datetime.now(UTC)
    async with sessions() as session, session.begin():
        started = list(
            await session.execute(
                select(RolloutHostRow.agent_id, RolloutHostRow.action_id).where(
                    RolloutHostRow.rollout_id == rollout_id, RolloutHostRow.wave == wave
                )
            )
        )
        runs = [
            {
                "id": str(uuid.uuid4()),
                "agent_id": agent_id,
                "migration_id": "myapp",
                "state": "SUCCEEDED",
                "created_at": now,
                "updated_at": now,
                "requested_action_id": action_id,
                "spec_revision": 1,
            }
            for agent_id, action_id in started
        ]
        for start in range(0, len(runs), 1000):
            await session.execute(insert(MigrationRun), runs[start : start + 1000])
        await session.execute(
            update(PendingActionRow)
            .where(PendingActionRow.action_id.in_([a for _, a in started]))
            .values(delivered_at=now, acknowledged_at=now)
        )
    return len(started)


async def breach_to_halted(db: str, trials: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="flagpost-bench-halt-"))
    url, name = await _database(db, tmp)
    try:
        await asyncio.to_thread(schema.upgrade, url)
        config = load_config(
            None,
            env={},
            overrides={
                "database_url": url,
                "state_dir": str(tmp),
                "grpc_port": 0,
                "web_port": 0,
                "rollout_tick_seconds": 1.0,
            },
        )
        server = await start_server(config)
        sessions = server.app[app_keys.SESSIONS]
        try:
            await specs.add_spec(sessions, SAMPLE, "toml", "bench")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                agent = await AgentClient.enroll(server, channel)
                await agent.checkin()
                latencies = []
                for _ in range(trials):
                    created = await rollouts.create_rollout(
                        sessions, config, "myapp", "bench", waves=["100%"]
                    )
                    action_id = ""
                    while not action_id:
                        reply = await agent.checkin()
                        for action in reply.actions:
                            if action_body(action).kind == "run_migration":
                                action_id = action.action_id
                        await asyncio.sleep(0.05)
                    failed = run_update(
                        str(uuid.uuid4()),
                        agent_pb2.RUN_STATE_FAILED,
                        migration_id="myapp",
                        spec_revision=1,
                        requested_by_action_id=action_id,
                        update_id=uuid7_str(),
                    )
                    await agent.checkin(run_updates=[failed], acknowledged_action_ids=[action_id])
                    started = time.perf_counter()
                    while True:
                        detail = await rollouts.get_rollout(sessions, created.id, limit=1)
                        if detail.rollout.state == RolloutState.HALTED:
                            break
                        await asyncio.sleep(0.005)
                    latencies.append(_ms(started))
                    await rollouts.abort(sessions, created.id, "bench")
            print(
                f"gate breach -> HALTED on {db} (tick 1.0 s), {trials} trials: median "
                f"{statistics.median(latencies):.0f} ms, max {max(latencies):.0f} ms"
            )
        finally:
            await server.stop()
    finally:
        if db == "postgresql":
            await _pg(f'DROP DATABASE IF EXISTS "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(cost(args.agents, args.db))
    asyncio.run(breach_to_halted(args.db, args.trials))


if __name__ == "__main__":
    main()
