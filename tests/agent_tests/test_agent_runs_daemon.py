"""The daemon with runs, against a real gRPC server on port 0: fast cadence while a run is live
(log lines arrive during the run), actions (run now, cancel mid-run, expired, unknown)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent_testlib import (
    REPO,
    FakeServer,
    agent_env,
    daemon,
    enrolled_fast,
    signed_action,
    snapshot,
    wait_for,
    write_legacy,
)

from agent import events, runs
from agent.daemon import Agent
from agent.outbox import Outbox
from flagpost.v1 import agent_pb2


def terminal_runs(server: FakeServer) -> list[agent_pb2.RunUpdate]:
    with server.lock:
        return [u for u in server.stored_updates.values() if u.state in runs.TERMINAL]


def test_fast_cadence_while_a_run_is_live(tmp_path: Path, fake_server: FakeServer) -> None:
    write_legacy(tmp_path)
    config = enrolled_fast(tmp_path, fake_server, FLAGPOST_AGENT_STEP_DELAY_SECONDS="0.8")
    with daemon(config):
        wait_for(lambda: terminal_runs(fake_server))
        ended = time.monotonic()
        time.sleep(3)  # linger (1 s) and then some: back to the 30 s interval
    [final] = terminal_runs(fake_server)
    assert final.state == runs.SUCCEEDED
    run_id = final.run_id

    with fake_server.lock:
        requests = list(zip(fake_server.checkin_times, fake_server.checkins, strict=True))
    carrying = [
        i for i, (_, r) in enumerate(requests) if any(x.run_id == run_id for x in r.log_lines)
    ]
    final_at = next(
        i
        for i, (_, r) in enumerate(requests)
        if any(u.state in runs.TERMINAL for u in r.run_updates)
    )
    # The log arrived while the run was going on, in several check-ins, not all at the end.
    assert len([i for i in carrying if i < final_at]) >= 3
    # Check-ins while the run was live were at most ~0.3 s apart (1 s allows a loaded box).
    first_at = carrying[0]
    times = [t for t, _ in requests[first_at : final_at + 1]]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and max(gaps) < 1.0, gaps
    # Afterwards the normal interval again: nothing once the linger is over.
    assert not [t for t, _ in requests if t > ended + 1.0 + 0.6]
    # Every line of the run arrived, gap-free.
    lines = fake_server.lines_of(run_id)
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    assert lines[-1].message == "Config migrated 1 -> 4"


def test_run_migration_action_starts_a_requested_run(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    write_legacy(tmp_path)
    fake_server.next_checkin_seconds = 1
    config = enrolled_fast(tmp_path, fake_server)
    with daemon(config):
        wait_for(lambda: terminal_runs(fake_server))  # the start-up migration, 1 -> 4
        with fake_server.lock:
            fake_server.actions.append(
                signed_action("a-run", "run_migration", {"migration_id": "agent-config"})
            )
        wait_for(
            lambda: any(u.requested_by_action_id == "a-run" for u in terminal_runs(fake_server))
        )
        wait_for(lambda: "a-run" in fake_server.action_acks)
    [requested] = [u for u in terminal_runs(fake_server) if u.requested_by_action_id == "a-run"]
    assert requested.state == runs.SUCCEEDED and requested.steps_total == 0  # already at 4
    detections = [e for e in fake_server.stored.values() if e.run_id == requested.run_id]
    assert [e.status for e in detections] == [events.NOT_NEEDED]
    assert fake_server.action_acks.count("a-run") == 1


def test_cancel_action_mid_run_rolls_back(tmp_path: Path, fake_server: FakeServer) -> None:
    write_legacy(tmp_path)
    before = snapshot(tmp_path / "etc")
    config = enrolled_fast(tmp_path, fake_server, FLAGPOST_AGENT_STEP_DELAY_SECONDS="1")

    def first_step_done() -> str:
        with fake_server.lock:
            for update in fake_server.stored_updates.values():
                if update.steps and update.steps[0].status == "succeeded":
                    return update.run_id
        return ""

    with daemon(config):
        wait_for(first_step_done)
        run_id = first_step_done()
        with fake_server.lock:
            fake_server.actions.append(signed_action("a-cancel", "cancel_run", {"run_id": run_id}))
        wait_for(lambda: terminal_runs(fake_server))
        wait_for(lambda: "a-cancel" in fake_server.action_acks)
        wait_for(lambda: any(e.event_type == events.EXECUTION for e in fake_server.stored.values()))
    [final] = terminal_runs(fake_server)
    assert final.run_id == run_id and final.state == runs.CANCELLED
    assert final.steps[0].status == "rolled_back"
    assert "skipped" in [s.status for s in final.steps]
    assert snapshot(tmp_path / "etc") == before
    [execution] = [e for e in fake_server.stored.values() if e.event_type == events.EXECUTION]
    assert execution.run_id == run_id and execution.status == events.FAILED
    assert execution.error_detail.exception_type == "RunCancelled"
    assert "a-cancel" in execution.error_message


def test_expired_and_unknown_actions_are_reported(tmp_path: Path, fake_server: FakeServer) -> None:
    fake_server.next_checkin_seconds = 1
    config = enrolled_fast(tmp_path, fake_server)  # no config at all: nothing to migrate
    expired = signed_action(
        "a-old", "run_migration", expires_at=datetime.now(UTC) - timedelta(minutes=1)
    )
    fresh = signed_action("a-fresh", "reboot")
    stray = signed_action("a-stray", "cancel_run", {"run_id": "r-x"})
    fake_server.actions = [expired, fresh, stray]

    def notices() -> list[agent_pb2.MigrationEvent]:
        with fake_server.lock:
            found = fake_server.stored.values()
            return [e for e in found if e.event_type == events.AGENT_NOTICE]

    with daemon(config):
        wait_for(lambda: len(notices()) == 3)
        wait_for(lambda: {"a-old", "a-fresh", "a-stray"} <= set(fake_server.action_acks))
    messages = sorted(n.message for n in notices())
    assert all(n.status == events.WARNING for n in notices())
    assert any("a-fresh" in m and "unknown action kind 'reboot'" in m for m in messages)
    assert any("a-old" in m and "expired" in m for m in messages)
    assert any("a-stray" in m and "r-x is not in progress" in m for m in messages)
    assert not fake_server.stored_updates  # the expired run_migration started nothing


def test_once_runs_a_requested_migration_and_reports_it(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    config = enrolled_fast(tmp_path, fake_server)
    fake_server.actions = [signed_action("a-once", "run_migration")]
    with Agent(config) as agent:
        assert agent.once() == 0
        assert agent.outbox.runs.counts()["log_lines_pending"] == 0
    [final] = terminal_runs(fake_server)
    assert final.requested_by_action_id == "a-once" and final.state == runs.SUCCEEDED
    assert fake_server.action_acks == ["a-once"]
    assert "No agent config found" in fake_server.lines_of(final.run_id)[-1].message


def test_sigterm_mid_run_stops_at_the_boundary_and_rolls_back(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    """A real process: SIGTERM during a run ends it FAILED (rolled back) and the agent exits 0;
    the check-in thread stops too."""
    write_legacy(tmp_path)
    before = snapshot(tmp_path / "etc")
    enrolled_fast(tmp_path, fake_server)
    env = agent_env(
        FLAGPOST_AGENT_STARTUP_JITTER_SECONDS="0",
        FLAGPOST_AGENT_STEP_DELAY_SECONDS="2",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--root", str(tmp_path), "run"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: fake_server.stored_updates)  # the run is live on the server
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, err
    assert snapshot(tmp_path / "etc") == before
    with Outbox(tmp_path / "var/lib/flagpost-agent/outbox.db") as box:
        [final] = [u for u in box.runs.updates() if u.state in runs.TERMINAL]
        assert not (tmp_path / "var/lib/flagpost-agent/migration-journal.json").exists()
    assert final.state == runs.FAILED
    assert "MigrationInterrupted" in final.error_message
    assert [s.status for s in final.steps] == ["skipped", "skipped", "skipped"]


def test_a_request_that_expires_while_queued_is_dropped(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    config = enrolled_fast(tmp_path, fake_server)
    soon = signed_action(
        "a-soon", "run_migration", expires_at=datetime.now(UTC) + timedelta(milliseconds=200)
    )
    later = signed_action("a-later", "run_migration")
    with Agent(config) as agent:
        agent.handle_actions([soon, later], agent.outbox)  # both valid when received
        time.sleep(0.3)  # "a-soon" expires while queued (behind a long run, say)
        assert agent.run_requested() == 1
        updates = agent.outbox.runs.updates()
        notices = [e for e in agent.outbox.events() if e.event_type == events.AGENT_NOTICE]
    assert {u.requested_by_action_id for u in updates} == {"a-later"}
    [notice] = notices
    assert "a-soon" in notice.message and "expired while queued" in notice.message
