"""Where the server's memory goes with many History streams, and what comes back after.

    python -m tests.bench.stream_memory --db sqlite [--rounds 3] [--streams 500] [--tracemalloc]

The load of :mod:`tests.bench.streams` (real server, agents checking in over gRPC), then
``--rounds`` rounds of ``--streams`` streams from one login (held ``--hold`` seconds, closed,
``--pause`` seconds). Before, during and after each round it prints the server's RSS split by
kind of mapping (from ``/proc/PID/smaps``): ``heap`` (glibc's brk heap: C allocations and
Python objects over 512 bytes), ``arenas`` (anonymous mappings of 1 MiB or more: pymalloc's
arenas, which the kernel merges when adjacent, and glibc's thread arenas), ``anon`` (smaller
anonymous mappings), ``files`` (mapped code and data). With ``--tracemalloc`` the server runs
under :mod:`tracemalloc` (``tests/bench/memtrace/sitecustomize.py``, slower, larger) and the
bench also prints the bytes of live Python objects at each point and what outlived the first
round, by source line. A figure printer, not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import tempfile
import time
import tracemalloc
from pathlib import Path

import aiohttp
import psutil

from tests.bench.ingest import cli, create_user, enroll, serve, server_env, shut_down
from tests.bench.streams import STREAM_LIMIT, Streams, load
from tests.server_testlib import WebAccount, login_http

MEMTRACE = Path(__file__).resolve().parent / "memtrace"
KINDS = ("heap", "arenas", "anon", "files")


def mapped_mib(pid: int) -> dict[str, float]:
    """The process's RSS in MiB by kind of mapping (see the module docstring)."""
    totals = dict.fromkeys(KINDS, 0)
    kind = "files"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if not fields[0].endswith(":"):  # a mapping's header line
                start, end = (int(x, 16) for x in fields[0].split("-"))
                name = fields[5] if len(fields) > 5 else ""
                if name == "[heap]":
                    kind = "heap"
                elif name:
                    kind = "files"
                else:
                    kind = "arenas" if end - start >= 2**20 else "anon"
            elif fields[0] == "Rss:":
                totals[kind] += int(fields[1])
    return {k: v / 1024 for k, v in totals.items()}


class Probe:
    def __init__(self, proc: psutil.Process, snapshots: Path | None) -> None:
        self.proc = proc
        self.snapshots = snapshots
        self.taken: list[tuple[str, Path]] = []

    async def point(self, name: str) -> None:
        rss = self.proc.memory_info().rss / 2**20
        parts = "  ".join(f"{k} {v:6.1f}" for k, v in mapped_mib(self.proc.pid).items())
        line = f"{name:<22} RSS {rss:6.1f} MiB   {parts}"
        if self.snapshots is not None:
            path = self.snapshots / f"snap-{len(self.taken)}.pickle"
            os.kill(self.proc.pid, signal.SIGUSR2)
            for _ in range(1200):
                if path.exists():
                    break
                await asyncio.sleep(0.1)
            self.taken.append((name, path))
            line += f"   live Python objects {traced_mib(path):6.1f} MiB"
        print(line, flush=True)


def load_snapshot(path: Path) -> tracemalloc.Snapshot:
    """A snapshot the server wrote (our own file, from ``memtrace/sitecustomize.py``)."""
    with path.open("rb") as f:
        snap: tracemalloc.Snapshot = pickle.load(f)
    return snap


def traced_mib(path: Path) -> float:
    return sum(stat.size for stat in load_snapshot(path).statistics("filename")) / 2**20


async def rounds(web: str, account: WebAccount, probe: Probe, args: argparse.Namespace) -> None:
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
    ) as http:
        await login_http(http, web, account)
        await asyncio.sleep(3)  # the load settles
        await probe.point("before")
        for n in range(1, args.rounds + 1):
            streams = Streams(web)
            await streams.open(http, args.streams)
            await asyncio.sleep(args.hold)
            await probe.point(f"round {n}: {len(streams.tasks)} open")
            await streams.close()
            await asyncio.sleep(args.pause)
            await probe.point(f"round {n}: closed")


def outlived(probe: Probe, top: int) -> None:
    """What the first round left alive, by line (the before and after-round-1 snapshots)."""
    if len(probe.taken) < 3:
        return
    before, after = load_snapshot(probe.taken[0][1]), load_snapshot(probe.taken[2][1])
    print(f"\nlive Python objects after round 1 minus before, top {top} lines:")
    for stat in after.compare_to(before, "lineno")[:top]:
        print(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} objects  "
              f"{stat.traceback[0]}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description="Flagpost stream memory benchmark")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--hold", type=float, default=4.0, help="seconds each round stays open")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds after each close")
    parser.add_argument("--lanes", type=int, default=8, help="agents checking in")
    parser.add_argument("--tracemalloc", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="flagpost-bench-memory-"))
    env, pg_name = server_env(args.db, workdir)
    env["FLAGPOST_MAX_STREAMS_PER_SESSION"] = str(STREAM_LIMIT)
    env["FLAGPOST_MAX_STREAMS_TOTAL"] = str(STREAM_LIMIT)
    env["FLAGPOST_LOGIN_RATE_PER_MINUTE"] = "0"
    snapshots = None
    if args.tracemalloc:
        snapshots = workdir / "snapshots"
        snapshots.mkdir()
        env["FLAGPOST_BENCH_SNAPSHOT_DIR"] = str(snapshots)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(MEMTRACE), env.get("PYTHONPATH")]))
    cli(env, "db", "upgrade")
    account = WebAccount("bench-viewer", "bench-password-long", "viewer")
    create_user(env, account.name, account.password)
    server, target, web = serve(env)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    out: mp.Queue[list[tuple[float, float]]] = ctx.Queue()
    print(f"db={args.db}: {args.lanes} agents checking in (2 events every 0.25 s each); "
          f"{args.rounds} rounds of {args.streams} streams from one login, "
          f"{args.hold:.0f} s open, {args.pause:.0f} s closed"
          f"{'; server under tracemalloc' if args.tracemalloc else ''}")  # fmt: skip
    try:
        agents = enroll(target, cli(env, "token", "create", "--uses", str(args.lanes)), args.lanes)
        loader = ctx.Process(target=load, args=(target, agents, 2, 0.25, stop, out))
        loader.start()
        probe = Probe(psutil.Process(server.pid), snapshots)
        asyncio.run(rounds(web, account, probe, args))
        stop.set()
        out.get(timeout=120)
        loader.join(timeout=30)
        outlived(probe, 15)
    finally:
        stop.set()
        shut_down(server, pg_name)
        time.sleep(0.1)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
