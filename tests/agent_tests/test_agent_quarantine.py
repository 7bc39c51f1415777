"""Quarantine: a rejected event is set aside, listed by status, reported as a warning notice
exactly once, and never blocks the queue; a rejected notice is set aside silently (no loop)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from agent_testlib import CREDENTIAL, FakeServer

from agent import events
from agent.checkin import CheckInClient
from agent.enroll import Credentials
from agent.outbox import Outbox
from flagpost.v1 import agent_pb2

FACTS = agent_pb2.HostFacts(hostname="h1", agent_version="0.1.0", config_version="4")


def make_event(message: str = "ok") -> agent_pb2.MigrationEvent:
    return events.migration_event(
        event_type=events.EXECUTION,
        status=events.SUCCESS,
        run_id="0190a0c4-0000-7000-8000-000000000001",
        message=message,
        system_info={},
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.db") as box:
        yield box


def cycle(server: FakeServer, outbox: Outbox, max_events: int = 200):  # type: ignore[no-untyped-def]
    credentials = Credentials("agent-0001", CREDENTIAL, server.address)
    with CheckInClient(server.address, credentials, timedelta(seconds=5)) as client:
        return client.cycle(
            outbox, FACTS, max_events=max_events, max_bytes=1_000_000, max_chunks=50
        )


def test_quarantine_queues_one_notice_atomically(outbox: Outbox) -> None:
    bad = make_event("bad one")
    outbox.add(bad)
    notice = outbox.quarantine(bad.event_id, "server rejected it: events[0].status: unknown")
    assert notice is not None
    assert notice.event_type == agent_pb2.EVENT_TYPE_AGENT_NOTICE
    assert notice.status == agent_pb2.EVENT_STATUS_WARNING
    assert bad.event_id in notice.message and "events[0].status: unknown" in notice.message
    assert "migration_execution_success 'bad one'" in notice.error_message
    assert notice.run_id == "" and notice.system_info["hostname"]
    # Quarantining again (e.g. the same rejection seen twice) adds no second notice.
    assert outbox.quarantine(bad.event_id, "again") is None
    assert [e.event_id for e in outbox.events()] == [bad.event_id, notice.event_id]
    # A notice that is itself rejected is set aside silently.
    assert outbox.quarantine(notice.event_id, "notices not accepted") is None
    assert outbox.depth() == 0
    assert [q.event_id for q in outbox.quarantined()] == [bad.event_id, notice.event_id]


def test_rejected_event_reported_as_warning_and_queue_flows(
    fake_server: FakeServer, outbox: Outbox
) -> None:
    added = [make_event(f"e{i}") for i in range(5)]
    for event in added:
        outbox.add(event)
    fake_server.reject_event_ids = {added[1].event_id}
    result = cycle(fake_server, outbox)
    assert result.ok and result.quarantined == 1
    assert outbox.depth() == 0
    stored = list(fake_server.stored.values())
    assert [e.event_id for e in stored[:4]] == [e.event_id for i, e in enumerate(added) if i != 1]
    [notice] = stored[4:]
    assert notice.event_type == agent_pb2.EVENT_TYPE_AGENT_NOTICE
    assert notice.status == agent_pb2.EVENT_STATUS_WARNING
    assert added[1].event_id in notice.message
    assert "events[1].occurred_at: timestamp out of range" in notice.message
    [quarantined] = outbox.quarantined()
    assert quarantined.event_id == added[1].event_id


def test_rejected_notice_is_quarantined_silently(fake_server: FakeServer, outbox: Outbox) -> None:
    """A server that accepts no notices at all: no loop, nothing blocked."""
    first, second = make_event("first"), make_event("second")
    outbox.add(first)
    outbox.add(second)
    fake_server.reject_event_ids = {first.event_id}
    fake_server.reject_event_types = {agent_pb2.EVENT_TYPE_AGENT_NOTICE}
    result = cycle(fake_server, outbox)
    assert result.ok and result.quarantined == 2
    assert list(fake_server.stored) == [second.event_id]
    quarantined = outbox.quarantined()
    assert quarantined[0].event_id == first.event_id
    assert "set aside" in quarantined[1].summary and "event_type" in quarantined[1].reason
    assert outbox.depth() == 0 and len(outbox.events()) == 2
    # Later cycles send nothing more: the notice does not come back.
    later = make_event("later")
    outbox.add(later)
    assert cycle(fake_server, outbox).ok
    assert list(fake_server.stored) == [second.event_id, later.event_id]
    assert len(outbox.quarantined()) == 2
    assert len(fake_server.checkins) <= 5
