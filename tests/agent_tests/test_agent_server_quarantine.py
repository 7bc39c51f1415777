"""Against the real server: an event it rejects is quarantined, listed by `flagpost-agent status`,
reported as a warning notice, and never blocks the events behind it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent_testlib import REPO
from sqlalchemy import select

from agent import events
from agent.outbox import Outbox
from flagpost.v1 import agent_pb2
from server import app_keys
from server.services.enrollment import create_token
from server.storage.models import UpdateEvent


async def agent(root: Path, *args: str) -> tuple[int, str]:
    """``python -m agent`` without blocking the loop the in-process server runs on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "--root",
        str(root),
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def event(message: str, occurred_at: datetime | None = None) -> agent_pb2.MigrationEvent:
    return events.migration_event(
        event_type=events.EXECUTION,
        status=events.SUCCESS,
        run_id="0190a0c4-0000-7000-8000-0000000000aa",
        message=message,
        migration_from="1",
        migration_to="4",
        system_info={"hostname": "q-host"},
        occurred_at=occurred_at,
    )


async def test_rejected_event_quarantined_listed_and_reported(
    running_server: Any, tmp_path: Path
) -> None:
    root = tmp_path / "agent"
    token = await create_token(running_server.app[app_keys.SESSIONS], uses=1, expires_in=None)
    address = f"127.0.0.1:{running_server.grpc_port}"
    code, out = await agent(root, "enroll", "--server", address, "--token", token)
    assert code == 0, out
    good, bad, after = (
        event("before"),
        event("from a broken clock", datetime(1990, 1, 1, tzinfo=UTC)),
        event("after"),
    )
    with Outbox(root / "var/lib/flagpost-agent/outbox.db") as outbox:
        for item in (good, bad, after):
            outbox.add(item)

    code, out = await agent(root, "once")
    assert code == 0, out

    async with running_server.app[app_keys.SESSIONS]() as session:
        rows = list(await session.scalars(select(UpdateEvent).order_by(UpdateEvent.id)))
    stored = {row.event_id: row for row in rows}
    assert good.event_id in stored and after.event_id in stored  # the queue was not blocked
    assert bad.event_id not in stored
    code, out = await agent(root, "status", "--json")
    status = json.loads(out)
    assert status["outbox_depth"] == 0
    quarantined = status["quarantined"]
    assert quarantined[0]["event_id"] == bad.event_id
    assert "events[1].occurred_at" in quarantined[0]["reason"]
    assert "before 2000" in quarantined[0]["reason"]

    notices = [row for row in rows if row.event_type == "agent_notice"]
    # The warning about the quarantined event is in the History, category "agent".
    [notice] = notices
    assert notice.category == "agent" and notice.status == "warning"
    assert notice.severity == "warning"
    assert bad.event_id in notice.message and "occurred_at" in notice.message
    assert len(quarantined) == 1
    # Another check-in sends nothing again and adds nothing.
    code, out = await agent(root, "once")
    assert code == 0, out
    async with running_server.app[app_keys.SESSIONS]() as session:
        count = len(list(await session.scalars(select(UpdateEvent.event_id))))
    assert count == len(rows) + 1  # only the new run's not_needed detection
