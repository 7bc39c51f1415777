"""The mistakes a person commonly makes with ``flagpost-server`` and ``flagpost-agent`` end in
a message naming the problem and the fix: exit status 1 (2 for usage and configuration), no
traceback, no password. Each case runs the real command line as a subprocess (``python -m
server`` / ``python -m agent``), against one real server shared by the module where a server is
needed; ports come from the OS. "Read-only" is a read-only bind mount in a private mount
namespace (root ignores permission bits, not EROFS); "not a directory" is a file in the way.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.storage import schema

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-pw"
TIMEOUT_S = 60
STARTUP_TIMEOUT_S = 30.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    # a single quick attempt per check-in and a short RPC deadline keep failing cases fast
    env.update(
        FLAGPOST_AGENT_RETRY_ONCE_ATTEMPTS="1",
        FLAGPOST_AGENT_RPC_TIMEOUT_SECONDS="5",
        FLAGPOST_AGENT_STARTUP_JITTER_SECONDS="0",
    )
    env.update(extra)
    return env


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S
    )


def server_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "server", *args]


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def read_only(directory: Path, argv: list[str]) -> list[str]:
    """``argv`` run with ``directory`` bind-mounted read-only in a private mount namespace."""
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(directory), *argv]


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, timeout=10
    )
    return probe.returncode == 0


def free_port() -> int:
    """A port nothing listens on (bound and released: connecting to it is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Server:
    grpc: str
    web: str
    db_url: str
    stderr: Path


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mistakes")


@pytest.fixture(scope="module")
def db_url(tmp: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp / 'flagpost.db'}"
    schema.upgrade(url)
    return url


@pytest.fixture(scope="module")
def server(tmp: Path, db_url: str) -> Iterator[Server]:
    """One real ``flagpost-server serve`` on OS-chosen ports for the whole module."""
    stderr = tmp / "serve.stderr"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            server_cmd(
                "serve",
                "--database-url",
                db_url,
                "--grpc-port",
                "0",
                "--web-port",
                "0",
                "--state-dir",
                str(tmp / "server-state"),
            ),
            cwd=ROOT,
            env=_env(FLAGPOST_ENROLL_RATE_PER_MINUTE="0"),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None
        addresses: dict[str, str] = {}
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while len(addresses) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            match = re.match(r"(grpc|web): (?:http://)?([0-9.]+:\d+)", line)
            if match:
                addresses[match.group(1)] = match.group(2)
        assert len(addresses) == 2, stderr.read_text()
        yield Server(addresses["grpc"], addresses["web"], db_url, stderr)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="module")
