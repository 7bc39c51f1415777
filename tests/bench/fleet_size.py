"""How many agents one server process holds at a 60 s check-in interval.

    python -m tests.bench.fleet_size --db sqlite --agents 20000 --seconds 90
    python -m tests.bench.fleet_size --db sqlite --agents 50000 --seconds 90 --interval 60

Starts a real ``flagpost-server serve``, enrolls ``--agents`` simulated agents over gRPC from
``--procs`` client processes, then each process plays its share of the fleet: every agent checks
in once per ``--interval`` seconds at its own random phase with its host facts; one check-in in
20 carries two events, one in 100 a run update. Agents share gRPC channels
(``--agents-per-channel``), as many agents behind one NAT would. A viewer loads the fleet page
(``GET /``) every 2 s meanwhile. After ``--warmup-intervals`` intervals of warm-up (the first
holds every credential's first use), for ``--seconds``: check-ins/s
offered and answered, latency p50 / p99 / max, failures, events sent vs acknowledged (loss),
how far the clients fell behind their schedule, the fleet page's p50 / max, the server's CPU per
check-in and its RSS per enrolled agent. A figure printer, not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import psutil

from agent.uuid7 import uuid7_str
from flagpost.v1 import agent_pb2, agent_pb2_grpc
from tests.bench.ingest import cli, create_user, make_event, serve, server_env, shut_down
from tests.server_testlib import WebAccount, login_http

ENROLL_IN_FLIGHT = 64


def facts(index: int) -> agent_pb2.HostFacts:
    return agent_pb2.HostFacts(
        hostname=f"fleet-{index:06d}.dc{index % 3 + 1}",
        os="Debian GNU/Linux 12 (bookworm)",
        kernel="6.1.0-bench",
        agent_version="0.1.0",
        config_version="4",
        disk_free_bytes=52_428_800_000,
        machine_id=f"fleet-{index}",
        labels={"env": "prod", "role": ("web", "db", "cache")[index % 3]},
    )


async def _enroll(target: str, token: str, indexes: range) -> list[tuple[int, str, str]]:
    enrolled: list[tuple[int, str, str]] = []
    gate = asyncio.Semaphore(ENROLL_IN_FLIGHT)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)

        async def one(index: int) -> None:
            request = agent_pb2.EnrollRequest(token=token, facts=facts(index))
            async with gate:
                for attempt in range(20):  # UNAVAILABLE says "retry later", as agents do
                    try:
                        reply = await stub.Enroll(request, timeout=120)
                        break
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 19:
                            raise
                        await asyncio.sleep(0.5)
            enrolled.append((index, reply.agent_id, reply.credential))

        await asyncio.gather(*(one(i) for i in indexes))
    return enrolled


def enroll_share(args: tuple[str, str, int, int]) -> list[tuple[int, str, str]]:
    target, token, start, stop = args
    return asyncio.run(_enroll(target, token, range(start, stop)))


@dataclass
class Share:
    """What one client process measured inside the window."""

    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0
    failed_codes: dict[str, int] = field(default_factory=dict)  # status name -> count
    slow_at: list[float] = field(default_factory=list)  # window second of each check-in > 1 s
    events_sent: int = 0
    events_acked: int = 0
    behind_ms: list[float] = field(default_factory=list)  # how late each check-in started


def run_update(run_id: str, state: int) -> agent_pb2.RunUpdate:
    return agent_pb2.RunUpdate(
        update_id=uuid7_str(),
        run_id=run_id,
        migration_id="agent-config",
        state=state,
        steps_done=1,
        steps_total=1,
        migration_from="3",
        migration_to="4",
    )


async def _play(
    target: str,
    agents: list[tuple[int, str, str]],
    interval: float,
    per_channel: int,
    window: tuple[float, float, float],
) -> Share:
    share = Share()
    first, begin, end = window  # the first cycle's start (warm-up), the measured window
    channels = [
        grpc.aio.insecure_channel(target) for _ in range(max(1, -(-len(agents) // per_channel)))
    ]
    stubs = [agent_pb2_grpc.AgentServiceStub(c) for c in channels]
    rnd = random.Random(agents[0][0] if agents else 0)
    phases = sorted((rnd.uniform(0, interval), n) for n in range(len(agents)))
    count = 0
    tasks: set[asyncio.Task[None]] = set()

    async def checkin(n: int, due: float) -> None:
        nonlocal count
        index, agent_id, credential = agents[n]
        count += 1
        request = agent_pb2.CheckInRequest(agent_id=agent_id, facts=facts(index))
        if count % 20 == 0:
            request.events.extend(make_event(uuid7_str(), k) for k in range(2))
        if count % 100 == 0:
            request.run_updates.append(run_update(str(uuid.uuid4()), agent_pb2.RUN_STATE_SUCCEEDED))
        started = time.time()
        measured = begin <= started < end
        try:
            reply = await stubs[n % len(stubs)].CheckIn(
                request, metadata=(("authorization", f"Bearer {credential}"),), timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            if measured:
                share.failures += 1
                code = exc.code().name
                share.failed_codes[code] = share.failed_codes.get(code, 0) + 1
            return
        if measured:
            share.latencies_ms.append((time.time() - started) * 1000)
            if time.time() - started > 1.0:
                share.slow_at.append(started - begin)
            share.behind_ms.append(max(0.0, started - due) * 1000)
            share.events_sent += len(request.events)
            share.events_acked += len(reply.acknowledged_event_ids)

    cycle = 0
    try:
        while True:
            base = first + cycle * interval
            if base >= end:
                break
            for phase, n in phases:
                due = base + phase
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(checkin(n, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            cycle += 1
        if tasks:
            await asyncio.wait(tasks, timeout=60)
    finally:
        for channel in channels:
            await channel.close()
    return share


def play_share(
    args: tuple[str, list[tuple[int, str, str]], float, int, tuple[float, float, float]],
) -> Share:
    return asyncio.run(_play(*args))


async def watch_web(web: str, account: WebAccount, until: float) -> list[float]:
    """The fleet page's load times (ms), one every 2 s until ``until``."""
    times: list[float] = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await login_http(http, web, account)
        while time.time() < until:
            started = time.perf_counter()
            async with http.get(f"{web}/") as reply:
                await reply.read()
                if reply.status == 200:
                    times.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(2.0)
    return times


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--agents", type=int, default=20_000)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--agents-per-channel", type=int, default=100)
    parser.add_argument("--server-log", type=Path, help="write the server's log here")
    parser.add_argument(
        "--warmup-intervals",
        type=int,
        default=1,
        help="intervals played before the measured window (the first one holds every "
        "credential's first use; 2 measures a fleet past its first minute)",
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="flagpost-bench-"))
    env, pg_name = server_env(args.db, workdir)
    env["FLAGPOST_CHECKIN_INTERVAL_SECONDS"] = str(int(args.interval))
    cli(env, "db", "upgrade")
    account = WebAccount("bench-viewer", "bench-password-long", "viewer")
    create_user(env, account.name, account.password)
    server, target, web = serve(env, args.server_log)
    proc = psutil.Process(server.pid)
    ctx = mp.get_context("spawn")
    try:
        rss_empty = proc.memory_info().rss
        token = cli(env, "token", "create", "--uses", str(args.agents))
        bounds = [args.agents * k // args.procs for k in range(args.procs + 1)]
        started = time.perf_counter()
        with ctx.Pool(args.procs) as pool:
            shares = pool.map(
                enroll_share,
                [(target, token, bounds[k], bounds[k + 1]) for k in range(args.procs)],
            )
        enroll_s = time.perf_counter() - started
        print(
            f"db={args.db} agents={args.agents:,} interval={args.interval:.0f}s "
            f"offered={args.agents / args.interval:,.0f} check-ins/s procs={args.procs} "
            f"agents/channel={args.agents_per_channel} warm-up={args.warmup_intervals} interval(s)"
        )
        print(f"  enrolled {args.agents:,} in {enroll_s:.0f}s ({args.agents / enroll_s:,.0f}/s)")
        # everyone's first check-in (a credential's first use) is in the first warm-up interval
        first = time.time() + 5
        begin = first + args.interval * args.warmup_intervals
        end = begin + args.seconds
        jobs = [
            (target, share, args.interval, args.agents_per_channel, (first, begin, end))
            for share in shares
        ]
        with ctx.Pool(args.procs) as pool:
            playing = pool.map_async(play_share, jobs)
            time.sleep(max(0.0, begin - time.time()))
            cpu_before = proc.cpu_times()
            web_times = asyncio.run(watch_web(web, account, end))
            cpu_after = proc.cpu_times()
            rss_loaded = proc.memory_info().rss
            results: list[Share] = playing.get(
                timeout=args.interval * args.warmup_intervals + args.seconds + 300
            )
    finally:
        shut_down(server, pg_name)
    latencies = [x for r in results for x in r.latencies_ms]
    behind = [x for r in results for x in r.behind_ms]
    failures = sum(r.failures for r in results)
    slow = sorted(int(t) for r in results for t in r.slow_at)
    slow_seconds = {t: slow.count(t) for t in slow}
    codes: dict[str, int] = {}
    for r in results:
        for code, n in r.failed_codes.items():
            codes[code] = codes.get(code, 0) + n
    failed_as = f" ({', '.join(f'{c} {n}' for c, n in sorted(codes.items()))})" if codes else ""
    sent = sum(r.events_sent for r in results)
    acked = sum(r.events_acked for r in results)
    answered = len(latencies)
    cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    print(
        f"  check-ins answered {answered / args.seconds:,.0f}/s (of "
        f"{args.agents / args.interval:,.0f} offered), failed {failures}{failed_as}; latency p50 "
        f"{statistics.median(latencies) if latencies else float('nan'):.1f} ms, p99 "
        f"{percentile(latencies, 0.99):.1f} ms, max {max(latencies, default=float('nan')):.0f} ms"
    )
    if slow_seconds:
        print(
            "  check-ins over 1 s, by second of the window: "
            + ", ".join(f"{t}s: {n}" for t, n in slow_seconds.items())
        )
    print(
        f"  events sent {sent:,}, acknowledged {acked:,}; clients behind schedule p99 "
        f"{percentile(behind, 0.99):.0f} ms"
    )
    print(
        f"  fleet page p50 {percentile(web_times, 0.5):.0f} ms, max "
        f"{max(web_times, default=float('nan')):.0f} ms ({len(web_times)} loads)"
    )
    print(
        f"  server CPU {cpu / args.seconds * 100:.0f} % of a core, "
        f"{cpu / max(answered, 1) * 1e6:,.0f} us per check-in; RSS {rss_loaded / 2**20:.0f} MiB, "
        f"{(rss_loaded - rss_empty) / args.agents / 1024:.1f} KiB per agent"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
