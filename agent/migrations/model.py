"""The vocabulary of migrations: detection results, file operations, steps and migrations.

A step never touches the disk itself: it reads through a :class:`FileView` and returns the file
operations that take the config from its ``from_version`` to its ``to_version``. The engine
executes them (atomically, journaled, after a backup), and a dry run plays them onto a
:class:`PlannedView` instead, so what a dry run prints is exactly what a real run would do.
"""

from __future__ import annotations

import errno as errno_module
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent.errors import AgentError
from agent.events import NO_LABELS, RunLabels

# Re-exported: migration authors import everything from here.
from agent.inputs import INPUT_NAME as INPUT_NAME
from agent.inputs import Inputs as Inputs

MAX_INPUT_LABEL_CHARS = 200
MAX_INPUT_ERROR_CHARS = 500
MAX_INPUT_FIELDS = 16


class DetectionError(AgentError):
    """The config on disk cannot be read, parsed or validated.

    ``str(error)`` is the full human-readable message (``agent.conf:7: expected 'key = value'``).
    It never contains secret values.
    """

    def __init__(
        self,
        message: str,
        *,
        path: Path | None = None,
        line: int = 0,
        errno: int = 0,
        exception_type: str = "ConfigParseError",
        version: str = "",
    ) -> None:
        super().__init__(message)
        self.version = version  # the version whose file failed, "" if unknown
        self.message = message
        self.path = path
        self.line = line
        self.errno = errno
        self.exception_type = exception_type

    @classmethod
    def from_os_error(cls, path: Path, exc: OSError) -> DetectionError:
        """A detection failure for an unreadable file, carrying its errno."""
        code = exc.errno or 0
        name = errno_module.errorcode.get(code, "")
        reason = exc.strerror or str(exc)
        return cls(
            f"{path}: cannot read: [{name or code}] {reason}",
            path=path,
            errno=code,
            exception_type=type(exc).__name__,
        )


@dataclass(frozen=True, slots=True)
class Detected:
    """What is on disk: ``version`` None means no config was found at all."""

    version: str | None
    path: Path | None
    message: str


@dataclass(frozen=True, slots=True)
class WriteFile:
    """Create or replace ``path`` with ``data`` and permission bits ``mode``. ``repr`` leaves
    ``data`` out (it may be a secrets file, and a plan's repr includes every op)."""

    path: Path
    data: bytes = field(repr=False)
    mode: int

    def describe(self) -> str:
        return f"write {self.path} ({len(self.data)} bytes, mode {self.mode:04o})"


@dataclass(frozen=True, slots=True)
class RemoveFile:
    """Delete ``path``."""

    path: Path

    def describe(self) -> str:
        return f"remove {self.path}"


FileOp = WriteFile | RemoveFile


class FileView(Protocol):
    """Read access to the files a migration looks at (the disk, or the disk plus planned ops)."""

    @property
    def root(self) -> Path: ...

    def exists(self, path: Path) -> bool: ...

    def read_bytes(self, path: Path) -> bytes: ...

    def mode(self, path: Path) -> int: ...


class DiskView:
    """The real filesystem under ``root``."""

    def __init__(self, root: Path) -> None:
        self._root = root

    @property
    def root(self) -> Path:
        return self._root

    def exists(self, path: Path) -> bool:
        return path.is_file()

    def read_bytes(self, path: Path) -> bytes:
        return path.read_bytes()

    def mode(self, path: Path) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)


def _planned_removal(path: Path) -> FileNotFoundError:
    return FileNotFoundError(errno_module.ENOENT, "No such file (planned removal)", str(path))


