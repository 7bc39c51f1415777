"""Health tells the truth about a database that answers but cannot be written.

A real server (ports 0), real gRPC check-ins from an enrolled agent, real databases:

- disk full: the SQLite database on a small tmpfs filled by a filler file. /healthz answers 503
  naming "disk full", gRPC health is NOT_SERVING, check-ins get UNAVAILABLE, and it stays so,
  sampled across many probe intervals (no flapping back to healthy); the log names the cause
  once. Deleting the filler brings service back and check-ins are stored;
- a nearly full disk after the writer's batch failed: the probe's small write would still
  succeed (SQLite reuses its WAL file's space), so the probe wants more free space than there
  was at the failure;
- read-only: the database directory bind-mounted and remounted read-only under a running
  server; ``flagpost-server serve`` refusing, in one line, a read-only mount, a full disk and a
  database file owned by root that the server, run as ``nobody``, can only read;
- PostgreSQL: the test database set ``default_transaction_read_only``.

Mounts need root (CI runs as root); a test skips, naming why, only when mounting is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from sqlalchemy.exc import OperationalError
from test_db_outage import NOT_SERVING, SERVING, health_status, outage_config, stored
from test_grpc_ingest import FACTS, auth, enroll, event

from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server import app_keys
from server.app import RunningServer, start_server
from server.config import ServerConfig
from server.services.health import HealthMonitor
from server.storage.db import SQLITE_MIN_FREE_BYTES, free_bytes
from server.storage.faults import DbFault, classify

ROOT = Path(__file__).resolve().parent.parent
HEALTH_LOGGER = "server.services.health"
SAMPLE_SECONDS = 3.0  # 30 probe intervals of outage_config's 100 ms
START_TIMEOUT_S = 60

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not permitted here: {proc.stderr.strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path`` (created), unmounted afterwards."""
    path.mkdir(parents=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the filesystem of ``directory`` with a filler file until fewer than ``leave``
    bytes (rounded to 4 KiB) are free; returns the filler."""
    filler = directory / "filler"
    with filler.open("wb") as out:
        for chunk in (1 << 20, 4096):
            try:
                while free_bytes(directory) - chunk >= leave:
                    out.write(b"\0" * chunk)
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def sqlite_file(config: ServerConfig) -> Path:
    return Path(config.database_url.removeprefix("sqlite+aiosqlite:///"))


def on(config: ServerConfig, database: Path) -> ServerConfig:
    """``outage_config`` of ``config`` on the SQLite file ``database``."""
    return outage_config(config, database_url=f"sqlite+aiosqlite:///{database}")


async def healthz(server: RunningServer) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.web_url}/healthz") as reply,
    ):
        return reply.status, await reply.json()


async def wait_for(
    server: RunningServer, status: int, cause: str | None, within: float = 30.0
) -> None:
    """/healthz answers ``status`` (naming ``cause`` when given) and both gRPC health statuses
    agree, within ``within`` seconds."""
    grpc_status = SERVING if status == 200 else NOT_SERVING
    started = time.monotonic()
    last: object = None
    while time.monotonic() - started < within:
        code, body = await healthz(server)
        last = (code, body, await health_status(server.grpc_port))
        if (
            code == status
            and (cause is None or body.get("database") == cause)
            and last[2] == (grpc_status, grpc_status)
        ):
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"health never became {status} {cause}: {last}")


async def assert_stays_down(
    server: RunningServer, stub: agent_pb2_grpc.AgentServiceStub, credential: str, cause: str
) -> list[str]:
    """Sample health for SAMPLE_SECONDS: every sample 503 naming ``cause`` and NOT_SERVING, and
    every check-in sent meanwhile UNAVAILABLE. Returns the refused events' ids."""
    refused: list[str] = []
    started = time.monotonic()
    samples = 0
    while time.monotonic() - started < SAMPLE_SECONDS:
        code, body = await healthz(server)
        assert (code, body["database"]) == (503, cause), body
        assert await health_status(server.grpc_port) == (NOT_SERVING, NOT_SERVING)
        if samples % 4 == 0:
            request = agent_pb2.CheckInRequest(facts=FACTS, events=[event() for _ in range(3)])
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CheckIn(request, metadata=auth(credential), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert cause in (caught.value.details() or "")
            refused += [e.event_id for e in request.events]
        samples += 1
        await asyncio.sleep(0.1)
    assert samples >= 10
    assert not server.app[app_keys.HEALTH].available
    return refused


def health_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == HEALTH_LOGGER]


@contextlib.asynccontextmanager
async def agent(
    server: RunningServer,
) -> AsyncIterator[tuple[agent_pb2_grpc.AgentServiceStub, str]]:
    """An enrolled agent's stub and credential; it checks in once successfully."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        _, credential = await enroll(server, channel)
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        first = agent_pb2.CheckInRequest(facts=FACTS, events=[event() for _ in range(2)])
        await stub.CheckIn(first, metadata=auth(credential), timeout=10)
        yield stub, credential


async def check_in_stored(
    server: RunningServer, stub: agent_pb2_grpc.AgentServiceStub, credential: str
) -> None:
    request = agent_pb2.CheckInRequest(facts=FACTS, events=[event() for _ in range(3)])
    reply = await stub.CheckIn(request, metadata=auth(credential), timeout=10)
    ids = [e.event_id for e in request.events]
    assert list(reply.acknowledged_event_ids) == ids
    assert sorted(await stored(server, ids)) == sorted(ids)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_disk_full_is_not_serving_until_space_is_freed(
    server_config: ServerConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=HEALTH_LOGGER)
    with tmpfs(tmp_path / "small") as small:
        database = small / "flagpost.db"
        shutil.copyfile(sqlite_file(server_config), database)
        server = await start_server(on(server_config, database))
        try:
            async with agent(server) as (stub, credential):
                await wait_for(server, 200, None)
                filler = fill(small)
                await wait_for(server, 503, "disk full")
                refused = await assert_stays_down(server, stub, credential, "disk full")
                assert await stored(server, refused) == []
                metrics = server.app[app_keys.METRICS].exposition().decode()
                assert 'flagpost_database_fault{cause="disk full"} 1.0' in metrics
                assert "flagpost_database_up 0.0" in metrics
                lines = health_lines(caplog)
                assert lines == [
                    "database unwritable: disk full; check-ins refused until it is back"
                ], lines

                filler.unlink()
                await wait_for(server, 200, None)
                await check_in_stored(server, stub, credential)
                lines = health_lines(caplog)
                assert lines[1:] == ["database writable again (was: disk full): resuming service"]
        finally:
            await server.stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_after_a_failed_batch_a_nearly_full_disk_needs_more_space_than_it_had(
    server_config: ServerConfig, tmp_path: Path
) -> None:
    """The writer's batch failed for a full disk while the probe's small write still fits:
    the monitor keeps the fault until more space is free than at the failure."""
    with tmpfs(tmp_path / "small") as small:
        database = small / "flagpost.db"
        shutil.copyfile(sqlite_file(server_config), database)
        server = await start_server(on(server_config, database))
        try:
            health = server.app[app_keys.HEALTH]
            monitor = HealthMonitor(
                server.app[app_keys.CONFIG], server.app[app_keys.ENGINE], health
            )
            filler = fill(small, leave=2 * SQLITE_MIN_FREE_BYTES)
            assert await monitor.probe_once()  # room for the probe's write
            sqlite_full = OperationalError(
                "COMMIT", {}, Exception("database or disk is full")
            )  # what the writer thread's commit raises
            assert health.report_failure(sqlite_full) is DbFault.DISK_FULL
            for _ in range(5):
                assert not await monitor.probe_once()
                assert health.fault is DbFault.DISK_FULL
            with filler.open("r+b") as out:  # free a little, not enough
                out.truncate(max(0, filler.stat().st_size - SQLITE_MIN_FREE_BYTES // 2))
            assert not await monitor.probe_once()
            filler.unlink()
            assert await monitor.probe_once()
            assert health.available and health.fault is None
        finally:
            await server.stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_read_only_mount_is_not_serving_until_it_is_gone(
    server_config: ServerConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only bind mount over the database's directory while the server runs (a remount
    of a mount with files open for writing is refused, EBUSY): new opens of the database see
    a read-only filesystem."""
    caplog.set_level(logging.INFO, logger=HEALTH_LOGGER)
    directory = tmp_path / "db"
    directory.mkdir()
    database = directory / "flagpost.db"
    shutil.copyfile(sqlite_file(server_config), database)
    server = await start_server(on(server_config, database))
    mounted = False
    try:
        async with agent(server) as (stub, credential):
            _mount("--bind", "-o", "ro", str(directory), str(directory))
            mounted = True
            await wait_for(server, 503, "read-only")
            _, body = await healthz(server)
            assert body["detail"] == "database unwritable: read-only"
            refused = await assert_stays_down(server, stub, credential, "read-only")
            assert health_lines(caplog) == [
                "database unwritable: read-only; check-ins refused until it is back"
            ]
            _umount(directory)
            mounted = False
            await wait_for(server, 200, None)
            await check_in_stored(server, stub, credential)
            assert await stored(server, refused) == []
    finally:
        if mounted:
            _umount(directory)
        await server.stop()


def _serve_env(database: Path, state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    env.update(
        FLAGPOST_DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        FLAGPOST_STATE_DIR=str(state_dir),
        FLAGPOST_GRPC_PORT="0",
        FLAGPOST_WEB_PORT="0",
        FLAGPOST_GRPC_HOST="127.0.0.1",
        FLAGPOST_WEB_HOST="127.0.0.1",
    )
    return env


def _assert_refused(
    argv: list[str], env: dict[str, str], cwd: Path, cause: str, path: Path
) -> None:
    """``argv`` (``flagpost-server serve``) exits 1 with one line naming ``cause`` and
    ``path``, no traceback."""
    try:
        proc = subprocess.run(
            argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=START_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"flagpost-server serve started on a database that is {cause}")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        f"flagpost-server: the database cannot be written: {cause} ({path})"
    ), lines
    assert "Traceback" not in proc.stderr and "OperationalError" not in proc.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_serve_refuses_a_full_disk_in_one_line(server_config: ServerConfig, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small") as small:
        database = small / "flagpost.db"
        shutil.copyfile(sqlite_file(server_config), database)
        fill(small)
        argv = [sys.executable, "-m", "server", "serve"]
        _assert_refused(argv, _serve_env(database, tmp_path / "state"), ROOT, "disk full", database)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_serve_refuses_a_read_only_mount_in_one_line(
    server_config: ServerConfig, tmp_path: Path
) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    directory = tmp_path / "db"
    directory.mkdir()
    database = directory / "flagpost.db"
    shutil.copyfile(sqlite_file(server_config), database)
    # the bind mount lives in a private mount namespace: nothing to undo here
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(directory)]
    argv += [sys.executable, "-m", "server", "serve"]
    _assert_refused(argv, _serve_env(database, tmp_path / "state"), ROOT, "read-only", database)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_serve_as_nobody_refuses_a_database_file_owned_by_root(server_config: ServerConfig) -> None:
    from unprivileged_testlib import nobody_server_runtime

    runtime = nobody_server_runtime()
    base = Path(tempfile.mkdtemp(prefix="flagpost-root-db-", dir="/tmp"))
    try:
        base.chmod(0o755)
        directory, state = base / "db", base / "state"
        directory.mkdir()
        state.mkdir()
        for owned in (directory, state):  # the server's own directories...
            os.chown(owned, runtime.user.pw_uid, runtime.user.pw_gid)
        database = directory / "flagpost.db"
        shutil.copyfile(sqlite_file(server_config), database)
        database.chmod(0o644)  # ...but a database file that root restored, say
        assert database.stat().st_uid == 0
        argv = runtime.module("server", "serve")
        env = runtime.env(_serve_env(database, state))
        _assert_refused(argv, env, runtime.path, "read-only", database)
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def pg_admin(database_url: str, *statements: str) -> None:
    """Run ``statements`` on the test database itself, as the superuser the tests use."""
    import asyncpg

    conn = await asyncpg.connect(
        database_url.replace("+asyncpg", ""),
        server_settings={"default_transaction_read_only": "off"},  # whatever the database says
    )
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_postgresql_read_only_database_is_not_serving(
    server_config: ServerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=HEALTH_LOGGER)
    name = server_config.database_url.rsplit("/", 1)[1]
    terminate = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )
    server = await start_server(outage_config(server_config))
    try:
        async with agent(server) as (stub, credential):
            # new sessions start read-only; ending the open ones makes the pool reconnect
            await pg_admin(
                server_config.database_url,
                f'ALTER DATABASE "{name}" SET default_transaction_read_only = on',
                terminate,
            )
            await wait_for(server, 503, "read-only")
            refused = await assert_stays_down(server, stub, credential, "read-only")
            lines = health_lines(caplog)
            assert "database unwritable: read-only; check-ins refused until it is back" in lines
            assert not any("again" in line for line in lines), lines

            await pg_admin(
                server_config.database_url,
                f'ALTER DATABASE "{name}" RESET default_transaction_read_only',
                terminate,
            )
            await wait_for(server, 200, None)
            await check_in_stored(server, stub, credential)
            assert await stored(server, refused) == []
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("exc", "fault"),
    [
        (OperationalError("COMMIT", {}, Exception("database or disk is full")), DbFault.DISK_FULL),
        (
            OperationalError("x", {}, Exception("attempt to write a readonly database")),
            DbFault.READ_ONLY,
        ),
        (OperationalError("x", {}, Exception("database is locked")), DbFault.LOCKED),
        (OperationalError("x", {}, Exception("unable to open database file")), DbFault.UNREACHABLE),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), DbFault.UNREACHABLE),
        (OSError(errno.ENOSPC, "No space left on device"), DbFault.DISK_FULL),
        (OSError(errno.EROFS, "Read-only file system"), DbFault.READ_ONLY),
        (TimeoutError(), DbFault.TIMEOUT),
        (ValueError("something else"), DbFault.OTHER),
    ],
)
def test_classify_names_the_cause(exc: BaseException, fault: DbFault) -> None:
    assert classify(exc) is fault


