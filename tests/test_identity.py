"""Issue 5, part D: enrollment tokens (list, revoke, refusals) and agent identity (machine binding,
revoked agents), against real servers, real databases and real agent processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select, update

from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server import app_keys
from server.app import RunningServer
from server.services import agents as agent_service
from server.services import enrollment
from server.storage.models import Agent, EnrollmentToken, UpdateEvent

REPO = Path(__file__).resolve().parent.parent
MACHINE = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
OTHER_MACHINE = "aaaabbbbccccddddeeeeffff00001111"
FACTS = agent_pb2.HostFacts(
    hostname="id-host", os="Debian 12", kernel="6.1", agent_version="0.1.0", machine_id=MACHINE
)
LEGACY = """\
# aggregator agent configuration
server_url = https://flagpost.example.net:50051
agent_token = identity-token-value
check_interval = 300
"""


def auth(credential: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {credential}"),)


def event() -> agent_pb2.MigrationEvent:
    stamp = agent_pb2.MigrationEvent().occurred_at
    stamp.FromDatetime(datetime.now(UTC))
    return agent_pb2.MigrationEvent(
        event_id=str(uuid.uuid4()),
        event_type=agent_pb2.EVENT_TYPE_MIGRATION_DETECTION,
        status=agent_pb2.EVENT_STATUS_SUCCESS,
        migration_from="1",
        migration_to="4",
        occurred_at=stamp,
    )


async def count_events(server: RunningServer) -> int:
    async with server.app[app_keys.SESSIONS]() as session:
        result = await session.execute(select(func.count()).select_from(UpdateEvent))
        return int(result.scalar_one())


async def enroll(
    stub: agent_pb2_grpc.AgentServiceStub, token: str, facts: agent_pb2.HostFacts = FACTS
) -> agent_pb2.EnrollResponse:
    reply: agent_pb2.EnrollResponse = await stub.Enroll(
        agent_pb2.EnrollRequest(token=token, facts=facts)
    )
    return reply


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# --- enrollment tokens ---------------------------------------------------------------------


async def test_expired_used_up_and_revoked_tokens_are_refused(
    running_server: RunningServer,
) -> None:
    sessions = running_server.app[app_keys.SESSIONS]
    expired = await enrollment.create_token(sessions, uses=5)
    async with sessions() as session, session.begin():
        await session.execute(
            update(EnrollmentToken)
            .where(EnrollmentToken.token_hash == enrollment.secret_hash(expired))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    used_up = await enrollment.create_token(sessions, uses=1)
    revoked = await enrollment.create_token(sessions, uses=5)
    prefix = revoked[: enrollment.DISPLAY_PREFIX_CHARS]
    assert await enrollment.revoke_token(sessions, prefix) == 1

    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        assert (await enroll(stub, used_up)).credential.startswith("fpa_")
        for token, message in (
            (expired, "enrollment token has expired"),
            (used_up, "enrollment token has no uses left"),
            (revoked, "enrollment token has been revoked"),
            ("fpt_" + "x" * 43, "invalid enrollment token"),
        ):
            error = await refused(enroll(stub, token))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, token[:12]
            assert error.details() == message

    async with sessions() as session:
        agents = (await session.execute(select(func.count()).select_from(Agent))).scalar_one()
    assert agents == 1  # only the one good enrollment registered an agent
    states = {t.prefix: t.state for t in await enrollment.list_tokens(sessions)}
    assert states[expired[:12]] == enrollment.TokenState.EXPIRED
    assert states[used_up[:12]] == enrollment.TokenState.USED_UP
    assert states[prefix] == enrollment.TokenState.REVOKED


def server_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_token_list_and_revoke_commands(sqlite_db_url: str) -> None:
    db = ("--database-url", sqlite_db_url)
    tokens = [server_cli("token", "create", "--uses", "2", *db).stdout.strip() for _ in range(2)]
    forever = server_cli("token", "create", "--expires", "never", *db).stdout.strip()
    assert all(t.startswith("fpt_") for t in [*tokens, forever])

    listing = server_cli("token", "list", *db)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["ID", "PREFIX", "CREATED", "EXPIRES", "USES", "LEFT", "STATE"]
    assert len(lines) == 4
    for token in (*tokens, forever):
        assert token not in listing.stdout + listing.stderr  # never the token itself
        assert token[:12] in listing.stdout
    by_prefix = {line.split()[1]: line for line in lines[1:]}
    assert by_prefix[forever[:12]].split()[-3:] == ["never", "1", "active"]
    assert by_prefix[tokens[0][:12]].split()[-2:] == ["2", "active"]

    by_prefix_revoke = server_cli("token", "revoke", tokens[0][:12], *db)
    assert by_prefix_revoke.returncode == 0, by_prefix_revoke.stderr
    assert "revoked 1 enrollment token" in by_prefix_revoke.stdout
    token_id = by_prefix[tokens[1][:12]].split()[0]
    by_id = server_cli("token", "revoke", token_id, *db)
    assert by_id.returncode == 0, by_id.stderr

    lines = server_cli("token", "list", *db).stdout.splitlines()
    states = {line.split()[1]: line.split()[-1] for line in lines[1:]}
    assert states == {tokens[0][:12]: "revoked", tokens[1][:12]: "revoked", forever[:12]: "active"}

    again = server_cli("token", "revoke", tokens[0][:12], *db)
    assert again.returncode == 1 and "no unrevoked enrollment token" in again.stderr
    whole = server_cli("token", "revoke", forever, *db)
    assert whole.returncode == 1 and "not the whole token" in whole.stderr
    assert forever not in whole.stderr  # the refused secret is not echoed back
    garbage = server_cli("token", "revoke", "nonsense", *db)
    assert garbage.returncode == 1 and "expected a token id or a prefix" in garbage.stderr


# --- machine binding over gRPC -------------------------------------------------------------


async def test_checkin_must_come_from_the_enrolled_machine(running_server: RunningServer) -> None:
    sessions = running_server.app[app_keys.SESSIONS]
    authenticator = running_server.app[app_keys.SERVICES].authenticator
    token = await enrollment.create_token(sessions, uses=1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        reply = await enroll(stub, token)
        metadata = auth(reply.credential)

        good = agent_pb2.CheckInRequest(facts=FACTS, events=[event()])
        await stub.CheckIn(good, metadata=metadata)
        lookups = authenticator.lookups
        assert await count_events(running_server) == 1

        elsewhere = agent_pb2.HostFacts()
        elsewhere.CopyFrom(FACTS)
        elsewhere.machine_id = OTHER_MACHINE
        error = await refused(
            stub.CheckIn(
                agent_pb2.CheckInRequest(facts=elsewhere, events=[event()]), metadata=metadata
            )
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error.details() == "credential bound to another machine"
        # The same from a fresh database lookup (cache dropped) as from the cache.
        authenticator.forget(reply.agent_id)
        error = await refused(
            stub.CheckIn(
                agent_pb2.CheckInRequest(facts=elsewhere, events=[event()]), metadata=metadata
            )
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert authenticator.lookups == lookups + 1
        lookups = authenticator.lookups

        error = await refused(
            stub.CheckIn(agent_pb2.CheckInRequest(events=[event()]), metadata=metadata)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "facts" in (error.details() or "") and "machine_id" in (error.details() or "")

        blank = agent_pb2.HostFacts()
        blank.CopyFrom(FACTS)
        blank.machine_id = ""
        error = await refused(
            stub.CheckIn(agent_pb2.CheckInRequest(facts=blank, events=[event()]), metadata=metadata)
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED

        # Nothing of the refused check-ins was stored, and the binding did not move.
        assert await count_events(running_server) == 1
        async with sessions() as session:
            agent = await session.get(Agent, reply.agent_id)
            assert agent is not None and agent.machine_id == MACHINE

        # The enrolled machine still checks in, and the check cost no extra lookups: the bound
        # machine id comes with the cached credential.
        await stub.CheckIn(
            agent_pb2.CheckInRequest(facts=FACTS, events=[event()]), metadata=metadata
        )
        assert await count_events(running_server) == 2
        assert authenticator.lookups == lookups


# --- real agent processes -------------------------------------------------------------------


async def agent_cli(root: Path, *args: str) -> tuple[int, str]:
    """``python -m agent --root ROOT ARGS`` off the server's loop: (exit code, output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "--root",
        str(root),
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def enrolled_root(server: RunningServer, root: Path, machine_id: str) -> None:
    """A scratch host: its own machine id and a legacy config, enrolled with a fresh token."""
    (root / "etc" / "aggregator").mkdir(parents=True)
    (root / "etc" / "machine-id").write_text(machine_id + "\n")
    (root / "etc" / "aggregator" / "agent.conf").write_text(LEGACY)
    token = await enrollment.create_token(server.app[app_keys.SESSIONS], uses=1)
    code, out = await agent_cli(
        root, "enroll", "--server", f"127.0.0.1:{server.grpc_port}", "--token", token
    )
    assert code == 0, out
    assert token not in out


