"""The specs this agent accepted from the server, kept in its state directory.

A spec arrives in a signed action (``preview_migration``, or ``run_migration`` carrying
``spec``) with its id, revision, canonical JSON and the JSON's sha256. :func:`accept` checks
all of it before anything on the host is read: the checksum, the spec itself (validation), that
the id is the one the action names, and that every path it names is under ``allowed_paths``
(after ``..`` and symlinks, :func:`~agent.specs.paths.confine`). A refusal is a
:class:`SpecRefused` naming the spec, its revision and the reason; nothing is installed.

:class:`SpecStore` keeps each accepted spec as ``<state>/specs/<spec id>.json`` (revision,
sha256 and the canonical JSON; 0600 in a 0700 directory, written atomically), one revision per
spec id: installing another revision replaces it. Installed specs survive restarts: the daemon
registers each with its migration worker and reports the host's version of each at every
check-in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.errors import AgentError
from agent.migrations import fsops
from agent.specs.errors import PathRefused, SpecError
from agent.specs.paths import confine
from agent.specs.spec import Spec
from agent.specs.validate import SPEC_ID, parse_spec_json

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 400


class SpecRefused(AgentError):
    """A spec from an action that must not be installed; ``reason`` goes into the notice."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class InstalledSpec:
    """An accepted spec: ``source`` is its canonical JSON as the server sent it."""

    spec: Spec
    revision: int
    sha256: str
    source: str

    @property
    def spec_id(self) -> str:
        return self.spec.id

    def to_json(self) -> dict[str, object]:
        return {
            "spec_id": self.spec.id,
            "revision": self.revision,
            "sha256": self.sha256,
            "spec": self.source,
        }


def _revision(text: str) -> int:
    if not text.isdecimal() or int(text) < 1:
        raise SpecRefused(f"spec_revision {text[:40]!r} is not a positive decimal number")
    return int(text)


def _outside(refused: PathRefused, allowed_paths: Sequence[str]) -> str:
    """``/opt/x is outside allowed_paths (/etc)``, the paths grouped by why."""
    shown = ", ".join(allowed_paths) or "none"
    groups: dict[str, list[str]] = {}
    for path, why in refused.refused:
        extra = "" if why.startswith("resolves there") else f" ({why.split(',')[0]})"
        groups.setdefault(extra, []).append(path)
    return "; ".join(
        f"{', '.join(paths)} {'is' if len(paths) == 1 else 'are'} outside allowed_paths "
        f"({shown}){extra}"
        for extra, paths in groups.items()
    )


def accept(params: Mapping[str, str], root: Path, allowed_paths: Sequence[str]) -> InstalledSpec:
    """The spec an action's ``params`` carry (``spec_id``, ``spec_revision``, ``spec``,
    ``spec_sha256``; ``migration_id`` when given must name it), checked as the module docstring
    says; raises :class:`SpecRefused`. Reads nothing but directory entries and links."""
    spec_id = params.get("spec_id", "")
    label = f"spec {spec_id or '(no spec_id)'}"
    source = params.get("spec", "")
    revision_text = params.get("spec_revision", "")
    if revision_text:
        label += f" revision {revision_text[:40]}"
    try:
        if not SPEC_ID.fullmatch(spec_id):
            raise SpecRefused("spec_id is missing or not a spec id")
        revision = _revision(revision_text)
        digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
        if digest != params.get("spec_sha256", "").lower():
            raise SpecRefused("the spec does not match spec_sha256")
        try:
            spec = parse_spec_json(source)
        except SpecError as exc:
            raise SpecRefused(
                f"invalid spec: {'; '.join(str(i) for i in exc.issues[:5])}"
            ) from None
        if spec.id != spec_id:
            raise SpecRefused(f"the spec's id is {spec.id!r}, not {spec_id!r}")
        migration_id = params.get("migration_id", spec_id)
        if migration_id != spec_id:
            raise SpecRefused(f"migration_id {migration_id!r} is not the spec's id")
        try:
            confine(spec, root, allowed_paths)
        except PathRefused as exc:
            raise SpecRefused(_outside(exc, allowed_paths)) from None
    except SpecRefused as exc:
        raise SpecRefused(f"{label}: {exc.reason}"[:MAX_REASON_CHARS]) from None
    return InstalledSpec(spec, revision, digest, source)


class SpecStore:
    """The installed specs in ``directory`` (``<state_dir>/specs/``; thread-safe; loaded
    once, then kept in memory beside the files)."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._lock = threading.Lock()
        self._specs: dict[str, InstalledSpec] | None = None

    @property
    def directory(self) -> Path:
        return self._dir

    def _load(self) -> dict[str, InstalledSpec]:
        if self._specs is not None:
            return self._specs
        specs: dict[str, InstalledSpec] = {}
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(self._dir.glob("*.json")):
                try:
                    data = json.loads(path.read_text("utf-8"))
                    source = data["spec"]
                    spec = parse_spec_json(source)
                    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
                    if digest != data["sha256"] or path.stem != spec.id:
                        raise ValueError("checksum or name mismatch")
                    specs[spec.id] = InstalledSpec(spec, int(data["revision"]), digest, source)
                except (OSError, ValueError, KeyError, TypeError, SpecError) as exc:
                    log.error("installed spec %s is unusable, ignored: %s", path, exc)
        self._specs = specs
        return specs

    def install(self, installed: InstalledSpec) -> bool:
        """Keep ``installed`` (replacing another revision of the same spec); False when exactly
        this revision was already installed (nothing written)."""
        with self._lock:
            specs = self._load()
            current = specs.get(installed.spec_id)
            same = current is not None and current.sha256 == installed.sha256
            if same and current is not None and current.revision == installed.revision:
                return False
            fsops.ensure_dir(self._dir)
            os.chmod(self._dir, 0o700)
            data = (json.dumps(installed.to_json(), indent=2) + "\n").encode("utf-8")
            fsops.atomic_write(self._dir / f"{installed.spec_id}.json", data, 0o600)
            specs[installed.spec_id] = installed
            return True

    def get(self, spec_id: str) -> InstalledSpec | None:
        with self._lock:
            return self._load().get(spec_id)

    def all(self) -> list[InstalledSpec]:
        """Every installed spec, by id."""
        with self._lock:
            return [spec for _, spec in sorted(self._load().items())]
