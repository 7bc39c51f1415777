"""The agent's one typed, frozen configuration object.

Layers, lowest first: defaults < TOML file < ``FLAGPOST_AGENT_*`` environment < command-line flags.
The TOML file is ``--config`` if given, else ``<root>/etc/flagpost-agent/agent.toml`` when it
exists. This is the only agent module that reads the environment, and only through the mapping
passed to :func:`load_config` (``os.environ`` when none is given).

TOML keys (all optional)::

    root = "/"                        # every path hangs off it
    state_dir = "/var/lib/flagpost-agent"   # default: <root>/var/lib/flagpost-agent
    server = "127.0.0.1:50051"        # default: the address stored at enrollment
    checkin_interval_seconds = 60
    startup_jitter_seconds = 30       # first check-in after start: uniform(0, min(this, interval))
    max_events_per_checkin = 200          # also the bound for run updates per request
    max_log_lines_per_checkin = 500
    max_batch_bytes = 1000000             # events + run updates + log lines of one request
    max_chunks_per_cycle = 50
    rpc_timeout_seconds = 10
    log_level = "INFO"
    fast_checkin_interval_seconds = 0.5   # while a run is live (at most 1)
    fast_checkin_linger_seconds = 5       # fast cadence for this long after a run ends
    crash_at = ""                     # test-only fault injection point
    step_delay_seconds = 0            # test/demo knob: pause before each migration step
    input_timeout_seconds = 86400     # a run waiting for input (AWAITING_INPUT) fails after this
    ca_file = "/etc/flagpost-agent/ca.pem"  # TLS: verify the server against this CA
    server_fingerprint = "sha256:ab12..."  # TLS: or pin the server certificate's sha256
    client_cert_file = ""             # mutual TLS: this agent's certificate and key (PEM)
    client_key_file = ""
    allowed_paths = ["/etc"]          # the files a migration spec may touch (under root)
    labels = { env = "prod", role = "db" }  # reported with the host facts; selectors match them
    [retry]
    initial_seconds = 1
    max_seconds = 300
    multiplier = 2
    once_attempts = 3

Environment: ``FLAGPOST_AGENT_`` + upper-cased key (``FLAGPOST_AGENT_CHECKIN_INTERVAL_SECONDS``);
retry keys are ``FLAGPOST_AGENT_RETRY_INITIAL_SECONDS`` and so on. ``allowed_paths`` from the
environment (or the command line) is a comma-separated list. ``labels`` from the environment
(``FLAGPOST_AGENT_LABELS``) is ``key=value`` pairs separated by commas (``env=prod,role=db``);
label keys match ``[a-z0-9][a-z0-9_.-]{0,62}``, values are at most 128 printable characters, and
an agent carries at most 32 labels.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import EXIT_USAGE, AgentError

ENV_PREFIX = "FLAGPOST_AGENT_"
LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
LABEL_KEY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
MAX_LABEL_VALUE = 128
MAX_LABELS = 32


class AgentConfigError(AgentError):
    """The agent's configuration (TOML, environment or flags) is invalid."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Exponential backoff with full jitter: delay n is uniform in [0, min(max, initial * m**n)]."""

    initial: timedelta = timedelta(seconds=1)
    maximum: timedelta = timedelta(seconds=300)
    multiplier: float = 2.0
    once_attempts: int = 3  # check-in attempts of `flagpost-agent once` before giving up


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Every setting of ``flagpost-agent``; build it with :func:`load_config`."""

    root: Path = Path("/")
    state_dir_override: Path | None = None
    server: str = ""
    checkin_interval: timedelta = timedelta(seconds=60)
    startup_jitter: timedelta = timedelta(seconds=30)
    retry: RetrySettings = field(default_factory=RetrySettings)
    max_events_per_checkin: int = 200
    max_log_lines_per_checkin: int = 500
    max_batch_bytes: int = 1_000_000
    max_chunks_per_cycle: int = 50
    rpc_timeout: timedelta = timedelta(seconds=10)
    fast_checkin_interval: timedelta = timedelta(seconds=0.5)
    fast_checkin_linger: timedelta = timedelta(seconds=5)
    crash_at: str = ""
    # Test/demo knob (FLAGPOST_AGENT_STEP_DELAY_SECONDS): the engine pauses this long before
    # each migration step (waking early on cancel or shutdown) so a run can be watched live and
    # cancelled mid-run. 0 in production.
    step_delay: timedelta = timedelta(0)
    # How long a run may wait for input in total (across agent restarts) before it fails with
    # "no input within 24 h for: ..." (agent/inputs.py, FLAGPOST_AGENT_INPUT_TIMEOUT_SECONDS).
    input_timeout: timedelta = timedelta(days=1)
    log_level: str = "INFO"
    config_file: Path | None = None
    # TLS (agent/tls.py): with a CA file or a pinned server certificate fingerprint (lower-case
    # hex sha256) the agent talks TLS and verifies the server; neither means plain text. A client
    # certificate and key are presented to a server that requires mutual TLS.
    ca_file: Path | None = None
    server_fingerprint: str = ""
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    # Migration specs (agent/specs/): every file a spec names must resolve (after ``..`` and
    # symlinks) under one of these absolute directories, each taken under ``root`` like every
    # other path (agent/specs/paths.py).
    allowed_paths: tuple[str, ...] = ("/etc",)
    # Labels (``labels = { env = "prod" }``): sent in HostFacts.labels with every check-in so
    # the server's selectors can pick this host; sorted by key.
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def state_dir(self) -> Path:
        """Outbox, credentials, backups and the migration journal live here."""
        if self.state_dir_override is not None:
            return self.state_dir_override
        return self.root / "var/lib/flagpost-agent"

    @property
    def outbox_path(self) -> Path:
        return self.state_dir / "outbox.db"

    @property
    def credentials_path(self) -> Path:
        return self.state_dir / "credentials.json"

    @property
    def journal_path(self) -> Path:
        return state_journal_path(self.state_dir)

    @property
    def backups_dir(self) -> Path:
        return state_backups_dir(self.state_dir)

    @property
    def specs_dir(self) -> Path:
        """The installed server-defined specs (agent/specs/store.py)."""
        return self.state_dir / "specs"


def state_journal_path(state_dir: Path) -> Path:
    """The migration journal in the agent's state directory (present while a run is in flight)."""
    return state_dir / "migration-journal.json"


