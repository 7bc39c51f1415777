"""Detection of every version of the built-in chain, and its error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agent_testlib import AGENT_TOKEN, LEGACY_CONF, write_legacy

from agent.migrations.chain import (
    agent_config_migration,
    json_conf,
    new_conf,
    read_version,
    secrets_file,
)
from agent.migrations.model import DetectionError, DiskView
from agent.migrations.plan import make_plan


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
    _version, _path, settings = read_version(DiskView(tmp_path))
    assert settings is not None
    assert settings.check_interval == 30
    assert settings.proxy == "http://proxy.local:3128"
    assert AGENT_TOKEN not in repr(settings)


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
    assert error.message == "agent.conf:7: expected 'key = value'"
    assert error.line == 7
    assert error.path == tmp_path / "etc/aggregator/agent.conf"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server_url = x\n", "agent.conf: missing required key 'agent_token'"),
        ("server_url = x\nagent_token = t\nbogus = 1\n", "agent.conf:3: unknown key 'bogus'"),
        (
            "server_url = x\nagent_token = t\ncheck_interval = soon\n",
            "agent.conf:3: check_interval must be a positive integer number of seconds",
        ),
        (
            "server_url = x\nagent_token = t\nserver_url = y\n",
            "agent.conf:3: duplicate key 'server_url' (first on line 1)",
        ),
    ],
)
def test_kv_validation(tmp_path: Path, text: str, expected: str) -> None:
    write_legacy(tmp_path, text)
    assert error_for(tmp_path).message == expected


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
    assert error.message.startswith("agent.json:3: invalid JSON")
    assert error.exception_type == "JSONDecodeError"


def test_json_wrong_type_named(tmp_path: Path) -> None:
    write_json(json_conf(tmp_path), V3 | {"checkin": {"interval_seconds": "10"}})
    message = error_for(tmp_path).message
    assert message == "agent.json: 'checkin.interval_seconds' must be an integer, got str"


def test_json_missing_required_named(tmp_path: Path) -> None:
    write_json(json_conf(tmp_path), {"config_version": 3, "agent_token": "t"})
    assert error_for(tmp_path).message == "agent.json: missing required key 'server.url'"


def test_unsupported_config_version(tmp_path: Path) -> None:
    write_json(json_conf(tmp_path), V3 | {"config_version": 9})
    assert "unsupported config_version 9" in error_for(tmp_path).message


def test_v4_without_secrets_file_fails(tmp_path: Path) -> None:
    v4 = {k: v for k, v in V3.items() if k != "agent_token"}
    write_json(json_conf(tmp_path), v4 | {"config_version": 4, "secrets_file": "secrets.json"})
    error = error_for(tmp_path)
    assert error.message == "secrets.json: secrets file is missing"


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
