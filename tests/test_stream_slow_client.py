"""A client that stops reading its stream is dropped, not buffered without bound: its stream's
outbox overflows, the server ends that stream (logged once at info, with its cursor) while
other streams and check-ins carry on, and the client, reconnecting with the last id it got,
reads exactly what it missed. A real client with a small socket receive buffer that stops
reading, large rows, a real server on both databases."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import replace

import pytest
from server_testlib import logged_in_http
from streams_testlib import FAST, agents, live_subscribers, start_streams_server, until
from test_grpc_ingest import event
from test_history_live import SseStream, open_stream
from yarl import URL

from server.config import ServerConfig

ROWS_PER_CHECKIN = 5
CHECKINS = 80  # 400 rows of ~16 KiB of error text: far beyond every buffer on the way
OUTBOX = 512 * 1024


async def _slow_stream(
    web_url: str, cookie: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw HTTP/1.0 stream request from a socket with a tiny receive buffer."""
    url = URL(web_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (url.host, url.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(
        f"GET /history/stream HTTP/1.0\r\nHost: {url.host}:{url.port}\r\n"
        f"Accept: text/event-stream\r\nCookie: {cookie}\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    return reader, writer


def _complete_frame_ids(body: bytes) -> list[int]:
    """The ids of the complete frames in ``body`` (a torn last frame does not count)."""
    ids: list[int] = []
    for block in body.decode("utf-8", "replace").split("\n\n")[:-1]:
        for line in block.split("\n"):
            if line.startswith("id: "):
                ids.append(int(line[4:]))
    return ids


async def _read_until_dropped(reader: asyncio.StreamReader) -> bytes:
    body = b""
    try:
        async with asyncio.timeout(30):
            while chunk := await reader.read(65536):
                body += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return body


async def test_a_client_that_stops_reading_is_dropped_and_resumes_without_loss(
    server_config: ServerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    config = replace(server_config, max_streams_per_session=4)
    server = await start_streams_server(config, history=replace(FAST, outbox_bytes=OUTBOX))
    caplog.set_level(logging.INFO, logger="server.web.sse")
    try:
        async with logged_in_http(server, "viewer") as http, agents(server, 2) as fleet:
            jar = http.cookie_jar.filter_cookies(URL(server.web_url))
            cookie = "; ".join(f"{k}={v.value}" for k, v in jar.items())
            fast = await open_stream(http, f"{server.web_url}/history/stream")
            slow, slow_writer = await _slow_stream(server.web_url, cookie)
            await until(lambda: live_subscribers(server) == 2)
            total = ROWS_PER_CHECKIN * CHECKINS
            fast_ids: list[int] = []

            async def follow(stream: SseStream) -> None:
                while len(fast_ids) < total:
                    frame = await stream.frame(timeout=30)
                    if frame.event == "event":
                        fast_ids.append(int(frame.id or 0))

            following = asyncio.create_task(follow(fast))
            big = "x" * 16_000
            for i in range(CHECKINS):
                batch = [event(error_message=big) for _ in range(ROWS_PER_CHECKIN)]
                reply = await fleet[i % 2].checkin(events=batch)  # check-ins carry on
                assert len(reply.acknowledged_event_ids) == ROWS_PER_CHECKIN
            await asyncio.wait_for(following, 60)  # the other stream got every row
            assert len(set(fast_ids)) == total

            dropped = [r for r in caplog.records if "not reading" in r.getMessage()]
            assert len(dropped) == 1, [r.getMessage() for r in caplog.records]
            assert dropped[0].levelno == logging.INFO and "after id" in dropped[0].getMessage()
            assert live_subscribers(server) == 1  # only the reading stream is left

            # The dropped client reads what reached it, then the reset; it resumes from there.
            body = await _read_until_dropped(slow)
            slow_writer.close()
            seen = _complete_frame_ids(body)
            assert len([i for i in seen if i in set(fast_ids)]) < total  # it did miss rows
            last = max(seen) if seen else fast_ids[0] - 1
            again = await open_stream(
                http, f"{server.web_url}/history/stream", last_event_id=str(last)
            )
            rest = [int(f.id or 0) for f in await again.events(max(fast_ids) - last, timeout=30)]
            got = [i for i in seen if i in set(fast_ids)] + rest
            assert got == fast_ids  # every row exactly once, in order
            again.close()
            fast.close()
    finally:
        await server.stop()
