"""The spec language's conditions and rules added when the built-in chain became a spec:
operations with ``when``, ``missing_ok`` on ``rename_key`` and on ``convert``'s types,
``require_input``'s ``mismatch`` message, and per version ``require_with``, ``verifiers``,
``messages``, ``companions`` and the line of each validation problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.migrations.model import DetectionError, DiskView
from agent.migrations.verifier import make_verifier
from agent.specs.detect import detect
from agent.specs.plan import plan_spec
from agent.specs.validate import parse_spec

PASSWORD = "pw-Unique-93c1"

SPEC = (Path(__file__).parent / "specs" / "svc.toml").read_text(encoding="utf-8")


def write(root: Path, path: str, text: str, mode: int = 0o644) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    target.chmod(mode)
    return target


def error_of(root: Path) -> DetectionError:
    with pytest.raises(DetectionError) as info:
        detect(parse_spec(SPEC), DiskView(root))
    return info.value


def test_without_the_optional_parts_nothing_is_asked_and_skipped_ops_are_listed(
    tmp_path: Path,
) -> None:
    write(tmp_path, "/etc/svc/svc.conf", "url = https://x\ntoken = t-1\n")
    plan = plan_spec(parse_spec(SPEC), DiskView(tmp_path), allowed_paths=["/etc/svc"])
    assert plan.inputs == () and plan.missing == ()
    written = {path.name: op for path, op in plan.writes().items()}
    assert json.loads(written["svc.json"].data) == {"url": "https://x", "v": 2}
    assert json.loads(written["secrets.json"].data) == {"token": "t-1"}
    assert written["secrets.json"].mode == 0o600
    skipped = [op.description for op in plan.operations if op.description.startswith("skip")]
    assert skipped == [
        "skip require_input on /etc/svc/svc.json: 'when' on db.verifier does not hold",
        "skip move_keys on /etc/svc/svc.json: 'when' on db_password does not hold",
    ]
    assert any("(not there)" in op.description for op in plan.operations if op.op == "rename_key")


def test_the_optional_parts_are_typed_renamed_and_the_input_checked(tmp_path: Path) -> None:
    text = (
        "url = https://x\ntoken = t-1\ninterval = 30\n[db]\nurl = postgresql://u@h/fleet\n"
        f"verifier = {make_verifier(PASSWORD, n=2)}\n"
    )
    write(tmp_path, "/etc/svc/svc.conf", text)
    spec = parse_spec(SPEC)
    plan = plan_spec(spec, DiskView(tmp_path), allowed_paths=["/etc/svc"])
    assert [asked.name for asked in plan.inputs] == ["db_password"]
    assert plan.missing == ("db_password",)
    wrong = plan_spec(
        spec, DiskView(tmp_path), inputs={"db_password": "nope"}, allowed_paths=["/etc/svc"]
    )
    assert wrong.input_errors == {
        "db_password": "wrong password for database 'fleet' at postgresql://u@h/fleet"
    }
    right = plan_spec(
        spec, DiskView(tmp_path), inputs={"db_password": PASSWORD}, allowed_paths=["/etc/svc"]
    )
    assert right.missing == () and right.input_errors == {}
    written = {path.name: op for path, op in right.writes().items()}
    assert json.loads(written["svc.json"].data) == {
        "url": "https://x",
        "db": {"url": "postgresql://u@h/fleet"},
        "checkin": {"interval": 30},
        "v": 2,
    }
    assert json.loads(written["secrets.json"].data) == {"token": "t-1", "db_password": PASSWORD}
    assert PASSWORD not in "".join(change.diff for change in right.changes)


def test_a_mismatch_template_never_shows_a_secret_key(tmp_path: Path) -> None:
    text = f"url = x\ntoken = t-1\n[db]\nurl = u\nverifier = {make_verifier(PASSWORD, n=2)}\n"
    write(tmp_path, "/etc/svc/svc.conf", text)
    spec = parse_spec(SPEC.replace("at {db.url}", "token {token} {nope}"))
    plan = plan_spec(spec, DiskView(tmp_path), inputs={"db_password": "x"}, allowed_paths=["/etc"])
    assert plan.input_errors == {"db_password": "wrong password for database 'u' token ? ?"}


@pytest.mark.parametrize(
    ("text", "expected", "line"),
    [
        (
            "url = x\ntoken = t\n[db]\nurl = postgresql://u@h/d\n",
            "line 4: missing required key 'db.verifier' (required with 'db')",
            4,
        ),
        (
            "url = x\ntoken = t\n[db]\nurl = u\nverifier = scrypt$3$8$1$AAAA$AAAA\n",
            "line 5: key 'db.verifier': invalid verifier: n must be a power of 2",
            5,
        ),
        ("url = x\ntoken = t\ninterval = 0\n", "line 3: key 'interval': must be a positive", 3),
        (
            "url = x\n\ntoken = t\nother = 1\n",
            "line 4: unknown key 'other' (not in allow_only)",
            4,
        ),
        ("url = x\n", "not a valid version 1: missing required key 'token'", 0),
    ],
)
def test_version_rules_name_their_line(tmp_path: Path, text: str, expected: str, line: int) -> None:
    write(tmp_path, "/etc/svc/svc.conf", text)
    error = error_of(tmp_path)
    assert error.message.startswith("/etc/svc/svc.conf: not a valid version 1: ")
    assert expected in error.message
    assert error.line == line
    assert error.exception_type == "SpecValidationError"


@pytest.mark.parametrize(
    ("value", "problem"),
    [(0, "key 'n' must be at least 1"), ("0.5", "key 'n' must be at least 1"), (1, None)],
)
def test_minimum(tmp_path: Path, value: object, problem: str | None) -> None:
    spec = parse_spec(
        'id = "m"\ntitle = "m"\ntarget = "1"\n[[versions]]\nversion = "1"\n'
        'file = "/etc/m.json"\nformat = "json"\nminimum = { n = 1 }\n'
    )
    write(tmp_path, "/etc/m.json", json.dumps({"n": value}))
    if problem is None:
        assert detect(spec, DiskView(tmp_path)).version == "1"
        return
    with pytest.raises(DetectionError) as info:
        detect(spec, DiskView(tmp_path))
    assert info.value.message == f"/etc/m.json: not a valid version 1: {problem}"


def test_companions_must_exist_hold_their_keys_and_keep_their_mode(tmp_path: Path) -> None:
    write(tmp_path, "/etc/svc/svc.json", '{"v": 2, "url": "x"}')
    error = error_of(tmp_path)
    assert error.message == "/etc/svc/secrets.json: missing (version 2 needs it)"
    assert (error.errno, error.version) == (2, "2")
    secrets = write(tmp_path, "/etc/svc/secrets.json", "{}", 0o640)
    assert error_of(tmp_path).message == (
        "/etc/svc/secrets.json: not valid for version 2: missing required key 'token'; "
        "mode 0640 is more open than 0600"
    )
    secrets.write_text('{"token": "t"}')
    secrets.chmod(0o400)
    assert detect(parse_spec(SPEC), DiskView(tmp_path)).version == "2"
    # A key of the version's own file may require more of the companion.
    write(tmp_path, "/etc/svc/svc.json", '{"v": 2, "url": "x", "db": {"url": "u"}}')
    assert error_of(tmp_path).message == (
        "/etc/svc/secrets.json: not valid for version 2: missing required key 'db_password' "
        "(required with 'db' in /etc/svc/svc.json)"
    )


def test_one_unparsable_file_shared_by_versions_is_its_own_error(tmp_path: Path) -> None:
    write(tmp_path, "/etc/svc/svc.json", '{"v": 2,,}')
    error = error_of(tmp_path)
    assert error.message.startswith("/etc/svc/svc.json:1: ")
    assert error.exception_type == "ConfigParseError"
