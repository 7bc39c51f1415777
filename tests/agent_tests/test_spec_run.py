"""Specs through the engine (agent/specs/migration.py, revert.py, local.py) and the agent CLI
doors ``flagpost-agent spec preview|run|revert``, on real files in tmp_path roots: the sample
spec from a v1 myapp.ini, second run not needed, revert byte-identical, revert refused after a
hand edit, a genuine EROFS mid-step rolled back, confinement before anything is read."""

from __future__ import annotations

import errno
import json
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from agent_testlib import REPO, agent_env
from spec_testlib import (
    INI,
    PASSWORD,
    SAMPLE,
    SAMPLE_PATH,
    V1_INI,
    can_unshare,
    host,
    read_only,
    tree,
)

from agent.config import AgentConfigError, load_config
from agent.migrations import fsops
from agent.migrations.engine import MigrationEngine
from agent.migrations.model import DiskView
from agent.outbox import Outbox
from agent.specs.errors import PathRefused
from agent.specs.migration import spec_migration
from agent.specs.plan import plan_spec
from agent.specs.validate import parse_spec


def agent(
    root: Path, *args: str, wrap: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [*(wrap or []), sys.executable, "-m", "agent", "--root", str(root), *args]
    return subprocess.run(
        command, env=agent_env(), capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )


def state(root: Path) -> Path:
    return root / "var/lib/flagpost-agent"


def run_id_of(result: subprocess.CompletedProcess[str]) -> str:
    first = result.stdout.splitlines()[0]
    assert first.startswith("run "), result.stdout
    return first.split()[1]


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


# ------------------------------------------------------------ preview


def test_preview_shows_diffs_and_changes_nothing(tmp_path: Path) -> None:
    host(tmp_path)
    before = tree(tmp_path)
    result = agent(tmp_path, "spec", "preview", str(SAMPLE_PATH))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "myapp: version 1 -> 3" in out
    assert "+++ /etc/myapp/config.toml" in out and "+port = 8080" in out
    assert "+++ /etc/myapp/secrets.toml" in out and '+password = "********"' in out
    assert "--- /etc/myapp/myapp.ini" in out and "+++ /dev/null" in out
    assert "rename server.addr -> server.address" in out  # the operations
    assert PASSWORD not in out and PASSWORD not in result.stderr
    # Byte-identical tree, and no state dir at all: no outbox, backup or journal.
    assert tree(tmp_path) == before
    assert not state(tmp_path).exists()


# ------------------------------------------------------------ run, not needed, revert


def test_run_then_not_needed_then_revert_byte_identical(tmp_path: Path) -> None:
    host(tmp_path)
    start = tree(tmp_path / "etc")
    result = agent(tmp_path, "spec", "run", str(SAMPLE_PATH))
    assert result.returncode == 0, result.stderr
    assert "Config migrated 1 -> 3" in result.stdout
    run_id = run_id_of(result)
    etc = tmp_path / "etc/myapp"
    config = tomllib.loads((etc / "config.toml").read_text())
    assert config == {
        "server": {"address": "0.0.0.0", "port": 8080},
        "db": {"url": "postgresql://db/app"},
    }
    assert type(config["server"]["port"]) is int
    secrets = etc / "secrets.toml"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert tomllib.loads(secrets.read_text()) == {"db": {"password": PASSWORD}}
    assert not (etc / "myapp.ini").exists()
    assert PASSWORD not in result.stdout + result.stderr
    backup = state(tmp_path) / "backups" / run_id
    assert (backup / "manifest.json").is_file() and (backup / "spec.toml").is_file()
    after = fsops.load_after(backup)
    assert (after.from_version, after.to_version) == ("1", "3")
    assert not (state(tmp_path) / "migration-journal.json").exists()

    again = agent(tmp_path, "spec", "run", str(SAMPLE_PATH))
    assert again.returncode == 0, again.stderr
    assert "no migration needed" in again.stdout
    assert len(list((state(tmp_path) / "backups").iterdir())) == 1  # nothing executed

    reverted = agent(tmp_path, "spec", "revert", run_id)
    assert reverted.returncode == 0, reverted.stderr
    assert "revert reverted" in reverted.stdout
    assert tree(tmp_path / "etc") == start  # bytes, modes, and no leftover file
    # A second revert of the same run is refused (the files are no longer what it wrote).
    twice = agent(tmp_path, "spec", "revert", run_id)
    assert twice.returncode == 1 and "already reverted" in twice.stderr
    assert tree(tmp_path / "etc") == start


def test_revert_after_hand_edit_is_refused_naming_the_file(tmp_path: Path) -> None:
    host(tmp_path)
    run_id = run_id_of(agent(tmp_path, "spec", "run", str(SAMPLE_PATH)))
    config = tmp_path / "etc/myapp/config.toml"
    config.write_text(config.read_text() + "# tuned by hand\n")
    before = tree(tmp_path)
    result = agent(tmp_path, "spec", "revert", run_id)
    assert result.returncode == 1
    assert "refused" in result.stderr and str(config) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert_no_traceback(result)
    assert tree(tmp_path) == before  # nothing changed, no new backup

    # A mode change counts as a change too.
    config.write_text(config.read_text().replace("# tuned by hand\n", ""))
    (tmp_path / "etc/myapp/secrets.toml").chmod(0o644)
    result = agent(tmp_path, "spec", "revert", run_id)
    assert result.returncode == 1 and "secrets.toml" in result.stderr


def test_revert_of_an_unknown_run_is_refused(tmp_path: Path) -> None:
    host(tmp_path)
    result = agent(tmp_path, "spec", "revert", "01a237e3-ca84-7718-9218-7fb50131599e")
    assert result.returncode == 1 and "no backup of run" in result.stderr
    assert_no_traceback(result)


def test_v1_to_v2_edit_keeps_comments(tmp_path: Path) -> None:
    host(tmp_path)
    spec_path = tmp_path / "to2.toml"
    v3 = SAMPLE.index('[[versions]]\nversion = "3"')
    v2 = SAMPLE.index('[[versions]]\nversion = "2"')
    text = SAMPLE[:v3] + SAMPLE[v2:]
    text = text.replace('target = "3"', 'target = "2"').split('[[steps]]\nname = "ini')[0]
    spec_path.write_text(text)
    result = agent(tmp_path, "spec", "run", str(spec_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Config migrated 1 -> 2" in result.stdout
    text = (tmp_path / INI).read_text()
    assert text == V1_INI.replace("addr =", "address =") + "\n[meta]\nschema = 2\n"
    assert "# myapp settings\n" in text and "# where it listens\n" in text


# ------------------------------------------------------------ failure mid-step


def test_read_only_target_dir_mid_step_rolls_back(tmp_path: Path) -> None:
    if not can_unshare():
        pytest.skip("needs root and unshare -m for a read-only bind mount")
    host(tmp_path)
    conf_d = tmp_path / "etc/myapp/conf.d"
    conf_d.mkdir()
    spec_path = tmp_path / "confd.toml"
    spec_path.write_text(SAMPLE.replace("/etc/myapp/config.toml", "/etc/myapp/conf.d/config.toml"))
    before = tree(tmp_path / "etc")
    result = agent(tmp_path, "spec", "run", str(spec_path), wrap=read_only(conf_d))
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "failed at step ini_to_toml_split_password" in out
    assert f"on {conf_d / 'config.toml'}" in out
    assert "[EROFS]" in out and "rolled back" in out
    assert_no_traceback(result)
    # Step 1 had rewritten myapp.ini: the rollback put every byte and mode back.
    assert tree(tmp_path / "etc") == before
    assert not (state(tmp_path) / "migration-journal.json").exists()
    with Outbox(state(tmp_path) / "outbox.db") as outbox:
        failed = [e for e in outbox.events() if e.error_detail.failing_step]
    assert len(failed) == 1
    detail = failed[0].error_detail
    assert detail.failing_step == "ini_to_toml_split_password"
    assert detail.file_path == str(conf_d / "config.toml")
    assert detail.errno == errno.EROFS and detail.rollback == "succeeded"
    assert PASSWORD not in failed[0].error_message


# ------------------------------------------------------------ confinement


class CountingView(DiskView):
    """The disk, counting file reads."""

    reads: list[Path]

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads = []

    def read_bytes(self, path: Path) -> bytes:
        self.reads.append(path)
        return super().read_bytes(path)

    def exists(self, path: Path) -> bool:
        self.reads.append(path)
        return super().exists(path)


def escape(tmp_path: Path) -> tuple[Path, Path]:
    """root/etc/myapp -> a directory outside the root holding a v1 myapp.ini."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "myapp.ini").write_text(V1_INI)
    (root / "etc").mkdir(parents=True)
    (root / "etc/myapp").symlink_to(outside)
    return root, outside


def test_symlink_escape_refused_before_anything_is_read(tmp_path: Path) -> None:
    root, outside = escape(tmp_path)
    before = tree(tmp_path)
    assert (outside / "myapp.ini").read_text() == V1_INI
    view = CountingView(root)
    with pytest.raises(PathRefused) as caught:
        plan_spec(parse_spec(SAMPLE), view)
    assert "/etc/myapp/myapp.ini" in str(caught.value)
    assert view.reads == []
    with pytest.raises(PathRefused):
        spec_migration(parse_spec(SAMPLE), root)
    for command in ("preview", "run"):
        result = agent(root, "spec", command, str(SAMPLE_PATH))
        assert result.returncode == 2, result.stdout + result.stderr
        assert "refused" in result.stderr and "/etc/myapp/myapp.ini" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert_no_traceback(result)
    assert tree(tmp_path) == before  # no state dir, nothing written, the outside file intact


def test_engine_refuses_a_symlink_swapped_in_after_the_spec_was_accepted(tmp_path: Path) -> None:
    root = tmp_path / "root"
    host(root)
    migration = spec_migration(parse_spec(SAMPLE), root)  # accepted: the paths are in /etc
    outside = tmp_path / "outside"
    shutil.move(root / "etc/myapp", outside)
    (root / "etc/myapp").symlink_to(outside)
    before = tree(tmp_path)
    with Outbox(tmp_path / "state/outbox.db") as outbox:
        result = MigrationEngine(root, tmp_path / "state", outbox).run(migration)
    assert result.execution is None and result.detection is not None
    assert result.detection.error_detail.exception_type == "PathRefused"
    assert not (tmp_path / "state/backups").exists()
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith("state")} == {
        k: v for k, v in before.items() if not k.startswith("state")
    }


def test_allowed_paths_from_the_config_widen_and_narrow(tmp_path: Path) -> None:
    root = tmp_path
    (root / "opt/myapp").mkdir(parents=True)
    (root / "opt/myapp/myapp.ini").write_text(V1_INI)
    spec = tmp_path / "opt.toml"
    spec.write_text(SAMPLE.replace("/etc/myapp/", "/opt/myapp/"))
    refused = agent(root, "spec", "preview", str(spec))
    assert refused.returncode == 2 and "/opt/myapp/myapp.ini" in refused.stderr
    toml = tmp_path / "agent.toml"
    toml.write_text('allowed_paths = ["/opt/myapp"]\n')
    allowed = agent(root, "--config", str(toml), "spec", "preview", str(spec))
    assert allowed.returncode == 0, allowed.stderr
    assert "+++ /opt/myapp/config.toml" in allowed.stdout


def test_allowed_paths_setting() -> None:
    assert load_config({}, env={}).allowed_paths == ("/etc",)
    env = {"FLAGPOST_AGENT_ALLOWED_PATHS": "/etc/myapp, /opt/app/"}
    assert load_config({}, env=env).allowed_paths == ("/etc/myapp", "/opt/app")
    for bad in ("etc", "/etc/../root", ""):
        if bad == "":
            assert load_config({}, env={"FLAGPOST_AGENT_ALLOWED_PATHS": bad}).allowed_paths == ()
            continue
        with pytest.raises(AgentConfigError, match="allowed_paths"):
            load_config({}, env={"FLAGPOST_AGENT_ALLOWED_PATHS": bad})


# ------------------------------------------------------------ person's mistakes


def test_bad_spec_prints_its_field_errors(tmp_path: Path) -> None:
    host(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text(SAMPLE.replace('op = "rename_key"', 'op = "rename"'))
    result = agent(tmp_path, "spec", "preview", str(bad))
    assert result.returncode == 2
    assert "invalid spec" in result.stderr
    assert "steps[0].ops[0].op: unknown operation 'rename'" in result.stderr
    assert "line 27" in result.stderr
    assert_no_traceback(result)
    missing = agent(tmp_path, "spec", "run", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "cannot read the spec" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert not state(tmp_path).exists()


def test_events_of_a_spec_run_are_in_the_outbox(tmp_path: Path) -> None:
    host(tmp_path)
    run_id = run_id_of(agent(tmp_path, "spec", "run", str(SAMPLE_PATH)))
    with Outbox(state(tmp_path) / "outbox.db") as outbox:
        pending = outbox.events()
        updates = outbox.runs.updates()
    assert {e.run_id for e in pending} == {run_id}
    assert [e.message for e in pending] == [
        "Migration needed: 1 -> 3",
        "Config migrated 1 -> 3",
    ]
    assert updates and updates[-1].run_id == run_id
    dumped = json.dumps([e.error_message + e.message for e in pending])
    assert PASSWORD not in dumped
