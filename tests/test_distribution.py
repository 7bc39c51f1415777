"""The distribution: ``python -m build`` makes an sdist and, from it, a wheel, without a warning;
the wheel carries every module plus web/ and alembic/ (as ``server/_web``, ``server/_alembic``).

Installed into fresh virtualenvs outside the checkout (nothing of it importable):
``flagpost[server]`` migrates a database, creates a user and a token and serves every page and
static file, and an agent from the same wheel enrolls with it; plain ``flagpost`` is the agent
alone, without the server's dependencies.

The build runs once per module, on a copy of the checkout (setuptools writes ``build/`` and
``*.egg-info`` next to the sources), with the running environment's setuptools
(``--no-isolation``). The two virtualenvs install from the package index in parallel, through the
pip cache.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from server_testlib import WebAccount, login_http

ROOT = Path(__file__).resolve().parent.parent

# What the copy of the checkout leaves out: VCS data, virtualenvs, caches, build leftovers, state.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "tests", "__pycache__", "*.py[co]", "build", "dist", "*.egg-info",
    ".*_cache", ".hypothesis", "*.db", "*.db-*", "flagpost-state", "demo-state",
)  # fmt: skip
# Checkout folder -> where its files go in the wheel (every file, byte for byte).
_WHEEL_LAYOUT = {
    "agent": "agent",
    "server": "server",
    "proto/flagpost": "flagpost",
    "web": "server/_web",
    "alembic": "server/_alembic",
}
# The server extra's libraries: none of them may come with plain `pip install flagpost`.
_SERVER_ONLY = ("sqlalchemy", "aiohttp", "alembic", "aiosqlite", "asyncpg", "jinja2", "argon2")
_WARNING = re.compile(r"warn|deprecat", re.IGNORECASE)
_PASSWORD = "Wheel-admin-secret-1"


@dataclass(frozen=True)
class Dists:
    src: Path  # the copy of the checkout that was built
    wheel: Path
    sdist: Path
    log: str


@dataclass(frozen=True)
class Venvs:
    server: Path  # flagpost[server]
    agent: Path  # flagpost, no extras
    elsewhere: Path  # the working directory for every installed command: not the checkout


def _env() -> dict[str, str]:
    """The environment without anything that would point Python or Flagpost at the checkout."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("FLAGPOST_")}


def _ignore_sources(directory: str, names: list[str]) -> set[str]:
    ignored = set(_NOT_SOURCES(directory, names))
    prefix = Path(sys.prefix).resolve()  # the running virtualenv, whatever its name
    return ignored | {n for n in names if (Path(directory) / n).resolve() == prefix}


def _expected_wheel_files(src: Path) -> dict[str, bytes]:
    expected: dict[str, bytes] = {}
    for folder, target in _WHEEL_LAYOUT.items():
        for path in sorted((src / folder).rglob("*")):
            if path.is_file():
                name = path.relative_to(src / folder).as_posix()
                expected[f"{target}/{name}"] = path.read_bytes()
    return expected


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    base = tmp_path_factory.mktemp("distribution")
    src, out = base / "src", base / "dist"
    shutil.copytree(ROOT, src, ignore=_ignore_sources)
    env = _env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # else distutils warns that it skips byte-compiling
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        cwd=base,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = built.stdout + built.stderr
    assert built.returncode == 0, log
    (wheel,) = out.glob("flagpost-*-py3-none-any.whl")
    (sdist,) = out.glob("flagpost-*.tar.gz")
    return Dists(src=src, wheel=wheel, sdist=sdist, log=log)


@pytest.fixture(scope="module")
def venvs(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Venvs:
    base = tmp_path_factory.mktemp("venvs")
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    server, agent = base / "server", base / "agent"

    def install(venv: Path, requirement: str) -> subprocess.CompletedProcess[str]:
        # No pip inside the new virtualenv (faster): the running pip installs into it.
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                       timeout=120)  # fmt: skip
        return subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
             "--no-input", "--disable-pip-version-check", requirement],
            cwd=elsewhere, env=_env(), capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [
            pool.submit(install, server, f"{dists.wheel}[server]"),
            pool.submit(install, agent, str(dists.wheel)),
        ]
        for job in jobs:
            result = job.result()
            assert result.returncode == 0, result.stdout + result.stderr
    return Venvs(server=server, agent=agent, elsewhere=elsewhere)


