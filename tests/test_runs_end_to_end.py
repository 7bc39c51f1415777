"""Issue 4 acceptance, server side with a real agent process: a run appears with its steps and
logs, tied to its events, through the real check-in path, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from test_end_to_end import LEGACY, REPO, enrolled_agent, run_agent, stored_events

from server import app_keys
from server.domain import LogQuery, RunDetail, RunFilter, RunState
from server.services import logs as logs_service
from server.services import runs as runs_service


async def test_real_agent_run_has_steps_and_logs(running_server: Any, agent_base: Path) -> None:
    root = agent_base / "healthy"
    (root / "etc" / "aggregator").mkdir(parents=True)
    (root / "etc" / "aggregator" / "agent.conf").write_text(LEGACY)
    await enrolled_agent(running_server, root)

    await run_agent(root, "once")

    sessions = running_server.app[app_keys.SESSIONS]
    page = await runs_service.list_runs(sessions, RunFilter())
    assert len(page.runs) == 1
    run = page.runs[0]
    events = await stored_events(running_server)
    assert {e.run_id for e in events} == {run.id}
    detail = await runs_service.get_run(sessions, run.id)
    assert detail.run.state == RunState.SUCCEEDED
    assert detail.run.steps_total > 0 and detail.run.steps_done == detail.run.steps_total
    assert len(detail.steps) == detail.run.steps_total
    assert all(step.status == "succeeded" for step in detail.steps)
    assert detail.run.started_at is not None and detail.run.finished_at is not None
    assert detail.progress == 1.0

    logs = await logs_service.query_logs(sessions, run.id, LogQuery(limit=5000))
    seqs = [line.seq for line in logs.lines]
    assert seqs and seqs == list(range(1, len(seqs) + 1))  # gap-free from 1
    stats = await logs_service.log_stats(sessions, run.id)
    assert stats.total == len(seqs)
    sources = await logs_service.log_sources(sessions, run.id)
    assert {step.name for step in detail.steps} & set(sources)


async def wait_for_run(
    sessions: Any, check: Callable[[RunDetail], bool], timeout: float = 30.0
) -> RunDetail:
    """Poll until the (single) run satisfies ``check``."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: RunDetail | None = None
    while asyncio.get_running_loop().time() < deadline:
        page = await runs_service.list_runs(sessions, RunFilter())
        if page.runs:
            last = await runs_service.get_run(sessions, page.runs[0].id)
            if check(last):
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"run never reached the expected state; last seen: {last}")


async def test_cancel_mid_run_rolls_back_a_real_agent(
    running_server: Any, agent_base: Path
) -> None:
    """Cancel from the server while a real ``flagpost-agent run`` daemon is between steps: the
    run ends CANCELLED and the config is wholly old again."""
    root = agent_base / "slow"
    legacy = root / "etc" / "aggregator" / "agent.conf"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(LEGACY)
    before = legacy.read_bytes()
    await enrolled_agent(running_server, root)
    sessions = running_server.app[app_keys.SESSIONS]
    env = {
        **os.environ,
        "FLAGPOST_AGENT_STEP_DELAY_SECONDS": "2",  # each of the three steps waits 2 s first
        "FLAGPOST_AGENT_STARTUP_JITTER_SECONDS": "0",
    }
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "--root", str(root), "run",
        cwd=REPO, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        running = await wait_for_run(
            sessions,
            lambda d: d.run.state == RunState.RUNNING and 1 <= d.run.steps_done < d.run.steps_total,
        )
        await runs_service.request_cancel(
            sessions, running_server.app[app_keys.CONFIG], running.run.id, by="test"
        )
        cancelled = await wait_for_run(sessions, lambda d: d.run.state == RunState.CANCELLED)
    finally:
        daemon.send_signal(signal.SIGTERM)
        await asyncio.wait_for(daemon.wait(), timeout=30)

    assert cancelled.run.cancel_requested_by == "test"
    assert cancelled.run.steps_done < cancelled.run.steps_total
    assert {step.status for step in cancelled.steps} <= {"rolled_back", "skipped"}
    assert legacy.read_bytes() == before, "a cancelled run leaves the original config in place"
    assert not (root / "etc" / "flagpost" / "agent.json").exists()
    assert not (root / "etc" / "flagpost" / "agent.conf").exists()
    events = await stored_events(running_server)
    [execution] = [e for e in events if e.event_type == "migration_execution"]
    assert execution.status == "failed" and execution.run_id == cancelled.run.id
    assert execution.error_detail["exception_type"] == "RunCancelled"
    assert execution.error_detail["rollback"] == "succeeded"
