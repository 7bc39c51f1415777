"""The server's factories: ``create_app(config)`` and ``start_server(config)``.

One asyncio loop runs both transports. ``create_app`` builds the aiohttp application; its
``cleanup_ctx`` starts, in order, and stops, in reverse order:

1. the database: engine + sessionmaker into ``app_keys.ENGINE`` / ``app_keys.SESSIONS``, after
   checking the schema is at alembic's head (or upgrading it when ``config.auto_upgrade``) and
   that it takes a write (``services.health.assert_writable``: refuses on a full disk or a
   read-only database), and the shared ``DatabaseHealth`` state (``app_keys.HEALTH``); then the
   action-signing key (``<state_dir>/signing-key.pem``, ``app_keys.SIGNER``), checked against
   the database's registry;
2. the event bus (``bus_ctx``: ``server.services.bus``, live streams; ``app_keys.BUS``);
3. the health monitor: probes the database about once a second while idle or failing;
4. the ingest writer (group commit; wakes the bus after each commit); on stop it drains and
   commits what is queued;
5. the grpc.aio server (bound port into ``app[app_keys.PORTS].grpc``; TLS, and the web's TLS,
   from ``server.tls`` when ``tls_cert_file`` is set);
6. the retention job (``server.services.retention``): prunes events, runs and logs beyond the
   configured limits every ``retention_interval_minutes``, in bounded batches;
7. the rollout scheduler (``server.services.rollout_scheduler``, ``app_keys.ROLLOUTS``): moves
   every unsettled rollout along every ``rollout_tick_seconds``;
8. the webhook dispatcher (``server.services.webhook_dispatcher``, ``app_keys.WEBHOOKS``; its
   secrets box ``app_keys.WEBHOOK_SECRETS``): sends due webhook deliveries every
   ``webhook_tick_seconds``; on stop the POSTs in flight finish first.

Shutdown order (``RunningServer.stop`` / ``runner.cleanup()``): the web stops listening, then
(``on_shutdown``) live streams end and gRPC refuses new calls and gives in-flight ones up to
``config.shutdown_grace_seconds`` to finish — their commits still happen, the writer is still
running — then the cleanup contexts unwind: the writer commits whatever is still queued, the
monitor stops, the engine closes.

Metrics: one ``ServerMetrics`` registry per app (``app_keys.METRICS``), served at ``GET /metrics``
(``server.web.health``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from aiohttp import web

from server import app_keys
from server.config import ServerConfig
from server.errors import ConfigError, ListenError
from server.grpc.drain import Drain
from server.grpc.interceptors import HEALTH_METHODS
from server.grpc.server import create_grpc_server
from server.metrics import ServerMetrics
from server.services import Services, server_keys
from server.services.agents import Authenticator
from server.services.bus import create_bus
from server.services.health import DatabaseHealth, HealthMonitor, assert_writable
from server.services.ingest import IngestWriter
from server.services.inputs import InputVault
from server.services.retention import RetentionJob
from server.services.rollout_scheduler import RolloutScheduler
from server.services.webhook_dispatcher import WebhookDispatcher
from server.services.webhook_secrets import SecretBox
from server.signing import KEY_FILE_NAME as SIGNING_KEY_FILE
from server.signing import load_or_create
from server.storage import schema
from server.storage.batches import make_batch_store
from server.storage.db import create_engine, create_web_engine, make_sessionmaker
from server.tls import ServerTLS, load_server_tls, warn_if_plaintext, web_ssl_context
from server.web import setup_web
from server.web.listener import WebListener
from server.webhook_sender import HttpSender

log = logging.getLogger(__name__)

WEB_SHUTDOWN_TIMEOUT_S = 5.0


@dataclass
class _Lifecycle:
    """Mutable per-app holder for what the shutdown hook must reach."""

    grpc_server: grpc.aio.Server | None = None
    drain: Drain | None = None
    retention: RetentionJob | None = None


_LIFECYCLE = web.AppKey("lifecycle", _Lifecycle)


@dataclass(frozen=True)
class _Transport:
    """The TLS material both transports serve (None: plain text), loaded once per app."""

    tls: ServerTLS | None


_TRANSPORT = web.AppKey("transport", _Transport)


async def _database(app: web.Application) -> AsyncIterator[None]:
    config = app[app_keys.CONFIG]
    _check_state_dir(config.state_dir)
    if config.auto_upgrade:
        log.info("auto-upgrade: migrating the database schema to head")
        await asyncio.to_thread(schema.upgrade, config.database_url)
    engine = create_engine(config)
    try:
        await schema.assert_schema_current(engine)
        await assert_writable(engine, config.health_probe_timeout_ms / 1000)
    except BaseException:
        await engine.dispose()
        raise
    app[app_keys.ENGINE] = engine
    app[app_keys.SESSIONS] = make_sessionmaker(engine)
    web_engine = create_web_engine(config, engine)  # the web's own pool (or engine in memory)
    app[app_keys.WEB_ENGINE] = web_engine
    app[app_keys.WEB_SESSIONS] = make_sessionmaker(web_engine)
    health = DatabaseHealth()
    app[app_keys.HEALTH] = health
    app[app_keys.METRICS].health = health
    try:
        yield
    finally:
        if web_engine is not engine:
            await web_engine.dispose()
        await engine.dispose()


def _check_state_dir(state_dir: Path) -> None:
    """Create ``state_dir`` and prove a file can be created in it; ConfigError naming the path,
    the OS reason and the setting otherwise (the keys are written there next)."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=state_dir):
            pass
    except OSError as exc:
        raise ConfigError(
            f"state directory {state_dir} is not usable: {exc.strerror or exc}; choose a "
            "writable directory with --state-dir (config state_dir, env FLAGPOST_STATE_DIR)"
        ) from exc


