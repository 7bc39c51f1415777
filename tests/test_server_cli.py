"""``flagpost-server`` as a real process: db commands, token create, serve and graceful stop."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.storage import schema

ROOT = Path(__file__).resolve().parent.parent


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def sqlite_file(url: str) -> Path:
    return Path(url.removeprefix("sqlite+aiosqlite:///"))


def test_db_upgrade_current_downgrade(empty_db_url: str, tmp_path: Path) -> None:
    url = empty_db_url
    current = run("db", "current", "--database-url", url)
    assert current.returncode == 0, current.stderr
    assert current.stdout.startswith("base") and "db upgrade" in current.stdout

    upgraded = run("db", "upgrade", "--database-url", url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert schema.current_revision(url) == schema.head_revision()

    # The flag beats the environment, which beats the config file.
    config = tmp_path / "server.toml"
    config.write_text(f'database_url = "sqlite+aiosqlite:///{tmp_path / "file.db"}"\n')
    env = cli_env(FLAGPOST_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'env.db'}")
    current = run("--config", str(config), "db", "current", "--database-url", url, env=env)
    assert current.stdout.startswith(schema.head_revision()), current.stdout
    assert "up to date" in current.stdout

    down = run("db", "downgrade", "base", "--database-url", url)
    assert down.returncode == 0, down.stderr
    assert schema.current_revision(url) is None


def test_token_create_prints_only_the_token(sqlite_db_url: str) -> None:
    result = run(
        "token", "create", "--uses", "3", "--expires", "30m", "--database-url", sqlite_db_url
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert re.fullmatch(r"fpt_[A-Za-z0-9_-]{43}", token), result.stdout
    assert token not in result.stderr
    with sqlite3.connect(sqlite_file(sqlite_db_url)) as db:
        rows = db.execute(
            "SELECT token_hash, uses_left, expires_at FROM enrollment_tokens"
        ).fetchall()
    db.close()
    assert len(rows) == 1 and rows[0][1] == 3 and rows[0][2] is not None
    assert rows[0][0] != token
    for path in sqlite_file(sqlite_db_url).parent.glob("flagpost.db*"):
        assert token.encode() not in path.read_bytes()  # never stored in plain text

    bad = run("token", "create", "--expires", "soon", "--database-url", sqlite_db_url)
    assert bad.returncode == 2 and "invalid duration" in bad.stderr


def test_serve_refuses_an_out_of_date_schema(empty_db_url: str, tmp_path: Path) -> None:
    result = run(
        "serve",
        "--database-url",
        empty_db_url,
        "--grpc-port",
        "0",
        "--web-port",
        "0",
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert result.returncode == 2
    assert "flagpost-server db upgrade" in result.stderr
    token = run("token", "create", "--database-url", empty_db_url)
    assert token.returncode == 2 and "flagpost-server db upgrade" in token.stderr


@pytest.fixture
def served(empty_db_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "serve",
            "--database-url",
            empty_db_url,
            "--grpc-port",
            "0",
            "--web-port",
            "0",
            "--state-dir",
            str(tmp_path / "state"),
            "--auto-upgrade",
        ],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        grpc_line = process.stdout.readline()
        web_line = process.stdout.readline()
        yield process, grpc_line, web_line
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_serve_listens_and_stops_gracefully_on_sigterm(
    served: tuple[subprocess.Popen[str], str, str], empty_db_url: str
) -> None:
    process, grpc_line, web_line = served
    grpc_match = re.fullmatch(r"grpc: 127\.0\.0\.1:(\d+)\n", grpc_line)
    assert grpc_match, grpc_line
    assert re.fullmatch(r"web: http://127\.0\.0\.1:\d+/history\n", web_line), web_line
    assert schema.current_revision(empty_db_url) == schema.head_revision()  # --auto-upgrade

    with grpc.insecure_channel(f"127.0.0.1:{grpc_match.group(1)}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="flagpost.v1.AgentService"), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert time.monotonic() - started < 15
    assert process.stderr is not None
    assert "shutting down" in process.stderr.read()


async def test_agent_list_and_revoke(sqlite_db_url: str) -> None:
    from server.domain import HostFacts
    from server.services import agents as agent_service
    from server.services import enrollment
    from server.storage.db import create_engine_for_url, make_sessionmaker

    engine = create_engine_for_url(sqlite_db_url)
    try:
        sessions = make_sessionmaker(engine)
        token = await enrollment.create_token(sessions, uses=2)
        web, _ = await enrollment.enroll(sessions, token, HostFacts(hostname="web-1"))
        db, credential = await enrollment.enroll(sessions, token, HostFacts(hostname="db-1"))
    finally:
        await engine.dispose()

    listed = run("agent", "list", "--database-url", sqlite_db_url)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "HOSTNAME", "HEALTH"]
    assert [line.split()[:4] for line in lines[1:]] == [
        [db, "db-1", "never", "-"],
        [web, "web-1", "never", "-"],
    ]
    assert all(line.endswith("no") for line in lines[1:])

    revoked = run("agent", "revoke", db, "--database-url", sqlite_db_url)
    assert revoked.returncode == 0, revoked.stderr
    assert db in revoked.stdout
    lines = run("agent", "list", "--database-url", sqlite_db_url).stdout.splitlines()
    assert lines[1].startswith(db) and lines[1].endswith("yes")
    assert lines[2].startswith(web) and lines[2].endswith("no")

    engine = create_engine_for_url(sqlite_db_url)
    try:
        authenticator = agent_service.Authenticator(make_sessionmaker(engine))
        from server.errors import PermissionDenied

        with pytest.raises(PermissionDenied):
            await authenticator.authenticate(credential)
    finally:
        await engine.dispose()

    unknown = run("agent", "revoke", "no-such-agent", "--database-url", sqlite_db_url)
    assert unknown.returncode == 1 and "no agent no-such-agent" in unknown.stderr
