"""Registry of migrations: the built-in agent-config migration plus any the user registers.

Example (a user's own config file)::

    from agent.migrations import Migration, Step, WriteFile, Detected, default_registry

    registry = default_registry()
    registry.register(Migration(id="myapp", title="myapp.ini", current_version="2",
                                detect=detect_myapp, files=lambda root: [root / "etc/myapp.ini"],
                                steps=(Step("v1_to_v2", "1", "2", "rename keys", plan_v2),)))

The daemon runs every registered migration, in registration order, each cycle.
"""

from __future__ import annotations

from collections.abc import Iterator

from agent.migrations.model import Migration


class MigrationRegistry:
    """An ordered set of migrations with unique ids."""

    def __init__(self) -> None:
        self._migrations: dict[str, Migration] = {}

    def register(self, migration: Migration) -> Migration:
        """Add ``migration``; raises ValueError for a duplicate id or an inconsistent chain."""
        if migration.id in self._migrations:
            raise ValueError(f"migration {migration.id!r} is already registered")
        sources = [step.from_version for step in migration.steps]
        if len(set(sources)) != len(sources):
            raise ValueError(f"migration {migration.id!r}: two steps start at the same version")
        if migration.steps and not any(
            step.to_version == migration.current_version for step in migration.steps
        ):
            raise ValueError(
                f"migration {migration.id!r}: no step reaches {migration.current_version}"
            )
        self._migrations[migration.id] = migration
        return migration

    def get(self, migration_id: str) -> Migration:
        """The migration with this id (KeyError if unknown)."""
        return self._migrations[migration_id]

    def __iter__(self) -> Iterator[Migration]:
        return iter(list(self._migrations.values()))

    def __len__(self) -> int:
        return len(self._migrations)


def default_registry() -> MigrationRegistry:
    """A registry holding the built-in agent config migration (a spec, see
    :mod:`agent.specs.builtin`)."""
    # Imported here, not at the top: agent.specs imports agent.migrations.model, whose package
    # __init__ imports this module, so a top-level import would run before agent.specs exists.
    from agent.specs.builtin import agent_config_migration

    registry = MigrationRegistry()
    registry.register(agent_config_migration())
    return registry
