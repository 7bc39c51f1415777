"""Live-stream benchmark: check-in latency and server memory with many open History streams.

    python -m tests.bench.streams --db sqlite [--seconds 10] [--streams 500] [--logins 10]

Starts a real ``flagpost-server serve`` (SQLite in a temp dir, or a fresh PostgreSQL database),
enrolls agents, and drives a steady check-in load (``--lanes`` lanes in a separate process,
each sending a check-in of ``--events`` events every ``--interval`` seconds over real gRPC).
Meanwhile it opens unfiltered ``/history/stream`` streams from aiohttp clients (each stream
reads and counts what it gets) in four phases: none, 50 and ``--streams`` from ONE login, then
``--streams`` spread over ``--logins`` logins. Per phase it prints check-in p50/p99, check-ins
that failed, rows the streams received, and the server's RSS; then the RSS again after every
stream has closed. The run raises ``max_streams_per_session`` / ``max_streams_total`` (with the
defaults a single login gets 8 streams and the rest 429). A figure printer, not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import psutil

from agent.uuid7 import uuid7_str
from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server.config import ServerConfig
from tests.bench.ingest import (
    bench_facts,
    cli,
    create_user,
    enroll,
    make_event,
    serve,
    server_env,
    shut_down,
)
from tests.server_testlib import WebAccount, login_http

STREAM_LIMIT = 10_000  # per session and in total, for the run


def load(
    target: str,
    agents: list[tuple[str, str]],
    per: int,
    interval: float,
    stop: mp.synchronize.Event,  # type: ignore[name-defined]
    out: mp.Queue,  # type: ignore[type-arg]
) -> None:
    """The check-in load (a separate process): ``(wall time, latency ms or -1 on error)``."""
    out.put(asyncio.run(_load(target, agents, per, interval, stop)))


async def _load(
    target: str,
    agents: list[tuple[str, str]],
    per: int,
    interval: float,
    stop: mp.synchronize.Event,  # type: ignore[name-defined]
) -> list[tuple[float, float]]:
    samples: list[tuple[float, float]] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)

        async def lane(index: int) -> None:
            agent_id, credential = agents[index]
            metadata = (("authorization", f"Bearer {credential}"),)
            request = agent_pb2.CheckInRequest(
                agent_id=agent_id,
                facts=bench_facts(index),
                events=[make_event(uuid7_str(), index + k) for k in range(per)],
            )
            await asyncio.sleep(interval * index / len(agents))  # spread the lanes out
            while not stop.is_set():
                for e in request.events:
                    e.event_id = uuid7_str()
                started = time.perf_counter()
                try:
                    await stub.CheckIn(request, metadata=metadata, timeout=60)
                    samples.append((time.time(), (time.perf_counter() - started) * 1000))
                except grpc.aio.AioRpcError:
                    samples.append((time.time(), -1.0))
                await asyncio.sleep(max(0.0, interval - (time.perf_counter() - started)))

        await asyncio.gather(*(lane(i) for i in range(len(agents))))
    return samples


@dataclass
class Streams:
    """Open History streams and what they received."""

    web: str
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    rows: int = 0
    refused: dict[int, int] = field(default_factory=dict)  # HTTP status -> count

    async def open(self, http: aiohttp.ClientSession, count: int) -> None:
        """Open ``count`` streams on ``http`` (20 at a time; a 503 is retried, counted)."""
        gate = asyncio.Semaphore(20)

        async def one() -> None:
            async with gate:
                while True:
                    response = await http.get(
                        f"{self.web}/history/stream", headers={"Accept": "text/event-stream"}
                    )
                    if response.status == 200:
                        await response.content.readuntil(b"\n\n")  # the preamble
                        break
                    self.refused[response.status] = self.refused.get(response.status, 0) + 1
                    response.release()
                    if response.status == 429:
                        return
                    await asyncio.sleep(0.2)
            self.tasks.append(asyncio.create_task(self._read(response)))

        await asyncio.gather(*(one() for _ in range(count)))

    async def _read(self, response: aiohttp.ClientResponse) -> None:
        try:
            async for chunk in response.content.iter_any():
                self.rows += chunk.count(b"\nevent: event\n")
        except (aiohttp.ClientError, asyncio.CancelledError):
            pass
        finally:
            response.close()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()


@dataclass
class Phase:
    name: str
    started: float
    ended: float
    rows: int
    rss_mib: float
    refused: dict[int, int]
    server_cpu: float  # percent of one core
    client_cpu: float  # this process (the streams' clients), percent of one core


def rss_mib(proc: psutil.Process) -> float:
    return float(proc.memory_info().rss) / 2**20


async def run_phases(
    web: str, accounts: list[WebAccount], proc: psutil.Process, seconds: float, streams: int
) -> tuple[list[Phase], float, float]:
    phases: list[Phase] = []
    me = psutil.Process()
    jar_sessions = []
    for account in accounts:
        http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        )
        await login_http(http, web, account)
        jar_sessions.append(http)
    one = jar_sessions[0]
    await asyncio.sleep(2)  # the load settles
    rss_before = rss_mib(proc)

    async def measure(name: str, per_session: list[int]) -> None:
        opened = Streams(web)
        for http, count in zip(jar_sessions, per_session, strict=False):
            if count:
                await opened.open(http, count)
        await asyncio.sleep(1.0)  # let the openings' own work pass
        rows_before, started = opened.rows, time.time()
        server_before, client_before = cpu_seconds(proc), cpu_seconds(me)
        await asyncio.sleep(seconds)
        elapsed = time.time() - started
        phases.append(
            Phase(
                name,
                started,
                time.time(),
                opened.rows - rows_before,
                rss_mib(proc),
                dict(opened.refused),
                (cpu_seconds(proc) - server_before) / elapsed * 100,
                (cpu_seconds(me) - client_before) / elapsed * 100,
            )
        )
        await opened.close()
        await asyncio.sleep(1.0)

    await measure("0 streams", [0])
    await measure("50 streams, 1 login", [50])
    await measure(f"{streams} streams, 1 login", [streams])
    share = streams // len(jar_sessions)
    await measure(f"{streams} streams, {len(jar_sessions)} logins", [share] * len(jar_sessions))
    await asyncio.sleep(3)  # every stream closed: what memory returns
    rss_after = rss_mib(proc)
    for http in jar_sessions:
        await http.close()
    del one
    return phases, rss_before, rss_after


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * q) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser(description="Flagpost live-stream benchmark")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per phase")
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--logins", type=int, default=10)
    parser.add_argument("--lanes", type=int, default=8, help="agents checking in")
    parser.add_argument("--events", type=int, default=2, help="events per check-in")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between a lane's")
    args = parser.parse_args()

    defaults = ServerConfig()
    print(
        f"stream limits raised for the run to {STREAM_LIMIT} (defaults: "
        f"max_streams_per_session={defaults.max_streams_per_session}, max_streams_total="
        f"{defaults.max_streams_total}: one login would get {defaults.max_streams_per_session} "
        f"of {args.streams} streams, the rest 429)"
    )
    workdir = Path(tempfile.mkdtemp(prefix="flagpost-bench-streams-"))
    env, pg_name = server_env(args.db, workdir)
    env["FLAGPOST_MAX_STREAMS_PER_SESSION"] = str(STREAM_LIMIT)
    env["FLAGPOST_MAX_STREAMS_TOTAL"] = str(STREAM_LIMIT)
    env["FLAGPOST_LOGIN_RATE_PER_MINUTE"] = "0"
    cli(env, "db", "upgrade")
    accounts = []
    for i in range(args.logins):
        account = WebAccount(f"bench-viewer-{i}", f"bench-password-{i}-long", "viewer")
        create_user(env, account.name, account.password)
        accounts.append(account)
    server, target, web = serve(env)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    out: mp.Queue[list[tuple[float, float]]] = ctx.Queue()
    try:
        token = cli(env, "token", "create", "--uses", str(args.lanes))
        agents = enroll(target, token, args.lanes)
        proc = psutil.Process(server.pid)
        loader = ctx.Process(
            target=load, args=(target, agents, args.events, args.interval, stop, out)
        )
        loader.start()
        phases, rss_before, rss_after = asyncio.run(
            run_phases(web, accounts, proc, args.seconds, args.streams)
        )
        stop.set()
        samples = out.get(timeout=120)
        loader.join(timeout=30)
    finally:
        stop.set()
        shut_down(server, pg_name)
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"db={args.db} load: {args.lanes} agents, a check-in of {args.events} events every "
        f"{args.interval}s each; {args.seconds:.0f}s measured per phase"
    )
    print(f"{'phase':<26} {'p50 ms':>8} {'p99 ms':>8} {'check-ins':>9} {'failed':>6} "
          f"{'rows streamed':>13} {'server RSS':>10} {'srv CPU':>7} {'cli CPU':>7}  "
          "refused")  # fmt: skip
    print(f"{'before (no streams)':<26} {'':>8} {'':>8} {'':>9} {'':>6} {'':>13} "
          f"{rss_before:>7.0f}MiB")  # fmt: skip
    for phase in phases:
        inside = [ms for at, ms in samples if phase.started <= at <= phase.ended]
        ok = [ms for ms in inside if ms >= 0]
        failed = len(inside) - len(ok)
        p50 = statistics.median(ok) if ok else float("nan")
        print(
            f"{phase.name:<26} {p50:>8.1f} {percentile(ok, 0.99):>8.1f} {len(ok):>9} "
            f"{failed:>6} {phase.rows:>13,} {phase.rss_mib:>7.0f}MiB {phase.server_cpu:>6.0f}% "
            f"{phase.client_cpu:>6.0f}%  {phase.refused or '-'}"
        )
    print(f"{'after (streams closed)':<26} {'':>8} {'':>8} {'':>9} {'':>6} {'':>13} "
          f"{rss_after:>7.0f}MiB")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
