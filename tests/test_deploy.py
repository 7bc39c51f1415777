"""deploy/: the systemd units, the example configs and the alert rules, checked with the real
tools (systemd-analyze, systemd-sysusers, setpriv) against the real code.

- Units: ``systemd-analyze verify`` (its exit status and every line it prints: it only *warns*
  about an unknown directive) on copies whose ``/opt/flagpost/bin/`` is this venv's bin
  directory, so the ExecStart binaries exist; the hardening directives; an exposure score from
  ``systemd-analyze security --offline``; paths and stop timeouts that agree with the configs.
- Rights: the server and the agent run for real with the units' capability bounding sets,
  no-new-privileges and MemoryDenyWriteExecute (``prctl(PR_SET_MDWE)``, the kernel's own
  W^X switch); the agent migrates a legacy config that belongs to another user with exactly
  the unit's capabilities, and fails without them.
- Example configs load with the real loaders, hold every setting, and each ``default:`` comment
  is the real default.
- Every ``flagpost_*`` series an alert rule names is in the server's real /metrics exposition.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from agent import config as agent_config
from agent.specs import builtin as chain
from server.app import WEB_SHUTDOWN_TIMEOUT_S
from server.config import ServerConfig, load_config
from server.errors import ConfigError
from server.fdlimit import FD_RESERVE, web_connection_cap
from server.metrics import REJECTION_REASONS, ServerMetrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SERVER_UNIT = DEPLOY / "flagpost-server.service"
AGENT_UNIT = DEPLOY / "flagpost-agent.service"
UNITS = (SERVER_UNIT, AGENT_UNIT)
INSTALL_BIN = "/opt/flagpost/bin/"  # where the units expect the venv's console scripts
VENV_BIN = Path(sys.prefix) / "bin"  # where this venv's pip put them
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (scripts/ensure_services.sh installs it)"
        if IN_CI:
            pytest.fail(message + " (CI=true)")
        pytest.skip(message)
    return path


# --- Units ---------------------------------------------------------------------------------------


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment in a unit file, in order (keys may repeat)."""
    found: list[tuple[str, str, str]] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        found.append((section, key.strip(), value.strip()))
    return found


def values(text: str, key: str) -> list[str]:
    return [value for _, name, value in directives(text) if name == key]


def one(text: str, key: str) -> str:
    found = values(text, key)
    assert len(found) == 1, f"{key}: expected one assignment, found {found}"
    return found[0]


def installed(unit: Path) -> str:
    """The unit as it runs here: the console scripts from this venv instead of /opt/flagpost."""
    text = unit.read_text(encoding="utf-8")
    assert one(text, "ExecStart").startswith(INSTALL_BIN), unit
    return text.replace(INSTALL_BIN, f"{VENV_BIN}/")


def verify_problems(text: str, name: str, directory: Path) -> list[str]:
    """What ``systemd-analyze verify`` says about a unit: every line it prints, and its exit
    status when not 0 (an unknown or misspelled directive is only a warning)."""
    tool = need_tool("systemd-analyze")
    path = directory / name
    path.write_text(text, encoding="utf-8")
    result = subprocess.run(
        [tool, "verify", str(path)], capture_output=True, text=True, timeout=60, cwd=directory
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}")
    return problems


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_unit_passes_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    text = installed(unit)
    executable = Path(one(text, "ExecStart").split()[0])
    assert executable.is_file() and os.access(executable, os.X_OK), executable
    assert verify_problems(text, unit.name, tmp_path) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("\nProtectSystem=strict\n", "\nProtectSytem=strict\n"),  # misspelled directive
        ("\nProtectSystem=strict\n", "\nProtectSystem=sometimes\n"),  # bad value
        ("\n[Service]\n", "\n[Servcie]\n"),  # unknown section
        (f"={VENV_BIN}/flagpost-server ", "=/nonexistent/flagpost-server "),  # missing binary
    ],
)
def test_verify_reports_a_broken_unit(old: str, new: str, tmp_path: Path) -> None:
    text = installed(SERVER_UNIT)
    assert text.count(old) == 1
    assert verify_problems(text.replace(old, new), SERVER_UNIT.name, tmp_path) != []


