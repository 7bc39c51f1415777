"""The model of a migration spec: frozen dataclasses built by :mod:`agent.specs.validate`.

A spec lists where each version of a config lives (``versions``, tried in order by detection)
and the steps between versions (``steps``), each a list of operations (``ops``). Field names
are the spec language's own (``from`` becomes ``from_`` only where Python needs it). Every
operation may carry ``when``: it runs only when that condition holds on its file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("ini", "kv", "env", "json", "toml", "yaml", "text")
TYPE_NAMES = ("str", "int", "float", "bool", "list", "table")


@dataclass(frozen=True, slots=True)
class When:
    """A condition on a version's file: ``key`` equals ``equals`` (compared as text for
    untyped formats), or, with ``equals`` None, ``key`` ``exists`` (True) or not (False)."""

    key: str
    equals: Any = None
    exists: bool = True


@dataclass(frozen=True, slots=True)
class Companion:
    """A file that must exist beside a version's file (e.g. its secrets file), in ``format``,
    holding every ``require`` key, and the keys ``require_with`` lists for each prefix the
    version's own file has a key under; ``mode``: permission bits it must not exceed."""

    file: str
    format: str
    require: tuple[str, ...] = ()
    mode: int | None = None
    require_with: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Version:
    """Where one version lives and what a file of it must hold: ``require``d keys (also how
    detection tells versions apart, with ``when``), ``allow_only``, ``types``, ``enum``,
    ``pattern``, ``minimum`` (numbers), ``require_with`` (prefix -> keys required when any key
    under it exists), ``verifiers`` (keys holding scrypt verifiers), ``messages`` (key -> how
    its broken rule is said) and ``companions`` (files that must exist beside it)."""

    version: str
    file: str
    format: str
    require: tuple[str, ...] = ()
    when: When | None = None
    allow_only: tuple[str, ...] | None = None
    types: Mapping[str, str] = field(default_factory=dict)
    enum: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    pattern: Mapping[str, str] = field(default_factory=dict)
    minimum: Mapping[str, int | float] = field(default_factory=dict)
    messages: Mapping[str, str] = field(default_factory=dict)
    require_with: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    verifiers: tuple[str, ...] = ()
    companions: tuple[Companion, ...] = ()


@dataclass(frozen=True, slots=True)
class MoveFile:
    """Move the file (``file``, default the current one) to ``to``; ``to`` becomes current."""

    to: str
    file: str | None = None
    when: When | None = None
    op: str = "move_file"


@dataclass(frozen=True, slots=True)
class CopyFile:
    """Copy the file to ``to`` (with ``mode``, default the source's); the current file stays."""

    to: str
    file: str | None = None
    mode: int | None = None
    when: When | None = None
    op: str = "copy_file"


@dataclass(frozen=True, slots=True)
class DeleteFile:
    """Delete the file."""

    file: str | None = None
    when: When | None = None
    op: str = "delete_file"


@dataclass(frozen=True, slots=True)
class Convert:
    """Write the file's keys into ``to_file`` in ``to_format`` (``types`` types the values of an
    untyped source); the source is removed unless ``keep_source``. ``to_file`` becomes current."""

    to_file: str
    to_format: str
    types: Mapping[str, str] = field(default_factory=dict)
    keep_source: bool = False
    mode: int | None = None
    file: str | None = None
    missing_ok: bool = False
    when: When | None = None
    op: str = "convert"


@dataclass(frozen=True, slots=True)
class RenameKey:
    """Rename key ``from_`` to ``to`` (its position is kept when the parent is the same)."""

    from_: str
    to: str
    missing_ok: bool = False
    file: str | None = None
    when: When | None = None
    op: str = "rename_key"


@dataclass(frozen=True, slots=True)
class SetKey:
    """Set ``key`` to ``value`` (added if missing); ``repr`` leaves the value out (the key may
    be secret)."""

    key: str
    value: Any = field(repr=False)
    file: str | None = None
    when: When | None = None
    op: str = "set_key"


