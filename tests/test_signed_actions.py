"""Signed actions, server side and end to end: the key file, its registry across replicas, and a
real agent that executes a properly signed action and reports refused ones to the History."""

from __future__ import annotations

import asyncio
import dataclasses
import stat
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from server_testlib import action_body, make_server_config
from sqlalchemy import select
from test_identity import FACTS, enroll

from agent.config import load_config
from agent.daemon import Agent
from agent.enroll import enroll as agent_enroll
from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server import app_keys
from server.app import start_server
from server.domain import RunFilter
from server.errors import ConfigError
from server.grpc.convert_runs import action_to_proto
from server.services import enrollment
from server.services import runs as runs_service
from server.signing import KEY_FILE_NAME, load_or_create
from server.storage.models import UpdateEvent


def test_key_file_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    first = load_or_create(tmp_path / "state")
    path = tmp_path / "state" / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create(tmp_path / "state")
    assert again.key_id == first.key_id and len(again.public_key_bytes()) == 32
    public = Ed25519PublicKey.from_public_bytes(again.public_key_bytes())
    public.verify(first.sign(b"body"), b"body")  # raises InvalidSignature
    path.chmod(0o640)
    with pytest.raises(ConfigError) as caught:
        load_or_create(tmp_path / "state")
    assert str(path) in caught.value.message and "chmod 600" in caught.value.message


async def test_restart_keeps_the_key_and_a_second_key_refuses_to_start(
    db_url: str, tmp_path: Path
) -> None:
    config = make_server_config(db_url, tmp_path)
    server = await start_server(config)
    try:
        key_id = server.app[app_keys.SIGNER].key_id
        token = await enrollment.create_token(server.app[app_keys.SESSIONS], uses=1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            pinned = await enroll(agent_pb2_grpc.AgentServiceStub(channel), token)
    finally:
        await server.stop()
    server = await start_server(config)  # same state dir: same key, agents keep working
    try:
        assert server.app[app_keys.SIGNER].key_id == key_id
        assert server.app[app_keys.SIGNER].public_key_bytes() == pinned.server_signing_key
    finally:
        await server.stop()
    other = dataclasses.replace(config, state_dir=tmp_path / "replica-state")
    with pytest.raises(ConfigError) as caught:
        await start_server(other)
    message = caught.value.message
    assert key_id in message and "copy signing-key.pem" in message
    assert load_or_create(tmp_path / "replica-state").key_id in message


async def test_real_agent_executes_a_signed_action_and_reports_refusals(
    running_server: object, tmp_path: Path
) -> None:
    server = running_server
    app = server.app  # type: ignore[attr-defined]
    sessions, config = app[app_keys.SESSIONS], app[app_keys.CONFIG]
    token = await enrollment.create_token(sessions, uses=1)
    (tmp_path / "host" / "etc").mkdir(parents=True)
    (tmp_path / "host" / "etc" / "machine-id").write_text(FACTS.machine_id + "\n")
    agent_config = load_config(
        {"root": str(tmp_path / "host")}, env={"FLAGPOST_AGENT_STARTUP_JITTER_SECONDS": "0"}
    )
    address = f"127.0.0.1:{server.grpc_port}"  # type: ignore[attr-defined]
    credentials = await asyncio.to_thread(
        agent_enroll, address, token, FACTS, agent_config.credentials_path
    )
    assert credentials.server_signing_key == app[app_keys.SIGNER].public_key_bytes()
    action = await runs_service.request_run(sessions, config, credentials.agent_id, "alice")

    def first_start() -> int:
        with Agent(agent_config) as agent:
            return agent.once()  # receives, verifies, executes, reports

    def after_restart(actions: list[agent_pb2.Action]) -> tuple[int, int]:
        with Agent(agent_config) as agent:
            agent.handle_actions(actions, agent.outbox)
            return agent.run_requested(), agent.once()

    assert await asyncio.to_thread(first_start) == 0
    page = await runs_service.list_runs(sessions, RunFilter())
    assert [r.requested_action_id for r in page.runs] == [action.action_id]
    # The same action, signed by the real server, once more (after a restart): a replay.
    signed = action_to_proto(action, app[app_keys.SIGNER])
    assert action_body(signed, credentials.server_signing_key).nonce.hex() == action.nonce
    tampered = agent_pb2.Action()
    tampered.CopyFrom(signed)
    tampered.body = tampered.body[:-1] + bytes([tampered.body[-1] ^ 1])
    forged = action_to_proto(
        dataclasses.replace(action, agent_id="someone-else"), app[app_keys.SIGNER]
    )
    assert await asyncio.to_thread(after_restart, [signed, tampered, forged]) == (0, 0)
    page = await runs_service.list_runs(sessions, RunFilter())
    assert len(page.runs) == 1  # nothing more was executed
    async with sessions() as session:
        notices = [
            e.message
            for e in (await session.scalars(select(UpdateEvent))).all()
            if e.category == "agent"
        ]
    assert any(f"{action.action_id} refused: replayed" in m for m in notices), notices
    assert any(f"{action.action_id} refused: bad signature" in m for m in notices)
    assert any("addressed to another agent ('someone-else'" in m for m in notices)
