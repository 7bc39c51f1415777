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

Two optional sections of the legacy file name services whose secret the old version never held,
only a verifier (a salted scrypt hash, see :mod:`agent.migrations.verifier`)::

    [database]
    url = postgresql://fleet@db.example/fleet      # a PostgreSQL database, without a password
    password_verifier = scrypt$16384$8$1$...$...
    [upstream]
    url = https://upstream.example/api             # optional
    token_verifier = scrypt$16384$8$1$...$...

They travel unchanged to v3 (``"database": {"url", "password_verifier"}``, ``"upstream":
{"url", "token_verifier"}``). The v3 -> v4 step then needs the secrets themselves: it declares
the inputs ``database_password`` ("Database password") and ``upstream_token`` ("Upstream API
token"), so the run waits (AWAITING_INPUT) until an admin typed them, checks each against its
verifier, and writes them into ``secrets.json`` (0600), the only file that ever holds them; v4's
``agent.json`` keeps the urls and drops the verifiers. A config without these sections needs no
input.

Detection looks at the new locations first (``agent.json``, whose ``config_version`` decides
between 3 and 4; then ``etc/flagpost/agent.conf``; then the legacy file). Parse and validation
errors name the file and, where there is one, the line (``agent.conf:7: expected 'key = value'``).
Messages never include values, so a token can never leak into an event.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent import runlog

# From model.py, not the package (agent.migrations re-exports the same names; importing the
# package from inside it is a cycle): the repeated name list is deliberate.
from agent.migrations.model import (
    Detected,
    DetectionError,
    FileOp,
    FileView,
    InputNeeds,
    Inputs,
    InputSpec,
    Migration,
    RemoveFile,
    Step,
    WriteFile,
)
from agent.migrations.verifier import (
    VerifierError,
    check_verifier,
    make_verifier,
    parse_verifier,
)

MIGRATION_ID = "agent-config"
CURRENT_VERSION = "4"
SECRETS_MODE = 0o600
LOG_LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})
KV_KEYS = ("server_url", "agent_token", "check_interval", "log_level", "proxy")
REQUIRED_KV_KEYS = ("server_url", "agent_token")
# Legacy sections: key -> required
SECTIONS: dict[str, dict[str, bool]] = {
    "database": {"url": True, "password_verifier": True},
    "upstream": {"url": False, "token_verifier": True},
}
# Input names (not secrets themselves).
DATABASE_PASSWORD = "database_password"  # noqa: S105
UPSTREAM_TOKEN = "upstream_token"  # noqa: S105


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
class Database:
    """The ``[database]`` section: a PostgreSQL url (no password) and, up to v3, the verifier of
    its password."""

    url: str
    password_verifier: str = ""

    @property
    def name(self) -> str:
        """The database name (the url's path)."""
        return urlsplit(self.url).path.lstrip("/")


@dataclass(frozen=True, slots=True)
class Upstream:
    """The ``[upstream]`` section: an optional url and, up to v3, the verifier of its token."""

    url: str | None = None
    token_verifier: str = ""


@dataclass(frozen=True, slots=True)
class Settings:
    """The settings every version holds, independent of layout. ``repr`` hides the token."""

    server_url: str
    agent_token: str
    check_interval: int | None = None
    log_level: str | None = None
    proxy: str | None = None
    database: Database | None = None
    upstream: Upstream | None = None

    def __repr__(self) -> str:
        return (
            f"Settings(server_url={self.server_url!r}, agent_token='***', "
            f"check_interval={self.check_interval!r}, log_level={self.log_level!r}, "
            f"proxy={self.proxy!r}, database={self.database is not None}, "
            f"upstream={self.upstream is not None})"
        )


def _check_database_url(url: str, where: str, path: Path, line: int = 0) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise DetectionError(
            f"{where}: database url must be postgresql://user@host/dbname", path=path, line=line
        )
    if parts.password is not None:
        raise DetectionError(
            f"{where}: database url must not hold a password (it is asked for when migrating)",
            path=path,
            line=line,
        )
    if not parts.path.lstrip("/"):
        raise DetectionError(f"{where}: database url names no database", path=path, line=line)