@dataclass(frozen=True, slots=True)
class SetDefault:
    """Set ``key`` to ``value`` only when it is missing (``repr`` leaves the value out)."""

    key: str
    value: Any = field(repr=False)
    file: str | None = None
    when: When | None = None
    op: str = "set_default"


@dataclass(frozen=True, slots=True)
class DeleteKey:
    """Delete ``key``; a missing key is an error unless ``missing_ok``."""

    key: str
    missing_ok: bool = False
    file: str | None = None
    when: When | None = None
    op: str = "delete_key"


@dataclass(frozen=True, slots=True)
class MoveKeys:
    """Move ``keys`` into ``to_file`` (created if missing, in ``to_format``, default the
    current file's format) with ``mode`` (default 0600). Moved keys are secret."""

    keys: tuple[str, ...]
    to_file: str
    mode: int = 0o600
    to_format: str | None = None
    file: str | None = None
    when: When | None = None
    op: str = "move_keys"


@dataclass(frozen=True, slots=True)
class ReplaceText:
    """Replace matches of the regular expression ``pattern`` by ``replacement`` (``re.sub``
    syntax) in a ``text`` file; ``count`` 0 replaces all. No match is an error unless
    ``missing_ok``."""

    pattern: str
    replacement: str
    count: int = 0
    missing_ok: bool = False
    file: str | None = None
    when: When | None = None
    op: str = "replace_text"


@dataclass(frozen=True, slots=True)
class Chmod:
    """Set the file's permission bits."""

    mode: int
    file: str | None = None
    when: When | None = None
    op: str = "chmod"


@dataclass(frozen=True, slots=True)
class RequireInput:
    """A value the host never held, asked for by ``name`` with ``prompt``; once given it is set
    at ``key``. ``verifier``: a key of the file holding a verifier the value must match (see
    :mod:`agent.migrations.verifier`). A ``secret`` value is redacted everywhere."""

    name: str
    prompt: str
    key: str
    secret: bool = True
    verifier: str | None = None
    file: str | None = None
    mismatch: str = ""
    when: When | None = None
    op: str = "require_input"


Op = (
    MoveFile
    | CopyFile
    | DeleteFile
    | Convert
    | RenameKey
    | SetKey
    | SetDefault
    | DeleteKey
    | MoveKeys
    | ReplaceText
    | Chmod
    | RequireInput
)


@dataclass(frozen=True, slots=True)
class Step:
    """One step from version ``from_`` to version ``to``."""

    name: str
    from_: str
    to: str
    ops: tuple[Op, ...]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Spec:
    """A validated spec. ``secret``: keys whose values are redacted in every file."""

    id: str
    title: str
    target: str
    versions: tuple[Version, ...]
    steps: tuple[Step, ...]
    secret: tuple[str, ...] = ()

    def version(self, version: str) -> Version:
        """The version named ``version`` (KeyError if unknown)."""
        for candidate in self.versions:
            if candidate.version == version:
                return candidate
        raise KeyError(version)

    def path_from(self, version: str) -> tuple[Step, ...]:
        """The steps from ``version`` to ``target`` (validation guarantees there is one)."""
        by_source = {step.from_: step for step in self.steps}
        path: list[Step] = []
        current = version
        while current != self.target:
            step = by_source[current]
            path.append(step)
            current = step.to
        return tuple(path)

    def files(self) -> tuple[str, ...]:
        """Every path the spec names (versions' files, ops' files and targets), in order."""
        paths: list[str] = []
        for version in self.versions:
            paths.append(version.file)
            paths.extend(companion.file for companion in version.companions)
        for step in self.steps:
            for op in step.ops:
                paths.extend(op_paths(op))
        return tuple(dict.fromkeys(paths))


def op_paths(op: Op) -> tuple[str, ...]:
    """The paths an op names itself (not the current file it may act on)."""
    paths: list[str] = []
    if op.file is not None:
        paths.append(op.file)
    if isinstance(op, MoveFile | CopyFile):
        paths.append(op.to)
    elif isinstance(op, Convert | MoveKeys):
        paths.append(op.to_file)
    return tuple(paths)