def test_classify_reads_sqlstates_and_sqlite_codes() -> None:
    import sqlite3

    import asyncpg

    read_only = asyncpg.exceptions.ReadOnlySQLTransactionError("cannot execute UPDATE")
    disk_full = asyncpg.exceptions.DiskFullError("could not extend file")
    assert classify(read_only) is DbFault.READ_ONLY
    assert classify(disk_full) is DbFault.DISK_FULL
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("PRAGMA query_only = 1")
        with pytest.raises(sqlite3.OperationalError) as caught:
            conn.execute("INSERT INTO t VALUES (1)")
    finally:
        conn.close()
    assert caught.value.sqlite_errorcode & 0xFF == 8  # SQLITE_READONLY
    assert classify(caught.value) is DbFault.READ_ONLY


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_read_only_commit_reported_by_ingest_is_not_serving_at_once(
    server_config: ServerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer's failed commit is the first to see the read-only database (the monitor is
    idle for a minute): it is an outage named "read-only", not bad data to retry one by one."""
    caplog.set_level(logging.INFO)
    name = server_config.database_url.rsplit("/", 1)[1]
    config = replace(server_config, health_probe_interval_ms=60_000)
    server = await start_server(config)
    try:
        async with agent(server) as (stub, credential):
            await pg_admin(
                server_config.database_url,
                f'ALTER DATABASE "{name}" SET default_transaction_read_only = on',
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND pid <> pg_backend_pid()",
            )
            request = agent_pb2.CheckInRequest(facts=FACTS, events=[event() for _ in range(3)])
            for _ in range(3):  # the first may meet a connection cut by the terminate
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.CheckIn(request, metadata=auth(credential), timeout=10)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                if server.app[app_keys.HEALTH].fault is DbFault.READ_ONLY:
                    break
            await wait_for(server, 503, "read-only", within=10)
            assert "read-only" in (caught.value.details() or "")
            assert await stored(server, [e.event_id for e in request.events]) == []
            messages = [r.getMessage() for r in caplog.records]
            assert not any("one by one" in m for m in messages), messages
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR], messages
    finally:
        await server.stop()


def test_a_read_does_not_clear_a_write_fault_and_each_change_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from server.services.health import DatabaseHealth

    caplog.set_level(logging.INFO, logger=HEALTH_LOGGER)
    health = DatabaseHealth()
    full = OSError(errno.ENOSPC, "No space left on device")
    for _ in range(3):
        health.report_failure(full)
    health.report_success(wrote=False)  # a read (SELECT 1) proves nothing about writes
    assert not health.available and health.fault is DbFault.DISK_FULL
    health.report_failure(OSError(errno.EROFS, "Read-only file system"))
    health.report_failure(ValueError("vague"))  # keeps the named cause
    assert health.fault is DbFault.READ_ONLY
    health.report_success(wrote=True)
    assert health.available and health.fault is None
    health.report_failure(TimeoutError())
    health.report_success(wrote=False)  # a timeout is cleared by any proof of life
    assert health.available
    assert health_lines(caplog) == [
        "database unwritable: disk full; check-ins refused until it is back",
        "database unwritable: read-only; check-ins refused until it is back",
        "database writable again (was: read-only): resuming service",
        "database unavailable: timeout; check-ins refused until it is back",
        "database reachable again (was: timeout): resuming service",
    ]


async def test_0006_adds_the_probe_row_and_goes_down_cleanly(empty_any_db_url: str) -> None:
    from server.storage import schema
    from server.storage.db import create_engine_for_url, probe

    url = empty_any_db_url
    await asyncio.to_thread(schema.upgrade, url, "0005")
    engine = create_engine_for_url(url)
    try:
        with pytest.raises(Exception, match="health_probe"):
            await probe(engine, 5.0, min_free_bytes=0)
        await asyncio.to_thread(schema.upgrade, url)
        for _ in range(2):
            await probe(engine, 5.0, min_free_bytes=0)
        async with engine.connect() as conn:
            rows = (await conn.exec_driver_sql("SELECT id, writes FROM health_probe")).all()
        assert [tuple(row) for row in rows] == [(1, 2)]
        await asyncio.to_thread(schema.downgrade, url, "0005")
        assert schema.current_revision(url) == "0005"
        with pytest.raises(Exception, match="health_probe"):
            await probe(engine, 5.0, min_free_bytes=0)
        await asyncio.to_thread(schema.upgrade, url)
        await probe(engine, 5.0, min_free_bytes=0)
    finally:
        await engine.dispose()
