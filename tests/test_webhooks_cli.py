"""``flagpost-server webhook add|list|remove|deliveries`` as a subprocess on a real SQLite
database: add prints the id and the secret once (stored encrypted with the state directory's
inputs.key), list never shows a secret, deliveries shows the log (and --json), remove deletes;
each mistake is one line naming its flag (the tests/test_cli_mistakes.py pattern)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 60


def _run(tmp: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    env["FLAGPOST_STATE_DIR"] = str(tmp / "state")
    return subprocess.run(
        [sys.executable, "-m", "server", "webhook", *args, "--database-url", db_url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_add_list_deliveries_remove(sqlite_db_url: str, tmp_path: Path) -> None:
    added = _run(
        tmp_path,
        sqlite_db_url,
        "add",
        "https://hooks.example.com/flagpost",
        "--events",
        "rollout.halted,run.failed,agent.offline",
        "--format",
        "slack",
    )
    assert added.returncode == 0, added.stderr
    lines = added.stdout.splitlines()
    webhook_id = lines[0].removeprefix("webhook ")
    secret = lines[1].removeprefix("secret ")
    assert secret.startswith("whsec_")
    path = sqlite_db_url.removeprefix("sqlite+aiosqlite:///")
    with sqlite3.connect(path) as db:
        [(stored,)] = db.execute("SELECT secret FROM webhooks").fetchall()
    assert secret.encode() not in stored  # Fernet ciphertext
    listed = _run(tmp_path, sqlite_db_url, "list")
    assert listed.returncode == 0 and webhook_id in listed.stdout
    assert "rollout.halted,run.failed,agent.offline" in listed.stdout
    assert secret not in listed.stdout
    as_json = json.loads(_run(tmp_path, sqlite_db_url, "list", "--json").stdout)
    assert as_json["webhooks"][0]["format"] == "slack"
    log = _run(tmp_path, sqlite_db_url, "deliveries", webhook_id)
    assert log.returncode == 0 and "no deliveries yet" in log.stdout
    log_json = json.loads(_run(tmp_path, sqlite_db_url, "deliveries", webhook_id, "--json").stdout)
    assert log_json["deliveries"] == [] and log_json["webhook"]["id"] == webhook_id
    given = _run(
        tmp_path, sqlite_db_url, "add", "http://127.0.0.1:9/h", "--events", "rollout.aborted",
        "--secret", "my-own-secret-0123456789",
    )  # fmt: skip
    assert given.returncode == 0 and "secret my-own-secret-0123456789" in given.stdout
    removed = _run(tmp_path, sqlite_db_url, "remove", webhook_id)
    assert removed.returncode == 0, removed.stderr
    assert webhook_id not in _run(tmp_path, sqlite_db_url, "list").stdout


MISTAKES = [
    (["add", "ftp://x/", "--events", "rollout.halted"], ("URL:", "http:// or https://")),
    (["add", "https://u:pw@x/", "--events", "rollout.halted"], ("URL:", "user name")),
    (["add", "https://x/", "--events", "rollout.nope"], ("--events:", "rollout.halted")),
    (["add", "https://x/", "--events", ","], ("--events:", "at least one")),
    (["add", "https://x/", "--events", "run.failed", "--format", "xml"], ("--format:", "slack")),
    (["add", "https://x/", "--events", "run.failed", "--secret", "short"], ("--secret:", "16")),
    (["deliveries", "nope"], ("no webhook nope", "webhook list")),
    (["remove", "7d1c7d0e-3f7e-4c59-9a43-6f5c3bb1f8a4"], ("no webhook", "webhook list")),
    (["deliveries", "7d1c7d0e-3f7e-4c59-9a43-6f5c3bb1f8a4", "--limit", "0"], ("--limit:",)),
]


@pytest.mark.parametrize(("argv", "words"), MISTAKES, ids=[" ".join(m[0])[:40] for m in MISTAKES])
def test_a_mistake_is_one_line_naming_the_flag(
    sqlite_db_url: str, tmp_path: Path, argv: list[str], words: tuple[str, ...]
) -> None:
    result = _run(tmp_path, sqlite_db_url, *argv)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "INFO" not in line]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
