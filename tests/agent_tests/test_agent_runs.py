"""Runs in the engine on a real filesystem: RunUpdate snapshots and per-run log lines in the
outbox, what is (not) a run, failures, cancel at a step boundary, and the outbox tables."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from agent_testlib import AGENT_TOKEN, run_agent, snapshot, write_legacy

from agent import events, runlog, runs
from agent.migrations import (
    Detected,
    FileOp,
    FileView,
    Migration,
    MigrationEngine,
    Step,
    WriteFile,
)
from agent.outbox import Outbox
from agent.runs import RunControl
from agent.specs.builtin import agent_config_migration
from flagpost.v1 import agent_pb2

STEPS = ["v1_to_v2_move_location", "v2_to_v3_json_format", "v3_to_v4_split_secrets"]


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "state/outbox.db") as box:
        yield box


def engine(
    root: Path, outbox: Outbox, control: RunControl | None = None, delay: float = 0
) -> MigrationEngine:
    return MigrationEngine(
        root,
        root.parent / "state",
        outbox,
        control=control,
        step_delay=timedelta(seconds=delay),
    )


def statuses(update: agent_pb2.RunUpdate) -> list[str]:
    return [step.status for step in update.steps]


def test_migration_run_updates_in_order(tmp_path: Path, outbox: Outbox) -> None:
    root = tmp_path / "root"
    write_legacy(root)
    result = engine(root, outbox).run(agent_config_migration())
    updates = outbox.runs.updates(result.run_id)

    assert [u.update_id for u in updates] == sorted(u.update_id for u in updates)
    assert len({u.update_id for u in updates}) == len(updates)
    first, last = updates[0], updates[-1]
    assert first.state == runs.RUNNING and statuses(first) == ["pending"] * 3
    assert (first.steps_done, first.steps_total) == (0, 3)
    assert [s.name for s in first.steps] == STEPS and [s.index for s in first.steps] == [0, 1, 2]
    # One snapshot at each step start and end, then the terminal one.
    assert [statuses(u) for u in updates[1:-1]] == [
        ["running", "pending", "pending"],
        ["succeeded", "pending", "pending"],
        ["succeeded", "running", "pending"],
        ["succeeded", "succeeded", "pending"],
        ["succeeded", "succeeded", "running"],
        ["succeeded", "succeeded", "succeeded"],
    ]
    assert [u.steps_done for u in updates] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert all(u.state == runs.RUNNING and not u.HasField("finished_at") for u in updates[:-1])
    assert last.state == runs.SUCCEEDED and last.HasField("finished_at")
    assert last.finished_at.ToDatetime() >= last.started_at.ToDatetime()
    assert all(u.started_at == first.started_at for u in updates)
    assert (last.migration_id, last.migration_from, last.migration_to) == ("agent-config", "1", "4")
    assert last.error_message == "" and last.requested_by_action_id == ""
    assert all(u.run_id == result.run_id for u in updates)


def test_migration_log_lines(tmp_path: Path, outbox: Outbox) -> None:
    root = tmp_path / "root"
    write_legacy(root)
    result = engine(root, outbox).run(agent_config_migration())
    lines = outbox.runs.lines(result.run_id)

    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    assert outbox.runs.last_seq(result.run_id) == len(lines)
    sources = [line.source for line in lines]
    assert sources[0] == "detector" and sources[-1] == "executor"
    assert {"detector", "executor", *STEPS} <= set(sources)
    # The steps log in plan order, each its start, its file operations, its end.
    step_lines = [line for line in lines if line.source == "v1_to_v2_move_location"]
    assert [line.message.split(" ")[0] for line in step_lines[-4:]] == [
        "Step",
        "write",
        "remove",
        "Step",
    ]
    assert step_lines[-3].metadata["path"].endswith("etc/flagpost/agent.conf")
    assert any(line.message == "Config migrated 1 -> 4" for line in lines)
    assert all(line.level in {"DEBUG", "INFO", "WARNING", "ERROR"} for line in lines)
    assert all(line.HasField("timestamp") for line in lines)
    # Planning logs through runlog.current() with the step as source (the chain's v3 -> v4).
    assert any(
        line.source == "v3_to_v4_split_secrets" and "secrets.json" in line.message for line in lines
    )
    # No secret anywhere in the log.
    for line in lines:
        assert AGENT_TOKEN not in line.message
        assert all(AGENT_TOKEN not in value for value in line.metadata.values())


def test_not_needed_is_no_run_but_a_requested_one_is(tmp_path: Path, outbox: Outbox) -> None:
    root = tmp_path / "root"
    write_legacy(root)
    eng = engine(root, outbox)
    eng.run(agent_config_migration())
    before = (len(outbox.runs.updates()), len(outbox.runs.lines()))

    again = eng.run(agent_config_migration())
    assert again.detection is not None and again.detection.status == events.NOT_NEEDED
    assert (len(outbox.runs.updates()), len(outbox.runs.lines())) == before

    asked = eng.run(agent_config_migration(), report_unchanged=False, requested_by="act-7")
    assert asked.detection is not None and asked.detection.status == events.NOT_NEEDED
    updates = outbox.runs.updates(asked.run_id)
    assert [u.state for u in updates] == [runs.RUNNING, runs.SUCCEEDED]
    assert all(u.requested_by_action_id == "act-7" for u in updates)
    assert updates[-1].steps_total == 0
    messages = [line.message for line in outbox.runs.lines(asked.run_id)]
    assert "requested by action act-7" in messages[0]
    assert any("no migration needed" in message for message in messages)


def test_detection_failure_is_a_failed_run_once(tmp_path: Path, outbox: Outbox) -> None:
    root = tmp_path / "root"
    write_legacy(root, "server_url = x\nagent_token = y\nthis is not a setting\n")
    eng = engine(root, outbox)
    result = eng.run(agent_config_migration())
    updates = outbox.runs.updates(result.run_id)
    assert [u.state for u in updates] == [runs.RUNNING, runs.FAILED]
    assert updates[-1].steps_total == 0
    # The built-in spec reads the legacy file as ini (the Python chain said
    # "agent.conf:3: expected 'key = value'").
    assert (
        "/etc/aggregator/agent.conf:3: expected '[section]' or 'key = value'"
        in updates[-1].error_message
    )
    errors = [line for line in outbox.runs.lines(result.run_id) if line.level == "ERROR"]
    assert errors and errors[0].source == "detector" and errors[0].metadata["line"] == "3"

    # The periodic re-detection sees the same failure: no new event, no new run.
    count = len(outbox.runs.updates())
    repeated = eng.run(agent_config_migration(), report_unchanged=False)
    assert repeated.detection is None
    assert len(outbox.runs.updates()) == count
    assert outbox.runs.lines(repeated.run_id) == []


def _failing_migration(root: Path) -> Migration:
    """Two steps; the second writes below the regular file the first created: a real ENOTDIR
    while applying (the backup, made before, finds nothing wrong)."""
    target = root / "app.conf"

    def detect(view: FileView) -> Detected:
        if not view.exists(target):
            return Detected(None, None, "nothing")
        version = view.read_bytes(target).decode().strip()
        return Detected(version, target, f"version {version}")

    def step_one(view: FileView) -> Sequence[FileOp]:
        runlog.current().info("planning the first step", detail="x")
        return [WriteFile(target, b"2\n", 0o644), WriteFile(root / "blocker", b"", 0o644)]

    def step_two(view: FileView) -> Sequence[FileOp]:
        return [WriteFile(root / "blocker/nested", b"3\n", 0o644)]

    return Migration(
        id="app",
        title="app",
        current_version="3",
        detect=detect,
        files=lambda r: [r / "app.conf"],
        steps=(Step("one", "1", "2", "first", step_one), Step("two", "2", "3", "second", step_two)),
    )


def test_step_failure_ends_failed_with_steps_rolled_back(tmp_path: Path, outbox: Outbox) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "app.conf").write_text("1\n")
    result = engine(root, outbox).run(_failing_migration(root))
    assert (root / "app.conf").read_text() == "1\n" and not (root / "blocker").exists()
    assert result.execution is not None and result.execution.status == events.FAILED
    last = outbox.runs.updates(result.run_id)[-1]
    assert last.state == runs.FAILED
    assert statuses(last) == ["rolled_back", "failed"]
    assert last.steps_done == 1 and last.steps_total == 2  # never 100 % for a failed run
    assert "NotADirectoryError" in last.steps[1].error
    assert last.error_message == result.execution.message
    lines = outbox.runs.lines(result.run_id)
    assert any(line.source == "one" and line.message == "planning the first step" for line in lines)
    assert any(line.source == "executor" and line.level == "ERROR" for line in lines)


def test_cancel_at_step_boundary_rolls_back(tmp_path: Path, outbox: Outbox) -> None:
    root = tmp_path / "root"
    legacy = write_legacy(root)
    before = snapshot(root / "etc")
    control = RunControl()
    cancelled: list[bool] = []

    def canceller() -> None:
        # Wait for step 1 to finish (it removes the legacy file), then cancel during the
        # delay before step 2.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            run_id = control.active_run_id
            if run_id is not None and not legacy.exists():
                cancelled.append(control.cancel(run_id, "cancelled by request (action a-1)"))
                return
            time.sleep(0.005)

    thread = threading.Thread(target=canceller)
    thread.start()
    started = time.monotonic()
    result = engine(root, outbox, control, delay=1.0).run(agent_config_migration())
    elapsed = time.monotonic() - started
    thread.join()

    assert cancelled == [True]
    assert elapsed < 2.8  # woke from the step delay instead of finishing every step
    assert snapshot(root / "etc") == before  # rolled back, byte for byte
    execution = result.execution
    assert execution is not None and execution.status == events.FAILED
    assert execution.error_detail.exception_type == "RunCancelled"
    assert execution.error_detail.failing_step == "v2_to_v3_json_format"
    assert execution.error_detail.rollback == "succeeded"
    assert "cancelled before v2_to_v3_json_format; rolled back" in execution.message
    last = outbox.runs.updates(result.run_id)[-1]
    assert last.state == runs.CANCELLED and last.HasField("finished_at")
    assert statuses(last) == ["rolled_back", "skipped", "skipped"]
    assert last.steps_done == 1
    assert "cancelled" in last.error_message
    warnings = [line for line in outbox.runs.lines(result.run_id) if line.level == "WARNING"]
    assert any("action a-1" in line.message for line in warnings)
    assert control.active_run_id is None
    assert not (root.parent / "state/migration-journal.json").exists()


def test_cancel_for_another_run_is_refused() -> None:
    control = RunControl()
    assert not control.cancel("nope")
    control.begin("r1")
    assert not control.cancel("r2") and control.live()
    control.checkpoint()  # not cancelled: no exception
    assert control.cancel("r1")
    with pytest.raises(runs.RunCancelled):
        control.checkpoint()
    control.end("r1")
    assert control.active_run_id is None


def test_cadence_is_fast_while_live_then_slows_during_a_long_wait_for_input() -> None:
    control = RunControl(linger=timedelta(milliseconds=1))
    assert control.hurry_interval(0.5) is None  # no run: the server's interval applies
    control.begin("r1")
    assert control.hurry_interval(0.5) == 0.5
    control.waiting(True)  # the first minutes of a wait: an answer gets through at once
    assert control.hurry_interval(0.5, waiting_fast_for=0.2, waiting_interval=5.0) == 0.5
    time.sleep(0.25)  # later in a wait that may last a day: every 5 s, not every 0.5 s
    assert control.hurry_interval(0.5, waiting_fast_for=0.2, waiting_interval=5.0) == 5.0
    control.waiting(False)  # answered: the run goes on at full speed
    assert control.hurry_interval(0.5, waiting_fast_for=0.2, waiting_interval=5.0) == 0.5
    control.end("r1")
    time.sleep(0.01)  # past the (1 ms) linger after the run
    assert control.hurry_interval(0.5) is None


def test_log_seq_is_gap_free_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    for expected in ([1, 2], [3, 4, 5]):
        with Outbox(path) as box:
            log = runlog.RunLog("run-a")
            log.attach(box.runs)
            for _ in expected:
                log.source("executor").info("line")
            other = runlog.RunLog("run-b")
            other.attach(box.runs)
            other.source("detector").info("b")
    with Outbox(path) as box:
        assert [line.seq for line in box.runs.lines("run-a")] == [1, 2, 3, 4, 5]
        assert [line.seq for line in box.runs.lines("run-b")] == [1, 2]


def test_buffered_lines_are_stored_in_order_or_dropped(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db") as box:
        kept = runlog.RunLog("kept")
        kept.source("detector").info("one")
        kept.source("detector").info("two")
        assert box.runs.lines("kept") == []
        kept.attach(box.runs)
        kept.source("executor").info("three")
        assert [(line.seq, line.message) for line in box.runs.lines("kept")] == [
            (1, "one"),
            (2, "two"),
            (3, "three"),
        ]
        dropped = runlog.RunLog("dropped")
        dropped.source("detector").info("x")
        dropped.discard()
        assert box.runs.lines("dropped") == [] and box.runs.last_seq("dropped") == 0


def test_secret_looking_metadata_is_masked(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db") as box:
        log = runlog.RunLog("r")
        log.attach(box.runs)
        log.source("executor").info(
            "m", agent_token="abc", password="p", api_key="k", path="/etc/x", keys="3"
        )
        [line] = box.runs.lines("r")
    assert dict(line.metadata) == {
        "agent_token": "***",
        "password": "***",
        "api_key": "***",
        "path": "/etc/x",
        "keys": "3",
    }


def test_update_and_line_acks_delete_exactly_what_was_acked(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db") as box:
        queue = box.runs
        updates = [agent_pb2.RunUpdate(update_id=f"u{n}", run_id="r") for n in range(4)]
        assert all(queue.add_update(update) for update in updates)
        assert not queue.add_update(updates[0])  # duplicate id ignored
        for n in range(4):
            queue.add_line(agent_pb2.LogLine(run_id="r", message=f"m{n}"))
        assert queue.ack_updates(["u1", "u3", "unknown"]) == 2
        assert [u.update_id for u in queue.oldest_updates(10, 10_000)] == ["u0", "u2"]
        assert queue.ack_lines([("r", 2), ("r", 4), ("other", 1)]) == 2
        assert [line.seq for line in queue.oldest_lines(10, 10_000)] == [1, 3]
        assert queue.counts()["log_lines_pending"] == 2


def test_old_outbox_file_gains_the_run_tables(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL "
        "UNIQUE, payload BLOB NOT NULL, created_at TEXT NOT NULL, attempts INTEGER NOT NULL "
        "DEFAULT 0, quarantined INTEGER NOT NULL DEFAULT 0, last_error TEXT);"
        "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    )
    event = events.migration_event(
        event_type=events.DETECTION,
        status=events.NOT_NEEDED,
        run_id="",
        message="old",
        system_info={},
    )
    db.execute(
        "INSERT INTO outbox (event_id, payload, created_at) VALUES (?, ?, 'x')",
        (event.event_id, event.SerializeToString()),
    )
    db.commit()
    db.close()
    with Outbox(path) as box:
        assert box.depth() == 1
        assert box.runs.counts()["run_updates_pending"] == 0
        box.runs.add_line(agent_pb2.LogLine(run_id="r", message="new"))
        assert [line.seq for line in box.runs.lines()] == [1]


def test_status_shows_what_runs_still_have_to_send(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_legacy(root)
    assert run_agent("--root", str(root), "migrate").returncode == 0
    status = run_agent("--root", str(root), "status", "--json")
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)["runs"]
    with Outbox(root / "var/lib/flagpost-agent/outbox.db") as box:
        assert counts == box.runs.counts()
    assert counts["run_updates_pending"] == 8 and counts["log_lines_pending"] > 10
    text = run_agent("--root", str(root), "status").stdout
    assert "run reporting:   8 run updates" in text


def test_failed_execution_is_not_retried_from_the_same_state(
    tmp_path: Path, outbox: Outbox
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "app.conf").write_text("1\n")
    eng = engine(root, outbox)
    migration = _failing_migration(root)
    first = eng.run(migration)
    assert first.failed
    backups = root.parent / "state/backups"
    count = (len(outbox.runs.updates()), len(list(backups.iterdir())))

    # Periodic re-detection, nothing changed: no event, no run, no new backup.
    again = eng.run(migration, report_unchanged=False)
    assert again.detection is None and again.execution is None
    assert (len(outbox.runs.updates()), len(list(backups.iterdir()))) == count

    # Asked by the server: executed (and fails again).
    asked = eng.run(migration, report_unchanged=False, requested_by="a-1")
    assert asked.failed and asked.execution is not None
    assert len(list(backups.iterdir())) == count[1] + 1

    # The file's directory changed (e.g. the admin fixed permissions): retried on its own.
    root.chmod(0o700)
    retried = eng.run(migration, report_unchanged=False)
    assert retried.execution is not None
