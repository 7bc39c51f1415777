"""Detection: which version of a spec's config a host holds, and validation of that version.

Versions are tried in the spec's order; the first whose file exists, parses, satisfies ``when``
and holds every ``require`` key wins. The winner's file is then validated against the rest of
its declaration (``allow_only``, ``types``, ``enum``, ``pattern``): a file that matches a version
but breaks its rules is a :class:`~agent.migrations.model.DetectionError`, never a guess. So is
a host where some version's file exists but none matches. Messages name files, lines and keys,
never values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.migrations.model import DetectionError, FileView
from agent.migrations.verifier import VerifierError, parse_verifier
from agent.specs import formats
from agent.specs.errors import FormatError
from agent.specs.formats.base import Document
from agent.specs.paths import host_path
from agent.specs.spec import Spec, Version, When
from agent.specs.values import coerce, has_type, to_text


@dataclass(frozen=True, slots=True)
class Detection:
    """``version`` None: no file of any version exists. ``file`` is the winner's spec path,
    ``document`` its parsed content; ``skipped`` says, per earlier version, why it did not
    match."""

    version: str | None
    file: str | None = None
    path: Path | None = None
    document: Document | None = field(default=None, repr=False, compare=False)
    skipped: tuple[str, ...] = ()


def load(view: FileView, path: Path, spec_file: str, format_name: str) -> Document:
    """The document at ``path`` (raises DetectionError naming the file and line)."""
    try:
        raw = view.read_bytes(path)
    except OSError as exc:
        raise DetectionError.from_os_error(path, exc) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DetectionError(f"{spec_file}:{line}: not valid UTF-8", path=path, line=line) from None
    try:
        return formats.parse(format_name, text)
    except FormatError as exc:
        where = f"{spec_file}:{exc.line}" if exc.line else spec_file
        raise DetectionError(f"{where}: {exc.message}", path=path, line=exc.line) from None


def _same(document: Document, value: Any, expected: Any) -> bool:
    if document.typed:
        return bool(type(value) is type(expected) and value == expected)
    try:
        return bool(value == to_text("", expected))
    except FormatError:
        return False


def matches_when(version: Version, document: Document) -> bool:
    """Whether ``document`` satisfies the version's ``when`` (True without one)."""
    return version.when is None or when_holds(version.when, document)


def when_holds(when: When, document: Document) -> bool:
    """Whether ``document`` satisfies ``when`` (a version's, or an operation's)."""
    try:
        present = document.has(when.key)
    except FormatError:
        return False
    if when.equals is None:
        return present == when.exists
    return present and _same(document, document.get(when.key), when.equals)


def _number(value: Any) -> float | None:
    """``value`` as a number for ``minimum`` (None when it is none: ``types`` says so)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _allowed(key: str, allow_only: tuple[str, ...]) -> bool:
    for entry in allow_only:
        if entry.endswith(".*"):
            if key.startswith(entry[:-1]):
                return True
        elif key == entry:
            return True
    return False


def check_version(version: Version, document: Document) -> list[str]:
    """Every way ``document`` breaks the rules of ``version`` (empty: it is valid), each with
    its line where the format knows it (``line 3: unknown key 'x' (not in allow_only)``).
    Messages name keys, never values."""
    return [text for _line, text in version_problems(version, document)]


def version_problems(version: Version, document: Document) -> list[tuple[int, str]]:
    """:func:`check_version` as ``(line, message)`` pairs (line 0: unknown), in line order."""
    problems: list[tuple[int, str]] = []

    def add(key: str, text: str) -> None:
        line = document.line_of(key)
        problems.append((line, f"line {line}: {text}" if line else text))

    def rule(key: str, text: str) -> None:
        """A broken value rule; the version's ``messages`` may say it in its own words."""
        message = version.messages.get(key)
        add(key, f"key {key!r}: {message}" if message else text)

    for key in version.require:
        if not document.has(key):
            add(key, f"missing required key {key!r}")
    if version.allow_only is not None:
        for key in document.dotted_keys():
            if not _allowed(key, version.allow_only):
                add(key, f"unknown key {key!r} (not in allow_only)")
    for prefix, keys in version.require_with.items():
        present = _under(document, prefix)
        if present is not None:
            for key in keys:
                if not document.has(key):
                    add(present, f"missing required key {key!r} (required with {prefix!r})")
    for key in version.verifiers:
        if document.has(key):
            value = document.get(key)
            try:
                parse_verifier(value if isinstance(value, str) else "")
            except VerifierError as exc:
                add(key, f"key {key!r}: invalid verifier: {exc}")
    for key, type_name in version.types.items():
        if not document.has(key):
            continue
        value = document.get(key)
        if document.typed:
            ok = has_type(value, type_name)
        else:
            try:
                coerce(key, value, type_name)
                ok = True
            except FormatError:
                ok = False
        if not ok:
            rule(key, f"key {key!r} must be of type {type_name}")
    for key, allowed in version.enum.items():
        if document.has(key):
            value = document.get(key)
            if not any(_same(document, value, option) for option in allowed):
                shown = ", ".join(repr(option) for option in allowed)
                rule(key, f"key {key!r} must be one of {shown}")
    for key, least in version.minimum.items():
        if document.has(key):
            number = _number(document.get(key))
            if number is not None and number < least:
                rule(key, f"key {key!r} must be at least {least}")
    for key, pattern in version.pattern.items():
        if document.has(key):
            value = document.get(key)
            if not isinstance(value, str) or re.fullmatch(pattern, value) is None:
                rule(key, f"key {key!r} does not match the pattern {pattern!r}")
    return sorted(problems, key=lambda problem: (problem[0] == 0, problem[0]))


