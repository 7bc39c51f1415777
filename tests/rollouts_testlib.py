"""Helpers of the rollouts page tests: agents that take the run actions a rollout's waves queue
and report a run for each (real gRPC check-ins, as tests/test_rollouts_cli.py does), and a wait
for a rollout's state through the service."""

from __future__ import annotations

import asyncio
import uuid

from runs_testlib import AgentClient, run_update
from server_testlib import action_body

from server import app_keys
from server.app import RunningServer
from server.domain import RolloutDetail, RolloutState
from server.services import rollouts as rollouts_service


async def take_and_report(agent: AgentClient, state: int, error: str = "") -> int:
    """One check-in: every ``run_migration`` action received is answered with a run in
    ``state`` (``error`` its error message); how many were answered."""
    reply = await agent.checkin()
    updates = [
        run_update(
            str(uuid.uuid4()),
            state,
            migration_id="myapp",
            spec_revision=1,
            requested_by_action_id=action.action_id,
            error_message=error,
        )
        for action in reply.actions
        if action_body(action).kind == "run_migration"
    ]
    if updates:
        await agent.checkin(
            run_updates=updates, acknowledged_action_ids=[a.action_id for a in reply.actions]
        )
    return len(updates)


async def answer_until(
    agents: list[AgentClient], state: int, error: str = "", attempts: int = 60
) -> int:
    """Check every agent in until at least one took a run action and reported it."""
    for _ in range(attempts):
        taken = sum([await take_and_report(a, state, error) for a in agents])
        if taken:
            return taken
        await asyncio.sleep(0.2)
    raise AssertionError("no agent received a run action")


async def until_state(
    server: RunningServer, rollout_id: str, *states: RolloutState, attempts: int = 100
) -> RolloutDetail:
    """The rollout once it is in one of ``states`` (AssertionError after ``attempts`` tries)."""
    sessions = server.app[app_keys.SESSIONS]
    for _ in range(attempts):
        detail = await rollouts_service.get_rollout(sessions, rollout_id)
        if detail.rollout.state in states:
            return detail
        await asyncio.sleep(0.2)
    raise AssertionError(f"rollout never reached {states}: {detail.rollout}")
