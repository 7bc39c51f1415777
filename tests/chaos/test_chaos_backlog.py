"""A backlog of 10,000 events in one agent's outbox drains completely into a real server with one
``flagpost-agent once`` (chunks within the count and byte limits, cycle after cycle). Prints the
drain rate."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bench.fleet import delivery, environment, make_event, stored_event_ids
from chaos_testlib import pick

from agent.outbox import Outbox
from agent.uuid7 import uuid7_str

REPO = Path(__file__).resolve().parents[2]


def agent(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    return subprocess.run(
        [sys.executable, "-m", "agent", "--root", str(root), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_backlog_of_10000_drains_completely(tmp_path: Path) -> None:
    backlog = int(pick(10_000, 50_000))
    root = tmp_path / "agent"
    rng = random.Random(5)
    recorded: list[str] = []
    started = time.perf_counter()
    with Outbox(root / "var/lib/flagpost-agent/outbox.db") as outbox:
        run_id = uuid7_str()
        for n in range(backlog):
            if n % 2 == 0:
                run_id = uuid7_str()
            event = make_event(rng, "backlog-host", run_id, n)
            assert outbox.add(event)
            recorded.append(event.event_id)
        assert outbox.depth() == backlog
    add_rate = backlog / (time.perf_counter() - started)
    with environment("sqlite", tmp_path / "server") as (db, server):
        enrolled = agent(root, "enroll", "--server", server.address, "--token", server.token(1))
        assert enrolled.returncode == 0, enrolled.stderr
        started = time.perf_counter()
        drained = agent(root, "once")
        elapsed = time.perf_counter() - started
        assert drained.returncode == 0, drained.stderr
        stored = stored_event_ids(db)
    result = delivery(recorded, stored)
    status = agent(root, "status", "--json")
    print(
        f"\n[chaos backlog] {backlog} events drained by one `flagpost-agent once` in "
        f"{elapsed:.1f}s = {backlog / elapsed:,.0f} events/s (process start included); "
        f"outbox filled at {add_rate:,.0f} durable adds/s; {result.line()}"
    )
    assert result.lost == 0 and result.duplicates == 0 and result.stored == backlog
    assert result.unexpected == 1  # the agent's own detection event (no config: not_needed)
    assert '"outbox_depth": 0' in status.stdout
