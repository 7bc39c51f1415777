"""``flagpost-server user create|list|delete`` as a real process, and ``serve`` refusing to start
with an unprotected web route."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from test_server_cli import cli_env, run, sqlite_file

from server.errors import Unauthenticated
from server.services import users as users_service
from server.storage.db import create_engine_for_url, make_sessionmaker

ROOT = Path(__file__).resolve().parent.parent


def run_with_stdin(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        env=cli_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def can_log_in(url: str, name: str, password: str) -> bool:
    engine = create_engine_for_url(url)
    try:
        await users_service.login(make_sessionmaker(engine), name, password, timedelta(hours=1))
        return True
    except Unauthenticated:
        return False
    finally:
        await engine.dispose()


async def test_user_create_list_disable_delete(sqlite_db_url: str, tmp_path: Path) -> None:
    url = sqlite_db_url
    piped = "Piped-secret-1234"
    created = run_with_stdin(piped + "\n", "user", "create", "alice", "--role", "admin",
                             "--database-url", url)  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "created admin alice"

    password_file = tmp_path / "pw"
    password_file.write_text("File-secret-5678\nignored second line\n")
    created = run(
        "user", "create", "bob", "--role", "viewer", "--password-file", str(password_file),
        "--database-url", url,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr

    listed = run("user", "list", "--database-url", url)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "CREATED", "DISABLED"]
    assert [line.split()[:2] for line in lines[1:]] == [["alice", "admin"], ["bob", "viewer"]]

    assert await can_log_in(url, "alice", piped)
    assert await can_log_in(url, "bob", "File-secret-5678")
    assert not await can_log_in(url, "bob", "File-secret-5678\nignored second line")
    outputs = created.stdout + created.stderr + listed.stdout + listed.stderr
    stored = b"".join(p.read_bytes() for p in sqlite_file(url).parent.glob("flagpost.db*"))
    for secret in (piped, "File-secret-5678"):
        assert secret not in outputs and secret.encode() not in stored

    # Clear errors that name the field; nothing is created.
    taken = run_with_stdin(piped + "\n", "user", "create", "alice", "--role", "viewer",
                           "--database-url", url)  # fmt: skip
    assert taken.returncode == 1 and "already exists" in taken.stderr
    short = run_with_stdin("short\n", "user", "create", "carol", "--role", "viewer",
                           "--database-url", url)  # fmt: skip
    assert short.returncode == 1 and "password: at least 8 characters" in short.stderr
    bad_name = run_with_stdin(piped + "\n", "user", "create", "<b>", "--role", "viewer",
                              "--database-url", url)  # fmt: skip
    assert bad_name.returncode == 1 and "name:" in bad_name.stderr
    bad_role = run("user", "create", "dave", "--role", "root", "--database-url", url)
    assert bad_role.returncode == 2 and "invalid choice" in bad_role.stderr
    # There is no way to give the password as an argument.
    argv = run("user", "create", "erin", "--role", "admin", "--password", "x" * 12,
               "--database-url", url)  # fmt: skip
    assert argv.returncode == 2 and "unrecognized arguments" in argv.stderr

    # Disable keeps the user for the record but refuses its logins; enable lets it in again.
    disabled = run("user", "disable", "bob", "--database-url", url)
    assert disabled.returncode == 0 and "disabled bob" in disabled.stdout, disabled.stderr
    assert not await can_log_in(url, "bob", "File-secret-5678")
    listed = run("user", "list", "--database-url", url)
    assert [line.split()[-1] for line in listed.stdout.splitlines()[1:]] == ["no", "yes"]
    enabled = run("user", "enable", "bob", "--database-url", url)
    assert enabled.returncode == 0, enabled.stderr
    assert await can_log_in(url, "bob", "File-secret-5678")

    deleted = run("user", "delete", "bob", "--database-url", url)
    assert deleted.returncode == 0, deleted.stderr
    assert not await can_log_in(url, "bob", "File-secret-5678")
    again = run("user", "delete", "bob", "--database-url", url)
    assert again.returncode == 1 and "no user named 'bob'" in again.stderr
    listed = run("user", "list", "--database-url", url)
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == ["alice"]


UNPROTECTED_SERVE = """
import sys
from aiohttp import web
import server.web as server_web

original = server_web.add_routes

async def leak(request: web.Request) -> web.StreamResponse:
    return web.Response(text="no login needed")

def add_routes(app: web.Application) -> None:
    original(app)
    app.router.add_get("/debug/leak", leak)

server_web.add_routes = add_routes
from server.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_serve_refuses_to_start_with_an_unprotected_route(db_url: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", UNPROTECTED_SERVE, "serve", "--database-url", db_url,
         "--grpc-port", "0", "--web-port", "0", "--state-dir", str(tmp_path / "state")],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "refusing to start: unprotected web route(s)" in result.stderr
    assert "GET /debug/leak: no access declaration" in result.stderr
    assert "web:" not in result.stdout  # it never listened
