"""Issue 13 acceptance with a real server, a real ``flagpost-agent run`` daemon and the
``flagpost-server migration`` CLI, on SQLite and PostgreSQL: the sample spec previewed (the
host's files byte-identical, no backup), run to version 3, run again (not needed), reverted
(byte-identical), run and hand-edited then reverted (refused, naming the file); the hosts per
version follow on the server; a spec asking for a secret through AWAITING_INPUT; and the moved
password and the typed token appear nowhere but their 0600 files: not in the database, the
server's or the agent's log, the events, the diffs or the live streams' frames.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import stat
import sys
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from agent_tests.spec_testlib import PASSWORD, SAMPLE_PATH, host, tree
from server_testlib import logged_in_http
from test_end_to_end import REPO, enrolled_agent, stored_events
from test_inputs_server import capture_stream, database_bytes

from server import app_keys
from server.app import RunningServer
from server.domain import RunDetail, RunFilter, RunState
from server.services import runs as runs_service
from server.services import specs as specs_service

TOKEN = "tok-3f1e9a-Typed-Into-The-Form"
TOKEN_SPEC = """\
id = "tokenapp"
title = "tokenapp: the API token, asked for once and kept in a 0600 file"
target = "2"

[[versions]]
version = "2"
file = "/etc/tokenapp/secret.toml"
format = "toml"
require = ["api.token"]

[[versions]]
version = "1"
file = "/etc/tokenapp/app.toml"
format = "toml"
require = ["api.url"]

[[steps]]
name = "add_token"
from = "1"
to = "2"
ops = [
  { op = "require_input", name = "api_token", prompt = "API token", key = "api.token" },
  { op = "move_keys", keys = ["api.token"], to_file = "/etc/tokenapp/secret.toml", mode = "0600" },
]
"""


async def migration(server: RunningServer, *args: str, expect: int = 0) -> Any:
    """``flagpost-server migration ARGS --json`` against the server's database: its JSON."""
    config = server.app[app_keys.CONFIG]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "migration", *args, "--json",
        "--database-url", config.database_url,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == expect, (args, out.decode(), err.decode())
    return json.loads(out)


@pytest.fixture
async def daemon(running_server: RunningServer, agent_base: Path) -> AsyncIterator[Path]:
    """An enrolled agent daemon on a fresh root holding a v1 myapp and a v1 tokenapp; yields
    the root. Its output goes to ``<root>.log``."""
    root = agent_base / "host"
    host(root)
    (root / "etc/tokenapp").mkdir(parents=True)
    (root / "etc/tokenapp/app.toml").write_text('[api]\nurl = "https://api.example"\n')
    await enrolled_agent(running_server, root)
    log = (agent_base / "host.log").open("wb")
    env = {**os.environ, "FLAGPOST_AGENT_STARTUP_JITTER_SECONDS": "0"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "--root", str(root), "--log-level", "DEBUG", "run",
        cwd=REPO, env=env, stdout=log, stderr=log,
    )  # fmt: skip
    try:
        yield root
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), timeout=30)
        log.close()


def etc(root: Path) -> dict[str, tuple[str, bytes, int]]:
    return tree(root / "etc")


def backups(root: Path) -> list[Path]:
    directory = root / "var/lib/flagpost-agent/backups"
    return sorted(directory.iterdir()) if directory.is_dir() else []


