"""The server side of AWAITING_INPUT, on SQLite and PostgreSQL: a scripted agent
reports a run waiting for input over real gRPC check-ins; an admin answers over the web; the
answers reach the agent inside the signed ``provide_input`` action body and nowhere else (the
database keeps only ciphertext, deleted on the agent's acknowledgement); clear errors for every
bad answer; a restart between answering and delivery still delivers; the key file is 0600.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import os
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from runs_testlib import AgentClient, run_update
from server_testlib import logged_in_http
from sqlalchemy import text

from flagpost.v1 import agent_pb2
from server import app_keys
from server.app import RunningServer, start_server
from server.config import ServerConfig
from server.errors import ConfigError
from server.services.inputs import KEY_FILE
from server.storage.db import create_engine_for_url
from server.storage.models import Base

AWAITING = agent_pb2.RUN_STATE_AWAITING_INPUT
RUNNING = agent_pb2.RUN_STATE_RUNNING
SUCCEEDED = agent_pb2.RUN_STATE_SUCCEEDED


def ask(request_id: str, error: str = "") -> agent_pb2.InputRequest:
    return agent_pb2.InputRequest(
        request_id=request_id,
        fields=[
            agent_pb2.InputField(
                name="database_password", label="Database password", secret=True, error=error
            ),
            agent_pb2.InputField(name="upstream_token", label="Upstream API token", secret=True),
        ],
    )


async def wait_for_input(agent: AgentClient, run_id: str, request_id: str, error: str = "") -> None:
    reply = await agent.checkin(
        run_updates=[run_update(run_id, AWAITING, input_request=ask(request_id, error))]
    )
    assert len(reply.acknowledged_run_update_ids) == 1


def verified_bodies(server: RunningServer, reply: agent_pb2.CheckInResponse) -> list[Any]:
    """Every action of ``reply``, its signature checked with the server's key, as ActionBody."""
    key = Ed25519PublicKey.from_public_bytes(
        server.app[app_keys.SERVICES].signer.public_key_bytes()
    )
    bodies = []
    for action in reply.actions:
        key.verify(action.signature, action.body)  # raises InvalidSignature
        body = agent_pb2.ActionBody()
        body.ParseFromString(action.body)
        bodies.append(body)
    return bodies


async def table_text(url: str) -> str:
    """Every row of every table, as text (PostgreSQL) -- what "the database" holds."""
    engine = create_engine_for_url(url)
    parts: list[str] = []
    try:
        async with engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                rows = await conn.execute(text(f"SELECT t::text FROM {table.name} t"))
                parts.extend(str(row[0]) for row in rows)
    finally:
        await engine.dispose()
    return "\n".join(parts)


async def database_bytes(config: ServerConfig) -> bytes:
    """The SQLite file(s) (with the WAL) byte for byte, or every PostgreSQL row as text."""
    if config.is_sqlite:
        path = Path(config.database_url.split("///", 1)[1])
        return b"".join(
            p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name)
        )
    return (await table_text(config.database_url)).encode()


async def rows(url: str, sql: str, **params: Any) -> list[Any]:
    engine = create_engine_for_url(url)
    try:
        async with engine.connect() as conn:
            return list(await conn.execute(text(sql), params))
    finally:
        await engine.dispose()


async def capture_stream(http: aiohttp.ClientSession, url: str, into: list[bytes]) -> None:
    async with http.get(url, headers={"Accept": "text/event-stream"}) as response:
        assert response.status == 200
        async for chunk in response.content.iter_any():
            into.append(chunk)


@pytest.fixture
async def server(server_config: ServerConfig) -> AsyncIterator[RunningServer]:
    running = await start_server(server_config)
    try:
        yield running
    finally:
        await running.stop()


