"""`make run`'s demo really produces the four outcomes the README promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_shows_all_four_outcomes() -> None:
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
    assert "grpc: 127.0.0.1:" in output
    assert "healthy: migration_detection_success, migration_execution_success" in output
    assert "invalid: migration_detection_failed" in output
    assert "readonly: migration_detection_success, migration_execution_failed" in output
    assert "current: migration_detection_not_needed" in output
