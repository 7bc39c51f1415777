"""Fleet simulator: N agents, each with its own real outbox and check-in client, in a few processes.

    python -m tests.bench.fleet --agents 50 --procs 5 --events 20000 --seconds 20 \
        [--db sqlite|postgresql] [--kill-rounds 5 | --outage 10]

Every simulated agent is the agent's real delivery path: its own ``agent.outbox.Outbox`` (a
SQLite file, ``synchronous=FULL``), the real ``agent.checkin.CheckInClient`` over gRPC and the
real ``agent.schedule.CheckInSchedule`` (the server's interval with jitter, backoff with full
jitter, ``retry-after-ms``). Each agent produces realistic MigrationEvents at a steady rate; an
event id counts as *recorded* once ``Outbox.add`` returned (the outbox is the record). Agents
produce until their quota is reached or the fleet is told to stop, then drain their outbox and
report what they recorded and every check-in attempt (wall time, ok, status code).

:class:`ServerProcess` runs the real ``python -m server serve`` on a fixed port, so it can be
killed (SIGKILL) and restarted on the same address; :func:`stored_event_ids` reads
``update_events`` afterwards. The chaos tests (``tests/chaos``) drive both; run as a module it
prints recorded / stored / duplicates / lost, the reconnection spread and the delivery rate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PG_BASE = "postgresql+asyncpg://postgres@127.0.0.1:5432"
EACCES = "[Errno 13] Permission denied: '/etc/aggregator/agent.conf'"


# ---------------------------------------------------------------------------- the server


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (the server keeps it across restarts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Database:
    """A fresh server database: a SQLite file in ``workdir`` or a new PostgreSQL database."""

    kind: str
    url: str
    path: Path | None = None
    pg_name: str = ""

    @classmethod
    def create(cls, kind: str, workdir: Path) -> Database:
        if kind == "sqlite":
            path = workdir / "server.db"
            return cls(kind, f"sqlite+aiosqlite:///{path}", path=path)
        name = f"flagpost_chaos_{uuid.uuid4().hex[:10]}"
        _psql("postgres", f'CREATE DATABASE "{name}"')
        return cls(kind, f"{PG_BASE}/{name}", pg_name=name)

    def drop(self) -> None:
        if self.pg_name:
            _psql("postgres", f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')


def _psql(database: str, sql: str, separator: str = "|") -> str:
    return subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            database,
            "-F",
            separator,
            "-qAtc",
            sql,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def query(db: Database, sql: str) -> list[tuple[str, ...]]:
    """Rows of ``sql`` on the server database, every value as text."""
    if db.path is not None:
        with contextlib.closing(sqlite3.connect(db.path)) as conn:
            return [tuple(str(v) for v in row) for row in conn.execute(sql)]
    out = _psql(db.pg_name, sql, separator="\t")
    return [tuple(line.split("\t")) for line in out.splitlines() if line]


def stored_event_ids(db: Database) -> list[str]:
    """Every ``update_events.event_id`` (one entry per row, so duplicates would show)."""
    if db.path is not None:
        with contextlib.closing(sqlite3.connect(db.path)) as conn:
            return [row[0] for row in conn.execute("SELECT event_id FROM update_events")]
    return _psql(db.pg_name, "SELECT event_id FROM update_events").split()


class ServerProcess:
    """``python -m server serve`` on a fixed gRPC port; start, kill -9, restart."""

    def __init__(self, db: Database, workdir: Path, port: int, interval_s: int = 1) -> None:
        self.db = db
        self.workdir = workdir
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.env = dict(os.environ)
        self.env.update(
            FLAGPOST_DATABASE_URL=db.url,
            FLAGPOST_STATE_DIR=str(workdir / "server-state"),
            FLAGPOST_GRPC_PORT=str(port),
            FLAGPOST_WEB_PORT="0",
            FLAGPOST_CHECKIN_INTERVAL_SECONDS=str(interval_s),
            # A whole simulated fleet enrolls from 127.0.0.1: no per-address Enroll limit.
            FLAGPOST_ENROLL_RATE_PER_MINUTE="0",
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    def cli(self, *args: str) -> str:
        """Run ``python -m server ARGS`` and return its stdout."""
        return subprocess.run(
            [sys.executable, "-m", "server", *args],
            env=self.env,
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout.strip()

    def upgrade(self) -> None:
        self.cli("db", "upgrade")

    def token(self, uses: int) -> str:
        return self.cli("token", "create", "--uses", str(uses)).splitlines()[-1]

    def start(self, timeout: float = 90.0) -> float:
        """Start the server; return the wall time it printed its gRPC address (ready)."""
        assert self.proc is None, "already running"
        self.starts += 1
        out = self.workdir / f"server-{self.starts}.out"
        with out.open("wb") as stdout, (self.workdir / "server.log").open("ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "serve"],
                env=self.env,
                cwd=REPO,
                stdout=stdout,
                stderr=stderr,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"grpc: " in out.read_bytes():
                return time.time()
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                tail = (self.workdir / "server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"server exited with {code} at start:\n{tail}")
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"server not ready within {timeout}s")

    def kill(self) -> None:
        """kill -9 the server (no cleanup, no graceful anything)."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None
        self.kills += 1

    def stop(self) -> None:
        """SIGTERM (graceful), SIGKILL if it does not exit within 30 s."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------- the agents


@dataclass(frozen=True)
class FleetSpec:
    """What to simulate. Rates: each agent produces ``events / agents`` events spread evenly
    over ``seconds``. Retry settings are the agents' (shorter caps keep tests bounded; the real
    agent defaults to 1 s initial, 300 s cap)."""

    agents: int = 50
    procs: int = 5
    events: int = 20_000
    seconds: float = 20.0
    retry_initial_s: float = 0.5
    retry_max_s: float = 8.0
    startup_jitter_s: float = 1.0
    rpc_timeout_s: float = 10.0
    drain_timeout_s: float = 120.0
    max_events_per_checkin: int = 200
    seed: int = 1


@dataclass
class AgentReport:
    """One simulated agent's record: ids it recorded, and every check-in attempt."""

    name: str
    recorded: list[str] = field(default_factory=list)
    attempts: list[tuple[float, bool, str]] = field(default_factory=list)  # (wall, ok, code)
    left: int = 0  # events still in the outbox at the end (0 once drained)
    quarantined: int = 0


