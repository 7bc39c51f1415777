"""The SQLite outbox: durability, dedupe, chunking by count and bytes, ack, quarantine."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import events
from agent.outbox import Outbox
from flagpost.v1 import agent_pb2


def make_event(size: int = 0) -> agent_pb2.MigrationEvent:
    return events.migration_event(
        event_type=events.DETECTION,
        status=events.NOT_NEEDED,
        run_id="r",
        message="m",
        error_message="x" * size,
        system_info={"hostname": "h"},
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.db") as box:
        yield box


def test_settings_are_durable(tmp_path: Path, outbox: Outbox) -> None:
    db = sqlite3.connect(tmp_path / "outbox.db")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()
    assert outbox._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_add_is_idempotent_and_survives_reopen(tmp_path: Path) -> None:
    event = make_event()
    with Outbox(tmp_path / "o.db") as box:
        assert box.add(event) is True
        assert box.add(event) is False
        assert box.depth() == 1
    with Outbox(tmp_path / "o.db") as box:
        [stored] = box.events()
    assert stored == event


def test_chunking_by_count(outbox: Outbox) -> None:
    ids = [make_event() for _ in range(7)]
    for event in ids:
        outbox.add(event)
    chunk = outbox.oldest(limit=3, max_bytes=1_000_000)
    assert [c.event_id for c in chunk] == [e.event_id for e in ids[:3]]
    assert chunk[0].message() == ids[0]


def test_chunking_by_bytes_drains_everything(outbox: Outbox) -> None:
    added = [make_event(1000) for _ in range(10)]
    for event in added:
        outbox.add(event)
    size = len(added[0].SerializeToString()) + 6
    budget = size * 3 + size // 2  # room for 3 events, not 4
    seen: list[str] = []
    while outbox.depth():
        chunk = outbox.oldest(limit=100, max_bytes=budget)
        assert 1 <= len(chunk) <= 3
        assert sum(len(c.payload) + 6 for c in chunk) <= budget
        seen.extend(c.event_id for c in chunk)
        outbox.ack(c.event_id for c in chunk)
    assert seen == [e.event_id for e in added]


def test_oversized_event_is_quarantined_not_blocking(outbox: Outbox) -> None:
    big, small = make_event(5000), make_event()
    outbox.add(big)
    outbox.add(small)
    chunk = outbox.oldest(limit=10, max_bytes=1000)
    assert chunk[0].event_id == small.event_id
    [quarantined] = outbox.quarantined()
    assert quarantined.event_id == big.event_id
    assert "over the 1000 limit" in quarantined.reason
    assert outbox.contains(big.event_id)
    # The warning notice about it is queued behind the small event.
    [notice] = [c.message() for c in chunk[1:]]
    assert notice.event_type == agent_pb2.EVENT_TYPE_AGENT_NOTICE
    assert big.event_id in notice.message and "over the 1000 limit" in notice.message


def test_unreadable_payload_is_quarantined_not_blocking(outbox: Outbox, tmp_path: Path) -> None:
    good = make_event()
    outbox.add(good)
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        db.execute(
            "INSERT INTO outbox (event_id, payload, created_at) VALUES ('bad', x'ffff', 'now')"
        )
    db.close()
    chunk = outbox.oldest(limit=10, max_bytes=100_000)
    assert chunk[0].event_id == good.event_id
    assert [q.event_id for q in outbox.quarantined()] == ["bad"]


def test_ack_deletes_exactly_the_acked_ids(outbox: Outbox) -> None:
    added = [make_event() for _ in range(5)]
    for event in added:
        outbox.add(event)
    deleted = outbox.ack([added[1].event_id, added[3].event_id, "not-an-id"])
    assert deleted == 2
    remaining = [e.event_id for e in outbox.events()]
    assert remaining == [added[0].event_id, added[2].event_id, added[4].event_id]


def test_quarantine_and_state(outbox: Outbox) -> None:
    a, b = make_event(), make_event()
    outbox.add(a)
    outbox.add(b)
    notice = outbox.quarantine(a.event_id, "INVALID_ARGUMENT: events[0].x")
    assert notice is not None
    assert outbox.depth() == 2  # b, then the notice about a
    assert [c.event_id for c in outbox.oldest(10, 10_000)] == [b.event_id, notice.event_id]
    assert [q.reason for q in outbox.quarantined()] == ["INVALID_ARGUMENT: events[0].x"]
    outbox.record_attempt([b.event_id], "UNAVAILABLE")
    assert outbox.oldest(10, 10_000)[0].attempts == 1
    outbox.set_state("last_error", "one")
    outbox.set_state("last_error", "two")
    assert outbox.get_state("last_error") == "two"
    assert outbox.get_state("missing", "d") == "d"


WRITER = """
import sys
from pathlib import Path
from agent import events
from agent.outbox import Outbox
with Outbox(Path(sys.argv[1])) as box:
    while True:
        e = events.migration_event(event_type=events.DETECTION, status=events.NOT_NEEDED,
                                   run_id="", message="m", system_info={})
        box.add(e)
        print(e.event_id, flush=True)
"""


def test_recorded_means_committed_with_fsync(tmp_path: Path) -> None:
    """Every id a writer printed after add() returned is there after kill -9 of the writer;
    and the connection really runs WAL with synchronous=FULL (fsync at every commit)."""
    path = tmp_path / "state/outbox.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    printed = [proc.stdout.readline().strip() for _ in range(300)]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    with Outbox(path) as box:
        stored = {e.event_id for e in box.events()}
        assert set(printed) <= stored
        assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
