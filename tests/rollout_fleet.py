"""A fleet of real agents for the rollout acceptance tests (tests/test_rollouts_fleet.py).

Each host is a directory tree (``etc/hostname``, ``etc/machine-id``, the agent's
``etc/flagpost-agent/agent.toml`` and the sample spec's v1 ``etc/myapp/myapp.ini``), driven
by the real agent engine (:class:`agent.daemon.Agent`, real enrollment, real gRPC check-ins,
real spec runs and reverts on disk). Many agents share one process:

    python tests/rollout_fleet.py BASE --server HOST:PORT [--token TOKEN] [--threads 8]

enrolls every host under ``BASE`` that has no credentials yet, then checks every agent in
(``Agent.once``: take the actions, run them, report) round after round until SIGTERM. A host
whose ``etc/myapp/myapp.ini`` says ``port = eighty`` is one the spec's ``convert`` step
rejects (``server.port`` must be an int): its run fails and rolls back.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLE_PATH = HERE / "agent_tests/specs/myapp.toml"
INI = "etc/myapp/myapp.ini"
GOOD_INI = (
    "# myapp settings\n"
    "[server]\n"
    "addr = 0.0.0.0\n"
    "port = 8080\n"
    "\n"
    "[db]\n"
    "url = postgresql://db/app\n"
    "password = fleet-Secret-7\n"
)
BAD_INI = GOOD_INI.replace("port = 8080", "port = eighty")


def hostname(index: int) -> str:
    return f"fleet-{index:03d}"


def make_hosts(base: Path, count: int, bad: set[int], offset: int = 0) -> list[Path]:
    """``count`` host trees under ``base``, named from index ``offset`` on (``bad``: the
    indexes with a config the spec rejects); returns their roots."""
    roots = []
    for index in range(offset, offset + count):
        root = base / hostname(index)
        (root / "etc/myapp").mkdir(parents=True)
        (root / "etc/flagpost-agent").mkdir(parents=True)
        (root / "etc/hostname").write_text(hostname(index) + "\n")
        (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        (root / "etc/flagpost-agent/agent.toml").write_text(
            'labels = { env = "prod", role = "web" }\n'
        )
        (root / INI).write_text(BAD_INI if index in bad else GOOD_INI)
        roots.append(root)
    return roots


def etc_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root/etc/myapp`` with its bytes (the spec's files)."""
    folder = root / "etc/myapp"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(folder.rglob("*"))}


def backups(root: Path) -> list[Path]:
    folder = root / "var/lib/flagpost-agent/backups"
    return sorted(folder.iterdir()) if folder.is_dir() else []


@contextmanager
def running_fleet(
    base: Path, server: str, token: str = "", threads: int = 8, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """This module as a process driving every host under ``base``; SIGTERM on exit."""
    args = [sys.executable, str(Path(__file__)), str(base), "--server", server]
    args += ["--threads", str(threads)] + (["--token", token] if token else [])
    out = (log or base.with_suffix(".log")).open("ab")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        out.close()


def _agents(roots: list[Path], server: str, token: str) -> list[Any]:
    from agent.config import load_config
    from agent.daemon import Agent
    from agent.enroll import enroll
    from agent.sysinfo import host_facts

    agents = []
    for root in roots:
        config = load_config({"root": str(root), "server": server}, env={})
        if not config.credentials_path.exists():
            config.state_dir.mkdir(parents=True, exist_ok=True)
            facts = host_facts(root, config.state_dir, root / "none.json", "", config.labels)
            enroll(server, token, facts, config.credentials_path)
        agents.append(Agent(config))
    return agents


def _drive(roots: list[Path], args: argparse.Namespace, stop: threading.Event) -> None:
    """One thread's share of the hosts: its agents (an agent's outbox belongs to the thread
    that opened it) checked in one after the other, round after round."""
    agents = _agents(roots, args.server, args.token)
    rounds = 0
    try:
        while not stop.is_set():
            started = time.monotonic()
            failed = sum(1 for agent in agents if agent.once())
            rounds += 1
            if rounds % 10 == 1 or failed:
                print(
                    f"fleet: {threading.current_thread().name} round {rounds} "
                    f"({len(agents)} agents) in {time.monotonic() - started:.2f}s, "
                    f"{failed} check-ins failed",
                    flush=True,
                )
            stop.wait(args.pause)
    finally:
        for agent in agents:
            agent.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("--server", required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between rounds")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    roots = sorted(p for p in args.base.iterdir() if p.is_dir())
    threads = [
        threading.Thread(target=_drive, args=(roots[i :: args.threads], args, stop), name=f"t{i}")
        for i in range(args.threads)
    ]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        for thread in threads:
            thread.join(timeout=0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
