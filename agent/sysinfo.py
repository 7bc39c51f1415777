"""Facts about this host: the ``HostFacts`` of check-ins and the ``system_info`` of events."""

from __future__ import annotations

import os
import platform
import socket
import uuid
from collections.abc import Iterable
from pathlib import Path

from agent import __version__
from flagpost.v1 import agent_pb2


def os_name() -> str:
    """The distribution's PRETTY_NAME when known, else ``platform.system()``."""
    try:
        release = platform.freedesktop_os_release()
    except OSError:
        return platform.system()
    return release.get("PRETTY_NAME") or platform.system()


def disk_free_bytes(path: Path) -> int:
    """Free bytes (for unprivileged users) on the filesystem holding ``path`` or its nearest
    existing parent; 0 if none can be examined."""
    for candidate in (path, *path.parents):
        try:
            stats = os.statvfs(candidate)
        except OSError:
            continue
        return stats.f_bavail * stats.f_frsize
    return 0


def hostname(root: Path = Path("/")) -> str:
    """``<root>/etc/hostname`` if present and non-empty, else the kernel's host name. Reading it
    under the root keeps "every path hangs off one root": agents run in scratch roots (tests,
    the demo) report the host name their root declares."""
    try:
        value = (root / "etc/hostname").read_text(encoding="utf-8").strip()
    except OSError:
        value = ""
    return value or socket.gethostname()


def machine_id(root: Path, state_dir: Path) -> str:
    """``<root>/etc/machine-id`` if present, else a generated id kept in ``state_dir``."""
    try:
        value = (root / "etc/machine-id").read_text(encoding="utf-8").strip()
    except OSError:
        value = ""
    if value:
        return value
    stored = state_dir / "machine-id"
    try:
        value = stored.read_text(encoding="utf-8").strip()
    except OSError:
        value = ""
    if value:
        return value
    value = uuid.uuid4().hex
    state_dir.mkdir(parents=True, exist_ok=True)
    temp = stored.with_name(".machine-id.tmp")
    temp.write_text(value + "\n", encoding="utf-8")
    os.replace(temp, stored)
    return value


def host_facts(
    root: Path,
    state_dir: Path,
    config_path: Path,
    config_version: str,
    labels: Iterable[tuple[str, str]] = (),
) -> agent_pb2.HostFacts:
    """The ``HostFacts`` message sent with Enroll and every CheckIn (``labels``: the agent
    config's, validated there)."""
    return agent_pb2.HostFacts(
        labels=dict(labels),
        hostname=hostname(root),
        os=os_name(),
        kernel=platform.release(),
        agent_version=__version__,
        config_version=config_version,
        disk_free_bytes=disk_free_bytes(config_path),
        machine_id=machine_id(root, state_dir),
    )


def system_info(config_path: Path, root: Path = Path("/")) -> dict[str, str]:
    """The ``system_info`` map attached to every MigrationEvent."""
    return {
        "hostname": hostname(root),
        "os": os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "agent_version": __version__,
        "config_path": str(config_path),
        "disk_free_bytes": str(disk_free_bytes(config_path)),
        "uid": str(os.getuid()),
        "pid": str(os.getpid()),
    }


def agent_info() -> dict[str, str]:
    """The ``system_info`` of agent notices: host and agent, no config path."""
    return {
        "hostname": socket.gethostname(),
        "os": os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "agent_version": __version__,
        "uid": str(os.getuid()),
        "pid": str(os.getpid()),
    }
