"""The built-in migration of the agent's own host config: the spec ``agent-config.toml`` shipped
in this package, run by the spec interpreter like any spec (:mod:`agent.specs.migration`).

Its files are the agent's own fixed locations (``/etc/aggregator/agent.conf`` for the legacy
agent, ``/etc/flagpost/agent.conf``, ``agent.json`` and ``secrets.json``), under the agent's
root like every agent path. The spec is confined to the directories of its own files, not to
the operator's ``allowed_paths`` (which confine the specs a server sends): narrowing
``allowed_paths`` must not stop the agent from migrating its own config, and the built-in spec
cannot name anything else.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path, PurePosixPath

from agent.migrations.model import Migration
from agent.migrations.verifier import make_verifier
from agent.specs.migration import spec_migration
from agent.specs.paths import host_path
from agent.specs.spec import Spec
from agent.specs.validate import parse_spec

MIGRATION_ID = "agent-config"
SPEC_RESOURCE = "agent-config.toml"


@functools.cache
def agent_config_spec() -> Spec:
    """The built-in spec, read from the package (works from a wheel or a zip)."""
    text = resources.files(__package__).joinpath(SPEC_RESOURCE).read_text(encoding="utf-8")
    spec = parse_spec(text)
    assert spec.id == MIGRATION_ID, spec.id
    return spec


def own_paths(spec: Spec) -> tuple[str, ...]:
    """The directories of every file ``spec`` names: the built-in spec's confinement."""
    return tuple(dict.fromkeys(str(PurePosixPath(file).parent) for file in spec.files()))


def agent_config_migration() -> Migration:
    """The built-in migration, registered like any other (id ``agent-config``)."""
    spec = agent_config_spec()
    return spec_migration(spec, None, own_paths(spec))


def legacy_conf(root: Path) -> Path:
    """Version 1's file under ``root``."""
    return host_path(root, agent_config_spec().version("1").file)


def new_conf(root: Path) -> Path:
    """Version 2's file under ``root``."""
    return host_path(root, agent_config_spec().version("2").file)


def json_conf(root: Path) -> Path:
    """The current version's main file under ``root``."""
    spec = agent_config_spec()
    return host_path(root, spec.version(spec.target).file)


def secrets_file(root: Path) -> Path:
    """The current version's secrets file under ``root``."""
    spec = agent_config_spec()
    (companion,) = spec.version(spec.target).companions
    return host_path(root, companion.file)


def config_files(root: Path) -> tuple[Path, ...]:
    """Every file a run of the built-in migration may touch."""
    return tuple(host_path(root, file) for file in agent_config_spec().files())


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
