"""Log-line ingest benchmark: simulated agents stream run log lines over real gRPC.

    python -m tests.bench.logs --db sqlite --agents 16 --inflight 16 --lines 1000 --seconds 10

Starts a real ``flagpost-server serve`` (SQLite in a temp dir, or a fresh PostgreSQL database),
enrolls the agents; each lane opens a run (one RunUpdate) and then sends check-ins of
``--lines`` log lines with consecutive seqs, ``--inflight`` outstanding in total from
``--procs`` client processes. A check-in is answered only after its lines are committed, so
lines/s are durable lines (counted from the acknowledged (run_id, seq) pairs; the server's
``flagpost_log_lines_stored_total`` is printed beside them). A figure printer, not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
from google.protobuf.timestamp_pb2 import Timestamp

from agent.uuid7 import uuid7_str
from flagpost.v1 import agent_pb2, agent_pb2_grpc
from tests.bench.ingest import bench_facts, cli, enroll, scrape, serve, server_env, shut_down

SOURCES = ("detector", "executor", "move_legacy_config", "rename_keys", "split_secrets")
LEVELS = ("DEBUG", "INFO", "INFO", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class WorkerResult:
    checkins: int
    lines: int
    errors: int
    latencies_ms: list[float]


def _line(run_id: str, seq: int, stamp: Timestamp) -> agent_pb2.LogLine:
    line = agent_pb2.LogLine(
        run_id=run_id,
        seq=seq,
        level=LEVELS[seq % len(LEVELS)],
        source=SOURCES[seq % len(SOURCES)],
        message=f"applied key rename {seq}: listen_port -> server.port (file /etc/app/agent.conf)",
        metadata={"file": "/etc/app/agent.conf", "step": SOURCES[seq % len(SOURCES)]},
    )
    line.timestamp.CopyFrom(stamp)
    return line


async def drive(
    target: str,
    agents: list[tuple[str, str]],
    inflight: int,
    seconds: float,
    per: int,
    first: int,
    step: int,
) -> WorkerResult:
    """``inflight`` lanes, each one run of back-to-back check-ins of ``per`` log lines; lane k
    is agent ``first + k * step`` (modulo the agents)."""
    latencies: list[float] = []
    checkins = lines = errors = 0
    deadline = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(target) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)

        async def one_lane(lane: int) -> None:
            nonlocal checkins, lines, errors
            index = (first + lane * step) % len(agents)
            agent_id, credential = agents[index]
            metadata = (("authorization", f"Bearer {credential}"),)
            run_id = uuid7_str()
            stamp = Timestamp()
            stamp.GetCurrentTime()
            opening = agent_pb2.RunUpdate(
                update_id=uuid7_str(),
                run_id=run_id,
                state=agent_pb2.RUN_STATE_RUNNING,
                steps_total=5,
                migration_id="agent-config",
                started_at=stamp,
            )
            await stub.CheckIn(
                agent_pb2.CheckInRequest(
                    agent_id=agent_id,
                    facts=bench_facts(index),
                    run_updates=[opening],
                ),
                metadata=metadata,
                timeout=30,
            )
            # One request per lane, built once; each check-in only renumbers the seqs, so the
            # client's CPU goes to gRPC, not to building messages (2 cores are shared).
            request = agent_pb2.CheckInRequest(
                agent_id=agent_id,
                facts=bench_facts(index),
                log_lines=[_line(run_id, s, stamp) for s in range(1, per + 1)],
            )
            seq = 0
            while time.monotonic() < deadline:
                for line in request.log_lines:
                    seq += 1
                    line.seq = seq
                started = time.perf_counter()
                try:
                    response = await stub.CheckIn(request, metadata=metadata, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    await asyncio.sleep(0.05)
                    continue
                latencies.append((time.perf_counter() - started) * 1000)
                checkins += 1
                lines += sum(len(ack.seqs) for ack in response.acknowledged_log_lines)

        await asyncio.gather(*(one_lane(i) for i in range(inflight)))
    return WorkerResult(checkins, lines, errors, latencies)


def worker(args: tuple[str, list[tuple[str, str]], int, float, int, int, int]) -> WorkerResult:
    return asyncio.run(drive(*args))


def main() -> int:
    parser = argparse.ArgumentParser(description="Flagpost log-line ingest benchmark")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--agents", type=int, default=16)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--lines", type=int, default=1000, help="log lines per check-in")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="flagpost-bench-logs-"))
    env, pg_name = server_env(args.db, workdir)
    env["FLAGPOST_MAX_LOG_LINES_PER_CHECKIN"] = str(max(args.lines, 5000))
    cli(env, "db", "upgrade")
    server, target, web = serve(env)
    try:
        token = cli(env, "token", "create", "--uses", str(args.agents))
        agents = enroll(target, token, args.agents)
        proc = psutil.Process(server.pid)
        cpu_before = proc.cpu_times()
        lanes = max(1, args.inflight // args.procs)
        # Process i drives agents i, i + procs, ...: one agent never has two check-ins in flight.
        jobs = [
            (target, agents, lanes, args.seconds, args.lines, i, args.procs)
            for i in range(args.procs)
        ]
        started = time.perf_counter()
        with mp.get_context("spawn").Pool(args.procs) as pool:
            results = pool.map(worker, jobs)
        elapsed = time.perf_counter() - started
        cpu_after = proc.cpu_times()
        rss_mb = proc.memory_info().rss / 2**20
        metrics = scrape(web)
    finally:
        shut_down(server, pg_name)

    latencies = sorted(x for r in results for x in r.latencies_ms)
    checkins = sum(r.checkins for r in results)
    lines = sum(r.lines for r in results)
    errors = sum(r.errors for r in results)
    cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan")
    print(
        f"db={args.db} agents={args.agents} inflight={args.inflight} "
        f"lines/checkin={args.lines} seconds={elapsed:.1f}"
    )
    print(
        f"log lines/s={lines / elapsed:,.0f} checkins/s={checkins / elapsed:,.0f} "
        f"p50={p50:.1f}ms p99={p99:.1f}ms errors={errors} "
        f"server_cpu={cpu / elapsed * 100:.0f}% server_rss={rss_mb:.0f}MiB "
        f"({os.cpu_count()} cores)"
    )
    print(
        f"server: log_lines_stored={metrics.get('flagpost_log_lines_stored_total', 0):,.0f} "
        f"batches={metrics.get('flagpost_ingest_batches_total', 0):,.0f} "
        f"rejected={metrics.get('rejected', 0):,.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
