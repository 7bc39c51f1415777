"""`make run`'s demo really produces the five outcomes the README promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
