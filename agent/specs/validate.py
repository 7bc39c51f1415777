"""Reading and validating a spec: TOML text, JSON text or a JSON-compatible dict -> :class:`Spec`.

Every problem is collected (not only the first) into one :class:`SpecError`; each names its field
path (``steps[1].ops[2].op: unknown operation 'rename'``) and, for TOML input, its line. Checked:
the fields of every table (types, required ones present, unknown ones refused by name), paths
(absolute, no ``.``/``..`` components), modes (``"0600"``), formats, keys, regular expressions,
and that the versions form a chain to ``target``: unique version ids and step names, every step
between known versions, at most one step leaving a version, none leaving the target, and the
target reachable from every other version.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from agent.specs.errors import SpecError, SpecIssue
from agent.specs.locate import field_lines, join, line_of
from agent.specs.spec import (
    FORMATS,
    TYPE_NAMES,
    Chmod,
    Companion,
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
    Version,
    When,
)

SPEC_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
INPUT_NAME = re.compile(r"[a-z0-9_]{1,64}")
VERSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MODE = re.compile(r"0?[0-7]{3}")
MAX_TITLE = 200


def parse_spec(text: str) -> Spec:
    """The spec in TOML ``text``; raises :class:`SpecError` listing every problem with its
    line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = int(match.group(1)) if match else 0
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise SpecError([SpecIssue("", f"not valid TOML: {message}", line)]) from None
    return spec_from_data(data, lines=field_lines(text))