def state_backups_dir(state_dir: Path) -> Path:
    """Where each run's backup directory is made, in the agent's state directory."""
    return state_dir / "backups"


_Number = TypeVar("_Number", int, float)


def _as_number(name: str, value: Any, minimum: _Number, kind: type[_Number], noun: str) -> _Number:
    """``kind(value)`` when it is at least ``minimum``; booleans are refused (``noun``: what
    the error says was expected)."""
    if isinstance(value, bool):
        raise AgentConfigError(f"{name}: expected {noun}, got a boolean")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise AgentConfigError(f"{name}: expected {noun}, got {value!r}") from None
    if number < minimum:
        raise AgentConfigError(f"{name}: must be >= {minimum}, got {number}")
    return number


def _as_int(name: str, value: Any, minimum: int = 0) -> int:
    return _as_number(name, value, minimum, int, "an integer")


def _as_float(name: str, value: Any, minimum: float) -> float:
    return _as_number(name, value, minimum, float, "a number")


def _seconds(name: str, value: Any, minimum: float = 0.0) -> timedelta:
    return timedelta(seconds=_as_float(name, value, minimum))


_RETRY_KEYS = ("initial_seconds", "max_seconds", "multiplier", "once_attempts")
_TOP_KEYS = (
    "root",
    "state_dir",
    "server",
    "checkin_interval_seconds",
    "startup_jitter_seconds",
    "max_events_per_checkin",
    "max_log_lines_per_checkin",
    "max_batch_bytes",
    "max_chunks_per_cycle",
    "rpc_timeout_seconds",
    "fast_checkin_interval_seconds",
    "fast_checkin_linger_seconds",
    "crash_at",
    "step_delay_seconds",
    "input_timeout_seconds",
    "log_level",
    "ca_file",
    "server_fingerprint",
    "client_cert_file",
    "client_key_file",
    "allowed_paths",
    "labels",
)


