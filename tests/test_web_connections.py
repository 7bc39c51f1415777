"""Slow, idle and too many web clients against a real ``flagpost-server serve`` process.

Real sockets against a server in its own process (``server.web.listener``,
``server.web.timeouts``): slowloris connections are closed after the header timeout while a
normal request and a live stream keep working; a client that sends half a body is closed after
the body timeout; the connection cap refuses the connection beyond it; 1,100 idle connections
under a 1,024 open-files limit leave gRPC check-ins, enrolment and the database working with a
handful of log lines; and at the open-files limit itself the web stops accepting, quietly,
until descriptors are free again.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_testlib import WebAccount, login_http
from test_grpc_ingest import FACTS, auth, event
from test_history_live import open_stream

from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server.config import load_config
from server.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"
SLOWLORIS = 1_000
IDLE = 1_100
PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


@dataclass
class Served:
    process: subprocess.Popen[str]
    db_url: str
    grpc_target: str
    web_url: str
    log: Path
    account: WebAccount

    def log_lines(self, *needles: str) -> list[str]:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return [line for line in text.splitlines() if any(n in line for n in needles)]

    def port(self) -> int:
        return int(self.web_url.rsplit(":", 1)[1])


def cli_env(**settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    env.update({f"FLAGPOST_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def cli(db_url: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "server", *args, "--database-url", db_url],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def open_files_limit(limit: int | None) -> list[str]:
    """The command prefix that starts a process with ``limit`` open files (soft = hard):
    util-linux ``prlimit``, not a ``preexec_fn``, which forks this process (its gRPC threads
    may be running) and runs Python in the child before exec."""
    return ["prlimit", f"--nofile={limit}:{limit}", "--"] if limit else []


@contextmanager
def serve(
    db_url: str, tmp_path: Path, nofile: int | None = None, **settings: object
) -> Iterator[Served]:
    """``flagpost-server serve`` on free ports with ``settings`` (FLAGPOST_* variables), its log
    in a file, an admin ``ops`` created first; ``nofile``: its open-files limit (soft = hard)."""
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n", encoding="utf-8")
    cli(db_url, "user", "create", "ops", "--role", "admin", "--password-file", str(password))
    log = tmp_path / "server.log"
    with log.open("w", encoding="utf-8") as stderr:
        process = subprocess.Popen(
            [
                *open_files_limit(nofile),
                *(sys.executable, "-m", "server", "serve", "--database-url", db_url),
                *("--grpc-port", "0", "--web-port", "0", "--state-dir", str(tmp_path / "state")),
            ],
            cwd=ROOT,
            env=cli_env(enroll_rate_per_minute=0, login_rate_per_minute=0, **settings),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        assert process.stdout is not None
        grpc_line, web_line = process.stdout.readline(), process.stdout.readline()
        assert grpc_line.startswith("grpc: "), grpc_line + log.read_text()
        assert web_line.startswith("web: "), web_line + log.read_text()
        yield Served(
            process,
            db_url,
            grpc_line.removeprefix("grpc: ").strip(),
            web_line.removeprefix("web: ").strip().removesuffix("/history"),
            log,
            WebAccount("ops", PASSWORD, "admin"),
        )
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


@contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    """A list to put client sockets in; all closed on exit."""
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


def connect(port: int, opened: list[socket.socket], count: int, first: bytes = b"") -> None:
    """Open ``count`` connections to the web port (each sends ``first``), into ``opened``."""
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        opened.append(sock)
        if first:
            sock.sendall(first)
        sock.setblocking(False)


def is_closed(sock: socket.socket) -> bool:
    """True once the server closed the connection (EOF or reset); never blocks."""
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


async def wait_closed(socks: list[socket.socket], within: float, trickle: bool = False) -> None:
    """Poll until every socket of ``socks`` is closed by the server; with ``trickle`` every other
    one still open sends one more byte of its header each second (a slowloris)."""
    deadline = time.monotonic() + within
    open_ = list(socks)
    while open_:
        assert time.monotonic() < deadline, f"{len(open_)} of {len(socks)} still open"
        if trickle:
            for sock in open_[::2]:
                with suppress(OSError):
                    sock.send(b"a")
        await asyncio.sleep(1.0)
        open_ = [sock for sock in open_ if not is_closed(sock)]


async def metric(http: aiohttp.ClientSession, web_url: str, name: str, **labels: str) -> float:
    async with http.get(f"{web_url}/metrics") as reply:
        assert reply.status == 200, reply.status
        text = await reply.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"{name} {labels} not in /metrics")


async def enroll_and_check_in(channel: grpc.aio.Channel, token: str) -> str:
    """Enroll an agent over ``channel`` and check in one event; returns its credential."""
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    reply = await stub.Enroll(agent_pb2.EnrollRequest(token=token, facts=FACTS), timeout=30)
    await check_in(channel, reply.credential)
    return reply.credential


async def check_in(channel: grpc.aio.Channel, credential: str) -> str:
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    sent = event()
    answer = await stub.CheckIn(
        agent_pb2.CheckInRequest(facts=FACTS, events=[sent]), metadata=auth(credential), timeout=30
    )
    assert list(answer.acknowledged_event_ids) == [sent.event_id]
    return sent.event_id


async def healthz(web_url: str) -> int:
    """``/healthz``'s status; 0 when the connection was refused (closed by the cap)."""
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{web_url}/healthz") as reply:
            return reply.status
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
        return 0


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def test_slowloris_is_closed_after_the_header_timeout_while_streams_live_on(
    sqlite_db_url: str, tmp_path: Path
) -> None:
    with serve(
        sqlite_db_url,
        tmp_path,
        web_header_timeout_seconds=2,
        web_body_timeout_seconds=2,
        web_keepalive_timeout_seconds=3,
        web_max_connections=5_000,  # the timeouts close them here, not the cap
    ) as served:
        token = cli(sqlite_db_url, "token", "create", "--uses", "1")
        async with session() as http, grpc.aio.insecure_channel(served.grpc_target) as channel:
            await login_http(http, served.web_url, served.account)
            stream = await open_stream(http, f"{served.web_url}/history/stream")
            opened_at = time.monotonic()
            try:
                with sockets() as slow:
                    await asyncio.to_thread(connect, served.port(), slow, SLOWLORIS, PARTIAL_HEAD)
                    # a normal request while they hang on
                    async with http.get(f"{served.web_url}/healthz") as reply:
                        assert reply.status == 200
                    await wait_closed(slow, within=60, trickle=True)
                with sockets() as half_body:
                    head = (
                        "POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"
                        "Content-Type: application/x-www-form-urlencoded\r\n\r\nname=ops"
                    )
                    await asyncio.to_thread(
                        connect, served.port(), half_body, 1, head.encode("ascii")
                    )
                    await wait_closed(half_body, within=30)
                # the stream outlives the header and keep-alive timeouts, twice over
                while time.monotonic() - opened_at < 2 * (2 + 3):
                    await asyncio.sleep(0.5)
                credential = await enroll_and_check_in(channel, token)
                stored = await check_in(channel, credential)
                frames = await stream.events(2, timeout=30)
                assert stored in {f.payload["event"]["event_id"] for f in frames}
            finally:
                stream.close()
            async with http.get(f"{served.web_url}/healthz") as reply:
                assert reply.status == 200
            timed_out = "flagpost_web_connections_timed_out_total"
            assert await metric(http, served.web_url, timed_out, phase="header") >= SLOWLORIS
            assert await metric(http, served.web_url, timed_out, phase="body") == 1
        assert len(served.log_lines("request head was not complete", "head too slow")) <= 3