async def agent_row(server: RunningServer) -> Agent:
    async with server.app[app_keys.SESSIONS]() as session:
        (row,) = (await session.execute(select(Agent))).scalars().all()
        return row


async def test_copied_agent_state_is_refused_on_another_machine(
    running_server: RunningServer, agent_base: Path
) -> None:
    original = agent_base / "original"
    await enrolled_root(running_server, original, MACHINE)
    code, out = await agent_cli(original, "once")
    assert code == 0, out
    stored = await count_events(running_server)
    assert stored == 2  # detection + execution
    before = await agent_row(running_server)
    assert before.machine_id == MACHINE

    # The whole host copied (state dir, credentials, outbox) onto a machine with another id.
    copy = agent_base / "copy"
    shutil.copytree(original, copy)
    (copy / "etc" / "machine-id").write_text(OTHER_MACHINE + "\n")
    code, out = await agent_cli(copy, "once")
    assert code == 1, out
    assert "PERMISSION_DENIED" in out and "credential bound to another machine" in out
    assert await count_events(running_server) == stored
    after = await agent_row(running_server)
    assert (after.machine_id, after.last_checkin_at) == (MACHINE, before.last_checkin_at)

    # The original host keeps working (its re-run reports not_needed).
    code, out = await agent_cli(original, "once")
    assert code == 0, out
    assert await count_events(running_server) == stored + 1


async def test_revoked_agent_process_gets_permission_denied(
    running_server: RunningServer, agent_base: Path
) -> None:
    root = agent_base / "revoked"
    await enrolled_root(running_server, root, MACHINE)
    code, out = await agent_cli(root, "once")
    assert code == 0, out
    stored = await count_events(running_server)

    agent = await agent_row(running_server)
    services = running_server.app[app_keys.SERVICES]
    await agent_service.revoke(
        running_server.app[app_keys.SESSIONS], agent.id, services.authenticator
    )
    code, out = await agent_cli(root, "once")
    assert code == 1, out
    assert "PERMISSION_DENIED" in out and "this agent has been revoked" in out
    assert await count_events(running_server) == stored
