"""Where a spec's paths live on the host, and the ``allowed_paths`` confinement.

A spec names absolute paths (``/etc/myapp/myapp.ini``); on the host each hangs off the agent's
root like every other agent path (``<root>/etc/myapp/myapp.ini``). :func:`confine` resolves
every path a spec names (``..`` and symlinks, with :func:`os.path.realpath`) and refuses the spec
when any resolves outside the allowed directories, before any file is read: it only looks at
directory entries and links.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent.specs.errors import PathRefused
from agent.specs.spec import Spec

DEFAULT_ALLOWED_PATHS = ("/etc",)


def host_path(root: Path, spec_path: str) -> Path:
    """``/etc/x`` under ``root`` (lexically, nothing resolved)."""
    return root / spec_path.lstrip("/")


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def confine(
    spec: Spec, root: Path, allowed_paths: Sequence[str] = DEFAULT_ALLOWED_PATHS
) -> Mapping[str, Path]:
    """``spec path -> host path`` for every path ``spec`` names; raises :class:`PathRefused`
    listing each path whose resolved location (after ``..`` and symlinks) is outside every
    allowed directory (each also under ``root``)."""
    real_root = os.path.realpath(root)
    allowed = [
        os.path.realpath(os.path.join(real_root, entry.lstrip("/"))) for entry in allowed_paths
    ]
    shown = ", ".join(allowed_paths) or "none"
    refused: list[tuple[str, str]] = []
    paths: dict[str, Path] = {}
    for spec_path in spec.files():
        lexical = os.path.normpath(os.path.join(real_root, spec_path.lstrip("/")))
        resolved = os.path.realpath(os.path.join(real_root, spec_path.lstrip("/")))
        if not _within(lexical, real_root):
            refused.append((spec_path, "leaves the root"))
        elif not any(_within(resolved, directory) for directory in allowed):
            where = "outside the root" if not _within(resolved, real_root) else "there"
            refused.append((spec_path, f"resolves {where}, not under the allowed paths ({shown})"))
        paths[spec_path] = host_path(root, spec_path)
    if refused:
        raise PathRefused(spec.id, refused)
    return paths
