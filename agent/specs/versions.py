"""Where the host is for each installed spec: the ``HostFacts.specs`` of every check-in.

Each installed spec is detected (confined first, like every detection) and reported as a
``SpecVersion``: its revision and the detected version, or why detection failed. Detecting is
cheap when nothing changed: the result is kept per spec revision and the ``stat`` of every
file the spec names (and of their directories), so an idle agent parses nothing again; a
format's library is loaded only the first time a spec needs it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

from agent.events import short
from agent.migrations.model import DetectionError, DiskView
from agent.specs.detect import detect
from agent.specs.errors import PathRefused
from agent.specs.paths import confine, host_path
from agent.specs.store import InstalledSpec, SpecStore
from flagpost.v1 import agent_pb2

MAX_ERROR_CHARS = 300

_Stamp = tuple[tuple[int, int, int, int] | None, ...]


def _stat(path: Path) -> tuple[int, int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_mode)


def _stamp(installed: InstalledSpec, root: Path) -> _Stamp:
    paths = [host_path(root, file) for file in installed.spec.files()]
    dirs = dict.fromkeys(path.parent for path in paths)
    return tuple(_stat(path) for path in (*paths, *dirs))


def detect_version(
    installed: InstalledSpec, root: Path, allowed_paths: Sequence[str]
) -> tuple[str, str]:
    """(detected version, error) of ``installed`` on the host: ("", "") when no file of any
    version exists. Confined first, like every detection (the planner is not loaded)."""
    try:
        paths = confine(installed.spec, root, allowed_paths)
        found = detect(installed.spec, DiskView(root), paths)
    except PathRefused as exc:
        return "", short(str(exc), MAX_ERROR_CHARS)
    except DetectionError as exc:
        return "", short(exc.message, MAX_ERROR_CHARS)
    except OSError as exc:
        return "", short(f"{type(exc).__name__}: {exc}", MAX_ERROR_CHARS)
    return found.version or "", ""


class SpecVersions:
    """The ``SpecVersion`` of every installed spec, re-detected only when its files changed."""

    def __init__(self, store: SpecStore, root: Path, allowed_paths: Sequence[str]) -> None:
        self._store = store
        self._root = root
        self._allowed = tuple(allowed_paths)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[str, _Stamp, tuple[str, str]]] = {}

    def facts(self) -> list[agent_pb2.SpecVersion]:
        """One ``SpecVersion`` per installed spec, by id."""
        found = []
        with self._lock:
            for installed in self._store.all():
                stamp = _stamp(installed, self._root)
                cached = self._cache.get(installed.spec_id)
                if cached is not None and cached[0] == installed.sha256 and cached[1] == stamp:
                    version, error = cached[2]
                else:
                    version, error = detect_version(installed, self._root, self._allowed)
                    self._cache[installed.spec_id] = (installed.sha256, stamp, (version, error))
                found.append(
                    agent_pb2.SpecVersion(
                        spec_id=installed.spec_id,
                        revision=installed.revision,
                        version=version,
                        error=error,
                    )
                )
        return found