COMMON_HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
    "AmbientCapabilities": "",
    "Restart": "on-failure",
    "RestartPreventExitStatus": "2",
    "KillSignal": "SIGTERM",
    "KillMode": "mixed",
}
HARDENING = {
    SERVER_UNIT: {
        **COMMON_HARDENING,
        "User": "flagpost",
        "CapabilityBoundingSet": "",
        "PrivateUsers": "yes",
        "StateDirectory": "flagpost-server",
        "StateDirectoryMode": "0700",
        "UMask": "0077",
        "LimitNOFILE": "65536",
    },
    AGENT_UNIT: {
        **COMMON_HARDENING,
        "User": "root",
        "CapabilityBoundingSet": "CAP_DAC_OVERRIDE",
        "StateDirectory": "flagpost-agent",
        "StateDirectoryMode": "0700",
        "ConfigurationDirectory": "flagpost",
    },
}


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_unit_hardening(unit: Path) -> None:
    text = unit.read_text(encoding="utf-8")
    missing = {
        key: wanted for key, wanted in HARDENING[unit].items() if wanted not in values(text, key)
    }
    assert missing == {}
    assert "~@privileged @resources" in values(text, "SystemCallFilter")
    # no directive of the [Service] section is set twice to different values by mistake
    # (SystemCallFilter and ReadWritePaths are lists: repeating them adds)
    seen: dict[str, str] = {}
    for section, key, value in directives(text):
        if section == "Service" and key not in {"SystemCallFilter", "ReadWritePaths"}:
            assert seen.setdefault(key, value) == value, key


EXPOSURE_THRESHOLD = {SERVER_UNIT: 15, AGENT_UNIT: 25}  # systemd-analyze's scale: 10 = "1.0"