def _apply(config: AgentConfig, values: Mapping[str, Any], source: str) -> AgentConfig:
    """Layer ``values`` (flat keys; retry keys prefixed ``retry_``) over ``config``."""
    changes: dict[str, Any] = {}
    retry_changes: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{source} {key}"
        if key == "root":
            changes["root"] = Path(str(value))
        elif key == "state_dir":
            changes["state_dir_override"] = Path(str(value)) if str(value) else None
        elif key == "server":
            changes["server"] = _server_address(name, value)
        elif key == "checkin_interval_seconds":
            changes["checkin_interval"] = _seconds(name, value, 0.01)
        elif key == "startup_jitter_seconds":
            changes["startup_jitter"] = _seconds(name, value)
        elif key == "rpc_timeout_seconds":
            changes["rpc_timeout"] = _seconds(name, value, 0.01)
        elif key in (
            "max_events_per_checkin",
            "max_log_lines_per_checkin",
            "max_batch_bytes",
            "max_chunks_per_cycle",
        ):
            changes[key] = _as_int(name, value, 1)
        elif key == "fast_checkin_interval_seconds":
            fast = _seconds(name, value, 0.01)
            if fast > timedelta(seconds=1):
                raise AgentConfigError(f"{name}: must be at most 1 second, got {value}")
            changes["fast_checkin_interval"] = fast
        elif key == "fast_checkin_linger_seconds":
            changes["fast_checkin_linger"] = _seconds(name, value)
        elif key == "step_delay_seconds":
            changes["step_delay"] = _seconds(name, value)
        elif key == "input_timeout_seconds":
            changes["input_timeout"] = _seconds(name, value, 0.01)
        elif key == "crash_at":
            changes["crash_at"] = str(value)
        elif key == "log_level":
            level = str(value).upper()
            if level not in LOG_LEVELS:
                raise AgentConfigError(f"{name}: unknown log level {value!r}")
            changes["log_level"] = level
        elif key in ("ca_file", "client_cert_file", "client_key_file"):
            changes[key] = Path(str(value)) if str(value) else None
        elif key == "server_fingerprint":
            changes[key] = _fingerprint(name, value)
        elif key == "allowed_paths":
            changes[key] = _allowed_paths(name, value)
        elif key == "labels":
            changes[key] = _labels(name, value)
        elif key == "retry_initial_seconds":
            retry_changes["initial"] = _seconds(name, value)
        elif key == "retry_max_seconds":
            retry_changes["maximum"] = _seconds(name, value)
        elif key == "retry_multiplier":
            retry_changes["multiplier"] = _as_float(name, value, 1.0)
        elif key == "retry_once_attempts":
            retry_changes["once_attempts"] = _as_int(name, value, 1)
        else:
            raise AgentConfigError(f"{source}: unknown setting {key!r}")
    if retry_changes:
        changes["retry"] = replace(config.retry, **retry_changes)
    return replace(config, **changes)


def _server_address(name: str, value: Any) -> str:
    """``HOST:PORT``; a URL (``http://``, ``https://``, ``grpc://``) is refused, naming how TLS
    is chosen instead (a scheme does not choose it)."""
    text = str(value).strip()
    scheme, sep, rest = text.partition("://")
    if sep:
        address = rest.rstrip("/") or "HOST:PORT"
        raise AgentConfigError(
            f"{name}: {text!r} is a URL; give HOST:PORT (e.g. {address}), the server's gRPC "
            f"address. TLS is not chosen by a {scheme}:// prefix: it is on when ca_file or "
            "server_fingerprint is set (agent.toml, or FLAGPOST_AGENT_CA_FILE / "
            "FLAGPOST_AGENT_SERVER_FINGERPRINT), plain text otherwise"
        )
    return text


def _fingerprint(name: str, value: Any) -> str:
    """``sha256:AB:CD...``, ``abcd...`` -> 64 lower-case hex digits ("" stays "")."""
    text = str(value).strip().lower()
    text = text.removeprefix("sha256:").replace(":", "")
    if text and (len(text) != 64 or any(c not in "0123456789abcdef" for c in text)):
        raise AgentConfigError(f"{name}: expected a sha256 fingerprint (64 hex digits)")
    return text


