"""kill -9 the agent at each step of a migration (before the backup, after the backup, after
each file write, after the commit, before the journal is cleared, and inside recovery), restart
it against a real server: the journal resolves the run, the config ends wholly old (then
re-migrated by a new run) or wholly new, and ``update_events`` holds exactly one outcome for the
interrupted run. On SQLite and PostgreSQL (about 10 s each)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from bench.fleet import Database, environment, query
from chaos_testlib import databases, require_postgresql

from agent.migrations.journal import read_journal

REPO = Path(__file__).resolve().parents[2]
ROLLED_BACK = ["before_backup", "after_backup", *(f"after_write:{n}" for n in range(1, 7))]
COMPLETED = ["after_commit", "before_journal_clear"]
IN_RECOVERY = "after_write:3+recovery"  # crash mid-run, then crash again inside recovery
LEGACY = """# aggregator agent config
server_url = https://flagpost.example:8443
agent_token = chaos-secret-token
check_interval = 30
log_level = info
"""


def agent(root: Path, *args: str, crash_at: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    if crash_at:
        env["FLAGPOST_AGENT_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "agent", "--root", str(root), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def legacy_root(root: Path) -> Path:
    path = root / "etc/aggregator/agent.conf"
    path.parent.mkdir(parents=True)
    path.write_text(LEGACY)
    path.chmod(0o640)
    return root


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mode & 0o7777)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def crash_and_restart(root: Path, point: str, address: str, token: str) -> str:
    """Enroll, crash at ``point`` during ``once``, restart; returns the interrupted run id."""
    enrolled = agent(root, "enroll", "--server", address, "--token", token)
    assert enrolled.returncode == 0, enrolled.stderr
    first_point = point.removesuffix("+recovery")
    crashed = agent(root, "once", crash_at=first_point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    journal = read_journal(root / "var/lib/flagpost-agent/migration-journal.json")
    assert journal is not None, f"{point}: no journal after the crash"
    if point == IN_RECOVERY:
        again = agent(root, "once", crash_at="before_journal_clear")
        assert again.returncode == -signal.SIGKILL, again.stderr
    restarted = agent(root, "once")
    assert restarted.returncode == 0, restarted.stderr
    assert not (root / "var/lib/flagpost-agent/migration-journal.json").exists()
    return journal.run_id


def outcomes(db: Database, run_id: str) -> list[tuple[str, ...]]:
    return query(
        db,
        "SELECT event_type, status, migration_from, message FROM update_events "
        f"WHERE run_id = '{run_id}' ORDER BY id",
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", databases(postgresql_in_quick_mode=True))
def test_agent_kill9_at_every_step_reports_exactly_once(tmp_path: Path, kind: str) -> None:
    if kind == "postgresql":
        require_postgresql()
    reference = legacy_root(tmp_path / "reference")
    assert agent(reference, "migrate").returncode == 0
    new = snapshot(reference / "etc")
    points = [*ROLLED_BACK, *COMPLETED, IN_RECOVERY]
    roots = {p: legacy_root(tmp_path / p.replace(":", "-").replace("+", "-")) for p in points}
    with environment(kind, tmp_path / "server") as (db, server):
        token = server.token(len(points))
        with ThreadPoolExecutor(max_workers=4) as pool:
            runs = dict(
                zip(
                    points,
                    pool.map(
                        lambda p: crash_and_restart(roots[p], p, server.address, token), points
                    ),
                    strict=True,
                )
            )
        for point, run_id in runs.items():
            rows = outcomes(db, run_id)
            executions = [r for r in rows if r[0] == "migration_execution"]
            detections = [r for r in rows if r[0] == "migration_detection"]
            assert len(executions) == 1, f"{point}: {rows}"
            assert detections == [("migration_detection", "success", "1", detections[0][3])]
            if point in COMPLETED:
                assert executions[0][1] == "success", f"{point}: {rows}"
            else:
                assert executions[0][1] == "failed", f"{point}: {rows}"
                assert "interrupted" in executions[0][3]
                # The rollback left the config wholly old: the next run found version 1 and
                # migrated it completely.
                later = query(
                    db,
                    "SELECT status, migration_from FROM update_events WHERE "
                    f"event_type = 'migration_execution' AND run_id <> '{run_id}' AND "
                    "agent_id = (SELECT agent_id FROM update_events "
                    f"WHERE run_id = '{run_id}' LIMIT 1)",
                )
                assert later == [("success", "1")], f"{point}: {later}"
            assert snapshot(roots[point] / "etc") == new, f"{point}: config not wholly new"
        # One more start of every agent: nothing new is reported for the interrupted runs.
        with ThreadPoolExecutor(max_workers=4) as pool:
            codes = list(pool.map(lambda p: agent(roots[p], "once").returncode, points))
        assert codes == [0] * len(points)
        for point, run_id in runs.items():
            assert len(outcomes(db, run_id)) == 2, point
    print(f"\n[chaos agent kill -9 {kind}] {len(points)} crash points: each outcome stored once")
