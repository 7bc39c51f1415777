"""The agent daemon's memory after ten idle check-ins.

    python -m tests.bench.agent_rss [--checkins 10] [--specs 0|1|2]

Starts a real server (SQLite in a temp dir, check-in interval 1 s), enrolls one agent whose
config is already current (so it is idle: nothing to migrate), runs ``flagpost-agent run`` and
counts its check-ins through ``flagpost-agent status --json``; prints the daemon's RSS then.

``--specs N`` installs N server-defined specs in the agent's state dir first (as an accepted
action would), each detected and reported at every check-in: the sample spec
(tests/agent_tests/specs/myapp.toml) with its host at v1 (INI), and a copy of it for
``/etc/myapp2`` with its host at v3 (TOML, so the TOML library is loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
SAMPLE = REPO / "tests/agent_tests/specs/myapp.toml"
V1_INI = "[server]\naddr = 0.0.0.0\nport = 8080\n[db]\nurl = postgresql://db/app\npassword = pw\n"
V3_TOML = '[server]\naddress = "0.0.0.0"\nport = 8080\n[db]\nurl = "postgresql://db/app"\n'


def install_specs(root: Path, count: int) -> None:
    """``count`` (at most 2) specs installed for the agent under ``root``, with host files."""
    import hashlib
    import tomllib

    from agent.config import load_config
    from agent.specs.store import SpecStore, accept

    config = load_config({"root": str(root)}, env={})
    store = SpecStore(config.specs_dir)
    sample = SAMPLE.read_text(encoding="utf-8")
    hosts = [("myapp", sample, "etc/myapp/myapp.ini", V1_INI)]
    second = sample.replace('id = "myapp"', 'id = "myapp2"').replace("/etc/myapp/", "/etc/myapp2/")
    hosts.append(("myapp2", second, "etc/myapp2/config.toml", V3_TOML))
    for spec_id, text, file, content in hosts[:count]:
        (root / file).parent.mkdir(parents=True, exist_ok=True)
        (root / file).write_text(content, encoding="utf-8")
        source = json.dumps(tomllib.loads(text), sort_keys=True, separators=(",", ":"))
        params = {
            "spec_id": spec_id,
            "spec_revision": "1",
            "spec": source,
            "spec_sha256": hashlib.sha256(source.encode()).hexdigest(),
        }
        store.install(accept(params, config.root, config.allowed_paths))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkins", type=int, default=10)
    parser.add_argument("--specs", type=int, default=0, choices=(0, 1, 2))
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="flagpost-rss-"))
    env = dict(os.environ)
    env.update(
        FLAGPOST_DATABASE_URL=f"sqlite+aiosqlite:///{base / 'server.db'}",
        FLAGPOST_STATE_DIR=str(base / "state"),
        FLAGPOST_GRPC_PORT="0",
        FLAGPOST_WEB_PORT="0",
        FLAGPOST_CHECKIN_INTERVAL_SECONDS="1",
    )
    server = agent = None
    try:
        subprocess.run([PY, "-m", "server", "db", "upgrade"], env=env, cwd=REPO, check=True)
        server = subprocess.Popen(
            [PY, "-m", "server", "serve"], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None
        grpc_addr = next(
            line.removeprefix("grpc: ").strip()
            for line in server.stdout
            if line.startswith("grpc: ")
        )
        token = subprocess.run(
            [PY, "-m", "server", "token", "create"],
            env=env,
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        root = base / "agent"
        agent_cmd = [PY, "-m", "agent", "--root", str(root)]
        subprocess.run(
            [*agent_cmd, "enroll", "--server", grpc_addr, "--token", token], cwd=REPO, check=True
        )
        install_specs(root, args.specs)
        agent = subprocess.Popen([*agent_cmd, "run"], cwd=REPO, stderr=subprocess.DEVNULL)
        seen: set[str] = set()
        deadline = time.monotonic() + 60 + args.checkins * 3
        while len(seen) < args.checkins and time.monotonic() < deadline:
            status = subprocess.run(
                [*agent_cmd, "status", "--json"], cwd=REPO, capture_output=True, text=True
            )
            if status.returncode == 0:
                last = json.loads(status.stdout).get("last_checkin_at")
                if last:
                    seen.add(last)
            time.sleep(0.2)
        rss = psutil.Process(agent.pid).memory_info().rss / 2**20
        print(
            f"agent check-ins observed: {len(seen)}; specs installed: {args.specs}; "
            f"agent daemon RSS: {rss:.1f} MiB"
        )
        return 0 if len(seen) >= args.checkins else 1
    finally:
        for proc in (agent, server):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=15)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
