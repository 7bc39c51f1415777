"""Credential lifetime and rotation, Enroll rate limit: a real server, both databases."""

from __future__ import annotations

import asyncio
import logging
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from server_testlib import make_server_config
from sqlalchemy import select, update
from test_identity import FACTS, auth, enroll, event, refused

from agent.config import load_config
from agent.daemon import Agent
from agent.enroll import enroll as agent_enroll
from agent.enroll import load_credentials
from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server import keys
from server.app import RunningServer, start_server
from server.services import agents as agent_service
from server.services import enrollment
from server.storage.models import AgentCredential, UpdateEvent


async def checkin(
    stub: agent_pb2_grpc.AgentServiceStub, credential: str
) -> agent_pb2.CheckInResponse:
    reply: agent_pb2.CheckInResponse = await stub.CheckIn(
        agent_pb2.CheckInRequest(facts=FACTS, events=[event()]), metadata=auth(credential)
    )
    return reply


async def test_rotation_by_command_old_valid_until_new_used(
    running_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sessions = running_server.app[keys.SESSIONS]
    token = await enrollment.create_token(sessions, uses=1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        reply = await enroll(stub, token)
        assert reply.HasField("credential_expires_at")  # 90 days by default
        assert reply.server_signing_key == running_server.app[keys.SIGNER].public_key_bytes()
        old = reply.credential
        assert not (await checkin(stub, old)).new_credential  # nothing due

        authenticator = running_server.app[keys.SERVICES].authenticator
        await agent_service.request_rotation(sessions, reply.agent_id, authenticator)
        rotated = await checkin(stub, old)
        new = rotated.new_credential
        assert (
            new.startswith("fpa_") and new != old and rotated.HasField("new_credential_expires_at")
        )
        # Lost response: the agent keeps the old one; the unused new one is replaced.
        again = await checkin(stub, old)
        fresh = again.new_credential
        assert fresh and fresh not in (old, new)
        assert (await refused(checkin(stub, new))).code() == grpc.StatusCode.UNAUTHENTICATED
        # First use of the fresh one: no further rotation; the old one is refused at once.
        assert not (await checkin(stub, fresh)).new_credential
        error = await refused(checkin(stub, old))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert not (await checkin(stub, fresh)).new_credential
    text = caplog.text
    for secret in (old, new, fresh):
        assert secret not in text


async def test_automatic_rotation_near_expiry_and_expired_refused(
    running_server: RunningServer,
) -> None:
    sessions = running_server.app[keys.SESSIONS]
    token = await enrollment.create_token(sessions, uses=1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        reply = await enroll(stub, token)
        soon = datetime.now(UTC) + timedelta(days=3)  # inside credential_rotate_before_days
        async with sessions() as session, session.begin():
            await session.execute(
                update(AgentCredential)
                .where(AgentCredential.secret_hash == enrollment.secret_hash(reply.credential))
                .values(expires_at=soon)
            )
        running_server.app[keys.SERVICES].authenticator.forget(reply.agent_id)
        rotated = await checkin(stub, reply.credential)
        assert rotated.new_credential
        expiry = rotated.new_credential_expires_at.ToDatetime(tzinfo=UTC)
        assert expiry > datetime.now(UTC) + timedelta(days=80)
        assert not (await checkin(stub, rotated.new_credential)).new_credential

        past = datetime.now(UTC) - timedelta(seconds=1)
        async with sessions() as session, session.begin():
            await session.execute(
                update(AgentCredential)
                .where(
                    AgentCredential.secret_hash == enrollment.secret_hash(rotated.new_credential)
                )
                .values(expires_at=past)
            )
        running_server.app[keys.SERVICES].authenticator.forget(reply.agent_id)
        error = await refused(checkin(stub, rotated.new_credential))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "credential expired at" in (error.details() or "")
    assert "re-enroll" in (error.details() or "")


async def test_enroll_rate_limit_per_client_address(db_url: str, tmp_path: Path) -> None:
    server = await start_server(make_server_config(db_url, tmp_path, enroll_rate_per_minute=2))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            for _ in range(2):  # bad tokens count too: that is what the limit is for
                error = await refused(enroll(stub, "fpt_nope"))
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            call = stub.Enroll(agent_pb2.EnrollRequest(token="fpt_nope", facts=FACTS))
            error = await refused(call)
            trailing = dict(await call.trailing_metadata() or ())
    finally:
        await server.stop()
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many enrollment attempts: the limit is 2 per 60 s" in (error.details() or "")
    assert int(trailing["retry-after-ms"]) > 0


async def test_a_real_agent_stores_and_uses_a_rotated_credential(
    running_server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sessions = running_server.app[keys.SESSIONS]
    token = await enrollment.create_token(sessions, uses=1)
    (tmp_path / "host" / "etc").mkdir(parents=True)
    (tmp_path / "host" / "etc" / "machine-id").write_text(FACTS.machine_id + "\n")
    config = load_config(
        {"root": str(tmp_path / "host")}, env={"FLAGPOST_AGENT_STARTUP_JITTER_SECONDS": "0"}
    )
    address = f"127.0.0.1:{running_server.grpc_port}"
    first = await asyncio.to_thread(agent_enroll, address, token, FACTS, config.credentials_path)
    authenticator = running_server.app[keys.SERVICES].authenticator
    await agent_service.request_rotation(sessions, first.agent_id, authenticator)

    def once() -> int:
        with Agent(config) as agent:
            return agent.once()

    assert await asyncio.to_thread(once) == 0  # receives and stores the new credential
    stored = load_credentials(config.credentials_path)
    assert stored is not None and stored.credential != first.credential
    assert stat.S_IMODE(config.credentials_path.stat().st_mode) == 0o600
    assert stored.server_signing_key == first.server_signing_key and stored.credential_expires_at
    assert await asyncio.to_thread(once) == 0  # uses it: the old one is revoked
    async with grpc.aio.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        error = await refused(checkin(stub, first.credential))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert not (await checkin(stub, stored.credential)).new_credential
    assert first.credential not in caplog.text and stored.credential not in caplog.text
    async with sessions() as session:
        texts = [
            f"{e.message} {e.error_message} {e.system_info} {e.error_detail}"
            for e in (await session.scalars(select(UpdateEvent))).all()
        ]
    assert texts and not [t for t in texts if stored.credential in t or first.credential in t]
