"""Input answers the agent refused, and the plain-text guard, on SQLite
and PostgreSQL with a real server: a refused ``provide_input`` (acknowledged while the run still
waits for the same request) reopens the prompt; answers are refused while gRPC serves plain text
off loopback."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from runs_testlib import AgentClient, run_update
from server_testlib import logged_in_http
from sqlalchemy import update
from test_inputs_server import RUNNING, rows, verified_bodies, wait_for_input

from server import app_keys
from server.app import RunningServer, start_server
from server.config import ServerConfig
from server.errors import Conflict
from server.services.inputs import InputVault, load_or_create_key
from server.storage.models import PendingActionRow


@pytest.fixture
async def server(server_config: ServerConfig) -> AsyncIterator[RunningServer]:
    running = await start_server(server_config)
    try:
        yield running
    finally:
        await running.stop()


async def test_answers_the_agent_refused_reopen_the_prompt(
    server: RunningServer, server_config: ServerConfig
) -> None:
    """The agent acknowledges a provide_input action it refused (expired by its clock, bad
    signature) without its run moving on: the prompt opens again and new answers are accepted.
    An acknowledgement that comes with the run moving on (RUNNING) keeps the record."""
    run_id, request_id = str(uuid.uuid4()), str(uuid.uuid4())
    url = f"{server.web_url}/api/v1/runs/{run_id}/inputs"
    answers = {"database_password": "pw", "upstream_token": "tok"}
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
        logged_in_http(server, "admin") as http,
    ):
        agent = await AgentClient.enroll(server, channel)
        await wait_for_input(agent, run_id, request_id)
        async with http.post(url, json={"request_id": request_id, "inputs": answers}) as reply:
            assert reply.status == 202
            first = (await reply.json())["action"]["action_id"]
        async with http.post(url, json={"request_id": request_id, "inputs": answers}) as reply:
            message = (await reply.json())["message"]
            assert reply.status == 409 and "already sent by admin-" in message
            assert message.endswith("; waiting for the agent") and " ;" not in message
        (body,) = verified_bodies(server, await agent.checkin())
        assert body.action_id == first
        # Refused by the agent: acknowledged, the run still waits for the same request.
        await agent.checkin(acknowledged_action_ids=[first])
        async with http.get(url) as reply:
            data = await reply.json()
        assert data["waiting"] is True and data["request_id"] == request_id
        assert data["answers_sent"] is False and data["answered_by"] is None
        async with http.get(f"{server.web_url}/runs/{run_id}") as reply:
            page = await reply.text()
        assert 'id="input-form"' in page and "waiting for the agent" not in page
        async with http.post(url, json={"request_id": request_id, "inputs": answers}) as reply:
            assert reply.status == 202, await reply.text()
            second = (await reply.json())["action"]["action_id"]
        # This time the agent takes them: acknowledged together with its run moving on.
        (body,) = verified_bodies(server, await agent.checkin())
        assert body.action_id == second
        await agent.checkin(
            acknowledged_action_ids=[second], run_updates=[run_update(run_id, RUNNING)]
        )
        async with http.get(url) as reply:
            data = await reply.json()
        assert data["waiting"] is False and data["answered_by"].startswith("admin-")


async def test_a_late_refusal_does_not_reopen_a_prompt_with_newer_answers_pending(
    server: RunningServer, server_config: ServerConfig
) -> None:
    """Answers delivered, then their action expired on the server before the agent's
    acknowledgement arrived: new answers were accepted meanwhile. The late acknowledgement (a
    refusal) must not reopen the prompt while those newer answers wait for delivery."""
    run_id, request_id = str(uuid.uuid4()), str(uuid.uuid4())
    url = f"{server.web_url}/api/v1/runs/{run_id}/inputs"
    answers = {"database_password": "pw", "upstream_token": "tok"}
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
        logged_in_http(server, "admin") as http,
    ):
        agent = await AgentClient.enroll(server, channel)
        await wait_for_input(agent, run_id, request_id)
        async with http.post(url, json={"request_id": request_id, "inputs": answers}) as reply:
            first = (await reply.json())["action"]["action_id"]
        await agent.checkin()  # delivered
        async with server.app[app_keys.SESSIONS]() as session, session.begin():
            await session.execute(
                update(PendingActionRow)
                .where(PendingActionRow.action_id == first)
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        async with http.post(url, json={"request_id": request_id, "inputs": answers}) as reply:
            assert reply.status == 202  # the first ones can no longer be delivered
            second = (await reply.json())["action"]["action_id"]
        await agent.checkin(acknowledged_action_ids=[first])
        async with http.get(url) as reply:
            assert (await reply.json())["answers_sent"] is True
        async with http.post(url, json={"request_id": request_id, "inputs": answers}) as reply:
            assert reply.status == 409 and "already sent" in (await reply.json())["message"]
        (body,) = verified_bodies(server, await agent.checkin())
        assert body.action_id == second


async def test_answers_are_refused_while_grpc_is_plain_text_off_loopback(
    server_config: ServerConfig, server: RunningServer
) -> None:
    """The answers travel in the check-in response: plain-text gRPC on a non-loopback address
    would let the network read them. Loopback (the demo, tests) and TLS are fine."""
    exposed = dataclasses.replace(server_config, grpc_host="0.0.0.0")
    open_server = await start_server(exposed)
    run_id, request_id = str(uuid.uuid4()), str(uuid.uuid4())
    answers = {"database_password": "pw", "upstream_token": "tok"}
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{open_server.grpc_port}") as channel,
            logged_in_http(open_server, "admin") as http,
        ):
            agent = await AgentClient.enroll(open_server, channel)
            await wait_for_input(agent, run_id, request_id)
            async with http.post(
                f"{open_server.web_url}/api/v1/runs/{run_id}/inputs",
                json={"request_id": request_id, "inputs": answers},
            ) as reply:
                assert reply.status == 409
                message = (await reply.json())["message"]
    finally:
        await open_server.stop()
    assert "plain text on 0.0.0.0" in message and "not loopback" in message
    assert "tls_cert_file" in message and "tls_key_file" in message
    assert await rows(server_config.database_url, "SELECT * FROM pending_actions") == []
    assert await rows(server_config.database_url, "SELECT * FROM run_inputs") == []

    sessions = server.app[app_keys.SESSIONS]
    vault = server.app[app_keys.SERVICES].inputs
    assert vault is not None
    key = load_or_create_key(vault.path)
    for host in ("127.0.0.1", "::1", "localhost"):
        loopback = InputVault(
            dataclasses.replace(server_config, grpc_host=host), sessions, key, vault.path
        )
        loopback.check_transport()  # no error
    for host in ("0.0.0.0", "::", "192.0.2.10", "flagpost.example.com"):
        plain = InputVault(
            dataclasses.replace(server_config, grpc_host=host), sessions, key, vault.path
        )
        with pytest.raises(Conflict, match="serve gRPC over TLS"):
            plain.check_transport()
    # With TLS configured (the vault reads the settings only), the same answers are accepted.
    tls = InputVault(
        dataclasses.replace(
            server_config,
            grpc_host="0.0.0.0",
            tls_cert_file="server.pem",
            tls_key_file="server.key",
        ),
        sessions,
        key,
        vault.path,
    )
    action = await tls.submit_answers(run_id, request_id, answers, "alice")
    assert action.kind.value == "provide_input"
