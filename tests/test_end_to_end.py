"""Issue 2 acceptance: a real server on port 0 and real agent processes, on SQLite and PostgreSQL.

Each scenario is checked in ``update_events`` and in the History HTML:
(a) invalid legacy config -> migration_detection_failed with the parse error and its line;
(b) read-only legacy config dir -> migration_execution_failed with errno, original byte-identical;
(c) healthy legacy config -> detection success then execution success, new config valid, the
    backup present with verified checksums; (d) a second run -> detection not_needed, no new backup.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pwd
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from server_testlib import logged_in_http
from sqlalchemy import select
from unprivileged_testlib import nobody_runtime

from server import app_keys
from server.services.enrollment import create_token
from server.storage.models import UpdateEvent

REPO = Path(__file__).resolve().parent.parent
LEGACY = """\
# aggregator agent configuration
server_url = https://flagpost.example.net:50051
agent_token = e2e-token-value
check_interval = 300
log_level = info
"""
INVALID = """\
# aggregator agent configuration
server_url = https://flagpost.example.net:50051
this line has no equals sign
check_interval = 300
"""
NOBODY = pwd.getpwnam("nobody")


async def run_agent(root: Path, *args: str, as_nobody: bool = False) -> str:
    """Run ``python -m agent --root ROOT ARGS`` without blocking the loop the server runs on
    (as ``nobody``: from the session's copy of the agent it can read, see unprivileged_testlib)."""
    command = [sys.executable, "-m", "agent", "--root", str(root), *args]
    env, cwd = dict(os.environ), REPO
    if as_nobody:
        runtime = await asyncio.to_thread(nobody_runtime)  # the first call copies
        assert runtime.user.pw_uid == NOBODY.pw_uid
        command = runtime.command("--root", str(root), *args)
        env, cwd = runtime.env(env), runtime.path
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = out.decode()
    assert proc.returncode == 0, f"agent {' '.join(args)} exited {proc.returncode}:\n{text}"
    return text


async def enrolled_agent(server: Any, root: Path, *, as_nobody: bool = False) -> None:
    token = await create_token(
        server.app[app_keys.SESSIONS], uses=1, expires_in=timedelta(minutes=10)
    )
    grpc_addr = f"127.0.0.1:{server.grpc_port}"
    await run_agent(root, "enroll", "--server", grpc_addr, "--token", token, as_nobody=as_nobody)


async def stored_events(server: Any) -> list[UpdateEvent]:
    async with server.app[app_keys.SESSIONS]() as session:
        rows = await session.scalars(select(UpdateEvent).order_by(UpdateEvent.id))
        return list(rows)


async def history_html(server: Any, **params: str) -> str:
    async with (
        logged_in_http(server, "viewer") as client,
        client.get(f"{server.web_url}/history", params=params) as response,
    ):
        assert response.status == 200
        return await response.text()


def outcomes(events: list[UpdateEvent]) -> list[str]:
    return [f"{e.event_type}_{e.status}" for e in events]


def backups(root: Path) -> list[Path]:
    folder = root / "var" / "lib" / "flagpost-agent" / "backups"
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []


async def test_invalid_legacy_config_reports_detection_failure(
    running_server: Any, agent_base: Path
) -> None:
    root = agent_base / "invalid"
    (root / "etc" / "aggregator").mkdir(parents=True)
    (root / "etc" / "aggregator" / "agent.conf").write_text(INVALID)
    await enrolled_agent(running_server, root)

    await run_agent(root, "once")

    events = await stored_events(running_server)
    assert outcomes(events) == ["migration_detection_failed"]
    failed = events[0]
    assert failed.severity == "error"
    assert "agent.conf:3" in failed.error_message, failed.error_message
    assert failed.error_detail.get("line") == 3
    assert failed.migration_from == "1"
    html = await history_html(running_server, severity="error")
    assert "Detection failed" in html or "detection failed" in html.lower()
    assert "agent.conf:3" in html


async def test_read_only_config_dir_fails_and_rolls_back(
    running_server: Any, agent_base: Path
) -> None:
    root = agent_base / "readonly"
    legacy_dir = root / "etc" / "aggregator"
    legacy_dir.mkdir(parents=True)
    (root / "etc" / "flagpost").mkdir()
    (root / "var" / "lib").mkdir(parents=True)
    original = legacy_dir / "agent.conf"
    original.write_text(LEGACY)
    before = original.read_bytes()
    # Everything belongs to nobody except the legacy config dir: a real EACCES for the agent.
    for path in [root, *root.rglob("*")]:
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    os.chown(legacy_dir, 0, 0)
    os.chown(original, 0, 0)
    legacy_dir.chmod(0o555)
    await enrolled_agent(running_server, root, as_nobody=True)

    await run_agent(root, "once", as_nobody=True)

    assert original.read_bytes() == before, "the original config must be byte-identical"
    assert not (root / "etc" / "flagpost" / "agent.json").exists()
    assert not (root / "etc" / "flagpost" / "agent.conf").exists()
    events = await stored_events(running_server)
    assert outcomes(events) == ["migration_detection_success", "migration_execution_failed"]
    failed = events[1]
    assert failed.error_detail["errno"] == 13
    assert failed.error_detail["errno_name"] == "EACCES"
    assert failed.error_detail["failing_step"]
    assert failed.error_detail["rollback"] == "succeeded"
    assert events[0].run_id == failed.run_id
    html = await history_html(running_server, severity="error")
    assert "EACCES" in html
    assert failed.error_detail["failing_step"] in html


async def test_healthy_config_migrates_then_reports_not_needed(
    running_server: Any, agent_base: Path
) -> None:
    root = agent_base / "healthy"
    (root / "etc" / "aggregator").mkdir(parents=True)
    legacy = root / "etc" / "aggregator" / "agent.conf"
    legacy.write_text(LEGACY)
    legacy_bytes = legacy.read_bytes()
    await enrolled_agent(running_server, root)

    await run_agent(root, "once")

    events = await stored_events(running_server)
    assert outcomes(events) == ["migration_detection_success", "migration_execution_success"]
    assert events[1].migration_from == "1" and events[1].migration_to == "4"
    assert events[0].run_id == events[1].run_id
    new_config = json.loads((root / "etc" / "flagpost" / "agent.json").read_text())
    assert new_config["config_version"] == 4
    assert new_config["server"]["url"] == "https://flagpost.example.net:50051"
    assert "agent_token" not in new_config
    secrets_file = root / "etc" / "flagpost" / "secrets.json"
    assert json.loads(secrets_file.read_text())["agent_token"] == "e2e-token-value"
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    assert not legacy.exists()
    # Exactly one backup, its manifest's checksums match the files it holds and the original.
    (backup,) = backups(root)
    manifest = json.loads((backup / "manifest.json").read_text())
    entries = manifest["files"]
    assert entries, "the backup manifest lists the files it saved"
    for entry in entries:  # every saved file is there and matches its recorded checksum
        saved = (backup / entry["backup_name"]).read_bytes()
        assert hashlib.sha256(saved).hexdigest() == entry["sha256"]
    assert any(e["sha256"] == hashlib.sha256(legacy_bytes).hexdigest() for e in entries)

    html = await history_html(running_server)
    assert "1" in html and "4" in html and "Execution succeeded" in html

    # (d) a second run: not needed, and no new backup.
    await run_agent(root, "once")
    events = await stored_events(running_server)
    assert outcomes(events)[2:] == ["migration_detection_not_needed"]
    assert len(backups(root)) == 1
    html = await history_html(running_server, severity="info")
    assert "migration_detection_not_needed" in html and "Detection: up to date" in html
