"""Detection of every version of the built-in chain (the spec agent/specs/builtin/
agent-config.toml), and its error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agent_testlib import AGENT_TOKEN, LEGACY_CONF, write_legacy

from agent.migrations.model import DetectionError, DiskView
from agent.migrations.plan import make_plan
from agent.specs.builtin import (
    agent_config_migration,
    agent_config_spec,
    json_conf,
    new_conf,
    secrets_file,
)
from agent.specs.detect import detect as detect_spec


def detect(root: Path) -> tuple[str | None, Path | None]:
    detected = agent_config_migration().detect(DiskView(root))
    return detected.version, detected.path


def write_json(path: Path, data: object, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    path.chmod(mode)


V3 = {
    "config_version": 3,
    "server": {"url": "https://s:1"},
    "checkin": {"interval_seconds": 10},
    "agent_token": "t3",
}


def test_nothing_found(tmp_path: Path) -> None:
    assert detect(tmp_path) == (None, None)


def test_detects_v1(tmp_path: Path) -> None:
    path = write_legacy(tmp_path)
    assert detect(tmp_path) == ("1", path)
    found = detect_spec(agent_config_spec(), DiskView(tmp_path))
    assert found.document is not None
    assert found.document.get("check_interval") == "30"
    assert found.document.get("proxy") == "http://proxy.local:3128"
    assert AGENT_TOKEN not in repr(found)


def test_detects_v2_before_legacy(tmp_path: Path) -> None:
    write_legacy(tmp_path)
    new_conf(tmp_path).parent.mkdir(parents=True)
    new_conf(tmp_path).write_text(LEGACY_CONF, encoding="utf-8")
    assert detect(tmp_path) == ("2", new_conf(tmp_path))


def test_detects_v3_and_v4(tmp_path: Path) -> None:
    write_json(json_conf(tmp_path), V3)
    assert detect(tmp_path) == ("3", json_conf(tmp_path))
    v4 = {k: v for k, v in V3.items() if k != "agent_token"}
    v4 |= {"config_version": 4, "secrets_file": "secrets.json"}
    write_json(json_conf(tmp_path), v4)
    write_json(secrets_file(tmp_path), {"agent_token": "t3"}, 0o600)
    assert detect(tmp_path) == ("4", json_conf(tmp_path))
    plan = make_plan(agent_config_migration(), DiskView(tmp_path))
    assert not plan.needed


def error_for(root: Path) -> DetectionError:
    with pytest.raises(DetectionError) as info:
        agent_config_migration().detect(DiskView(root))
    return info.value


def test_parse_error_names_file_and_line(tmp_path: Path) -> None:
    lines = LEGACY_CONF.splitlines()
    lines.insert(6, "this line has no equals sign")  # becomes line 7
    write_legacy(tmp_path, "\n".join(lines) + "\n")
    error = error_for(tmp_path)
    # Read as ini by the spec (the Python chain said "agent.conf:7: expected 'key = value'").
    assert error.message == "/etc/aggregator/agent.conf:7: expected '[section]' or 'key = value'"
    assert error.line == 7
    assert error.path == tmp_path / "etc/aggregator/agent.conf"


# The spec language's wording (the Python chain said e.g. "agent.conf:3: unknown key 'bogus'",
# "agent.conf:3: duplicate key 'server_url' (first on line 1)"): still the file, line and key.
LEGACY = "/etc/aggregator/agent.conf"


@pytest.mark.parametrize(
    ("text", "expected", "line"),
    [
        (
            "server_url = x\n",
            f"{LEGACY}: not a valid version 1: missing required key 'agent_token'",
            0,
        ),
        (
            "server_url = x\nagent_token = t\nbogus = 1\n",
            f"{LEGACY}: not a valid version 1: line 3: unknown key 'bogus' (not in allow_only)",
            3,
        ),
        (
            "server_url = x\nagent_token = t\ncheck_interval = soon\n",
            f"{LEGACY}: not a valid version 1: line 3: key 'check_interval': must be a positive "
            "integer number of seconds",
            3,
        ),
        (
            "server_url = x\nagent_token = t\nserver_url = y\n",
            f"{LEGACY}:3: key 'server_url' appears twice (also line 1)",
            3,
        ),
        (
            "server_url = x\nagent_token = t\nlog_level = loud\n",
            f"{LEGACY}: not a valid version 1: line 3: key 'log_level': must be one of critical, "
            "debug, error, info, warning",
            3,
        ),
    ],
)
def test_kv_validation(tmp_path: Path, text: str, expected: str, line: int) -> None:
    write_legacy(tmp_path, text)
    error = error_for(tmp_path)
    assert error.message == expected
    assert error.line == line


def test_secret_value_never_in_error(tmp_path: Path) -> None:
    write_legacy(tmp_path, f"server_url = x\nagent_token {AGENT_TOKEN}\n")
    error = error_for(tmp_path)
    assert AGENT_TOKEN not in str(error)
    assert error.line == 2


def test_json_syntax_error_has_line(tmp_path: Path) -> None:
    path = json_conf(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('{\n  "config_version": 3,\n  "server": {"url": "x"},,\n}\n')
    error = error_for(tmp_path)
    assert error.line == 3
    # Was "agent.json:3: invalid JSON: ..." with exception type JSONDecodeError.
    assert error.message.startswith("/etc/flagpost/agent.json:3: ")
    assert error.exception_type == "ConfigParseError"


def test_json_wrong_type_named(tmp_path: Path) -> None:
    write_json(json_conf(tmp_path), V3 | {"checkin": {"interval_seconds": "10"}})
    message = error_for(tmp_path).message
    assert message == (
        "/etc/flagpost/agent.json: not a valid version 3: key 'checkin.interval_seconds': must "
        "be a positive integer number of seconds"
    )


def test_json_interval_must_be_positive(tmp_path: Path) -> None:
    write_json(json_conf(tmp_path), V3 | {"checkin": {"interval_seconds": 0}})
    assert error_for(tmp_path).message == (
        "/etc/flagpost/agent.json: not a valid version 3: key 'checkin.interval_seconds': must "
        "be a positive integer number of seconds"
    )


def test_json_missing_required_named(tmp_path: Path) -> None:
    write_json(json_conf(tmp_path), {"config_version": 3, "agent_token": "t"})
    assert error_for(tmp_path).message == (
        "/etc/flagpost/agent.json: not a valid version 3: missing required key 'server.url'"
    )


def test_unsupported_config_version(tmp_path: Path) -> None:
    write_json(json_conf(tmp_path), V3 | {"config_version": 9})
    # No version's `when` holds (was "unsupported config_version 9 (expected 3 or 4)").
    message = error_for(tmp_path).message
    assert message.startswith("agent-config: the files match no version: ")
    assert "version 4 (/etc/flagpost/agent.json): 'when' does not hold" in message
    assert "version 3 (/etc/flagpost/agent.json): 'when' does not hold" in message


def test_v4_without_secrets_file_fails(tmp_path: Path) -> None:
    v4 = {k: v for k, v in V3.items() if k != "agent_token"}
    write_json(json_conf(tmp_path), v4 | {"config_version": 4, "secrets_file": "secrets.json"})
    error = error_for(tmp_path)
    assert error.message == "/etc/flagpost/secrets.json: missing (version 4 needs it)"
    assert error.exception_type == "FileNotFoundError" and error.errno == 2


def test_plan_of_each_version_reaches_v4(tmp_path: Path) -> None:
    write_legacy(tmp_path)
    plan = make_plan(agent_config_migration(), DiskView(tmp_path))
    assert [p.step.name for p in plan.steps] == [
        "v1_to_v2_move_location",
        "v2_to_v3_json_format",
        "v3_to_v4_split_secrets",
    ]
    write_json(json_conf(tmp_path), V3)
    plan = make_plan(agent_config_migration(), DiskView(tmp_path))
    assert [p.step.from_version for p in plan.steps] == ["3"]


def test_v4_secrets_file_must_be_0600_and_hold_the_token(tmp_path: Path) -> None:
    v4 = {k: v for k, v in V3.items() if k != "agent_token"}
    write_json(json_conf(tmp_path), v4 | {"config_version": 4, "secrets_file": "secrets.json"})
    write_json(secrets_file(tmp_path), {"agent_token": "t3"}, 0o644)
    assert error_for(tmp_path).message == (
        "/etc/flagpost/secrets.json: not valid for version 4: mode 0644 is more open than 0600"
    )
    write_json(secrets_file(tmp_path), {}, 0o600)
    assert "missing required key 'agent_token'" in error_for(tmp_path).message


def test_v3_refuses_v4_keys_and_v4_refuses_the_token(tmp_path: Path) -> None:
    write_json(json_conf(tmp_path), V3 | {"secrets_file": "secrets.json"})
    assert "unknown key 'secrets_file' (not in allow_only)" in error_for(tmp_path).message
    v4 = V3 | {"config_version": 4, "secrets_file": "secrets.json"}
    write_json(json_conf(tmp_path), v4)
    write_json(secrets_file(tmp_path), {"agent_token": "t3"}, 0o600)
    assert "unknown key 'agent_token' (not in allow_only)" in error_for(tmp_path).message


def test_the_spec_is_confined_to_its_own_directories(tmp_path: Path) -> None:
    """The built-in spec ignores the operator's allowed_paths, but its own files may not be
    symlinked out of their directories."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    write_json(outside / "agent.json", V3)
    json_conf(tmp_path).parent.mkdir(parents=True)
    json_conf(tmp_path).symlink_to(outside / "agent.json")
    error = error_for(tmp_path)
    assert error.exception_type == "PathRefused"
    assert "/etc/flagpost/agent.json" in error.message


def test_v4_secrets_file_holds_the_secret_of_each_section(tmp_path: Path) -> None:
    v4 = {k: v for k, v in V3.items() if k != "agent_token"}
    database = {"url": "postgresql://fleet@db.example/fleet"}
    write_json(
        json_conf(tmp_path),
        v4 | {"config_version": 4, "secrets_file": "secrets.json", "database": database},
    )
    write_json(secrets_file(tmp_path), {"agent_token": "t3"}, 0o600)
    assert error_for(tmp_path).message == (
        "/etc/flagpost/secrets.json: not valid for version 4: missing required key "
        "'database_password' (required with 'database' in /etc/flagpost/agent.json)"
    )
    write_json(secrets_file(tmp_path), {"agent_token": "t3", "database_password": "p"}, 0o600)
    assert detect(tmp_path) == ("4", json_conf(tmp_path))
