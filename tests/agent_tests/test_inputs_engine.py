"""Runs that need inputs, in the engine on a real filesystem: AWAITING_INPUT listing every
missing input, a wrong answer asked again with its error, right answers resume the run, the
secrets land only in the 0600 secrets file, timeout, cancel, restart, stale answers."""

from __future__ import annotations

import base64
import json
import logging
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agent_testlib import AGENT_TOKEN, REPO, run_agent, snapshot, write_legacy

from agent import events, runs
from agent.inputs import (
    ANSWERED,
    CANCELLED,
    STOPPED,
    TIMED_OUT,
    InputBroker,
    Inputs,
    answers_from_params,
)
from agent.migrations import MigrationEngine, RunResult, make_plan
from agent.migrations.gather import duration_text
from agent.migrations.model import DetectionError, DiskView, InputSpec, WriteFile
from agent.migrations.verifier import check_verifier, make_verifier, parse_verifier
from agent.migrations.waiting import WaitingRun, WaitingRuns
from agent.outbox import Outbox
from agent.runs import RunControl
from agent.specs.builtin import (
    agent_config_migration,
    legacy_config_with_secrets,
    secrets_file,
)
from flagpost.v1 import agent_pb2

DB_PASSWORD = "db-pw-Unique-7f3a9c"
UPSTREAM_TOKEN = "upstream-tok-Unique-41be"


def secret_legacy(root: Path) -> Path:
    text = legacy_config_with_secrets(
        server_url="https://flagpost.example:8443",
        agent_token=AGENT_TOKEN,
        database_url="postgresql://fleet@db.example/fleet",
        database_password=DB_PASSWORD,
        upstream_token=UPSTREAM_TOKEN,
        upstream_url="https://upstream.example/api",
    )
    return write_legacy(root, text)