def _check_verifier_text(text: str, where: str, path: Path, line: int = 0) -> None:
    try:
        parse_verifier(text)
    except VerifierError as exc:
        raise DetectionError(
            f"{where}: invalid verifier: {exc}",
            path=path,
            line=line,
            exception_type="VerifierError",
        ) from None


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
    """Parse and validate a v1/v2 ``key = value`` file (with optional ``[database]`` and
    ``[upstream]`` sections after the top-level keys)."""
    values: dict[str, tuple[str, int]] = {}
    sections: dict[str, dict[str, tuple[str, int]]] = {}
    section: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            if section not in SECTIONS:
                raise DetectionError(
                    f"{path.name}:{number}: unknown section [{section}]", path=path, line=number
                )
            if section in sections:
                raise DetectionError(
                    f"{path.name}:{number}: duplicate section [{section}]", path=path, line=number
                )
            sections[section] = {}
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise DetectionError(
                f"{path.name}:{number}: expected 'key = value'", path=path, line=number
            )
        if section is not None:
            _section_value(sections[section], section, key, value, number, path)
            continue
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
    database: Database | None = None
    upstream: Upstream | None = None
    for name, entries in sections.items():
        for key, required in SECTIONS[name].items():
            if required and (key not in entries or not entries[key][0]):
                raise DetectionError(
                    f"{path.name}: [{name}] misses required key {key!r}", path=path
                )
        if name == "database":
            url, number = entries["url"]
            _check_database_url(url, f"{path.name}:{number}", path, number)
            verifier, number = entries["password_verifier"]
            _check_verifier_text(verifier, f"{path.name}:{number}", path, number)
            database = Database(url, verifier)
        else:
            verifier, number = entries["token_verifier"]
            _check_verifier_text(verifier, f"{path.name}:{number}", path, number)
            upstream = Upstream(entries["url"][0] if "url" in entries else None, verifier)
    return Settings(
        server_url=values["server_url"][0],
        agent_token=values["agent_token"][0],
        check_interval=interval,
        log_level=level,
        proxy=values["proxy"][0] if "proxy" in values else None,
        database=database,
        upstream=upstream,
    )


def _section_value(
    entries: dict[str, tuple[str, int]], section: str, key: str, value: str, number: int, path: Path
) -> None:
    if key not in SECTIONS[section]:
        raise DetectionError(
            f"{path.name}:{number}: unknown key {key!r} in [{section}]", path=path, line=number
        )
    if key in entries:
        raise DetectionError(
            f"{path.name}:{number}: duplicate key {key!r} in [{section}] "
            f"(first on line {entries[key][1]})",
            path=path,
            line=number,
        )
    entries[key] = (value, number)


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


def _verifier_key(data: dict[str, Any], key: str, path: Path, with_verifiers: bool) -> str:
    """The verifier at ``key`` (dotted): required and well-formed in v3 (``with_verifiers``),
    refused in v4, where the secret itself is in secrets.json ("" then)."""
    verifier = _get(data, key, str, path, required=with_verifiers)
    label = f"{path.name}: '{key}'"
    if not with_verifiers:
        if verifier is not None:
            raise DetectionError(f"{label} is not valid in version 4", path=path)
        return ""
    _check_verifier_text(verifier, label, path)
    return str(verifier)


def _json_sections(
    data: dict[str, Any], path: Path, with_verifiers: bool
) -> tuple[Database | None, Upstream | None]:
    """The ``database`` and ``upstream`` objects of agent.json (v3: with verifiers; v4: the
    verifiers are gone, the secrets are in secrets.json)."""
    database: Database | None = None
    upstream: Upstream | None = None
    if "database" in data:
        url = _get(data, "database.url", str, path, required=True)
        _check_database_url(url, f"{path.name}: 'database.url'", path)
        verifier = _verifier_key(data, "database.password_verifier", path, with_verifiers)
        database = Database(url, verifier)
    if "upstream" in data:
        _get(data, "upstream", dict, path)
        url = _get(data, "upstream.url", str, path)
        verifier = _verifier_key(data, "upstream.token_verifier", path, with_verifiers)
        upstream = Upstream(url, verifier)
    return database, upstream


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
    database, upstream = _json_sections(data, path, with_verifiers=data.get("config_version") == 3)
    return Settings(url, token, interval, level, proxy, database, upstream)


def _load_secrets(view: FileView, path: Path, config: dict[str, Any]) -> str:
    """The agent token from secrets.json, which must also hold the secret of every section
    ``config`` (agent.json v4) has."""
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
    for section, key in (("database", DATABASE_PASSWORD), ("upstream", UPSTREAM_TOKEN)):
        if section in config and not _get(secrets, key, str, path, required=True):
            raise DetectionError(f"{path.name}: {key!r} must not be empty", path=path)
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
            token = _load_secrets(view, path.parent / name, data)
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
    if settings.database is not None:
        document["database"] = {
            "url": settings.database.url,
            "password_verifier": settings.database.password_verifier,
        }
    if settings.upstream is not None:
        upstream: dict[str, Any] = {}
        if settings.upstream.url is not None:
            upstream["url"] = settings.upstream.url
        upstream["token_verifier"] = settings.upstream.token_verifier
        document["upstream"] = upstream
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


