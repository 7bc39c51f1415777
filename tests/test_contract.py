"""The gRPC contract and the package boundary."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ["agent_pb2.py", "agent_pb2.pyi", "agent_pb2_grpc.py"]


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    """Regenerate from the .proto into a temp dir: the committed modules must be identical."""
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), str(tmp_path)], check=True
    )
    committed = ROOT / "proto" / "flagpost" / "v1"
    for name in GENERATED:
        fresh = tmp_path / "flagpost" / "v1" / name
        assert fresh.exists(), f"protoc did not produce {name}"
        assert filecmp.cmp(fresh, committed / name, shallow=False), (
            f"proto/flagpost/v1/{name} is out of date with agent.proto: run `make proto`"
        )


def test_importing_agent_never_imports_server() -> None:
    """The agent installs without the server's dependencies: importing it must not pull them in."""
    code = (
        "import sys, agent, agent.cli, agent.daemon, agent.checkin, agent.outbox;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'server','sqlalchemy','aiohttp','alembic','jinja2','asyncpg','aiosqlite'});"
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, (
        f"agent imported server-side modules: {result.stdout}{result.stderr}"
    )


def test_an_idle_agent_does_not_load_openssl() -> None:
    """``cryptography`` (OpenSSL bindings, ~8 MiB of RSS) is loaded only when an action arrives
    to be verified, not by a daemon that merely checks in."""
    code = (
        "import sys, agent.cli, agent.daemon, agent.actions, agent.action_verify;"
        "print('cryptography' in sys.modules); sys.exit('cryptography' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, f"cryptography imported at start: {result.stdout}{result.stderr}"
