"""The built-in migration chain of the agent's own host config (current version: 4).

Versions (all paths under the agent's root; versions are the strings "1".."4" in events):

v1 (legacy) ``etc/aggregator/agent.conf``
    ``key = value`` lines, ``#`` comments, blank lines ignored. Keys: ``server_url`` (required),
    ``agent_token`` (required, a secret), ``check_interval`` (integer seconds > 0),
    ``log_level`` (debug/info/warning/error/critical), ``proxy`` (optional). Unknown and
    duplicate keys are errors (a migration must never silently drop a setting).
v2 ``etc/flagpost/agent.conf``
    Location move: the same bytes in the new directory; the legacy file is removed (the legacy
    directory is left in place, possibly empty).
v3 ``etc/flagpost/agent.json``
    Format change and key renames: JSON object ``{"config_version": 3, "server": {"url",
    "proxy"}, "checkin": {"interval_seconds"}, "logging": {"level"}, "agent_token"}``; the v2
    ``agent.conf`` is removed. The file keeps the permission bits of the file it replaces.
v4 ``etc/flagpost/agent.json`` + ``etc/flagpost/secrets.json``
    Secrets split: ``agent_token`` moves to ``secrets.json`` (mode 0600, ``{"agent_token": ...}``);
    ``agent.json`` gets ``"config_version": 4`` and ``"secrets_file": "secrets.json"``.

Detection looks at the new locations first (``agent.json``, whose ``config_version`` decides
between 3 and 4; then ``etc/flagpost/agent.conf``; then the legacy file). Parse and validation
errors name the file and, where there is one, the line (``agent.conf:7: expected 'key = value'``).
Messages never include values, so a token can never leak into an event.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import runlog
from agent.migrations.model import (
    Detected,
    DetectionError,
    FileOp,
    FileView,
    Migration,
    RemoveFile,
    Step,
    WriteFile,
)

MIGRATION_ID = "agent-config"
CURRENT_VERSION = "4"
SECRETS_MODE = 0o600
LOG_LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})
KV_KEYS = ("server_url", "agent_token", "check_interval", "log_level", "proxy")
REQUIRED_KV_KEYS = ("server_url", "agent_token")


def legacy_conf(root: Path) -> Path:
    return root / "etc/aggregator/agent.conf"


def new_conf(root: Path) -> Path:
    return root / "etc/flagpost/agent.conf"


def json_conf(root: Path) -> Path:
    return root / "etc/flagpost/agent.json"


def secrets_file(root: Path) -> Path:
    return root / "etc/flagpost/secrets.json"


def config_files(root: Path) -> tuple[Path, ...]:
    """Every file a run of this chain may touch."""
    return (legacy_conf(root), new_conf(root), json_conf(root), secrets_file(root))


@dataclass(frozen=True, slots=True)
class Settings:
    """The settings every version holds, independent of layout. ``repr`` hides the token."""

    server_url: str
    agent_token: str
    check_interval: int | None = None
    log_level: str | None = None
    proxy: str | None = None

    def __repr__(self) -> str:
        return (
            f"Settings(server_url={self.server_url!r}, agent_token='***', "
            f"check_interval={self.check_interval!r}, log_level={self.log_level!r}, "
            f"proxy={self.proxy!r})"
        )


# ---------------------------------------------------------------- reading


def _read_text(view: FileView, path: Path) -> str:
    try:
        raw = view.read_bytes(path)
    except OSError as exc:
        raise DetectionError.from_os_error(path, exc) from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DetectionError(
            f"{path.name}:{line}: not valid UTF-8",
            path=path,
            line=line,
            exception_type="UnicodeDecodeError",
        ) from exc


def parse_kv(text: str, path: Path) -> Settings:
    """Parse and validate a v1/v2 ``key = value`` file."""
    values: dict[str, tuple[str, int]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise DetectionError(
                f"{path.name}:{number}: expected 'key = value'", path=path, line=number
            )
        if key not in KV_KEYS:
            raise DetectionError(
                f"{path.name}:{number}: unknown key {key!r}", path=path, line=number
            )
        if key in values:
            raise DetectionError(
                f"{path.name}:{number}: duplicate key {key!r} (first on line {values[key][1]})",
                path=path,
                line=number,
            )
        values[key] = (value, number)
    for key in REQUIRED_KV_KEYS:
        if key not in values or not values[key][0]:
            raise DetectionError(f"{path.name}: missing required key {key!r}", path=path)
    interval: int | None = None
    if "check_interval" in values:
        text_value, number = values["check_interval"]
        if not text_value.isdigit() or int(text_value) <= 0:
            raise DetectionError(
                f"{path.name}:{number}: check_interval must be a positive integer "
                f"number of seconds",
                path=path,
                line=number,
            )
        interval = int(text_value)
    level: str | None = None
    if "log_level" in values:
        level, number = values["log_level"]
        if level.lower() not in LOG_LEVELS:
            raise DetectionError(
                f"{path.name}:{number}: log_level must be one of {', '.join(sorted(LOG_LEVELS))}",
                path=path,
                line=number,
            )
    return Settings(
        server_url=values["server_url"][0],
        agent_token=values["agent_token"][0],
        check_interval=interval,
        log_level=level,
        proxy=values["proxy"][0] if "proxy" in values else None,
    )


def _load_json(view: FileView, path: Path) -> dict[str, Any]:
    text = _read_text(view, path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DetectionError(
            f"{path.name}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})",
            path=path,
            line=exc.lineno,
            exception_type="JSONDecodeError",
        ) from exc
    if not isinstance(data, dict):
        raise DetectionError(f"{path.name}: expected a JSON object at the top level", path=path)
    return data


_JSON_TYPES = {str: "a string", int: "an integer", dict: "an object"}


def _get(
    data: dict[str, Any], dotted: str, kind: type, path: Path, *, required: bool = False
) -> Any:
    node: Any = data
    parts = dotted.split(".")
    for index, part in enumerate(parts):
        if not isinstance(node, dict):
            parent = ".".join(parts[:index])
            raise DetectionError(f"{path.name}: {parent!r} must be an object", path=path)
        if part not in node:
            if required:
                raise DetectionError(f"{path.name}: missing required key {dotted!r}", path=path)
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, kind):
        raise DetectionError(
            f"{path.name}: {dotted!r} must be {_JSON_TYPES[kind]}, got {type(node).__name__}",
            path=path,
            exception_type="ConfigTypeError",
        )
    return node


def parse_json_settings(data: dict[str, Any], path: Path, token: str | None) -> Settings:
    """Validate a v3/v4 ``agent.json`` object; ``token`` comes from ``secrets.json`` in v4."""
    url = _get(data, "server.url", str, path, required=True)
    if not url:
        raise DetectionError(f"{path.name}: 'server.url' must not be empty", path=path)
    proxy = _get(data, "server.proxy", str, path)
    interval = _get(data, "checkin.interval_seconds", int, path)
    if interval is not None and interval <= 0:
        raise DetectionError(f"{path.name}: 'checkin.interval_seconds' must be positive", path=path)
    level = _get(data, "logging.level", str, path)
    if level is not None and level.lower() not in LOG_LEVELS:
        raise DetectionError(
            f"{path.name}: 'logging.level' must be one of {', '.join(sorted(LOG_LEVELS))}",
            path=path,
        )
    if token is None:
        token = _get(data, "agent_token", str, path, required=True)
    if not token:
        raise DetectionError(f"{path.name}: 'agent_token' must not be empty", path=path)
    return Settings(url, token, interval, level, proxy)


def _load_secrets(view: FileView, path: Path) -> str:
    if not view.exists(path):
        raise DetectionError(
            f"{path.name}: secrets file is missing",
            path=path,
            errno=2,
            exception_type="FileNotFoundError",
        )
    secrets = _load_json(view, path)
    token = _get(secrets, "agent_token", str, path, required=True)
    assert isinstance(token, str)
    return token


def read_version(view: FileView) -> tuple[str | None, Path | None, Settings | None]:
    """The version on disk, its main file and its validated settings (all None: nothing found).

    A :class:`DetectionError` carries the version the failing file belongs to (``version``)."""
    try:
        return _read_version(view)
    except DetectionError as exc:
        if not exc.version:
            exc.version = _version_by_location(view)
        raise


def _version_by_location(view: FileView) -> str:
    """The version a file's location (and config_version, if readable) suggests."""
    root = view.root
    if view.exists(json_conf(root)):
        try:
            version = json.loads(view.read_bytes(json_conf(root))).get("config_version")
        except (OSError, ValueError, AttributeError):
            return ""
        return str(version) if version in (3, 4) else ""
    if view.exists(new_conf(root)):
        return "2"
    if view.exists(legacy_conf(root)):
        return "1"
    return ""