async def test_the_cap_refuses_the_connection_beyond_it(sqlite_db_url: str, tmp_path: Path) -> None:
    cap = 5
    with serve(
        sqlite_db_url, tmp_path, web_max_connections=cap, web_header_timeout_seconds=120
    ) as served:
        with sockets() as held:
            await asyncio.to_thread(connect, served.port(), held, cap)
            with sockets() as beyond:
                await asyncio.to_thread(connect, served.port(), beyond, 1)
                await wait_closed(beyond, within=30)
            await asyncio.sleep(1.0)
            assert not any(is_closed(sock) for sock in held), "the cap's own were closed"
            held.pop().close()  # a free slot again
            deadline = time.monotonic() + 30
            while await healthz(served.web_url) != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.5)
            while held:  # room for the metrics scrape and its login
                held.pop().close()
            # the server counts a closed connection free once it has read its end: wait for that
            while await healthz(served.web_url) != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.5)
            async with session() as http:
                await login_http(http, served.web_url, served.account)
                refused = "flagpost_web_connections_refused_total"
                assert await metric(http, served.web_url, refused, reason="over_capacity") >= 1
        assert len(served.log_lines("refused a connection")) == 1


async def test_idle_connections_under_a_1024_files_limit_leave_grpc_and_the_database_working(
    sqlite_db_url: str, tmp_path: Path
) -> None:
    with serve(sqlite_db_url, tmp_path, nofile=1_024, web_header_timeout_seconds=120) as served:
        token = cli(sqlite_db_url, "token", "create", "--uses", "2")
        async with grpc.aio.insecure_channel(served.grpc_target) as channel:
            credential = await enroll_and_check_in(channel, token)
            with sockets() as idle:
                await asyncio.to_thread(connect, served.port(), idle, IDLE)
                deadline = time.monotonic() + 30
                while sum(is_closed(sock) for sock in idle) < IDLE - 512:  # refused at once
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.5)
                # while the web is full: check-ins, and a new agent on a new connection
                for _ in range(5):
                    await check_in(channel, credential)
                async with grpc.aio.insecure_channel(served.grpc_target) as fresh:
                    await enroll_and_check_in(fresh, token)
            deadline = time.monotonic() + 30
            while await healthz(served.web_url) != 200:  # 200: the database probe succeeds
                assert time.monotonic() < deadline
                await asyncio.sleep(0.5)
            await check_in(channel, credential)
    assert served.process.returncode == 0
    noise = served.log_lines("Too many open files", "Traceback", "refused", "accept")
    assert len(noise) <= 3, noise


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_at_the_files_limit_the_web_pauses_quietly_and_resumes(
    sqlite_db_url: str, tmp_path: Path
) -> None:
    with serve(sqlite_db_url, tmp_path, web_header_timeout_seconds=120) as served:
        token = cli(sqlite_db_url, "token", "create", "--uses", "1")
        pid = served.process.pid
        async with grpc.aio.insecure_channel(served.grpc_target) as channel:
            credential = await enroll_and_check_in(channel, token)
            soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_descriptors(pid), hard))
            try:
                with sockets() as waiting:
                    await asyncio.to_thread(connect, served.port(), waiting, 50, PARTIAL_HEAD)
                    for _ in range(6):  # a few seconds of failing accepts
                        await check_in(channel, credential)  # its connection is open already
                        await asyncio.sleep(0.5)
                    assert not any(is_closed(sock) for sock in waiting)
                    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
                    for sock in waiting:  # accepted now: complete the head, get an answer
                        sock.setblocking(True)
                        sock.settimeout(30)
                        sock.sendall(b"x\r\nConnection: close\r\n\r\n")
                    for sock in waiting:
                        assert sock.recv(12).startswith(b"HTTP/1.1 "), "no answer"
            finally:
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
            assert await healthz(served.web_url) == 200
            lines = served.log_lines("file descriptors", "Too many open files", "Traceback")
            assert 1 <= len(lines) <= 3, lines  # asyncio's accept loop: a traceback per accept
            async with session() as http:
                await login_http(http, served.web_url, served.account)
                refused = "flagpost_web_connections_refused_total"
                assert await metric(http, served.web_url, refused, reason="out_of_descriptors") >= 1


async def test_a_low_files_limit_lowers_the_cap_at_start(
    sqlite_db_url: str, tmp_path: Path
) -> None:
    limit = 320  # leaves 320 - FD_RESERVE (256) = 64 web connections
    with serve(sqlite_db_url, tmp_path, nofile=limit, web_header_timeout_seconds=120) as served:
        assert served.log_lines("at most 64 connections, not web_max_connections = 512")
        with sockets() as held:
            await asyncio.to_thread(connect, served.port(), held, 64)
            with sockets() as beyond:
                await asyncio.to_thread(connect, served.port(), beyond, 1)
                await wait_closed(beyond, within=30)
            await asyncio.sleep(1.0)
            assert not any(is_closed(sock) for sock in held)


def test_web_limits_must_be_positive() -> None:
    for name in (
        "web_header_timeout_seconds",
        "web_body_timeout_seconds",
        "web_keepalive_timeout_seconds",
        "web_max_connections",
    ):
        with pytest.raises(ConfigError, match=name):
            load_config(env={}, overrides={name: 0})
