"""`make run`'s demo really produces the five outcomes the README promises, and keeps the
terminal tidy: the server's and agents' logs go to files, the logins and secrets come in one
block after start-up, and the demo dir is removed on exit (``--keep`` keeps it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# A line from a logger (asctime), bare or behind a short prefix such as "  [server] ".
LOG_LINE = re.compile(r"^.{0,20}\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.MULTILINE)


def test_demo_shows_all_five_outcomes() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/demo.py", "--smoke", "--web-port", "0", "--grpc-port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "History: http://127.0.0.1:" in output
    # The demo prints its logins (random passwords) and uses the viewer's to read the API.
    assert "Log in at http://127.0.0.1:" in output
    assert re.search(r"admin:  user demo-admin   password \S{12,}", output), output
    assert re.search(r"viewer: user demo-viewer  password \S{12,}", output), output
    assert "grpc: 127.0.0.1:" in output
    assert "healthy: migration_detection_success, migration_execution_success" in output
    assert "invalid: migration_detection_failed" in output
    assert "readonly: migration_detection_success, migration_execution_failed" in output
    assert "current: migration_detection_not_needed" in output
    assert "secrets: migration_detection_success" in output
    assert "secrets: run waiting for input: database_password, upstream_token" in output
    assert re.search(r"type database password 'db-[0-9a-f]{8}', upstream token", output), output

    # Tidy: no server or agent log lines on the terminal, only where their files are.
    assert not LOG_LINE.search(output), output
    started = re.search(r"^demo: starting in (\S+) \(logs in (\S+)\)$", output, re.MULTILINE)
    assert started, output
    base, logs = Path(started[1]), started[2]
    assert logs == str(base / "logs")
    assert f"logs: {logs}/server.log, {logs}/agent-<name>.log" in output
    # The block (logins, URLs, the secrets to type) comes once everything has started.
    block = output.index("Log in at")
    assert output.index("demo: starting in") < block < output.index("demo: healthy:")
    assert output.index("type database password") < output.index("demo: healthy:")
    # Removed on exit, and it says so.
    assert f"demo: removed {base} (run with --keep to keep it)" in output
    assert not base.exists()
