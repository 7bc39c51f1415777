"""Every limit of a check-in, one at a time, against a real server: each violation is a clean
error that names the offending field and the limit, and nothing is stored.

The field table below is checked against the proto descriptors, so a string field added to the
contract without a limit fails ``test_every_string_field_has_a_limit_case``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from runs_testlib import AgentClient, log_line, run_update, ts
from server_testlib import make_server_config
from sqlalchemy import func, select

from flagpost.v1 import agent_pb2
from server import app_keys
from server.app import RunningServer, start_server
from server.grpc import convert, convert_runs
from server.storage.models import TaskLog, UpdateEvent

Mutate = Callable[[agent_pb2.CheckInRequest], None]


def _event() -> agent_pb2.MigrationEvent:
    return agent_pb2.MigrationEvent(
        event_id=str(uuid.uuid4()),
        event_type=agent_pb2.EVENT_TYPE_MIGRATION_EXECUTION,
        status=agent_pb2.EVENT_STATUS_FAILED,
        occurred_at=ts(),
    )


def _set_event(name: str, size: int) -> Mutate:
    def mutate(request: agent_pb2.CheckInRequest) -> None:
        setattr(request.events[0], name, "x" * size)

    return mutate


def _set_detail(name: str, size: int) -> Mutate:
    def mutate(request: agent_pb2.CheckInRequest) -> None:
        setattr(request.events[0].error_detail, name, "x" * size)

    return mutate


def _set_fact(name: str, size: int) -> Mutate:
    def mutate(request: agent_pb2.CheckInRequest) -> None:
        setattr(request.facts, name, "x" * size)

    return mutate


def _system_info_key(request: agent_pb2.CheckInRequest) -> None:
    request.events[0].system_info["k" * (convert.MAX_SYSTEM_INFO_KEY + 1)] = "v"


def _system_info_value(request: agent_pb2.CheckInRequest) -> None:
    request.events[0].system_info["k"] = "v" * (convert.MAX_SYSTEM_INFO_VALUE + 1)


def _system_info_entries(request: agent_pb2.CheckInRequest) -> None:
    for index in range(convert.MAX_SYSTEM_INFO_ENTRIES + 1):
        request.events[0].system_info[f"k{index}"] = "v"


# (case id, mutation, field named in the error, limit named in the error)
CASES: list[tuple[str, Mutate, str, int]] = [
    (f"event.{name}", _set_event(name, limit + 1), f"events[0].{name}", limit)
    for name, limit in [
        ("message", convert.MAX_MESSAGE),
        ("error_message", convert.MAX_ERROR_MESSAGE),
        ("migration_from", convert.MAX_VERSION),
        ("migration_to", convert.MAX_VERSION),
        ("spec_id", 64),  # a spec id: 1 to 64 of a-z, 0-9, '_', '.', '-'
    ]
]
CASES += [
    (
        f"error_detail.{name}",
        _set_detail(name, convert.MAX_DETAIL_STRING + 1),
        f"events[0].error_detail.{name}",
        convert.MAX_DETAIL_STRING,
    )
    for name in [
        "failing_step",
        "file_path",
        "errno_name",
        "exception_type",
        "rollback",
        "rollback_error",
        "backup_path",
    ]
]
CASES += [
    (f"facts.{name}", _set_fact(name, limit + 1), f"facts.{name}", limit)
    for name, limit in [
        ("hostname", convert.MAX_FACT_STRING),
        ("os", convert.MAX_FACT_STRING),
        ("kernel", convert.MAX_FACT_STRING),
        ("agent_version", convert.MAX_VERSION),
        ("config_version", convert.MAX_VERSION),
    ]
]
CASES += [
    ("system_info.key", _system_info_key, "events[0].system_info", convert.MAX_SYSTEM_INFO_KEY),
    (
        "system_info.value",
        _system_info_value,
        "events[0].system_info['k']",
        convert.MAX_SYSTEM_INFO_VALUE,
    ),
    (
        "system_info.entries",
        _system_info_entries,
        "events[0].system_info",
        convert.MAX_SYSTEM_INFO_ENTRIES,
    ),
]

LONG_LABEL_KEY = "k" * (convert.LABEL_KEY_MAX + 1)


def _label_key(request: agent_pb2.CheckInRequest) -> None:
    request.facts.labels[LONG_LABEL_KEY] = "v"


def _label_value(request: agent_pb2.CheckInRequest) -> None:
    request.facts.labels["env"] = "v" * (convert.MAX_LABEL_VALUE + 1)


def _label_entries(request: agent_pb2.CheckInRequest) -> None:
    for index in range(convert.MAX_LABELS + 1):
        request.facts.labels[f"k{index}"] = "v"


CASES += [
    ("facts.labels.key", _label_key, f"facts.labels[{LONG_LABEL_KEY!r}]", convert.LABEL_KEY_MAX),
    ("facts.labels.value", _label_value, "facts.labels['env']", convert.MAX_LABEL_VALUE),
    ("facts.labels.entries", _label_entries, "facts.labels", convert.MAX_LABELS),
]

# String fields whose limit is not a length: identifiers checked as UUIDs (action_id too), and
# machine_id, which must equal the bound machine (covered by tests/test_identity.py).
NOT_LENGTH_LIMITED = {"event_id", "run_id", "machine_id", "action_id"}


def test_every_string_field_has_a_limit_case() -> None:
    covered = {case_id.rsplit(".", 1)[-1] for case_id, *_ in CASES}
    for message in (agent_pb2.MigrationEvent, agent_pb2.ErrorDetail, agent_pb2.HostFacts):
        for fd in message.DESCRIPTOR.fields:
            if fd.type == fd.TYPE_STRING and fd.name not in NOT_LENGTH_LIMITED:
                assert fd.name in covered, f"{message.DESCRIPTOR.name}.{fd.name} has no limit test"


@pytest.fixture
async def agent(running_server: RunningServer) -> AsyncIterator[AgentClient]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as channel:
        yield await AgentClient.enroll(running_server, channel)


async def _stored(server: RunningServer, model: type) -> int:
    async with server.app[app_keys.SESSIONS]() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def _refused(agent: AgentClient, request: agent_pb2.CheckInRequest) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await agent.stub.CheckIn(
            request, metadata=(("authorization", f"Bearer {agent.credential}"),)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return info.value.details() or ""


async def test_each_field_limit_is_named(running_server: RunningServer, agent: AgentClient) -> None:
    for case_id, mutate, field, limit in CASES:
        request = agent_pb2.CheckInRequest(agent_id=agent.agent_id, events=[_event()])
        request.facts.CopyFrom(agent.facts)
        mutate(request)
        details = await _refused(agent, request)
        assert details.startswith(field), (case_id, details)
        assert str(limit) in details, (case_id, details)
    assert await _stored(running_server, UpdateEvent) == 0
    # The same request within every limit is stored.
    request = agent_pb2.CheckInRequest(agent_id=agent.agent_id, events=[_event()])
    request.facts.CopyFrom(agent.facts)
    reply = await agent.stub.CheckIn(
        request, metadata=(("authorization", f"Bearer {agent.credential}"),)
    )
    assert list(reply.acknowledged_event_ids) == [request.events[0].event_id]
    assert await _stored(running_server, UpdateEvent) == 1


async def test_count_limits_are_named(running_server: RunningServer, agent: AgentClient) -> None:
    config = running_server.app[app_keys.CONFIG]
    run_id = str(uuid.uuid4())
    over = {
        "events": [_event() for _ in range(config.max_events_per_checkin + 1)],
        "run_updates": [
            run_update(run_id, agent_pb2.RUN_STATE_RUNNING)
            for _ in range(config.max_run_updates_per_checkin + 1)
        ],
        "log_lines": [
            log_line(run_id, seq) for seq in range(1, config.max_log_lines_per_checkin + 2)
        ],
        "acknowledged_action_ids": [
            str(uuid.uuid4()) for _ in range(convert_runs.MAX_ACKED_ACTIONS + 1)
        ],
    }
    limits = {
        "events": config.max_events_per_checkin,
        "run_updates": config.max_run_updates_per_checkin,
        "log_lines": config.max_log_lines_per_checkin,
        "acknowledged_action_ids": convert_runs.MAX_ACKED_ACTIONS,
    }
    for name, items in over.items():
        request = agent_pb2.CheckInRequest(agent_id=agent.agent_id, **{name: items})
        request.facts.CopyFrom(agent.facts)
        details = await _refused(agent, request)
        assert details.startswith(name), details
        assert f"the limit is {limits[name]}" in details, details
    assert await _stored(running_server, UpdateEvent) == 0
    assert await _stored(running_server, TaskLog) == 0


async def test_message_size_limit_is_named(db_url: str, tmp_path: Path) -> None:
    limit = 64 * 1024
    server = await start_server(make_server_config(db_url, tmp_path, max_message_bytes=limit))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            agent = await AgentClient.enroll(server, channel)
            request = agent_pb2.CheckInRequest(agent_id=agent.agent_id, events=[_event()])
            request.facts.CopyFrom(agent.facts)
            request.events[0].system_info["padding"] = "x" * 1000
            request.events.extend(_event() for _ in range(200))
            for event in request.events:
                event.error_message = "y" * 400
            assert request.ByteSize() > limit
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await agent.stub.CheckIn(
                    request, metadata=(("authorization", f"Bearer {agent.credential}"),)
                )
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert str(limit) in (info.value.details() or ""), info.value.details()
            assert await _stored(server, UpdateEvent) == 0
    finally:
        await server.stop()