async def test_answers_reach_the_agent_signed_and_nowhere_else(
    server: RunningServer, server_config: ServerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = f"pw-{uuid.uuid4().hex}"
    token = f"tok-{uuid.uuid4().hex}"
    run_id, request_id = str(uuid.uuid4()), str(uuid.uuid4())
    frames: list[bytes] = []
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
        logged_in_http(server, "admin") as http,
        logged_in_http(server, "viewer") as viewer,
    ):
        agent = await AgentClient.enroll(server, channel)
        await agent.checkin(run_updates=[run_update(run_id, RUNNING)])
        reader = asyncio.create_task(
            capture_stream(http, f"{server.web_url}/runs/{run_id}/stream", frames)
        )
        await wait_for_input(agent, run_id, request_id)

        # Stored and shown: the API, the page (password fields), the /runs badge.
        async with viewer.get(f"{server.web_url}/api/v1/runs/{run_id}/inputs") as reply:
            data = await reply.json()
        assert data["waiting"] is True and data["request_id"] == request_id
        assert [f["name"] for f in data["fields"]] == ["database_password", "upstream_token"]
        async with http.get(f"{server.web_url}/runs/{run_id}") as reply:
            page = await reply.text()
        assert 'id="input-form"' in page and page.count('type="password"') == 2
        assert 'autocomplete="new-password"' in page
        async with viewer.get(f"{server.web_url}/runs/{run_id}") as reply:
            page = await reply.text()
        assert 'id="input-form"' not in page and "An admin must provide" in page
        async with viewer.get(f"{server.web_url}/runs?state=awaiting_input") as reply:
            assert "waiting for input</a>" in await reply.text()
        async with viewer.get(f"{server.web_url}/history") as reply:
            assert "1 run waiting for input" in await reply.text()

        url = f"{server.web_url}/api/v1/runs/{run_id}/inputs"
        answers = {"database_password": secret, "upstream_token": token}
        # A viewer may not answer.
        async with viewer.post(url, json={"request_id": request_id, "inputs": answers}) as reply:
            assert reply.status == 403
        # Clear errors naming the field / limit / reason; nothing queued.
        async with http.post(
            url, json={"request_id": request_id, "inputs": {"database_password": secret}}
        ) as reply:
            assert reply.status == 400
            assert "inputs.upstream_token" in (await reply.json())["message"]
        too_long = "x" * (server_config.input_max_bytes + 1)
        async with http.post(
            url, json={"request_id": request_id, "inputs": {**answers, "upstream_token": too_long}}
        ) as reply:
            body = await reply.json()
            assert reply.status == 400 and "input_max_bytes" in body["message"]
            assert str(server_config.input_max_bytes) in body["message"]
        async with http.post(
            url, json={"request_id": str(uuid.uuid4()), "inputs": answers}
        ) as reply:
            assert reply.status == 409 and "stale" in (await reply.json())["message"]
        assert await rows(server_config.database_url, "SELECT * FROM pending_actions") == []

        # The right answers: 202, the stored action holds no answer, only ciphertext is kept.
        async with http.post(url, json={"request_id": request_id, "inputs": answers}) as reply:
            assert reply.status == 202, await reply.text()
            action = (await reply.json())["action"]
        assert action["kind"] == "provide_input"
        assert action["params"] == {"run_id": run_id, "request_id": request_id}
        async with http.post(url, json={"request_id": request_id, "inputs": answers}) as reply:
            assert reply.status == 409 and "already sent" in (await reply.json())["message"]
        stored = await rows(server_config.database_url, "SELECT params, kind FROM pending_actions")
        assert len(stored) == 1 and "input." not in str(stored[0][0])
        ciphertext = await rows(
            server_config.database_url,
            "SELECT ciphertext, action_id FROM run_inputs WHERE run_id = :r",
            r=run_id,
        )
        assert len(ciphertext) == 1 and ciphertext[0][1] == action["action_id"]
        async with http.get(f"{server.web_url}/runs/{run_id}") as reply:
            assert "waiting for the agent" in await reply.text()

        # Delivered inside the signed body.
        reply = await agent.checkin()
        (body,) = verified_bodies(server, reply)
        assert body.kind == "provide_input" and body.agent_id == agent.agent_id
        assert dict(body.params) == {
            "run_id": run_id,
            "request_id": request_id,
            "input.database_password": secret,
            "input.upstream_token": token,
        }
        # Acknowledged: the ciphertext goes; the run resumes and succeeds.
        await agent.checkin(
            acknowledged_action_ids=[action["action_id"]],
            run_updates=[run_update(run_id, RUNNING)],
        )
        assert (
            await rows(
                server_config.database_url, "SELECT * FROM run_inputs WHERE run_id = :r", r=run_id
            )
            == []
        )
        await agent.checkin(run_updates=[run_update(run_id, SUCCEEDED)])
        async with viewer.get(f"{server.web_url}/api/v1/runs/{run_id}/inputs") as reply:
            data = await reply.json()
        assert data["waiting"] is False and data["request_id"] == request_id  # the record
        assert data["answered_by"].startswith("admin-") and data["answered_at"]
        async with http.post(url, json={"request_id": request_id, "inputs": answers}) as reply:
            assert reply.status == 409 and "not waiting" in (await reply.json())["message"]
        await asyncio.sleep(0.3)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader

    sse = b"".join(frames)
    assert b"input_request" in sse and b"database_password" in sse  # the request, live
    haystacks = {
        "database": await database_bytes(server_config),
        "logs": caplog.text.encode(),
        "sse": sse,
    }
    # The haystacks are real: the run, the request and the stream are in them.
    assert run_id.encode() in haystacks["database"] and request_id.encode() in sse
    for value in (secret, token):
        for needle in (value.encode(), base64.b64encode(value.encode())):
            for where, haystack in haystacks.items():
                assert needle not in haystack, f"{value!r} found in {where}"


