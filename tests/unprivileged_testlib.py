"""The agent as ``nobody`` in the tests: one world-readable copy of the agent and its runtime
per test session, made by scripts/unprivileged.py (the demo uses the same module), so the
permission tests hold wherever the checkout and its venv live, even under a 0700 directory."""

from __future__ import annotations

import atexit
import functools
import shutil
import sys
import tempfile
from pathlib import Path

# scripts/ is not a package: its directory goes on the path (last, so it shadows nothing).
sys.path.append(str(Path(__file__).resolve().parent.parent / "scripts"))

from unprivileged import (
    AgentRuntime,
    copy_distribution,
    distributions,
    installed,
    prepare,
    prepare_server,
    reachable_by_others,
)

__all__ = [
    "AgentRuntime",
    "copy_distribution",
    "distributions",
    "installed",
    "nobody_runtime",
    "nobody_server_runtime",
    "reachable_by_others",
]


@functools.cache
def nobody_runtime() -> AgentRuntime:
    """The session's copy, in a 0755 dir under /tmp (removed when the session ends)."""
    base = Path(tempfile.mkdtemp(prefix="flagpost-nobody-runtime-", dir="/tmp"))
    base.chmod(0o755)
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    return prepare(base / "runtime")


@functools.cache
def nobody_server_runtime() -> AgentRuntime:
    """The session's copy of the server (``runtime.module("server", ...)``), like
    ``nobody_runtime``."""
    base = Path(tempfile.mkdtemp(prefix="flagpost-nobody-server-", dir="/tmp"))
    base.chmod(0o755)
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    return prepare_server(base / "runtime")
