"""Spec test helpers shared by test_spec_run.py and test_spec_actions.py: the sample spec
(tests/agent_tests/specs/myapp.toml), a v1 host for it, a tree snapshot, and a read-only bind
mount prefix for genuine EROFS failures."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

SAMPLE_PATH = Path(__file__).parent / "specs" / "myapp.toml"
SAMPLE = SAMPLE_PATH.read_text(encoding="utf-8")
PASSWORD = "hunter2-Very-Secret"
V1_INI = (
    "# myapp settings\n"
    "[server]\n"
    "# where it listens\n"
    "addr = 0.0.0.0\n"
    "port = 8080\n"
    "\n"
    "[db]\n"
    "url = postgresql://db/app\n"
    f"password = {PASSWORD}\n"
)
INI = "etc/myapp/myapp.ini"


def tree(root: Path) -> dict[str, tuple[str, bytes, int]]:
    """Every entry under ``root``: kind, bytes (files) or link target, permission bits."""
    entries: dict[str, tuple[str, bytes, int]] = {}
    if not root.exists():
        return entries
    for path in sorted(root.rglob("*")):
        info = os.lstat(path)
        name = str(path.relative_to(root))
        if stat.S_ISLNK(info.st_mode):
            entries[name] = ("link", os.readlink(path).encode(), 0)
        elif stat.S_ISDIR(info.st_mode):
            entries[name] = ("dir", b"", stat.S_IMODE(info.st_mode))
        else:
            entries[name] = ("file", path.read_bytes(), stat.S_IMODE(info.st_mode))
    return entries


def host(root: Path, ini_mode: int = 0o640) -> Path:
    path = root / INI
    path.parent.mkdir(parents=True)
    path.write_text(V1_INI, encoding="utf-8")
    path.chmod(ini_mode)
    return path


def can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, timeout=10
    )
    return probe.returncode == 0


def read_only(directory: Path) -> list[str]:
    """A prefix running the command with ``directory`` bind-mounted read-only (a private mount
    namespace: EROFS binds root too)."""
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(directory)]
