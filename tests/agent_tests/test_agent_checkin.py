"""Check-ins against a real gRPC server on port 0: ack, chunking, quarantine, retry hints."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from agent_testlib import CREDENTIAL, FakeServer

from agent import events
from agent.checkin import CheckInClient
from agent.enroll import Credentials
from agent.outbox import Outbox
from flagpost.v1 import agent_pb2

FACTS = agent_pb2.HostFacts(hostname="h1", agent_version="0.1.0", config_version="4")


def make_event(size: int = 0) -> agent_pb2.MigrationEvent:
    return events.migration_event(
        event_type=events.EXECUTION,
        status=events.SUCCESS,
        run_id="r",
        message="ok",
        error_message="y" * size,
        system_info={},
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.db") as box:
        yield box


def client(server: FakeServer, credential: str = CREDENTIAL) -> CheckInClient:
    return CheckInClient(
        server.address, Credentials("agent-0001", credential, server.address), timedelta(seconds=5)
    )


def cycle(
    server: FakeServer,
    outbox: Outbox,
    *,
    max_events: int = 200,
    max_bytes: int = 1_000_000,
    credential: str = CREDENTIAL,
):  # type: ignore[no-untyped-def]
    with client(server, credential) as c:
        return c.cycle(outbox, FACTS, max_events=max_events, max_bytes=max_bytes, max_chunks=50)


def test_heartbeat_carries_bearer_and_facts(fake_server: FakeServer, outbox: Outbox) -> None:
    fake_server.next_checkin_seconds = 42
    result = cycle(fake_server, outbox)
    assert result.ok and result.requests == 1 and result.sent == 0
    assert result.next_interval == timedelta(seconds=42)
    [request] = fake_server.checkins
    assert request.agent_id == "agent-0001" and request.facts.hostname == "h1"
    assert fake_server.metadata[0]["authorization"] == f"Bearer {CREDENTIAL}"
    assert outbox.get_state("last_checkin_at")


def test_backlog_drains_in_chunks(fake_server: FakeServer, outbox: Outbox) -> None:
    added = [make_event() for _ in range(25)]
    for event in added:
        outbox.add(event)
    result = cycle(fake_server, outbox, max_events=10)
    assert result.ok and result.acked == 25 and outbox.depth() == 0
    assert [len(r.events) for r in fake_server.checkins] == [10, 10, 5]
    assert list(fake_server.stored) == [e.event_id for e in added]


def test_byte_budget_splits_requests(fake_server: FakeServer, outbox: Outbox) -> None:
    for _ in range(6):
        outbox.add(make_event(2000))
    result = cycle(fake_server, outbox, max_bytes=5000)
    assert result.ok and outbox.depth() == 0
    assert all(len(r.events) <= 2 for r in fake_server.checkins)
    assert all(r.ByteSize() < 5000 + 200 for r in fake_server.checkins)


def test_unacknowledged_events_stay(fake_server: FakeServer, outbox: Outbox) -> None:
    fake_server.ack_none = True
    outbox.add(make_event())
    result = cycle(fake_server, outbox)
    assert result.ok and result.acked == 0
    assert outbox.depth() == 1
    assert len(fake_server.checkins) == 1  # no hot loop on a server that acks nothing


def test_invalid_event_is_quarantined_and_rest_delivered(
    fake_server: FakeServer, outbox: Outbox
) -> None:
    added = [make_event() for _ in range(4)]
    for event in added:
        outbox.add(event)
    fake_server.reject_event_ids = {added[2].event_id}
    result = cycle(fake_server, outbox)
    assert result.ok and result.quarantined == 1 and result.acked == 4  # 3 + the notice
    assert outbox.depth() == 0
    [quarantined] = outbox.quarantined()
    assert quarantined.event_id == added[2].event_id
    assert "events[2].occurred_at" in quarantined.reason
    assert added[2].event_id not in fake_server.stored


def test_resource_exhausted_honours_retry_after(fake_server: FakeServer, outbox: Outbox) -> None:
    outbox.add(make_event())
    fake_server.failures.append(
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "shedding load", (("retry-after-ms", "2500"),))
    )
    result = cycle(fake_server, outbox)
    assert not result.ok and not result.auth_failed
    assert result.code == "RESOURCE_EXHAUSTED"
    assert result.retry_after == timedelta(milliseconds=2500)
    assert outbox.depth() == 1
    assert outbox.oldest(1, 10_000)[0].attempts == 1
    assert "RESOURCE_EXHAUSTED" in outbox.get_state("last_error")
    assert cycle(fake_server, outbox).ok and outbox.depth() == 0


def test_wrong_credential_is_auth_failure(fake_server: FakeServer, outbox: Outbox) -> None:
    outbox.add(make_event())
    result = cycle(fake_server, outbox, credential="wrong")
    assert not result.ok and result.auth_failed and result.code == "UNAUTHENTICATED"
    assert outbox.depth() == 1


def test_server_down_keeps_events(outbox: Outbox) -> None:
    outbox.add(make_event())
    down = FakeServer(address="127.0.0.1:1")
    result = cycle(down, outbox)
    assert not result.ok and result.code == "UNAVAILABLE"
    assert outbox.depth() == 1