async def _signing(app: web.Application) -> AsyncIterator[None]:
    """The action-signing key (``server.signing``), registered in the database: a key that
    differs from the one already registered refuses to start (ConfigError)."""
    state_dir = app[app_keys.CONFIG].state_dir
    signer = await asyncio.to_thread(load_or_create, state_dir)
    await server_keys.register(
        app[app_keys.SESSIONS],
        "signing",
        signer.path or state_dir / SIGNING_KEY_FILE,
        signer.key_id,
        signer.public_key_bytes().hex(),
    )
    app[app_keys.SIGNER] = signer
    yield


async def bus_ctx(app: web.Application) -> AsyncIterator[None]:
    """The event bus (``server.services.bus``) for ``app[app_keys.CONFIG]``: created and
    started into ``app[app_keys.BUS]``, closed on cleanup. Goes right after the database."""
    bus = create_bus(app[app_keys.CONFIG])
    await bus.start()
    app[app_keys.BUS] = bus
    log.info("event bus started (%s)", bus.kind)
    try:
        yield
    finally:
        await bus.close()


async def _health_monitor(app: web.Application) -> AsyncIterator[None]:
    monitor = HealthMonitor(app[app_keys.CONFIG], app[app_keys.ENGINE], app[app_keys.HEALTH])
    monitor.start()
    try:
        yield
    finally:
        await monitor.stop()


