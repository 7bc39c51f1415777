"""The ``flagpost-agent`` command in real subprocesses against a real gRPC server."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from agent_testlib import (
    AGENT_TOKEN,
    CREDENTIAL,
    ENROLL_TOKEN,
    REPO,
    SERVER_PUBLIC_KEY,
    FakeServer,
    agent_env,
    run_agent,
    write_legacy,
)

from agent.outbox import Outbox
from flagpost.v1 import agent_pb2


def enroll(root: Path, server: FakeServer) -> subprocess.CompletedProcess[str]:
    return run_agent(
        "enroll", "--server", server.address, "--token", ENROLL_TOKEN, "--root", str(root)
    )


def test_import_does_not_pull_in_server() -> None:
    code = "import sys, agent.cli, agent.daemon; assert 'server' not in sys.modules; print('ok')"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=agent_env(),
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.stdout.strip() == "ok", proc.stderr


def test_enroll_stores_credentials_0600(tmp_path: Path, fake_server: FakeServer) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("m-123\n")
    proc = enroll(tmp_path, fake_server)
    assert proc.returncode == 0, proc.stderr
    assert "agent_id=agent-0001" in proc.stdout
    assert CREDENTIAL not in proc.stdout + proc.stderr
    assert ENROLL_TOKEN not in proc.stdout + proc.stderr
    path = tmp_path / "var/lib/flagpost-agent/credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    assert stored == {
        "agent_id": "agent-0001",
        "credential": CREDENTIAL,
        "server": fake_server.address,
        "checkin_interval_seconds": 30,
        "server_signing_key": SERVER_PUBLIC_KEY.hex(),  # pinned at enrollment
        "credential_expires_at": "",
    }
    [request] = fake_server.enrolls
    assert request.facts.machine_id == "m-123"
    assert request.facts.config_version == ""  # no managed config under this root
    assert request.facts.agent_version == "0.1.0" and request.facts.hostname


def test_enroll_with_bad_token_fails_cleanly(tmp_path: Path, fake_server: FakeServer) -> None:
    proc = run_agent(
        "--root", str(tmp_path), "enroll", "--server", fake_server.address, "--token", "nope"
    )
    assert proc.returncode == 1
    assert "UNAUTHENTICATED" in proc.stderr and "nope" not in proc.stderr
    assert not (tmp_path / "var/lib/flagpost-agent/credentials.json").exists()


def test_once_migrates_and_delivers(tmp_path: Path, fake_server: FakeServer) -> None:
    write_legacy(tmp_path)
    assert enroll(tmp_path, fake_server).returncode == 0
    proc = run_agent("--root", str(tmp_path), "once")
    assert proc.returncode == 0, proc.stderr
    assert AGENT_TOKEN not in proc.stderr and CREDENTIAL not in proc.stderr
    stored = list(fake_server.stored.values())
    assert [(e.event_type, e.status) for e in stored] == [
        (agent_pb2.EVENT_TYPE_MIGRATION_DETECTION, agent_pb2.EVENT_STATUS_SUCCESS),
        (agent_pb2.EVENT_TYPE_MIGRATION_EXECUTION, agent_pb2.EVENT_STATUS_SUCCESS),
    ]
    assert fake_server.checkins[-1].facts.config_version == "4"
    status = run_agent("--root", str(tmp_path), "status", "--json")
    data = json.loads(status.stdout)
    assert data["outbox_depth"] == 0 and data["agent_id"] == "agent-0001"
    assert data["config_version"] == "4" and data["last_checkin_at"]
    # A second `once` detects not_needed and delivers just that.
    assert run_agent("--root", str(tmp_path), "once").returncode == 0
    last = list(fake_server.stored.values())[-1]
    assert last.status == agent_pb2.EVENT_STATUS_NOT_NEEDED


def test_once_without_server_keeps_events_and_fails(tmp_path: Path) -> None:
    write_legacy(tmp_path)
    state = tmp_path / "var/lib/flagpost-agent"
    state.mkdir(parents=True)
    (state / "credentials.json").write_text(
        json.dumps({"agent_id": "a", "credential": "c", "server": "127.0.0.1:1"})
    )
    env = agent_env(
        FLAGPOST_AGENT_RETRY_INITIAL_SECONDS="0.01", FLAGPOST_AGENT_RPC_TIMEOUT_SECONDS="2"
    )
    proc = run_agent("--root", str(tmp_path), "once", env=env)
    assert proc.returncode == 1
    assert "UNAVAILABLE" in proc.stderr
    with Outbox(state / "outbox.db") as box:
        assert box.depth() == 2
    status = run_agent("--root", str(tmp_path), "status")
    assert "outbox depth:    2" in status.stdout and "UNAVAILABLE" in status.stdout


def test_status_lists_quarantined(tmp_path: Path, fake_server: FakeServer) -> None:
    write_legacy(tmp_path, "broken line\n")
    assert enroll(tmp_path, fake_server).returncode == 0
    assert run_agent("--root", str(tmp_path), "migrate").returncode == 1
    with Outbox(tmp_path / "var/lib/flagpost-agent/outbox.db") as box:
        [event] = box.events()
    fake_server.reject_event_ids = {event.event_id}
    assert run_agent("--root", str(tmp_path), "once").returncode == 0
    status = run_agent("--root", str(tmp_path), "status")
    assert "quarantined:     1" in status.stdout
    assert event.event_id in status.stdout and "events[0]" in status.stdout
    # ... and reported as a warning notice naming it (the fake server accepts notices).
    [notice] = [
        e for e in fake_server.stored.values() if e.event_type == agent_pb2.EVENT_TYPE_AGENT_NOTICE
    ]
    assert notice.status == agent_pb2.EVENT_STATUS_WARNING
    assert event.event_id in notice.message and "events[0]" in notice.message


def test_bad_config_exit_code(tmp_path: Path) -> None:
    proc = run_agent(
        "--root",
        str(tmp_path),
        "status",
        env=agent_env(FLAGPOST_AGENT_CHECKIN_INTERVAL_SECONDS="x"),
    )
    assert proc.returncode == 2 and "configuration error" in proc.stderr


def test_run_checks_in_and_stops_on_sigterm(tmp_path: Path, fake_server: FakeServer) -> None:
    write_legacy(tmp_path)
    assert enroll(tmp_path, fake_server).returncode == 0
    fake_server.next_checkin_seconds = 0  # keep the configured 0.2 s interval
    state = tmp_path / "var/lib/flagpost-agent/credentials.json"
    data = json.loads(state.read_text())
    data["checkin_interval_seconds"] = 0
    state.write_text(json.dumps(data))
    env = agent_env(FLAGPOST_AGENT_CHECKIN_INTERVAL_SECONDS="0.2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--root", str(tmp_path), "run"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Check-ins run on their own thread, beside the start-up migration: wait until the
        # migration's outcome was delivered and a few more check-ins (re-detections) happened.
        deadline = time.monotonic() + 20

        def successes() -> int:
            with fake_server.lock:
                found = [e.status for e in fake_server.stored.values()]
            return found.count(agent_pb2.EVENT_STATUS_SUCCESS)

        while successes() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = len(fake_server.checkins)
        while len(fake_server.checkins) < seen + 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert successes() == 2 and len(fake_server.checkins) >= seen + 4
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, err
    assert "agent stopped" in err
    statuses = [e.status for e in fake_server.stored.values()]
    # Migrated once at start; periodic re-detection did not repeat not_needed every interval.
    assert statuses.count(agent_pb2.EVENT_STATUS_SUCCESS) == 2
    assert statuses.count(agent_pb2.EVENT_STATUS_NOT_NEEDED) <= 1
