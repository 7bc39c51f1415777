"""Helpers of the webhook tests: a real aiohttp receiver on 127.0.0.1 (port 0) that records
what it got and answers the statuses it is told, and a few database seeds."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.storage.models import Agent, MigrationRun, PendingActionRow


@dataclass
class Received:
    at: float  # time.monotonic()
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers ``statuses`` in turn (then 200); ``got`` every request."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    got: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    delay: float = 0.0  # seconds before answering

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append(Received(time.monotonic(), dict(request.headers), body))
        self.arrived.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="boom" if status >= 400 else "ok")

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.got) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(self.got)} of {count} requests arrived"
            self.arrived.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)
        return self.got


@asynccontextmanager
async def receiver(*statuses: int) -> AsyncIterator[Receiver]:
    box = Receiver(statuses=list(statuses))
    app = web.Application()
    app.router.add_post("/hook", box.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    box.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield box
    finally:
        await runner.cleanup()


async def seed_agents(sessions: async_sessionmaker[AsyncSession], count: int) -> list[str]:
    now = datetime.now(UTC)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    async with sessions() as session, session.begin():
        await session.execute(
            insert(Agent),
            [
                {
                    "id": agent_id,
                    "hostname": f"web-{i:03d}",
                    "labels": {},
                    "facts": {},
                    "enrolled_at": now,
                    "last_checkin_at": now,
                }
                for i, agent_id in enumerate(ids)
            ],
        )
    return ids


async def report_run(
    sessions: async_sessionmaker[AsyncSession],
    agent_id: str,
    state: str,
    *,
    action_id: str | None = None,
    error: str = "",
    at: datetime | None = None,
    input_requested: bool = False,
) -> str:
    """A run of ``agent_id`` as ingest stores it (for the action, when given, delivered)."""
    now = at or datetime.now(UTC)
    run_id = str(uuid.uuid4())
    async with sessions() as session, session.begin():
        if action_id:
            await session.execute(
                update(PendingActionRow)
                .where(PendingActionRow.action_id == action_id)
                .values(delivered_at=now, acknowledged_at=now)
            )
        await session.execute(
            insert(MigrationRun).values(
                id=run_id,
                agent_id=agent_id,
                migration_id="myapp",
                state=state,
                error_message=error,
                created_at=now,
                updated_at=now,
                requested_action_id=action_id,
                spec_revision=1,
                input_requested_at=now if input_requested else None,
            )
        )
    return run_id