async def test_restart_between_answer_and_delivery_still_delivers(
    server_config: ServerConfig,
) -> None:
    run_id, request_id = str(uuid.uuid4()), str(uuid.uuid4())
    first = await start_server(server_config)
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{first.grpc_port}") as channel,
            logged_in_http(first, "admin") as http,
        ):
            agent = await AgentClient.enroll(first, channel)
            await wait_for_input(agent, run_id, request_id)
            async with http.post(
                f"{first.web_url}/runs/{run_id}/inputs",
                data={
                    "request_id": request_id,
                    "input.database_password": "s3cret-before-restart",
                    "input.upstream_token": "t0ken",
                    "csrf_token": http.headers["X-CSRF-Token"],
                },
                allow_redirects=False,
            ) as reply:
                assert reply.status == 303
                assert reply.headers["Location"].endswith("?inputs=sent")
    finally:
        await first.stop()
    key_file = server_config.state_dir / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    second = await start_server(server_config)  # same database, same state dir
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{second.grpc_port}") as channel:
            again = AgentClient(channel, agent.agent_id, agent.credential, agent.facts)
            (body,) = verified_bodies(second, await again.checkin())
            assert body.params["input.database_password"] == "s3cret-before-restart"
            assert body.params["request_id"] == request_id
    finally:
        await second.stop()


async def test_key_file_readable_by_others_refuses_to_start(server_config: ServerConfig) -> None:
    key_file = server_config.state_dir / KEY_FILE
    key_file.parent.mkdir(parents=True, exist_ok=True)
    running = await start_server(server_config)
    await running.stop()
    os.chmod(key_file, 0o644)
    with pytest.raises(ConfigError, match=r"inputs\.key.*chmod 600"):
        await start_server(server_config)


BAD_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    ("missing", {}, "run_updates[0].input_request: is required when state is AWAITING_INPUT"),
    (
        "not a uuid",
        {"input_request": agent_pb2.InputRequest(request_id="nope")},
        "run_updates[0].input_request.request_id: must be a UUID",
    ),
    (
        "no fields",
        {"input_request": agent_pb2.InputRequest(request_id=str(uuid.uuid4()))},
        "1 to 16 allowed",
    ),
    (
        "17 fields",
        {
            "input_request": agent_pb2.InputRequest(
                request_id=str(uuid.uuid4()),
                fields=[agent_pb2.InputField(name=f"f{i}", label="x") for i in range(17)],
            )
        },
        "has 17 fields; 1 to 16 allowed",
    ),
    (
        "bad name",
        {
            "input_request": agent_pb2.InputRequest(
                request_id=str(uuid.uuid4()), fields=[agent_pb2.InputField(name="Bad-Name")]
            )
        },
        "fields[0].name: must be 1 to 64 characters of a-z, 0-9 and _",
    ),
    (
        "repeated name",
        {
            "input_request": agent_pb2.InputRequest(
                request_id=str(uuid.uuid4()),
                fields=[agent_pb2.InputField(name="a"), agent_pb2.InputField(name="a")],
            )
        },
        "fields[1].name: repeats the name 'a'",
    ),
    (
        "long label",
        {
            "input_request": agent_pb2.InputRequest(
                request_id=str(uuid.uuid4()),
                fields=[agent_pb2.InputField(name="a", label="l" * 201)],
            )
        },
        "fields[0].label: longer than 200 characters",
    ),
    (
        "long error",
        {
            "input_request": agent_pb2.InputRequest(
                request_id=str(uuid.uuid4()),
                fields=[agent_pb2.InputField(name="a", error="e" * 501)],
            )
        },
        "fields[0].error: longer than 500 characters",
    ),
]