class PlannedView:
    """``base`` with file operations played on top, in memory (dry runs and planning)."""

    def __init__(self, base: FileView) -> None:
        self._base = base
        self._files: dict[Path, tuple[bytes, int] | None] = {}

    @property
    def root(self) -> Path:
        return self._base.root

    def apply(self, op: FileOp) -> None:
        """Record ``op`` as done."""
        if isinstance(op, WriteFile):
            self._files[op.path] = (op.data, op.mode)
        else:
            self._files[op.path] = None

    def exists(self, path: Path) -> bool:
        if path in self._files:
            return self._files[path] is not None
        return self._base.exists(path)

    def read_bytes(self, path: Path) -> bytes:
        if path in self._files:
            entry = self._files[path]
            if entry is None:
                raise _planned_removal(path)
            return entry[0]
        return self._base.read_bytes(path)

    def mode(self, path: Path) -> int:
        if path in self._files:
            entry = self._files[path]
            if entry is None:
                raise _planned_removal(path)
            return entry[1]
        return self._base.mode(path)


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One value a step needs and the old config never held (e.g. a database password).

    ``name`` is an identifier (``[a-z0-9_]{1,64}``), ``label`` what the web form shows (at most
    200 characters), ``secret`` makes it a password field whose value is never stored in plain
    text anywhere but where the step writes it."""

    name: str
    label: str
    secret: bool = True

    def __post_init__(self) -> None:
        if not INPUT_NAME.fullmatch(self.name):
            raise ValueError(f"input name {self.name!r} must match [a-z0-9_]{{1,64}}")
        if not self.label or len(self.label) > MAX_INPUT_LABEL_CHARS:
            raise ValueError(
                f"input {self.name}: label must be 1 to {MAX_INPUT_LABEL_CHARS} characters"
            )


@dataclass(frozen=True, slots=True)
class InputNeeds:
    """How a step asks for inputs (see :class:`Step`).

    ``declare(view)`` lists the inputs the step needs for the config it sees (often none: a
    config without a database section needs no database password). ``check(view, inputs)``
    checks the values present in ``inputs`` against something real and returns an error
    message per wrong name (an empty mapping when all are right); messages are shown to the
    admin, so they name what is wrong, never a value. ``plan(view, inputs)`` is the step's plan
    once it has every value. The engine also calls ``plan`` without the real values (dry runs,
    and to discover the inputs of later steps before asking): each missing value is then the
    placeholder ``<name>``, and the ops of such a plan are never executed."""

    declare: Callable[[FileView], Sequence[InputSpec]]
    check: Callable[[FileView, Inputs], Mapping[str, str]]
    plan: Callable[[FileView, Inputs], Sequence[FileOp]]


@dataclass(frozen=True, slots=True)
class Step:
    """One versioned step: ``plan`` returns the file operations from ``from_version`` to
    ``to_version``; it may raise :class:`DetectionError` if the input is not what it expects.

    ``needs``: a step that may need values the old config never held (see
    :class:`InputNeeds`); when it declares any for the config it sees, ``needs.plan`` replaces
    ``plan``. The engine collects the inputs of every step of a run before anything is backed up
    or changed, and the run waits (AWAITING_INPUT) until an admin answered them all."""

    name: str
    from_version: str
    to_version: str
    description: str
    plan: Callable[[FileView], Sequence[FileOp]]
    needs: InputNeeds | None = None


@dataclass(frozen=True, slots=True)
class Migration:
    """A chain of steps for one config.

    ``detect`` says which version is on disk (raising :class:`DetectionError` for a bad config);
    ``files`` lists, from the root, every file a run may touch (all are backed up if present);
    ``verify`` runs after the last step and raises :class:`DetectionError` if the result is wrong
    (the engine also checks that ``detect`` reports ``current_version``). ``labels``: what every
    event and RunUpdate of its runs carries besides (a server-defined spec's id and revision,
    the run a revert restores); the engine adds the action that asked for a run.
    """

    id: str
    title: str
    current_version: str
    detect: Callable[[FileView], Detected]
    files: Callable[[Path], Sequence[Path]]
    steps: tuple[Step, ...]
    verify: Callable[[FileView], None] | None = None
    labels: RunLabels = NO_LABELS

    def path_from(self, version: str) -> list[Step]:
        """The steps from ``version`` to ``current_version``; raises :class:`DetectionError` if
        there is no such path."""
        by_source = {step.from_version: step for step in self.steps}
        path: list[Step] = []
        current = version
        while current != self.current_version:
            step = by_source.get(current)
            if step is None or len(path) > len(self.steps):
                raise DetectionError(
                    f"{self.id}: no migration path from version {version} "
                    f"to {self.current_version}",
                    exception_type="NoMigrationPath",
                )
            path.append(step)
            current = step.to_version
        return path
