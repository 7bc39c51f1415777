"""``flagpost-server agent select|tag|list --select`` as real subprocesses against a real server's
database (SQLite), agents enrolled and checked in over gRPC with labels; the
mistakes end in one or two lines naming the fix."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import grpc
import pytest
from runs_testlib import AgentClient

from server import app_keys
from server.app import RunningServer

ROOT = Path(__file__).resolve().parent.parent


async def cli(server: RunningServer, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    url = server.app[app_keys.CONFIG].database_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "agent",
        *args,
        "--database-url",
        url,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# each CLI call is a fresh interpreter (~1 s); selection itself runs on both databases in
# test_targets.py
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_select_tag_and_list(running_server: RunningServer) -> None:
    server = running_server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        ids = {}
        for host, role in (("web-1", "web"), ("web-2", "web"), ("db-1", "db")):
            agent = await AgentClient.enroll(server, channel, host)
            agent.facts.labels.update({"env": "prod", "role": role})
            await agent.checkin()
            ids[host] = agent.agent_id

    code, out, err = await cli(server, "select", "role=web", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["count"] == 2 and [a["hostname"] for a in shown["agents"]] == ["web-1", "web-2"]

    code, out, err = await cli(server, "tag", "add", "canary", "wave=1", "--select", "host=web-*")
    assert (code, out.strip()) == (0, "tagged 2 of 2 agents picked (canary wave=1)"), err
    code, out, err = await cli(server, "tag", "remove", "canary", "--agent", ids["web-2"])
    assert (code, out.strip()) == (0, "untagged 1 of 1 agents picked (canary)"), err

    code, out, err = await cli(server, "select", "!canary")
    assert code == 0, err
    assert out.splitlines()[0] == "2 agents" and ids["web-2"] in out and ids["db-1"] in out

    code, out, err = await cli(server, "list", "--select", "canary", "--select", "env=prod")
    assert code == 0, err
    rows = out.splitlines()[1:]
    assert len(rows) == 1 and rows[0].startswith(ids["web-1"])
    assert "  canary,wave=1  " in rows[0] and rows[0].endswith("no")

    # mistakes: one or two lines, naming the expression, position or fix
    code, _, err = await cli(server, "select", "env=prod", "role in (db")
    assert code == 1 and err.strip() == "flagpost-server: select[1]: expected ')' at 11"
    code, _, err = await cli(server, "tag", "add", "Bad Tag", "--select", "env=prod")
    assert code == 1 and "add[0]: 'Bad Tag' is not a tag: give NAME or NAME=VALUE" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = await cli(server, "tag", "add", "x", "--agent", "nope")
    assert code == 1 and err.strip() == "flagpost-server: no agent nope"
    code, _, err = await cli(server, "tag", "add", "x")
    assert code == 2 and "one of the arguments --select --agent is required" in err
    assert len(err.strip().splitlines()) <= 4  # argparse: the usage (wrapped), then the error
