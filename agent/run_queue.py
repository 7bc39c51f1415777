"""The run side of the outbox: run progress snapshots, per-run log lines and received actions.

These tables live in the same ``outbox.db`` as the events (same connection, same durability:
WAL + ``synchronous=FULL``), created on open with ``CREATE TABLE IF NOT EXISTS`` so an outbox
file written by an older agent is upgraded in place:

``run_updates``
    ``RunUpdate`` snapshots, oldest first by ``seq``; idempotent by ``update_id`` (UUIDv7), deleted
    only when the server acknowledges the id.
``log_lines``
    ``LogLine`` messages; ``(run_id, seq)`` unique, deleted only when acknowledged.
``log_seq``
    The last sequence number handed out per run. A line's seq is allocated and the line stored in
    one transaction, so per-run sequences are gap-free from 1 and survive restarts (crash
    recovery appends to the interrupted run's log). The newest :data:`KEEP_LOG_COUNTERS` counters
    are kept.
``actions``
    Every action id received from the server: ``acked = 0`` until a check-in carrying it in
    ``acknowledged_action_ids`` succeeded. A re-delivered action whose acknowledgement has not
    reached the server yet is recognised and acknowledged again, never executed twice; one that
    arrives again after the server confirmed our acknowledgement (the server never re-sends
    those) is handed on, to be refused as a replay.
``action_nonces``
    The nonce of every signed action accepted, kept until the action's expiry plus
    :data:`NONCE_MARGIN` and then pruned (an older copy is refused as expired anyway): an agent
    executes a nonce at most once, across restarts.

An item the server rejects as invalid (INVALID_ARGUMENT naming ``run_updates[i]`` or
``log_lines[i]``) is quarantined: kept, no longer sent, counted by ``flagpost-agent status``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf.message import DecodeError

from flagpost.v1 import agent_pb2

SCHEMA = """
CREATE TABLE IF NOT EXISTS run_updates (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    update_id TEXT NOT NULL UNIQUE,
    run_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at TEXT NOT NULL,
    quarantined INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS ix_run_updates_pending ON run_updates (quarantined, seq);
CREATE TABLE IF NOT EXISTS log_lines (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    payload BLOB NOT NULL,
    created_at TEXT NOT NULL,
    quarantined INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    UNIQUE (run_id, seq)
);
CREATE INDEX IF NOT EXISTS ix_log_lines_pending ON log_lines (quarantined, id);
CREATE TABLE IF NOT EXISTS log_seq (
    run_id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS actions (
    action_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    received_at TEXT NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS action_nonces (
    nonce TEXT PRIMARY KEY,
    action_id TEXT NOT NULL,
    keep_until TEXT NOT NULL,
    seen_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_action_nonces_keep ON action_nonces (keep_until);
"""

KEEP_LOG_COUNTERS = 1000
KEEP_ACKED_ACTIONS = 1000
# How long past its action's expiry a nonce is remembered (clock steps, slow deliveries).
NONCE_MARGIN = timedelta(hours=1)
# Per-item framing overhead of a repeated message field inside CheckInRequest (tag + length).
FRAME_BYTES = 6


@dataclass(frozen=True, slots=True)
class PendingUpdate:
    """A run update waiting to be sent."""

    update_id: str
    size: int
    update: agent_pb2.RunUpdate


@dataclass(frozen=True, slots=True)
class PendingLine:
    """A log line waiting to be sent."""

    run_id: str
    seq: int
    size: int
    line: agent_pb2.LogLine


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _sortable(moment: datetime) -> str:
    """A UTC time as fixed-width text (compares correctly as a string)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RunQueue:
    """Run updates, log lines and action acknowledgements on the outbox's connection."""

    def __init__(
        self, db: sqlite3.Connection, transaction: Callable[[], AbstractContextManager[None]]
    ) -> None:
        self._db = db
        self._transaction = transaction
        db.executescript(SCHEMA)

    # ------------------------------------------------------------ run updates

    def add_update(self, update: agent_pb2.RunUpdate) -> bool:
        """Store ``update`` durably; False if this update id is already stored (or was sent)."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO run_updates (update_id, run_id, payload, created_at) "
            "VALUES (?, ?, ?, ?)",
            (update.update_id, update.run_id, update.SerializeToString(), _now()),
        )
        return cursor.rowcount == 1

    def oldest_updates(self, limit: int, max_bytes: int) -> list[PendingUpdate]:
        """The oldest pending updates, at most ``limit`` and ``max_bytes`` (with framing)."""
        rows = self._db.execute(
            "SELECT update_id, payload FROM run_updates WHERE quarantined = 0 ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()
        chunk: list[PendingUpdate] = []
        total = 0
        for update_id, payload in rows:
            size = len(payload) + FRAME_BYTES
            if total + size > max_bytes:
                break
            try:
                update = agent_pb2.RunUpdate.FromString(payload)
            except DecodeError:
                self.quarantine_update(update_id, "unreadable payload (not a RunUpdate)")
                continue
            total += size
            chunk.append(PendingUpdate(update_id, size, update))
        return chunk

    def ack_updates(self, update_ids: Iterable[str]) -> int:
        """Delete exactly the acknowledged updates; returns how many were deleted."""
        ids = list(update_ids)
        with self._transaction():
            cursor = self._db.executemany(
                "DELETE FROM run_updates WHERE update_id = ?", ((i,) for i in ids)
            )
            return max(0, cursor.rowcount)

    def quarantine_update(self, update_id: str, reason: str) -> bool:
        """Set an update aside (kept, no longer sent); False if unknown or already set aside."""
        cursor = self._db.execute(
            "UPDATE run_updates SET quarantined = 1, last_error = ? "
            "WHERE update_id = ? AND quarantined = 0",
            (reason, update_id),
        )
        return cursor.rowcount == 1

    def updates(self, run_id: str | None = None) -> list[agent_pb2.RunUpdate]:
        """Every stored update (pending and quarantined), oldest first, optionally of one run."""
        if run_id is None:
            rows = self._db.execute("SELECT payload FROM run_updates ORDER BY seq").fetchall()
        else:
            rows = self._db.execute(
                "SELECT payload FROM run_updates WHERE run_id = ? ORDER BY seq", (run_id,)
            ).fetchall()
        return [agent_pb2.RunUpdate.FromString(row[0]) for row in rows]

    # ------------------------------------------------------------ log lines

    def add_line(self, line: agent_pb2.LogLine) -> int:
        """Give ``line`` the next seq of its run and store it durably, in one transaction.

        Returns the seq (also set on ``line``)."""
        with self._transaction():
            row = self._db.execute(
                "SELECT last_seq FROM log_seq WHERE run_id = ?", (line.run_id,)
            ).fetchone()
            seq = (int(row[0]) if row else 0) + 1
            self._db.execute(
                "INSERT INTO log_seq (run_id, last_seq, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (run_id) DO UPDATE SET last_seq = excluded.last_seq, "
                "updated_at = excluded.updated_at",
                (line.run_id, seq, _now()),
            )
            line.seq = seq
            self._db.execute(
                "INSERT INTO log_lines (run_id, seq, payload, created_at) VALUES (?, ?, ?, ?)",
                (line.run_id, seq, line.SerializeToString(), _now()),
            )
            if row is None:
                self._db.execute(
                    "DELETE FROM log_seq WHERE run_id NOT IN "
                    "(SELECT run_id FROM log_seq ORDER BY updated_at DESC LIMIT ?)",
                    (KEEP_LOG_COUNTERS,),
                )
        return seq

    def last_seq(self, run_id: str) -> int:
        """The last seq handed out for ``run_id`` (0 if none)."""
        row = self._db.execute(
            "SELECT last_seq FROM log_seq WHERE run_id = ?", (run_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    def oldest_lines(self, limit: int, max_bytes: int) -> list[PendingLine]:
        """The oldest pending lines (in the order they were logged), within ``limit``/bytes."""
        rows = self._db.execute(
            "SELECT run_id, seq, payload FROM log_lines WHERE quarantined = 0 ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        chunk: list[PendingLine] = []
        total = 0
        for run_id, seq, payload in rows:
            size = len(payload) + FRAME_BYTES
            if total + size > max_bytes:
                break
            try:
                line = agent_pb2.LogLine.FromString(payload)
            except DecodeError:
                self.quarantine_line(run_id, seq, "unreadable payload (not a LogLine)")
                continue
            total += size
            chunk.append(PendingLine(run_id, int(seq), size, line))
        return chunk

    def ack_lines(self, acks: Iterable[tuple[str, int]]) -> int:
        """Delete exactly the acknowledged ``(run_id, seq)`` lines; returns how many."""
        keys = list(acks)
        with self._transaction():
            cursor = self._db.executemany(
                "DELETE FROM log_lines WHERE run_id = ? AND seq = ?", keys
            )
            return max(0, cursor.rowcount)

    def quarantine_line(self, run_id: str, seq: int, reason: str) -> bool:
        """Set a line aside (kept, no longer sent); False if unknown or already set aside."""
        cursor = self._db.execute(
            "UPDATE log_lines SET quarantined = 1, last_error = ? "
            "WHERE run_id = ? AND seq = ? AND quarantined = 0",
            (reason, run_id, seq),
        )
        return cursor.rowcount == 1

    def lines(self, run_id: str | None = None) -> list[agent_pb2.LogLine]:
        """Every stored line (pending and quarantined), in logging order, optionally of a run."""
        if run_id is None:
            rows = self._db.execute("SELECT payload FROM log_lines ORDER BY id").fetchall()
        else:
            rows = self._db.execute(
                "SELECT payload FROM log_lines WHERE run_id = ? ORDER BY id", (run_id,)
            ).fetchall()
        return [agent_pb2.LogLine.FromString(row[0]) for row in rows]

    # ------------------------------------------------------------ actions

    def receive_actions(self, actions: Sequence[agent_pb2.Action]) -> list[agent_pb2.Action]:
        """Record received actions (to be acknowledged, whatever happens to them); returns
        those never seen before and those seen again after the server confirmed our
        acknowledgement (replays: :mod:`agent.actions` refuses them). An action re-delivered
        while our acknowledgement is still pending is just acknowledged again."""
        handed_on: list[agent_pb2.Action] = []
        with self._transaction():
            for action in actions:
                row = self._db.execute(
                    "SELECT acked FROM actions WHERE action_id = ?", (action.action_id,)
                ).fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO actions (action_id, kind, received_at) VALUES (?, '', ?)",
                        (action.action_id, _now()),
                    )
                    handed_on.append(action)
                    continue
                if int(row[0]) == 1:
                    handed_on.append(action)  # the server already had our ack: a replay
                self._db.execute(
                    "UPDATE actions SET acked = 0 WHERE action_id = ?", (action.action_id,)
                )
        return handed_on

    def claim_nonce(self, nonce: bytes, action_id: str, expires_at: datetime) -> str | None:
        """Record ``nonce`` as used by ``action_id`` (kept until ``expires_at`` +
        NONCE_MARGIN; expired ones are pruned here). Returns None when it is new, else the id
        of the action that already used it (this one is a replay)."""
        now = datetime.now(UTC)
        with self._transaction():
            self._db.execute("DELETE FROM action_nonces WHERE keep_until < ?", (_sortable(now),))
            row = self._db.execute(
                "SELECT action_id FROM action_nonces WHERE nonce = ?", (nonce.hex(),)
            ).fetchone()
            if row is not None:
                return str(row[0])
            self._db.execute(
                "INSERT INTO action_nonces (nonce, action_id, keep_until, seen_at) "
                "VALUES (?, ?, ?, ?)",
                (
                    nonce.hex(),
                    action_id,
                    _sortable(expires_at + NONCE_MARGIN),
                    _sortable(now),
                ),
            )
        return None

    def nonce_count(self) -> int:
        """Nonces remembered (status, tests)."""
        (count,) = self._db.execute("SELECT COUNT(*) FROM action_nonces").fetchone()
        return int(count)

    def pending_action_acks(self) -> list[str]:
        """Action ids received but not yet acknowledged in a successful check-in."""
        rows = self._db.execute(
            "SELECT action_id FROM actions WHERE acked = 0 ORDER BY received_at, action_id"
        ).fetchall()
        return [str(row[0]) for row in rows]

    def mark_actions_acked(self, action_ids: Iterable[str]) -> None:
        """The server received these acknowledgements; keep the ids to recognise replays."""
        ids = list(action_ids)
        if not ids:
            return
        with self._transaction():
            self._db.executemany(
                "UPDATE actions SET acked = 1 WHERE action_id = ?", ((i,) for i in ids)
            )
            self._db.execute(
                "DELETE FROM actions WHERE acked = 1 AND action_id NOT IN "
                "(SELECT action_id FROM actions ORDER BY received_at DESC LIMIT ?)",
                (KEEP_ACKED_ACTIONS,),
            )

    # ------------------------------------------------------------ status

    def counts(self) -> dict[str, int]:
        """Pending and quarantined run updates and log lines, pending action acks."""
        (updates, updates_q) = self._db.execute(
            "SELECT COALESCE(SUM(quarantined = 0), 0), COALESCE(SUM(quarantined = 1), 0) "
            "FROM run_updates"
        ).fetchone()
        (lines, lines_q) = self._db.execute(
            "SELECT COALESCE(SUM(quarantined = 0), 0), COALESCE(SUM(quarantined = 1), 0) "
            "FROM log_lines"
        ).fetchone()
        (acks,) = self._db.execute("SELECT COUNT(*) FROM actions WHERE acked = 0").fetchone()
        return {
            "run_updates_pending": int(updates),
            "run_updates_quarantined": int(updates_q),
            "log_lines_pending": int(lines),
            "log_lines_quarantined": int(lines_q),
            "action_acks_pending": int(acks),
        }
