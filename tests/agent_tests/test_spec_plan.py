"""Detection, confinement and planning of specs (agent/specs/detect.py, paths.py, plan.py) on
tmp_path roots: the sample spec from v1, every operation, errors, and redaction."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from agent_tests.spec_testlib import PASSWORD, SAMPLE, V1_INI

from agent.migrations.model import DetectionError, DiskView, RemoveFile, WriteFile
from agent.migrations.verifier import make_verifier
from agent.specs.detect import detect
from agent.specs.errors import PathRefused, PlanError
from agent.specs.paths import confine
from agent.specs.plan import SpecPlan, plan_spec
from agent.specs.spec import Spec, Version
from agent.specs.validate import parse_spec, spec_from_data


def write(root: Path, path: str, text: str, mode: int = 0o644) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    target.chmod(mode)
    return target


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode & 0o777)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_sample_v1_plans_to_v3(tmp_path: Path) -> None:
    spec = parse_spec(SAMPLE)
    write(tmp_path, "/etc/myapp/myapp.ini", V1_INI)
    before = snapshot(tmp_path)
    plan = plan_spec(spec, DiskView(tmp_path))
    assert snapshot(tmp_path) == before  # planning writes nothing
    assert plan.detected == "1" and plan.needed
    assert [p.step.name for p in plan.steps] == ["rename_server_keys", "ini_to_toml_split_password"]

    ini = tmp_path / "etc/myapp/myapp.ini"
    first = plan.steps[0].ops
    assert first == (WriteFile(ini, first[0].data, 0o644),)  # type: ignore[union-attr]
    assert isinstance(first[0], WriteFile)
    assert (
        first[0].data.decode() == V1_INI.replace("addr =", "address =") + "\n[meta]\nschema = 2\n"
    )

    writes = plan.writes()
    config = tomllib.loads(writes[tmp_path / "etc/myapp/config.toml"].data.decode())
    assert config == {
        "server": {"address": "0.0.0.0", "port": 8080},
        "db": {"url": "postgresql://db/app"},
    }
    assert type(config["server"]["port"]) is int
    secrets = writes[tmp_path / "etc/myapp/secrets.toml"]
    assert secrets.mode == 0o600
    assert tomllib.loads(secrets.data.decode()) == {"db": {"password": PASSWORD}}
    assert plan.deletes() == (ini,)
    assert isinstance(plan.steps[1].ops[-1], RemoveFile)

    changes = {change.file: change for change in plan.changes}
    assert changes["/etc/myapp/myapp.ini"].action == "delete"
    assert changes["/etc/myapp/config.toml"].notes == (
        "comment not carried from /etc/myapp/myapp.ini line 1: # myapp settings",
        "comment not carried from /etc/myapp/myapp.ini line 3: # where it listens",
        "new file, mode 0644",
    )
    assert "+port = 8080\n" in changes["/etc/myapp/config.toml"].diff
    assert '+password = "********"\n' in changes["/etc/myapp/secrets.toml"].diff
    assert "-password = ********\n" in changes["/etc/myapp/myapp.ini"].diff
    assert [op.op for op in plan.operations] == [
        "rename_key",
        "set_key",
        "delete_key",
        "convert",
        "move_keys",
    ]
    assert_no_secret(plan, PASSWORD)


def assert_no_secret(plan: SpecPlan, secret: str) -> None:
    shown = [repr(plan), *(c.diff for c in plan.changes), *(str(c.notes) for c in plan.changes)]
    shown += [op.description for op in plan.operations]
    assert all(secret not in text for text in shown)


def test_a_v2_host_plans_only_the_last_step(tmp_path: Path) -> None:
    write(
        tmp_path,
        "/etc/myapp/myapp.ini",
        V1_INI.replace("addr =", "address =") + "[meta]\nschema = 2\n",
    )
    plan = plan_spec(parse_spec(SAMPLE), DiskView(tmp_path))
    assert plan.detected == "2"
    assert [p.step.name for p in plan.steps] == ["ini_to_toml_split_password"]


def test_a_v3_host_is_at_the_target(tmp_path: Path) -> None:
    write(tmp_path, "/etc/myapp/config.toml", '[server]\naddress = "a"\n[db]\nurl = "u"\n')
    write(tmp_path, "/etc/myapp/myapp.ini", V1_INI)  # a leftover: version 3 is tried first
    plan = plan_spec(parse_spec(SAMPLE), DiskView(tmp_path))
    assert (plan.detected, plan.needed, plan.changes) == ("3", False, ())


def test_no_file_at_all_detects_nothing(tmp_path: Path) -> None:
    plan = plan_spec(parse_spec(SAMPLE), DiskView(tmp_path))
    assert (plan.detected, plan.needed) == (None, False)


def test_a_broken_file_is_a_detection_error_with_its_line(tmp_path: Path) -> None:
    write(tmp_path, "/etc/myapp/myapp.ini", "[server]\naddr = 1\ngarbage\n")
    with pytest.raises(DetectionError) as caught:
        plan_spec(parse_spec(SAMPLE), DiskView(tmp_path))
    assert caught.value.line == 3
    assert "/etc/myapp/myapp.ini:3: expected '[section]' or 'key = value'" in str(caught.value)


def test_a_file_matching_no_version_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "/etc/myapp/myapp.ini", "[server]\nport = 1\n")
    # Version 2's `when` does not hold, so version 1 is the one candidate: its own rules are
    # the error (it used to read "the files match no version: ... missing 'server.addr'").
    with pytest.raises(
        DetectionError,
        match=r"^/etc/myapp/myapp.ini: not a valid version 1: missing required key 'server\.addr'$",
    ):
        detect(parse_spec(SAMPLE), DiskView(tmp_path))


# ---------------------------------------------------------------- version validation


def one_version(**extra: Any) -> Spec:
    version: dict[str, Any] = {"version": "1", "file": "/etc/app.json", "format": "json", **extra}
    return spec_from_data({"id": "app", "title": "t", "target": "1", "versions": [version]})


@pytest.mark.parametrize(
    ("rules", "content", "message"),
    [
        ({"require": ["a.b"]}, {"a": {}}, None),
        (
            {"allow_only": ["a", "b.*"]},
            {"a": 1, "b": {"c": 1}, "z": 2},
            "unknown key 'z' (not in allow_only)",
        ),
        ({"types": {"a": "int"}}, {"a": "1"}, "key 'a' must be of type int"),
        ({"types": {"a": "int"}}, {"a": True}, "key 'a' must be of type int"),
        ({"enum": {"a": ["x", "y"]}}, {"a": "z"}, "key 'a' must be one of 'x', 'y'"),
        ({"pattern": {"a": "[0-9]+"}}, {"a": "12a"}, "key 'a' does not match the pattern '[0-9]+'"),
    ],
)
def test_version_rules(
    tmp_path: Path, rules: dict[str, Any], content: dict[str, Any], message: str | None
) -> None:
    import json

    write(tmp_path, "/etc/app.json", json.dumps(content))
    spec = one_version(**rules)
    if message is None:  # a missing required key of the only candidate: its validation error
        with pytest.raises(DetectionError, match=r"missing required key 'a\.b'"):
            detect(spec, DiskView(tmp_path))
        return
    with pytest.raises(DetectionError) as caught:
        detect(spec, DiskView(tmp_path))
    assert str(caught.value) == f"/etc/app.json: not a valid version 1: {message}"


def test_valid_values_pass_the_rules(tmp_path: Path) -> None:
    write(tmp_path, "/etc/app.json", '{"a": 5, "b": "x"}')
    spec = one_version(
        types={"a": "int"}, enum={"b": ["x"]}, pattern={"b": "x"}, allow_only=["a", "b"]
    )
    assert detect(spec, DiskView(tmp_path)).version == "1"


# ---------------------------------------------------------------- allowed_paths


def test_paths_outside_allowed_are_refused_before_reading(tmp_path: Path) -> None:
    spec = parse_spec(SAMPLE.replace("/etc/myapp/secrets.toml", "/var/lib/secrets.toml"))
    with pytest.raises(PathRefused) as caught:
        plan_spec(spec, DiskView(tmp_path))
    assert caught.value.refused == (
        ("/var/lib/secrets.toml", "resolves there, not under the allowed paths (/etc)"),
    )
    assert (
        confine(spec, tmp_path, ["/etc", "/var/lib"])["/var/lib/secrets.toml"]
        == tmp_path / "var/lib/secrets.toml"
    )


class CountingView(DiskView):
    reads = 0

    def read_bytes(self, path: Path) -> bytes:
        CountingView.reads += 1
        return super().read_bytes(path)


def test_a_symlink_escaping_the_allowed_paths_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside, "/myapp.ini", V1_INI)
    (tmp_path / "root/etc").mkdir(parents=True)
    os.symlink(outside, tmp_path / "root/etc/myapp")
    view = CountingView(tmp_path / "root")
    with pytest.raises(PathRefused) as caught:
        plan_spec(parse_spec(SAMPLE), view)
    assert [path for path, _why in caught.value.refused] == [
        "/etc/myapp/config.toml",
        "/etc/myapp/myapp.ini",
        "/etc/myapp/secrets.toml",
    ]
    assert CountingView.reads == 0
    # A symlink that stays inside the allowed paths is fine.
    os.remove(tmp_path / "root/etc/myapp")
    write(tmp_path / "root", "/etc/real/myapp.ini", V1_INI)
    os.symlink(tmp_path / "root/etc/real", tmp_path / "root/etc/myapp")
    assert plan_spec(parse_spec(SAMPLE), DiskView(tmp_path / "root")).detected == "1"


def test_dotdot_is_refused_by_validation_and_by_confinement(tmp_path: Path) -> None:
    spec = parse_spec(SAMPLE)
    sneaky = Spec(
        spec.id,
        spec.title,
        "1",
        (Version("1", "/etc/../../../outside.ini", "ini"), Version("2", "/etc/../root.ini", "ini")),
        (),
    )
    with pytest.raises(PathRefused) as caught:
        confine(sneaky, tmp_path)
    assert caught.value.refused == (
        ("/etc/../../../outside.ini", "leaves the root"),
        ("/etc/../root.ini", "resolves there, not under the allowed paths (/etc)"),
    )


# ---------------------------------------------------------------- every operation


def ops_spec(
    ops: list[dict[str, Any]],
    file: str = "/etc/app.json",
    fmt: str = "json",
    v2: dict[str, Any] | None = None,
    **rules: Any,
) -> Spec:
    v2 = {**(v2 or {}), **rules}
    versions = [
        {"version": "2", "file": v2.pop("file", file), "format": v2.pop("format", fmt), **v2},
        {"version": "1", "file": file, "format": fmt},
    ]
    return spec_from_data(
        {
            "id": "app",
            "title": "t",
            "target": "2",
            "versions": versions,
            "steps": [{"name": "s", "from": "1", "to": "2", "ops": ops}],
        }
    )


def run(tmp_path: Path, spec: Spec, inputs: dict[str, str] | None = None) -> SpecPlan:
    return plan_spec(spec, DiskView(tmp_path), inputs=inputs)


def final(plan: SpecPlan, tmp_path: Path, path: str) -> tuple[str, int]:
    op = plan.writes()[tmp_path / path.lstrip("/")]
    return op.data.decode(), op.mode


def test_set_key_set_default_rename_key_delete_key(tmp_path: Path) -> None:
    write(tmp_path, "/etc/app.json", '{"a": 1, "b": 2, "keep": 0}')
    spec = ops_spec(
        [
            {"op": "set_key", "key": "n.x", "value": [1, 2]},
            {"op": "set_default", "key": "a", "value": 9},
            {"op": "set_default", "key": "c", "value": True},
            {"op": "rename_key", "from": "b", "to": "bb"},
            {"op": "delete_key", "key": "keep"},
            {"op": "delete_key", "key": "gone", "missing_ok": True},
        ],
        require=["c"],
    )
    text, _mode = final(run(tmp_path, spec), tmp_path, "/etc/app.json")
    assert (
        text == '{\n  "a": 1,\n  "bb": 2,\n  "n": {\n    "x": [\n      1,\n      2\n    ]\n  },\n'
        '  "c": true\n}\n'
    )


def test_move_file_copy_file_chmod_delete_file(tmp_path: Path) -> None:
    write(tmp_path, "/etc/old/app.conf", "a = 1\n", 0o640)
    write(tmp_path, "/etc/obsolete.txt", "x\n")
    spec = ops_spec(
        [
            {"op": "copy_file", "to": "/etc/old/app.conf.orig", "mode": "0400"},
            {"op": "move_file", "to": "/etc/new/app.conf"},
            {"op": "set_key", "key": "b", "value": "2"},  # acts on the moved file
            {"op": "chmod", "mode": "0600"},
            {"op": "delete_file", "file": "/etc/obsolete.txt"},
        ],
        file="/etc/old/app.conf",
        fmt="kv",
        v2={"file": "/etc/new/app.conf", "require": ["b"]},
    )
    plan = run(tmp_path, spec)
    assert final(plan, tmp_path, "/etc/new/app.conf") == ("a = 1\nb = 2\n", 0o600)
    assert final(plan, tmp_path, "/etc/old/app.conf.orig") == ("a = 1\n", 0o400)
    assert set(plan.deletes()) == {tmp_path / "etc/old/app.conf", tmp_path / "etc/obsolete.txt"}


def test_convert_keep_source_types_and_replace_text(tmp_path: Path) -> None:
    write(tmp_path, "/etc/app.env", "# env\nPORT=80\nDEBUG=yes\nNAME=x\n")
    write(tmp_path, "/etc/motd", "hello world\nworld again\n")
    spec = ops_spec(
        [
            {
                "op": "convert",
                "to_file": "/etc/app.yaml",
                "to_format": "yaml",
                "keep_source": True,
                "types": {"PORT": "int", "DEBUG": "bool"},
            },
            {"op": "set_key", "key": "extra", "value": 1.5},
            {
                "op": "replace_text",
                "file": "/etc/motd",
                "pattern": "w(or)ld",
                "replacement": r"W\1LD",
                "count": 1,
            },
        ],
        file="/etc/app.env",
        fmt="env",
        v2={"file": "/etc/app.yaml", "format": "yaml", "types": {"PORT": "int"}},
    )
    plan = run(tmp_path, spec)
    assert (
        final(plan, tmp_path, "/etc/app.yaml")[0] == "PORT: 80\nDEBUG: true\nNAME: x\nextra: 1.5\n"
    )
    assert final(plan, tmp_path, "/etc/motd")[0] == "hello WorLD\nworld again\n"
    assert plan.deletes() == ()


def test_move_keys_into_an_existing_file_and_a_new_one(tmp_path: Path) -> None:
    write(
        tmp_path,
        "/etc/app.yaml",
        "# app\ndb:\n  url: u  # the url\n  password: pw-1\ntoken: tk-2\n",
    )
    write(tmp_path, "/etc/secrets.yaml", "# secrets\nother: o\n", 0o600)
    spec = ops_spec(
        [
            {"op": "move_keys", "keys": ["db.password"], "to_file": "/etc/secrets.yaml"},
            {
                "op": "move_keys",
                "keys": ["token"],
                "to_file": "/etc/token.json",
                "to_format": "json",
                "mode": "0640",
            },
        ],
        file="/etc/app.yaml",
        fmt="yaml",
        v2={"allow_only": ["db.url"], "when": {"key": "token", "exists": False}},
    )
    plan = run(tmp_path, spec)
    assert final(plan, tmp_path, "/etc/app.yaml")[0] == "# app\ndb:\n  url: u  # the url\n"
    assert final(plan, tmp_path, "/etc/secrets.yaml") == (
        "# secrets\nother: o\ndb:\n  password: pw-1\n",
        0o600,
    )
    assert final(plan, tmp_path, "/etc/token.json") == ('{\n  "token": "tk-2"\n}\n', 0o640)
    assert_no_secret(plan, "pw-1")
    assert_no_secret(plan, "tk-2")


def test_declared_secret_keys_are_redacted(tmp_path: Path) -> None:
    write(tmp_path, "/etc/app.json", '{"api": {"key": "abc-123-zz"}}')
    data = tomllib.loads("") | {
        "id": "app",
        "title": "t",
        "target": "2",
        "secret": ["api.key"],
        "versions": [
            {"version": "2", "file": "/etc/app.json", "format": "json", "require": ["api.token"]},
            {"version": "1", "file": "/etc/app.json", "format": "json"},
        ],
        "steps": [
            {
                "name": "s",
                "from": "1",
                "to": "2",
                "ops": [
                    {"op": "rename_key", "from": "api.key", "to": "api.token"},
                    {"op": "set_key", "key": "api.key", "value": "new-secret-value"},
                ],
            }
        ],
    }
    plan = run(tmp_path, spec_from_data(data))
    assert_no_secret(plan, "abc-123-zz")
    assert_no_secret(plan, "new-secret-value")
    assert "set api.key = ******** in /etc/app.json" in [op.description for op in plan.operations]


def test_require_input_with_a_verifier(tmp_path: Path) -> None:
    verifier = make_verifier("right-password", n=2, r=1, p=1)
    write(tmp_path, "/etc/app.json", f'{{"db": {{"url": "u", "verifier": "{verifier}"}}}}')
    spec = ops_spec(
        [
            {
                "op": "require_input",
                "name": "db_password",
                "prompt": "Database password",
                "key": "db.password",
                "verifier": "db.verifier",
            },
            {"op": "delete_key", "key": "db.verifier"},
        ],
        require=["db.password"],
    )
    missing = run(tmp_path, spec)
    assert [(i.name, i.prompt, i.secret, i.verified) for i in missing.inputs] == [
        ("db_password", "Database password", True, True)
    ]
    assert missing.missing == ("db_password",)
    wrong = run(tmp_path, spec, {"db_password": "wrong-password"})
    assert wrong.input_errors == {
        "db_password": "does not match the verifier db.verifier in /etc/app.json"
    }
    assert_no_secret(wrong, "wrong-password")
    right = run(tmp_path, spec, {"db_password": "right-password"})
    assert (right.missing, right.input_errors) == ((), {})
    text, _mode = final(right, tmp_path, "/etc/app.json")
    assert '"password": "right-password"' in text and "verifier" not in text
    assert_no_secret(right, "right-password")


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        (
            [{"op": "rename_key", "from": "nope", "to": "x"}],
            "step 's' ops[0] (rename_key) on /etc/app.json: key 'nope' not found",
        ),
        (
            [{"op": "delete_key", "key": "a"}, {"op": "delete_key", "key": "a"}],
            "step 's' ops[1] (delete_key) on /etc/app.json: key 'a' not found",
        ),
        (
            [{"op": "move_file", "to": "/etc/other.json"}],
            "step 's' ops[0] (move_file) on /etc/other.json: /etc/other.json already exists",
        ),
        (
            [{"op": "delete_file", "file": "/etc/none.json"}],
            "step 's' ops[0] (delete_file) on /etc/none.json: the file does not exist",
        ),
        (
            [{"op": "convert", "to_file": "/etc/app.ini", "to_format": "ini"}],
            "step 's' ops[0] (convert) on /etc/app.ini: key 'a': an ini file holds keys only "
            "inside sections",
        ),
        (
            [
                {
                    "op": "convert",
                    "to_file": "/etc/app.toml",
                    "to_format": "toml",
                    "types": {"a": "bool"},
                }
            ],
            "step 's' ops[0] (convert) on /etc/app.json: key 'a': the value is not a boolean",
        ),
        (
            [{"op": "set_key", "key": "a.b", "value": 1}],
            "step 's' ops[0] (set_key) on /etc/app.json: key 'a.b': 'a' is a value, not a table",
        ),
        (
            [{"op": "replace_text", "file": "/etc/other.json", "pattern": "x", "replacement": "y"}],
            "step 's' ops[0] (replace_text) on /etc/other.json: replace_text needs a text file, "
            "/etc/other.json is json",
        ),
        (
            [{"op": "set_key", "key": "b", "value": 1}],
            "step 's': the planned files are detected as version 1, not the target 2",
        ),
    ],
)
def test_plan_errors_name_step_op_and_file(
    tmp_path: Path, ops: list[dict[str, Any]], message: str
) -> None:
    write(tmp_path, "/etc/app.json", '{"a": 1}')
    write(tmp_path, "/etc/other.json", "{}")
    spec = ops_spec(ops, when={"key": "done", "exists": True})
    with pytest.raises(PlanError) as caught:
        run(tmp_path, spec)
    assert str(caught.value) == message