def held_port() -> Iterator[int]:
    """A port another process-level socket is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def token(server: Server) -> str:
    created = _run(server_cmd("token", "create", "--uses", "100", "--database-url", server.db_url))
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


@pytest.fixture(scope="module")
def enrolled_root(server: Server, token: str, tmp: Path) -> Path:
    root = tmp / "enrolled"
    enrolled = _run(
        agent_cmd("enroll", "--root", str(root), "--server", server.grpc, "--token", token)
    )
    assert enrolled.returncode == 0, enrolled.stderr
    return root


@dataclass(frozen=True)
class Ctx:
    tmp: Path
    request: pytest.FixtureRequest

    def fixture(self, name: str) -> object:
        return self.request.getfixturevalue(name)

    @property
    def server(self) -> Server:
        value = self.fixture("server")
        assert isinstance(value, Server)
        return value

    @property
    def db_url(self) -> str:
        return str(self.fixture("db_url"))

    @property
    def held_port(self) -> int:
        return int(str(self.fixture("held_port")))

    @property
    def token(self) -> str:
        return str(self.fixture("token"))

    @property
    def enrolled_root(self) -> Path:
        return Path(str(self.fixture("enrolled_root")))

    def dir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def file(self, name: str) -> Path:
        path = self.tmp / name
        path.write_text("not a directory\n")
        return path


@dataclass(frozen=True)
class Mistake:
    id: str
    argv: Callable[[Ctx], list[str]]
    status: int
    words: tuple[str, ...]
    unshare: bool = False
    max_stderr_lines: int = 2
    env: Callable[[Ctx], dict[str, str]] | None = None


def _serve(ctx: Ctx, *extra: str) -> list[str]:
    """``serve`` on the module's database; with ``--state-dir`` of the shared server unless
    ``extra`` names another (the database accepts one signing key)."""
    state = [] if "--state-dir" in extra else ["--state-dir", str(ctx.tmp / "server-state")]
    return server_cmd("serve", "--database-url", ctx.db_url, *state, *extra)


MISTAKES = [
    Mistake(
        "grpc-port-in-use",
        lambda c: _serve(c, "--grpc-port", str(c.held_port), "--web-port", "0"),
        1,
        ("cannot listen for gRPC", "Address already in use", "--grpc-port", "FLAGPOST_GRPC_PORT"),
        max_stderr_lines=6,  # INFO start-up lines and grpc's own bind line come first
    ),
    Mistake(
        "web-port-in-use",
        lambda c: _serve(c, "--grpc-port", "0", "--web-port", str(c.held_port)),
        1,
        ("cannot listen for the web", "Address already in use", "--web-port", "FLAGPOST_WEB_PORT"),
        max_stderr_lines=6,
    ),
    Mistake(
        "postgresql-closed-port",
        lambda c: server_cmd(
            "token",
            "create",
            "--database-url",
            f"postgresql+asyncpg://flagpost:{SECRET}@127.0.0.1:{free_port()}/flagpost",
        ),
        1,
        ("cannot connect to the database", "postgresql+asyncpg://flagpost:***@127.0.0.1:"),
    ),
    Mistake(
        "postgresql-closed-port-db-upgrade",
        lambda c: server_cmd(
            "db",
            "upgrade",
            "--database-url",
            f"postgresql+asyncpg://flagpost:{SECRET}@127.0.0.1:{free_port()}/flagpost",
        ),
        1,
        ("cannot connect to the database", "flagpost:***@", "--database-url"),
    ),
    Mistake(
        "database-url-bad-scheme",
        lambda c: server_cmd("agent", "list", "--database-url", f"mysql://u:{SECRET}@db/x"),
        1,
        ("unsupported database driver 'mysql'", "mysql://u:***@db/x", "postgresql+asyncpg://"),
    ),
    Mistake(
        "sqlite-missing-directory",
        lambda c: server_cmd(
            "token", "create", "--database-url", f"sqlite+aiosqlite:///{c.tmp}/missing/x.db"
        ),
        1,
        ("cannot connect to the database", "missing does not exist", "db upgrade"),
    ),
    Mistake(
        "sqlite-read-only-directory",
        lambda c: read_only(
            c.dir("ro-db"),
            server_cmd(
                "db", "upgrade", "--database-url", f"sqlite+aiosqlite:///{c.tmp}/ro-db/x.db"
            ),
        ),
        1,
        ("cannot connect to the database", "ro-db", "Read-only file system"),
        unshare=True,
    ),
    Mistake(
        "schema-out-of-date",
        lambda c: server_cmd(
            "token", "create", "--database-url", f"sqlite+aiosqlite:///{c.tmp}/empty.db"
        ),
        2,
        ("no schema yet", "flagpost-server db upgrade"),
        max_stderr_lines=1,
    ),
    Mistake(
        "server-state-dir-read-only",
        lambda c: read_only(
            c.dir("ro-state"),
            _serve(
                c,
                "--grpc-port",
                "0",
                "--web-port",
                "0",
                "--state-dir",
                str(c.tmp / "ro-state" / "state"),
            ),
        ),
        1,
        ("ro-state/state", "Read-only file system", "--state-dir", "FLAGPOST_STATE_DIR"),
        unshare=True,
    ),
    Mistake(
        "server-state-dir-not-a-directory",
        lambda c: _serve(
            c, "--grpc-port", "0", "--web-port", "0", "--state-dir", f"{c.file('f1')}/state"
        ),
        1,
        ("f1/state", "Not a directory", "--state-dir"),
    ),
    Mistake(
        "agent-server-unreachable",
        lambda c: agent_cmd(
            "enroll",
            "--root",
            str(c.dir("a1")),
            "--server",
            f"127.0.0.1:{free_port()}",
            "--token",
            "x",
        ),
        1,
        ("cannot reach the server at 127.0.0.1:", "Connection refused", "flagpost-server serve"),
    ),
    Mistake(
        "agent-once-server-unreachable",
        lambda c: agent_cmd(
            "once", "--root", str(c.enrolled_root), "--server", f"127.0.0.1:{free_port()}"
        ),
        1,
        ("cannot reach the server at 127.0.0.1:", "Connection refused", "flagpost-server serve"),
    ),
    Mistake(
        "agent-server-http-url",
        lambda c: agent_cmd(
            "enroll",
            "--root",
            str(c.dir("a3")),
            "--server",
            "https://10.0.0.5:50051",
            "--token",
            "x",
        ),
        2,
        ("is a URL", "HOST:PORT", "10.0.0.5:50051", "ca_file", "server_fingerprint"),
    ),
    Mistake(
        "agent-given-web-port",
        lambda c: agent_cmd(
            "enroll", "--root", str(c.dir("a4")), "--server", c.server.web, "--token", c.token
        ),
        1,
        ("answers HTTP/1.1", "web port", "50051"),
    ),
    Mistake(
        "agent-bad-token",
        lambda c: agent_cmd(
            "enroll", "--root", str(c.dir("a5")), "--server", c.server.grpc, "--token", "fpt_nope"
        ),
        1,
        ("invalid enrollment token", "flagpost-server token create"),
    ),
    Mistake(
        "agent-root-read-only-enroll",
        lambda c: read_only(
            c.dir("ro-root"),
            agent_cmd(
                "enroll",
                "--root",
                str(c.tmp / "ro-root"),
                "--server",
                c.server.grpc,
                "--token",
                c.token,
            ),
        ),
        1,
        ("ro-root/var", "Read-only file system", "--root", "FLAGPOST_AGENT_STATE_DIR"),
        unshare=True,
    ),
    Mistake(
        "agent-state-dir-read-only-once",
        lambda c: read_only(
            c.dir("ro-agent-state"),
            agent_cmd("once", "--root", str(c.dir("a6")), "--server", c.server.grpc),
        ),
        1,
        ("ro-agent-state: Read-only file system", "state_dir", "FLAGPOST_AGENT_STATE_DIR"),
        unshare=True,
        env=lambda c: {"FLAGPOST_AGENT_STATE_DIR": str(c.tmp / "ro-agent-state")},
    ),
    Mistake(
        "agent-root-not-a-directory",
        lambda c: agent_cmd("status", "--root", str(c.file("f2"))),
        1,
        ("f2", "Not a directory", "--root"),
    ),
]


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.id for m in MISTAKES])
def test_mistake_gets_a_short_message(
    mistake: Mistake, tmp: Path, request: pytest.FixtureRequest
) -> None:
    if mistake.unshare and not _can_unshare():
        pytest.skip("needs root and unshare -m for a read-only bind mount")
    ctx = Ctx(tmp, request)
    extra_env = mistake.env(ctx) if mistake.env is not None else {}
    result = subprocess.run(
        mistake.argv(ctx),
        cwd=ROOT,
        env=_env(**extra_env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    output = result.stdout + result.stderr
    assert result.returncode == mistake.status, output
    assert "Traceback" not in output, output
    assert SECRET not in output, output
    for word in mistake.words:
        assert word in output, f"{word!r} missing from:\n{output}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= mistake.max_stderr_lines, output


def test_server_logs_one_line_for_an_agent_on_the_web_port(server: Server, tmp: Path) -> None:
    before = server.stderr.read_text()
    result = _run(
        agent_cmd("enroll", "--root", str(tmp / "a7"), "--server", server.web, "--token", "x")
    )
    assert result.returncode == 1, result.stderr
    deadline = time.monotonic() + 10
    new = ""
    while time.monotonic() < deadline:
        new = server.stderr.read_text()[len(before) :]
        if "not HTTP/1.1" in new:
            break
        time.sleep(0.1)
    lines = [line for line in new.splitlines() if "aiohttp" in line or "PRI" in line]
    assert len(lines) == 1, new
    assert "WARNING" in lines[0] and "gRPC port" in lines[0] and "50051" in lines[0], new
    assert "Traceback" not in new and "\\x00" not in new, new


def test_debug_prints_the_traceback(tmp: Path) -> None:
    url = f"postgresql+asyncpg://flagpost:{SECRET}@127.0.0.1:{free_port()}/flagpost"
    server = _run(server_cmd("--debug", "token", "create", "--database-url", url))
    assert server.returncode == 1
    assert "Traceback" in server.stderr and "cannot connect to the database" in server.stderr
    (tmp / "f3").write_text("")
    agent = _run(agent_cmd("status", "--root", f"{tmp / 'f3'}", "--debug"))
    assert agent.returncode == 1
    assert "Traceback" in agent.stderr and "Not a directory" in agent.stderr


def test_version() -> None:
    expected = importlib.metadata.version("flagpost")
    for command, name in ((server_cmd, "flagpost-server"), (agent_cmd, "flagpost-agent")):
        result = _run(command("--version"))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{name} {expected}"


def _leaves(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser.prog, parser
    for sub in subs:
        for child in dict.fromkeys(sub.choices.values()):
            yield from _leaves(child)


@pytest.mark.parametrize("module", ["server.cli", "agent.cli"])
def test_every_subcommand_documents_itself_and_its_flags(module: str) -> None:
    build = importlib.import_module(module).build_parser
    leaves = list(_leaves(build()))
    assert len(leaves) > 4
    for prog, parser in leaves:
        assert parser.description, f"{prog}: no description"
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if action.help == argparse.SUPPRESS or not action.option_strings:
                continue
            assert action.help, f"{prog} {action.option_strings}: no help"
            takes_value = action.nargs != 0
            if takes_value:
                text = action.help.lower()
                assert "default" in text or "required" in text or "one of" in text, (
                    f"{prog} {action.option_strings}: help names no default: {action.help!r}"
                )


def test_serve_help_shows_the_config_defaults() -> None:
    result = _run(server_cmd("serve", "--help"))
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for expected in ("default: 50051", "default: 8080", "default: flagpost-state", "FLAGPOST_"):
        assert expected in text, result.stdout