def _read_version(view: FileView) -> tuple[str | None, Path | None, Settings | None]:
    root = view.root
    if view.exists(json_conf(root)):
        path = json_conf(root)
        data = _load_json(view, path)
        version = data.get("config_version")
        if version == 3:
            if "secrets_file" in data:
                raise DetectionError(
                    f"{path.name}: 'secrets_file' is not valid in version 3", path=path
                )
            return "3", path, parse_json_settings(data, path, None)
        if version == 4:
            name = _get(data, "secrets_file", str, path, required=True)
            if "agent_token" in data:
                raise DetectionError(
                    f"{path.name}: 'agent_token' must live in the secrets file in version 4",
                    path=path,
                )
            if not name or "/" in name or name in (".", ".."):
                raise DetectionError(
                    f"{path.name}: 'secrets_file' must name a file next to {path.name}",
                    path=path,
                )
            token = _load_secrets(view, path.parent / name)
            return "4", path, parse_json_settings(data, path, token)
        raise DetectionError(
            f"{path.name}: unsupported config_version {version!r} (expected 3 or 4)",
            path=path,
        )
    for version, path in (("2", new_conf(root)), ("1", legacy_conf(root))):
        if view.exists(path):
            return version, path, parse_kv(_read_text(view, path), path)
    return None, None, None


