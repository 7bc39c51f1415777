"""The web's listening sockets and their accept loop: a connection cap, read timeouts, and a
server that keeps working at the open-files limit.

``WebListener`` is an aiohttp site (``web.BaseSite``, started and stopped by the
``web.AppRunner`` like ``web.TCPSite``) whose accept loop is its own instead of asyncio's
``loop.create_server``:

- it accepts with ``socket.accept`` and hands each connection to aiohttp with the public
  ``loop.connect_accepted_socket``, the protocol being ``server.web.timeouts.RequestTimeouts``'s
  (header and body deadlines);
- a connection beyond the cap (``web_max_connections``, lowered by
  ``server.fdlimit.web_connection_cap`` to the open-files limit minus a reserve for the database
  and gRPC) is closed at once, unread;
- when ``accept`` fails for want of descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM) it stops
  accepting for ``ACCEPT_PAUSE_S``; waiting clients stay in the kernel's backlog meanwhile.
  (asyncio's own accept loop logs a traceback for every failed accept, many per loop iteration,
  and schedules a retry for each of them.)

Refusals and timeouts are counted in ``ServerMetrics`` (``flagpost_web_connections_*``) and
logged at most once per ``LOG_INTERVAL_S`` per kind: the first one at once, then how many more
there were.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from server.config import ServerConfig
from server.fdlimit import FD_RESERVE, soft_limit, web_connection_cap
from server.metrics import ServerMetrics
from server.web.timeouts import RequestTimeouts

log = logging.getLogger(__name__)

BACKLOG = 128  # as web.TCPSite
ACCEPT_PAUSE_S = 1.0  # as asyncio's accept loop after EMFILE
LOG_INTERVAL_S = 60.0
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_FIRST = {
    "over_capacity": "web: refused a connection: %d open, the cap (web_max_connections)",
    "out_of_descriptors": "web: cannot accept connections: %s; pausing accepts, gRPC and the "
    "database keep their descriptors",
    "header": "web: closed a connection whose request head was not complete within %s s "
    "(web_header_timeout_seconds)",
    "body": "web: closed a connection whose request body was not complete within %s s "
    "(web_body_timeout_seconds)",
    "accept_error": "web: accept failed: %s",
}
_MORE = {
    "over_capacity": "connections refused over capacity",
    "out_of_descriptors": "accepts failed for want of file descriptors",
    "header": "connections closed: request head too slow",
    "body": "connections closed: request body too slow",
    "accept_error": "accepts failed",
}
_LEVEL = {"header": logging.INFO, "body": logging.INFO}


class IntervalLog:
    """Logs the first event of a kind at once, then at most one line per interval for the kind
    ("N more ... in the last 60 s"), so a flood of refusals is a handful of lines."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = LOG_INTERVAL_S) -> None:
        self._loop = loop
        self._interval = interval
        self._more: dict[str, int] = {}  # kinds inside a quiet interval -> events since
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def event(self, kind: str, *args: object) -> None:
        if kind in self._more:
            self._more[kind] += 1
            return
        log.log(_LEVEL.get(kind, logging.WARNING), _FIRST[kind], *args)
        self._quiet(kind)

    def _quiet(self, kind: str) -> None:
        self._more[kind] = 0
        self._timers[kind] = self._loop.call_later(self._interval, self._flush, kind)

    def _flush(self, kind: str) -> None:
        more = self._more.pop(kind, 0)
        self._timers.pop(kind, None)
        if more:
            log.log(
                _LEVEL.get(kind, logging.WARNING),
                "web: %d more %s in the last %.0f s",
                more,
                _MORE[kind],
                self._interval,
            )
            self._quiet(kind)

    def close(self) -> None:
        for kind in list(self._timers):
            self._timers.pop(kind).cancel()
            self._flush(kind)
        self._more.clear()