def make_event(rng: random.Random, hostname: str, run_id: str, n: int) -> Any:
    """A realistic MigrationEvent: detections and executions, one in seven a failure."""
    from agent import events

    info = {
        "hostname": hostname,
        "os": "Debian GNU/Linux 12 (bookworm)",
        "kernel": "6.1.0-18-amd64",
        "python": "3.11.2",
        "agent_version": "0.1.0",
        "config_path": "/etc/aggregator/agent.conf",
        "disk_free_bytes": str(rng.randrange(1 << 30, 1 << 36)),
        "uid": "0",
    }
    if n % 2 == 0:
        return events.migration_event(
            event_type=events.DETECTION,
            status=events.SUCCESS,
            run_id=run_id,
            message="Migration needed: 1 -> 4",
            migration_from="1",
            migration_to="4",
            system_info=info,
        )
    if n % 7 == 1:
        return events.migration_event(
            event_type=events.EXECUTION,
            status=events.FAILED,
            run_id=run_id,
            message="Migration 1 -> 4 failed at v1_to_v2_move_location: PermissionError "
            "[EACCES]; rolled back",
            error_message=f"Migration 1 -> 4 failed at step v1_to_v2_move_location: {EACCES}",
            error=events.ErrorInfo(
                failing_step="v1_to_v2_move_location",
                file_path="/etc/aggregator/agent.conf",
                errno=13,
                exception_type="PermissionError",
                rollback="succeeded",
                backup_path=f"/var/lib/flagpost-agent/backups/{run_id}",
            ),
            migration_from="1",
            migration_to="4",
            system_info=info,
        )
    return events.migration_event(
        event_type=events.EXECUTION,
        status=events.SUCCESS,
        run_id=run_id,
        message="Config migrated 1 -> 4",
        migration_from="1",
        migration_to="4",
        error=events.ErrorInfo(backup_path=f"/var/lib/flagpost-agent/backups/{run_id}"),
        system_info=info,
    )


