"""Ingest load generator: N simulated agents send realistic MigrationEvents over real gRPC.

    python -m tests.bench.ingest --db sqlite --agents 64 --inflight 64 --seconds 10

Starts a real ``flagpost-server serve`` (SQLite in a temp dir, or a fresh PostgreSQL database),
enrolls the agents, then drives check-ins of ``--events`` events each from ``--procs`` separate
client processes, ``--inflight`` outstanding in total. Every check-in is acknowledged only after
its events are committed, so events/s are durable events. Prints check-ins/s, events/s, p50/p99
latency, and the server's CPU time and RSS. ``--prefill N`` stores N events first (the
"2 million rows already stored" case). A figure printer, not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
from google.protobuf.timestamp_pb2 import Timestamp

from agent.uuid7 import uuid7_str
from flagpost.v1 import agent_pb2, agent_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
EACCES_MESSAGE = "[Errno 13] Permission denied: '/etc/aggregator/agent.conf'"
PG_BASE = "postgresql+asyncpg://postgres@127.0.0.1:5432"
METRICS_TOKEN = "flagpost-bench-metrics"  # what scrape() presents for /metrics


@dataclass(frozen=True)
class WorkerResult:
    checkins: int
    events: int
    errors: int
    latencies_ms: list[float]


def make_event(run_id: str, i: int) -> agent_pb2.MigrationEvent:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    failed = i % 7 == 0
    event = agent_pb2.MigrationEvent(
        event_id=uuid7_str(),
        event_type=agent_pb2.EVENT_TYPE_MIGRATION_EXECUTION
        if i % 2
        else agent_pb2.EVENT_TYPE_MIGRATION_DETECTION,
        status=agent_pb2.EVENT_STATUS_FAILED if failed else agent_pb2.EVENT_STATUS_SUCCESS,
        message="Config migrated 1 -> 4" if not failed else "Execution failed: permission denied",
        error_message=EACCES_MESSAGE if failed else "",
        migration_from="1",
        migration_to="4",
        occurred_at=stamp,
        run_id=run_id,
        system_info={
            "hostname": f"bench-host-{i % 1000}",
            "os": "Debian GNU/Linux 12 (bookworm)",
            "kernel": "6.1.0-bench",
            "python": "3.11.7",
            "agent_version": "0.1.0",
            "config_path": "/etc/flagpost/agent.json",
            "disk_free_bytes": "52428800000",
            "uid": "0",
        },
    )
    if failed:
        event.error_detail.failing_step = "move_legacy_config"
        event.error_detail.errno = 13
        event.error_detail.errno_name = "EACCES"
        event.error_detail.rollback = "succeeded"
    return event


async def drive(
    target: str,
    agents: list[tuple[str, str]],
    inflight: int,
    seconds: float,
    per: int,
    first: int = 0,
    step: int = 1,
) -> WorkerResult:
    """``inflight`` lanes of back-to-back check-ins of ``per`` events; lane k is agent
    ``first + k * step`` (modulo the agents)."""
    latencies: list[float] = []
    checkins = events = errors = 0
    deadline = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(target) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)

        async def one_lane(lane: int) -> None:
            nonlocal checkins, events, errors
            index = (first + lane * step) % len(agents)
            agent_id, credential = agents[index]
            metadata = (("authorization", f"Bearer {credential}"),)
            # One realistic request per lane, built once; every check-in gets fresh event ids,
            # a fresh run id and the current time, so the client spends its CPU on gRPC, not on
            # building messages (on 2 cores the load generator competes with the server).
            request = agent_pb2.CheckInRequest(
                agent_id=agent_id,
                facts=bench_facts(index),
                events=[make_event(uuid7_str(), lane + k) for k in range(per)],
            )
            while time.monotonic() < deadline:
                run_id = uuid7_str()
                now = time.time_ns()
                for e in request.events:
                    e.event_id = uuid7_str()
                    e.run_id = run_id
                    e.occurred_at.seconds = now // 1_000_000_000
                started = time.perf_counter()
                try:
                    response = await stub.CheckIn(request, metadata=metadata, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    await asyncio.sleep(0.05)
                    continue
                latencies.append((time.perf_counter() - started) * 1000)
                checkins += 1
                events += len(response.acknowledged_event_ids)

        await asyncio.gather(*(one_lane(i) for i in range(inflight)))
    return WorkerResult(checkins, events, errors, latencies)


def worker(args: tuple[str, list[tuple[str, str]], int, float, int, int, int]) -> WorkerResult:
    return asyncio.run(drive(*args))


def bench_facts(index: int) -> agent_pb2.HostFacts:
    """The host facts bench agent ``index`` enrolls and checks in with (the server binds the
    credential to the machine id)."""
    return agent_pb2.HostFacts(
        hostname=f"bench-{index}", agent_version="0.1.0", machine_id=f"bench-{index}"
    )


def enroll(target: str, token: str, count: int) -> list[tuple[str, str]]:
    result = []
    with grpc.insecure_channel(target) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        for i in range(count):
            response = stub.Enroll(
                agent_pb2.EnrollRequest(
                    token=token,
                    facts=bench_facts(i),
                )
            )
            result.append((response.agent_id, response.credential))
    return result


def server_env(db: str, workdir: Path) -> tuple[dict[str, str], str | None]:
    env = dict(os.environ)
    env["FLAGPOST_STATE_DIR"] = str(workdir / "state")
    env["FLAGPOST_GRPC_PORT"] = "0"
    env["FLAGPOST_WEB_PORT"] = "0"
    env["FLAGPOST_ENROLL_RATE_PER_MINUTE"] = "0"  # every simulated agent enrolls from 127.0.0.1
    token_file = workdir / "metrics.token"
    token_file.write_text(METRICS_TOKEN)
    env["FLAGPOST_METRICS_TOKEN_FILE"] = str(token_file)
    pg_name = None
    if db == "sqlite":
        env["FLAGPOST_DATABASE_URL"] = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    else:
        pg_name = f"flagpost_bench_{uuid.uuid4().hex[:8]}"
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f'CREATE DATABASE "{pg_name}"'],
            check=True,
        )
        env["FLAGPOST_DATABASE_URL"] = f"{PG_BASE}/{pg_name}"
    return env, pg_name


def shut_down(server: subprocess.Popen[str] | None, pg_name: str | None) -> None:
    """Stop a bench's server (SIGTERM, then wait for its drain) and drop its PostgreSQL
    database (``server_env``'s ``pg_name``; None on SQLite)."""
    if server is not None:
        server.terminate()
        server.wait(timeout=60)
    if pg_name:
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f'DROP DATABASE "{pg_name}"'],
            check=False,
            capture_output=True,
        )