async def _ingest(app: web.Application) -> AsyncIterator[None]:
    config = app[app_keys.CONFIG]
    sessions = app[app_keys.SESSIONS]
    metrics = app[app_keys.METRICS]
    # <state_dir>/inputs.key (file I/O and fsync: off the loop); ConfigError if unsafe
    inputs = await asyncio.to_thread(InputVault.open, config, sessions)
    await server_keys.register(sessions, "inputs", inputs.path, inputs.key_id)
    writer = IngestWriter(
        config,
        sessions,
        health=app[app_keys.HEALTH],
        observe_latency=metrics.ingest_latency.observe,
        store=make_batch_store(config, sessions),
    )
    if app_keys.BUS in app:  # live History streams wake after every commit that stored rows
        writer.add_commit_listener(app[app_keys.BUS].on_ingest_commit)
    writer.start()
    metrics.writer = writer
    app[app_keys.SERVICES] = Services(
        config=config,
        sessions=sessions,
        authenticator=Authenticator(sessions),
        ingest=writer,
        signer=app[app_keys.SIGNER],
        health=app[app_keys.HEALTH],
        metrics=metrics,
        inputs=inputs,
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
    drain = Drain(always_served=HEALTH_METHODS)
    server, port = await create_grpc_server(
        app[app_keys.CONFIG], app[app_keys.SERVICES], tls=app[_TRANSPORT].tls, drain=drain
    )
    await server.start()
    app[app_keys.PORTS].grpc = port
    app[_LIFECYCLE].grpc_server = server
    app[_LIFECYCLE].drain = drain
    try:
        yield
    finally:
        await _stop_grpc(app)


async def _stop_grpc(app: web.Application) -> None:
    """Drain (answer every call that arrives with UNAVAILABLE until none arrives), then stop:
    in-flight calls finish within the grace period (idempotent; ``server.grpc.drain``)."""
    lifecycle = app[_LIFECYCLE]
    server, lifecycle.grpc_server = lifecycle.grpc_server, None
    if server is None:
        return
    grace: float = app[app_keys.CONFIG].shutdown_grace_seconds
    log.info("gRPC: refusing new calls, finishing in-flight ones")
    if lifecycle.drain is not None:
        await lifecycle.drain.begin()
        grace = max(0.0, grace - await lifecycle.drain.settle(grace / 2))
    await server.stop(grace)


async def _retention(app: web.Application) -> AsyncIterator[None]:
    job = RetentionJob(app[app_keys.SESSIONS], app[app_keys.CONFIG])
    job.start()
    app[_LIFECYCLE].retention = job
    try:
        yield
    finally:
        await job.stop()


async def _rollouts(app: web.Application) -> AsyncIterator[None]:
    scheduler = RolloutScheduler(app[app_keys.SESSIONS], app[app_keys.CONFIG])
    app[app_keys.ROLLOUTS] = scheduler
    if app_keys.SERVICES in app:  # a run reported in this process: tick now, not in up to 1 s
        app[app_keys.SERVICES].ingest.add_commit_listener(scheduler.on_ingest_commit)
    scheduler.start()
    try:
        yield
    finally:
        await scheduler.stop()


async def _webhooks(app: web.Application) -> AsyncIterator[None]:
    config = app[app_keys.CONFIG]
    box = await asyncio.to_thread(SecretBox.open, config)  # <state_dir>/inputs.key
    app[app_keys.WEBHOOK_SECRETS] = box
    sender = HttpSender()
    dispatcher = WebhookDispatcher(app[app_keys.SESSIONS], config, box, sender)
    app[app_keys.WEBHOOKS] = dispatcher
    dispatcher.start()
    try:
        yield
    finally:
        await dispatcher.stop()
        await sender.close()


def create_app(config: ServerConfig) -> web.Application:
    """The aiohttp application of one server process (see the module docstring)."""
    app = web.Application()
    app[app_keys.CONFIG] = config
    app[app_keys.PORTS] = app_keys.BoundPorts()
    app[_LIFECYCLE] = _Lifecycle()
    app[_TRANSPORT] = _Transport(load_server_tls(config))  # ConfigError on bad TLS settings
    metrics = ServerMetrics()
    app[app_keys.METRICS] = metrics
    app.cleanup_ctx.extend(
        [
            _database,
            _signing,
            bus_ctx,
            _health_monitor,
            _ingest,
            _grpc,
            _retention,
            _rollouts,
            _webhooks,
        ]
    )
    setup_web(app)  # its on_shutdown hook (end the live streams) runs before gRPC stops
    app.on_shutdown.append(_stop_grpc)
    return app


@dataclass
class RunningServer:
    """A started server: both transports listening. ``await stop()`` shuts it down."""

    app: web.Application
    runner: web.AppRunner
    grpc_port: int
    web_port: int
    web_url: str
    tls: ServerTLS | None = None
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
    Unavailable when it cannot be reached, ListenError when a port cannot be bound, ConfigError
    when the TLS settings are incomplete, the files unusable or the state directory
    unwritable. With ``tls_cert_file`` and ``tls_key_file`` both transports serve TLS
    (``web_url`` is https); without them, a non-loopback address gets a loud plain-text
    warning (``server.tls.warn_if_plaintext``)."""
    app = create_app(config)
    tls = app[_TRANSPORT].tls
    if tls is None:
        warn_if_plaintext(config)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=WEB_SHUTDOWN_TIMEOUT_S,
        access_log=None,
        keepalive_timeout=config.web_keepalive_timeout_seconds,
    )
    try:
        await runner.setup()
        site = WebListener(  # connection cap and read timeouts (server.web.listener)
            runner,
            config.web_host,
            config.web_port,
            config=config,
            metrics=app[app_keys.METRICS],
            ssl_context=web_ssl_context(tls) if tls is not None else None,
        )
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(
                "the web",
                config.web_host,
                config.web_port,
                os.strerror(exc.errno) if exc.errno else str(exc),
                in_use=exc.errno == errno.EADDRINUSE,
                setting="web",
            ) from exc
    except BaseException:
        await runner.cleanup()
        raise
    web_port = int(runner.addresses[0][1])
    app[app_keys.PORTS].web = web_port
    return RunningServer(
        app=app,
        runner=runner,
        grpc_port=app[app_keys.PORTS].grpc,
        web_port=web_port,
        web_url=f"{'https' if tls is not None else 'http'}://{config.web_host}:{web_port}",
        tls=tls,
    )