def detect(view: FileView) -> Detected:
    """Detection for the registry: which version is on disk (see the module docstring)."""
    version, path, _settings = read_version(view)
    if version is None:
        return Detected(None, None, f"No agent config found under {view.root}")
    return Detected(version, path, f"Agent config version {version} at {path}")


def verify(view: FileView) -> None:
    """After a full migration: the result is valid version 4 and the secrets file is 0600."""
    version, _path, _settings = read_version(view)
    if version != CURRENT_VERSION:
        raise DetectionError(f"verify: expected version {CURRENT_VERSION}, found {version}")
    path = secrets_file(view.root)
    mode = view.mode(path)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DetectionError(f"verify: {path.name} has mode {mode:04o}, expected 0600", path=path)


# ---------------------------------------------------------------- steps


def _json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")


def _v3_document(settings: Settings) -> dict[str, Any]:
    server: dict[str, Any] = {"url": settings.server_url}
    if settings.proxy is not None:
        server["proxy"] = settings.proxy
    document: dict[str, Any] = {"config_version": 3, "server": server}
    if settings.check_interval is not None:
        document["checkin"] = {"interval_seconds": settings.check_interval}
    if settings.log_level is not None:
        document["logging"] = {"level": settings.log_level}
    document["agent_token"] = settings.agent_token
    return document


def _step_move(view: FileView) -> Sequence[FileOp]:
    source, target = legacy_conf(view.root), new_conf(view.root)
    data = view.read_bytes(source)
    parse_kv(_read_text(view, source), source)
    return [WriteFile(target, data, view.mode(source)), RemoveFile(source)]


def _step_to_json(view: FileView) -> Sequence[FileOp]:
    source, target = new_conf(view.root), json_conf(view.root)
    settings = parse_kv(_read_text(view, source), source)
    return [
        WriteFile(target, _json_bytes(_v3_document(settings)), view.mode(source)),
        RemoveFile(source),
    ]


def _step_split_secrets(view: FileView) -> Sequence[FileOp]:
    path = json_conf(view.root)
    data = _load_json(view, path)
    settings = parse_json_settings(data, path, None)
    document = _v3_document(settings)
    del document["agent_token"]
    document["config_version"] = 4
    document["secrets_file"] = secrets_file(view.root).name
    runlog.current().info(
        "agent_token moves out of agent.json into secrets.json (mode 0600)",
        secrets_file=str(secrets_file(view.root)),
    )
    return [
        WriteFile(
            secrets_file(view.root),
            _json_bytes({"agent_token": settings.agent_token}),
            SECRETS_MODE,
        ),
        WriteFile(path, _json_bytes(document), view.mode(path)),
    ]


STEPS = (
    Step(
        "v1_to_v2_move_location",
        "1",
        "2",
        "move etc/aggregator/agent.conf to etc/flagpost/agent.conf",
        _step_move,
    ),
    Step(
        "v2_to_v3_json_format",
        "2",
        "3",
        "convert agent.conf to agent.json and rename keys",
        _step_to_json,
    ),
    Step(
        "v3_to_v4_split_secrets",
        "3",
        "4",
        "move agent_token into secrets.json (mode 0600)",
        _step_split_secrets,
    ),
)


def agent_config_migration() -> Migration:
    """The built-in chain, registered like any user migration."""
    return Migration(
        id=MIGRATION_ID,
        title="Flagpost agent host config",
        current_version=CURRENT_VERSION,
        detect=detect,
        files=config_files,
        steps=STEPS,
        verify=verify,
    )
