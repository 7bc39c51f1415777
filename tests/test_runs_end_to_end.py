"""Issue 4 acceptance, server side with a real agent process: a run appears with its steps and
logs, tied to its events, through the real check-in path, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_end_to_end import LEGACY, agent_base, enrolled_agent, run_agent, stored_events

from server import keys
from server.domain import LogQuery, RunFilter, RunState
from server.services import logs as logs_service
from server.services import runs as runs_service

__all__ = ["agent_base"]  # the fixture, shared with the issue-2 end-to-end tests


async def test_real_agent_run_has_steps_and_logs(running_server: Any, agent_base: Path) -> None:
    root = agent_base / "healthy"
    (root / "etc" / "aggregator").mkdir(parents=True)
    (root / "etc" / "aggregator" / "agent.conf").write_text(LEGACY)
    await enrolled_agent(running_server, root)

    await run_agent(root, "once")

    sessions = running_server.app[keys.SESSIONS]
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