def simulate_agent(
    spec: FleetSpec, state_dir: Path, quota: int, stop: Any, seed: int
) -> AgentReport:
    """Run one agent until it produced ``quota`` events (or ``stop`` is set) and drained."""
    from agent.checkin import CheckInClient
    from agent.config import RetrySettings
    from agent.enroll import load_credentials
    from agent.outbox import Outbox
    from agent.schedule import CheckInSchedule
    from agent.uuid7 import uuid7_str
    from flagpost.v1 import agent_pb2

    rng = random.Random(seed)
    report = AgentReport(state_dir.name)
    credentials = load_credentials(state_dir / "credentials.json")
    assert credentials is not None
    retry = RetrySettings(
        initial=timedelta(seconds=spec.retry_initial_s),
        maximum=timedelta(seconds=spec.retry_max_s),
    )
    schedule = CheckInSchedule(
        credentials.checkin_interval or timedelta(seconds=1),
        retry,
        startup_jitter=timedelta(seconds=spec.startup_jitter_s),
        rng=rng,
    )
    facts = agent_pb2.HostFacts(  # the machine id it enrolled with (Fleet.enroll)
        hostname=state_dir.name,
        os="Debian GNU/Linux 12",
        agent_version="0.1.0",
        machine_id=f"fleet-{state_dir.name}",
    )
    period = spec.seconds / max(1, quota)
    started = time.monotonic()
    produced = 0
    run_id = uuid7_str()
    next_checkin = started + schedule.first_delay().total_seconds()
    drain_deadline: float | None = None
    last_ok = False
    with (
        Outbox(state_dir / "outbox.db") as outbox,
        CheckInClient(
            credentials.server, credentials, timedelta(seconds=spec.rpc_timeout_s)
        ) as client,
    ):
        while True:
            now = time.monotonic()
            producing = produced < quota and not stop.is_set()
            while producing and now >= started + produced * period:
                if produced % 2 == 0:
                    run_id = uuid7_str()
                event = make_event(rng, facts.hostname, run_id, produced)
                if outbox.add(event):
                    report.recorded.append(event.event_id)
                produced += 1
                producing = produced < quota and not stop.is_set()
            if now >= next_checkin:
                result = client.cycle(
                    outbox,
                    facts,
                    max_events=spec.max_events_per_checkin,
                    max_bytes=1_000_000,
                    max_chunks=50,
                )
                report.attempts.append((time.time(), result.ok, result.code))
                last_ok = result.ok
                next_checkin = time.monotonic() + schedule.after(result).total_seconds()
            if not producing:
                if drain_deadline is None:
                    drain_deadline = time.monotonic() + spec.drain_timeout_s
                if last_ok and outbox.depth() == 0:
                    break
                if time.monotonic() > drain_deadline:
                    break
            wake = next_checkin if not producing else min(next_checkin, started + produced * period)
            time.sleep(min(0.05, max(0.0, wake - time.monotonic())))
        report.left = outbox.depth()
        report.quarantined = len(outbox.quarantined())
    return report


