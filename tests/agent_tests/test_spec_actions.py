"""Server-defined specs in signed actions (agent/specs/actions.py, store.py, preview.py,
versions.py): installed in the state dir and reported in every check-in's facts, previewed
without writing, run through the engine with spec id/revision on events and runs, reverted as
runs of their own; refusals (paths outside allowed_paths, a bad checksum, tampered or replayed
actions) change nothing and read nothing. Real agent code, real files under tmp roots."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest
from agent_testlib import (
    REPO,
    FakeServer,
    agent_env,
    daemon,
    enrolled_config,
    enrolled_fast,
    signed_action,
    wait_for,
)
from spec_testlib import INI, PASSWORD, SAMPLE, V1_INI, can_unshare, host, read_only, tree

from agent import events, runs
from agent.actions import RunRequest
from agent.config import AgentConfig
from agent.daemon import Agent
from agent.migrations.model import DiskView
from agent.specs.preview import MAX_DIFF_BYTES, cap
from agent.specs.store import SpecStore, accept
from flagpost.v1 import agent_pb2

MYAPP_FILES = ("myapp.ini", "config.toml", "secrets.toml")
UNKNOWN_RUN = "00000000-0000-7000-8000-000000000000"


def canonical(toml_text: str = SAMPLE) -> str:
    """The spec as the server sends it: canonical JSON."""
    return json.dumps(tomllib.loads(toml_text), sort_keys=True, separators=(",", ":"))


def spec_params(
    source: str | None = None, revision: int = 1, spec_id: str = "myapp"
) -> dict[str, str]:
    text = source if source is not None else canonical()
    return {
        "migration_id": spec_id,
        "spec_id": spec_id,
        "spec_revision": str(revision),
        "spec": text,
        "spec_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }


def enrolled(root: Path, server: FakeServer) -> AgentConfig:
    return enrolled_config(root, server, FLAGPOST_AGENT_STARTUP_JITTER_SECONDS="0")


def act(agent: Agent, *actions: agent_pb2.Action) -> int:
    """Deliver ``actions`` as a check-in would, then let the worker do what they queued."""
    agent.handle_actions(actions, agent.outbox)
    return agent.run_requested()


def of_spec(agent: Agent, event_type: int | None = None) -> list[agent_pb2.MigrationEvent]:
    found = [e for e in agent.outbox.events() if e.spec_id == "myapp"]
    return [e for e in found if event_type is None or e.event_type == event_type]


def notices(agent: Agent) -> list[str]:
    return [e.message for e in agent.outbox.events() if e.event_type == events.AGENT_NOTICE]


def host_tree(root: Path) -> Mapping[str, tuple[str, bytes, int]]:
    return tree(root / "etc")


# ------------------------------------------------------------ install, facts, preview


def test_preview_installs_reports_facts_and_changes_nothing_on_the_host(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    host(tmp_path)
    (tmp_path / "etc/myapp/notes.txt").write_text("unrelated\n")
    before = host_tree(tmp_path)
    config = enrolled(tmp_path, fake_server)
    with Agent(config) as agent:
        assert act(agent, signed_action("a-preview", "preview_migration", spec_params())) == 1
        [event] = of_spec(agent)
        # The store: one 0600 file in a 0700 dir, holding revision, checksum and the JSON.
        stored = config.state_dir / "specs/myapp.json"
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700
        data = json.loads(stored.read_text())
        assert data["revision"] == 1 and data["spec"] == canonical()
        assert data["sha256"] == hashlib.sha256(canonical().encode()).hexdigest()
        assert agent.check_in().ok
        assert not agent.outbox.runs.updates()  # a preview is no run
    assert event.event_type == events.PREVIEW and event.status == events.SUCCESS
    assert (event.spec_id, event.spec_revision, event.action_id) == ("myapp", 1, "a-preview")
    assert (event.migration_from, event.migration_to) == ("1", "3")
    assert event.message == "preview myapp r1: 1 -> 3, 3 files would change"
    assert not event.run_id
    diffs = {diff.path: diff for diff in event.diffs}
    assert set(diffs) == {
        "/etc/myapp/myapp.ini",
        "/etc/myapp/config.toml",
        "/etc/myapp/secrets.toml",
    }
    assert "+port = 8080" in diffs["/etc/myapp/config.toml"].diff
    assert '+password = "********"' in diffs["/etc/myapp/secrets.toml"].diff
    assert "deleted" in diffs["/etc/myapp/myapp.ini"].note
    assert "comment not carried" in diffs["/etc/myapp/config.toml"].note
    assert any(
        "rename server.addr -> server.address" in op
        for op in diffs["/etc/myapp/myapp.ini"].operations
    )
    assert any("move db.password" in op for op in diffs["/etc/myapp/secrets.toml"].operations)
    assert PASSWORD not in event.SerializeToString().decode("utf-8", errors="replace")
    # Nothing on the host changed; no backup, no journal.
    assert host_tree(tmp_path) == before
    assert not config.backups_dir.exists() and not config.journal_path.exists()
    # Every check-in reports where the host is, also after a restart.
    [facts] = fake_server.checkins[-1].facts.specs
    assert (facts.spec_id, facts.revision, facts.version, facts.error) == ("myapp", 1, "1", "")
    with Agent(config) as agent:
        assert agent.check_in().ok
    assert [s.version for s in fake_server.checkins[-1].facts.specs] == ["1"]


def test_preview_at_target_and_a_config_that_does_not_parse(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    host(tmp_path)
    config = enrolled(tmp_path, fake_server)
    ini = tmp_path / INI
    ini.write_text(V1_INI.replace("port = 8080\n", "port = 8080\nthis line is broken\n"))
    with Agent(config) as agent:
        act(agent, signed_action("a-bad", "preview_migration", spec_params()))
        [failed] = of_spec(agent)
        facts = agent.facts()
    assert failed.event_type == events.PREVIEW and failed.status == events.FAILED
    assert failed.error_detail.line == 6 and failed.error_detail.file_path == str(ini)
    assert "myapp.ini:6" in failed.error_message and not failed.diffs
    assert facts.specs[0].version == "" and "myapp.ini:6" in facts.specs[0].error
    # Fixed by hand and migrated: the host is at the target.
    ini.unlink()
    (tmp_path / "etc/myapp/config.toml").write_text(
        '[server]\naddress = "0.0.0.0"\nport = 8080\n[db]\nurl = "postgresql://db/app"\n'
    )
    with Agent(config) as agent:
        act(agent, signed_action("a-done", "preview_migration", spec_params()))
        done = [e for e in of_spec(agent) if e.action_id == "a-done"]
        assert [s.version for s in agent.facts().specs] == ["3"]
    assert [e.status for e in done] == [events.NOT_NEEDED]
    assert done[0].migration_from == "3" and not done[0].diffs


def test_a_long_diff_is_capped() -> None:
    text = "+" + "x" * (MAX_DIFF_BYTES * 2)
    capped = cap(text)
    assert len(capped.encode()) <= MAX_DIFF_BYTES and capped.endswith("[truncated]\n")
    assert cap("short") == "short"


# ------------------------------------------------------------ run, not needed, revert


def test_run_not_needed_and_revert_through_actions(tmp_path: Path, fake_server: FakeServer) -> None:
    host(tmp_path)
    before = host_tree(tmp_path)
    config = enrolled(tmp_path, fake_server)
    with Agent(config) as agent:
        # The periodic self-migration never runs an installed spec.
        act(agent, signed_action("a-look", "preview_migration", spec_params()))
        agent.migrate(report_unchanged=False)
        assert host_tree(tmp_path) == before
        assert act(agent, signed_action("a-run", "run_migration", spec_params())) == 1
        etc = tmp_path / "etc/myapp"
        assert tomllib.loads((etc / "config.toml").read_text())["server"]["port"] == 8080
        assert tomllib.loads((etc / "secrets.toml").read_text()) == {"db": {"password": PASSWORD}}
        run_events = [e for e in of_spec(agent) if e.action_id == "a-run"]
        assert [(e.event_type, e.status) for e in run_events] == [
            (events.DETECTION, events.SUCCESS),
            (events.EXECUTION, events.SUCCESS),
        ]
        assert all(e.spec_revision == 1 for e in run_events)
        run_id = run_events[0].run_id
        updates = agent.outbox.runs.updates(run_id)
        assert updates[-1].state == runs.SUCCEEDED
        assert {(u.migration_id, u.spec_revision, u.requested_by_action_id) for u in updates} == {
            ("myapp", 1, "a-run")
        }
        backup = config.backups_dir / run_id
        assert json.loads((backup / "spec.json").read_text())["id"] == "myapp"
        assert [s.version for s in agent.facts().specs] == ["3"]
        # Again, naming the installed spec only: not needed, still a run for whoever asked.
        act(agent, signed_action("a-again", "run_migration", {"migration_id": "myapp"}))
        again = [e for e in of_spec(agent) if e.action_id == "a-again"]
        assert [e.status for e in again] == [events.NOT_NEEDED]
        assert agent.outbox.runs.updates(again[0].run_id)[-1].state == runs.SUCCEEDED
        assert sorted(os.listdir(config.backups_dir)) == [run_id]  # no new backup
    # Revert, after a restart and a newer revision: its own run, a revert event, the host
    # byte-identical (the spec it runs is the one kept beside the run's backup).
    with Agent(config) as agent:
        newer = canonical(SAMPLE.replace('title = "', 'title = "r2: '))
        act(agent, signed_action("a-r2", "preview_migration", spec_params(newer, revision=2)))
        act(agent, signed_action("a-revert", "revert_run", {"run_id": run_id}))
        reverted = [e for e in of_spec(agent) if e.action_id == "a-revert"]
        assert reverted[-1].event_type == events.REVERT
        assert reverted[-1].status == events.SUCCESS, reverted[-1].error_message
        revert_run_id = reverted[-1].run_id
        assert revert_run_id != run_id
        revert_updates = agent.outbox.runs.updates(revert_run_id)
        assert revert_updates[-1].state == runs.SUCCEEDED
        assert {
            (u.migration_id, u.reverts_run_id, u.requested_by_action_id, u.spec_revision)
            for u in revert_updates
        } == {("myapp", run_id, "a-revert", 1)}
        assert [(s.revision, s.version) for s in agent.facts().specs] == [(2, "1")]
        assert agent.check_in().ok
    assert host_tree(tmp_path) == before
    assert fake_server.checkins[-1].facts.specs[0].version == "1"


def test_revert_after_a_hand_edit_is_refused_naming_the_file(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    host(tmp_path)
    config = enrolled(tmp_path, fake_server)
    with Agent(config) as agent:
        act(agent, signed_action("a-run", "run_migration", spec_params()))
        [run_id] = {e.run_id for e in of_spec(agent)}
        edited = tmp_path / "etc/myapp/config.toml"
        edited.write_text(edited.read_text() + "# tuned by hand\n")
        after_edit = host_tree(tmp_path)
        act(agent, signed_action("a-revert", "revert_run", {"run_id": run_id}))
        [refused] = [e for e in of_spec(agent) if e.action_id == "a-revert"]
        updates = agent.outbox.runs.updates(refused.run_id)
        # An unknown run: refused too, with the reason.
        act(
            agent,
            signed_action("a-nope", "revert_run", {"run_id": UNKNOWN_RUN}),
        )
        nope = [e for e in agent.outbox.events() if e.action_id == "a-nope"]
        act(agent, signed_action("a-path", "revert_run", {"run_id": "../../etc"}))
        [path] = [e for e in agent.outbox.events() if e.action_id == "a-path"]
    assert refused.event_type == events.REVERT and refused.status == events.FAILED
    assert str(edited) in refused.message and "changed since the run" in refused.message
    assert refused.error_detail.file_path == str(edited)
    assert updates[-1].state == runs.FAILED and updates[-1].reverts_run_id == run_id
    assert host_tree(tmp_path) == after_edit
    assert [e.status for e in nope] == [events.FAILED] and "no backup" in nope[0].message
    assert path.event_type == events.REVERT and path.status == events.FAILED
    assert "'../../etc' is not a run id" in path.message


ASKS = SAMPLE.replace(
    '  { op = "delete_key", key = "meta.schema" },',
    '  { op = "delete_key", key = "meta.schema" },\n'
    '  { op = "require_input", name = "db_user", prompt = "Database user", key = "db.user",'
    " secret = false },",
)


def left_waiting(config: AgentConfig) -> str:
    """A spec run that asks for an input, left waiting (not the daemon: nobody waits)."""
    assert "require_input" in ASKS
    with Agent(config) as agent:
        act(agent, signed_action("a-run", "run_migration", spec_params(canonical(ASKS))))
        [run_id] = {e.run_id for e in of_spec(agent)}
        assert agent.outbox.runs.updates(run_id)[-1].state == runs.AWAITING_INPUT
    return run_id


def assert_cancelled(final: agent_pb2.RunUpdate) -> None:
    assert final.state == runs.CANCELLED
    assert (final.migration_id, final.spec_revision) == ("myapp", 1)
    assert final.requested_by_action_id == "a-run"


def test_a_waiting_spec_run_cancelled_while_not_in_progress_ends_cancelled(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    host(tmp_path)
    before = host_tree(tmp_path)
    config = enrolled(tmp_path, fake_server)
    run_id = left_waiting(config)
    with Agent(config) as agent:
        act(agent, signed_action("a-cancel", "cancel_run", {"run_id": run_id}))
        assert_cancelled(agent.outbox.runs.updates(run_id)[-1])
    assert host_tree(tmp_path) == before


def test_the_daemon_resumes_a_waiting_spec_run_at_start(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    host(tmp_path)
    before = host_tree(tmp_path)
    run_id = left_waiting(enrolled(tmp_path, fake_server))
    fake_server.next_checkin_seconds = 1
    with daemon(enrolled_fast(tmp_path, fake_server)):
        wait_for(lambda: any("Resumed this run" in x.message for x in fake_server.lines_of(run_id)))
        fake_server.actions = [signed_action("a-cancel", "cancel_run", {"run_id": run_id})]
        wait_for(lambda: fake_server.updates_of(run_id)[-1].state in runs.TERMINAL)
    assert_cancelled(fake_server.updates_of(run_id)[-1])
    assert host_tree(tmp_path) == before


# ------------------------------------------------------------ refusals


def escape_spec(tmp_path: Path) -> tuple[str, Path]:
    """root/etc/myapp -> a directory outside the root holding a v1 myapp.ini."""
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "myapp.ini").write_text(V1_INI)
    (tmp_path / "etc").mkdir(parents=True)
    (tmp_path / "etc/myapp").symlink_to(outside)
    return canonical(), outside


def opt_spec(tmp_path: Path) -> tuple[str, Path]:
    """A spec naming /opt/x as well; /opt/x exists under the root."""
    host(tmp_path)
    (tmp_path / "opt").mkdir()
    (tmp_path / "opt/x").write_text("secret = 1\n")
    text = SAMPLE.replace(
        'file = "/etc/myapp/myapp.ini"\nformat = "ini"\nrequire',
        'file = "/opt/x"\nformat = "ini"\nrequire',
    )
    assert "/opt/x" in text
    return canonical(text), tmp_path / "opt/x"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (opt_spec, "spec myapp revision 2: /opt/x is outside allowed_paths (/etc)"),
        (
            escape_spec,
            "spec myapp revision 2: /etc/myapp/config.toml, /etc/myapp/myapp.ini, "
            "/etc/myapp/secrets.toml are outside allowed_paths (/etc) (resolves outside the root)",
        ),
    ],
    ids=["outside", "symlink-escape"],
)
@pytest.mark.parametrize("kind", ["preview_migration", "run_migration"])
def test_a_spec_outside_allowed_paths_is_refused_and_nothing_is_read(
    tmp_path: Path,
    fake_server: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
    make: object,
    reason: str,
    kind: str,
) -> None:
    source, outside_file = make(tmp_path)  # type: ignore[operator]
    config = enrolled(tmp_path, fake_server)
    reads: list[Path] = []
    for name in ("read_bytes", "exists", "mode"):
        original = getattr(DiskView, name)

        def counting(self: DiskView, path: Path, _original: object = original) -> object:
            reads.append(path)
            return _original(self, path)  # type: ignore[operator]

        monkeypatch.setattr(DiskView, name, counting)
    before = tree(tmp_path)
    atime = outside_file.stat().st_atime_ns
    with Agent(config) as agent:
        assert act(agent, signed_action("a-x", kind, spec_params(source, revision=2))) == 0
        messages = notices(agent)
        assert agent.check_in().ok
    assert messages == [f"Action a-x refused: {reason}"]
    [notice] = [e for e in fake_server.stored.values() if e.event_type == events.AGENT_NOTICE]
    assert notice.action_id == "a-x" and notice.error_message == messages[0]
    assert reads == []  # no detection, no plan: not one file of the spec was looked at
    assert outside_file.stat().st_atime_ns == atime
    assert not config.specs_dir.exists() and not config.backups_dir.exists()
    assert not fake_server.checkins[-1].facts.specs
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith("var")} == {
        k: v for k, v in before.items() if not k.startswith("var")
    }


def test_a_symlink_swapped_in_after_acceptance_fails_the_preview_before_reading(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    host(tmp_path)
    config = enrolled(tmp_path, fake_server)
    with Agent(config) as agent:
        # Accepted (the paths were under /etc), then swapped before the worker plans it.
        agent.handle_actions(
            [signed_action("a-2", "preview_migration", spec_params())], agent.outbox
        )
        outside = tmp_path.parent / f"{tmp_path.name}-elsewhere"
        (tmp_path / "etc/myapp").rename(outside)
        (tmp_path / "etc/myapp").symlink_to(outside)
        atime = (outside / "myapp.ini").stat().st_atime_ns
        assert agent.run_requested() == 1
        [failed] = [e for e in of_spec(agent) if e.action_id == "a-2"]
        [facts] = agent.facts().specs
    assert failed.event_type == events.PREVIEW and failed.status == events.FAILED
    assert failed.error_detail.exception_type == "PathRefused"
    assert "/etc/myapp/myapp.ini" in failed.error_message and not failed.diffs
    assert (outside / "myapp.ini").stat().st_atime_ns == atime
    assert facts.version == "" and "refused" in facts.error


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_tampered_replayed_and_mismatched_spec_actions_are_refused(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    host(tmp_path)
    before = host_tree(tmp_path)
    config = enrolled(tmp_path, fake_server)
    good = signed_action("a-run", "run_migration", spec_params())
    # The spec's bytes changed in transit (the "spec" param sits at the body's end).
    tampered = agent_pb2.Action(
        action_id="a-run", body=flip(good.body, len(good.body) - 40), signature=good.signature
    )
    wrong_sum = dict(spec_params(), spec_sha256="0" * 64)
    with Agent(config) as agent:
        assert act(agent, tampered) == 0
        assert act(agent, signed_action("a-sum", "preview_migration", wrong_sum)) == 0
        assert act(agent, signed_action("a-junk", "preview_migration", spec_params("{"))) == 0
        assert not config.specs_dir.exists()
        assert host_tree(tmp_path) == before
        assert act(agent, good) == 1  # the genuine one runs
        assert act(agent, good) == 0  # its replay does not
        messages = notices(agent)
        assert len({e.run_id for e in of_spec(agent)}) == 1
    assert messages[0].startswith("Action a-run refused: bad signature")
    assert (
        messages[1]
        == "Action a-sum refused: spec myapp revision 1: the spec does not match spec_sha256"
    )
    assert messages[2].startswith("Action a-junk refused: spec myapp revision 1: invalid spec: ")
    assert "not valid JSON" in messages[2]
    assert messages[3].startswith("Action a-run refused: replayed")
    assert len(messages) == 4


def test_a_spec_may_not_take_a_built_in_migration_id(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    source = canonical(SAMPLE.replace('id = "myapp"', 'id = "agent-config"'))
    config = enrolled(tmp_path, fake_server)
    params = spec_params(source, spec_id="agent-config")
    with Agent(config) as agent:
        assert act(agent, signed_action("a-own", "preview_migration", params)) == 0
        assert notices(agent) == [
            "Action a-own refused: spec agent-config revision 1: that id is a built-in "
            "migration of this agent"
        ]
    assert not config.specs_dir.exists()


def test_an_unexpected_error_in_a_spec_job_is_a_notice_not_the_end_of_the_worker(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    def broken() -> None:
        raise UnicodeError("no such codec")

    config = enrolled(tmp_path, fake_server)
    with Agent(config) as agent:
        agent._submit(RunRequest("a-broken", "myapp", kind="preview_migration", job=broken))
        agent._submit(RunRequest("a-next", "myapp", kind="preview_migration", job=lambda: None))
        assert agent.run_requested() == 2
        assert notices(agent) == [
            "Action a-broken (preview_migration) failed: UnicodeError: no such codec"
        ]


# ------------------------------------------------------------ crashes and genuine failures


def once(root: Path, *prefix: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``flagpost-agent --root ROOT once`` in a subprocess (after ``prefix``)."""
    command = [*prefix, sys.executable, "-m", "agent", "--root", str(root), "once"]
    return subprocess.run(
        command,
        env=agent_env(FLAGPOST_AGENT_STARTUP_JITTER_SECONDS="0", **env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def test_a_spec_run_killed_mid_step_is_rolled_back_at_restart_with_its_labels(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    host(tmp_path)
    before = host_tree(tmp_path)
    config = enrolled(tmp_path, fake_server)
    fake_server.actions = [signed_action("a-run", "run_migration", spec_params())]
    killed = once(tmp_path, FLAGPOST_AGENT_CRASH_AT="after_write:2")
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert config.journal_path.exists() and host_tree(tmp_path) != before
    with Agent(config) as agent:  # the next start: the installed spec is still there
        event = agent.recover()
        assert event is not None
        [update] = [u for u in agent.outbox.runs.updates() if u.state in runs.TERMINAL]
        assert [s.version for s in agent.facts().specs] == ["1"]
    assert host_tree(tmp_path) == before
    assert event.status == events.FAILED and "interrupted" in event.message
    assert (event.spec_id, event.spec_revision, event.action_id) == ("myapp", 1, "a-run")
    assert update.state == runs.FAILED and update.spec_revision == 1
    assert update.requested_by_action_id == "a-run" and update.migration_id == "myapp"


def test_read_only_target_dir_mid_step_rolls_back_and_reports(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    if not can_unshare():
        pytest.skip("needs root and unshare -m for a read-only bind mount")
    host(tmp_path)
    conf_d = tmp_path / "etc/myapp/conf.d"
    conf_d.mkdir()
    source = canonical(SAMPLE.replace("/etc/myapp/config.toml", "/etc/myapp/conf.d/config.toml"))
    config = enrolled(tmp_path, fake_server)
    before = host_tree(tmp_path)
    fake_server.actions = [signed_action("a-ro", "run_migration", spec_params(source))]
    result = once(tmp_path, *read_only(conf_d))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert host_tree(tmp_path) == before  # step 1 had rewritten myapp.ini: put back
    assert not config.journal_path.exists()
    with fake_server.lock:
        stored = [e for e in fake_server.stored.values() if e.spec_id == "myapp"]
        updates = [u for u in fake_server.stored_updates.values() if u.migration_id == "myapp"]
    [failed] = [e for e in stored if e.event_type == events.EXECUTION]
    detail = failed.error_detail
    assert failed.status == events.FAILED and failed.action_id == "a-ro"
    assert detail.failing_step == "ini_to_toml_split_password"
    assert detail.file_path == str(conf_d / "config.toml")
    assert detail.errno == errno.EROFS and detail.errno_name == "EROFS"
    assert detail.rollback == "succeeded"
    assert PASSWORD not in failed.error_message
    final = max(updates, key=lambda u: u.update_id)
    assert final.state == runs.FAILED and final.spec_revision == 1
    assert final.requested_by_action_id == "a-ro"


# ------------------------------------------------------------ the daemon, and its idle cost


def test_the_daemon_previews_and_runs_specs_it_receives(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    host(tmp_path)
    fake_server.next_checkin_seconds = 1
    config = enrolled_fast(tmp_path, fake_server)
    fake_server.actions = [
        signed_action("a-preview", "preview_migration", spec_params()),
        signed_action("a-run", "run_migration", spec_params()),
    ]

    def stored(event_type: int) -> list[agent_pb2.MigrationEvent]:
        with fake_server.lock:
            found = fake_server.stored.values()
            return [e for e in found if e.spec_id == "myapp" and e.event_type == event_type]

    def reported_version() -> str:
        with fake_server.lock:
            specs = [s for c in fake_server.checkins[-1:] for s in c.facts.specs]
        return specs[0].version if specs else ""

    with daemon(config):
        wait_for(lambda: stored(events.EXECUTION) and reported_version() == "3")
    [preview] = stored(events.PREVIEW)
    [execution] = stored(events.EXECUTION)
    # In order of arrival: the preview saw version 1, then the run took it to 3.
    assert preview.migration_from == "1" and preview.status == events.SUCCESS
    assert execution.status == events.SUCCESS and execution.action_id == "a-run"
    with fake_server.lock:
        updates = [u for u in fake_server.stored_updates.values() if u.migration_id == "myapp"]
    assert max(updates, key=lambda u: u.update_id).state == runs.SUCCEEDED
    assert {"a-preview", "a-run"} <= set(fake_server.action_acks)


LOADED = (
    "import sys; from pathlib import Path; from agent.config import load_config;"
    "from agent.daemon import Agent;"
    "agent = Agent(load_config({'root': sys.argv[1]}, env={}));"
    "print([s.version for s in agent.facts().specs]);"
    "print(sorted(m for m in sys.modules if m.split('.')[0] in {'tomlkit', 'ruamel', 'difflib'}"
    " or m.startswith(('agent.specs.plan', 'agent.specs.preview', 'agent.specs.revert',"
    " 'agent.specs.migration', 'agent.specs'))))"
)


def test_an_idle_agent_loads_the_spec_modules_only_for_installed_specs(tmp_path: Path) -> None:
    """No spec installed: only what detection of the built-in agent-config spec needs; specs
    installed (INI host): also the versions module. Never the planner, diffs or a format
    library the specs do not touch."""

    def loaded(root: Path) -> tuple[str, str]:
        result = subprocess.run(
            [sys.executable, "-c", LOADED, str(root)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=agent_env(),
            check=True,
        )
        versions, modules = result.stdout.splitlines()
        return versions, modules

    # The built-in agent-config migration is a spec since chain.py went away, so an idle agent
    # without installed specs loads the detection modules too (this was ("[]", "[]")).
    versions, modules = loaded(tmp_path / "none")
    assert versions == "[]"
    assert "agent.specs.builtin" in modules and "agent.specs.detect" in modules
    assert "agent.specs.versions" not in modules
    for heavy in ("agent.specs.plan", "agent.specs.preview", "agent.specs.revert", "difflib"):
        assert f"'{heavy}'" not in modules
    assert "tomlkit" not in modules and "ruamel" not in modules
    host(tmp_path)
    config = enrolled(tmp_path, FakeServer(address="127.0.0.1:1"))
    installed = accept(spec_params(), config.root, config.allowed_paths)
    SpecStore(config.specs_dir).install(installed)
    versions, modules = loaded(tmp_path)
    assert versions == "['1']"
    assert "agent.specs.versions" in modules and "agent.specs.detect" in modules
    for heavy in ("agent.specs.plan", "agent.specs.preview", "agent.specs.revert", "difflib"):
        assert f"'{heavy}'" not in modules
    assert "tomlkit" not in modules and "ruamel" not in modules
