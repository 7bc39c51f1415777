"""Spec parsing and validation (agent/specs/validate.py): the sample spec, and every error with
its field path and line."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from agent.specs.errors import SpecError
from agent.specs.spec import Convert, MoveKeys, RenameKey, SetKey
from agent.specs.validate import parse_spec, parse_spec_json, spec_from_data

SAMPLE = (Path(__file__).parent / "specs" / "myapp.toml").read_text(encoding="utf-8")


def edited(old: str, new: str, text: str = SAMPLE) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def issues_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(text)
    return [str(issue) for issue in caught.value.issues]


def test_the_sample_parses_with_the_issues_names() -> None:
    spec = parse_spec(SAMPLE)
    assert (spec.id, spec.target) == ("myapp", "3")
    assert [v.version for v in spec.versions] == ["3", "2", "1"]
    assert spec.versions[1].when is not None and spec.versions[1].when.equals == "2"
    assert spec.versions[0].require == ("server.address", "db.url")
    first, second = spec.steps
    assert (first.name, first.from_, first.to) == ("rename_server_keys", "1", "2")
    assert first.ops[0] == RenameKey("server.addr", "server.address")
    assert first.ops[1] == SetKey("meta.schema", "2")
    convert, move = second.ops[1], second.ops[2]
    assert isinstance(convert, Convert) and convert.types == {"server.port": "int"}
    assert not convert.keep_source
    assert isinstance(move, MoveKeys) and move.mode == 0o600 and move.keys == ("db.password",)
    assert [step.name for step in spec.path_from("1")] == [first.name, second.name]
    assert spec.path_from("3") == ()


def test_the_same_spec_as_json_or_a_dict() -> None:
    data = tomllib.loads(SAMPLE)
    assert parse_spec_json(json.dumps(data)) == parse_spec(SAMPLE)
    assert spec_from_data(data) == parse_spec(SAMPLE)


CASES = [
    pytest.param(
        'op = "move_keys"',
        'op = "rename"',
        "line 38: steps[1].ops[2].op: unknown operation 'rename'",
        id="unknown-op",
    ),
    pytest.param(
        '{ op = "delete_key", key = "meta.schema" }',
        '{ op = "delete_key", key = "meta.schema", colour = 1 }',
        "line 36: steps[1].ops[0].colour: unknown field 'colour'",
        id="unknown-op-field",
    ),
    pytest.param(
        '{ op = "set_key", key = "meta.schema", value = "2" }',
        '{ op = "set_key", key = "meta.schema" }',
        "line 28: steps[0].ops[1].value: is required",
        id="missing-op-field",
    ),
    pytest.param(
        'to_format = "toml",',
        'to_format = "toml", keep_source = "yes",',
        "line 37: steps[1].ops[1].keep_source: must be true or false, not a string",
        id="wrong-type",
    ),
    pytest.param(
        'mode = "0600"',
        'mode = "600x"',
        'line 38: steps[1].ops[2].mode: must be an octal mode like "0600" (permission bits '
        "only), not '600x'",
        id="bad-mode",
    ),
    pytest.param(
        'mode = "0600"',
        'mode = "4755"',
        'line 38: steps[1].ops[2].mode: must be an octal mode like "0600" (permission bits '
        "only), not '4755'",
        id="setuid-mode",
    ),
    pytest.param(
        'mode = "0600"',
        "mode = 384",
        "line 38: steps[1].ops[2].mode: must be a string, not a number",
        id="numeric-mode",
    ),
    pytest.param(
        'file = "/etc/myapp/config.toml"\nformat',
        'file = "etc/myapp/config.toml"\nformat',
        "line 8: versions[0].file: must be an absolute path, not 'etc/myapp/config.toml'",
        id="relative-path",
    ),
    pytest.param(
        'version = "2"\nfile = "/etc/myapp/myapp.ini"',
        'version = "2"\nfile = "/etc/myapp/../shadow"',
        "line 13: versions[1].file: must not contain empty, '.' or '..' components: "
        "'/etc/myapp/../shadow'",
        id="dotdot-path",
    ),
    pytest.param(
        'to_file = "/etc/myapp/secrets.toml"',
        'to_file = "/etc/myapp/"',
        "line 38: steps[1].ops[2].to_file: must name a file, not a directory: '/etc/myapp/'",
        id="directory-path",
    ),
    pytest.param(
        'format = "toml"\nrequire',
        'format = "xml"\nrequire',
        "line 9: versions[0].format: unknown format 'xml' (known: ini, kv, env, json, toml, "
        "yaml, text)",
        id="unknown-format",
    ),
    pytest.param(
        'to_format = "toml"',
        'to_format = "hcl"',
        "line 37: steps[1].ops[1].to_format: unknown format 'hcl' (known: ini, kv, env, json, "
        "toml, yaml, text)",
        id="unknown-to-format",
    ),
    pytest.param(
        'version = "2"',
        'version = "3"',
        "line 12: versions[1].version: duplicate version '3' (also versions[0])",
        id="duplicate-version",
    ),
    pytest.param(
        'name = "ini_to_toml_split_password"',
        'name = "rename_server_keys"',
        "line 32: steps[1].name: duplicate step name 'rename_server_keys' (also steps[0])",
        id="duplicate-step",
    ),
    pytest.param(
        'from = "2"\nto = "3"',
        'from = "2"\nto = "4"',
        "line 34: steps[1].to: unknown version '4'",
        id="unknown-step-version",
    ),
    pytest.param(
        'target = "3"',
        'target = "9"',
        "line 3: target: '9' is not one of the versions",
        id="unknown-target",
    ),
    pytest.param(
        'from = "2"\nto = "3"',
        'from = "3"\nto = "2"',
        "line 33: steps[1].from: no step may leave the target version '3'",
        id="leaves-target",
    ),
    pytest.param(
        'from = "2"\nto = "3"',
        'from = "1"\nto = "3"',
        "line 33: steps[1].from: version '1' already has a step (steps[0])",
        id="two-steps",
    ),
    pytest.param(
        'from = "2"\nto = "3"',
        'from = "2"\nto = "1"',
        "line 34: steps[1].to: the steps from version '1' form a cycle",
        id="cycle",
    ),
    pytest.param(
        'target = "3"\n',
        'target = "3"\ncolour = "blue"\n',
        "line 4: colour: unknown field 'colour'",
        id="unknown-top-field",
    ),
    pytest.param(
        'when = { key = "meta.schema", equals = "2" }',
        'when = { key = "meta.schema", equals = "2", exists = true }',
        "line 15: versions[1].when: give either 'equals' or 'exists', not both",
        id="when-both",
    ),
    pytest.param(
        '"server.port" = "int"',
        '"server.port" = "integer"',
        "line 37: steps[1].ops[1].types.server.port: unknown type 'integer' (known: str, int, "
        "float, bool, list, table)",
        id="unknown-type",
    ),
    pytest.param(
        'from = "server.addr"',
        'from = "server..addr"',
        "line 27: steps[0].ops[0].from: must be a dotted key like 'section.name', not "
        "'server..addr'",
        id="bad-key",
    ),
    pytest.param(
        'require = ["server.addr"]',
        'require = ["server.addr"]\npattern = { "server.addr" = "(" }',
        "line 21: versions[2].pattern.server.addr: invalid regular expression: missing ), "
        "unterminated subpattern at position 0",
        id="bad-regex",
    ),
    pytest.param(
        'require = ["server.addr"]',
        'require = ["server.addr"]\nenum = { "server.addr" = [] }',
        "line 21: versions[2].enum.server.addr: must be a non-empty array of strings, numbers or "
        "booleans",
        id="empty-enum",
    ),
    pytest.param(
        'id = "myapp"',
        'id = "My App"',
        "line 1: id: must match [a-z0-9][a-z0-9_.-]{0,63}, not 'My App'",
        id="bad-id",
    ),
    pytest.param(
        '{ op = "delete_key", key = "meta.schema" },',
        '{ op = "replace_text", pattern = "a", replacement = "b" },',
        "line 36: steps[1].ops[0]: replace_text needs a text file, the current one is ini",
        id="replace-text-on-ini",
    ),
    pytest.param(
        '{ op = "delete_key", key = "meta.schema" },',
        '{ key = "meta.schema" },',
        "line 36: steps[1].ops[0].op: is required (one of: move_file, copy_file, delete_file, "
        "convert, rename_key, set_key, set_default, delete_key, move_keys, replace_text, chmod, "
        "require_input)",
        id="missing-op",
    ),
    pytest.param(
        '{ op = "delete_key", key = "meta.schema" },',
        '{ op = "require_input", name = "Bad Name", prompt = "x", key = "db.password" },',
        "line 36: steps[1].ops[0].name: must match [a-z0-9_]{1,64}, not 'Bad Name'",
        id="bad-input-name",
    ),
    pytest.param(
        '{ op = "delete_key", key = "meta.schema" },',
        '{ op = "delete_key", key = "meta.schema", when = { equals = "2" } },',
        "line 36: steps[1].ops[0].when.key: is required",
        id="op-when-without-key",
    ),
    pytest.param(
        '{ op = "rename_key", from = "server.addr", to = "server.address" },',
        '{ op = "rename_key", from = "server.addr", to = "server.address", missing_ok = 1 },',
        "line 27: steps[0].ops[0].missing_ok: must be true or false, not a number",
        id="rename-missing-ok",
    ),
    pytest.param(
        '{ op = "delete_key", key = "meta.schema" },',
        '{ op = "require_input", name = "pw", prompt = "x", key = "db.pw", mismatch = "" },',
        "line 36: steps[1].ops[0].mismatch: must be 1 to 200 characters",
        id="empty-mismatch",
    ),
    pytest.param(
        'require = ["server.addr"]',
        'require = ["server.addr"]\nrequire_with = { db = "db.url" }',
        "line 21: versions[2].require_with.db: must be an array of keys, not a string",
        id="require-with-not-keys",
    ),
    pytest.param(
        'require = ["server.addr"]',
        'require = ["server.addr"]\nverifiers = ["db..pw"]',
        "line 21: versions[2].verifiers[0]: must be a dotted key like 'section.name', not 'db..pw'",
        id="bad-verifier-key",
    ),
    pytest.param(
        'require = ["server.addr"]',
        'require = ["server.addr"]\nminimum = { "server.port" = "1" }',
        "line 21: versions[2].minimum.server.port: must be a number, not a string",
        id="minimum-not-a-number",
    ),
    pytest.param(
        'require = ["server.addr"]',
        'require = ["server.addr"]\nmessages = { "server.addr" = 3 }',
        "line 21: versions[2].messages.server.addr: must be a string, not a number",
        id="message-not-text",
    ),
    pytest.param(
        'require = ["server.addr"]',
        'require = ["server.addr"]\ncompanions = [{ file = "/etc/myapp/s", format = "ini", '
        'mode = "600x" }]',
        'line 21: versions[2].companions[0].mode: must be an octal mode like "0600" (permission '
        "bits only), not '600x'",
        id="companion-mode",
    ),
    pytest.param(
        'require = ["server.addr"]',
        'require = ["server.addr"]\ncompanions = [{ file = "etc/s", format = "ini" }]',
        "line 21: versions[2].companions[0].file: must be an absolute path, not 'etc/s'",
        id="companion-relative",
    ),
    pytest.param(
        'require = ["server.addr"]',
        'require = ["server.addr"]\ncompanions = [{ file = "/etc/s", format = "ini", x = 1 }]',
        "line 21: versions[2].companions[0].x: unknown field 'x'",
        id="companion-unknown-field",
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), CASES)
def test_each_validation_error_names_its_field_and_line(old: str, new: str, expected: str) -> None:
    assert expected in issues_of(edited(old, new))


def test_a_missing_field_names_the_parent_line() -> None:
    issues = issues_of(edited('name = "rename_server_keys"\n', ""))
    assert issues == ["line 22: steps[0].name: is required"]
    assert issues_of(edited('id = "myapp"\n', "")) == ["id: is required"]


def test_a_version_without_a_way_to_the_target() -> None:
    text = SAMPLE[: SAMPLE.index('[[steps]]\nname = "ini_to')]
    assert issues_of(text) == [
        "line 12: versions[1].version: no steps lead from version '2' to the target '3'",
        "line 17: versions[2].version: no steps lead from version '1' to the target '3'",
    ]


def test_every_error_is_collected_in_source_order() -> None:
    text = edited(
        'op = "move_keys"', 'op = "rename"', edited('format = "ini"\nwhen', 'format = "x"\nwhen')
    )
    assert issues_of(text) == [
        "line 14: versions[1].format: unknown format 'x' (known: ini, kv, env, json, toml, yaml, "
        "text)",
        "line 38: steps[1].ops[2].op: unknown operation 'rename'",
    ]


def test_toml_syntax_errors_name_their_line() -> None:
    issues = issues_of(edited('title = "myapp', "title = myapp"))
    assert len(issues) == 1 and issues[0].startswith("line 2: not valid TOML: ")


def test_dict_input_names_fields_without_lines() -> None:
    data = tomllib.loads(edited('op = "move_keys"', 'op = "rename"'))
    with pytest.raises(SpecError) as caught:
        spec_from_data(data)
    assert str(caught.value) == "steps[1].ops[2].op: unknown operation 'rename'"
    with pytest.raises(SpecError, match="must be a JSON object"):
        parse_spec_json("[1]")


def test_the_language_additions_reach_the_model() -> None:
    text = edited(
        'require = ["server.addr"]',
        'require = ["server.addr"]\nrequire_with = { db = ["db.url"] }\nverifiers = ["db.v"]\n'
        'messages = { "server.port" = "must be a port" }\n'
        'companions = [{ file = "/etc/myapp/s.ini", format = "ini", require = ["a.b"], '
        'mode = "0600" }]',
    )
    text = edited(
        '{ op = "rename_key", from = "server.addr", to = "server.address" },',
        '{ op = "rename_key", from = "server.addr", to = "server.address", missing_ok = true, '
        'when = { key = "server.addr" } },',
        text,
    )
    spec = parse_spec(text)
    version = spec.version("1")
    assert version.require_with == {"db": ("db.url",)}
    assert version.verifiers == ("db.v",) and version.messages == {"server.port": "must be a port"}
    (companion,) = version.companions
    assert (companion.file, companion.format, companion.require, companion.mode) == (
        "/etc/myapp/s.ini",
        "ini",
        ("a.b",),
        0o600,
    )
    assert "/etc/myapp/s.ini" in spec.files()
    rename = spec.steps[0].ops[0]
    assert isinstance(rename, RenameKey) and rename.missing_ok
    assert rename.when is not None and rename.when.key == "server.addr"
