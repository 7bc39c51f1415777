"""The engine on a real filesystem: 1 -> 4, backups, re-run, rollback, custom migrations."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from agent_testlib import AGENT_TOKEN, LEGACY_CONF, run_agent, snapshot, write_legacy

from agent import events
from agent.migrations import (
    Detected,
    DetectionError,
    FileOp,
    FileView,
    Migration,
    MigrationEngine,
    MigrationRegistry,
    Step,
    WriteFile,
    default_registry,
)
from agent.migrations.fsops import load_manifest
from agent.outbox import Outbox
from agent.specs.builtin import agent_config_migration, json_conf, secrets_file
from flagpost.v1 import agent_pb2


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "state/outbox.db") as box:
        yield box


def engine(root: Path, outbox: Outbox) -> MigrationEngine:
    return MigrationEngine(root, root.parent / "state", outbox)


def test_full_migration_1_to_4(tmp_path: Path, outbox: Outbox) -> None:
    root = tmp_path / "root"
    legacy = write_legacy(root, mode=0o640)
    original = legacy.read_bytes()
    result = engine(root, outbox).run(agent_config_migration())

    assert result.detection is not None and result.execution is not None
    assert result.detection.status == events.SUCCESS
    assert (result.detection.migration_from, result.detection.migration_to) == ("1", "4")
    assert result.execution.status == events.SUCCESS
    assert result.execution.message == "Config migrated 1 -> 4"
    assert result.execution.run_id == result.detection.run_id == result.run_id

    # Final state: v4 JSON + 0600 secrets, no v1/v2 file left, legacy dir kept.
    assert not legacy.exists() and legacy.parent.is_dir()
    assert not (root / "etc/flagpost/agent.conf").exists()
    document = json.loads(json_conf(root).read_text())
    assert document == {
        "config_version": 4,
        "server": {"url": "https://flagpost.example:8443", "proxy": "http://proxy.local:3128"},
        "checkin": {"interval_seconds": 30},
        "logging": {"level": "info"},
        "secrets_file": "secrets.json",
    }
    assert json.loads(secrets_file(root).read_text()) == {"agent_token": AGENT_TOKEN}
    assert stat.S_IMODE(secrets_file(root).stat().st_mode) == 0o600
    assert stat.S_IMODE(json_conf(root).stat().st_mode) == 0o640  # kept from the source
    leftovers = [p.name for p in (root / "etc/flagpost").iterdir()]
    assert sorted(leftovers) == ["agent.json", "secrets.json"]

    # The backup: a new dir for this run, manifest checksums match the original bytes.
    assert result.backup_dir == tmp_path / "state/backups" / result.run_id
    manifest = load_manifest(result.backup_dir)
    entries = {Path(e.original_path): e for e in manifest.entries}
    entry = entries[legacy]
    assert entry.existed and entry.size == len(original) and entry.mode == 0o640
    assert entry.sha256 == hashlib.sha256(original).hexdigest()
    copy = result.backup_dir / entry.backup_name
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == entry.sha256
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert not entries[secrets_file(root)].existed
    assert str(root / "etc/flagpost") in manifest.missing_dirs
    raw = json.loads((result.backup_dir / "manifest.json").read_text())
    assert [f["original_path"] for f in raw["files"]] == [str(legacy)]
    assert str(secrets_file(root)) in raw["absent"]

    # Events are in the outbox; the journal is gone; no secret anywhere in them.
    stored = outbox.events()
    assert [e.event_id for e in stored] == [result.detection.event_id, result.execution.event_id]
    assert all(AGENT_TOKEN not in e.SerializeToString().decode("latin-1") for e in stored)
    assert not (tmp_path / "state/migration-journal.json").exists()
    info = dict(result.execution.system_info)
    assert {
        "hostname",
        "os",
        "kernel",
        "python",
        "agent_version",
        "config_path",
        "disk_free_bytes",
        "uid",
    } <= info.keys()
    assert int(info["disk_free_bytes"]) > 0


def test_rerun_after_success_is_not_needed_without_backup(tmp_path: Path, outbox: Outbox) -> None:
    root = tmp_path / "root"
    write_legacy(root)
    first = engine(root, outbox).run(agent_config_migration())
    assert first.execution is not None and first.execution.status == events.SUCCESS
    before = snapshot(root)
    second = engine(root, outbox).run(agent_config_migration())
    assert second.execution is None
    assert second.detection is not None and second.detection.status == events.NOT_NEEDED
    assert second.detection.migration_from == "4"
    assert list((tmp_path / "state/backups").iterdir()) == [first.backup_dir]
    assert snapshot(root) == before


def test_no_config_is_not_needed(tmp_path: Path, outbox: Outbox) -> None:
    result = engine(tmp_path / "root", outbox).run(agent_config_migration())
    assert result.detection is not None
    assert result.detection.status == events.NOT_NEEDED
    assert result.detection.message == (
        f"No agent config found under {tmp_path / 'root'}; nothing to migrate"
    )
    assert not (tmp_path / "state/backups").exists()


def test_bad_config_is_a_failed_detection_event(tmp_path: Path, outbox: Outbox) -> None:
    root = tmp_path / "root"
    write_legacy(root, LEGACY_CONF + "garbage\n")
    before = snapshot(root)
    result = engine(root, outbox).run(agent_config_migration())
    event = result.detection
    assert event is not None and result.execution is None
    assert event.event_type == events.DETECTION and event.status == events.FAILED
    # The built-in spec names the file by its spec path and reads it as ini (the Python chain
    # said "agent.conf:8: expected 'key = value'").
    expected = "/etc/aggregator/agent.conf:8: expected '[section]' or 'key = value'"
    assert event.error_message == expected
    assert event.message == f"Detection failed: {expected}"
    assert event.error_detail.line == 8
    assert (event.migration_from, event.migration_to) == ("1", "4")
    assert event.error_detail.exception_type == "ConfigParseError"
    assert event.error_detail.file_path == str(root / "etc/aggregator/agent.conf")
    assert snapshot(root) == before
    assert outbox.depth() == 1


def test_unchanged_detection_not_reported_twice(tmp_path: Path, outbox: Outbox) -> None:
    root = tmp_path / "root"
    write_legacy(root, "nonsense\n")
    runner = engine(root, outbox)
    assert runner.run(agent_config_migration(), report_unchanged=False).detection is not None
    assert runner.run(agent_config_migration(), report_unchanged=False).detection is None
    write_legacy(root, "still nonsense = \n")
    assert runner.run(agent_config_migration(), report_unchanged=False).detection is not None
    assert outbox.depth() == 2


# ------------------------------------------------------------ a user-registered migration


def _detect_ini(view: FileView) -> Detected:
    path = view.root / "etc/app.ini"
    if not view.exists(path):
        return Detected(None, None, "no app.ini")
    text = view.read_bytes(path).decode()
    version = "2" if text.startswith("#v2") else "1"
    return Detected(version, path, f"app.ini v{version}")


def _plan_ini(view: FileView) -> Sequence[FileOp]:
    path = view.root / "etc/app.ini"
    other = view.root / "etc/app.d/extra.ini"
    body = view.read_bytes(path).decode()
    return [
        WriteFile(other, b"created\n", 0o644),
        WriteFile(path, ("#v2\n" + body).encode(), 0o644),
    ]


def _plan_ini_broken(view: FileView) -> Sequence[FileOp]:
    path = view.root / "etc/app.ini"
    return [
        WriteFile(view.root / "etc/app.d/extra.ini", b"created\n", 0o644),
        WriteFile(path, b"still v1\n", 0o600),
    ]


def ini_migration(plan: object = _plan_ini) -> Migration:
    return Migration(
        id="app-ini",
        title="app.ini",
        current_version="2",
        detect=_detect_ini,
        files=lambda root: (root / "etc/app.ini",),
        steps=(Step("v1_to_v2", "1", "2", "mark as v2", plan),),  # type: ignore[arg-type]
    )


def test_user_migration_registers_and_runs(tmp_path: Path, outbox: Outbox) -> None:
    registry = default_registry()
    registry.register(ini_migration())
    assert [m.id for m in registry] == ["agent-config", "app-ini"]
    with pytest.raises(ValueError, match="already registered"):
        registry.register(ini_migration())
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/app.ini").write_text("a = 1\n")
    result = engine(root, outbox).run(registry.get("app-ini"))
    assert result.execution is not None and result.execution.status == events.SUCCESS
    assert (root / "etc/app.ini").read_text() == "#v2\na = 1\n"
    assert (root / "etc/app.d/extra.ini").exists()


def test_failed_verify_rolls_back_every_step(tmp_path: Path, outbox: Outbox) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/app.ini").write_text("a = 1\n")
    (root / "etc/app.ini").chmod(0o640)
    before = snapshot(root)
    result = engine(root, outbox).run(ini_migration(_plan_ini_broken))
    event = result.execution
    assert event is not None and event.status == events.FAILED
    detail = event.error_detail
    assert detail.failing_step == "verify"
    assert detail.exception_type == "VerificationError"
    assert detail.rollback == "succeeded"
    assert detail.backup_path == str(result.backup_dir)
    assert snapshot(root) == before  # bytes and mode restored, created file gone
    assert not (root / "etc/app.d").exists()  # the directory the run created is gone too


def test_registry_rejects_broken_chain() -> None:
    registry = MigrationRegistry()
    steps = (Step("a", "1", "2", "", _plan_ini),)
    broken = Migration("x", "x", "3", _detect_ini, lambda r: (), steps)
    with pytest.raises(ValueError, match="no step reaches 3"):
        registry.register(broken)
    with pytest.raises(DetectionError, match="no migration path"):
        broken.path_from("1")


# ------------------------------------------------------------ the CLI


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_legacy(root)
    before = snapshot(tmp_path)
    proc = run_agent("--root", str(root), "migrate", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"detected version 1 at {root}/etc/aggregator/agent.conf (current 4)" in out
    assert "step v1_to_v2_move_location (1 -> 2)" in out
    assert f"remove {root}/etc/aggregator/agent.conf" in out
    assert f"write {root}/etc/flagpost/secrets.json" in out and "mode 0600" in out
    assert "dry run: nothing was changed" in out
    assert AGENT_TOKEN not in out + proc.stderr
    assert snapshot(tmp_path) == before
    assert not (root / "var").exists()  # not even a state dir


def test_cli_migrate_records_events(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_legacy(root)
    proc = run_agent("--root", str(root), "migrate")
    assert proc.returncode == 0, proc.stderr
    assert "Config migrated 1 -> 4" in proc.stdout
    assert AGENT_TOKEN not in proc.stdout + proc.stderr
    with Outbox(root / "var/lib/flagpost-agent/outbox.db") as box:
        kinds = [(e.event_type, e.status) for e in box.events()]
    assert kinds == [
        (agent_pb2.EVENT_TYPE_MIGRATION_DETECTION, agent_pb2.EVENT_STATUS_SUCCESS),
        (agent_pb2.EVENT_TYPE_MIGRATION_EXECUTION, agent_pb2.EVENT_STATUS_SUCCESS),
    ]
    assert os.stat(root / "var/lib/flagpost-agent/outbox.db").st_mode & 0o077 == 0
