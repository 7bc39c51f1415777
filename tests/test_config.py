"""Config loading precedence: defaults < TOML file < environment < overrides (flags)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ServerConfig, load_config
from server.errors import ConfigError


def write(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


def test_defaults_without_file_or_env() -> None:
    config = load_config(env={})
    assert config == ServerConfig()
    assert config.grpc_port == 50051 and config.web_port == 8080
    assert config.database_url.startswith("sqlite+aiosqlite://")


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path / "flagpost.toml",
        '[server]\ngrpc_port = 1111\nweb_port = 2222\nlog_level = "DEBUG"\n'
        'database_url = "sqlite+aiosqlite:///file.db"\n',
    )
    env = {"FLAGPOST_WEB_PORT": "3333", "FLAGPOST_DATABASE_URL": "sqlite+aiosqlite:///env.db"}
    config = load_config(
        path,
        env=env,
        overrides={"database_url": "sqlite+aiosqlite:///flag.db", "grpc_port": None},
    )
    assert config.grpc_port == 1111  # file (override None = flag not given)
    assert config.log_level == "DEBUG"  # file
    assert config.web_port == 3333  # env beats file
    assert config.database_url == "sqlite+aiosqlite:///flag.db"  # flag beats env


def test_config_path_from_environment_and_top_level_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "auto_upgrade = true\nstate_dir = '/var/lib/fp'\n")
    config = load_config(env={"FLAGPOST_CONFIG": str(path), "FLAGPOST_MAX_EVENTS_PER_CHECKIN": "7"})
    assert config.auto_upgrade is True
    assert config.state_dir == Path("/var/lib/fp")
    assert config.max_events_per_checkin == 7


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[server]\ngrpc_prot = 1\n")
    with pytest.raises(ConfigError, match="grpc_prot"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="bogus"):
        load_config(env={}, overrides={"bogus": 1})


def test_bad_values_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="grpc_port"):
        load_config(env={"FLAGPOST_GRPC_PORT": "many"})
    with pytest.raises(ConfigError, match="auto_upgrade"):
        load_config(env={"FLAGPOST_AUTO_UPGRADE": "perhaps"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError):
        load_config(write(tmp_path / "broken.toml", "grpc_port = = 1"), env={})
    with pytest.raises(ConfigError, match="ingest_writers must be greater than 0"):
        load_config(env={"FLAGPOST_INGEST_WRITERS": "0"})


def test_config_is_frozen() -> None:
    config = load_config(env={})
    with pytest.raises(AttributeError):
        config.grpc_port = 1  # type: ignore[misc]


def test_rotating_before_the_credential_lifetime_is_refused(tmp_path: Path) -> None:
    """credential_rotate_before_days >= credential_ttl_days would hand a new credential out at
    every check-in: refused, naming both settings; with ttl 0 (never expires) anything goes."""
    for ttl, before in ((14, 14), (7, 30), (1, 1)):
        with pytest.raises(ConfigError) as caught:
            load_config(
                env={
                    "FLAGPOST_CREDENTIAL_TTL_DAYS": str(ttl),
                    "FLAGPOST_CREDENTIAL_ROTATE_BEFORE_DAYS": str(before),
                }
            )
        message = caught.value.message
        assert "credential_rotate_before_days" in message and "credential_ttl_days" in message
        assert f"({before})" in message and f"({ttl})" in message
    path = write(tmp_path / "c.toml", "[server]\ncredential_ttl_days = 10\n")  # default before 14
    with pytest.raises(ConfigError, match="credential_rotate_before_days"):
        load_config(path, env={})
    config = load_config(path, env={}, overrides={"credential_rotate_before_days": 9})
    assert (config.credential_ttl_days, config.credential_rotate_before_days) == (10, 9)
    assert load_config(env={}, overrides={"credential_ttl_days": 0}).credential_ttl_days == 0