def _run(
    venv: Path, cwd: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``args[0]`` from ``venv``'s bin directory in ``cwd``."""
    command = [str(venv / "bin" / args[0]), *args[1:]]
    return subprocess.run(
        command, cwd=cwd, env=_env(), input=stdin, capture_output=True, text=True, timeout=120
    )


def test_build_has_no_warnings_and_the_wheel_is_complete(dists: Dists) -> None:
    warnings = [line for line in dists.log.splitlines() if _WARNING.search(line)]
    assert warnings == [], "\n".join(warnings)
    assert "Building wheel from sdist" in dists.log  # so the sdist alone rebuilds the wheel

    with zipfile.ZipFile(dists.wheel) as wheel:
        names = wheel.namelist()
        files = {n: wheel.read(n) for n in names if ".dist-info/" not in n}
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        headers = wheel.read(metadata).decode()
        licenses = [n for n in names if ".dist-info/licenses/" in n]
    expected = _expected_wheel_files(dists.src)
    assert sorted(set(expected) - set(files)) == [], "missing from the wheel (pyproject.toml?)"
    assert sorted(set(files) - set(expected)) == [], "in the wheel but not a source file"
    assert [n for n in expected if files[n] != expected[n]] == []
    assert "License-Expression: Apache-2.0" in headers.splitlines()
    assert [Path(n).name for n in licenses] == ["LICENSE"]

    with tarfile.open(dists.sdist) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if m.isfile()}
    for needed in ("pyproject.toml", "MANIFEST.in", "LICENSE", "README.md", "alembic.ini"):
        assert needed in members