def _worker(
    spec: FleetSpec, dirs: list[str], quotas: list[int], stop: Any, done: Any, out: str
) -> None:
    """One simulator process: one thread per agent; writes its reports as JSON to ``out``."""
    logging.basicConfig(
        filename=out.removesuffix(".json") + ".log",
        level=logging.WARNING,
        format="%(asctime)s %(threadName)s %(levelname)s %(name)s: %(message)s",
    )
    reports: list[AgentReport | None] = [None] * len(dirs)

    def run(index: int) -> None:
        reports[index] = simulate_agent(
            spec,
            Path(dirs[index]),
            quotas[index],
            stop,
            spec.seed * 100_003 + zlib.crc32(dirs[index].encode()),
        )

    threads = [
        threading.Thread(target=run, args=(i,), name=Path(dirs[i]).name) for i in range(len(dirs))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    data = [asdict(report) for report in reports if report is not None]
    tmp = Path(out + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, out)
    done.set()


@dataclass
class FleetReport:
    """What the whole fleet recorded and how its check-ins went."""

    agents: list[AgentReport]
    elapsed_s: float

    @property
    def recorded(self) -> list[str]:
        return [event_id for agent in self.agents for event_id in agent.recorded]

    @property
    def left(self) -> int:
        return sum(agent.left for agent in self.agents)

    def reconnection_times(self, ready_at: float) -> list[float]:
        """Per agent: seconds from ``ready_at`` (server back) to its first successful check-in."""
        times = []
        for agent in self.agents:
            firsts = [wall for wall, ok, _ in agent.attempts if ok and wall >= ready_at]
            if firsts:
                times.append(min(firsts) - ready_at)
        return times


class Fleet:
    """The simulated agents, in ``spec.procs`` processes. Use as a context manager."""

    def __init__(self, spec: FleetSpec, workdir: Path) -> None:
        self.spec = spec
        self.workdir = workdir
        self.dirs = [workdir / f"agent-{i:03d}" for i in range(spec.agents)]
        self._ctx = mp.get_context("spawn")
        self._stop = self._ctx.Event()
        self._procs: list[Any] = []
        self._done: list[Any] = []
        self._outs: list[Path] = []
        self._started = 0.0

    def enroll(self, address: str, token: str) -> None:
        """Enroll every agent through the agent's real enrollment (credentials.json 0600)."""
        from agent.enroll import enroll
        from flagpost.v1 import agent_pb2

        for path in self.dirs:
            facts = agent_pb2.HostFacts(hostname=path.name, machine_id=f"fleet-{path.name}")
            enroll(address, token, facts, path / "credentials.json")

    def start(self) -> None:
        """Start producing and checking in."""
        per = [self.spec.events // self.spec.agents] * self.spec.agents
        for i in range(self.spec.events % self.spec.agents):
            per[i] += 1
        self._started = time.monotonic()
        for index in range(self.spec.procs):
            mine = list(range(index, self.spec.agents, self.spec.procs))
            done = self._ctx.Event()
            out = self.workdir / f"worker-{index}.json"
            proc = self._ctx.Process(
                target=_worker,
                args=(
                    self.spec,
                    [str(self.dirs[i]) for i in mine],
                    [per[i] for i in mine],
                    self._stop,
                    done,
                    str(out),
                ),
                daemon=True,
            )
            proc.start()
            self._procs.append(proc)
            self._done.append(done)
            self._outs.append(out)

    def stop_producing(self) -> None:
        self._stop.set()

    def finished(self) -> bool:
        return all(done.is_set() for done in self._done)

    def wait(self, timeout: float) -> FleetReport:
        """Wait until every agent drained (or gave up), then collect the reports."""
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        alive = [proc.pid for proc in self._procs if proc.is_alive()]
        if alive:
            raise TimeoutError(f"fleet workers {alive} still running after {timeout}s")
        agents: list[AgentReport] = []
        for out in self._outs:
            for data in json.loads(out.read_text()):
                data["attempts"] = [tuple(item) for item in data["attempts"]]
                agents.append(AgentReport(**data))
        return FleetReport(agents, time.monotonic() - self._started)

    def close(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
            proc.join(10)
            proc.close()
        self._procs.clear()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Delivery:
    recorded: int
    stored: int
    duplicates: int
    lost: int
    unexpected: int

    @property
    def exactly_once(self) -> bool:
        return self.lost == 0 and self.duplicates == 0 and self.unexpected == 0

    def line(self) -> str:
        return (
            f"recorded={self.recorded} stored={self.stored} duplicates={self.duplicates} "
            f"lost={self.lost} unexpected={self.unexpected}"
        )


def delivery(recorded: list[str], stored: list[str]) -> Delivery:
    """Compare what the agents recorded with the rows in update_events."""
    counts = Counter(stored)
    wanted = set(recorded)
    return Delivery(
        recorded=len(wanted),
        stored=sum(counts[event_id] for event_id in wanted),
        duplicates=sum(n - 1 for n in counts.values() if n > 1),
        lost=sum(1 for event_id in wanted if event_id not in counts),
        unexpected=sum(1 for event_id in counts if event_id not in wanted),
    )


def spread(values: list[float]) -> str:
    """min / median / max / stdev of ``values`` in seconds."""
    if not values:
        return "n=0"
    return (
        f"n={len(values)} min={min(values):.2f}s median={statistics.median(values):.2f}s "
        f"max={max(values):.2f}s stdev={statistics.pstdev(values):.2f}s"
    )


@contextlib.contextmanager
def environment(kind: str, workdir: Path) -> Iterator[tuple[Database, ServerProcess]]:
    """A fresh database and a started server on a fixed port (``workdir`` holds its files)."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = Database.create(kind, workdir)
    try:
        server = ServerProcess(db, workdir, free_port())
        server.upgrade()
        try:
            server.start()
            yield db, server
        finally:
            server.stop()
    finally:
        db.drop()


def run_kills(fleet: Fleet, server: ServerProcess, rounds: int, rng: random.Random) -> None:
    """kill -9 the server ``rounds`` times at random moments while the fleet runs."""
    window = fleet.spec.seconds / rounds
    for _ in range(rounds):
        time.sleep(rng.uniform(0.3, max(0.4, window * 0.6)))
        server.kill()
        time.sleep(rng.uniform(0.0, 1.0))
        server.start()


def main() -> int:
    parser = argparse.ArgumentParser(description="Flagpost fleet simulator (delivery figures)")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--procs", type=int, default=5)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="production time")
    parser.add_argument("--kill-rounds", type=int, default=0, help="kill -9 the server N times")
    parser.add_argument("--outage", type=float, default=0.0, help="server down for N seconds")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    spec = FleetSpec(
        agents=args.agents,
        procs=args.procs,
        events=args.events,
        seconds=args.seconds,
        seed=args.seed,
    )
    workdir = Path(tempfile.mkdtemp(prefix="flagpost-fleet-"))
    try:
        return _run(args, spec, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace, spec: FleetSpec, workdir: Path) -> int:
    rng = random.Random(args.seed)
    with environment(args.db, workdir) as (db, server), Fleet(spec, workdir) as fleet:
        fleet.enroll(server.address, server.token(spec.agents))
        fleet.start()
        ready_at = 0.0
        if args.kill_rounds:
            run_kills(fleet, server, args.kill_rounds, rng)
        elif args.outage:
            time.sleep(min(3.0, spec.seconds / 4))
            server.kill()
            time.sleep(args.outage)
            ready_at = server.start()
        report = fleet.wait(spec.drain_timeout_s + spec.seconds + 60)
        server.stop()
        result = delivery(report.recorded, stored_event_ids(db))
    print(
        f"db={args.db} agents={spec.agents} procs={spec.procs} kills={server.kills} "
        f"outage={args.outage}s elapsed={report.elapsed_s:.1f}s"
    )
    print(result.line())
    print(f"events left in outboxes: {report.left}")
    if ready_at:
        print(f"reconnection after the outage: {spread(report.reconnection_times(ready_at))}")
    return 0 if result.exactly_once and report.left == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
