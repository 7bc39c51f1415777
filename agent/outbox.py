"""The agent's outbox: every event is stored here (durably) before anything tries to send it.

``state_dir/outbox.db`` is SQLite in WAL mode with ``synchronous=FULL``: when :meth:`Outbox.add`
returns, the event survives a crash or power loss. Events leave only when the server acknowledged
them (:meth:`Outbox.ack`). An event the server rejects as invalid is quarantined (kept, no longer
sent, listed by ``flagpost-agent status``), never deleted, and a warning notice about it joins the
end of the queue in the same transaction (so it is reported exactly once and blocks nothing). A
small key/value ``state`` table keeps the last check-in time, the last error and the last detected
config version. Run progress, per-run log lines and action acknowledgements live in the same
file (:attr:`Outbox.runs`, :mod:`agent.run_queue`); their tables are created on open, so an outbox
written by an older agent is upgraded in place.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from google.protobuf.message import DecodeError

from agent import events
from agent.run_queue import RunQueue
from agent.sysinfo import agent_info
from flagpost.v1 import agent_pb2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    payload BLOB NOT NULL,
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS ix_outbox_pending ON outbox (quarantined, seq);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# Per-event framing overhead of a repeated message field inside CheckInRequest (tag + length).
_FRAME_BYTES = 6


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An event waiting to be sent."""

    seq: int
    event_id: str
    payload: bytes
    attempts: int
    event: agent_pb2.MigrationEvent

    def message(self) -> agent_pb2.MigrationEvent:
        """The parsed event."""
        return self.event


@dataclass(frozen=True, slots=True)
class QuarantinedEvent:
    """An event set aside because the server rejected it (or it can never fit a request)."""

    event_id: str
    created_at: str
    reason: str
    summary: str


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Outbox:
    """Durable queue of serialized MigrationEvents. Use as a context manager or call close()."""

    def __init__(self, path: Path) -> None:
        path.parent.parent.mkdir(parents=True, exist_ok=True)
        path.parent.mkdir(mode=0o700, exist_ok=True)  # state dir: credentials, backups
        self._path = path
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._runs = RunQueue(self._db, self._transaction)
        except BaseException:
            self._db.close()
            raise
        path.chmod(0o600)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def runs(self) -> RunQueue:
        """Run updates, log lines and action acknowledgements (same file, same connection)."""
        return self._runs

    def close(self) -> None:
        """Close the database (idempotent)."""
        self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def add(self, event: agent_pb2.MigrationEvent) -> bool:
        """Store ``event`` durably; False if an event with this id is already stored."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO outbox (event_id, payload, created_at) VALUES (?, ?, ?)",
            (event.event_id, event.SerializeToString(), _now()),
        )
        return cursor.rowcount == 1

    def contains(self, event_id: str) -> bool:
        """True while ``event_id`` is stored (pending or quarantined)."""
        row = self._db.execute("SELECT 1 FROM outbox WHERE event_id = ?", (event_id,)).fetchone()
        return row is not None

    def oldest(self, limit: int, max_bytes: int) -> list[PendingEvent]:
        """The oldest non-quarantined events, at most ``limit`` of them and at most ``max_bytes``
        of serialized events (with framing). An event that alone exceeds ``max_bytes`` could
        never be sent: it is quarantined so it cannot block the events behind it."""
        chunk: list[PendingEvent] = []
        total = 0
        rows = self._db.execute(
            "SELECT seq, event_id, payload, attempts FROM outbox WHERE quarantined = 0 "
            "ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()
        for seq, event_id, payload, attempts in rows:
            try:
                event = agent_pb2.MigrationEvent.FromString(payload)
            except DecodeError:
                self.quarantine(event_id, "unreadable payload (not a MigrationEvent)")
                return self.oldest(limit, max_bytes)
            size = len(payload) + _FRAME_BYTES
            if size > max_bytes:
                if chunk:
                    break
                self.quarantine(event_id, f"event is {size} bytes, over the {max_bytes} limit")
                return self.oldest(limit, max_bytes)
            if total + size > max_bytes:
                break
            total += size
            chunk.append(PendingEvent(seq, event_id, bytes(payload), attempts, event))
        return chunk

    def ack(self, event_ids: Iterable[str]) -> int:
        """Delete exactly the acknowledged events; returns how many were deleted."""
        ids = list(event_ids)
        if not ids:
            return 0
        with self._transaction():
            deleted = 0
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                marks = ",".join("?" * len(part))
                cursor = self._db.execute(
                    f"DELETE FROM outbox WHERE event_id IN ({marks})",  # noqa: S608
                    part,
                )
                deleted += cursor.rowcount
        return deleted

    def record_attempt(self, event_ids: Iterable[str], error: str) -> None:
        """Count a failed send of these events and remember why."""
        with self._transaction():
            self._db.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE event_id = ?",
                [(error, event_id) for event_id in event_ids],
            )

    def quarantine(
        self, event_id: str, reason: str, *, notify: bool = True
    ) -> agent_pb2.MigrationEvent | None:
        """Set an event aside (kept, listed by status, no longer sent) and, in the same
        transaction, add a warning notice about it (:func:`agent.events.quarantine_notice`) to
        the end of the queue. A notice that is itself quarantined gets no notice (a rejected
        notice is set aside silently, so notices can never loop), nor does an event already
        quarantined. Returns the notice added, if any."""
        with self._transaction():
            row = self._db.execute(
                "SELECT payload, quarantined FROM outbox WHERE event_id = ?", (event_id,)
            ).fetchone()
            if row is None or row[1]:
                return None
            self._db.execute(
                "UPDATE outbox SET quarantined = 1, last_error = ? WHERE event_id = ?",
                (reason, event_id),
            )
            if not notify:
                return None
            try:
                event = agent_pb2.MigrationEvent.FromString(row[0])
            except DecodeError:
                event = agent_pb2.MigrationEvent(event_id=event_id, message="(unreadable payload)")
            if event.event_type == events.AGENT_NOTICE:
                return None
            notice = events.quarantine_notice(event, reason, agent_info())
            self._db.execute(
                "INSERT OR IGNORE INTO outbox (event_id, payload, created_at) VALUES (?, ?, ?)",
                (notice.event_id, notice.SerializeToString(), _now()),
            )
        return notice

    def depth(self) -> int:
        """Events waiting to be sent (quarantined ones not included)."""
        row = self._db.execute("SELECT COUNT(*) FROM outbox WHERE quarantined = 0").fetchone()
        return int(row[0])

    def quarantined(self) -> list[QuarantinedEvent]:
        """Every quarantined event, oldest first."""
        rows = self._db.execute(
            "SELECT event_id, created_at, last_error, payload FROM outbox "
            "WHERE quarantined = 1 ORDER BY seq"
        ).fetchall()
        result = []
        for event_id, created_at, reason, payload in rows:
            try:
                summary = agent_pb2.MigrationEvent.FromString(payload).message
            except Exception:  # a corrupt payload must not break status
                summary = "(unreadable payload)"
            result.append(QuarantinedEvent(event_id, created_at, reason or "", summary))
        return result

    def events(self) -> list[agent_pb2.MigrationEvent]:
        """Every stored event (pending and quarantined), oldest first."""
        rows = self._db.execute("SELECT payload FROM outbox ORDER BY seq").fetchall()
        return [agent_pb2.MigrationEvent.FromString(row[0]) for row in rows]

    def set_state(self, key: str, value: str) -> None:
        """Remember a status value (last check-in, last error, config version)."""
        self._db.execute(
            "INSERT INTO state (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def get_state(self, key: str, default: str = "") -> str:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else default

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
