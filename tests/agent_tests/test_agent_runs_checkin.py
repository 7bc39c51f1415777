"""Run updates, log lines and action acknowledgements through real check-ins (gRPC, port 0)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from agent_testlib import CREDENTIAL, FakeServer, signed_action

from agent import events, runlog
from agent.checkin import CheckInClient, CheckInResult
from agent.enroll import Credentials
from agent.outbox import Outbox
from flagpost.v1 import agent_pb2

FACTS = agent_pb2.HostFacts(hostname="h1", agent_version="0.1.0", config_version="4")


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.db") as box:
        yield box


def cycle(
    server: FakeServer,
    outbox: Outbox,
    *,
    max_events: int = 200,
    max_log_lines: int = 500,
    max_bytes: int = 1_000_000,
) -> CheckInResult:
    credentials = Credentials("agent-0001", CREDENTIAL, server.address)
    with CheckInClient(server.address, credentials, timedelta(seconds=5)) as client:
        return client.cycle(
            outbox,
            FACTS,
            max_events=max_events,
            max_bytes=max_bytes,
            max_chunks=50,
            max_log_lines=max_log_lines,
        )


def log_lines(outbox: Outbox, run_id: str, count: int, size: int = 10) -> None:
    log = runlog.RunLog(run_id)
    log.attach(outbox.runs)
    for n in range(count):
        log.source("executor").info(f"line {n} " + "x" * size, n=n)


def add_update(outbox: Outbox, run_id: str, update_id: str) -> agent_pb2.RunUpdate:
    update = agent_pb2.RunUpdate(
        update_id=update_id, run_id=run_id, state=agent_pb2.RUN_STATE_RUNNING
    )
    outbox.runs.add_update(update)
    return update


def test_updates_lines_and_events_travel_together_and_are_deleted_when_acked(
    fake_server: FakeServer, outbox: Outbox
) -> None:
    event = events.migration_event(
        event_type=events.DETECTION, status=events.SUCCESS, run_id="r1", message="m", system_info={}
    )
    outbox.add(event)
    add_update(outbox, "r1", "u1")
    add_update(outbox, "r1", "u2")
    log_lines(outbox, "r1", 3)
    log_lines(outbox, "r2", 2)

    result = cycle(fake_server, outbox)
    assert result.ok and result.requests == 1
    [request] = fake_server.checkins
    assert [u.update_id for u in request.run_updates] == ["u1", "u2"]
    assert [(line.run_id, line.seq) for line in request.log_lines] == [
        ("r1", 1),
        ("r1", 2),
        ("r1", 3),
        ("r2", 1),
        ("r2", 2),
    ]
    assert [e.event_id for e in request.events] == [event.event_id]
    assert outbox.depth() == 0
    counts = outbox.runs.counts()
    assert counts["run_updates_pending"] == 0 and counts["log_lines_pending"] == 0
    assert [line.seq for line in fake_server.lines_of("r1")] == [1, 2, 3]


def test_lines_are_chunked_by_count_and_bytes(fake_server: FakeServer, outbox: Outbox) -> None:
    log_lines(outbox, "r", 25)
    assert cycle(fake_server, outbox, max_log_lines=10).ok
    assert [len(r.log_lines) for r in fake_server.checkins] == [10, 10, 5]
    assert [line.seq for line in fake_server.lines_of("r")] == list(range(1, 26))

    fake_server.checkins.clear()
    log_lines(outbox, "big", 12, size=900)
    assert cycle(fake_server, outbox, max_bytes=4000).ok
    assert all(r.ByteSize() < 4000 + 200 for r in fake_server.checkins)
    assert len(fake_server.checkins) >= 3
    assert [line.seq for line in fake_server.lines_of("big")] == list(range(1, 13))
    assert outbox.runs.counts()["log_lines_pending"] == 0


def test_a_server_that_ignores_runs_keeps_them_and_still_takes_events(
    fake_server: FakeServer, outbox: Outbox
) -> None:
    fake_server.ack_runs = False
    add_update(outbox, "r", "u1")
    log_lines(outbox, "r", 2)
    for n in range(3):
        outbox.add(
            events.migration_event(
                event_type=events.DETECTION,
                status=events.SUCCESS,
                run_id="r",
                message=f"{n}",
                system_info={},
            )
        )
    result = cycle(fake_server, outbox, max_events=1)
    assert result.ok and result.acked == 3 and outbox.depth() == 0
    # Unacknowledged updates and lines are kept, and not resent in every chunk of this cycle.
    counts = outbox.runs.counts()
    assert counts["run_updates_pending"] == 1 and counts["log_lines_pending"] == 2
    assert sum(len(r.run_updates) for r in fake_server.checkins) == 1
    assert not result.more


def test_rejected_run_update_is_quarantined_with_a_notice(
    fake_server: FakeServer, outbox: Outbox
) -> None:
    add_update(outbox, "r", "u1")
    add_update(outbox, "r", "u-bad")
    add_update(outbox, "r", "u3")
    fake_server.reject_update_ids = {"u-bad"}
    result = cycle(fake_server, outbox)
    assert result.ok and result.quarantined == 1
    assert sorted(fake_server.stored_updates) == ["u1", "u3"]
    counts = outbox.runs.counts()
    assert counts["run_updates_pending"] == 0 and counts["run_updates_quarantined"] == 1
    [notice] = fake_server.stored.values()
    assert notice.event_type == events.AGENT_NOTICE and notice.status == events.WARNING
    assert "u-bad" in notice.message and "run_updates[1].state" in notice.message


def test_actions_are_acknowledged_in_the_next_checkin_and_never_run_twice(
    fake_server: FakeServer, outbox: Outbox
) -> None:
    action = signed_action("a-1", "run_migration")
    fake_server.actions = [action]
    first = cycle(fake_server, outbox)
    assert [a.action_id for a in first.actions] == ["a-1"]
    assert outbox.runs.pending_action_acks() == ["a-1"]  # durable until sent

    second = cycle(fake_server, outbox)
    assert second.actions == ()
    assert list(fake_server.checkins[-1].acknowledged_action_ids) == ["a-1"]
    assert outbox.runs.pending_action_acks() == []

    # Delivered again after the server had our ack (a real server never does that): handed on
    # as a possible replay (agent.actions refuses it: its nonce is used) and acknowledged again.
    fake_server.actions = [action]
    third = cycle(fake_server, outbox)
    assert [a.action_id for a in third.actions] == ["a-1"]
    cycle(fake_server, outbox)
    assert list(fake_server.checkins[-1].acknowledged_action_ids) == ["a-1"]
    assert fake_server.action_acks == ["a-1", "a-1"]


def test_an_action_redelivered_before_our_ack_is_acknowledged_not_handed_on(
    outbox: Outbox,
) -> None:
    action = signed_action("a-2", "run_migration")
    assert [a.action_id for a in outbox.runs.receive_actions([action])] == ["a-2"]
    assert outbox.runs.receive_actions([action]) == []  # our ack has not reached the server
    assert outbox.runs.pending_action_acks() == ["a-2"]


def test_failed_checkin_keeps_action_acks(outbox: Outbox) -> None:
    outbox.runs.receive_actions([signed_action("a-9", "cancel_run", {"run_id": "r"})])
    down = FakeServer(address="127.0.0.1:1")
    assert not cycle(down, outbox).ok
    assert outbox.runs.pending_action_acks() == ["a-9"]


def test_run_data_never_crowds_out_an_event(fake_server: FakeServer, outbox: Outbox) -> None:
    """An event that fits the byte budget is sent (not quarantined as oversized) however much
    run data is waiting; run data fills what the events leave."""
    log_lines(outbox, "r", 20, size=500)
    for n in range(12):  # ~5 KB of run updates, more than one request's budget
        outbox.runs.add_update(
            agent_pb2.RunUpdate(update_id=f"u{n:02d}", run_id="r", error_message="x" * 400)
        )
    event = events.migration_event(
        event_type=events.EXECUTION,
        status=events.FAILED,
        run_id="r",
        message="m",
        error_message="e" * 3000,
        system_info={},
    )
    outbox.add(event)
    assert cycle(fake_server, outbox, max_bytes=4000).ok
    assert outbox.quarantined() == [] and event.event_id in fake_server.stored
    assert [line.seq for line in fake_server.lines_of("r")] == list(range(1, 21))
    assert len(fake_server.stored_updates) == 12
    assert all(r.ByteSize() < 4000 + 200 for r in fake_server.checkins)