def test_the_plain_wheel_is_the_agent_alone(venvs: Venvs) -> None:
    python = venvs.agent / "bin" / "python"
    probe = (
        "import importlib, importlib.util, json, pkgutil, sys\n"
        "import agent\n"
        "names = [m.name for m in pkgutil.walk_packages(agent.__path__, 'agent.')\n"
        "         if not m.name.endswith('__main__')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "from agent.specs.builtin import agent_config_spec\n"
        "print(json.dumps({\n"
        "    'file': agent.__file__, 'modules': names, 'builtin': agent_config_spec().id,\n"
        "    'server_imported': sorted(m for m in sys.modules if m.split('.')[0] == 'server'),\n"
        f"    'installed': [n for n in {list(_SERVER_ONLY)!r} if importlib.util.find_spec(n)],\n"
        "}))\n"
    )
    result = subprocess.run(
        [str(python), "-c", probe], cwd=venvs.elsewhere, env=_env(), capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert Path(found["file"]).is_relative_to(venvs.agent), found["file"]
    assert "agent.cli" in found["modules"] and "agent.migrations.engine" in found["modules"]
    assert found["server_imported"] == []
    assert found["builtin"] == "agent-config"  # the spec file is package data of the wheel
    assert found["installed"] == []

    helped = _run(venvs.agent, venvs.elsewhere, "flagpost-agent", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "enroll" in helped.stdout


@dataclass
class Served:
    process: subprocess.Popen[str]
    database_url: str
    grpc_address: str
    web_url: str


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next line of ``process``'s stdout; TimeoutError after ``timeout`` seconds (the reader
    thread ends when the process is killed)."""
    assert process.stdout is not None
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(process.stdout.readline).result(timeout=timeout)
    finally:
        pool.shutdown(wait=False)


@pytest.fixture
def served(venvs: Venvs, tmp_path: Path) -> Iterator[Served]:
    """``flagpost-server`` from the server virtualenv on a fresh SQLite database, migrated with
    ``db upgrade``, with an admin user; listening on ports the OS picked."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'db' / 'flagpost.db'}"
    upgraded = _run(venvs.server, venvs.elsewhere, "flagpost-server", "db", "upgrade",
                    "--database-url", url)  # fmt: skip
    assert upgraded.returncode == 0, upgraded.stderr
    current = _run(venvs.server, venvs.elsewhere, "flagpost-server", "db", "current",
                   "--database-url", url)  # fmt: skip
    assert current.returncode == 0 and "up to date" in current.stdout, current.stdout
    created = _run(venvs.server, venvs.elsewhere, "flagpost-server", "user", "create", "admin",
                   "--role", "admin", "--database-url", url, stdin=_PASSWORD + "\n")  # fmt: skip
    assert created.returncode == 0, created.stderr

    process = subprocess.Popen(
        [str(venvs.server / "bin" / "flagpost-server"), "serve", "--database-url", url,
         "--grpc-port", "0", "--web-port", "0", "--state-dir", str(tmp_path / "state")],
        cwd=venvs.elsewhere, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        grpc_line, web_line = _read_line(process, 60), _read_line(process, 60)
        grpc_match = re.fullmatch(r"grpc: (127\.0\.0\.1:\d+)\n", grpc_line)
        web_match = re.fullmatch(r"web: (http://127\.0\.0\.1:\d+)/history\n", web_line)
        assert grpc_match and web_match, (grpc_line, web_line)
        yield Served(process, url, grpc_match.group(1), web_match.group(1))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate(timeout=30)
        print(stderr, file=sys.stderr)  # shown when the test fails


async def test_the_server_wheel_migrates_serves_and_enrolls_an_agent(
    venvs: Venvs, served: Served, dists: Dists, tmp_path: Path
) -> None:
    server_python = venvs.server / "bin" / "python"
    where = subprocess.run(
        [str(server_python), "-c",
         "import agent, flagpost.v1, server.resources as r; "
         "print(agent.__file__, flagpost.v1.__file__, r.TEMPLATES_DIR, r.ALEMBIC_DIR)"],
        cwd=venvs.elsewhere, env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    for location in where.stdout.split():
        assert Path(location).is_relative_to(venvs.server), where.stdout

    web = served.web_url
    static_dir = dists.src / "web" / "static"
    static = sorted(
        p.relative_to(static_dir).as_posix() for p in static_dir.rglob("*") if p.is_file()
    )
    assert len(static) >= 5
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{web}/healthz") as reply:
            assert reply.status == 200
        async with http.get(f"{web}/login") as reply:
            assert reply.status == 200
            login_page = await reply.text()
        versioned = re.findall(r'"(/static/[^"?]+\?v=[^"]+)"', login_page)
        assert any("style.css" in u for u in versioned), login_page
        for name in static:
            async with http.get(f"{web}/static/{name}") as reply:
                assert reply.status == 200, name
                assert await reply.read() == (static_dir / name).read_bytes(), name
        for url in versioned:
            async with http.get(f"{web}{url.replace('&amp;', '&')}") as reply:
                assert reply.status == 200, url

        csrf = await login_http(http, web, WebAccount("admin", _PASSWORD, "admin"))
        http.headers["X-CSRF-Token"] = csrf

        # An agent from the same wheel, installed on its own, enrolls and checks in.
        token = _run(venvs.server, venvs.elsewhere, "flagpost-server", "token", "create",
                     "--database-url", served.database_url)  # fmt: skip
        assert token.returncode == 0, token.stderr
        root = tmp_path / "agent-root"
        root.mkdir()
        agent = ("flagpost-agent", "--root", str(root))
        enroll = ("enroll", "--server", served.grpc_address, "--token", token.stdout.strip())
        enrolled = _run(venvs.agent, venvs.elsewhere, *agent, *enroll)
        assert enrolled.returncode == 0, enrolled.stderr
        async with http.get(f"{web}/api/v1/agents") as reply:
            assert reply.status == 200
            (agent_id,) = [a["id"] for a in (await reply.json())["agents"]]
        async with http.post(f"{web}/api/v1/agents/{agent_id}/runs", json={}) as reply:
            assert reply.status == 202, await reply.text()
        once = _run(venvs.agent, venvs.elsewhere, *agent, "once", "--server", served.grpc_address)
        assert once.returncode == 0, once.stderr
        async with http.get(f"{web}/api/v1/runs") as reply:
            assert reply.status == 200
            runs = (await reply.json())["runs"]
            assert runs, "the agent ran the requested migration run"

        pages = ["/", "/history", "/runs", f"/agents/{agent_id}", f"/runs/{runs[0]['id']}"]
        for page in pages:
            async with http.get(f"{web}{page}") as reply:
                assert reply.status == 200, page
                assert reply.content_type == "text/html", page
                assert "</html>" in await reply.text(), page
        for api in ["/runs/rows", "/api/v1/events", "/api/v1/openapi.json", "/metrics"]:
            async with http.get(f"{web}{api}") as reply:
                assert reply.status == 200, api
        async with http.get(f"{web}/no-such-page") as reply:
            assert reply.status == 404
            assert "404" in await reply.text()  # the error template
