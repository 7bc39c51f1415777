"""Real permission failures: the agent runs as ``nobody`` (setpriv), never a simulated error."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from agent_testlib import AGENT_TOKEN, NOBODY, run_agent, snapshot, write_legacy

from agent import events
from agent.outbox import Outbox


def _tree_for_nobody(base: Path) -> Path:
    """root/ owned by nobody, except etc/aggregator: root-owned and read-only."""
    root = base / "root"
    legacy = write_legacy(root, mode=0o644)
    for path in (root, root / "etc"):
        os.chown(path, NOBODY, NOBODY)
    legacy.parent.chmod(0o555)  # owned by root: nobody cannot remove the legacy file
    return root


def _events(root: Path) -> list[events.agent_pb2.MigrationEvent]:
    with Outbox(root / "var/lib/flagpost-agent/outbox.db") as box:
        return box.events()


def test_read_only_legacy_dir_rolls_back(world_dir: Path) -> None:
    root = _tree_for_nobody(world_dir)
    legacy = root / "etc/aggregator/agent.conf"
    original = legacy.read_bytes()
    before = snapshot(root / "etc")

    proc = run_agent("--root", str(root), "migrate", as_nobody=True)

    assert proc.returncode == 1, proc.stderr
    assert legacy.read_bytes() == original
    assert snapshot(root / "etc") == before  # nothing created is left behind
    assert not (root / "etc/flagpost").exists()
    detection, execution = _events(root)
    assert detection.status == events.SUCCESS
    assert execution.event_type == events.EXECUTION and execution.status == events.FAILED
    assert execution.run_id == detection.run_id
    detail = execution.error_detail
    assert detail.errno == errno.EACCES and detail.errno_name == "EACCES"
    assert detail.exception_type == "PermissionError"
    assert detail.failing_step == "v1_to_v2_move_location"
    assert detail.file_path == str(legacy)
    assert detail.rollback == "succeeded" and detail.rollback_error == ""
    assert Path(detail.backup_path).parent == root / "var/lib/flagpost-agent/backups"
    assert "EACCES" in execution.error_message and "rolled back" in execution.error_message
    assert AGENT_TOKEN not in proc.stdout + proc.stderr + execution.error_message
    assert int(execution.system_info["uid"]) == NOBODY


def test_unreadable_config_is_failed_detection_with_errno(world_dir: Path) -> None:
    root = world_dir / "root"
    legacy = write_legacy(root, mode=0o600)  # root-owned 0600: nobody cannot read it
    os.chown(root, NOBODY, NOBODY)

    proc = run_agent("--root", str(root), "migrate", as_nobody=True)

    assert proc.returncode == 1, proc.stderr
    [event] = _events(root)
    assert event.event_type == events.DETECTION and event.status == events.FAILED
    assert event.error_detail.errno == errno.EACCES
    assert event.error_detail.errno_name == "EACCES"
    assert event.error_detail.file_path == str(legacy)
    assert "cannot read" in event.error_message