def _v3_settings(view: FileView) -> Settings:
    path = json_conf(view.root)
    return parse_json_settings(_load_json(view, path), path, None)


def _secret_inputs(view: FileView) -> Sequence[InputSpec]:
    """The secrets the v3 config holds only verifiers of."""
    settings = _v3_settings(view)
    specs = []
    if settings.database is not None:
        specs.append(InputSpec(DATABASE_PASSWORD, "Database password", secret=True))
    if settings.upstream is not None:
        specs.append(InputSpec(UPSTREAM_TOKEN, "Upstream API token", secret=True))
    return specs


def _check_secret_inputs(view: FileView, inputs: Inputs) -> Mapping[str, str]:
    """Each given secret against the verifier the old version stored."""
    settings = _v3_settings(view)
    errors: dict[str, str] = {}
    database, upstream = settings.database, settings.upstream
    if DATABASE_PASSWORD in inputs and database is not None:
        value = inputs[DATABASE_PASSWORD]
        if not value:
            errors[DATABASE_PASSWORD] = "the database password must not be empty"
        elif not check_verifier(database.password_verifier, value):
            errors[DATABASE_PASSWORD] = f"wrong password for database {database.name!r}"
    if UPSTREAM_TOKEN in inputs and upstream is not None:
        value = inputs[UPSTREAM_TOKEN]
        if not value:
            errors[UPSTREAM_TOKEN] = "the upstream API token must not be empty"
        elif not check_verifier(upstream.token_verifier, value):
            where = f" for {upstream.url}" if upstream.url else ""
            errors[UPSTREAM_TOKEN] = (
                f"wrong upstream API token{where} (it does not match the token_verifier the "
                "old config stored)"
            )
    return errors


def _split_secrets(view: FileView, inputs: Inputs) -> Sequence[FileOp]:
    settings = _v3_settings(view)
    path = json_conf(view.root)
    document = _v3_document(settings)
    del document["agent_token"]
    document["config_version"] = 4
    document["secrets_file"] = secrets_file(view.root).name
    secrets: dict[str, Any] = {"agent_token": settings.agent_token}
    moved = ["agent_token"]
    if settings.database is not None:
        del document["database"]["password_verifier"]
        secrets[DATABASE_PASSWORD] = inputs[DATABASE_PASSWORD]
        moved.append(DATABASE_PASSWORD)
    if settings.upstream is not None:
        del document["upstream"]["token_verifier"]
        secrets[UPSTREAM_TOKEN] = inputs[UPSTREAM_TOKEN]
        moved.append(UPSTREAM_TOKEN)
    runlog.current().info(
        "agent_token moves out of agent.json into secrets.json (mode 0600)"
        if len(moved) == 1
        else f"{', '.join(moved)} go into secrets.json (mode 0600)",
        secrets_file=str(secrets_file(view.root)),
    )
    return [
        WriteFile(secrets_file(view.root), _json_bytes(secrets), SECRETS_MODE),
        WriteFile(path, _json_bytes(document), view.mode(path)),
    ]


def _step_split_secrets(view: FileView) -> Sequence[FileOp]:
    return _split_secrets(view, Inputs())


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
        "move agent_token (and the secrets the config holds verifiers of) into secrets.json "
        "(mode 0600)",
        _step_split_secrets,
        needs=InputNeeds(declare=_secret_inputs, check=_check_secret_inputs, plan=_split_secrets),
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


def legacy_config_with_secrets(
    *,
    server_url: str,
    agent_token: str,
    database_url: str,
    database_password: str,
    upstream_token: str,
    upstream_url: str | None = None,
) -> str:
    """The text of a legacy (v1) ``agent.conf`` whose ``[database]`` and ``[upstream]`` sections
    hold verifiers of ``database_password`` and ``upstream_token`` (not the secrets): migrating
    it asks for both (tests, the demo, and an example of the format)."""
    upstream = f"url = {upstream_url}\n" if upstream_url else ""
    return (
        "# aggregator agent config (the old version kept only verifiers of these secrets)\n"
        f"server_url = {server_url}\n"
        f"agent_token = {agent_token}\n"
        "\n[database]\n"
        f"url = {database_url}\n"
        f"password_verifier = {make_verifier(database_password)}\n"
        "\n[upstream]\n"
        f"{upstream}"
        f"token_verifier = {make_verifier(upstream_token)}\n"
    )