@dataclass
class Running:
    """``engine.run`` of the built-in chain on a thread with its own outbox connection (SQLite
    connections belong to one thread); the test reads the outbox through its own."""

    root: Path
    state: Path
    timeout: timedelta = timedelta(days=1)
    wait_for_input: bool = True  # False: like `once` and `migrate`
    broker: InputBroker = field(default_factory=InputBroker)
    stop: threading.Event = field(default_factory=threading.Event)
    control: RunControl = field(init=False)
    thread: threading.Thread | None = None
    result: list[RunResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.control = RunControl(self.stop)

    def _main(self) -> None:
        with Outbox(self.state / "outbox.db") as box:
            engine = MigrationEngine(
                self.root,
                self.state,
                box,
                control=self.control,
                should_stop=self.stop.is_set,
                inputs=self.broker,
                input_timeout=self.timeout,
            )
            self.result.append(
                engine.run(agent_config_migration(), wait_for_input=self.wait_for_input)
            )

    def start(self) -> Running:
        self.thread = threading.Thread(target=self._main)
        self.thread.start()
        return self

    def join(self) -> RunResult:
        assert self.thread is not None
        self.thread.join(30)
        assert not self.thread.is_alive()
        return self.result[0]


def updates_of(state: Path, run_id: str) -> list[agent_pb2.RunUpdate]:
    with Outbox(state / "outbox.db") as box:
        return box.runs.updates(run_id)


def events_of(state: Path) -> list[agent_pb2.MigrationEvent]:
    with Outbox(state / "outbox.db") as box:
        return [item.message() for item in box.oldest(1000, 100_000_000)]


def lines_of(state: Path, run_id: str) -> list[agent_pb2.LogLine]:
    with Outbox(state / "outbox.db") as box:
        return box.runs.lines(run_id)


def waiting_update(state: Path, after: str = "", timeout: float = 20) -> agent_pb2.RunUpdate:
    """The newest AWAITING_INPUT update with a request id other than ``after``."""
    deadline = datetime.now(UTC) + timedelta(seconds=timeout)
    while True:
        if (state / "outbox.db").exists():
            with Outbox(state / "outbox.db") as box:
                found = [u for u in box.runs.updates() if u.state == runs.AWAITING_INPUT]
        else:
            found = []
        if found and found[-1].input_request.request_id != after:
            return found[-1]
        assert datetime.now(UTC) < deadline, "no AWAITING_INPUT update"
        threading.Event().wait(0.02)


def asks_of(state: Path) -> list[agent_pb2.RunUpdate]:
    """Every AWAITING_INPUT update so far, in order."""
    if not (state / "outbox.db").exists():
        return []
    with Outbox(state / "outbox.db") as box:
        return [u for u in box.runs.updates() if u.state == runs.AWAITING_INPUT]


def nth_ask(state: Path, count: int, timeout: float = 20) -> agent_pb2.RunUpdate:
    """The ``count``-th AWAITING_INPUT update (1-based), once there is one."""
    deadline = datetime.now(UTC) + timedelta(seconds=timeout)
    while len(found := asks_of(state)) < count:
        assert datetime.now(UTC) < deadline, f"no AWAITING_INPUT update #{count}"
        threading.Event().wait(0.02)
    return found[count - 1]


def fields_of(update: agent_pb2.RunUpdate) -> list[tuple[str, str, bool, str]]:
    return [(f.name, f.label, f.secret, f.error) for f in update.input_request.fields]


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    root, state = tmp_path / "root", tmp_path / "state"
    secret_legacy(root)
    return root, state


def test_two_missing_inputs_then_wrong_then_right(
    world: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    root, state = world
    before = snapshot(root)
    running = Running(root, state).start()
    first = waiting_update(state)
    # One request listing both inputs; nothing backed up or changed yet.
    assert fields_of(first) == [
        ("database_password", "Database password", True, ""),
        ("upstream_token", "Upstream API token", True, ""),
    ]
    assert first.steps_done == 0 and [s.status for s in first.steps] == ["pending"] * 3
    assert snapshot(root) == before
    assert not (state / "backups").exists() and not (state / "migration-journal.json").exists()
    run_id = first.run_id
    request_id = first.input_request.request_id
    assert running.broker.waiting(run_id) == request_id

    # One wrong, one right: only the wrong one is asked again, with its error.
    answers = {"database_password": "nope", "upstream_token": UPSTREAM_TOKEN}
    assert running.broker.deliver(run_id, request_id, answers) == ""
    second = waiting_update(state, after=request_id)
    assert second.run_id == run_id
    assert second.input_request.request_id != request_id
    assert fields_of(second) == [
        ("database_password", "Database password", True, "wrong password for database 'fleet'")
    ]
    assert snapshot(root) == before
    # The old request is refused now (no value in the reason).
    refusal = running.broker.deliver(run_id, request_id, {"database_password": DB_PASSWORD})
    assert "no longer waits for request" in refusal and DB_PASSWORD not in refusal

    second_id = second.input_request.request_id
    assert running.broker.deliver(run_id, second_id, {"database_password": DB_PASSWORD}) == ""
    result = running.join()

    assert not result.failed and result.run_id == run_id
    updates = updates_of(state, run_id)
    states = [u.state for u in updates]
    assert states[0] == runs.RUNNING
    assert states.count(runs.AWAITING_INPUT) == 2
    resumed_at = max(i for i, s in enumerate(states) if s == runs.AWAITING_INPUT) + 1
    assert states[resumed_at] == runs.RUNNING
    assert not updates[resumed_at].HasField("input_request")
    assert states[-1] == runs.SUCCEEDED
    assert all(s == runs.RUNNING for s in states[resumed_at:-1])

    secrets = secrets_file(root)
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert json.loads(secrets.read_text()) == {
        "agent_token": AGENT_TOKEN,
        "database_password": DB_PASSWORD,
        "upstream_token": UPSTREAM_TOKEN,
    }
    config = json.loads((root / "etc/flagpost/agent.json").read_text())
    assert config["config_version"] == 4
    assert config["database"] == {"url": "postgresql://fleet@db.example/fleet"}
    assert config["upstream"] == {"url": "https://upstream.example/api"}

    # The run log says which fields arrived, never a value.
    messages = [line.message for line in lines_of(state, run_id)]
    assert "Waiting for input: database_password, upstream_token" in messages
    assert "Input received for fields database_password, upstream_token" in messages
    assert "Input received for fields database_password" in messages
    assert any("wrong password for database 'fleet'" in m for m in messages)
    assert not (state / "waiting-runs.json").exists()

    # The secrets appear in no other file under the root and the state dir (outbox, its WAL,
    # backups, journal), in no captured log record, event, run update or run-log line.
    assert_secrets_only_in(root, state, secrets)
    texts = [caplog.text]
    texts += [str(e) for e in events_of(state)]
    texts += [str(u) for u in updates] + [str(line) for line in lines_of(state, run_id)]
    for secret in (DB_PASSWORD, UPSTREAM_TOKEN):
        for form in (secret, base64.b64encode(secret.encode()).decode()):
            assert not any(form in text for text in texts)


def assert_secrets_only_in(root: Path, state: Path, allowed: Path) -> None:
    forms = [
        form
        for secret in (DB_PASSWORD, UPSTREAM_TOKEN)
        for form in (secret.encode(), base64.b64encode(secret.encode()))
    ]
    holders = sorted(
        str(path)
        for base in (root, state)
        for path in base.rglob("*")
        if path.is_file() and any(form in path.read_bytes() for form in forms)
    )
    assert holders == [str(allowed)]


def test_timeout_fails_the_run_with_the_reason(world: tuple[Path, Path]) -> None:
    root, state = world
    before = snapshot(root)
    result = Running(root, state, timeout=timedelta(seconds=0.5)).start().join()
    last = updates_of(state, result.run_id)[-1]
    assert result.failed
    assert last.state == runs.FAILED
    assert last.error_message == (
        "Migration 1 -> 4 failed: no input within 0.5 s for: database_password, upstream_token; "
        "nothing was changed"
    )
    assert [s.status for s in last.steps] == ["skipped"] * 3
    assert result.execution is not None
    assert result.execution.status == events.FAILED
    assert result.execution.error_detail.exception_type == "InputTimeout"
    assert snapshot(root) == before
    assert not (state / "waiting-runs.json").exists()


def test_timeouts_read_as_people_write_them() -> None:
    assert duration_text(timedelta(days=1)) == "24 h"
    assert duration_text(timedelta(minutes=90)) == "90 min"
    assert duration_text(timedelta(seconds=1.5)) == "1.5 s"


def test_cancel_while_waiting(world: tuple[Path, Path]) -> None:
    root, state = world
    before = snapshot(root)
    running = Running(root, state).start()
    update = waiting_update(state)
    assert running.control.cancel(update.run_id, "cancelled by request (action a1)")
    result = running.join()
    last = updates_of(state, result.run_id)[-1]
    assert last.state == runs.CANCELLED
    assert "cancelled while waiting for input" in last.error_message
    assert result.execution is not None
    assert result.execution.error_detail.exception_type == "RunCancelled"
    assert "action a1" in result.execution.error_message
    assert snapshot(root) == before
    assert running.broker.waiting(update.run_id) is None
    assert "not waiting" in running.broker.deliver(
        update.run_id, update.input_request.request_id, {"database_password": DB_PASSWORD}
    )


def test_restart_while_waiting_resumes_the_same_run(world: tuple[Path, Path]) -> None:
    root, state = world
    running = Running(root, state).start()
    first = waiting_update(state)
    running.stop.set()  # the agent stops while the run waits
    stopped = running.join()
    assert stopped.waiting and not stopped.failed
    record = WaitingRuns(state).get("agent-config")
    assert record is not None and record.run_id == first.run_id
    assert record.fields == ("database_password", "upstream_token")
    assert record.request_id == first.input_request.request_id
    waiting_file = state / "waiting-runs.json"
    assert stat.S_IMODE(waiting_file.stat().st_mode) == 0o600

    # A new process: same run id, asks for the same fields again with the same request id, so
    # answers an admin sent for it meanwhile are accepted.
    again = Running(root, state).start()
    second = nth_ask(state, 2)
    assert second.run_id == first.run_id
    assert second.input_request.request_id == first.input_request.request_id
    assert [f.name for f in second.input_request.fields] == ["database_password", "upstream_token"]
    answers = {"database_password": DB_PASSWORD, "upstream_token": UPSTREAM_TOKEN}
    assert again.broker.deliver(second.run_id, first.input_request.request_id, answers) == ""
    result = again.join()
    assert result.run_id == first.run_id and not result.failed
    assert updates_of(state, first.run_id)[-1].state == runs.SUCCEEDED
    # The detection was reported once, before the restart; the execution once, after.
    kinds = [(e.event_type, e.status) for e in events_of(state)]
    assert kinds.count((events.DETECTION, events.SUCCESS)) == 1
    assert kinds.count((events.EXECUTION, events.SUCCESS)) == 1
    seqs = [line.seq for line in lines_of(state, first.run_id)]
    assert seqs == list(range(1, len(seqs) + 1))  # one gap-free run log across the restart
    assert not waiting_file.exists()
    assert_secrets_only_in(root, state, secrets_file(root))


def test_answers_delivered_before_the_resumed_run_asks_are_kept(world: tuple[Path, Path]) -> None:
    """The daemon re-opens recorded asks before its first check-in: answers that arrive before
    the resumed run asks again are handed to it."""
    root, state = world
    running = Running(root, state).start()
    first = waiting_update(state)
    running.stop.set()
    assert running.join().waiting
    broker = InputBroker()
    with Outbox(state / "outbox.db") as box:
        engine = MigrationEngine(root, state, box, inputs=broker)
        assert engine.reopen_waiting(["agent-config"]) == 1
        assert engine.reopen_waiting(["other-migration"]) == 0
    request_id = first.input_request.request_id
    answers = {"database_password": DB_PASSWORD, "upstream_token": UPSTREAM_TOKEN}
    assert broker.deliver(first.run_id, request_id, answers) == ""
    result = Running(root, state, broker=broker).start().join()
    assert result.run_id == first.run_id and not result.failed
    assert updates_of(state, first.run_id)[-1].state == runs.SUCCEEDED


def test_restart_asking_other_fields_makes_a_new_request(world: tuple[Path, Path]) -> None:
    root, state = world
    running = Running(root, state).start()
    first = waiting_update(state)
    running.stop.set()
    assert running.join().waiting
    # While the agent was down the [upstream] section was removed: only one field is asked.
    conf = root / "etc/aggregator/agent.conf"
    text = conf.read_text()
    conf.write_text(text[: text.index("\n[upstream]")] + "\n")
    again = Running(root, state).start()
    second = nth_ask(state, 2)
    assert second.run_id == first.run_id
    assert [f.name for f in second.input_request.fields] == ["database_password"]
    assert second.input_request.request_id != first.input_request.request_id
    stale = again.broker.deliver(
        first.run_id, first.input_request.request_id, {"database_password": DB_PASSWORD}
    )
    assert "no longer waits for request" in stale
    fresh = second.input_request.request_id
    assert again.broker.deliver(first.run_id, fresh, {"database_password": DB_PASSWORD}) == ""
    assert not again.join().failed


def test_a_resumed_run_that_needs_no_input_any_more_is_never_resumed_again(
    world: tuple[Path, Path],
) -> None:
    root, state = world
    running = Running(root, state).start()
    first = waiting_update(state)
    running.stop.set()
    assert running.join().waiting
    write_legacy(root)  # the [database] and [upstream] sections were removed while it waited
    result = Running(root, state).start().join()
    assert result.run_id == first.run_id and not result.failed and not result.waiting
    assert updates_of(state, first.run_id)[-1].state == runs.SUCCEEDED
    assert not (state / "waiting-runs.json").exists()
    # The next detection is a new, automatic one: not the finished run, not FAILED.
    later = Running(root, state).start().join()
    assert later.run_id != first.run_id and not later.failed
    assert later.detection is not None and later.detection.status == events.NOT_NEEDED
    assert updates_of(state, first.run_id)[-1].state == runs.SUCCEEDED
    assert updates_of(state, later.run_id) == []


def test_once_mode_times_out_a_waiting_run(world: tuple[Path, Path]) -> None:
    """`once` and `migrate` never wait, so the deadline is checked before they leave a run
    waiting: past it the run fails with the daemon's reason."""
    root, state = world
    before = snapshot(root)
    hour = timedelta(hours=1)
    first = Running(root, state, timeout=hour, wait_for_input=False).start().join()
    assert first.waiting and not first.failed
    records = WaitingRuns(state)
    record = records.get("agent-config")
    assert record is not None
    # Still within the deadline: left waiting again, same run, same request.
    assert Running(root, state, timeout=hour, wait_for_input=False).start().join().waiting
    assert asks_of(state)[-1].input_request.request_id == record.request_id
    long_ago = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    records.save(replace(record, waiting_since=long_ago))
    result = Running(root, state, timeout=hour, wait_for_input=False).start().join()
    assert result.run_id == record.run_id and result.failed and not result.waiting
    last = updates_of(state, record.run_id)[-1]
    assert last.state == runs.FAILED
    assert last.error_message == (
        "Migration 1 -> 4 failed: no input within 1 h for: database_password, upstream_token; "
        "nothing was changed"
    )
    assert result.execution is not None
    assert result.execution.error_detail.exception_type == "InputTimeout"
    assert snapshot(root) == before
    assert not (state / "waiting-runs.json").exists()


@pytest.mark.parametrize("wait_for_input", [True, False], ids=["daemon", "once"])
def test_a_waiting_run_cancelled_while_not_in_progress_ends_cancelled_when_resumed(
    world: tuple[Path, Path], wait_for_input: bool
) -> None:
    root, state = world
    before = snapshot(root)
    first = Running(root, state, wait_for_input=False).start().join()
    assert first.waiting
    with Outbox(state / "outbox.db") as box:
        engine = MigrationEngine(root, state, box)
        assert engine.cancel_waiting("no-such-run", "x") is None
        reason = "cancelled by request (action a-9)"
        assert engine.cancel_waiting(first.run_id, reason) == "agent-config"
        assert engine.waiting_run_id("agent-config") == first.run_id
    asked = len(asks_of(state))
    result = Running(root, state, wait_for_input=wait_for_input).start().join()
    assert result.run_id == first.run_id and not result.waiting
    assert len(asks_of(state)) == asked  # not asked again
    last = updates_of(state, first.run_id)[-1]
    assert last.state == runs.CANCELLED
    assert last.error_message == (
        "Migration 1 -> 4 cancelled while waiting for input; nothing was changed"
    )
    assert result.execution is not None
    assert result.execution.error_detail.exception_type == "RunCancelled"
    assert "action a-9" in result.execution.error_message
    assert snapshot(root) == before
    assert not (state / "waiting-runs.json").exists()


def test_a_cancel_mark_survives_a_later_save_of_the_same_run(tmp_path: Path) -> None:
    records = WaitingRuns(tmp_path)
    now = datetime.now(UTC).isoformat()
    record = WaitingRun("m", "r1", now, now, "d1", request_id="q1", fields=("a",))
    records.save(record)
    assert records.cancel("r1", "cancelled by request (action a1)") is not None
    records.save(replace(record, request_id="q2"))  # the engine's copy, read before the mark
    stored = records.get("m")
    assert stored is not None
    assert (stored.request_id, stored.cancelled) == ("q2", "cancelled by request (action a1)")
    records.save(replace(record, run_id="r2"))  # another run: no mark
    stored = records.get("m")
    assert stored is not None and stored.cancelled == ""
    records.clear("m", "r1")  # not that run any more: kept
    assert records.get("m") is not None
    records.clear("m", "r2")
    assert records.get("m") is None and not (tmp_path / "waiting-runs.json").exists()


def test_resume_log_says_which_process_left_the_run_waiting(world: tuple[Path, Path]) -> None:
    """`once` resumes a run left by an earlier process by design (no warning, no "restarted"
    claim when this very process left it waiting); a daemon resuming one warns."""
    root, state = world
    migration = agent_config_migration()
    with Outbox(state / "outbox.db") as box:
        engine = MigrationEngine(root, state, box, inputs=InputBroker())
        first = engine.run(migration, wait_for_input=False)
        assert engine.run(migration, wait_for_input=False).waiting  # same process
        later = MigrationEngine(root, state, box, inputs=InputBroker())
        assert later.run(migration, wait_for_input=False).waiting  # a later `once`
    detector = [
        (line.level, line.message)
        for line in lines_of(state, first.run_id)
        if line.source == "detector" and "esum" in line.message
    ]
    assert detector[0] == ("INFO", "Resuming this run, which waits for input")
    level, message = detector[1]
    assert level == "INFO" and "left waiting for input by an earlier agent process" in message
    assert not any("agent restarted while" in m for _, m in detector)

    running = Running(root, state, timeout=timedelta(seconds=60)).start()
    nth_ask(state, 4)
    running.stop.set()
    running.join()
    last = [line for line in lines_of(state, first.run_id) if line.source == "detector"][-3:]
    assert any(line.level == "WARNING" and "earlier agent process" in line.message for line in last)


def test_restart_after_the_deadline_fails_at_once(world: tuple[Path, Path]) -> None:
    root, state = world
    running = Running(root, state, timeout=timedelta(seconds=60)).start()
    waiting_update(state)
    running.stop.set()
    assert running.join().waiting
    records = WaitingRuns(state)
    record = records.get("agent-config")
    assert record is not None
    long_ago = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    records.save(replace(record, waiting_since=long_ago))
    result = Running(root, state, timeout=timedelta(seconds=60)).start().join()
    last = updates_of(state, record.run_id)[-1]
    assert result.run_id == record.run_id and result.failed
    assert last.state == runs.FAILED
    assert "no input within 1 min for: database_password, upstream_token" in last.error_message


def test_refusals_name_no_value() -> None:
    broker = InputBroker()
    assert "not waiting" in broker.deliver("r1", "q1", {"database_password": "s3cret"})
    broker.open("r1", "q1", ["database_password"])
    stale = broker.deliver("r1", "q0", {"database_password": "s3cret"})
    assert "no longer waits for request q0" in stale and "s3cret" not in stale
    unknown = broker.deliver("r1", "q1", {"other": "s3cret"})
    assert "did not ask for: other" in unknown and "s3cret" not in unknown
    assert "are not" in broker.deliver("r1", "q1", {"Bad Name": "s3cret"})
    assert "holds no input" in broker.deliver("r1", "q1", {})
    assert broker.deliver("r1", "q1", {"database_password": "s3cret"}) == ""
    assert "already answered" in broker.deliver("r1", "q1", {"database_password": "x"})
    outcome = broker.wait("r1", "q1", timeout=1, cancelled=lambda: False, stopping=lambda: False)
    assert outcome.kind == ANSWERED and dict(outcome.answers) == {"database_password": "s3cret"}
    assert "s3cret" not in repr(outcome) and "s3cret" not in str(outcome.answers)
    assert broker.waiting("r1") is None


def test_wait_ends_on_cancel_stop_and_timeout() -> None:
    broker = InputBroker()
    for kind, cancelled, stopping in (
        (CANCELLED, True, False),
        (STOPPED, False, True),
        (TIMED_OUT, False, False),
    ):
        broker.open("r", "q", ["a"])
        outcome = broker.wait(
            "r", "q", timeout=0.05, cancelled=lambda c=cancelled: c, stopping=lambda s=stopping: s
        )
        assert outcome.kind == kind and not outcome.answers


def test_provide_input_params() -> None:
    delivery = answers_from_params(
        {"run_id": "r", "request_id": "q", "input.database_password": "pw", "other": "x"}
    )
    assert (delivery.run_id, delivery.request_id) == ("r", "q")
    assert dict(delivery.answers) == {"database_password": "pw"}
    assert repr(delivery.answers) == "Inputs(database_password=***)"


def test_plan_lists_inputs_and_checks_given_values(world: tuple[Path, Path]) -> None:
    root, _state = world
    migration = agent_config_migration()
    plan = make_plan(migration, DiskView(root))
    assert [spec.name for spec in plan.missing] == ["database_password", "upstream_token"]
    assert plan.input_errors == {}
    checked = make_plan(
        migration, DiskView(root), inputs={"database_password": "x", "upstream_token": "y"}
    )
    assert set(checked.input_errors) == {"database_password", "upstream_token"}
    assert "upstream.example/api" in checked.input_errors["upstream_token"]
    right = make_plan(
        migration,
        DiskView(root),
        inputs=Inputs({"database_password": DB_PASSWORD, "upstream_token": UPSTREAM_TOKEN}),
    )
    assert right.missing == () and right.input_errors == {}


def test_config_without_sections_needs_no_input(tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    write_legacy(root)
    result = Running(root, state).start().join()
    states = [u.state for u in updates_of(state, result.run_id)]
    assert runs.AWAITING_INPUT not in states and states[-1] == runs.SUCCEEDED
    assert json.loads(secrets_file(root).read_text()) == {"agent_token": AGENT_TOKEN}


# The built-in spec's messages: the file as the spec names it, the line and the key (the
# wording is the spec language's since the Python chain became a spec; it was
# "agent.conf:5: unknown key 'bogus' in [upstream]" and the like).
LEGACY = "/etc/aggregator/agent.conf: not a valid version 1: "


@pytest.mark.parametrize(
    ("extra", "expected", "line"),
    [
        (
            "[database]\nurl = postgresql://fleet@db/fleet\n",
            "line 5: missing required key 'database.password_verifier' (required with 'database')",
            5,
        ),
        ("[cache]\nurl = x\n", "line 5: unknown key 'cache.url' (not in allow_only)", 5),
        (
            "[database]\nurl = postgresql://fleet:pw@db/fleet\npassword_verifier = {v}\n",
            "line 5: key 'database.url': must be postgresql://user@host/dbname, without a password",
            5,
        ),
        (
            "[database]\nurl = mysql://fleet@db/fleet\npassword_verifier = {v}\n",
            "line 5: key 'database.url': must be postgresql://user@host/dbname",
            5,
        ),
        (
            "[upstream]\ntoken_verifier = scrypt$3$8$1$AAAA$AAAA\n",
            "line 5: key 'upstream.token_verifier': invalid verifier: n must be a power of 2",
            5,
        ),
        (
            "[upstream]\nbogus = 1\n",
            "line 5: unknown key 'upstream.bogus' (not in allow_only)",
            5,
        ),
    ],
)
def test_section_errors_name_file_and_line(
    tmp_path: Path, extra: str, expected: str, line: int
) -> None:
    text = f"server_url = x\nagent_token = t\n\n{extra}".replace("{v}", make_verifier("pw", n=2))
    write_legacy(tmp_path, text)
    with pytest.raises(DetectionError) as info:
        agent_config_migration().detect(DiskView(tmp_path))
    assert info.value.message.startswith(LEGACY + expected)
    assert info.value.line == line
    assert info.value.path == tmp_path / "etc/aggregator/agent.conf"
    assert "pw" not in info.value.message.replace("password", "")


def test_verifier_cli_reads_the_secret_from_stdin(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent.migrations.verifier"],
        input="hunter2-unique\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    verifier = done.stdout.strip()
    assert "hunter2-unique" not in verifier
    assert check_verifier(verifier, "hunter2-unique")
    assert not check_verifier(verifier, "hunter2-unique ")
    assert parse_verifier(verifier).n == 2**14
    assert not check_verifier("not a verifier", "x")


def test_input_spec_validation() -> None:
    with pytest.raises(ValueError, match="must match"):
        InputSpec("Bad-Name", "label")
    with pytest.raises(ValueError, match="label must be 1 to 200"):
        InputSpec("ok", "x" * 201)


def test_migrate_command_does_not_wait(tmp_path: Path) -> None:
    """``flagpost-agent migrate`` has no server to answer: the run is left waiting (the daemon
    asks again at its start) and the command returns instead of blocking."""
    root = tmp_path / "root"
    secret_legacy(root)
    done = run_agent("--root", str(root), "migrate", timeout=60)
    assert done.returncode == 0, done.stderr
    state = root / "var/lib/flagpost-agent"
    record = WaitingRuns(state).get("agent-config")
    assert record is not None
    assert updates_of(state, record.run_id)[-1].state == runs.AWAITING_INPUT
    assert not secrets_file(root).exists()


def test_plan_repr_shows_no_file_contents(world: tuple[Path, Path]) -> None:
    root, _state = world
    values = {"database_password": DB_PASSWORD, "upstream_token": UPSTREAM_TOKEN}
    plan = make_plan(agent_config_migration(), DiskView(root), inputs=values)
    assert plan.missing == ()
    writes = [op for step in plan.steps for op in step.ops if isinstance(op, WriteFile)]
    assert any(DB_PASSWORD.encode() in op.data for op in writes)  # the plan does hold them
    text = repr(plan)
    assert "secrets.json" in text
    for secret in (DB_PASSWORD, UPSTREAM_TOKEN, AGENT_TOKEN):
        assert secret not in text
    assert repr(WriteFile(root / "x", b"s3cret", 0o600)) == (
        f"WriteFile(path={root / 'x'!r}, mode=384)"
    )