def create_user(env: dict[str, str], name: str, password: str, role: str = "viewer") -> None:
    """``flagpost-server user create`` on the bench's database, the password on stdin."""
    subprocess.run(
        [sys.executable, "-m", "server", "user", "create", name, "--role", role],
        env=env,
        cwd=REPO,
        input=password + "\n",
        text=True,
        check=True,
        capture_output=True,
    )


def cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def serve(env: dict[str, str], log: Path | None = None) -> tuple[subprocess.Popen[str], str, str]:
    """Start ``flagpost-server serve`` with ``env``; return it, its gRPC address and web URL
    (read from the lines it prints once both listen). ``log``: where its log goes (else
    nowhere)."""
    with open(log, "w") if log is not None else open(os.devnull, "w") as stderr:
        server = subprocess.Popen(
            [sys.executable, "-m", "server", "serve"],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    target = web = ""
    assert server.stdout is not None
    for line in server.stdout:
        if line.startswith("grpc: "):
            target = line.removeprefix("grpc: ").strip()
        if line.startswith("web: "):
            web = line.removeprefix("web: ").strip().removesuffix("/history")
            break
    return server, target, web


@dataclass(frozen=True)
class Figures:
    seconds: float
    checkins: int
    events: int
    errors: int
    p50: float
    p99: float
    server_cpu: float  # share of one core
    client_cpu: float
    rss_mb: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    def line(self) -> str:
        return (
            f"checkins/s={self.checkins / self.seconds:,.0f} events/s={self.events_per_s:,.0f} "
            f"p50={self.p50:.1f}ms p99={self.p99:.1f}ms errors={self.errors} "
            f"server_cpu={self.server_cpu * 100:.0f}% server_rss={self.rss_mb:.0f}MiB "
            f"client_cpu={self.client_cpu * 100:.0f}%"
        )


def load(pid: int, target: str, agents: list[tuple[str, str]], args: argparse.Namespace) -> Figures:
    """Drive ``target`` with ``args.inflight`` lanes from ``args.procs`` client processes for
    ``args.seconds``; the server process ``pid`` is measured for CPU and RSS."""
    proc = psutil.Process(pid)
    cpu_before = proc.cpu_times()
    lanes = max(1, args.inflight // args.procs)
    # Process i drives agents i, i + procs, ...: one agent never has two check-ins in flight.
    jobs = [
        (target, agents, lanes, args.seconds, args.events, i, args.procs) for i in range(args.procs)
    ]
    started = time.perf_counter()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with mp.get_context("spawn").Pool(args.procs) as pool:
        results = pool.map(worker, jobs)
    elapsed = time.perf_counter() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_after = proc.cpu_times()
    latencies = sorted(x for r in results for x in r.latencies_ms)
    cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    client_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    return Figures(
        seconds=elapsed,
        checkins=sum(r.checkins for r in results),
        events=sum(r.events for r in results),
        errors=sum(r.errors for r in results),
        p50=statistics.median(latencies) if latencies else float("nan"),
        p99=latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan"),
        server_cpu=cpu / elapsed,
        client_cpu=client_cpu / elapsed,
        rss_mb=proc.memory_info().rss / 2**20,
    )


def flagpost_round(args: argparse.Namespace) -> tuple[Figures, dict[str, float]]:
    """One fresh Flagpost server (fresh database), enrolled, prefilled if asked, then loaded."""
    workdir = Path(tempfile.mkdtemp(prefix="flagpost-bench-"))
    env, pg_name = server_env(args.db, workdir)
    cli(env, "db", "upgrade")
    server, target, web = serve(env)
    try:
        token = cli(env, "token", "create", "--uses", str(args.agents))
        agents = enroll(target, token, args.agents)
        if args.prefill and args.db == "sqlite":
            prefill_sqlite(env["FLAGPOST_DATABASE_URL"], agents, args.prefill)
        elif args.prefill:
            prefill(target, agents, args.prefill)
        figures = load(server.pid, target, agents, args)
        metrics = scrape(web)
    finally:
        shut_down(server, pg_name)
    return figures, metrics


def minimal_round(args: argparse.Namespace) -> Figures:
    """The same load against ``tests.bench.minimal_server`` on a fresh SQLite file."""
    workdir = Path(tempfile.mkdtemp(prefix="flagpost-bench-minimal-"))
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.minimal_server", "--database", str(workdir / "m.db")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        target = server.stdout.readline().removeprefix("grpc: ").strip()
        agents = enroll(target, "minimal", args.agents)
        return load(server.pid, target, agents, args)
    finally:
        shut_down(server, None)


def main() -> int:
    parser = argparse.ArgumentParser(description="Flagpost ingest benchmark")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--agents", type=int, default=64)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--events", type=int, default=10, help="events per check-in")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--prefill", type=int, default=0, help="events stored before the run")
    parser.add_argument(
        "--vs-minimal",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="alternate ROUNDS pairs of Flagpost and tests.bench.minimal_server (SQLite) "
        "and print each pair's events/s ratio",
    )
    args = parser.parse_args()
    print(
        f"db={args.db} prefill={args.prefill} agents={args.agents} inflight={args.inflight} "
        f"events/checkin={args.events} seconds={args.seconds} "
        f"(100% = one core; {os.cpu_count()} cores)"
    )
    if args.vs_minimal:
        if args.db != "sqlite" or args.prefill:
            sys.exit(
                "--vs-minimal compares SQLite servers on an empty database: drop --db/--prefill"
            )
        ratios = []
        for n in range(1, args.vs_minimal + 1):
            ours, _ = flagpost_round(args)
            theirs = minimal_round(args)
            ratios.append(ours.events_per_s / theirs.events_per_s)
            print(f"round {n} flagpost: {ours.line()}")
            print(f"round {n} minimal:  {theirs.line()}")
            print(f"round {n} ratio (flagpost / minimal events/s) = {ratios[-1]:.2f}")
        print(
            f"ratios: {' '.join(f'{r:.2f}' for r in ratios)}; "
            f"median {statistics.median(ratios):.2f}"
        )
        return 0
    figures, metrics = flagpost_round(args)
    print(figures.line())
    checkins_total = metrics.get("flagpost_checkins_total", 0.0)
    batches = metrics.get("flagpost_ingest_batches_total", 0.0)
    if batches:
        print(
            f"server: batches={batches:,.0f} checkins/batch={checkins_total / batches:.1f} "
            f"duplicates={metrics.get('flagpost_events_duplicate_total', 0):,.0f} "
            f"rejected={metrics.get('rejected', 0):,.0f}"
        )
    return 0


def scrape(web: str) -> dict[str, float]:
    """The server's /metrics as {name: value} (rejections summed as "rejected")."""
    import urllib.request

    values: dict[str, float] = {}
    request = urllib.request.Request(
        f"{web}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            text = reply.read().decode()
    except OSError:
        return values
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("flagpost_checkins_rejected_total"):
            values["rejected"] = values.get("rejected", 0.0) + float(value)
        values[name] = float(value)
    return values


def prefill_sqlite(database_url: str, agents: list[tuple[str, str]], total: int) -> None:
    """Store ``total`` realistic events straight through the storage layer (the same rows and
    SQL the writer uses, batches of 2,000, time-ordered ids) while the server idles."""
    from datetime import UTC, datetime

    from server.domain import Category, EventStatus, NewEvent, Severity
    from server.storage import events as events_db
    from server.storage.db import create_sync_sqlite_engine

    started = time.perf_counter()
    engine = create_sync_sqlite_engine(database_url, busy_timeout_ms=30_000)
    info = dict(make_event("", 0).system_info)
    try:
        with engine.connect() as conn:
            done = 0
            while done < total:
                now = datetime.now(UTC)
                run_id = uuid7_str()
                batch = [
                    NewEvent(
                        event_id=uuid7_str(),
                        agent_id=agents[(done + k) % len(agents)][0],
                        category=Category.MIGRATION,
                        event_type="migration_execution" if k % 2 else "migration_detection",
                        status=EventStatus.FAILED if k % 7 == 0 else EventStatus.SUCCESS,
                        severity=Severity.ERROR if k % 7 == 0 else Severity.SUCCESS,
                        message="Config migrated 1 -> 4",
                        error_message=EACCES_MESSAGE if k % 7 == 0 else "",
                        error_detail={"failing_step": "move_legacy_config", "errno": 13}
                        if k % 7 == 0
                        else {},
                        migration_from="1",
                        migration_to="4",
                        run_id=run_id,
                        system_info=info,
                        occurred_at=now,
                    )
                    for k in range(min(2000, total - done))
                ]
                with conn.begin():
                    events_db.insert_rows_sync(conn, events_db.encode_events(batch, now, "sqlite"))
                done += len(batch)
    finally:
        engine.dispose()
    print(f"prefill: {total:,} events in {time.perf_counter() - started:.0f}s (storage layer)")


def prefill(target: str, agents: list[tuple[str, str]], total: int) -> None:
    """Store ``total`` events through the real ingest path (500 per check-in, 8 in flight)."""
    per = 500
    rounds = max(1, total // (per * 8))

    async def run() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            agent_id, credential = agents[0]
            metadata = (("authorization", f"Bearer {credential}"),)

            async def lane() -> None:
                for _ in range(rounds):
                    run_id = uuid7_str()
                    request = agent_pb2.CheckInRequest(
                        agent_id=agent_id,
                        facts=bench_facts(0),
                        events=[make_event(run_id, k) for k in range(per)],
                    )
                    await stub.CheckIn(request, metadata=metadata, timeout=120)

            await asyncio.gather(*(lane() for _ in range(8)))

    started = time.perf_counter()
    asyncio.run(run())
    print(f"prefill: {rounds * per * 8:,} events in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
