"""``flagpost-server migration ...`` as a real subprocess against a real database: add (new
revision / unchanged), list, show, diff, --json, preview --wait timing out naming the silent
agent, and the mistakes (unknown spec, unreadable file, invalid spec) ending in a line or two
naming the fix, never a traceback, on SQLite; run and revert --wait on PostgreSQL beside a real
server and agent check-ins. The services under the CLI run on both databases in
tests/test_specs_server.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from runs_testlib import AgentClient, run_update

from flagpost.v1 import agent_pb2
from server.app import RunningServer
from server.config import ServerConfig
from server.domain import HostFacts
from server.services import enrollment
from server.storage.db import create_engine_for_url, make_sessionmaker

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "agent_tests" / "specs" / "myapp.toml"


def migration(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "migration", *args, "--database-url", url],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def mistake(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr


async def _enroll(url: str) -> str:
    engine = create_engine_for_url(url)
    try:
        sessions = make_sessionmaker(engine)
        token = await enrollment.create_token(sessions)
        agent_id, _ = await enrollment.enroll(sessions, token, HostFacts(hostname="web-9"))
        return agent_id
    finally:
        await engine.dispose()


async def test_add_list_show_diff_preview(sqlite_db_url: str, tmp_path: Path) -> None:
    db_url = sqlite_db_url
    assert ok(migration(db_url, "add", str(SAMPLE))) == "myapp revision 1\n"
    assert ok(migration(db_url, "add", str(SAMPLE))) == "myapp revision 1 (unchanged)\n"
    changed = tmp_path / "myapp.toml"
    changed.write_text(SAMPLE.read_text().replace('target = "3"', 'target = "3"  # v2'))
    # a comment is not in the canonical JSON: the same spec
    assert ok(migration(db_url, "add", str(changed))) == "myapp revision 1 (unchanged)\n"
    changed.write_text(changed.read_text().replace('title = "myapp:', 'title = "myapp v2:'))
    assert json.loads(ok(migration(db_url, "add", str(changed), "--json"))) == {
        "spec_id": "myapp",
        "revision": 2,
        "created": True,
    }
    [listed] = json.loads(ok(migration(db_url, "list", "--json")))
    assert (listed["spec_id"], listed["revision"], listed["target"]) == ("myapp", 2, "3")
    shown = ok(migration(db_url, "show", "myapp", "--revision", "1"))
    assert ' 1  id = "myapp"' in shown and "revisions:" in shown and "  2  " in shown
    assert "hosts per version: none" in shown
    diff = ok(migration(db_url, "diff", "myapp", "1", "2"))
    assert diff.startswith("--- myapp revision 1\n+++ myapp revision 2\n")
    assert '\n+target = "3"  # v2\n' in diff and '\n+title = "myapp v2:' in diff
    agent_id = await _enroll(db_url)
    result = migration(db_url, "preview", "myapp", "--agent", agent_id, "--wait", "--timeout", "1")
    assert result.returncode == 1 and f"no answer within 1 s from: {agent_id}" in result.stderr
    assert result.stdout.startswith("preview ") and f"for agent {agent_id}\n" in result.stdout
    ran = json.loads(ok(migration(db_url, "run", "myapp", "--agent", agent_id, "--json")))
    assert ran["agent_id"] == agent_id and ran["run"] is None and len(ran["action_id"]) == 36
    mistake(migration(db_url, "show", "nope"), "no migration spec nope", "migration list")


async def test_mistakes(sqlite_db_url: str, tmp_path: Path) -> None:
    url = sqlite_db_url
    mistake(migration(url, "add", str(tmp_path / "missing.toml")), "cannot read", "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text(SAMPLE.read_text().replace('op = "rename_key"', 'op = "rename"'))
    mistake(
        migration(url, "add", str(bad)), "line 27: steps[0].ops[0].op: unknown operation 'rename'"
    )
    mistake(migration(url, "diff", "myapp", "1", "2"), "no revision 1 of spec myapp")
    mistake(migration(url, "revert", "not-a-run"), "no run not-a-run")


async def _cli(url: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "migration",
        *args,
        "--database-url",
        url,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


# PostgreSQL (the tests above use SQLite): a server plus two CLI processes take a while.
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_run_and_revert_wait_for_the_agent(
    running_server: RunningServer, server_config: ServerConfig
) -> None:
    url = server_config.database_url
    ok(migration(url, "add", str(SAMPLE)))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as channel:
        agent = await AgentClient.enroll(running_server, channel)
        outcomes: dict[str, str] = {}
        for command in ("run", "revert"):
            args = (
                ("run", "myapp", "--agent", agent.agent_id)
                if command == "run"
                else ("revert", outcomes["run"])
            )
            cli = await _cli(url, *args, "--wait", "--timeout", "20")
            assert cli.stdout is not None
            first = (await asyncio.wait_for(cli.stdout.readline(), 20)).decode()
            action_id = first.split()[1]  # "action <id> for agent <agent id>"
            run_id = str(uuid.uuid4())
            fields = {"requested_by_action_id": action_id, "spec_revision": 1}
            if command == "revert":
                fields["reverts_run_id"] = outcomes["run"]
            reply = await agent.checkin(
                run_updates=[
                    run_update(
                        run_id, agent_pb2.RUN_STATE_SUCCEEDED, migration_id="myapp", **fields
                    )
                ]
            )
            assert action_id in [a.action_id for a in reply.actions]
            out, err = await asyncio.wait_for(cli.communicate(), 20)
            assert cli.returncode == 0, (out, err)
            assert out.decode() == f"run {run_id}\nSUCCEEDED\n"
            outcomes[command] = run_id
