"""The server's factories: ``create_app(config)`` and ``start_server(config)``.

One asyncio loop runs both transports. ``create_app`` builds the aiohttp application; its
``cleanup_ctx`` starts, in order, and stops, in reverse order:

1. the database: engine + sessionmaker into ``keys.ENGINE`` / ``keys.SESSIONS``, after checking
   the schema is at alembic's head (or upgrading it when ``config.auto_upgrade``);
2. the ingest writer (group commit); on stop it drains and commits what is queued;
3. the grpc.aio server (bound port into ``app[keys.PORTS].grpc``); on stop it refuses new calls
   and lets in-flight check-ins finish (their commits still happen: the writer stops after it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from server import keys
from server.config import ServerConfig
from server.grpc.server import create_grpc_server
from server.services import Services
from server.services.agents import Authenticator
from server.services.ingest import IngestWriter
from server.storage import schema
from server.storage.db import create_engine, make_sessionmaker
from server.web import setup_web

log = logging.getLogger(__name__)

GRPC_STOP_GRACE_S = 5.0
WEB_SHUTDOWN_TIMEOUT_S = 5.0


async def _database(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    config.state_dir.mkdir(parents=True, exist_ok=True)
    if config.auto_upgrade:
        log.info("auto-upgrade: migrating the database schema to head")
        await asyncio.to_thread(schema.upgrade, config.database_url)
    engine = create_engine(config)
    try:
        await schema.assert_schema_current(engine)
    except BaseException:
        await engine.dispose()
        raise
    app[keys.ENGINE] = engine
    app[keys.SESSIONS] = make_sessionmaker(engine)
    try:
        yield
    finally:
        await engine.dispose()


async def _ingest(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    sessions = app[keys.SESSIONS]
    writer = IngestWriter(config, sessions)
    writer.start()
    app[keys.SERVICES] = Services(
        config=config,
        sessions=sessions,
        authenticator=Authenticator(sessions),
        ingest=writer,
    )
    try:
        yield
    finally:
        await writer.stop()
        log.info(
            "ingest stopped: %d check-ins, %d events stored, %d duplicates, %d rejected",
            writer.checkins,
            writer.events_stored,
            writer.duplicates,
            writer.rejected,
        )


async def _grpc(app: web.Application) -> AsyncIterator[None]:
    server, port = await create_grpc_server(app[keys.CONFIG], app[keys.SERVICES])
    await server.start()
    app[keys.PORTS].grpc = port
    try:
        yield
    finally:
        await server.stop(GRPC_STOP_GRACE_S)


def create_app(config: ServerConfig) -> web.Application:
    """The aiohttp application of one server process (see the module docstring)."""
    app = web.Application()
    app[keys.CONFIG] = config
    app[keys.PORTS] = keys.BoundPorts()
    app.cleanup_ctx.extend([_database, _ingest, _grpc])
    setup_web(app)
    return app


@dataclass
class RunningServer:
    """A started server: both transports listening. ``await stop()`` shuts it down."""

    app: web.Application
    runner: web.AppRunner
    grpc_port: int
    web_port: int
    web_url: str
    _stopped: bool = field(default=False, repr=False)

    async def stop(self) -> None:
        """Stop accepting, let in-flight calls finish, drain ingest, close the database
        (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        await self.runner.cleanup()


async def start_server(config: ServerConfig) -> RunningServer:
    """Create the app and start it: gRPC and web both listening (port 0 picks free ports).

    Raises SchemaOutOfDate when the database is behind (and ``auto_upgrade`` is off),
    Unavailable when it cannot be reached, OSError when a port cannot be bound."""
    app = create_app(config)
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=WEB_SHUTDOWN_TIMEOUT_S, access_log=None
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, config.web_host, config.web_port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    web_port = int(runner.addresses[0][1])
    app[keys.PORTS].web = web_port
    return RunningServer(
        app=app,
        runner=runner,
        grpc_port=app[keys.PORTS].grpc,
        web_port=web_port,
        web_url=f"http://{config.web_host}:{web_port}",
    )
