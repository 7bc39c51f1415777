"""Run updates, log lines and actions through the real check-in path (gRPC, group commit), on
SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from runs_testlib import AgentClient, log_line, run_update, step, ts
from server_testlib import action_body
from sqlalchemy import func, select, update

from flagpost.v1 import agent_pb2
from server import app_keys
from server.app import RunningServer
from server.domain import ActionKind, LogQuery, RunState
from server.errors import Conflict
from server.services import actions as actions_service
from server.services import logs as logs_service
from server.services import runs as runs_service
from server.services.ingest import CommittedBatch
from server.storage.models import PendingActionRow, TaskLog, UpdateEvent

RUNNING = agent_pb2.RUN_STATE_RUNNING
SUCCEEDED = agent_pb2.RUN_STATE_SUCCEEDED


@pytest.fixture
async def channel(running_server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as ch:
        yield ch


async def count(server: RunningServer, model: type, *where: object) -> int:
    async with server.app[app_keys.SESSIONS]() as session:
        query = select(func.count()).select_from(model)
        for condition in where:
            query = query.where(condition)  # type: ignore[arg-type]
        return int((await session.execute(query)).scalar_one())


async def test_run_lifecycle_steps_and_logs_stored_once_and_acked(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    agent = await AgentClient.enroll(running_server, channel)
    sessions = running_server.app[app_keys.SESSIONS]
    heard: list[CommittedBatch] = []
    running_server.app[app_keys.SERVICES].ingest.add_commit_listener(heard.append)
    run_id = str(uuid.uuid4())
    started = datetime.now(UTC) - timedelta(seconds=5)
    first = run_update(
        run_id,
        RUNNING,
        steps_total=3,
        steps_done=1,
        started_at=ts(started),
        steps=[step(0, "move_legacy_config", "succeeded", 1200), step(1, "rename_keys", "running")],
    )
    lines = [log_line(run_id, seq, level="DEBUG" if seq % 2 else "INFO") for seq in range(1, 6)]
    lines.append(lines[0])  # a repeat inside one request is fine
    reply = await agent.checkin(run_updates=[first], log_lines=lines)

    assert list(reply.acknowledged_run_update_ids) == [first.update_id]
    assert [(a.run_id, list(a.seqs)) for a in reply.acknowledged_log_lines] == [
        (run_id, [1, 2, 3, 4, 5, 1])
    ]
    detail = await runs_service.get_run(sessions, run_id)
    assert detail.run.state == RunState.RUNNING
    assert detail.run.agent_id == agent.agent_id and detail.run.hostname == "web-1"
    assert (detail.run.steps_done, detail.run.steps_total) == (1, 3)
    assert [(s.index, s.name, s.status) for s in detail.steps] == [
        (0, "move_legacy_config", "succeeded"),
        (1, "rename_keys", "running"),
    ]
    assert detail.progress == pytest.approx(1 / 3)
    assert detail.eta_basis == "this_run" and detail.eta_seconds == pytest.approx(2.4)
    assert detail.log_lines == 5
    assert any(run_id in batch.run_ids for batch in heard)

    # The same check-in again (the ack was lost): nothing stored twice, everything acked.
    again = await agent.checkin(run_updates=[first], log_lines=lines)
    assert list(again.acknowledged_run_update_ids) == [first.update_id]
    assert await count(running_server, TaskLog) == 5

    done = run_update(
        run_id,
        SUCCEEDED,
        steps_total=3,
        steps_done=3,
        started_at=ts(started),
        finished_at=ts(),
        steps=[
            step(0, "move_legacy_config", "succeeded", 1200),
            step(1, "rename_keys", "succeeded", 300),
            step(2, "split_secrets", "succeeded", 30),
        ],
    )
    await agent.checkin(run_updates=[done], log_lines=[log_line(run_id, 6, level="ERROR")])
    detail = await runs_service.get_run(sessions, run_id)
    assert detail.run.state == RunState.SUCCEEDED and detail.run.finished_at is not None
    assert detail.progress == 1.0 and detail.eta_seconds is None
    assert [s.status for s in detail.steps] == ["succeeded"] * 3
    stats = await logs_service.log_stats(sessions, run_id)
    assert stats.total == 6
    assert stats.by_level == {"DEBUG": 3, "INFO": 2, "ERROR": 1}


async def test_older_update_ignored_and_invalid_transition_recorded(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    agent = await AgentClient.enroll(running_server, channel)
    sessions = running_server.app[app_keys.SESSIONS]
    run_id = str(uuid.uuid4())
    older = run_update(run_id, RUNNING, steps_total=2, steps_done=0)
    newer = run_update(run_id, RUNNING, steps_total=2, steps_done=1)
    # Sent newest first in separate check-ins: the older snapshot must not win.
    await agent.checkin(run_updates=[newer])
    reply = await agent.checkin(run_updates=[older])
    assert list(reply.acknowledged_run_update_ids) == [older.update_id]
    assert (await runs_service.get_run(sessions, run_id)).run.steps_done == 1

    finished = run_update(
        run_id,
        agent_pb2.RUN_STATE_FAILED,
        steps_total=2,
        steps_done=1,
        error_message="boom",
        finished_at=ts(),
    )
    await agent.checkin(run_updates=[finished])
    back = run_update(run_id, RUNNING, steps_total=2, steps_done=2)
    reply = await agent.checkin(run_updates=[back])
    assert list(reply.acknowledged_run_update_ids) == [back.update_id]  # acked, not applied
    run = (await runs_service.get_run(sessions, run_id)).run
    assert run.state == RunState.FAILED and run.error_message == "boom"
    notices = await count(
        running_server, UpdateEvent, UpdateEvent.category == "agent", UpdateEvent.run_id == run_id
    )
    assert notices == 1
    await agent.checkin(run_updates=[back])  # resent: still one notice (deterministic id)
    assert await count(running_server, UpdateEvent, UpdateEvent.run_id == run_id) == 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"run_updates": "bad-state"}, "run_updates[1].state"),
        ({"run_updates": "bad-id"}, "run_updates[1].update_id"),
        ({"run_updates": "bad-step"}, "run_updates[1].steps[0].status"),
        ({"log_lines": "bad-seq"}, "log_lines[2].seq"),
        ({"log_lines": "bad-level"}, "log_lines[2].level"),
        ({"log_lines": "no-time"}, "log_lines[2].timestamp"),
        ({"log_lines": "long"}, "log_lines[2].message"),
    ],
)
async def test_malformed_runs_part_rejects_the_whole_checkin(
    running_server: RunningServer,
    channel: grpc.aio.Channel,
    fields: dict[str, str],
    field: str,
) -> None:
    agent = await AgentClient.enroll(running_server, channel)
    run_id = str(uuid.uuid4())
    updates = [run_update(run_id, RUNNING, steps_total=1), run_update(run_id, RUNNING)]
    lines = [log_line(run_id, seq) for seq in (1, 2, 3)]
    kind = next(iter(fields.values()))
    if kind == "bad-state":
        updates[1].state = agent_pb2.RUN_STATE_UNSPECIFIED
    elif kind == "bad-id":
        updates[1].update_id = "not-a-uuid"
    elif kind == "bad-step":
        updates[1].steps.append(step(0, "x", "exploded"))
    elif kind == "bad-seq":
        lines[2].seq = 0
    elif kind == "bad-level":
        lines[2].level = "LOUD"
    elif kind == "no-time":
        lines[2].ClearField("timestamp")
    elif kind == "long":
        lines[2].message = "x" * 20_000
    event = agent_pb2.MigrationEvent(
        event_id=str(uuid.uuid4()),
        event_type=agent_pb2.EVENT_TYPE_MIGRATION_DETECTION,
        status=agent_pb2.EVENT_STATUS_SUCCESS,
        occurred_at=ts(),
        run_id=run_id,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await agent.checkin(events=[event], run_updates=updates, log_lines=lines)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(field + ":")
    assert await count(running_server, UpdateEvent) == 0
    assert await count(running_server, TaskLog) == 0
    page = await runs_service.list_runs(
        running_server.app[app_keys.SESSIONS], runs_service.RunFilter()
    )
    assert page.runs == []


async def test_too_many_log_lines_names_the_limit(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    agent = await AgentClient.enroll(running_server, channel)
    limit = running_server.app[app_keys.CONFIG].max_log_lines_per_checkin
    run_id = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await agent.checkin(log_lines=[log_line(run_id, s) for s in range(1, limit + 2)])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"the limit is {limit}" in (info.value.details() or "")


async def test_lines_before_updates_and_foreign_runs(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    owner = await AgentClient.enroll(running_server, channel, "web-1")
    intruder = await AgentClient.enroll(running_server, channel, "web-2")
    sessions = running_server.app[app_keys.SESSIONS]
    run_id = str(uuid.uuid4())
    # Lines first: the run exists (PENDING, no update yet), and its first update may say
    # anything, even a terminal state.
    await owner.checkin(log_lines=[log_line(run_id, 1), log_line(run_id, 2)])
    assert (await runs_service.get_run(sessions, run_id)).run.state == RunState.PENDING
    await owner.checkin(run_updates=[run_update(run_id, SUCCEEDED, finished_at=ts())])
    assert (await runs_service.get_run(sessions, run_id)).run.state == RunState.SUCCEEDED

    reply = await intruder.checkin(
        log_lines=[log_line(run_id, 3, message="forged")],
        run_updates=[run_update(run_id, RUNNING)],
    )
    assert [list(a.seqs) for a in reply.acknowledged_log_lines] == [[3]]  # acked, dropped
    assert len(reply.acknowledged_run_update_ids) == 1
    page = await logs_service.query_logs(sessions, run_id, LogQuery())
    assert [line.seq for line in page.lines] == [1, 2]
    assert (await runs_service.get_run(sessions, run_id)).run.state == RunState.SUCCEEDED
    notice = await count(
        running_server,
        UpdateEvent,
        UpdateEvent.agent_id == intruder.agent_id,
        UpdateEvent.category == "agent",
    )
    assert notice == 1


async def test_actions_delivered_until_acknowledged_and_run_links_back(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    agent = await AgentClient.enroll(running_server, channel)
    config = running_server.app[app_keys.CONFIG]
    sessions = running_server.app[app_keys.SESSIONS]
    action = await runs_service.request_run(sessions, config, agent.agent_id, "alice")
    assert action.kind == ActionKind.RUN_MIGRATION

    first = await agent.checkin()
    public_key = running_server.app[app_keys.SIGNER].public_key_bytes()
    bodies = [action_body(a, public_key) for a in first.actions]  # signature verified
    assert [(b.action_id, b.kind) for b in bodies] == [(action.action_id, "run_migration")]
    assert [a.action_id for a in first.actions] == [action.action_id]
    assert bodies[0].agent_id == agent.agent_id and len(bodies[0].nonce) == 16
    assert bodies[0].expires_at.seconds > datetime.now(UTC).timestamp()
    stored = await actions_service.get_action(sessions, action.action_id)
    assert stored is not None and stored.delivered_at is not None
    again = await agent.checkin()  # not acknowledged yet: delivered again
    assert [a.action_id for a in again.actions] == [action.action_id]

    run_id = str(uuid.uuid4())
    acked = await agent.checkin(
        acknowledged_action_ids=[action.action_id],
        run_updates=[
            run_update(run_id, RUNNING, steps_total=2, requested_by_action_id=action.action_id)
        ],
    )
    assert list(acked.actions) == []
    stored = await actions_service.get_action(sessions, action.action_id)
    assert stored is not None and stored.acknowledged_at is not None
    run = (await runs_service.get_run(sessions, run_id)).run
    assert (run.requested_action_id, run.requested_by) == (action.action_id, "alice")

    # Cancel: queued once (asking twice returns the same action), delivered, then CANCELLED.
    cancel = await runs_service.request_cancel(sessions, config, run_id, "bob")
    assert cancel == await runs_service.request_cancel(sessions, config, run_id, "carol")
    assert cancel.params == {"run_id": run_id}
    detail = await runs_service.get_run(sessions, run_id)
    assert detail.cancel_pending and detail.run.cancel_requested_by == "bob"
    reply = await agent.checkin()
    assert [(b.kind, dict(b.params)) for b in map(action_body, reply.actions)] == [
        ("cancel_run", {"run_id": run_id})
    ]
    await agent.checkin(
        acknowledged_action_ids=[cancel.action_id],
        run_updates=[run_update(run_id, agent_pb2.RUN_STATE_CANCELLED, finished_at=ts())],
    )
    detail = await runs_service.get_run(sessions, run_id)
    assert detail.run.state == RunState.CANCELLED and detail.run.cancelled_by == "bob"
    assert not detail.cancel_pending
    with pytest.raises(Conflict):
        await runs_service.request_cancel(sessions, config, run_id, "bob")


async def test_expired_actions_are_not_delivered(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    agent = await AgentClient.enroll(running_server, channel)
    sessions = running_server.app[app_keys.SESSIONS]
    config = running_server.app[app_keys.CONFIG]
    action = await runs_service.request_run(sessions, config, agent.agent_id, "alice")
    async with sessions() as session, session.begin():
        await session.execute(
            update(PendingActionRow)
            .where(PendingActionRow.action_id == action.action_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    reply = await agent.checkin()
    assert list(reply.actions) == []
    assert await actions_service.list_pending_actions(sessions, agent.agent_id) == []
