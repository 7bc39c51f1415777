"""Read timeouts for the web's connections: a request head, then its body, must arrive in time.

aiohttp (``aiohttp.web_protocol.RequestHandler``) has a keep-alive timeout but none for
reading a request: a client that sends a request head one byte every few seconds, or half a
head and then nothing, holds its connection (and a file descriptor) for as long as it likes.
``RequestTimeouts`` adds two deadlines per connection through two public hooks of the aiohttp
``web.Server``: the protocol factory (``server()``, called for every accepted connection) and
``server.request_factory`` (called once a request head is complete, with its body stream):

- header: the first request head must be complete ``header_timeout`` after the accept. A later
  request on the same kept-alive connection is bounded by aiohttp's keep-alive timeout instead:
  it closes a connection still waiting for a complete head ``keepalive_timeout`` after the
  previous response;
- body: the request body must have arrived (the client sent its end, read or not by the
  handler) ``body_timeout`` after its head.

Past a deadline the connection is closed (``force_close``). Nothing limits writing a response:
a live stream (``server.web.sse``) has no body and its head arrived long ago, so it stays open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

RequestFactory = Callable[
    [RawRequestMessage, StreamReader, RequestHandler, AbstractStreamWriter, "asyncio.Task[None]"],
    web.BaseRequest,
]


class RequestTimeouts:
    """Header and body deadlines for every connection of one aiohttp ``web.Server``.

    Install it before the first connection (``RequestHandler`` copies the server's
    ``request_factory`` when it is made); ``handler`` is then the protocol factory to serve
    connections with. ``on_timeout("header" | "body")`` is called for every connection closed."""

    def __init__(
        self,
        server: web.Server,
        *,
        header_timeout: float,
        body_timeout: float,
        on_timeout: Callable[[str], None],
    ) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout
        self._on_timeout = on_timeout
        # Connections still waiting for their first complete request head (each leaves at the
        # latest when its header deadline is checked).
        self._awaiting_head: set[RequestHandler] = set()
        self._make_request: RequestFactory = server.request_factory
        server.request_factory = self._request_factory

    def handler(self) -> RequestHandler:
        """A new connection's protocol, with its header deadline set."""
        handler = self._server()
        self._awaiting_head.add(handler)
        self._loop.call_later(self._header_timeout, self._header_due, handler)
        return handler

    def _request_factory(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        self._awaiting_head.discard(protocol)
        if not payload.is_eof():
            self._loop.call_later(self._body_timeout, self._body_due, protocol, payload)
        return self._make_request(message, payload, protocol, writer, task)

    def _header_due(self, handler: RequestHandler) -> None:
        if handler not in self._awaiting_head:
            return
        self._awaiting_head.discard(handler)
        # None: closed already (or a TLS handshake still running: asyncio bounds it, see
        # server.web.listener).
        if handler.transport is not None:
            handler.force_close()
            self._on_timeout("header")

    def _body_due(self, handler: RequestHandler, payload: StreamReader) -> None:
        if not payload.is_eof() and handler.transport is not None:
            handler.force_close()
            self._on_timeout("body")
