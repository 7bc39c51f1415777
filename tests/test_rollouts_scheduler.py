"""The rollout scheduler on a real database (SQLite and PostgreSQL), one tick at a time with a
chosen clock: what the agents did is written as they would report it (the action delivered,
the run the agent reported for it, a detection event answering it). The fleet of real agents is
in tests/test_rollouts_fleet.py.

Covered: deterministic waves; a gate breach halts at once, withdraws the actions no agent took
and starts no host beyond the started wave; resume needs a reason and overrides only that
wave; the soak time; the wave timeout (failed, or not reached when never taken); blocked hosts
hold their wave; already-at-target counts as succeeded; abort skips the rest; abort and revert
reverts newest wave first; two schedulers at once start every host exactly once; transitions
record who, when and why.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from agent_tests.spec_testlib import SAMPLE
from server_testlib import make_server_config
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.domain import (
    ActionKind,
    RevertState,
    RolloutHostState,
    RolloutState,
    RunState,
)
from server.errors import Conflict, InvalidArgument
from server.services import rollouts
from server.services import specs as specs_service
from server.services.rollout_scheduler import tick
from server.storage import run_ingest
from server.storage.db import create_engine_for_url, make_sessionmaker
from server.storage.models import Agent, MigrationRun, PendingActionRow, UpdateEvent
from server.waves import wave_sizes

H = RolloutHostState


@dataclass
class Db:
    sessions: async_sessionmaker[AsyncSession]
    config: ServerConfig
    url: str


@pytest.fixture
async def db(db_url: str, tmp_path: Any) -> AsyncIterator[Db]:
    engine = create_engine_for_url(db_url)
    sessions = make_sessionmaker(engine)
    try:
        await specs_service.add_spec(sessions, SAMPLE, "toml", "alice")
        yield Db(sessions, make_server_config(db_url, tmp_path), db_url)
    finally:
        await engine.dispose()


async def seed(db: Db, count: int, **labels: str) -> list[str]:
    now = datetime.now(UTC)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    async with db.sessions() as session, session.begin():
        await session.execute(
            insert(Agent),
            [
                {
                    "id": agent_id,
                    "hostname": f"web-{i:03d}",
                    "labels": dict(labels),
                    "facts": {},
                    "enrolled_at": now,
                    "last_checkin_at": now,
                }
                for i, agent_id in enumerate(ids)
            ],
        )
    return ids


async def create(db: Db, **settings: Any) -> str:
    settings.setdefault("waves", ["5", "25%", "100%"])
    created = await rollouts.create_rollout(db.sessions, db.config, "myapp", "alice", **settings)
    return created.id


async def hosts(db: Db, rollout_id: str) -> dict[str, Any]:
    detail = await rollouts.get_rollout(db.sessions, rollout_id)
    return {h.agent_id: h for h in detail.hosts}


async def actions_of(db: Db, kind: ActionKind = ActionKind.RUN_MIGRATION) -> list[Any]:
    async with db.sessions() as session:
        rows = await session.execute(
            select(PendingActionRow).where(PendingActionRow.kind == kind.value)
        )
        return list(rows.scalars())


async def action_for(db: Db, agent_id: str, kind: ActionKind = ActionKind.RUN_MIGRATION) -> str:
    found = [a.action_id for a in await actions_of(db, kind) if a.agent_id == agent_id]
    assert len(found) == 1, found
    return found[0]


async def agent_reports(
    db: Db,
    agent_id: str,
    state: RunState | None,
    *,
    kind: ActionKind = ActionKind.RUN_MIGRATION,
    detection: str = "",
    error: str = "",
    reverts: str = "",
) -> str:
    """The agent took its action and reported a run in ``state`` (or only a detection event
    with status ``detection``); returns the run id ("" without a run)."""
    action_id = await action_for(db, agent_id, kind)
    now = datetime.now(UTC)
    run_id = str(uuid.uuid4()) if state is not None else ""
    async with db.sessions() as session, session.begin():
        await session.execute(
            update(PendingActionRow)
            .where(PendingActionRow.action_id == action_id)
            .values(delivered_at=now, acknowledged_at=now)
        )
        if state is not None:
            await session.execute(
                insert(MigrationRun).values(
                    id=run_id,
                    agent_id=agent_id,
                    migration_id="myapp",
                    state=state.value,
                    error_message=error,
                    created_at=now,
                    updated_at=now,
                    requested_action_id=action_id,
                    spec_revision=1,
                    reverts_run_id=reverts,
                )
            )
        if detection:
            await session.execute(
                insert(UpdateEvent).values(
                    event_id=str(uuid.uuid4()),
                    agent_id=agent_id,
                    category="migration",
                    event_type="migration_detection",
                    status=detection,
                    severity="info",
                    occurred_at=now,
                    received_at=now,
                    action_id=action_id,
                    error_message=error,
                )
            )
    return run_id


async def tick_at(db: Db, rollout_id: str, after: float = 0.0) -> None:
    assert await tick(
        db.sessions, db.config, rollout_id, datetime.now(UTC) + timedelta(seconds=after)
    )


def by_wave(found: dict[str, Any], wave: int) -> list[str]:
    return sorted(agent_id for agent_id, h in found.items() if h.wave == wave)


async def test_waves_are_cumulative_and_deterministic(db: Db) -> None:
    assert wave_sizes(["5", "25%", "100%"], 200) == [5, 50, 200]
    assert wave_sizes(["5", "25%", "100%"], 4) == [4, 4, 4]
    assert wave_sizes(["1", "12.5%", "100%"], 9) == [1, 2, 9]
    with pytest.raises(InvalidArgument, match="smaller than wave 1"):
        wave_sizes(["50%", "10%", "100%"], 200)
    with pytest.raises(InvalidArgument, match="end the waves with 100%"):
        wave_sizes(["5", "50%"], 200)
    with pytest.raises(InvalidArgument, match="not a host count"):
        wave_sizes(["five", "100%"], 200)
    await seed(db, 40)
    rollout_id = await create(db)
    found = await hosts(db, rollout_id)
    assert [len(by_wave(found, w)) for w in range(3)] == [5, 5, 30]
    ordered = sorted(found, key=lambda agent_id: rollouts.rank(rollout_id, agent_id))
    assert by_wave(found, 0) == sorted(ordered[:5])  # the lowest ranks go first
    detail = await rollouts.get_rollout(db.sessions, rollout_id)
    assert [w.hosts for w in detail.waves] == [5, 5, 30]
    assert detail.rollout.state == RolloutState.RUNNING
    assert detail.transitions[0].by == "alice"


async def test_a_selector_that_picks_nothing_or_a_bad_spec_is_refused(db: Db) -> None:
    await seed(db, 3, env="prod")
    with pytest.raises(InvalidArgument, match="picks no host") as caught:
        await create(db, selector=["env=staging"])
    assert caught.value.field == "select"
    with pytest.raises(Exception, match="no revision 9 of spec myapp"):
        await create(db, revision=9)


async def test_gate_breach_halts_at_once_and_touches_no_later_wave(db: Db) -> None:
    await seed(db, 40)
    rollout_id = await create(db, max_failure_rate=0.05)
    await tick_at(db, rollout_id)
    found = await hosts(db, rollout_id)
    first, second, third = (by_wave(found, w) for w in range(3))
    assert {found[a].state for a in first} == {H.PENDING}
    assert {found[a].state for a in second + third} == {H.WAITING}
    for agent_id in first:
        await agent_reports(db, agent_id, RunState.SUCCEEDED)
    await tick_at(db, rollout_id)  # wave 1 done, wave 2 starts (no soak)
    found = await hosts(db, rollout_id)
    assert {found[a].state for a in first} == {H.SUCCEEDED}
    assert {found[a].state for a in second} == {H.PENDING}
    await agent_reports(db, second[0], RunState.RUNNING)
    await agent_reports(db, second[1], RunState.FAILED, error="convert: port is not an int")
    await tick_at(db, rollout_id)
    detail = await rollouts.get_rollout(db.sessions, rollout_id)
    assert detail.rollout.state == RolloutState.HALTED
    assert "wave 2 (25%): 1 of 5 hosts failed (20.0%)" in detail.rollout.reason
    assert detail.transitions[-1].by == rollouts.SCHEDULER
    found = {h.agent_id: h for h in detail.hosts}
    assert found[second[1]].state == H.FAILED
    assert found[second[1]].error == "convert: port is not an int"
    assert found[second[0]].state == H.RUNNING  # started runs finish
    # the three nobody took yet were withdrawn: waiting again, their actions expired
    assert [found[a].state for a in second[2:]] == [H.WAITING] * 3
    open_ids = {a.agent_id for a in await actions_of(db) if a.expires_at > datetime.now(UTC)}
    assert not open_ids & set(second[2:] + third)
    # Nor does a check-in batch whose clock was read before the halt (it waited for the
    # database to be free) find them deliverable.
    earlier = datetime.now(UTC) - timedelta(seconds=1)
    async with db.sessions() as session, session.begin():
        late = await session.run_sync(
            lambda s: run_ingest.deliver_actions(s.connection(), second[2:], earlier)
        )
    assert late == {}
    for _ in range(3):
        await tick_at(db, rollout_id, after=5)
    assert {(await hosts(db, rollout_id))[a].state for a in third} == {H.WAITING}
    assert len(await actions_of(db)) == 5 + 5  # no action for any host of wave 3

    with pytest.raises(InvalidArgument, match="say why"):
        await rollouts.resume(db.sessions, rollout_id, "bob")
    resumed = await rollouts.resume(db.sessions, rollout_id, "bob", "port fixed by hand")
    assert resumed.state == RolloutState.RUNNING and resumed.override_wave == 1
    await tick_at(db, rollout_id)  # the withdrawn three start again
    found = await hosts(db, rollout_id)
    assert [found[a].state for a in second[2:]] == [H.PENDING] * 3
    detail = await rollouts.get_rollout(db.sessions, rollout_id)
    last = detail.transitions[-1]
    assert (last.from_state, last.to_state, last.by) == ("HALTED", RolloutState.RUNNING, "bob")
    assert "overridden by bob: port fixed by hand" in last.reason


async def test_failure_count_gate_and_default_gate(db: Db) -> None:
    await seed(db, 10)
    rollout_id = await create(db, waves=["100%"], max_failures=1)
    await tick_at(db, rollout_id)
    ids = list(await hosts(db, rollout_id))
    await agent_reports(db, ids[0], RunState.FAILED)
    await tick_at(db, rollout_id)
    assert (await rollouts.get_rollout(db.sessions, rollout_id)).rollout.state == "RUNNING"
    await agent_reports(db, ids[1], RunState.PARTIAL)
    await tick_at(db, rollout_id)
    assert (await rollouts.get_rollout(db.sessions, rollout_id)).rollout.state == "HALTED"
    # no gate given: the first failure halts
    await rollouts.abort(db.sessions, rollout_id, "alice")
    strict = await create(db, waves=["100%"])
    assert (await rollouts.get_rollout(db.sessions, strict)).rollout.gates.max_failures == 0


async def test_soak_time_holds_the_next_wave(db: Db) -> None:
    await seed(db, 10)
    rollout_id = await create(db, waves=["2", "100%"], soak_seconds=600)
    await tick_at(db, rollout_id)
    found = await hosts(db, rollout_id)
    for agent_id in by_wave(found, 0):
        await agent_reports(db, agent_id, RunState.SUCCEEDED)
    await tick_at(db, rollout_id)
    detail = await rollouts.get_rollout(db.sessions, rollout_id)
    assert detail.rollout.current_wave == 1 and detail.rollout.next_wave_at is not None
    await tick_at(db, rollout_id, after=300)
    found = await hosts(db, rollout_id)
    assert {found[a].state for a in by_wave(found, 1)} == {H.WAITING}
    await tick_at(db, rollout_id, after=601)
    found = await hosts(db, rollout_id)
    assert {found[a].state for a in by_wave(found, 1)} == {H.PENDING}
    for agent_id in by_wave(found, 1):
        await agent_reports(db, agent_id, RunState.SUCCEEDED)
    await tick_at(db, rollout_id, after=602)
    detail = await rollouts.get_rollout(db.sessions, rollout_id)
    assert detail.rollout.state == RolloutState.COMPLETED
    assert detail.rollout.hosts_done == 10


async def test_wave_timeout_not_reached_blocked_and_not_needed(db: Db) -> None:
    await seed(db, 4)
    rollout_id = await create(db, waves=["100%"], max_failures=4, wave_timeout_seconds=60)
    await tick_at(db, rollout_id)
    offline, stuck, blocked, current = sorted(await hosts(db, rollout_id))
    stuck_action = await action_for(db, stuck)
    async with db.sessions() as session, session.begin():
        await session.execute(
            update(PendingActionRow)
            .where(PendingActionRow.action_id == stuck_action)
            .values(delivered_at=datetime.now(UTC))
        )
    await agent_reports(db, blocked, RunState.AWAITING_INPUT)
    await agent_reports(db, current, None, detection="not_needed")
    await tick_at(db, rollout_id, after=30)
    found = await hosts(db, rollout_id)
    assert found[offline].state == H.PENDING
    assert found[stuck].state == H.RUNNING
    assert found[blocked].state == H.BLOCKED
    assert found[current].state == H.SUCCEEDED
    await tick_at(db, rollout_id, after=61)
    detail = await rollouts.get_rollout(db.sessions, rollout_id)
    found = {h.agent_id: h for h in detail.hosts}
    assert found[offline].state == H.NOT_REACHED and "offline" in found[offline].error
    assert found[stuck].state == H.FAILED and "wave timeout" in found[stuck].error
    assert found[blocked].state == H.BLOCKED  # holds the wave open
    assert detail.rollout.state == RolloutState.RUNNING
    assert detail.waves[0].failed == 2
    offline_action = next(a for a in await actions_of(db) if a.agent_id == offline)
    assert offline_action.expires_at <= datetime.now(UTC) + timedelta(seconds=61)


async def test_abort_skips_the_rest_and_revert_goes_newest_wave_first(db: Db) -> None:
    await seed(db, 10)
    rollout_id = await create(db, waves=["2", "50%", "100%"])
    await tick_at(db, rollout_id)
    found = await hosts(db, rollout_id)
    runs: dict[str, str] = {}
    for agent_id in by_wave(found, 0):
        runs[agent_id] = await agent_reports(db, agent_id, RunState.SUCCEEDED)
    await tick_at(db, rollout_id)
    second = by_wave(found, 1)
    for agent_id in second[:2]:
        runs[agent_id] = await agent_reports(db, agent_id, RunState.SUCCEEDED)
    await tick_at(db, rollout_id)
    with pytest.raises(Conflict):
        await rollouts.resume(db.sessions, rollout_id, "bob", "why")
    aborted = await rollouts.abort(db.sessions, rollout_id, "bob", revert=True)
    assert aborted.state == RolloutState.REVERTING
    found = await hosts(db, rollout_id)
    assert {found[a].state for a in second[2:]} == {H.SKIPPED}  # never taken: withdrawn
    assert {found[a].state for a in by_wave(found, 2)} == {H.SKIPPED}
    await tick_at(db, rollout_id)  # wave 3: nothing to revert; wave 2's two succeeded hosts
    reverts = await actions_of(db, ActionKind.REVERT_RUN)
    assert sorted(a.agent_id for a in reverts) == sorted(second[:2])
    assert {a.params["run_id"] for a in reverts} == {runs[a] for a in second[:2]}
    await tick_at(db, rollout_id)
    assert len(await actions_of(db, ActionKind.REVERT_RUN)) == 2  # wave 1 waits for wave 2
    for agent_id in second[:2]:
        await agent_reports(
            db, agent_id, RunState.SUCCEEDED, kind=ActionKind.REVERT_RUN, reverts=runs[agent_id]
        )
    await tick_at(db, rollout_id)
    reverts = await actions_of(db, ActionKind.REVERT_RUN)
    assert len(reverts) == 4
    for agent_id in by_wave(found, 0):
        await agent_reports(
            db, agent_id, RunState.FAILED, kind=ActionKind.REVERT_RUN, reverts=runs[agent_id]
        )
    await tick_at(db, rollout_id)
    detail = await rollouts.get_rollout(db.sessions, rollout_id)
    assert detail.rollout.state == RolloutState.REVERTED
    assert detail.reverts[RevertState.REVERTED] == 2
    assert detail.reverts[RevertState.FAILED] == 2
    states = [(t.from_state, t.to_state.value, t.by) for t in detail.transitions]
    assert states == [
        ("", "RUNNING", "alice"),
        ("RUNNING", "REVERTING", "bob"),
        ("REVERTING", "REVERTED", "scheduler"),
    ]
    with pytest.raises(Conflict, match="cannot go to REVERTING"):
        await rollouts.abort(db.sessions, rollout_id, "bob", revert=True)


async def test_pause_stops_new_starts(db: Db) -> None:
    await seed(db, 6)
    rollout_id = await create(db, waves=["2", "100%"])
    await tick_at(db, rollout_id)
    paused = await rollouts.pause(db.sessions, rollout_id, "carol")
    assert paused.state == RolloutState.PAUSED
    found = await hosts(db, rollout_id)
    for agent_id in by_wave(found, 0):
        await agent_reports(db, agent_id, RunState.SUCCEEDED)
    for _ in range(2):
        await tick_at(db, rollout_id)
    found = await hosts(db, rollout_id)
    assert {found[a].state for a in by_wave(found, 0)} == {H.SUCCEEDED}  # still followed
    assert {found[a].state for a in by_wave(found, 1)} == {H.WAITING}
    await rollouts.resume(db.sessions, rollout_id, "carol")
    await tick_at(db, rollout_id)
    await tick_at(db, rollout_id)
    found = await hosts(db, rollout_id)
    assert {found[a].state for a in by_wave(found, 1)} == {H.PENDING}
    with pytest.raises(Conflict, match="only PAUSED or HALTED resumes"):
        await rollouts.resume(db.sessions, rollout_id, "carol")


async def test_two_schedulers_at_once_start_every_host_exactly_once(db: Db) -> None:
    await seed(db, 60)
    rollout_id = await create(db, waves=["10", "50%", "100%"], max_failures=100)
    other = create_engine_for_url(db.url)
    others = make_sessionmaker(other)
    try:
        for _ in range(4):
            results = await asyncio.gather(
                tick(db.sessions, db.config, rollout_id),
                tick(others, db.config, rollout_id),
                return_exceptions=True,
            )
            assert not [r for r in results if isinstance(r, BaseException)], results
            found = await hosts(db, rollout_id)
            for agent_id, h in found.items():
                if h.state == H.PENDING:
                    await agent_reports(db, agent_id, RunState.SUCCEEDED)
    finally:
        await other.dispose()
    async with db.sessions() as session:
        per_agent = await session.execute(
            select(PendingActionRow.agent_id, func.count()).group_by(PendingActionRow.agent_id)
        )
        counts = dict(per_agent.all())
    assert len(counts) == 60 and set(counts.values()) == {1}
    await tick_at(db, rollout_id)
    assert (await rollouts.get_rollout(db.sessions, rollout_id)).rollout.state == "COMPLETED"
