"""``flagpost-server rollout create|list|show|pause|resume|abort`` as real subprocesses against a
real server (its scheduler running), agents checking in over real gRPC and reporting the runs
their actions asked for; mistakes end in one line naming the flag."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from agent_tests.spec_testlib import SAMPLE
from runs_testlib import AgentClient, run_update
from server_testlib import action_body

from flagpost.v1 import agent_pb2
from server import app_keys
from server.app import RunningServer
from server.services import specs as specs_service

ROOT = Path(__file__).resolve().parent.parent


async def rollout(server: RunningServer, *args: str, expect: int = 0) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    url = server.app[app_keys.CONFIG].database_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "rollout", *args, "--database-url", url,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == expect, (args, out.decode(), err.decode())
    return out.decode(), err.decode()


async def show(server: RunningServer, rollout_id: str) -> Any:
    out, _ = await rollout(server, "show", rollout_id, "--json")
    return json.loads(out)


async def until_state(server: RunningServer, rollout_id: str, *states: str) -> Any:
    for _ in range(100):
        shown = await show(server, rollout_id)
        if shown["state"] in states:
            return shown
        await asyncio.sleep(0.2)
    raise AssertionError(f"rollout never reached {states}: {shown}")


async def take_and_report(agent: AgentClient, state: int) -> int:
    """One check-in: every run action received is answered with a run in ``state``."""
    reply = await agent.checkin()
    updates = [
        run_update(
            str(uuid.uuid4()),
            state,
            migration_id="myapp",
            spec_revision=1,
            requested_by_action_id=action.action_id,
        )
        for action in reply.actions
        if action_body(action).kind == "run_migration"
    ]
    if updates:
        await agent.checkin(
            run_updates=updates, acknowledged_action_ids=[a.action_id for a in reply.actions]
        )
    return len(updates)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_create_show_halt_resume_abort(running_server: RunningServer) -> None:
    server = running_server
    await specs_service.add_spec(server.app[app_keys.SESSIONS], SAMPLE, "toml", "alice")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agents = []
        for i in range(4):
            agent = await AgentClient.enroll(server, channel, f"web-{i}")
            agent.facts.labels.update({"env": "prod"})
            await agent.checkin()
            agents.append(agent)

        _, err = await rollout(server, "create", "myapp", "--waves", "1,ten", expect=1)
        assert err.strip().splitlines() == [
            "flagpost-server: --waves: wave 2 ('ten') is not a host count or a percentage like 10%"
        ]
        _, err = await rollout(server, "create", "myapp", "--soak", "5 min", expect=1)
        assert "--soak: '5 min' is not a duration" in err and "Traceback" not in err
        _, err = await rollout(server, "create", "myapp", "--select", "env=dev", expect=1)
        assert "--select: picks no host" in err
        _, err = await rollout(server, "show", "nope", expect=1)
        assert "no rollout nope (see: flagpost-server rollout list)" in err

        out, _ = await rollout(
            server, "create", "myapp", "--select", "env=prod", "--waves", "1,100%",
            "--max-failure-rate", "5%", "--wave-timeout", "10m",
        )  # fmt: skip
        rollout_id = out.strip()
        assert uuid.UUID(rollout_id)
        shown = await show(server, rollout_id)
        assert shown["hosts_total"] == 4 and shown["wave_sizes"] == [1, 4]
        assert shown["max_failure_rate"] == 0.05 and shown["wave_timeout_seconds"] == 600
        # The server's scheduler starts wave 1: one agent gets its action. Stop at the first
        # taker: once its run succeeds the scheduler may start wave 2 before the next agent in
        # the same pass checks in.
        taken = 0
        for _ in range(50):
            for agent in agents:
                taken = await take_and_report(agent, agent_pb2.RUN_STATE_SUCCEEDED)
                if taken:
                    break
            if taken:
                break
            await asyncio.sleep(0.2)
        assert taken == 1
        failed = 0
        for _ in range(50):  # wave 2: the other three, and they fail
            for agent in agents:
                failed += await take_and_report(agent, agent_pb2.RUN_STATE_FAILED)
            if failed:
                break
            await asyncio.sleep(0.2)
        assert failed >= 1
        shown = await until_state(server, rollout_id, "HALTED")
        assert "wave 2 (100%)" in shown["reason"] and "beyond its gate" in shown["reason"]
        text, _ = await rollout(server, "show", rollout_id)
        assert f"rollout {rollout_id}: HALTED" in text and "wave 2" in text
        _, err = await rollout(server, "resume", rollout_id, expect=1)
        assert "--reason: resuming a halted rollout overrides its gate: say why" in err
        out, _ = await rollout(server, "resume", rollout_id, "--reason", "known bad hosts")
        assert out.strip() == f"rollout {rollout_id}: RUNNING"
        # Every host of the wave finishes (one whose action the halt withdrew before its agent
        # took it is started again now): with its gate overridden, the rollout completes.
        for _ in range(100):
            for agent in agents:
                await take_and_report(agent, agent_pb2.RUN_STATE_FAILED)
            if (await show(server, rollout_id))["state"] == "COMPLETED":
                break
            await asyncio.sleep(0.2)
        await until_state(server, rollout_id, "COMPLETED")
        _, err = await rollout(server, "pause", rollout_id, expect=1)
        assert "is COMPLETED; only RUNNING pauses" in err
        _, err = await rollout(server, "abort", rollout_id, expect=1)
        assert "cannot go to ABORTED" in err
        out, _ = await rollout(server, "abort", rollout_id, "--revert")
        assert out.strip().endswith("REVERTING")
        shown = await show(server, rollout_id)
        moves = [
            (t["from_state"], t["to_state"], t["by"].split(":")[0]) for t in shown["transitions"]
        ]
        assert moves == [
            ("", "RUNNING", "cli"),
            ("RUNNING", "HALTED", "scheduler"),
            ("HALTED", "RUNNING", "cli"),
            ("RUNNING", "COMPLETED", "scheduler"),
            ("COMPLETED", "REVERTING", "cli"),
        ]
        assert "overridden by cli:" in shown["transitions"][2]["reason"]

        out, _ = await rollout(server, "create", "myapp", "--soak", "1h")
        second = out.strip()
        out, _ = await rollout(server, "pause", second, "--reason", "lunch")
        assert out.strip() == f"rollout {second}: PAUSED"
        _, err = await rollout(server, "resume", second, "--reason", "x" * 501, expect=1)
        assert "--reason: must be at most 500 printable characters" in err
        out, _ = await rollout(server, "abort", second)
        assert out.strip().endswith("ABORTED")
        listed, _ = await rollout(server, "list")
        assert rollout_id in listed and second in listed and "ABORTED" in listed
