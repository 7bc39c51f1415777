"""Answers that can no longer reach their agent do not stay in the database: the retention job
deletes the ciphertext once its action expired unacknowledged or its agent was revoked, and the
admin may answer again. Expired web sessions go at the same time. SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
from runs_testlib import AgentClient, run_update
from server_testlib import create_web_user
from sqlalchemy import update
from test_inputs_server import RUNNING, rows, wait_for_input

from server import app_keys
from server.app import RunningServer
from server.services import agents as agents_service
from server.services import users as users_service
from server.services.retention import prune
from server.storage.models import PendingActionRow

ANSWERS = {"database_password": "pw", "upstream_token": "tok"}


async def _waiting_run(server: RunningServer, channel: grpc.aio.Channel) -> tuple[str, str, str]:
    agent = await AgentClient.enroll(server, channel, f"host-{uuid.uuid4().hex[:6]}")
    run_id, request_id = str(uuid.uuid4()), str(uuid.uuid4())
    await agent.checkin(run_updates=[run_update(run_id, RUNNING)])
    await wait_for_input(agent, run_id, request_id)
    return agent.agent_id, run_id, request_id


async def test_undeliverable_answers_and_expired_sessions_are_pruned(
    running_server: RunningServer,
) -> None:
    server = running_server
    app = server.app
    sessions, config, vault = (
        app[app_keys.SESSIONS],
        app[app_keys.CONFIG],
        app[app_keys.SERVICES].inputs,
    )
    assert vault is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        _, expired_run, expired_request = await _waiting_run(server, channel)
        revoked_agent, revoked_run, revoked_request = await _waiting_run(server, channel)
        _, kept_run, kept_request = await _waiting_run(server, channel)
    expired = await vault.submit_answers(expired_run, expired_request, ANSWERS, "alice")
    await vault.submit_answers(revoked_run, revoked_request, ANSWERS, "alice")
    await vault.submit_answers(kept_run, kept_request, ANSWERS, "alice")
    # One action expires undelivered (the agent stayed offline); one agent is revoked.
    async with sessions() as session, session.begin():
        await session.execute(
            update(PendingActionRow)
            .where(PendingActionRow.action_id == expired.action_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    await agents_service.revoke(sessions, revoked_agent)
    # A web session that expired.
    account = await create_web_user(server, "viewer")
    await users_service.login(sessions, account.name, account.password, timedelta(seconds=-1))

    result = await prune(sessions, config)

    assert (result.answers, result.sessions) == (2, 1)
    left = await rows(config.database_url, "SELECT run_id FROM run_inputs")
    assert [r[0] for r in left] == [kept_run]
    assert await rows(config.database_url, "SELECT count(*) FROM web_sessions") == [(0,)]
    # The run whose answers expired still waits: the admin may answer again.
    again = await vault.submit_answers(expired_run, expired_request, ANSWERS, "bob")
    assert again.action_id != expired.action_id