def parse_spec_json(text: str) -> Spec:
    """The spec in JSON ``text`` (the same fields as the TOML form)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SpecError([SpecIssue("", f"not valid JSON: {exc}")]) from None
    if not isinstance(data, dict):
        raise SpecError([SpecIssue("", "must be a JSON object")])
    return spec_from_data(data)


def spec_from_data(data: Mapping[str, Any], *, lines: Mapping[str, int] | None = None) -> Spec:
    """The spec in the JSON-compatible ``data``; ``lines`` (field path -> line) lets errors name
    their line. Raises :class:`SpecError`."""
    checker = _Checker(dict(lines or {}))
    spec = checker.spec(data)
    if checker.issues or spec is None:
        raise SpecError(checker.issues)
    return spec


@dataclass(frozen=True, slots=True)
class _Field:
    kind: str
    required: bool = False


_FILE = _Field("path")
OP_FIELDS: dict[str, dict[str, _Field]] = {
    "move_file": {"to": _Field("path", True), "file": _FILE},
    "copy_file": {"to": _Field("path", True), "mode": _Field("mode"), "file": _FILE},
    "delete_file": {"file": _FILE},
    "convert": {
        "to_file": _Field("path", True),
        "to_format": _Field("format", True),
        "types": _Field("types"),
        "keep_source": _Field("bool"),
        "mode": _Field("mode"),
        "missing_ok": _Field("bool"),
        "file": _FILE,
    },
    "rename_key": {
        "from": _Field("key", True),
        "to": _Field("key", True),
        "missing_ok": _Field("bool"),
        "file": _FILE,
    },
    "set_key": {"key": _Field("key", True), "value": _Field("value", True), "file": _FILE},
    "set_default": {"key": _Field("key", True), "value": _Field("value", True), "file": _FILE},
    "delete_key": {"key": _Field("key", True), "missing_ok": _Field("bool"), "file": _FILE},
    "move_keys": {
        "keys": _Field("keys", True),
        "to_file": _Field("path", True),
        "mode": _Field("mode"),
        "to_format": _Field("format"),
        "file": _FILE,
    },
    "replace_text": {
        "pattern": _Field("regex", True),
        "replacement": _Field("str", True),
        "count": _Field("count"),
        "missing_ok": _Field("bool"),
        "file": _FILE,
    },
    "chmod": {"mode": _Field("mode", True), "file": _FILE},
    "require_input": {
        "name": _Field("input_name", True),
        "prompt": _Field("prompt", True),
        "key": _Field("key", True),
        "secret": _Field("bool"),
        "verifier": _Field("key"),
        "mismatch": _Field("prompt"),
        "file": _FILE,
    },
}
# Every operation may carry a condition on its file: it is skipped when the condition fails.
for _fields in OP_FIELDS.values():
    _fields["when"] = _Field("when")
# Ops that read or write keys need a format with keys; replace_text needs a text file.
KEY_OPS = frozenset(
    {"rename_key", "set_key", "set_default", "delete_key", "move_keys", "require_input", "convert"}
)

TOP_FIELDS = {
    "id": _Field("spec_id", True),
    "title": _Field("title", True),
    "target": _Field("version", True),
    "versions": _Field("tables", True),
    "steps": _Field("tables"),
    "secret": _Field("keys"),
}
VERSION_FIELDS = {
    "version": _Field("version", True),
    "file": _Field("path", True),
    "format": _Field("format", True),
    "require": _Field("keys"),
    "when": _Field("when"),
    "allow_only": _Field("allow_keys"),
    "types": _Field("types"),
    "enum": _Field("enum"),
    "pattern": _Field("patterns"),
    "minimum": _Field("minimum"),
    "messages": _Field("messages"),
    "require_with": _Field("require_with"),
    "verifiers": _Field("keys"),
    "companions": _Field("tables"),
}
COMPANION_FIELDS = {
    "file": _Field("path", True),
    "format": _Field("format", True),
    "require": _Field("keys"),
    "mode": _Field("mode"),
    "require_with": _Field("require_with"),
}
STEP_FIELDS = {
    "name": _Field("step_name", True),
    "from": _Field("version", True),
    "to": _Field("version", True),
    "description": _Field("title"),
    "ops": _Field("tables", True),
}
WHEN_FIELDS = {"key": _Field("key", True), "equals": _Field("scalar"), "exists": _Field("bool")}


def check_path(value: str) -> str | None:
    """Why ``value`` is not an acceptable spec path (None if it is)."""
    if not value.startswith("/"):
        return f"must be an absolute path, not {value!r}"
    if "\x00" in value:
        return "must not contain a NUL character"
    parts = value.split("/")[1:]
    if value == "/" or value.endswith("/"):
        return f"must name a file, not a directory: {value!r}"
    if any(part in ("", ".", "..") for part in parts):
        return f"must not contain empty, '.' or '..' components: {value!r}"
    return None


def check_key(value: str) -> str | None:
    """Why ``value`` is not a dotted key (None if it is)."""
    parts = value.split(".")
    if not value or any(not part or part != part.strip() for part in parts):
        return f"must be a dotted key like 'section.name', not {value!r}"
    return None


def parse_mode(value: str) -> int:
    """``"0600"`` -> 0o600 (the caller has checked :data:`MODE`)."""
    return int(value, 8)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _is_value(value: Any) -> bool:
    if _is_scalar(value):
        return True
    if isinstance(value, list):
        return all(_is_value(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_value(item) for key, item in value.items())
    return False


class _Checker:
    def __init__(self, lines: dict[str, int]) -> None:
        self.lines = lines
        self.issues: list[SpecIssue] = []

    def fail(self, field: str, message: str) -> None:
        self.issues.append(SpecIssue(field, message, line_of(field, self.lines)))

    # ------------------------------------------------------------ values by kind

    def _string(self, path: str, value: Any, check: Callable[[str], str | None]) -> Any:
        if not isinstance(value, str):
            self.fail(path, f"must be a string, not {_type_name(value)}")
            return None
        problem = check(value)
        if problem is not None:
            self.fail(path, problem)
            return None
        return value

    def _keys(self, path: str, value: Any, *, wildcard: bool = False) -> Any:
        if not isinstance(value, list):
            self.fail(path, f"must be an array of keys, not {_type_name(value)}")
            return None
        keys: list[str] = []
        for index, item in enumerate(value):
            item_path = f"{path}[{index}]"
            if wildcard and isinstance(item, str) and item.endswith(".*"):
                checked = self._string(item_path, item[:-2], check_key)
                key = None if checked is None else item
            else:
                key = self._string(item_path, item, check_key)
            if key is not None:
                keys.append(key)
        if len(keys) != len(value):
            return None
        return tuple(keys)

    def _key_table(self, path: str, value: Any, item: Callable[[str, Any], Any]) -> Any:
        if not isinstance(value, dict):
            self.fail(path, f"must be a table, not {_type_name(value)}")
            return None
        result: dict[str, Any] = {}
        ok = True
        for key, entry in value.items():
            entry_path = join(path, key)
            if check_key(key) is not None:
                self.fail(entry_path, f"{check_key(key)}")
                ok = False
                continue
            checked = item(entry_path, entry)
            if checked is None:
                ok = False
            else:
                result[key] = checked
        return result if ok else None

    def _type_name(self, path: str, value: Any) -> Any:
        if value not in TYPE_NAMES:
            self.fail(path, f"unknown type {value!r} (known: {', '.join(TYPE_NAMES)})")
            return None
        return value

    def _number(self, path: str, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, f"must be a number, not {_type_name(value)}")
            return None
        return value

    def _enum(self, path: str, value: Any) -> Any:
        if not isinstance(value, list) or not value or not all(_is_scalar(v) for v in value):
            self.fail(path, "must be a non-empty array of strings, numbers or booleans")
            return None
        return tuple(value)

    def _regex(self, path: str, value: Any) -> Any:
        if not isinstance(value, str):
            self.fail(path, f"must be a string, not {_type_name(value)}")
            return None
        try:
            re.compile(value)
        except re.error as exc:
            self.fail(path, f"invalid regular expression: {exc}")
            return None
        return value

    def value(self, path: str, kind: str, value: Any) -> Any:
        """``value`` checked and converted for ``kind``; None (after an issue) when wrong."""
        if kind == "path":
            return self._string(path, value, check_path)
        if kind == "key":
            return self._string(path, value, check_key)
        if kind == "format":
            return self._string(
                path,
                value,
                lambda v: (
                    None if v in FORMATS else f"unknown format {v!r} (known: {', '.join(FORMATS)})"
                ),
            )
        if kind == "mode":
            checked = self._string(
                path,
                value,
                lambda v: (
                    None
                    if MODE.fullmatch(v)
                    else f'must be an octal mode like "0600" (permission bits only), not {v!r}'
                ),
            )
            return None if checked is None else parse_mode(checked)
        if kind in ("spec_id", "step_name", "version", "input_name"):
            pattern = {
                "spec_id": SPEC_ID,
                "step_name": STEP_NAME,
                "version": VERSION_ID,
                "input_name": INPUT_NAME,
            }[kind]
            return self._string(
                path,
                value,
                lambda v: (
                    None if pattern.fullmatch(v) else f"must match {pattern.pattern}, not {v!r}"
                ),
            )
        if kind in ("title", "prompt"):
            return self._string(
                path,
                value,
                lambda v: (
                    None if 0 < len(v) <= MAX_TITLE else f"must be 1 to {MAX_TITLE} characters"
                ),
            )
        if kind == "str":
            return self._string(path, value, lambda v: None)
        if kind == "bool":
            if not isinstance(value, bool):
                self.fail(path, f"must be true or false, not {_type_name(value)}")
                return None
            return value
        if kind == "count":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                self.fail(path, "must be an integer >= 0")
                return None
            return value
        if kind == "keys":
            return self._keys(path, value)
        if kind == "allow_keys":
            return self._keys(path, value, wildcard=True)
        if kind == "types":
            return self._key_table(path, value, self._type_name)
        if kind == "enum":
            return self._key_table(path, value, self._enum)
        if kind == "patterns":
            return self._key_table(path, value, self._regex)
        if kind == "minimum":
            return self._key_table(path, value, self._number)
        if kind == "messages":
            return self._key_table(path, value, lambda p, v: self.value(p, "prompt", v))
        if kind == "require_with":
            return self._key_table(path, value, self._keys)
        if kind == "regex":
            return self._regex(path, value)
        if kind == "scalar":
            if not _is_scalar(value):
                self.fail(path, "must be a string, number or boolean")
                return None
            return value
        if kind == "value":
            if not _is_value(value):
                self.fail(path, "must be a string, number, boolean, array or table")
                return None
            return value
        if kind == "when":
            return self.when(path, value)
        if kind == "tables":
            if not isinstance(value, list):
                self.fail(path, f"must be an array of tables, not {_type_name(value)}")
                return None
            return value
        raise AssertionError(kind)

    def table(self, path: str, data: Any, fields: Mapping[str, _Field]) -> dict[str, Any] | None:
        """The checked fields of one table; None if any is wrong (each is reported)."""
        if not isinstance(data, dict):
            self.fail(path, f"must be a table, not {_type_name(data)}")
            return None
        before = len(self.issues)
        result: dict[str, Any] = {}
        for name in data:
            if name not in fields:
                self.fail(join(path, name), f"unknown field {name!r}")
        for name, spec in fields.items():
            if name not in data:
                if spec.required:
                    self.fail(join(path, name), "is required")
                continue
            checked = self.value(join(path, name), spec.kind, data[name])
            if checked is not None:
                result[name] = checked
        return result if len(self.issues) == before else None

    # ------------------------------------------------------------ structures

    def when(self, path: str, data: Any) -> When | None:
        fields = self.table(path, data, WHEN_FIELDS)
        if fields is None:
            return None
        if "equals" in fields and "exists" in fields:
            self.fail(path, "give either 'equals' or 'exists', not both")
            return None
        return When(fields["key"], fields.get("equals"), fields.get("exists", True))

    def version(self, path: str, data: Any) -> Version | None:
        fields = self.table(path, data, VERSION_FIELDS)
        if fields is None:
            return None
        if fields["format"] == "text":
            for name in (
                "require",
                "when",
                "allow_only",
                "types",
                "enum",
                "pattern",
                "minimum",
                "messages",
                "require_with",
                "verifiers",
            ):
                if name in fields:
                    self.fail(join(path, name), "a text file has no keys")
                    return None
        companions: list[Companion] = []
        for index, raw in enumerate(fields.get("companions", [])):
            companion = self.companion(f"{join(path, 'companions')}[{index}]", raw)
            if companion is None:
                return None
            companions.append(companion)
        return Version(
            version=fields["version"],
            file=fields["file"],
            format=fields["format"],
            require=fields.get("require", ()),
            when=fields.get("when"),
            allow_only=fields.get("allow_only"),
            types=fields.get("types", {}),
            enum=fields.get("enum", {}),
            pattern=fields.get("pattern", {}),
            minimum=fields.get("minimum", {}),
            messages=fields.get("messages", {}),
            require_with=fields.get("require_with", {}),
            verifiers=fields.get("verifiers", ()),
            companions=tuple(companions),
        )

    def companion(self, path: str, data: Any) -> Companion | None:
        fields = self.table(path, data, COMPANION_FIELDS)
        if fields is None:
            return None
        if fields["format"] == "text" and fields.get("require"):
            self.fail(join(path, "require"), "a text file has no keys")
            return None
        return Companion(
            fields["file"],
            fields["format"],
            fields.get("require", ()),
            fields.get("mode"),
            fields.get("require_with", {}),
        )

    def op(self, path: str, data: Any) -> Op | None:
        if not isinstance(data, dict):
            self.fail(path, f"must be a table, not {_type_name(data)}")
            return None
        name = data.get("op")
        if name is None:
            self.fail(join(path, "op"), f"is required (one of: {', '.join(OP_FIELDS)})")
            return None
        if not isinstance(name, str):
            self.fail(join(path, "op"), f"must be a string, not {_type_name(name)}")
            return None
        if name not in OP_FIELDS:
            self.fail(join(path, "op"), f"unknown operation {name!r}")
            return None
        rest = {key: value for key, value in data.items() if key != "op"}
        fields = self.table(path, rest, OP_FIELDS[name])
        if fields is None:
            return None
        return _build_op(name, fields)

    def step(self, path: str, data: Any) -> Step | None:
        fields = self.table(path, data, STEP_FIELDS)
        ops_data = data.get("ops") if isinstance(data, dict) else None
        ops: list[Op] = []
        ok = fields is not None
        if isinstance(ops_data, list):
            if not ops_data:
                self.fail(join(path, "ops"), "must hold at least one operation")
                ok = False
            for index, op_data in enumerate(ops_data):
                op = self.op(f"{path}.ops[{index}]", op_data)
                if op is None:
                    ok = False
                else:
                    ops.append(op)
        if not ok or fields is None:
            return None
        return Step(
            fields["name"], fields["from"], fields["to"], tuple(ops), fields.get("description", "")
        )

    def spec(self, data: Mapping[str, Any]) -> Spec | None:
        fields = self.table("", dict(data), TOP_FIELDS)
        versions: list[Version | None] = []
        steps: list[Step | None] = []
        raw_versions = data.get("versions")
        if isinstance(raw_versions, list):
            if not raw_versions:
                self.fail("versions", "must list at least one version")
            versions = [self.version(f"versions[{i}]", v) for i, v in enumerate(raw_versions)]
        raw_steps = data.get("steps")
        if isinstance(raw_steps, list):
            steps = [self.step(f"steps[{i}]", s) for i, s in enumerate(raw_steps)]
        target = fields.get("target") if fields is not None else data.get("target")
        self.chain(target if isinstance(target, str) else None, versions, steps)
        if fields is None or self.issues:
            return None
        return Spec(
            id=fields["id"],
            title=fields["title"],
            target=fields["target"],
            versions=tuple(v for v in versions if v is not None),
            steps=tuple(s for s in steps if s is not None),
            secret=fields.get("secret", ()),
        )

    def chain(
        self, target: str | None, versions: list[Version | None], steps: list[Step | None]
    ) -> None:
        """The versions and steps form one chain to ``target`` (checks what parsed)."""
        known: dict[str, int] = {}
        for index, version in enumerate(versions):
            if version is None:
                continue
            if version.version in known:
                self.fail(
                    f"versions[{index}].version",
                    f"duplicate version {version.version!r} "
                    f"(also versions[{known[version.version]}])",
                )
            else:
                known[version.version] = index
        if target is not None and None not in versions and target not in known:
            self.fail("target", f"{target!r} is not one of the versions")
            return
        names: dict[str, int] = {}
        leaving: dict[str, int] = {}
        for index, step in enumerate(steps):
            if step is None:
                continue
            path = f"steps[{index}]"
            if step.name in names:
                self.fail(
                    f"{path}.name",
                    f"duplicate step name {step.name!r} (also steps[{names[step.name]}])",
                )
            names.setdefault(step.name, index)
            if None in versions:
                continue
            for end, value in (("from", step.from_), ("to", step.to)):
                if value not in known:
                    self.fail(f"{path}.{end}", f"unknown version {value!r}")
            if step.from_ == step.to:
                self.fail(f"{path}.to", "a step must lead to another version")
            elif step.from_ == target:
                self.fail(f"{path}.from", f"no step may leave the target version {target!r}")
            elif step.from_ in leaving:
                self.fail(
                    f"{path}.from",
                    f"version {step.from_!r} already has a step (steps[{leaving[step.from_]}])",
                )
            else:
                leaving[step.from_] = index
            self.current_file_formats(path, step, versions)
        if target is None or None in versions or None in steps or self.issues:
            return
        self.reachability(target, known, leaving, steps)

    def reachability(
        self,
        target: str,
        known: dict[str, int],
        leaving: dict[str, int],
        steps: list[Step | None],
    ) -> None:
        for version, index in known.items():
            seen = {version}
            current = version
            while current != target:
                step_index = leaving.get(current)
                if step_index is None:
                    self.fail(
                        f"versions[{index}].version",
                        f"no steps lead from version {version!r} to the target {target!r}",
                    )
                    break
                step = steps[step_index]
                assert step is not None
                current = step.to
                if current in seen:
                    self.fail(
                        f"steps[{step_index}].to",
                        f"the steps from version {version!r} form a cycle",
                    )
                    break
                seen.add(current)

    def current_file_formats(self, path: str, step: Step, versions: list[Version | None]) -> None:
        """Ops without ``file`` act on the current file: its format must fit the op."""
        source = next((v for v in versions if v is not None and v.version == step.from_), None)
        if source is None:
            return
        current_format = source.format
        for index, op in enumerate(step.ops):
            op_path = f"{path}.ops[{index}]"
            if op.file is None:
                if op.op in KEY_OPS and current_format == "text":
                    self.fail(op_path, f"{op.op} needs a file with keys, the current one is text")
                if op.op == "replace_text" and current_format != "text":
                    self.fail(
                        op_path,
                        f"replace_text needs a text file, the current one is {current_format}",
                    )
            if isinstance(op, Convert):
                current_format = op.to_format


def _build_op(name: str, fields: dict[str, Any]) -> Op:
    op = _make_op(name, fields)
    when = fields.get("when")
    return op if when is None else replace(op, when=when)


def _make_op(name: str, fields: dict[str, Any]) -> Op:
    file = fields.get("file")
    if name == "move_file":
        return MoveFile(fields["to"], file)
    if name == "copy_file":
        return CopyFile(fields["to"], file, fields.get("mode"))
    if name == "delete_file":
        return DeleteFile(file)
    if name == "convert":
        return Convert(
            fields["to_file"],
            fields["to_format"],
            fields.get("types", {}),
            fields.get("keep_source", False),
            fields.get("mode"),
            file,
            fields.get("missing_ok", False),
        )
    if name == "rename_key":
        return RenameKey(fields["from"], fields["to"], fields.get("missing_ok", False), file)
    if name == "set_key":
        return SetKey(fields["key"], fields["value"], file)
    if name == "set_default":
        return SetDefault(fields["key"], fields["value"], file)
    if name == "delete_key":
        return DeleteKey(fields["key"], fields.get("missing_ok", False), file)
    if name == "move_keys":
        return MoveKeys(
            fields["keys"],
            fields["to_file"],
            fields.get("mode", 0o600),
            fields.get("to_format"),
            file,
        )
    if name == "replace_text":
        return ReplaceText(
            fields["pattern"],
            fields["replacement"],
            fields.get("count", 0),
            fields.get("missing_ok", False),
            file,
        )
    if name == "chmod":
        return Chmod(fields["mode"], file)
    assert name == "require_input"
    return RequireInput(
        fields["name"],
        fields["prompt"],
        fields["key"],
        fields.get("secret", True),
        fields.get("verifier"),
        file,
        fields.get("mismatch", ""),
    )


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__
