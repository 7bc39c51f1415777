"""Issue 6 acceptance with a real server and a real agent daemon (``python -m agent run``): a
migration that needs two secrets waits for them, a wrong one is asked again with that field's
error, right ones resume the run to SUCCEEDED; server and agent restarts while it waits; and a
unique secret ends up only in the agent's 0600 secrets file -- not in the database (any table),
the server's or the agent's logs, the SSE frames, or any other file of the agent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import stat
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from server_testlib import create_web_user, logged_in_http
from test_end_to_end import REPO, enrolled_agent
from test_inputs_server import capture_stream, database_bytes

from agent.specs.builtin import legacy_config_with_secrets
from server import app_keys
from server.app import RunningServer, start_server
from server.config import ServerConfig
from server.domain import RunFilter, RunState
from server.services import runs as runs_service

DB_URL = "postgresql://fleet@db.example/fleet"


def secrets_for_this_test() -> tuple[str, str]:
    """Two unique secrets (searched for everywhere afterwards)."""
    return f"db-pw-{uuid.uuid4().hex}", f"up-tok-{uuid.uuid4().hex}"


def write_legacy(root: Path, db_password: str, upstream_token: str) -> None:
    conf = root / "etc" / "aggregator" / "agent.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(
        legacy_config_with_secrets(
            server_url="https://flagpost.example.net:50051",
            agent_token="e2e-token-value",
            database_url=DB_URL,
            database_password=db_password,
            upstream_token=upstream_token,
        )
    )


@contextlib.asynccontextmanager
async def agent_daemon(root: Path, log_file: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """``flagpost-agent run`` on ``root``; its stderr (the agent's log) appended to
    ``log_file``. Stopped with SIGTERM (SIGCONT first, in case a test froze it)."""
    env = {
        **os.environ,
        "FLAGPOST_AGENT_STARTUP_JITTER_SECONDS": "0",
        "FLAGPOST_AGENT_LOG_LEVEL": "DEBUG",
    }
    with log_file.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "--root", str(root), "run",
            cwd=REPO, env=env, stdout=log, stderr=log,
        )  # fmt: skip
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), timeout=30)


async def wait_for_run(
    server: RunningServer, check: Callable[[Any], bool], timeout: float = 40.0
) -> Any:
    """Poll the (single) run until ``check(run)`` holds; returns the run summary."""
    sessions = server.app[app_keys.SESSIONS]
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        page = await runs_service.list_runs(sessions, RunFilter())
        if page.runs:
            last = (await runs_service.get_run(sessions, page.runs[0].id)).run
            if check(last):
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"the run never reached the expected state; last seen: {last}")


def waiting_for(*names: str) -> Callable[[Any], bool]:
    def check(run: Any) -> bool:
        asked = [field.name for field in run.input_request.fields] if run.input_request else []
        return run.state == RunState.AWAITING_INPUT and sorted(asked) == sorted(names)

    return check


async def inputs_of(http: aiohttp.ClientSession, server: RunningServer, run_id: str) -> Any:
    async with http.get(f"{server.web_url}/api/v1/runs/{run_id}/inputs") as response:
        assert response.status == 200
        return await response.json()


async def answer(
    http: aiohttp.ClientSession, server: RunningServer, run_id: str, **values: str
) -> None:
    prompt = await inputs_of(http, server, run_id)
    assert prompt["waiting"] is True
    async with http.post(
        f"{server.web_url}/api/v1/runs/{run_id}/inputs",
        json={"request_id": prompt["request_id"], "inputs": values},
    ) as response:
        assert response.status == 202, await response.text()


def forms(*secrets: str) -> list[bytes]:
    """Each secret as it could leak: plain, base64 and url-safe base64."""
    found: list[bytes] = []
    for secret in secrets:
        raw = secret.encode()
        found += [raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw)]
    return found


async def test_two_passwords_one_wrong_then_succeeded_and_the_secret_stays_put(
    server_config: ServerConfig, agent_base: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    db_password, upstream_token = secrets_for_this_test()
    root = agent_base / "needs-secrets"
    write_legacy(root, db_password, upstream_token)
    agent_log = tmp_path / "agent.log"
    frames: list[bytes] = []
    server = await start_server(server_config)
    try:
        await enrolled_agent(server, root)
        alice = await create_web_user(server, "admin", name="alice")
        async with (
            logged_in_http(server, account=alice) as http,
            agent_daemon(root, agent_log),
        ):
            history = asyncio.create_task(
                capture_stream(http, f"{server.web_url}/history/stream", frames)
            )
            run = await wait_for_run(server, waiting_for("database_password", "upstream_token"))
            run_frames = asyncio.create_task(
                capture_stream(http, f"{server.web_url}/runs/{run.id}/stream", frames)
            )
            # The header of every page counts the waiting run; its History rows carry a badge.
            async with http.get(f"{server.web_url}/runs") as response:
                assert 'id="header-waiting"' in await response.text()
            async with http.get(f"{server.web_url}/history") as response:
                page = await response.text()
            assert f'class="tag tag-waiting" href="/runs/{run.id}"' in page

            await answer(
                http, server, run.id, database_password="wrong-" + db_password,
                upstream_token=upstream_token,
            )  # fmt: skip
            asked_again = await wait_for_run(server, waiting_for("database_password"))
            [field] = asked_again.input_request.fields
            assert "wrong password" in field.error and db_password not in field.error
            assert asked_again.input_request.request_id != run.input_request.request_id

            await answer(http, server, run.id, database_password=db_password)
            done = await wait_for_run(server, lambda r: r.state == RunState.SUCCEEDED)
            assert done.id == run.id and done.input_answered_by == "alice"
            await asyncio.sleep(1.0)  # the streams carry the final frames
            for task in (history, run_frames):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            async with http.get(f"{server.web_url}/runs") as response:
                assert 'id="header-waiting"' not in await response.text()
            async with http.get(f"{server.web_url}/history") as response:
                assert "tag-waiting" not in await response.text()
    finally:
        await server.stop()

    secrets_file = root / "etc" / "flagpost" / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    content = secrets_file.read_text()
    assert db_password in content and upstream_token in content

    assert frames, "the SSE streams sent nothing"
    places: dict[str, bytes] = {
        "database (every table)": await database_bytes(server_config),
        "server log": caplog.text.encode(),
        "agent log": agent_log.read_bytes(),
        "SSE frames": b"".join(frames),
    }
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p != secrets_file):
        places[f"agent file {path.relative_to(root)}"] = path.read_bytes()
    assert any(name.startswith("agent file var") for name in places), "no agent state searched"
    every_form = forms(db_password, upstream_token)
    leaks = [(where, f[:12]) for where, data in places.items() for f in every_form if f in data]
    assert leaks == [], f"a secret leaked: {leaks}"


async def test_agent_restart_while_waiting_resumes_waiting(
    running_server: RunningServer, agent_base: Path, tmp_path: Path
) -> None:
    """The daemon is stopped (SIGTERM) while its run waits; answers are given while it is
    down; the restarted daemon resumes the same run, in the same request (the same fields are
    still needed), so those answers are accepted and the run ends SUCCEEDED."""
    db_password, upstream_token = secrets_for_this_test()
    root = agent_base / "restarts"
    write_legacy(root, db_password, upstream_token)
    await enrolled_agent(running_server, root)
    both = waiting_for("database_password", "upstream_token")
    async with agent_daemon(root, tmp_path / "agent.log"):
        first = await wait_for_run(running_server, both)
    async with logged_in_http(running_server) as http:
        await answer(
            http, running_server, first.id, database_password=db_password,
            upstream_token=upstream_token,
        )  # fmt: skip
        async with agent_daemon(root, tmp_path / "agent.log"):
            done = await wait_for_run(running_server, lambda r: r.state == RunState.SUCCEEDED)
    assert done.id == first.id
    assert done.input_request is not None
    assert done.input_request.request_id == first.input_request.request_id
    log = (tmp_path / "agent.log").read_text()
    assert "left waiting for input by an earlier agent process" in log


async def test_server_restart_keeps_the_prompt_and_delivers_answers_given_before_it(
    server_config: ServerConfig, agent_base: Path, tmp_path: Path
) -> None:
    db_password, upstream_token = secrets_for_this_test()
    root = agent_base / "server-restarts"
    write_legacy(root, db_password, upstream_token)
    server = await start_server(server_config)
    fixed = {"grpc_port": server.grpc_port, "web_port": server.web_port}
    config = server_config.__class__(**{**_fields(server_config), **fixed})
    try:
        await enrolled_agent(server, root)
        alice = await create_web_user(server, "admin", name="alice")
        async with agent_daemon(root, tmp_path / "agent.log") as daemon:
            run = await wait_for_run(server, waiting_for("database_password", "upstream_token"))
            # Freeze the agent so nothing is delivered, answer, then restart the server.
            daemon.send_signal(signal.SIGSTOP)
            async with logged_in_http(server, account=alice) as http:
                await answer(
                    http, server, run.id, database_password=db_password,
                    upstream_token=upstream_token,
                )  # fmt: skip
            await server.stop()
            server = await start_server(config)
            async with logged_in_http(server, account=alice) as http:
                prompt = await inputs_of(http, server, run.id)
            assert prompt["waiting"] is True and prompt["answers_sent"] is True
            assert prompt["answered_by"] == "alice"
            daemon.send_signal(signal.SIGCONT)  # it checks in with the restarted server
            done = await wait_for_run(server, lambda r: r.state == RunState.SUCCEEDED)
        assert done.id == run.id
    finally:
        await server.stop()
    content = (root / "etc" / "flagpost" / "secrets.json").read_text()
    assert db_password in content and upstream_token in content


def _fields(config: ServerConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}
