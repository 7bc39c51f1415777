"""UUIDv7, backoff bounds, configuration layering, atomic writes."""

from __future__ import annotations

import random
import socket
import stat
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from agent import sysinfo
from agent.backoff import Backoff, jittered
from agent.config import AgentConfigError, RetrySettings, load_config
from agent.migrations.fsops import atomic_write
from agent.uuid7 import uuid7, uuid7_millis


def test_uuid7_layout_and_time() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= uuid7_millis(value) <= after + 1


def test_uuid7_is_strictly_increasing() -> None:
    values = [uuid7() for _ in range(20_000)]  # many per millisecond
    assert values == sorted(values)
    assert [str(v) for v in values] == sorted(str(v) for v in values)
    assert len(set(values)) == len(values)


def test_uuid7_never_goes_backwards_in_process() -> None:
    latest = uuid7()
    from_the_past = uuid7(now_ns=1_000_000_000_000_000_000)  # a clock stepped back to 2001
    assert from_the_past > latest


def test_backoff_bounds_full_jitter() -> None:
    settings = RetrySettings(
        initial=timedelta(seconds=1), maximum=timedelta(seconds=300), multiplier=2.0
    )
    backoff = Backoff(settings, random.Random(7))
    ceilings = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    for ceiling in ceilings:
        delay = backoff.next_delay().total_seconds()
        assert 0.0 <= delay <= ceiling
    assert backoff.ceiling(1000) == 300
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay().total_seconds() <= 1


def test_backoff_honours_retry_after_hint() -> None:
    backoff = Backoff(RetrySettings(maximum=timedelta(seconds=10)), random.Random(1))
    assert backoff.next_delay(timedelta(seconds=5)).total_seconds() >= 5
    assert backoff.next_delay(timedelta(hours=1)).total_seconds() <= 10
    assert backoff.longest() == timedelta(seconds=10)


def test_backoff_is_jittered_not_fixed() -> None:
    settings = RetrySettings(initial=timedelta(seconds=100))
    delays = {Backoff(settings, random.Random(seed)).next_delay() for seed in range(5)}
    assert len(delays) == 5


def test_jittered_within_ten_percent() -> None:
    rng = random.Random(5)
    for _ in range(100):
        value = jittered(timedelta(seconds=60), rng).total_seconds()
        assert 54 <= value <= 66


def test_config_layering(tmp_path: Path) -> None:
    toml = tmp_path / "etc/flagpost-agent/agent.toml"
    toml.parent.mkdir(parents=True)
    toml.write_text(
        'server = "toml:1"\ncheckin_interval_seconds = 30\nlog_level = "debug"\n'
        "[retry]\ninitial_seconds = 2\nmax_seconds = 20\n"
    )
    env = {
        "FLAGPOST_AGENT_ROOT": str(tmp_path),
        "FLAGPOST_AGENT_CHECKIN_INTERVAL_SECONDS": "15",
        "FLAGPOST_AGENT_RETRY_MAX_SECONDS": "40",
        "FLAGPOST_AGENT_CRASH_AT": "after_backup",
    }
    config = load_config({"server": "cli:2", "log_level": None}, env)
    assert config.root == tmp_path
    assert config.config_file == toml
    assert config.server == "cli:2"  # CLI beats TOML
    assert config.checkin_interval == timedelta(seconds=15)  # env beats TOML
    assert config.log_level == "DEBUG"  # TOML beats default
    assert config.retry.initial == timedelta(seconds=2)
    assert config.retry.maximum == timedelta(seconds=40)
    assert config.crash_at == "after_backup"
    assert config.state_dir == tmp_path / "var/lib/flagpost-agent"
    assert config.max_events_per_checkin == 200


def test_config_defaults_ignore_unrelated_env() -> None:
    config = load_config({}, {"FLAGPOST_DATABASE_URL": "x", "HOME": "/root"})
    assert config.root == Path("/")
    assert config.checkin_interval == timedelta(seconds=60)
    assert config.retry == RetrySettings()
    assert config.crash_at == ""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLAGPOST_AGENT_CHECKIN_INTERVAL_SECONDS": "soon"}, "expected a number"),
        ({"FLAGPOST_AGENT_LOG_LEVEL": "loud"}, "unknown log level"),
        ({"FLAGPOST_AGENT_MAX_EVENTS_PER_CHECKIN": "0"}, "must be >= 1"),
    ],
)
def test_config_rejects_bad_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(AgentConfigError, match=message):
        load_config({}, env)


def test_config_rejects_unknown_toml_key(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text("colour = 'red'\n")
    with pytest.raises(AgentConfigError, match="unknown setting 'colour'"):
        load_config({}, {}, path)


def test_atomic_write_sets_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "secret.json"
    target.write_text("old")
    target.chmod(0o644)
    atomic_write(target, b"new", 0o600)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret.json"]


def test_hostname_comes_from_the_root_when_it_declares_one(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "flagpost" / "agent.json"
    bare = sysinfo.host_facts(tmp_path, tmp_path / "state", config, "4")
    assert bare.hostname == socket.gethostname()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hostname").write_text("edge-42\n")
    facts = sysinfo.host_facts(tmp_path, tmp_path / "state", config, "4")
    assert facts.hostname == "edge-42"
    assert sysinfo.system_info(config, tmp_path)["hostname"] == "edge-42"
