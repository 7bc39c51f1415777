"""The agent as an unprivileged user, wherever the checkout and its venv live.

Root ignores permission bits, so the demo's read-only agent and the permission tests run the
agent as ``nobody`` through setpriv: then a root-owned 0555 directory gives a real EACCES.
``nobody`` must be able to read the interpreter, the ``agent`` and ``flagpost`` packages and the
agent's runtime distributions, and it cannot when the checkout or its venv sits under a 0700
directory (as everything under /root does).

``prepare(dest)`` gives it its own copy: the ``agent`` package, the generated ``flagpost`` proto
package, and the distributions the agent needs (its requirements in pyproject.toml and theirs,
found with importlib.metadata in the running environment), world-readable in ``dest``; then an
interpreter of the same Python version that the user can really run, proven by starting it as
that user. The agent runs as ``python -S -m agent`` with PYTHONPATH naming the copy and the copy
as its working directory: ``-S`` skips every site-packages directory, so nothing installed
elsewhere on the machine can stand in for a distribution missing from the copy.

Used by scripts/demo.py and, through tests/unprivileged_testlib.py, by the tests.
"""

from __future__ import annotations

import compileall
import importlib.metadata
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What the copy must import for the agent to start (the probe's check).
PROBE_IMPORTS = (
    "agent.cli",
    "flagpost.v1.agent_pb2_grpc",
    "grpc",
    "google.protobuf",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
)
# The same for the server (``prepare_server``).
SERVER_PROBE_IMPORTS = (
    "server.cli",
    "server.app",
    "flagpost.v1.agent_pb2_grpc",
    "aiosqlite",
    "asyncpg",
    "greenlet",
    "argon2",
)


class UnprivilegedError(RuntimeError):
    """The unprivileged user cannot be given a runnable agent."""


@dataclass(frozen=True)
class AgentRuntime:
    """A copy of the agent that ``user`` can run with ``python``."""

    user: pwd.struct_passwd
    python: str
    path: Path  # the copy: PYTHONPATH and working directory

    def setpriv(self) -> list[str]:
        """The prefix that runs a command as ``user`` (root only)."""
        return [
            "setpriv",
            f"--reuid={self.user.pw_uid}",
            f"--regid={self.user.pw_gid}",
            "--clear-groups",
        ]

    def command(self, *args: str) -> list[str]:
        """``python -S -m agent ARGS`` as ``user``; run it with ``env()`` and ``cwd=path``."""
        return self.module("agent", *args)

    def module(self, name: str, *args: str) -> list[str]:
        """``python -S -m NAME ARGS`` as ``user`` (``server`` in a ``prepare_server`` copy)."""
        return [*self.setpriv(), self.python, "-S", "-m", name, *args]

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` with PYTHONPATH naming the copy (and no PYTHONHOME or venv of ours)."""
        env = {
            k: v
            for k, v in base.items()
            if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "VIRTUAL_ENV"}
        }
        env["PYTHONPATH"] = str(self.path)
        return env


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def agent_requirements() -> list[str]:
    """The agent's own requirements: ``[project].dependencies`` in pyproject.toml."""
    with (REPO / "pyproject.toml").open("rb") as file:
        return list(tomllib.load(file)["project"]["dependencies"])


def installed(name: str) -> importlib.metadata.Distribution:
    """Distribution ``name`` as installed in this interpreter's environment (its site-packages,
    not whatever else is on sys.path, such as a checkout's own ``*.egg-info``)."""
    paths = sysconfig.get_paths()
    site = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    for dist in importlib.metadata.distributions(name=name, path=site):
        return dist
    raise UnprivilegedError(f"{name} is not installed in {sys.prefix}")


def distributions(requirements: Iterable[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``requirements`` need, with their own requirements (extras
    named in a requirement included, environment markers evaluated here)."""
    from packaging.requirements import Requirement

    found: dict[str, importlib.metadata.Distribution] = {}
    extras_seen: dict[str, set[str]] = {}
    queue = [Requirement(text) for text in requirements]
    queue = [r for r in queue if r.marker is None or r.marker.evaluate({"extra": ""})]
    while queue:
        requirement = queue.pop()
        name = _canonical(requirement.name)
        wanted = {"", *requirement.extras}
        if name in found and wanted <= extras_seen[name]:
            continue
        dist = found.get(name) or installed(requirement.name)
        found[name] = dist
        new = wanted - extras_seen.get(name, set())
        extras_seen.setdefault(name, set()).update(wanted)
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in new):
                queue.append(sub)
    return sorted(found.values(), key=lambda d: _canonical(d.metadata["Name"]))


def copy_distribution(dist: importlib.metadata.Distribution, site: Path) -> None:
    """Copy the files ``dist`` installed into its site-packages (its RECORD) to ``site``;
    scripts installed outside site-packages (``../../bin``) are left out."""
    for entry in dist.files or []:
        if entry.parts[0] == "..":
            continue
        source = Path(str(dist.locate_file(entry)))
        if not source.is_file():  # RECORD may list byte-code that was never written
            continue
        target = site / entry
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def _world_readable(top: Path) -> None:
    for directory, _, files in os.walk(top):
        os.chmod(directory, 0o755)  # noqa: S103 (other users must read the copy: its purpose)
        for name in files:
            path = Path(directory) / name
            mode = stat.S_IMODE(path.lstat().st_mode)
            path.chmod(mode | (0o555 if mode & 0o111 else 0o444))


def reachable_by_others(path: Path) -> bool:
    """Whether every directory above ``path`` lets other users through (o+x)."""
    return all(os.stat(parent).st_mode & stat.S_IXOTH for parent in path.resolve().parents)


def _interpreters() -> list[str]:
    """Interpreters of this Python version: the one behind this venv first, then the usual
    system ones; the ones other users can reach come first."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = getattr(sys, "_base_executable", sys.executable)
    candidates = [os.path.realpath(base)]
    for directory in ("/usr/local/bin", "/usr/bin", "/bin"):
        for name in (f"python{version}", "python3"):
            found = shutil.which(name, path=directory)
            if found:
                candidates.append(os.path.realpath(found))
    unique = list(dict.fromkeys(candidates))
    return sorted(unique, key=lambda c: not reachable_by_others(Path(c)))


def server_requirements() -> list[str]:
    """The server's requirements: the agent's plus the ``server`` extra in pyproject.toml."""
    with (REPO / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["server"]]


def _probe(runtime: AgentRuntime, imports: Iterable[str] = PROBE_IMPORTS) -> str:
    """Start ``runtime.python`` as the user on the copy; '' when it imports ``imports`` and is
    this Python version, otherwise what went wrong."""
    want = f"{sys.version_info.major} {sys.version_info.minor}"
    code = f"import sys, {', '.join(imports)}; print(*sys.version_info[:2])"
    command = [*runtime.setpriv(), runtime.python, "-S", "-c", code]
    try:
        proc = subprocess.run(
            command,
            env=runtime.env(os.environ),
            cwd=runtime.path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit {proc.returncode}"
    if proc.stdout.strip() != want:
        return f"Python {proc.stdout.strip().replace(' ', '.')}, not {want.replace(' ', '.')}"
    return ""


def prepare(dest: Path, user: str = "nobody") -> AgentRuntime:
    """Copy the agent and its runtime into ``dest`` (created; it must be reachable by ``user``)
    and find an interpreter ``user`` can run it with. Run as root."""
    dest.mkdir()
    shutil.copytree(REPO / "agent", dest / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    return _finish(dest, user, ("agent", "flagpost"), agent_requirements(), PROBE_IMPORTS)


def prepare_server(dest: Path, user: str = "nobody") -> AgentRuntime:
    """Like ``prepare``, for the server: the ``server`` package with its ``alembic`` and
    ``web`` directories beside it (where ``server.resources`` finds them in a checkout), the
    ``agent`` package (the server validates specs with ``agent.specs``) and the server's
    runtime; run it with ``runtime.module("server", ...)``. Run as root."""
    dest.mkdir()
    skip = shutil.ignore_patterns("__pycache__")
    for directory in ("server", "agent", "alembic", "web"):
        shutil.copytree(REPO / directory, dest / directory, ignore=skip)
    return _finish(
        dest, user, ("server", "agent", "flagpost"), server_requirements(), SERVER_PROBE_IMPORTS
    )


def _finish(
    dest: Path,
    user: str,
    packages: Iterable[str],
    requirements: Iterable[str],
    imports: Iterable[str],
) -> AgentRuntime:
    """Add the generated ``flagpost`` package and the distributions ``requirements`` need to
    the copy in ``dest``, make it world-readable and find an interpreter ``user`` can import
    ``imports`` with."""
    shutil.copytree(
        REPO / "proto" / "flagpost",
        dest / "flagpost",
        ignore=shutil.ignore_patterns("__pycache__", "*.proto"),
    )
    for package in packages:  # the user cannot write byte-code there itself
        compileall.compile_dir(dest / package, quiet=1)
    for dist in distributions(requirements):
        copy_distribution(dist, dest)
    _world_readable(dest)
    if not reachable_by_others(dest / next(iter(packages))):
        raise UnprivilegedError(f"{dest} is under a directory that other users cannot enter")
    account = pwd.getpwnam(user)
    failures = []
    for python in _interpreters():
        runtime = AgentRuntime(account, python, dest)
        problem = _probe(runtime, imports)
        if not problem:
            return runtime
        failures.append(f"  {python}: {problem}")
    raise UnprivilegedError(
        f"no Python {sys.version_info.major}.{sys.version_info.minor} that {user} can run the "
        f"{next(iter(packages))} with:\n" + "\n".join(failures)
    )