def _allowed_paths(name: str, value: Any) -> tuple[str, ...]:
    """A list of absolute directories (a comma-separated string from the environment or the
    command line), each normalised; ``..`` components and relative paths are refused."""
    if isinstance(value, str):
        items: list[Any] = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise AgentConfigError(f"{name}: expected a list of absolute directories")
    paths: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.startswith("/"):
            raise AgentConfigError(f"{name}: {item!r} is not an absolute path")
        if "\0" in item or ".." in item.split("/"):
            raise AgentConfigError(f"{name}: {item!r} must not contain '..'")
        normalised = os.path.normpath(item)
        paths.append("/" + normalised.lstrip("/"))
    return tuple(dict.fromkeys(paths))


def _labels(name: str, value: Any) -> tuple[tuple[str, str], ...]:
    """A table of labels (``key=value,...`` from the environment or the command line), each key
    ``[a-z0-9][a-z0-9_.-]{0,62}``, each value at most 128 printable characters, at most 32."""
    if isinstance(value, str):
        pairs: list[tuple[Any, Any]] = []
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            key, sep, text = part.partition("=")
            if not sep:
                raise AgentConfigError(f"{name}: {part!r} is not key=value")
            pairs.append((key.strip(), text.strip()))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        raise AgentConfigError(
            f'{name}: expected a table of labels, e.g. labels = {{ env = "prod" }}'
        )
    labels: dict[str, str] = {}
    for key, text in pairs:
        if not isinstance(key, str) or not LABEL_KEY.fullmatch(key):
            raise AgentConfigError(
                f"{name}.{key}: a label key is 1-63 of a-z 0-9 _ . - (starting with a letter "
                "or digit)"
            )
        if not isinstance(text, str):
            raise AgentConfigError(f"{name}.{key}: a label value must be a string")
        if len(text) > MAX_LABEL_VALUE or not text.isprintable():
            raise AgentConfigError(
                f"{name}.{key}: a label value is at most {MAX_LABEL_VALUE} printable characters"
            )
        labels[key] = text
    if len(labels) > MAX_LABELS:
        raise AgentConfigError(f"{name}: at most {MAX_LABELS} labels, got {len(labels)}")
    return tuple(sorted(labels.items()))


def _flatten_toml(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "retry":
            if not isinstance(value, dict):
                raise AgentConfigError(f"{path}: [retry] must be a table")
            for sub, subvalue in value.items():
                if sub not in _RETRY_KEYS:
                    raise AgentConfigError(f"{path}: unknown setting retry.{sub}")
                flat[f"retry_{sub}"] = subvalue
        elif key in _TOP_KEYS:
            flat[key] = value
        else:
            raise AgentConfigError(f"{path}: unknown setting {key!r}")
    return flat


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    keys = _TOP_KEYS + tuple(f"retry_{key}" for key in _RETRY_KEYS)
    return {key: env[ENV_PREFIX + key.upper()] for key in keys if ENV_PREFIX + key.upper() in env}


def load_config(
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> AgentConfig:
    """Build the config: defaults < TOML < ``FLAGPOST_AGENT_*`` env < ``cli`` (flat keys, as in
    the TOML, ``None`` values ignored). Raises :class:`AgentConfigError` on any invalid value."""
    env = os.environ if env is None else env
    cli_values = {k: v for k, v in (cli or {}).items() if v is not None}
    env_values = _from_env(env)
    # The root decides where the default TOML file is: flags first, then the environment.
    root = Path(str(cli_values.get("root", env_values.get("root", "/"))))
    if config_file is None and env.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(env[ENV_PREFIX + "CONFIG"])
    explicit = config_file is not None
    toml_path = config_file if config_file is not None else root / "etc/flagpost-agent/agent.toml"
    config = AgentConfig()
    if explicit or toml_path.exists():
        try:
            with toml_path.open("rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise AgentConfigError(f"{toml_path}: cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise AgentConfigError(f"{toml_path}: {exc}") from exc
        config = _apply(config, _flatten_toml(data, toml_path), str(toml_path))
        config = replace(config, config_file=toml_path)
    config = _apply(config, env_values, "environment")
    config = _apply(config, cli_values, "command line")
    if (config.client_cert_file is None) != (config.client_key_file is None):
        raise AgentConfigError("client_cert_file and client_key_file must be set together")
    if config.client_cert_file is not None and not (config.ca_file or config.server_fingerprint):
        raise AgentConfigError("client_cert_file needs ca_file or server_fingerprint (TLS)")
    return config