async def until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_sample_spec_preview_run_revert_and_secrets_stay_put(
    running_server: RunningServer,
    daemon: Path,
    agent_base: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    root = daemon
    credentials = root / "var/lib/flagpost-agent/credentials.json"
    agent_id = json.loads(credentials.read_text())["agent_id"]
    frames: list[bytes] = []
    async with logged_in_http(running_server, "admin") as http:
        history = asyncio.create_task(
            capture_stream(http, f"{running_server.web_url}/history/stream", frames)
        )
        try:
            await _flow(running_server, root, agent_id, tmp_path, http, frames)
        finally:
            history.cancel()
            await asyncio.gather(history, return_exceptions=True)

    # The secrets are in their 0600 files and nowhere the server or the agent's log keeps.
    secrets_file = root / "etc/myapp/secrets.toml"
    token_file = root / "etc/tokenapp/secret.toml"
    assert tomllib.loads(token_file.read_text())["api"]["token"] == TOKEN
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    stored = await database_bytes(running_server.app[app_keys.CONFIG])
    events = await stored_events(running_server)
    event_text = "\n".join(
        repr({c.name: getattr(e, c.name) for c in e.__table__.columns}) for e in events
    )
    assert any(e.diffs for e in events), "the preview's diffs are stored"
    agent_log = (agent_base / "host.log").read_bytes()
    assert b"revert" in agent_log, "the daemon's log was captured"
    for secret in (PASSWORD, TOKEN):
        assert secret.encode() not in stored, f"{secret} in the database"
        assert secret not in event_text, f"{secret} in an event"
        assert secret not in caplog.text, f"{secret} in the server's log"
        assert secret.encode() not in agent_log, f"{secret} in the agent's log"
        assert secret.encode() not in b"".join(frames), f"{secret} in a stream frame"


async def _flow(
    server: RunningServer,
    root: Path,
    agent_id: str,
    tmp_path: Path,
    http: Any,
    frames: list[bytes],
) -> None:
    sessions = server.app[app_keys.SESSIONS]
    start = etc(root)

    added = await migration(server, "add", str(SAMPLE_PATH))
    assert (added["spec_id"], added["revision"], added["created"]) == ("myapp", 1, True)
    again = await migration(server, "add", str(SAMPLE_PATH))
    assert (again["revision"], again["created"]) == (1, False)
    token_path = tmp_path / "tokenapp.toml"
    token_path.write_text(TOKEN_SPEC)
    await migration(server, "add", str(token_path))

    # Preview: the diffs come back, the host is untouched and nothing was backed up.
    preview = await migration(server, "preview", "myapp", "--agent", agent_id, "--wait")
    [answer] = preview["previews"]
    assert (answer["status"], answer["from"], answer["to"]) == ("success", "1", "3")
    by_path = {d["path"]: d for d in answer["diffs"]}
    assert set(by_path) == {
        "/etc/myapp/myapp.ini",
        "/etc/myapp/config.toml",
        "/etc/myapp/secrets.toml",
    }
    assert "-password = ********" in by_path["/etc/myapp/myapp.ini"]["diff"]  # redacted
    assert '+address = "0.0.0.0"' in by_path["/etc/myapp/config.toml"]["diff"]
    assert "+port = 8080" in by_path["/etc/myapp/config.toml"]["diff"]
    assert PASSWORD not in json.dumps(preview)
    assert etc(root) == start and backups(root) == []

    # Run to version 3.
    ran = await migration(server, "run", "myapp", "--agent", agent_id, "--wait")
    first = ran["run"]
    assert first["state"] == RunState.SUCCEEDED.value and first["spec_revision"] == 1
    config = tomllib.loads((root / "etc/myapp/config.toml").read_text())
    assert config["server"]["port"] == 8080 and config["server"]["address"] == "0.0.0.0"
    assert "password" not in config["db"] and "meta" not in config
    assert tomllib.loads((root / "etc/myapp/secrets.toml").read_text())["db"]["password"] == (
        PASSWORD
    )
    assert not (root / "etc/myapp/myapp.ini").exists()
    events = await stored_events(server)
    run_events = [e for e in events if e.run_id == first["run_id"]]
    assert {(e.spec_id, e.spec_revision) for e in run_events} == {("myapp", 1)}

    # The server learns where the host is.
    async def at_version_3() -> bool:
        detail = await specs_service.get_spec(sessions, "myapp")
        return any(v.version == "3" and v.agents == 1 for v in detail.versions)

    await until(at_version_3, "the host to report version 3")

    # Again: nothing to do.
    second = (await migration(server, "run", "myapp", "--agent", agent_id, "--wait"))["run"]
    assert second["state"] == RunState.SUCCEEDED.value
    events = await stored_events(server)
    [detection] = [
        e for e in events if e.run_id == second["run_id"] and e.event_type == "migration_detection"
    ]
    assert detection.status == "not_needed"

    # Revert the first run: byte-identical to the start.
    reverted = (await migration(server, "revert", first["run_id"], "--wait"))["run"]
    assert (
        reverted["state"] == RunState.SUCCEEDED.value
        and reverted["reverts_run_id"] == first["run_id"]
    )
    assert etc(root) == start
    events = await stored_events(server)
    assert any(
        e.event_type == "migration_revert"
        and e.status == "success"
        and e.run_id == reverted["run_id"]
        for e in events
    )

    # Run again, edit by hand, revert: refused naming the file; the edit stays.
    third = (await migration(server, "run", "myapp", "--agent", agent_id, "--wait"))["run"]
    assert third["state"] == RunState.SUCCEEDED.value
    edited = root / "etc/myapp/config.toml"
    edited.write_text(edited.read_text() + "# edited by hand\n")
    refused = await migration(server, "revert", third["run_id"], "--wait", expect=1)
    assert refused["run"]["state"] == RunState.FAILED.value
    assert "/etc/myapp/config.toml" in refused["run"]["error_message"]
    assert edited.read_text().endswith("# edited by hand\n")
    events = await stored_events(server)
    assert any(
        e.event_type == "migration_revert"
        and e.status == "failed"
        and "/etc/myapp/config.toml" in e.error_message
        for e in events
    )

    # A spec that asks for a secret: AWAITING_INPUT, answered in the API, kept 0600.
    started = await migration(server, "run", "tokenapp", "--agent", agent_id)

    async def waiting_run() -> RunDetail | None:
        run = await specs_service.run_for_action(sessions, started["action_id"])
        if run is None or run.state != RunState.AWAITING_INPUT:
            return None
        return await runs_service.get_run(sessions, run.id)

    waiting = await until(waiting_run, "the tokenapp run to wait for input")
    run_id = waiting.run.id
    stream = asyncio.create_task(
        capture_stream(http, f"{server.web_url}/runs/{run_id}/stream", frames)
    )
    try:
        url = f"{server.web_url}/api/v1/runs/{run_id}/inputs"
        async with http.get(url) as reply:
            asked = await reply.json()
        assert [f["name"] for f in asked["fields"]] == ["api_token"]
        answer_body = {"request_id": asked["request_id"], "inputs": {"api_token": TOKEN}}
        async with http.post(url, json=answer_body) as reply:
            assert reply.status == 202, await reply.text()

        async def finished() -> bool:
            detail = await runs_service.get_run(sessions, run_id)
            return detail.run.state == RunState.SUCCEEDED

        await until(finished, "the tokenapp run to succeed")
    finally:
        stream.cancel()
        await asyncio.gather(stream, return_exceptions=True)
    page = await runs_service.list_runs(sessions, RunFilter())
    assert {r.migration_id for r in page.runs} == {"myapp", "tokenapp"}