def _under(document: Document, prefix: str) -> str | None:
    """The first key of ``document`` that is ``prefix`` or under it (None: there is none)."""
    return next(
        (k for k in document.dotted_keys() if k == prefix or k.startswith(prefix + ".")), None
    )


def check_companions(
    version: Version, main: Document, view: FileView, paths: Mapping[str, Path] | None = None
) -> None:
    """Every companion file of ``version`` exists, parses, holds its ``require`` keys and has no
    more permission bits than its ``mode`` (DetectionError naming the file otherwise)."""
    for companion in version.companions:
        path = paths[companion.file] if paths is not None else host_path(view.root, companion.file)
        if not view.exists(path):
            raise DetectionError(
                f"{companion.file}: missing (version {version.version} needs it)",
                path=path,
                errno=2,
                exception_type="FileNotFoundError",
                version=version.version,
            )
        document = load(view, path, companion.file, companion.format)
        problems = [
            f"missing required key {key!r}" for key in companion.require if not document.has(key)
        ]
        for prefix, keys in companion.require_with.items():
            if _under(main, prefix) is not None:
                problems.extend(
                    f"missing required key {key!r} (required with {prefix!r} in {version.file})"
                    for key in keys
                    if not document.has(key)
                )
        mode = view.mode(path)
        if companion.mode is not None and mode & ~companion.mode & 0o777:
            problems.append(f"mode {mode:04o} is more open than {companion.mode:04o}")
        if problems:
            raise DetectionError(
                f"{companion.file}: not valid for version {version.version}: "
                + "; ".join(problems),
                path=path,
                exception_type="SpecValidationError",
                version=version.version,
            )


def invalid(version: Version, path: Path, document: Document) -> None:
    """Raise the DetectionError listing how ``document`` breaks ``version``'s rules, if it
    does."""
    problems = version_problems(version, document)
    if problems:
        raise DetectionError(
            f"{version.file}: not a valid version {version.version}: "
            + "; ".join(text for _line, text in problems),
            path=path,
            line=problems[0][0],
            exception_type="SpecValidationError",
            version=version.version,
        )


def detect(
    spec: Spec,
    view: FileView,
    paths: Mapping[str, Path] | None = None,
) -> Detection:
    """The version on the host seen through ``view`` (``paths``: spec path -> host path, from
    :func:`~agent.specs.paths.confine`; default: under ``view.root``). Raises DetectionError
    for a file that matches a version and breaks its rules, or when files exist but match no
    version."""

    def _path_of(file: str) -> Path:
        return paths[file] if paths is not None else host_path(view.root, file)

    cache: dict[tuple[str, str], Document | DetectionError] = {}
    skipped: list[str] = []
    errors: list[DetectionError] = []
    candidates: list[tuple[Version, Path, Document]] = []
    found_any = False
    for version in spec.versions:
        path = paths[version.file] if paths is not None else host_path(view.root, version.file)
        label = f"version {version.version} ({version.file})"
        if not view.exists(path):
            skipped.append(f"{label}: no such file")
            continue
        found_any = True
        cached = cache.get((version.file, version.format))
        if cached is None:
            try:
                cached = load(view, path, version.file, version.format)
            except DetectionError as exc:
                cached = exc
            cache[version.file, version.format] = cached
        if isinstance(cached, DetectionError):
            errors.append(cached)
            skipped.append(f"{label}: {cached.message}")
            continue
        document = cached
        if not matches_when(version, document):
            skipped.append(f"{label}: 'when' does not hold")
            continue
        missing = [key for key in version.require if not document.has(key)]
        if missing:
            skipped.append(f"{label}: missing {', '.join(repr(key) for key in missing)}")
            candidates.append((version, path, document))
            continue
        invalid(version, path, document)
        check_companions(version, document, view, paths)
        return Detection(version.version, version.file, path, document, tuple(skipped))
    if not found_any:
        return Detection(None, skipped=tuple(skipped))
    tried = [entry for entry in skipped if not entry.endswith(": no such file")]
    if not errors and len(candidates) == 1 == len(
        [entry for entry in tried if not entry.endswith(": 'when' does not hold")]
    ):
        # The one version whose file exists and whose `when` holds lacks a required key: that
        # is its own validation error, not a failure to match.
        version, path, document = candidates[0]
        invalid(version, path, document)
    if len({id(error) for error in errors}) == 1 and len(tried) == len(errors):
        # One file that does not parse, every version of it: its own error (and its version,
        # when the file is only one version's).
        error = errors[0]
        owners = [v.version for v in spec.versions if error.path == _path_of(v.file)]
        if not error.version and len(owners) == 1:
            error.version = owners[0]
        raise error
    first = errors[0] if errors else None
    raise DetectionError(
        f"{spec.id}: the files match no version: " + "; ".join(skipped),
        path=first.path if first else None,
        line=first.line if first else 0,
        exception_type="NoVersionMatched",
    )