async def test_bad_input_requests_are_refused_naming_the_field(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agent = await AgentClient.enroll(server, channel)
        for case, fields, message in BAD_REQUESTS:
            update = run_update(str(uuid.uuid4()), AWAITING, **fields)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await agent.checkin(run_updates=[update])
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
            assert message in (caught.value.details() or ""), (case, caught.value.details())
        # Nothing was stored by the refused check-ins.
        runs = await rows(server.app[app_keys.CONFIG].database_url, "SELECT id FROM migration_runs")
        assert runs == []


async def test_a_new_ask_reopens_the_form_and_a_run_that_ends_drops_its_answers(
    server: RunningServer, server_config: ServerConfig
) -> None:
    run_id, first_ask, second_ask = (str(uuid.uuid4()) for _ in range(3))
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
        logged_in_http(server, "admin") as http,
    ):
        agent = await AgentClient.enroll(server, channel)
        await wait_for_input(agent, run_id, first_ask)
        url = f"{server.web_url}/api/v1/runs/{run_id}/inputs"
        answers = {"database_password": "wrong", "upstream_token": "t"}
        async with http.post(url, json={"request_id": first_ask, "inputs": answers}) as reply:
            assert reply.status == 202
            action_id = (await reply.json())["action"]["action_id"]
        # The agent got the answers, one was wrong: it acknowledges and asks again.
        await agent.checkin()
        await agent.checkin(acknowledged_action_ids=[action_id])
        await wait_for_input(agent, run_id, second_ask, error="wrong password")
        async with http.get(url) as reply:
            data = await reply.json()
        assert data["request_id"] == second_ask and data["answers_sent"] is False
        assert data["fields"][0]["error"] == "wrong password"
        async with http.get(f"{server.web_url}/runs/{run_id}") as reply:
            page = await reply.text()
        assert 'id="input-database_password-error"' in page and "wrong password" in page
        async with http.post(url, json={"request_id": second_ask, "inputs": answers}) as reply:
            assert reply.status == 202
        assert len(await rows(server_config.database_url, "SELECT * FROM run_inputs")) == 1
        # The run is cancelled before the agent fetched them: the ciphertext goes too.
        await agent.checkin(run_updates=[run_update(run_id, agent_pb2.RUN_STATE_CANCELLED)])
        assert await rows(server_config.database_url, "SELECT * FROM run_inputs") == []
        reply = await agent.checkin()
        assert [a for a in verified_bodies(server, reply) if a.kind == "provide_input"] == []


async def test_a_replica_with_another_input_key_refuses_to_start(
    server_config: ServerConfig,
) -> None:
    """Replicas share one database: one whose inputs.key differs could not decrypt answers the
    others took, so it refuses to start (the signing key, copied, is not the problem)."""
    first = await start_server(server_config)
    await first.stop()
    replica_dir = server_config.state_dir.parent / "replica-state"
    replica_dir.mkdir()
    (replica_dir / "signing-key.pem").write_bytes(
        (server_config.state_dir / "signing-key.pem").read_bytes()
    )
    (replica_dir / "signing-key.pem").chmod(0o600)
    replica = dataclasses.replace(server_config, state_dir=replica_dir)
    with pytest.raises(ConfigError) as caught:
        await start_server(replica)
    message = caught.value.message
    assert "server inputs key mismatch" in message and "copy inputs.key" in message
    # With the key file copied too, the replica starts.
    (replica_dir / KEY_FILE).write_bytes((server_config.state_dir / KEY_FILE).read_bytes())
    (replica_dir / KEY_FILE).chmod(0o600)
    second = await start_server(replica)
    await second.stop()


async def test_concurrent_answers_one_wins_the_others_are_told(server: RunningServer) -> None:
    """Six admins press "send" at once: exactly one answer is queued (202), the others get 409,
    and exactly one provide_input action and one ciphertext exist -- on SQLite too, where there
    is no row lock: the first write of the transaction takes the database's write lock."""
    run_id, request_id = str(uuid.uuid4()), str(uuid.uuid4())
    url = f"{server.web_url}/api/v1/runs/{run_id}/inputs"
    answers = {"database_password": "pw", "upstream_token": "tok"}
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
        logged_in_http(server, "admin") as http,
    ):
        agent = await AgentClient.enroll(server, channel)
        await agent.checkin(run_updates=[run_update(run_id, RUNNING)])
        await wait_for_input(agent, run_id, request_id)

        async def submit() -> int:
            async with http.post(url, json={"request_id": request_id, "inputs": answers}) as r:
                return r.status

        statuses = sorted(await asyncio.gather(*(submit() for _ in range(6))))
    assert statuses == [202, 409, 409, 409, 409, 409]
    url_db = server.app[app_keys.CONFIG].database_url
    sql = "SELECT count(*) FROM pending_actions WHERE kind = 'provide_input'"
    actions = await rows(url_db, sql)
    assert actions[0][0] == 1
    assert (await rows(url_db, "SELECT count(*) FROM run_inputs"))[0][0] == 1
