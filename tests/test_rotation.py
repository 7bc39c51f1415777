"""Credential lifetime and rotation, Enroll rate limit: a real server, both databases."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from server_testlib import make_server_config
from sqlalchemy import select, update
from test_identity import FACTS, auth, count_events, enroll, event, refused

from agent.config import load_config
from agent.daemon import Agent
from agent.enroll import enroll as agent_enroll
from agent.enroll import load_credentials
from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server import app_keys
from server.app import RunningServer, start_server
from server.grpc.interceptors import peer_key
from server.services import agents as agent_service
from server.services import enrollment
from server.services.agents import AgentIdentity
from server.services.rotation import rotation_due
from server.storage import agents as agents_storage
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
    sessions = running_server.app[app_keys.SESSIONS]
    token = await enrollment.create_token(sessions, uses=1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        reply = await enroll(stub, token)
        assert reply.HasField("credential_expires_at")  # 90 days by default
        assert reply.server_signing_key == running_server.app[app_keys.SIGNER].public_key_bytes()
        old = reply.credential
        assert not (await checkin(stub, old)).new_credential  # nothing due

        authenticator = running_server.app[app_keys.SERVICES].authenticator
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
    sessions = running_server.app[app_keys.SESSIONS]
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
        running_server.app[app_keys.SERVICES].authenticator.forget(reply.agent_id)
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
        running_server.app[app_keys.SERVICES].authenticator.forget(reply.agent_id)
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
    sessions = running_server.app[app_keys.SESSIONS]
    token = await enrollment.create_token(sessions, uses=1)
    (tmp_path / "host" / "etc").mkdir(parents=True)
    (tmp_path / "host" / "etc" / "machine-id").write_text(FACTS.machine_id + "\n")
    config = load_config(
        {"root": str(tmp_path / "host")}, env={"FLAGPOST_AGENT_STARTUP_JITTER_SECONDS": "0"}
    )
    address = f"127.0.0.1:{running_server.grpc_port}"
    first = await asyncio.to_thread(agent_enroll, address, token, FACTS, config.credentials_path)
    authenticator = running_server.app[app_keys.SERVICES].authenticator
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


async def credentials_of(running: RunningServer, agent_id: str) -> list[AgentCredential]:
    async with running.app[app_keys.SESSIONS]() as session:
        rows = await session.scalars(
            select(AgentCredential)
            .where(AgentCredential.agent_id == agent_id)
            .order_by(AgentCredential.id)
        )
        return list(rows.all())


async def test_a_replica_with_the_old_credential_cached_issues_nothing(
    running_server: RunningServer,
) -> None:
    """Two servers on one database. Server B still has the old credential in its
    authentication cache (it authenticated it just before) when the agent's first use of the
    new one on server A revokes it: B refuses the old one instead of rotating it again, and
    stores nothing of that check-in."""
    config = running_server.app[app_keys.CONFIG]
    replica = await start_server(config)  # same database, same state dir (shared keys)
    sessions = running_server.app[app_keys.SESSIONS]
    try:
        token = await enrollment.create_token(sessions, uses=1)
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as a_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{replica.grpc_port}") as b_channel,
        ):
            a = agent_pb2_grpc.AgentServiceStub(a_channel)
            b = agent_pb2_grpc.AgentServiceStub(b_channel)
            reply = await enroll(a, token)
            old = reply.credential
            await agent_service.request_rotation(sessions, reply.agent_id)
            # B authenticates the old credential (an in-flight check-in): cached, rotation due.
            cached = await replica.app[app_keys.SERVICES].authenticator.identify(old)
            assert cached.rotate_requested_at is not None
            new = (await checkin(a, old)).new_credential
            assert new
            assert not (await checkin(a, new)).new_credential  # first use: old one revoked
            events = await count_events(running_server)

            error = await refused(checkin(b, old))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert await count_events(running_server) == events  # nothing stored
            rows = await credentials_of(running_server, reply.agent_id)
            assert len(rows) == 2  # no third credential was issued
            assert rows[0].revoked_at is not None and rows[1].revoked_at is None
            assert rows[1].secret_hash == enrollment.secret_hash(new)
            # B forgot the old credential; the new one works there, with nothing more to do.
            assert (await refused(checkin(b, old))).code() == grpc.StatusCode.UNAUTHENTICATED
            assert not (await checkin(b, new)).new_credential
    finally:
        await replica.stop()


async def test_first_use_revokes_every_other_credential_newer_ones_too(
    running_server: RunningServer,
) -> None:
    sessions = running_server.app[app_keys.SESSIONS]
    token = await enrollment.create_token(sessions, uses=1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        reply = await enroll(stub, token)
        await agent_service.request_rotation(sessions, reply.agent_id)
        new = (await checkin(stub, reply.credential)).new_credential
        # A credential issued after it and never used (as a concurrent rotation in another
        # process could have), still valid when the agent first uses ``new``.
        stray = enrollment.new_credential()
        async with sessions() as session, session.begin():
            await agents_storage.store_credential(
                session, reply.agent_id, enrollment.secret_hash(stray), datetime.now(UTC)
            )
        assert not (await checkin(stub, new)).new_credential
        for revoked in (reply.credential, stray):
            assert (await refused(checkin(stub, revoked))).code() == grpc.StatusCode.UNAUTHENTICATED
        assert not (await checkin(stub, new)).new_credential
    rows = await credentials_of(running_server, reply.agent_id)
    assert [row.revoked_at is None for row in rows] == [False, True, False]


async def test_a_credential_without_expiry_is_rotated_to_one_with_expiry(
    running_server: RunningServer,
) -> None:
    """Credentials issued before expiry existed have none; with credential_ttl_days > 0 their
    next check-in rotates them (with ttl 0 nothing expires, so nothing is due)."""
    sessions = running_server.app[app_keys.SESSIONS]
    token = await enrollment.create_token(sessions, uses=1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        reply = await enroll(stub, token)
        async with sessions() as session, session.begin():
            await session.execute(
                update(AgentCredential)
                .where(AgentCredential.agent_id == reply.agent_id)
                .values(expires_at=None)
            )
        running_server.app[app_keys.SERVICES].authenticator.forget(reply.agent_id)
        rotated = await checkin(stub, reply.credential)
        assert rotated.new_credential and rotated.HasField("new_credential_expires_at")
        expiry = rotated.new_credential_expires_at.ToDatetime(tzinfo=UTC)
        assert expiry > datetime.now(UTC) + timedelta(days=89)
        assert not (await checkin(stub, rotated.new_credential)).new_credential
    never = AgentIdentity("a", "m", credential_id=1, expires_at=None)
    now = datetime.now(UTC)
    config = running_server.app[app_keys.CONFIG]
    assert rotation_due(never, config, now)
    assert not rotation_due(never, dataclasses.replace(config, credential_ttl_days=0), now)
    assert not rotation_due(never._replace(expires_at=now + timedelta(days=60)), config, now)


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("ipv4:10.0.0.5:51234", "10.0.0.5"),
        ("ipv4:10.0.0.5", "10.0.0.5"),
        # IPv4-mapped IPv6 (a dual-stack listener): the IPv4 client, one bucket either way.
        ("ipv6:[::ffff:10.0.0.5]:51234", "10.0.0.5"),
        ("ipv6:%5B::ffff:10.0.0.5%5D:51234", "10.0.0.5"),
        # Any other IPv6 address: its /64 (one host owns a whole /64 to pick addresses from).
        ("ipv6:[2001:db8:1:2::1]:443", "2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:2:ffff:ffff:ffff:ffff]:443", "2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:3::1]:443", "2001:db8:1:3::/64"),
        ("ipv6:[fe80::1%25eth0]:443", "fe80::/64"),
        ("ipv6:[::1]:5555", "::/64"),
        # No IP address: one bucket named after the transport.
        ("unix:/run/flagpost/grpc.sock", "unix"),
        ("unix:/tmp/other.sock", "unix"),
        ("unix-abstract:flagpost", "unix-abstract"),
        ("vsock:3:50051", "vsock"),
        ("ipv4:not-an-address:1", "ipv4"),
        ("", "unknown"),
    ],
)
def test_enroll_rate_limit_key_normalises_the_peer(peer: str, key: str) -> None:
    assert peer_key(peer) == key


async def test_settle_and_forget_touch_only_their_agents_cached_credentials(
    running_server: RunningServer,
) -> None:
    """The authentication cache: settling an agent's credential drops that agent's other
    cached credentials and forgetting an agent drops its own, never another agent's (each
    drop shows as one more database lookup at the next use)."""
    sessions = running_server.app[app_keys.SESSIONS]
    authenticator = agent_service.Authenticator(sessions)
    token = await enrollment.create_token(sessions, uses=2)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        a = (await enroll(stub, token)).credential
        b = (await enroll(stub, token)).credential
    a_identity = await authenticator.identify(a)
    await authenticator.identify(b)
    assert authenticator.lookups == 2
    await authenticator.identify(a)
    await authenticator.identify(b)
    assert authenticator.lookups == 2  # both cached

    # A's credential replaced by another one of A's: the cached A entry goes, B's stays.
    authenticator.settle(a_identity._replace(credential_id=a_identity.credential_id + 1000))
    await authenticator.identify(b)
    assert authenticator.lookups == 2
    await authenticator.identify(a)
    assert authenticator.lookups == 3
    # Settling A's own credential keeps it.
    authenticator.settle(a_identity)
    await authenticator.identify(a)
    assert authenticator.lookups == 3

    authenticator.forget(b_id := (await authenticator.identify(b)).agent_id)
    assert b_id != a_identity.agent_id
    await authenticator.identify(a)
    assert authenticator.lookups == 3
    await authenticator.identify(b)
    assert authenticator.lookups == 4
