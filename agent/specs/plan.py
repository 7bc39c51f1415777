"""The interpreter: from the detected version to the target, apply each step's operations in
memory and return the plan of what a run would write.

Nothing on disk changes: every step reads through an in-memory overlay
(:class:`~agent.migrations.model.PlannedView`) on which the earlier steps' file operations are
already played, and returns its own operations as :class:`~agent.migrations.model.WriteFile` /
:class:`~agent.migrations.model.RemoveFile`, the engine's vocabulary (so a spec step can later be
executed with backup, journal and rollback like any other step).

The current file: each operation acts on the step's ``from`` version file, until a ``convert``
or ``move_file`` makes its target the current file; ``file = ...`` on an operation names another
one for that operation only. The plan also holds, per file, a unified diff and, per operation,
a description, both with secret values redacted (keys declared ``secret``, keys moved by
``move_keys``, secret inputs).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.migrations.model import FileOp, FileView, PlannedView, RemoveFile, WriteFile
from agent.migrations.verifier import check_verifier
from agent.specs import formats
from agent.specs.detect import Detection, detect, load, when_holds
from agent.specs.errors import FormatError, PlanError
from agent.specs.formats.base import Document
from agent.specs.formats.text import TextDocument
from agent.specs.paths import DEFAULT_ALLOWED_PATHS, confine
from agent.specs.redact import MASK, Secrets
from agent.specs.spec import (
    Chmod,
    Convert,
    CopyFile,
    DeleteFile,
    DeleteKey,
    MoveFile,
    MoveKeys,
    Op,
    RenameKey,
    ReplaceText,
    RequireInput,
    SetDefault,
    SetKey,
    Spec,
    Step,
    When,
    op_paths,
)
from agent.specs.values import coerce

EXTENSION_FORMATS = {
    ".ini": "ini",
    ".conf": "kv",
    ".env": "env",
    ".json": "json",
    ".toml": "toml",
    ".yaml": "yaml",
    ".yml": "yaml",
}
DEFAULT_FILE_MODE = 0o644


@dataclass(frozen=True, slots=True)
class RequiredInput:
    """A value a step asks for: ``name``, ``prompt`` (what the form shows), ``secret`` (a
    password field, redacted everywhere), where it goes (``file``, ``key``) and whether it is
    checked against a verifier in the file."""

    name: str
    prompt: str
    secret: bool
    step: str
    file: str
    key: str
    verified: bool


@dataclass(frozen=True, slots=True)
class PlannedOp:
    """One operation as planned: its step, index, name, a redacted description and the spec
    paths of the files it acts on."""

    step: str
    index: int
    op: str
    description: str
    files: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FileChange:
    """What a run does to one file: ``action`` "write" or "delete"; ``diff`` a unified diff of
    its text (secrets redacted); ``notes`` e.g. comments a conversion could not carry."""

    file: str
    path: Path
    action: str
    mode: int | None
    diff: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """A step and the file operations it would execute (their data is left out of ``repr``)."""

    step: Step
    ops: tuple[FileOp, ...]


@dataclass(frozen=True, slots=True)
class SpecPlan:
    """What running ``spec`` on a host would do. ``missing``: inputs without a right value
    (their places were planned with a placeholder ``<name>``; such a plan must not run);
    ``input_errors``: why a given value is wrong (never the value)."""

    spec: Spec
    detected: str | None
    steps: tuple[PlannedStep, ...] = ()
    changes: tuple[FileChange, ...] = ()
    operations: tuple[PlannedOp, ...] = ()
    inputs: tuple[RequiredInput, ...] = ()
    missing: tuple[str, ...] = ()
    input_errors: Mapping[str, str] = field(default_factory=dict)

    @property
    def needed(self) -> bool:
        return bool(self.steps)

    def final_ops(self) -> tuple[FileOp, ...]:
        """Every file operation of every step, in order."""
        return tuple(op for planned in self.steps for op in planned.ops)

    def writes(self) -> dict[Path, WriteFile]:
        """The last write of each file that exists after the run."""
        last: dict[Path, FileOp] = {}
        for op in self.final_ops():
            last[op.path] = op
        return {path: op for path, op in last.items() if isinstance(op, WriteFile)}

    def deletes(self) -> tuple[Path, ...]:
        """The files that no longer exist after the run."""
        last: dict[Path, FileOp] = {}
        for op in self.final_ops():
            last[op.path] = op
        return tuple(path for path, op in last.items() if isinstance(op, RemoveFile))


@dataclass(slots=True)
class _OpenFile:
    file: str
    path: Path
    format: str
    document: Document | None
    mode: int
    exists: bool
    dirty: bool = False


@dataclass(slots=True)
class _State:
    """What carries from step to step: the overlay, formats of files made by earlier steps,
    secrets met, inputs asked for."""

    spec: Spec
    view: PlannedView
    paths: dict[str, Path]
    inputs: Mapping[str, str]
    secrets: Secrets
    secret_keys: set[str]
    known_formats: dict[str, str]
    required: list[RequiredInput] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    input_errors: dict[str, str] = field(default_factory=dict)
    operations: list[PlannedOp] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)


class _StepRun:
    """One step applied in memory."""

    def __init__(self, state: _State, step: Step) -> None:
        self.state = state
        self.step = step
        source = state.spec.version(step.from_)
        self.current = source.file
        state.known_formats.setdefault(source.file, source.format)
        self.files: dict[str, _OpenFile] = {}
        self.order: list[str] = []
        self.index = 0
        self.op: Op | None = None
        self.acting_on: tuple[str, ...] = ()

    # ------------------------------------------------------------ errors and files

    def fail(self, message: str, file: str = "", line: int = 0) -> PlanError:
        op = self.op
        return PlanError(
            self.state.secrets.redact(message),
            step=self.step.name,
            op_index=self.index if op is not None else None,
            op_name=op.op if op is not None else "",
            file=file,
            path=self.state.paths.get(file),
            line=line,
        )

    def path(self, file: str) -> Path:
        return self.state.paths[file]

    def format_of(self, file: str) -> str:
        known = self.state.known_formats.get(file)
        if known is not None:
            return known
        for version in self.state.spec.versions:
            if version.file == file:
                return version.format
        return EXTENSION_FORMATS.get(Path(file).suffix, "text")

    def open(self, file: str, *, must_exist: bool = True) -> _OpenFile:
        """The file as this step has it (read from the overlay on first use)."""
        if file in self.files:
            opened = self.files[file]
        else:
            path = self.path(file)
            exists = self.state.view.exists(path)
            mode = self.state.view.mode(path) if exists else DEFAULT_FILE_MODE
            opened = _OpenFile(file, path, self.format_of(file), None, mode, exists)
            self.files[file] = opened
            self.order.append(file)
        if must_exist and not opened.exists:
            raise self.fail("the file does not exist", file)
        return opened

    def document(self, file: str) -> Document:
        opened = self.open(file)
        if opened.document is None:
            try:
                opened.document = load(self.state.view, opened.path, file, opened.format)
            except Exception as exc:
                message = getattr(exc, "message", None) or str(exc)
                raise self.fail(f"cannot read: {message}", file) from None
            self.remember_secrets(opened.document)
        return opened.document

    def remember_secrets(self, document: Document) -> None:
        for key in self.state.secret_keys:
            if _has(document, key):
                self.state.secrets.add(document.get(key))

    def create(self, file: str, document: Document, mode: int) -> _OpenFile:
        opened = self.open(file, must_exist=False)
        opened.document, opened.format, opened.mode = document, document.format, mode
        opened.exists = opened.dirty = True
        self.state.known_formats[file] = document.format
        return opened

    def remove(self, file: str) -> None:
        opened = self.open(file)
        opened.exists, opened.dirty, opened.document = False, True, None

    def note(self, file: str, text: str) -> None:
        self.state.notes.setdefault(file, []).append(text)

    def describe(self, text: str) -> None:
        assert self.op is not None
        # Redacted once planning is over, when every secret value is known.
        self.state.operations.append(
            PlannedOp(self.step.name, self.index, self.op.op, text, self.acting_on)
        )

    def holds(self, when: When, file: str) -> bool:
        """Whether the condition ``when`` holds on ``file`` (False when the file is gone)."""
        if not self.open(file, must_exist=False).exists:
            return False
        return when_holds(when, self.document(file))

    def show(self, key: str, value: Any) -> str:
        return MASK if key in self.state.secret_keys else repr(value)

    # ------------------------------------------------------------ running

    def run(self) -> tuple[FileOp, ...]:
        for index, op in enumerate(self.step.ops):
            self.index, self.op = index, op
            self.acting_on = tuple(dict.fromkeys((op.file or self.current, *op_paths(op))))
            try:
                self.apply(op)
            except FormatError as exc:
                raise self.fail(exc.message, op.file or self.current) from None
        self.op = None
        return self.file_ops()

    def file_ops(self) -> tuple[FileOp, ...]:
        writes: list[FileOp] = []
        removes: list[FileOp] = []
        for file in self.order:
            opened = self.files[file]
            if not opened.dirty:
                continue
            if opened.exists:
                assert opened.document is not None
                data = opened.document.dump().encode("utf-8")
                writes.append(WriteFile(opened.path, data, opened.mode))
            else:
                removes.append(RemoveFile(opened.path))
        return (*writes, *removes)

    def apply(self, op: Op) -> None:
        file = op.file or self.current
        if op.when is not None and not self.holds(op.when, file):
            self.describe(f"skip {op.op} on {file}: 'when' on {op.when.key} does not hold")
            return
        if isinstance(op, MoveFile | CopyFile):
            self.copy(op, file)
        elif isinstance(op, DeleteFile):
            self.remove(file)
            self.describe(f"delete {file}")
        elif isinstance(op, Convert):
            self.convert(op, file)
        elif isinstance(op, RenameKey):
            document = self.document(file)
            if op.missing_ok and not _has(document, op.from_):
                self.describe(f"rename {op.from_} -> {op.to} in {file} (not there)")
                return
            try:
                document.rename(op.from_, op.to)
            except KeyError:
                raise self.fail(f"key {op.from_!r} not found", file) from None
            if op.from_ in self.state.secret_keys:
                self.state.secret_keys.add(op.to)
            self.files[file].dirty = True
            self.describe(f"rename {op.from_} -> {op.to} in {file}")
        elif isinstance(op, SetKey | SetDefault):
            document = self.document(file)
            if isinstance(op, SetDefault) and _has(document, op.key):
                self.describe(f"keep {op.key} in {file} (already set)")
                return
            if op.key in self.state.secret_keys:
                self.state.secrets.add(op.value)
            document.set(op.key, op.value)
            self.files[file].dirty = True
            self.describe(f"set {op.key} = {self.show(op.key, op.value)} in {file}")
        elif isinstance(op, DeleteKey):
            document = self.document(file)
            try:
                document.delete(op.key)
            except KeyError:
                if not op.missing_ok:
                    raise self.fail(f"key {op.key!r} not found", file) from None
                self.describe(f"delete {op.key} from {file} (not there)")
                return
            self.files[file].dirty = True
            self.describe(f"delete {op.key} from {file}")
        elif isinstance(op, MoveKeys):
            self.move_keys(op, file)
        elif isinstance(op, ReplaceText):
            self.replace_text(op, file)
        elif isinstance(op, Chmod):
            opened = self.open(file)
            self.document(file)
            opened.mode, opened.dirty = op.mode, True
            self.describe(f"chmod {op.mode:04o} {file}")
        else:
            self.require_input(op, file)

    def copy(self, op: MoveFile | CopyFile, file: str) -> None:
        if op.to == file:
            raise self.fail(f"{op.op} to the same file", file)
        destination = self.open(op.to, must_exist=False)
        if destination.exists:
            raise self.fail(f"{op.to} already exists", op.to)
        source = self.open(file)
        document = self.document(file)
        copied = formats.parse(source.format, document.dump())
        mode = op.mode if isinstance(op, CopyFile) and op.mode is not None else source.mode
        self.create(op.to, copied, mode)
        if isinstance(op, MoveFile):
            self.remove(file)
            self.current = op.to
            self.describe(f"move {file} -> {op.to}")
        else:
            self.describe(f"copy {file} -> {op.to} (mode {mode:04o})")

    def convert(self, op: Convert, file: str) -> None:
        source = self.open(file)
        document = self.document(file)
        data = document.data()
        for key, type_name in op.types.items():
            if not _has(document, key):
                if op.missing_ok:
                    continue
                raise self.fail(f"types: key {key!r} not found", file)
            _set_plain(data, key, coerce(key, document.get(key), type_name))
        try:
            converted = formats.from_data(op.to_format, data)
        except FormatError as exc:
            raise self.fail(exc.message, op.to_file) from None
        same_file = op.to_file == file
        if not same_file and self.open(op.to_file, must_exist=False).exists:
            raise self.fail(f"{op.to_file} already exists", op.to_file)
        lost = document.comments()
        for comment in lost:
            self.note(
                op.to_file,
                f"comment not carried from {file} line {comment.line}: {comment.text}",
            )
        mode = op.mode if op.mode is not None else source.mode
        if not same_file and not op.keep_source:
            self.remove(file)
        self.create(op.to_file, converted, mode)
        self.current = op.to_file
        kept = "source kept" if op.keep_source or same_file else "source removed"
        self.describe(
            f"convert {file} ({source.format}) -> {op.to_file} ({op.to_format}), {kept}, "
            f"{len(lost)} comment(s) not carried"
        )

    def move_keys(self, op: MoveKeys, file: str) -> None:
        document = self.document(file)
        target = self.open(op.to_file, must_exist=False)
        if op.to_file == file:
            raise self.fail("move_keys into the same file", file)
        if target.exists:
            target_document = self.document(op.to_file)
        else:
            format_name = op.to_format or (
                self.state.known_formats.get(op.to_file) or self.files[file].format
            )
            target_document = formats.from_data(format_name, {})
        for key in op.keys:
            if not _has(document, key):
                raise self.fail(f"key {key!r} not found", file)
            value = document.get(key)
            self.state.secrets.add(value)
            self.state.secret_keys.add(key)
            target_document.set(key, value)
            document.delete(key)
        self.files[file].dirty = True
        self.create(op.to_file, target_document, op.mode)
        self.describe(f"move {', '.join(op.keys)} from {file} to {op.to_file} (mode {op.mode:04o})")

    def replace_text(self, op: ReplaceText, file: str) -> None:
        document = self.document(file)
        if not isinstance(document, TextDocument):
            raise self.fail(f"replace_text needs a text file, {file} is {document.format}", file)
        try:
            text, count = re.subn(op.pattern, op.replacement, document.text, count=op.count)
        except (re.error, IndexError) as exc:
            raise self.fail(f"bad replacement: {exc}", file) from None
        if count == 0 and not op.missing_ok:
            raise self.fail(f"the pattern {op.pattern!r} matched nothing", file)
        document.text = text
        self.files[file].dirty = True
        self.describe(f"replace {op.pattern!r} in {file}: {count} match(es)")

    def require_input(self, op: RequireInput, file: str) -> None:
        document = self.document(file)
        state = self.state
        if op.verifier is not None and not _has(document, op.verifier):
            raise self.fail(f"verifier key {op.verifier!r} not found", file)
        state.required.append(
            RequiredInput(
                op.name, op.prompt, op.secret, self.step.name, file, op.key, op.verifier is not None
            )
        )
        if op.secret:
            state.secret_keys.add(op.key)
        value = state.inputs.get(op.name)
        if value is not None and op.secret:
            state.secrets.add(value)
        if value is not None and op.verifier is not None:
            verifier = document.get(op.verifier)
            if not isinstance(verifier, str) or not check_verifier(verifier, value):
                state.input_errors[op.name] = (
                    fill_template(op.mismatch, document, state.secret_keys)
                    if op.mismatch
                    else f"does not match the verifier {op.verifier} in {file}"
                )
                value = None
        if value is None:
            if op.name not in state.missing:
                state.missing.append(op.name)
            value = f"<{op.name}>"
        document.set(op.key, value)
        self.files[file].dirty = True
        self.describe(f"set {op.key} = {self.show(op.key, value)} in {file} (input {op.name})")


_PLACEHOLDER = re.compile(r"\{([^{}|]+)(?:\|(path))?\}")


def fill_template(template: str, document: Document, secret: set[str]) -> str:
    """``template`` with each ``{key}`` replaced by that key's value in ``document``
    (``{key|path}``: the path of a URL value without its leading ``/``); a missing or secret key
    reads ``?``."""

    def value(match: re.Match[str]) -> str:
        key, part = match.group(1), match.group(2)
        if key in secret or not _has(document, key):
            return "?"
        text = str(document.get(key))
        return urlsplit(text).path.lstrip("/") if part == "path" else text

    return _PLACEHOLDER.sub(value, template)


def _has(document: Document, key: str) -> bool:
    try:
        return document.has(key)
    except FormatError:
        return False


def _set_plain(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def secret_keys(spec: Spec) -> set[str]:
    """The keys whose values are secret anywhere: declared ``secret``, moved by ``move_keys``,
    set by a secret ``require_input``."""
    keys = set(spec.secret)
    for step in spec.steps:
        for op in step.ops:
            if isinstance(op, MoveKeys):
                keys.update(op.keys)
            elif isinstance(op, RequireInput) and op.secret:
                keys.add(op.key)
    return keys


def plan_step(state: _State, step: Step) -> PlannedStep:
    """Apply ``step`` on the overlay of ``state``; its ops are played onto the overlay."""
    ops = _StepRun(state, step).run()
    for op in ops:
        state.view.apply(op)
    return PlannedStep(step, ops)


def plan_spec(
    spec: Spec,
    view: FileView,
    *,
    inputs: Mapping[str, str] | None = None,
    allowed_paths: Sequence[str] = DEFAULT_ALLOWED_PATHS,
) -> SpecPlan:
    """Detect the host's version through ``view`` and plan every step to ``spec.target``.

    Paths are confined first (:func:`~agent.specs.paths.confine` raises PathRefused before any
    file is read). Raises DetectionError for a config that matches no version or breaks its
    version's rules, PlanError naming the step, op and file when a step cannot be planned (also
    when the planned result is not detected as the target)."""
    paths = dict(confine(spec, view.root, allowed_paths))
    detection = detect(spec, view, paths)
    if detection.version is None or detection.version == spec.target:
        return SpecPlan(spec, detection.version)
    state = _State(
        spec=spec,
        view=PlannedView(view),
        paths=paths,
        inputs=dict(inputs or {}),
        secrets=Secrets(),
        secret_keys=secret_keys(spec),
        known_formats={},
    )
    originals = _Originals(view)
    planned = [plan_step(state, step) for step in spec.path_from(detection.version)]
    if not state.missing:
        _verify(spec, state, planned[-1].step.name)
    changes = _changes(planned, paths, originals, state)
    return SpecPlan(
        spec,
        detection.version,
        tuple(planned),
        changes,
        tuple(
            PlannedOp(op.step, op.index, op.op, state.secrets.redact(op.description), op.files)
            for op in state.operations
        ),
        tuple(state.required),
        tuple(state.missing),
        dict(state.input_errors),
    )


def _verify(spec: Spec, state: _State, last_step: str) -> None:
    try:
        after: Detection = detect(spec, state.view, state.paths)
    except PlanError:
        raise
    except Exception as exc:
        raise PlanError(
            state.secrets.redact(f"the planned files do not detect as the target: {exc}"),
            step=last_step,
        ) from None
    if after.version != spec.target:
        raise PlanError(
            f"the planned files are detected as version {after.version}, "
            f"not the target {spec.target}",
            step=last_step,
        )


class _Originals:
    """The files as they are before the run (read only for the diffs)."""

    def __init__(self, view: FileView) -> None:
        self.view = view

    def text(self, path: Path) -> str | None:
        if not self.view.exists(path):
            return None
        return self.view.read_bytes(path).decode("utf-8", errors="replace")

    def mode(self, path: Path) -> int | None:
        return self.view.mode(path) if self.view.exists(path) else None


def _diff_lines(text: str | None) -> list[str]:
    if text is None:
        return []
    return text.splitlines(keepends=True)


def unified_diff(file: str, before: str | None, after: str | None) -> str:
    """A unified diff of ``file`` (``/dev/null`` for a missing side)."""
    lines = difflib.unified_diff(
        _diff_lines(before),
        _diff_lines(after),
        fromfile=file if before is not None else "/dev/null",
        tofile=file if after is not None else "/dev/null",
    )
    out: list[str] = []
    for line in lines:
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def _changes(
    planned: list[PlannedStep], paths: Mapping[str, Path], originals: _Originals, state: _State
) -> tuple[FileChange, ...]:
    by_path = {path: file for file, path in paths.items()}
    final: dict[Path, FileOp] = {}
    for step in planned:
        for op in step.ops:
            final[op.path] = op
    changes: list[FileChange] = []
    for path, op in final.items():
        file = by_path[path]
        before = originals.text(path)
        old_mode = originals.mode(path)
        notes = [state.secrets.redact(note) for note in state.notes.get(file, [])]
        if isinstance(op, WriteFile):
            after = op.data.decode("utf-8", errors="replace")
            if old_mode is not None and old_mode != op.mode:
                notes.append(f"mode {old_mode:04o} -> {op.mode:04o}")
            elif old_mode is None:
                notes.append(f"new file, mode {op.mode:04o}")
            if before == after and old_mode == op.mode:
                continue
            diff = unified_diff(file, before, after)
            changes.append(
                FileChange(file, path, "write", op.mode, state.secrets.redact(diff), tuple(notes))
            )
        elif before is not None:
            diff = unified_diff(file, before, None)
            changes.append(
                FileChange(file, path, "delete", None, state.secrets.redact(diff), tuple(notes))
            )
    return tuple(changes)


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """One step planned on its own (the engine plans step by step, see
    :mod:`agent.specs.migration`): its ops, the inputs it asks for, which are missing and why a
    given value is wrong."""

    planned: PlannedStep
    inputs: tuple[RequiredInput, ...] = ()
    missing: tuple[str, ...] = ()
    input_errors: Mapping[str, str] = field(default_factory=dict)


def _formats_before(spec: Spec, step: Step) -> dict[str, str]:
    """The formats the ops of the steps listed before ``step`` give the files they create."""
    known: dict[str, str] = {}
    for earlier in spec.steps:
        if earlier is step:
            break
        for op in earlier.ops:
            to_format = op.to_format if isinstance(op, Convert | MoveKeys) else None
            if to_format and isinstance(op, Convert | MoveKeys):
                known[op.to_file] = to_format
    return known


def plan_one_step(
    spec: Spec,
    view: FileView,
    step: Step,
    paths: Mapping[str, Path],
    *,
    inputs: Mapping[str, str] | None = None,
    verify: bool = False,
) -> StepOutcome:
    """Plan ``step`` alone on ``view`` (which already holds the earlier steps' ops);
    ``paths`` from :func:`~agent.specs.paths.confine`. With ``verify`` (the last step) the
    planned result must detect as ``spec.target`` (PlanError naming the step otherwise)."""
    state = _State(
        spec=spec,
        view=PlannedView(view),
        paths=dict(paths),
        inputs=dict(inputs or {}),
        secrets=Secrets(),
        secret_keys=secret_keys(spec),
        known_formats=_formats_before(spec, step),
    )
    planned = plan_step(state, step)
    if verify and not state.missing:
        _verify(spec, state, step.name)
    return StepOutcome(
        planned, tuple(state.required), tuple(state.missing), dict(state.input_errors)
    )
