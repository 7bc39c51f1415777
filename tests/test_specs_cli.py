"""``flagpost-server migration ...`` as a real subprocess against a real database (SQLite and
PostgreSQL): add (new revision / unchanged), list, show, diff, --json, preview --wait timing
out naming the silent agent, and the mistakes (unknown spec, unreadable file, invalid spec)
ending in a line or two naming the fix, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from server.domain import HostFacts
from server.services import enrollment
from server.storage.db import create_engine_for_url, make_sessionmaker

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "agent_tests" / "specs" / "myapp.toml"


def migration(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "migration", *args, "--database-url", url],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def mistake(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr


async def _enroll(url: str) -> str:
    engine = create_engine_for_url(url)
    try:
        sessions = make_sessionmaker(engine)
        token = await enrollment.create_token(sessions)
        agent_id, _ = await enrollment.enroll(sessions, token, HostFacts(hostname="web-9"))
        return agent_id
    finally:
        await engine.dispose()


async def test_add_list_show_diff_preview(db_url: str, tmp_path: Path) -> None:
    assert ok(migration(db_url, "add", str(SAMPLE))) == "myapp revision 1\n"
    assert ok(migration(db_url, "add", str(SAMPLE))) == "myapp revision 1 (unchanged)\n"
    changed = tmp_path / "myapp.toml"
    changed.write_text(SAMPLE.read_text().replace('target = "3"', 'target = "3"  # v2'))
    # a comment is not in the canonical JSON: the same spec
    assert ok(migration(db_url, "add", str(changed))) == "myapp revision 1 (unchanged)\n"
    changed.write_text(changed.read_text().replace('title = "myapp:', 'title = "myapp v2:'))
    assert json.loads(ok(migration(db_url, "add", str(changed), "--json"))) == {
        "spec_id": "myapp",
        "revision": 2,
        "created": True,
    }
    [listed] = json.loads(ok(migration(db_url, "list", "--json")))
    assert (listed["spec_id"], listed["revision"], listed["target"]) == ("myapp", 2, "3")
    shown = ok(migration(db_url, "show", "myapp", "--revision", "1"))
    assert ' 1  id = "myapp"' in shown and "revisions:" in shown and "  2  " in shown
    assert "hosts per version: none" in shown
    diff = ok(migration(db_url, "diff", "myapp", "1", "2"))
    assert diff.startswith("--- myapp revision 1\n+++ myapp revision 2\n")
    assert '\n+target = "3"  # v2\n' in diff and '\n+title = "myapp v2:' in diff
    agent_id = await _enroll(db_url)
    result = migration(db_url, "preview", "myapp", "--agent", agent_id, "--wait", "--timeout", "1")
    assert result.returncode == 1 and f"no answer within 1 s from: {agent_id}" in result.stderr
    ran = json.loads(ok(migration(db_url, "run", "myapp", "--agent", agent_id, "--json")))
    assert ran["agent_id"] == agent_id and ran["run"] is None and len(ran["action_id"]) == 36
    mistake(migration(db_url, "show", "nope"), "no migration spec nope", "migration list")


async def test_mistakes(sqlite_db_url: str, tmp_path: Path) -> None:
    url = sqlite_db_url
    mistake(migration(url, "add", str(tmp_path / "missing.toml")), "cannot read", "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text(SAMPLE.read_text().replace('op = "rename_key"', 'op = "rename"'))
    mistake(
        migration(url, "add", str(bad)), "line 27: steps[0].ops[0].op: unknown operation 'rename'"
    )
    mistake(migration(url, "diff", "myapp", "1", "2"), "no revision 1 of spec myapp")
    mistake(migration(url, "revert", "not-a-run"), "no run not-a-run")