def exposure_over(text: str, name: str, threshold: int, directory: Path) -> bool:
    tool = need_tool("systemd-analyze")
    path = directory / name
    path.write_text(text, encoding="utf-8")
    result = subprocess.run(
        [tool, "security", "--offline=yes", f"--threshold={threshold}", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=directory,
    )
    return result.returncode != 0


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_unit_exposure_score(unit: Path, tmp_path: Path) -> None:
    threshold = EXPOSURE_THRESHOLD[unit]
    assert not exposure_over(installed(unit), unit.name, threshold, tmp_path)
    bare = f"[Service]\nExecStart={VENV_BIN}/flagpost-server serve\n"
    assert exposure_over(bare, "bare.service", threshold, tmp_path)


def seconds(timespan: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", timespan)
    assert match, f"unexpected time span {timespan!r}"
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


def server_example() -> ServerConfig:
    return load_config(DEPLOY / "server.toml", env={})


def agent_example() -> agent_config.AgentConfig:
    return agent_config.load_config({}, env={}, config_file=DEPLOY / "agent.toml")


def test_stop_timeouts_cover_the_graceful_shutdowns() -> None:
    server = SERVER_UNIT.read_text(encoding="utf-8")
    # gRPC grace, then the web's shutdown, then commit what is queued and close the database
    needed = server_example().shutdown_grace_seconds + WEB_SHUTDOWN_TIMEOUT_S + 5
    assert seconds(one(server, "TimeoutStopSec")) >= needed
    agent = AGENT_UNIT.read_text(encoding="utf-8")
    # agent/daemon.py waits rpc_timeout + 5 s for the check-in thread, after the current step
    needed = agent_example().rpc_timeout.total_seconds() + 5 + 5
    assert seconds(one(agent, "TimeoutStopSec")) >= needed


def test_open_files_limit_leaves_the_web_its_cap_and_the_database_its_reserve() -> None:
    limit = int(one(SERVER_UNIT.read_text(encoding="utf-8"), "LimitNOFILE"))
    cap = server_example().web_max_connections
    assert web_connection_cap(cap, limit) == cap  # not lowered at start-up
    assert limit - cap >= 10 * FD_RESERVE  # and room for thousands of agents' gRPC connections
    assert web_connection_cap(cap, 1_024) <= 1_024 - FD_RESERVE  # systemd's default soft limit


def writable(text: str) -> set[Path]:
    paths = {Path("/var/lib") / name for name in " ".join(values(text, "StateDirectory")).split()}
    paths |= {
        Path("/etc") / name for name in " ".join(values(text, "ConfigurationDirectory")).split()
    }
    for entry in " ".join(values(text, "ReadWritePaths")).split():
        paths.add(Path(entry.removeprefix("-")))
    return paths


def test_unit_paths_agree_with_the_configs() -> None:
    server = SERVER_UNIT.read_text(encoding="utf-8")
    config = server_example()
    assert f"--config /etc/flagpost-server/{(DEPLOY / 'server.toml').name} " in one(
        server, "ExecStart"
    )
    assert writable(server) == {config.state_dir}
    assert Path(one(server, "WorkingDirectory")) == config.state_dir
    database = Path(config.database_url.removeprefix("sqlite+aiosqlite:///"))
    assert database.parent == config.state_dir, "the SQLite file (and -wal, -shm) must be writable"

    agent = AGENT_UNIT.read_text(encoding="utf-8")
    assert one(agent, "ExecStart").split()[1:] == ["run"]
    state = agent_example().state_dir
    rights = writable(agent)
    assert state in rights
    # the built-in chain's files (legacy v1 to v4) can all be written, and nothing else of /etc
    dirs = {path.parent for path in chain.config_files(Path("/"))}
    assert rights == {state, *dirs}
    assert agent_config.load_config({}, env={}).state_dir == state  # the default, no TOML


def test_sysusers_file_creates_the_units_user(tmp_path: Path) -> None:
    tool = need_tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    conf = DEPLOY / "sysusers.d" / "flagpost.conf"
    subprocess.run([tool, f"--root={tmp_path}", str(conf)], check=True, timeout=60)
    entries = [line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()]
    user = one(SERVER_UNIT.read_text(encoding="utf-8"), "User")
    (entry,) = [entry for entry in entries if entry[0] == user]
    assert Path(entry[5]) == server_example().state_dir
    assert entry[6] == "/usr/sbin/nologin"


# --- Running with the units' rights ---------------------------------------------------------------

# Turn on the kernel's W^X for this process and its children (what MemoryDenyWriteExecute=yes
# does with a seccomp filter), then exec the program: PR_SET_MDWE = 65,
# PR_MDWE_REFUSE_EXEC_GAIN = 1 (Linux 6.3). Exit 97: the kernel lacks it.
MDWE_EXEC = """
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(97)
os.execv(sys.argv[1], sys.argv[1:])
"""


def capabilities(unit: Path) -> list[str]:
    return one(unit.read_text(encoding="utf-8"), "CapabilityBoundingSet").split()


def restricted(caps: list[str], program: str, *args: str) -> list[str]:
    """argv running ``program`` with only ``caps`` (the bounding set, hence also what root
    holds after exec), no new privileges and no writable+executable memory."""
    keep = "".join(f",+{cap.lower().removeprefix('cap_')}" for cap in caps)
    return [
        need_tool("setpriv"),
        "--no-new-privs",
        f"--bounding-set=-all{keep}",
        "--inh-caps=-all",
        "--",
        sys.executable,
        "-c",
        MDWE_EXEC,
        str(VENV_BIN / program),
        *args,
    ]


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        message = "needs root: setpriv bounding sets, files of another user"
        if IN_CI:
            pytest.fail(message + " (CI runs as root)")
        pytest.skip(message)
    probe = subprocess.run(restricted([], "flagpost-agent", "--version"), timeout=60)
    if probe.returncode == 97:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux >= 6.3)")
    assert probe.returncode == 0


NOBODY = 65534
LEGACY_CONFIG = (
    "server_url = https://flagpost.example.net:50051\n"
    "agent_token = s3cret\n"
    "check_interval = 300\n"
    "log_level = info\n"
)


def legacy_host(root: Path) -> Path:
    """A host whose legacy config belongs to another user: 0600 in a 0700 directory."""
    legacy = chain.legacy_conf(root)
    legacy.parent.mkdir(parents=True)
    legacy.write_text(LEGACY_CONFIG, encoding="utf-8")
    legacy.chmod(0o600)
    legacy.parent.chmod(0o700)
    os.chown(legacy, NOBODY, NOBODY)
    os.chown(legacy.parent, NOBODY, NOBODY)
    (root / "etc/flagpost").mkdir(mode=0o755)  # as ConfigurationDirectory=flagpost makes it
    return legacy


def agent_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    env["FLAGPOST_AGENT_STARTUP_JITTER_SECONDS"] = "0"
    return env


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (argv, result.stdout, result.stderr)
    return result.stdout


def test_agent_needs_exactly_its_units_capability(as_root: None, tmp_path: Path) -> None:
    root = tmp_path / "host"
    legacy = legacy_host(root)
    denied = subprocess.run(
        restricted([], "flagpost-agent", "--root", str(root), "migrate"),
        env=agent_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert denied.returncode == 1, (denied.stdout, denied.stderr)
    assert "Permission denied" in denied.stdout + denied.stderr
    assert legacy.read_text(encoding="utf-8") == LEGACY_CONFIG
    assert not chain.json_conf(root).exists()

    caps = capabilities(AGENT_UNIT)
    out = run(
        restricted(caps, "flagpost-agent", "--root", str(root), "migrate"), tmp_path, agent_env()
    )
    assert not legacy.exists(), out
    assert chain.json_conf(root).is_file() and chain.secrets_file(root).is_file()
    assert chain.secrets_file(root).stat().st_mode & 0o777 == 0o600


@pytest.fixture
def restricted_server(as_root: None, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """flagpost-server serve with the server unit's rights; yields (database url, grpc port)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'flagpost.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    env["FLAGPOST_DATABASE_URL"] = url
    caps = capabilities(SERVER_UNIT)
    run(restricted(caps, "flagpost-server", "db", "upgrade"), tmp_path, env)
    password = tmp_path / "password"
    password.write_text("correct horse battery staple\n", encoding="utf-8")
    user = ["user", "create", "ops", "--role", "admin", "--password-file", str(password)]
    run(restricted(caps, "flagpost-server", *user), tmp_path, env)  # argon2id
    serve = ["serve", "--grpc-port", "0", "--web-port", "0", "--state-dir", str(tmp_path / "s")]
    process = subprocess.Popen(
        restricted(caps, "flagpost-server", *serve),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"grpc: 127\.0\.0\.1:(\d+)\n", line)
        assert match, (line, process.stderr.read() if process.poll() is not None else "")
        yield url, match.group(1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=seconds(one(SERVER_UNIT.read_text(), "TimeoutStopSec"))) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_server_and_agent_work_with_the_units_rights(
    restricted_server: tuple[str, str], tmp_path: Path
) -> None:
    url, port = restricted_server
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    env["FLAGPOST_DATABASE_URL"] = url
    token = run([str(VENV_BIN / "flagpost-server"), "token", "create"], tmp_path, env).strip()
    root = tmp_path / "host"
    legacy = legacy_host(root)
    caps = capabilities(AGENT_UNIT)
    agent = ["--root", str(root)]
    enroll = [*agent, "enroll", "--server", f"127.0.0.1:{port}", "--token", token]
    run(restricted(caps, "flagpost-agent", *enroll), tmp_path, agent_env())
    run(restricted(caps, "flagpost-agent", *agent, "once"), tmp_path, agent_env())
    assert not legacy.exists() and chain.json_conf(root).is_file()
    database = sqlite3.connect(url.removeprefix("sqlite+aiosqlite:///"))
    try:
        stored = set(database.execute("SELECT event_type, status FROM update_events"))
    finally:
        database.close()
    assert ("migration_execution", "success") in stored


# --- Example configs ------------------------------------------------------------------------------


def documented(path: Path) -> tuple[dict[str, str], list[str]]:
    """Each key of an example TOML (``table.key`` inside a table) with the literal of its
    ``# default: …`` comment, and the problems found: a key without a comment block above it, or
    whose block states no default."""
    defaults: dict[str, str] = {}
    problems: list[str] = []
    table = ""
    comments: list[str] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            comments.append(line.lstrip("#").strip())
            continue
        if line.startswith("["):
            table = "" if line == "[server]" else line.strip("[]") + "."
        elif line:
            key = table + line.partition("=")[0].strip()
            stated = [
                c.removeprefix("default:").strip() for c in comments if c.startswith("default:")
            ]
            if len(stated) != 1 or len(comments) < 1:
                problems.append(f"{path.name}:{number}: {key}: no '# default: ...' comment")
            else:
                defaults[key] = stated[0]
        comments = []
    return defaults, problems


def toml_with(key: str, literal: str) -> str:
    table, _, name = key.rpartition(".")
    return (f"[{table}]\n" if table else "") + f"{name} = {literal}\n"


def server_example_problems(path: Path, tmp_path: Path) -> list[str]:
    defaults, problems = documented(path)
    fields = {field.name for field in dataclasses.fields(ServerConfig)}
    problems += [f"setting {name} is not in {path.name}" for name in sorted(fields - set(defaults))]
    for key, literal in defaults.items():
        single = tmp_path / "single.toml"
        single.write_text(toml_with(key, literal), encoding="utf-8")
        try:
            loaded = load_config(single, env={})
        except (ConfigError, tomllib.TOMLDecodeError) as exc:
            problems.append(f"{key}: default {literal}: {exc}")
            continue
        if loaded != ServerConfig():
            problems.append(f"{key}: the stated default {literal} is not the real default")
    return problems


def test_server_example_loads_and_documents_every_setting(tmp_path: Path) -> None:
    config = server_example()
    assert set(tomllib.loads((DEPLOY / "server.toml").read_text())["server"]) == {
        field.name for field in dataclasses.fields(ServerConfig)
    }
    assert config.state_dir == Path("/var/lib/flagpost-server")
    assert server_example_problems(DEPLOY / "server.toml", tmp_path) == []


def test_server_example_check_catches_stale_docs(tmp_path: Path) -> None:
    text = (DEPLOY / "server.toml").read_text(encoding="utf-8")
    cases = {
        "wrong default": text.replace("# default: 50051", "# default: 50052"),
        "setting missing": text.replace("# default: 12\nsession_ttl_hours = 12\n", ""),
        "no comment": text.replace("# default: 2000\nretry_after_ms", "retry_after_ms"),
    }
    for name, mutated in cases.items():
        assert mutated != text, name
        path = tmp_path / "mutated.toml"
        path.write_text(mutated, encoding="utf-8")
        assert server_example_problems(path, tmp_path) != [], name


# Every field of AgentConfig / RetrySettings and the TOML key that sets it (None: not a key).
AGENT_FIELD_KEYS: dict[str, str | None] = {
    "root": "root",
    "state_dir_override": "state_dir",
    "server": "server",
    "checkin_interval": "checkin_interval_seconds",
    "startup_jitter": "startup_jitter_seconds",
    "retry": None,  # the [retry] table, below
    "max_events_per_checkin": "max_events_per_checkin",
    "max_log_lines_per_checkin": "max_log_lines_per_checkin",
    "max_batch_bytes": "max_batch_bytes",
    "max_chunks_per_cycle": "max_chunks_per_cycle",
    "rpc_timeout": "rpc_timeout_seconds",
    "fast_checkin_interval": "fast_checkin_interval_seconds",
    "fast_checkin_linger": "fast_checkin_linger_seconds",
    "crash_at": "crash_at",
    "step_delay": "step_delay_seconds",
    "input_timeout": "input_timeout_seconds",
    "log_level": "log_level",
    "config_file": None,  # --config / FLAGPOST_AGENT_CONFIG: which file this is
    "ca_file": "ca_file",
    "server_fingerprint": "server_fingerprint",
    "client_cert_file": "client_cert_file",
    "client_key_file": "client_key_file",
    "allowed_paths": "allowed_paths",
    "labels": "labels",
}
RETRY_FIELD_KEYS = {
    "initial": "retry.initial_seconds",
    "maximum": "retry.max_seconds",
    "multiplier": "retry.multiplier",
    "once_attempts": "retry.once_attempts",
}


def agent_example_problems(path: Path, tmp_path: Path) -> list[str]:
    defaults, problems = documented(path)
    accepted = set(agent_config._TOP_KEYS) | {f"retry.{k}" for k in agent_config._RETRY_KEYS}
    problems += [f"setting {key} is not in {path.name}" for key in sorted(accepted - set(defaults))]
    single = tmp_path / "single.toml"
    single.write_text("", encoding="utf-8")
    baseline = agent_config.load_config({}, env={}, config_file=single)
    for key, literal in defaults.items():
        single.write_text(toml_with(key, literal), encoding="utf-8")
        try:
            loaded = agent_config.load_config({}, env={}, config_file=single)
        except (agent_config.AgentConfigError, tomllib.TOMLDecodeError) as exc:
            problems.append(f"{key}: default {literal}: {exc}")
            continue
        if loaded != baseline:
            problems.append(f"{key}: the stated default {literal} is not the real default")
    return problems


def test_agent_example_loads_and_documents_every_setting(tmp_path: Path) -> None:
    config = agent_example()
    assert config.root == Path("/") and config.config_file == DEPLOY / "agent.toml"
    assert set(AGENT_FIELD_KEYS) == {f.name for f in dataclasses.fields(agent_config.AgentConfig)}
    assert set(RETRY_FIELD_KEYS) == {f.name for f in dataclasses.fields(agent_config.RetrySettings)}
    data: dict[str, Any] = tomllib.loads((DEPLOY / "agent.toml").read_text())
    keys = {k for k in data if k != "retry"} | {f"retry.{k}" for k in data["retry"]}
    wanted = {key for key in AGENT_FIELD_KEYS.values() if key} | set(RETRY_FIELD_KEYS.values())
    assert keys == wanted
    assert agent_example_problems(DEPLOY / "agent.toml", tmp_path) == []


def test_agent_example_check_catches_stale_docs(tmp_path: Path) -> None:
    text = (DEPLOY / "agent.toml").read_text(encoding="utf-8")
    cases = {
        "wrong default": text.replace("# default: 300\nmax_seconds", "# default: 600\nmax_seconds"),
        "setting missing": text.replace("# default: 50\nmax_chunks_per_cycle = 50\n", ""),
    }
    for name, mutated in cases.items():
        assert mutated != text, name
        path = tmp_path / "mutated.toml"
        path.write_text(mutated, encoding="utf-8")
        assert agent_example_problems(path, tmp_path) != [], name


# --- Alert rules ----------------------------------------------------------------------------------


def exposed_series() -> set[str]:
    """Every sample name of a server's /metrics (``ServerMetrics``, what the route serves)."""
    text = ServerMetrics().exposition().decode("utf-8")
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def alert_problems(path: Path) -> list[str]:
    rules = [
        rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]
    ]
    series = exposed_series()
    problems: list[str] = []
    for rule in rules:
        name = rule.get("alert", "?")
        if rule.get("labels", {}).get("severity") not in {"critical", "warning", "info"}:
            problems.append(f"{name}: severity label")
        if not rule.get("annotations", {}).get("summary"):
            problems.append(f"{name}: no summary")
        expr = str(rule["expr"])
        for metric in re.findall(r"\bflagpost_[a-z0-9_]+", expr):
            if metric not in series:
                problems.append(f"{name}: {metric} is not a series of /metrics")
        for reasons in re.findall(r'reason=~?"([^"]*)"', expr):
            problems += [
                f"{name}: reason {r!r}" for r in reasons.split("|") if r not in REJECTION_REASONS
            ]
    return problems


def test_alert_rules_name_real_series(tmp_path: Path) -> None:
    path = DEPLOY / "flagpost-alerts.yml"
    assert alert_problems(path) == []
    text = path.read_text(encoding="utf-8")
    for old, new in (
        ("flagpost_checkins_total", "flagpost_checkins_seen_total"),
        ('reason="overloaded"', 'reason="overload"'),
    ):
        assert old in text
        broken = tmp_path / "broken.yml"
        broken.write_text(text.replace(old, new), encoding="utf-8")
        assert alert_problems(broken) != [], new
