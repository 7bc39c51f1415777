"""The yardstick for ingest: the least a durable group-commit gRPC server must do.

    python -m tests.bench.minimal_server --database /tmp/minimal.db

Serves ``AgentService`` on 127.0.0.1 (a free port, printed as ``grpc: HOST:PORT``): ``Enroll``
hands out an id and no real credential; ``CheckIn`` reads nothing from the database, checks
nothing but that the request parses, and stores its events as the same columns Flagpost
stores (JSON text for the maps, ISO timestamps) into one SQLite table with one unique index,
``(agent_id, event_id)``. One writer thread holds one connection (WAL, ``synchronous=FULL``)
and commits whatever arrived during the previous commit as one transaction, then acknowledges
each check-in's ids. ``tests.bench.ingest --vs-minimal`` drives it and Flagpost in turn with
the same load; this file is only ever a benchmark's reference, never part of the product.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import queue
import sqlite3
import sys
import threading
import uuid
from datetime import UTC, datetime

import grpc

from flagpost.v1 import agent_pb2, agent_pb2_grpc

SCHEMA = """
CREATE TABLE IF NOT EXISTS update_events (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL, agent_id TEXT NOT NULL, category TEXT NOT NULL,
    event_type TEXT NOT NULL, status TEXT NOT NULL, severity TEXT NOT NULL,
    message TEXT NOT NULL, error_message TEXT NOT NULL, error_detail TEXT NOT NULL,
    migration_from TEXT NOT NULL, migration_to TEXT NOT NULL, run_id TEXT NOT NULL,
    system_info TEXT NOT NULL, occurred_at TEXT NOT NULL, received_at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS update_events_agent_event ON update_events (agent_id, event_id);
"""
INSERT = (
    "INSERT INTO update_events (event_id, agent_id, category, event_type, status, severity, "
    "message, error_message, error_detail, migration_from, migration_to, run_id, system_info, "
    "occurred_at, received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (agent_id, event_id) DO NOTHING"
)
Row = tuple[str, ...]
Pending = tuple[list[Row], asyncio.Future[None]]


def rows_of(request: agent_pb2.CheckInRequest, received_at: str) -> list[Row]:
    rows = []
    for e in request.events:
        detail = e.error_detail
        rows.append(
            (
                e.event_id,
                request.agent_id,
                "migration",
                agent_pb2.EventType.Name(e.event_type),
                agent_pb2.EventStatus.Name(e.status),
                "error" if e.status == agent_pb2.EVENT_STATUS_FAILED else "success",
                e.message,
                e.error_message,
                json.dumps(
                    {"failing_step": detail.failing_step, "errno": detail.errno}
                    if detail.errno
                    else {}
                ),
                e.migration_from,
                e.migration_to,
                e.run_id,
                json.dumps(dict(e.system_info)),
                e.occurred_at.ToDatetime(UTC).isoformat(),
                received_at,
            )
        )
    return rows


class Writer:
    """One thread, one connection, one transaction per wake-up."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[Pending] = queue.SimpleQueue()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)
        threading.Thread(target=self._run, daemon=True).start()

    def submit(self, rows: list[Row]) -> asyncio.Future[None]:
        done: asyncio.Future[None] = self._loop.create_future()
        self._queue.put((rows, done))
        return done

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._conn.execute("BEGIN")
            for rows, _ in batch:
                self._conn.executemany(INSERT, rows)
            self._conn.execute("COMMIT")
            self._loop.call_soon_threadsafe(_resolve, [done for _, done in batch])


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for done in futures:
        if not done.done():
            done.set_result(None)


class Minimal(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, writer: Writer) -> None:
        self._writer = writer

    async def Enroll(
        self, request: agent_pb2.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.EnrollResponse:
        return agent_pb2.EnrollResponse(agent_id=str(uuid.uuid4()), credential="minimal")

    async def CheckIn(
        self, request: agent_pb2.CheckInRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.CheckInResponse:
        rows = rows_of(request, datetime.now(UTC).isoformat())
        await self._writer.submit(rows)
        return agent_pb2.CheckInResponse(
            acknowledged_event_ids=[e.event_id for e in request.events],
            next_checkin_seconds=60,
        )


async def serve(path: str) -> None:
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(
        Minimal(Writer(path, asyncio.get_running_loop())), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"grpc: 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


def main() -> int:
    parser = argparse.ArgumentParser(description="minimal group-commit ingest server")
    parser.add_argument("--database", required=True, help="SQLite file to create and fill")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.database))
    return 0


if __name__ == "__main__":
    sys.exit(main())
