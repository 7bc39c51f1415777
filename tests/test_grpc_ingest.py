"""gRPC ingest end to end: real server (gRPC + web on one loop), real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from server_testlib import new_event
from sqlalchemy import func, select, update

from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server import app_keys
from server.app import RunningServer, start_server
from server.config import ServerConfig
from server.domain import Category, HostFacts, Severity
from server.errors import ResourceExhausted, Unavailable
from server.services import agents as agent_service
from server.services import enrollment
from server.services.ingest import IngestWriter
from server.storage.db import create_engine_for_url, make_sessionmaker
from server.storage.models import Agent, AgentCredential, EnrollmentToken, UpdateEvent


def ts(when: datetime | None = None) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime(when or datetime.now(UTC))
    return stamp


def event(**overrides: Any) -> agent_pb2.MigrationEvent:
    fields: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": agent_pb2.EVENT_TYPE_MIGRATION_EXECUTION,
        "status": agent_pb2.EVENT_STATUS_FAILED,
        "message": "migration 1 -> 2 failed",
        "error_message": "[Errno 13] Permission denied: '/etc/app/config'",
        "error_detail": agent_pb2.ErrorDetail(
            failing_step="move_legacy_config", errno=13, errno_name="EACCES", rollback="succeeded"
        ),
        "migration_from": "1",
        "migration_to": "2",
        "occurred_at": ts(),
        "system_info": {"python": "3.11"},
        "run_id": str(uuid.uuid4()),
    }
    fields.update(overrides)
    return agent_pb2.MigrationEvent(**fields)


FACTS = agent_pb2.HostFacts(
    hostname="web-1", os="Debian 12", kernel="6.1", agent_version="0.1.0", config_version="1"
)


@pytest.fixture
async def channel(running_server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as ch:
        yield ch


async def enroll(server: RunningServer, channel: grpc.aio.Channel) -> tuple[str, str]:
    token = await enrollment.create_token(server.app[app_keys.SESSIONS], uses=1)
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    reply = await stub.Enroll(agent_pb2.EnrollRequest(token=token, facts=FACTS))
    return reply.agent_id, reply.credential


def auth(credential: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {credential}"),)


async def count_events(server: RunningServer) -> int:
    async with server.app[app_keys.SESSIONS]() as session:
        return int(
            (await session.execute(select(func.count()).select_from(UpdateEvent))).scalar_one()
        )


async def test_same_batch_twice_is_stored_once_and_fully_acked(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    agent_id, credential = await enroll(running_server, channel)
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    events = [event(), event(status=agent_pb2.EVENT_STATUS_PARTIAL), event()]
    events.append(events[0])  # a duplicate inside the batch is fine
    ids = [e.event_id for e in events]
    request = agent_pb2.CheckInRequest(agent_id=agent_id, facts=FACTS, events=events)

    first = await stub.CheckIn(request, metadata=auth(credential))
    second = await stub.CheckIn(request, metadata=auth(credential))

    assert list(first.acknowledged_event_ids) == ids
    assert list(second.acknowledged_event_ids) == ids
    assert (
        first.next_checkin_seconds == running_server.app[app_keys.CONFIG].checkin_interval_seconds
    )
    assert await count_events(running_server) == 3
    async with running_server.app[app_keys.SESSIONS]() as session:
        rows = (await session.execute(select(UpdateEvent).order_by(UpdateEvent.id))).scalars().all()
        agent = await session.get(Agent, agent_id)
    assert [r.event_id for r in rows] == ids[:3]
    failed = rows[0]
    assert failed.agent_id == agent_id
    assert failed.category == Category.MIGRATION
    assert (failed.event_type, failed.status, failed.severity) == (
        "migration_execution",
        "failed",
        "error",
    )
    assert failed.error_detail == {
        "failing_step": "move_legacy_config",
        "errno": 13,
        "errno_name": "EACCES",
        "rollback": "succeeded",
    }
    assert failed.system_info == {"python": "3.11"}
    assert failed.occurred_at.tzinfo is not None
    assert rows[1].severity == Severity.WARNING
    assert agent is not None and agent.last_checkin_at is not None
    assert agent.hostname == "web-1" and agent.config_version == "1"


async def test_checkin_refreshes_facts_and_accepts_empty_batches(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    agent_id, credential = await enroll(running_server, channel)
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    new_facts = agent_pb2.HostFacts(hostname="web-1b", config_version="3", disk_free_bytes=42)
    reply = await stub.CheckIn(agent_pb2.CheckInRequest(facts=new_facts), metadata=auth(credential))
    assert list(reply.acknowledged_event_ids) == []
    async with running_server.app[app_keys.SESSIONS]() as session:
        agent = await session.get(Agent, agent_id)
    assert agent is not None
    assert (agent.hostname, agent.config_version, agent.disk_free_bytes) == ("web-1b", "3", 42)
    assert agent.facts["hostname"] == "web-1b"


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"event_id": "not-a-uuid"}, "events[2].event_id"),
        ({"event_type": agent_pb2.EVENT_TYPE_UNSPECIFIED}, "events[2].event_type"),
        ({"status": agent_pb2.EVENT_STATUS_UNSPECIFIED}, "events[2].status"),
        (
            {
                "event_type": agent_pb2.EVENT_TYPE_MIGRATION_DETECTION,
                "status": agent_pb2.EVENT_STATUS_PARTIAL,
            },
            "events[2].status",
        ),
        ({"message": "x" * 1025}, "events[2].message"),
        ({"message": "nul\x00byte"}, "events[2].message"),
        ({"run_id": "run-1"}, "events[2].run_id"),
        ({"occurred_at": ts(datetime(1999, 12, 31, tzinfo=UTC))}, "events[2].occurred_at"),
        ({"occurred_at": ts(datetime.now(UTC) + timedelta(hours=25))}, "events[2].occurred_at"),
        ({"migration_to": "v" * 65}, "events[2].migration_to"),
        (
            {"error_detail": agent_pb2.ErrorDetail(file_path="p" * 4097)},
            "events[2].error_detail.file_path",
        ),
        ({"system_info": {f"k{i}": "v" for i in range(65)}}, "events[2].system_info"),
    ],
)
async def test_one_malformed_event_rejects_the_whole_checkin(
    running_server: RunningServer, channel: grpc.aio.Channel, bad: dict[str, Any], field: str
) -> None:
    _, credential = await enroll(running_server, channel)
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    events = [event(), event(), event(**bad), event()]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CheckIn(agent_pb2.CheckInRequest(events=events), metadata=auth(credential))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (caught.value.details() or "")
    assert await count_events(running_server) == 0


async def test_missing_occurred_at_and_too_many_events_are_invalid(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    _, credential = await enroll(running_server, channel)
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    missing = event()
    missing.ClearField("occurred_at")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CheckIn(
            agent_pb2.CheckInRequest(events=[event(), missing]), metadata=auth(credential)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[1].occurred_at" in (caught.value.details() or "")

    limit = running_server.app[app_keys.CONFIG].max_events_per_checkin
    too_many = [event() for _ in range(limit + 1)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CheckIn(agent_pb2.CheckInRequest(events=too_many), metadata=auth(credential))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(limit) in (caught.value.details() or "")
    assert await count_events(running_server) == 0


async def test_credentials_are_checked(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    agent_id, credential = await enroll(running_server, channel)
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    request = agent_pb2.CheckInRequest(events=[event()])
    for metadata in [
        (),
        (("authorization", "Bearer fpa_wrong"),),
        (("authorization", f"Basic {credential}"),),
        (("authorization", "Bearer " + credential[:-2] + "xx"),),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CheckIn(request, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
    # Another agent's id in the request: the credential does not speak for it.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CheckIn(
            agent_pb2.CheckInRequest(agent_id=str(uuid.uuid4()), events=[event()]),
            metadata=auth(credential),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A revoked agent is refused with PERMISSION_DENIED.
    services = running_server.app[app_keys.SERVICES]
    await agent_service.revoke(
        running_server.app[app_keys.SESSIONS], agent_id, services.authenticator
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CheckIn(request, metadata=auth(credential))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await count_events(running_server) == 0


async def test_secrets_are_stored_only_as_hashes(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    sessions = running_server.app[app_keys.SESSIONS]
    token = await enrollment.create_token(sessions, uses=1)
    assert token.startswith("fpt_") and len(token) >= 40
    reply = await agent_pb2_grpc.AgentServiceStub(channel).Enroll(
        agent_pb2.EnrollRequest(token=token, facts=FACTS)
    )
    assert reply.credential.startswith("fpa_")
    async with sessions() as session:
        stored_token = (await session.execute(select(EnrollmentToken))).scalar_one()
        stored_cred = (await session.execute(select(AgentCredential))).scalar_one()
    assert stored_token.token_hash == enrollment.secret_hash(token) != token
    assert token not in stored_token.prefix or len(stored_token.prefix) < len(token)
    assert stored_cred.secret_hash == enrollment.secret_hash(reply.credential)
    assert stored_token.uses_left == 0


async def test_used_up_expired_and_unknown_tokens_are_refused(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    sessions = running_server.app[app_keys.SESSIONS]
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    two_uses = await enrollment.create_token(sessions, uses=2)
    first = await stub.Enroll(agent_pb2.EnrollRequest(token=two_uses, facts=FACTS))
    second = await stub.Enroll(agent_pb2.EnrollRequest(token=two_uses, facts=FACTS))
    assert first.agent_id != second.agent_id and first.credential != second.credential
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Enroll(agent_pb2.EnrollRequest(token=two_uses, facts=FACTS))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no uses left" in (caught.value.details() or "")

    expired = await enrollment.create_token(sessions, uses=5)
    async with sessions() as session, session.begin():
        await session.execute(
            update(EnrollmentToken)
            .where(EnrollmentToken.token_hash == enrollment.secret_hash(expired))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Enroll(agent_pb2.EnrollRequest(token=expired, facts=FACTS))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (caught.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Enroll(agent_pb2.EnrollRequest(token="fpt_" + "A" * 43, facts=FACTS))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Enroll(agent_pb2.EnrollRequest(token=two_uses))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "facts" in (caught.value.details() or "")
    async with sessions() as session:
        agents = (await session.execute(select(func.count()).select_from(Agent))).scalar_one()
    assert agents == 2


async def test_concurrent_enrollments_never_overspend_a_token(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    token = await enrollment.create_token(running_server.app[app_keys.SESSIONS], uses=3)
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    results = await asyncio.gather(
        *[stub.Enroll(agent_pb2.EnrollRequest(token=token, facts=FACTS)) for _ in range(8)],
        return_exceptions=True,
    )
    ok = [r for r in results if isinstance(r, agent_pb2.EnrollResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 3
    assert len(refused) == 5
    assert all(r.code() == grpc.StatusCode.UNAUTHENTICATED for r in refused)


async def test_health_and_reflection(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "flagpost.v1.AgentService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    def reflect() -> tuple[list[str], list[str], list[str]]:
        with grpc.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as sync_channel:
            database = ProtoReflectionDescriptorDatabase(sync_channel)
            services = list(database.get_services())
            pool = descriptor_pool.DescriptorPool(database)
            method = pool.FindServiceByName("flagpost.v1.AgentService").FindMethodByName("CheckIn")
            fields = [f.name for f in method.input_type.fields]
            out_fields = [f.name for f in method.output_type.fields]
            return services, fields, out_fields

    services, fields, out_fields = await asyncio.to_thread(reflect)
    assert "flagpost.v1.AgentService" in services
    assert "grpc.health.v1.Health" in services
    assert fields[:3] == ["agent_id", "facts", "events"]
    assert "acknowledged_event_ids" in out_fields


async def test_queue_full_answers_resource_exhausted_with_retry_hint(
    server_config: ServerConfig,
) -> None:
    config = replace(server_config, ingest_queue_max_events=3, retry_after_ms=1234)
    server = await start_server(config)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            _, credential = await enroll(server, channel)
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            call = stub.CheckIn(
                agent_pb2.CheckInRequest(facts=FACTS, events=[event() for _ in range(4)]),
                metadata=auth(credential),
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            trailing = dict(caught.value.trailing_metadata() or ())
            assert trailing.get("retry-after-ms") == "1234"
            assert await count_events(server) == 0
    finally:
        await server.stop()


# --- the IngestWriter directly ------------------------------------------------------------


@pytest.fixture
async def writer_env(server_config: ServerConfig) -> AsyncIterator[tuple[Any, str]]:
    engine = create_engine_for_url(server_config.database_url)
    sessions = make_sessionmaker(engine)
    token = await enrollment.create_token(sessions, uses=1)
    agent_id, _ = await enrollment.enroll(sessions, token, HostFacts(hostname="h"))
    try:
        yield sessions, agent_id
    finally:
        await engine.dispose()


async def test_writer_bounds_its_queue(
    server_config: ServerConfig, writer_env: tuple[Any, str]
) -> None:
    sessions, agent_id = writer_env
    writer = IngestWriter(replace(server_config, ingest_queue_max_events=5), sessions)
    writer.start()
    try:
        results = await asyncio.gather(
            *[writer.submit(agent_id, None, [new_event(agent_id)]) for _ in range(8)],
            return_exceptions=True,
        )
    finally:
        await writer.stop()
    exhausted = [r for r in results if isinstance(r, ResourceExhausted)]
    assert len(exhausted) == 3
    assert all(e.retry_after_ms == server_config.retry_after_ms for e in exhausted)
    assert writer.checkins == 5 and writer.events_stored == 5 and writer.rejected == 3
    assert writer.queued_events == 0


async def test_writer_survives_a_failed_batch(
    server_config: ServerConfig, writer_env: tuple[Any, str]
) -> None:
    sessions, agent_id = writer_env
    writer = IngestWriter(server_config, sessions)
    writer.start()
    try:
        ghost = str(uuid.uuid4())  # no such agent: the foreign key fails the transaction
        with pytest.raises(Unavailable):
            await writer.submit(ghost, None, [new_event(ghost)])
        result = await writer.submit(agent_id, None, [new_event(agent_id), new_event(agent_id)])
    finally:
        await writer.stop()
    assert result.stored == 2 and result.duplicates == 0
    assert writer.failed_batches == 1 and writer.events_stored == 2
    async with sessions() as session:
        stored = (await session.execute(select(func.count()).select_from(UpdateEvent))).scalar_one()
    assert stored == 2


async def test_writer_stop_drains_the_queue(
    server_config: ServerConfig, writer_env: tuple[Any, str]
) -> None:
    sessions, agent_id = writer_env
    writer = IngestWriter(replace(server_config, ingest_batch_max_events=7), sessions)
    writer.start()
    pending = [
        asyncio.ensure_future(
            writer.submit(agent_id, None, [new_event(agent_id) for _ in range(3)])
        )
        for _ in range(20)
    ]
    await asyncio.sleep(0)  # let every submit enqueue
    await writer.stop()
    assert all(task.done() and task.exception() is None for task in pending)
    assert writer.events_stored == 60
    assert 1 < writer.batches < 20  # grouped: several check-ins per transaction
    with pytest.raises(Unavailable):
        await writer.submit(agent_id, None, [new_event(agent_id)])
    async with sessions() as session:
        stored = (await session.execute(select(func.count()).select_from(UpdateEvent))).scalar_one()
        agent = await session.get(Agent, agent_id)
    assert stored == 60
    assert agent is not None and agent.last_checkin_at is not None


# --- the interceptor on its own server ----------------------------------------------------


async def test_interceptor_hides_unexpected_errors_and_maps_flagpost_errors() -> None:
    from server.errors import NotFound
    from server.grpc.interceptors import FlagpostInterceptor, current_agent_id

    seen: list[str] = []

    async def authenticate(credential: str) -> str:
        if credential != "fpa_good":
            from server.errors import Unauthenticated

            raise Unauthenticated("invalid agent credential")
        return "agent-1"

    async def check_in(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(current_agent_id())
        if request == b"boom":
            raise RuntimeError("db password is hunter2")
        raise NotFound("no such run")

    handler = grpc.method_handlers_generic_handler(
        "flagpost.v1.AgentService", {"CheckIn": grpc.unary_unary_rpc_method_handler(check_in)}
    )
    server = grpc.aio.server(interceptors=[FlagpostInterceptor(authenticate)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/flagpost.v1.AgentService/CheckIn")
            good = (("authorization", "Bearer fpa_good"),)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(b"boom", metadata=good)
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            assert "hunter2" not in (caught.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(b"other", metadata=good)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert caught.value.details() == "no such run"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(b"other", metadata=(("authorization", "Bearer fpa_bad"),))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(None)
    assert seen == ["agent-1", "agent-1"]  # the handler never ran unauthenticated
