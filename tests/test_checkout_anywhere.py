"""`make run`'s demo works from a checkout anywhere, even under a 0700 directory (as everything
under /root is), with its venv there too.

As root the demo's read-only agent runs as ``nobody``, who cannot enter a 0700 directory: an
agent started from the checkout's own venv dies with ``No module named agent``. The demo (and
the permission tests) give nobody a world-readable copy of the agent instead
(scripts/unprivileged.py); this test proves it from such a checkout.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from unprivileged_testlib import copy_distribution, distributions, installed, reachable_by_others

import agent

REPO = Path(__file__).resolve().parent.parent
# Where the running venv's (editable) install of flagpost points: the checkout it was made in.
INSTALLED_CHECKOUT = Path(agent.__file__).resolve().parent.parent


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A 0700 directory (mkdtemp's mode), removed afterwards: the copy holds a venv."""
    path = Path(tempfile.mkdtemp(prefix="flagpost-private-"))
    assert path.stat().st_mode & 0o777 == 0o700
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def copy_checkout(dest: Path) -> None:
    """The files a fresh clone has, plus the untracked ones not ignored (work in progress)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    for name in filter(None, listed.split(b"\0")):
        source = REPO / os.fsdecode(name)
        if not source.exists() and not source.is_symlink():  # deleted in the work tree
            continue
        target = dest / os.fsdecode(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)


def make_venv(checkout: Path) -> Path:
    """``checkout/.venv`` as ``make setup`` would leave it, built from this venv's files: a real
    venv of the same base interpreter, the distributions flagpost[server] needs (and packaging,
    which scripts/unprivileged.py imports) copied file by file from their RECORDs, and the
    editable install of flagpost re-pointed at the copied checkout, as ``pip install -e`` run
    there would write it. Nothing in it refers to the original checkout or venv, so nobody
    cannot read it either. (A venv with a .pth naming the original site-packages would not
    reproduce the fault; a real ``pip install`` needs the network and takes minutes.)"""
    venv = checkout / ".venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
    )
    for dist in distributions(["flagpost[server]", "packaging"]):
        copy_distribution(dist, site)
    own = re.compile(re.escape(str(INSTALLED_CHECKOUT)) + r"(?=[/'\"\n]|$)")
    for entry in installed("flagpost").files or []:
        path = site / entry
        if entry.parts[0] == ".." or not path.is_file():
            continue
        if path.suffix == ".pyc":
            path.unlink()  # compiled from the original's paths
        elif path.suffix in {".py", ".pth", ".json", ".txt"}:
            path.write_text(own.sub(str(checkout), path.read_text()))
    return python


def test_demo_from_a_checkout_under_a_0700_directory(private_dir: Path) -> None:
    """The checkout and its venv (see ``make_venv`` for how it is made, in a few seconds)
    under a 0700 dir; as root, first proof that nobody cannot use them, then the demo's smoke
    run with every outcome, the read-only agent's EACCES in its kept log."""
    started = time.monotonic()
    checkout = private_dir / "checkout"
    copy_checkout(checkout)
    python = make_venv(checkout)
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    where = subprocess.run(
        [python, "-c", "import agent, grpc, server, sqlalchemy; print(agent, grpc, server)"],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.count(str(private_dir)) == 3, where.stdout  # nothing from outside
    assert not reachable_by_others(checkout / "agent")
    if os.geteuid() == 0:
        # The fault this guards against: nobody cannot run the agent from this checkout.
        nobody = pwd.getpwnam("nobody")
        as_nobody = [f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
        direct = subprocess.run(
            ["setpriv", *as_nobody, python, "-m", "agent", "--help"],
            cwd="/",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert direct.returncode != 0, direct.stdout
        assert "No module named agent" in direct.stderr, direct.stderr
    copied = time.monotonic() - started

    demo = ["scripts/demo.py", "--smoke", "--keep", "--web-port", "0", "--grpc-port", "0"]
    result = subprocess.run(
        [python, *demo], cwd=checkout, env=env, capture_output=True, text=True, timeout=180
    )
    output = result.stdout + result.stderr
    kept = re.search(r"^demo: kept (\S+) ", output, re.MULTILINE)
    try:
        assert result.returncode == 0, output
        assert "readonly: migration_detection_success, migration_execution_failed" in output
        assert "healthy: migration_detection_success, migration_execution_success" in output
        assert "demo: all five outcomes are in the History" in output
        # --keep kept the demo dir; the read-only agent's log shows its real OS error.
        assert kept, output
        readonly_log = (Path(kept[1]) / "logs" / "agent-readonly.log").read_text()
        assert "EACCES" in readonly_log, readonly_log
    finally:
        if kept:
            remove_tree(Path(kept[1]))
    print(f"copy + venv {copied:.1f} s, demo {time.monotonic() - started - copied:.1f} s")


def remove_tree(path: Path) -> None:
    """Remove a kept demo dir (its read-only directory made writable first, for non-root)."""
    for directory, _, _ in os.walk(path):
        if os.stat(directory).st_uid == os.geteuid():
            os.chmod(directory, 0o700)
    shutil.rmtree(path)
