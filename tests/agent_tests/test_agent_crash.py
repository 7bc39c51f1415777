"""kill -9 at every crash point (FLAGPOST_AGENT_CRASH_AT), then restart: all-or-nothing config,
journal resolved, exactly one outcome event."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from agent_testlib import agent_env, run_agent, snapshot, write_legacy

from agent import events, runs
from agent.migrations.engine import MigrationEngine
from agent.migrations.journal import read_journal
from agent.outbox import Outbox

ROLLED_BACK = ["before_backup", "after_backup", *(f"after_write:{n}" for n in range(1, 7))]
COMPLETED = ["after_commit", "before_journal_clear"]


def _v4_reference(base: Path) -> dict[str, tuple[bytes, int]]:
    root = base / "reference"
    write_legacy(root)
    assert run_agent("--root", str(root), "migrate").returncode == 0
    return snapshot(root / "etc")


@pytest.mark.parametrize("point", ROLLED_BACK + COMPLETED)
def test_crash_then_restart(tmp_path: Path, point: str) -> None:
    root = tmp_path / "root"
    write_legacy(root)
    old = snapshot(root / "etc")
    new = _v4_reference(tmp_path)
    state = root / "var/lib/flagpost-agent"

    crashed = run_agent(
        "--root", str(root), "migrate", env=agent_env(FLAGPOST_AGENT_CRASH_AT=point)
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    journal = read_journal(state / "migration-journal.json")
    assert journal is not None
    run_id = journal.run_id

    # Restart: recovery is the first thing the agent does.
    with Outbox(state / "outbox.db") as outbox:
        recovered = MigrationEngine(root, state, outbox).recover()
        assert recovered is not None
        stored = [e for e in outbox.events() if e.run_id == run_id]
        updates = outbox.runs.updates(run_id)
        lines = outbox.runs.lines(run_id)
    assert not (state / "migration-journal.json").exists()
    outcomes = [e for e in stored if e.event_type == events.EXECUTION]
    assert len(outcomes) == 1
    assert outcomes[0].event_id == journal.execution_event_id == recovered.event_id
    assert len([e for e in stored if e.event_type == events.DETECTION]) == 1

    # The run: exactly one terminal snapshot, the log continues gap-free after the restart.
    terminal = [u for u in updates if u.state in runs.TERMINAL]
    assert len(terminal) == 1 and terminal[0] == updates[-1]
    assert terminal[0].state == (runs.FAILED if point in ROLLED_BACK else runs.SUCCEEDED)
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    assert lines[-1].source == "executor"
    assert "restarted" in lines[-1].message or "interrupted" in lines[-1].message
    if point in ROLLED_BACK and point.startswith("after_write"):
        assert "failed" in [step.status for step in terminal[0].steps]

    current = snapshot(root / "etc")
    if point in ROLLED_BACK:
        assert current == old
        assert outcomes[0].status == events.FAILED
        assert "interrupted" in outcomes[0].message
        assert outcomes[0].error_detail.rollback in {"succeeded", "not_started"}
    else:
        assert current == new
        assert outcomes[0].status == events.SUCCESS
        assert outcomes[0].message == "Config migrated 1 -> 4"

    # A second restart through the CLI: no journal, so no second outcome for that run; a
    # rolled-back run is simply retried as a new run and succeeds.
    again = run_agent("--root", str(root), "migrate")
    assert again.returncode == 0, again.stderr
    assert snapshot(root / "etc") == new
    with Outbox(state / "outbox.db") as outbox:
        again_events = [e for e in outbox.events() if e.run_id == run_id]
    assert [e.event_id for e in again_events] == [e.event_id for e in stored]


def test_crash_during_recovery_still_reports_once(tmp_path: Path) -> None:
    """Killed after recording the recovered outcome but before clearing the journal."""
    root = tmp_path / "root"
    write_legacy(root)
    state = root / "var/lib/flagpost-agent"
    first = run_agent(
        "--root", str(root), "migrate", env=agent_env(FLAGPOST_AGENT_CRASH_AT="after_write:3")
    )
    assert first.returncode == -signal.SIGKILL
    journal = read_journal(state / "migration-journal.json")
    assert journal is not None
    second = run_agent(
        "--root",
        str(root),
        "migrate",
        env=agent_env(FLAGPOST_AGENT_CRASH_AT="before_journal_clear"),
    )
    assert second.returncode == -signal.SIGKILL  # died inside recovery
    third = run_agent("--root", str(root), "migrate")
    assert third.returncode == 0, third.stderr
    with Outbox(state / "outbox.db") as outbox:
        outcomes = [
            e
            for e in outbox.events()
            if e.run_id == journal.run_id and e.event_type == events.EXECUTION
        ]
        terminal = [u for u in outbox.runs.updates(journal.run_id) if u.state in runs.TERMINAL]
    assert len(outcomes) == 1 and outcomes[0].status == events.FAILED
    assert len(terminal) == 1 and terminal[0].state == runs.FAILED