def bind(host: str, port: int, backlog: int = BACKLOG) -> list[socket.socket]:
    """Listening, non-blocking sockets on every address ``host`` resolves to (as
    ``loop.create_server`` binds them: SO_REUSEADDR, IPv6 sockets IPv6-only)."""
    infos = socket.getaddrinfo(
        host or None,
        port,
        family=socket.AF_UNSPEC,
        type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE,
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class _HandOver:
    """One accepted connection on its way to aiohttp (``loop.connect_accepted_socket``)."""

    def __init__(self) -> None:
        self.handler: RequestHandler | None = None

    def served(self) -> bool:
        """True once aiohttp counts it (``web.Server.connections``: at ``connection_made``)."""
        return self.handler is not None and self.handler.transport is not None


class Acceptor(asyncio.AbstractServer):
    """The accept loop of one ``WebListener`` (see the module docstring)."""

    def __init__(
        self,
        sockets: list[socket.socket],
        server: web.Server,
        config: ServerConfig,
        metrics: ServerMetrics,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sockets = sockets
        self._server = server
        self._ssl = ssl_context
        self._header_timeout = config.web_header_timeout_seconds
        self._body_timeout = config.web_body_timeout_seconds
        self._metrics = metrics
        self._log = IntervalLog(self._loop)
        self._timeouts = RequestTimeouts(
            server,
            header_timeout=config.web_header_timeout_seconds,
            body_timeout=config.web_body_timeout_seconds,
            on_timeout=self._timed_out,
        )
        limit = soft_limit()
        self.cap = web_connection_cap(config.web_max_connections, limit)
        if self.cap < config.web_max_connections:
            log.warning(
                "web: at most %d connections, not web_max_connections = %d: the open-files "
                "limit is %s and %d descriptors are kept for the database and gRPC; raise "
                "LimitNOFILE (deploy/flagpost-server.service)",
                self.cap,
                config.web_max_connections,
                limit,
                FD_RESERVE,
            )
        self._handing_over: dict[asyncio.Task[None], _HandOver] = {}
        self._resume: asyncio.TimerHandle | None = None
        self._serving = False
        metrics.web_open.set_function(self.open_connections)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def open_connections(self) -> int:
        """Connections aiohttp serves, plus those accepted and not yet handed over."""
        pending = sum(not hand_over.served() for hand_over in self._handing_over.values())
        return len(self._server.connections) + pending

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        self._listen()

    def _listen(self) -> None:
        if self._serving or not self._sockets:
            return
        self._serving = True
        for sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _pause(self) -> None:
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
        self._serving = False
        self._resume = self._loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        self._listen()

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(BACKLOG):
            try:
                conn, _address = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in OUT_OF_DESCRIPTORS:
                    self._metrics.web_refused.labels("out_of_descriptors").inc()
                    self._log.event("out_of_descriptors", exc.strerror or exc)
                else:
                    self._log.event("accept_error", exc)
                self._pause()
                return
            if self.open_connections() >= self.cap:
                conn.close()
                self._metrics.web_refused.labels("over_capacity").inc()
                self._log.event("over_capacity", self.cap)
                continue
            conn.setblocking(False)
            hand_over = _HandOver()
            task = self._loop.create_task(self._hand_over(conn, hand_over))
            self._handing_over[task] = hand_over
            task.add_done_callback(self._handed_over)

    def _handed_over(self, task: asyncio.Task[None]) -> None:
        self._handing_over.pop(task, None)

    async def _hand_over(self, conn: socket.socket, hand_over: _HandOver) -> None:
        def protocol() -> RequestHandler:
            hand_over.handler = self._timeouts.handler()
            return hand_over.handler

        try:
            await self._loop.connect_accepted_socket(
                protocol,
                conn,
                ssl=self._ssl,
                ssl_handshake_timeout=self._header_timeout if self._ssl is not None else None,
            )
        except (OSError, TimeoutError):  # a failed TLS handshake, a client gone
            conn.close()
        except asyncio.CancelledError:  # the listener closes
            conn.close()
            raise

    def _timed_out(self, phase: str) -> None:
        self._metrics.web_timed_out.labels(phase).inc()
        timeout = self._header_timeout if phase == "header" else self._body_timeout
        self._log.event(phase, f"{timeout:g}")

    def close(self) -> None:
        """Stop listening; connections not yet handed to aiohttp are dropped (those aiohttp
        serves are closed by the runner's shutdown)."""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._serving:
            for sock in self._sockets:
                self._loop.remove_reader(sock.fileno())
        self._serving = False
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        for task in list(self._handing_over):
            task.cancel()
        self._log.close()

    async def wait_closed(self) -> None:
        if self._handing_over:
            await asyncio.gather(*self._handing_over, return_exceptions=True)

    async def serve_forever(self) -> None:
        raise NotImplementedError("served by the web.AppRunner")


class WebListener(web.BaseSite):
    """An aiohttp site listening on ``host``:``port`` through an ``Acceptor``."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        config: ServerConfig,
        metrics: ServerMetrics,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._config = config
        self._metrics = metrics
        self._ssl = ssl_context

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl is not None else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None  # the runner is set up
        acceptor = Acceptor(
            bind(self._host, self._port), server, self._config, self._metrics, self._ssl
        )
        self._server = acceptor  # what runner.addresses reads and BaseSite.stop closes
        await acceptor.start_serving()
