"""Server-defined specs in signed actions: install, preview, run and revert them.

Every action here has passed verification and its nonce check (:mod:`agent.actions`). On the
check-in thread the spec an action carries is accepted or refused (:func:`agent.specs.store.
accept`: checksum, validation, ``allowed_paths``; nothing on the host is read) and installed in
the state dir; the work itself is queued for the migration worker (one run at a time):

* ``preview_migration`` (``migration_id``, ``spec_id``, ``spec_revision``, ``spec``,
  ``spec_sha256``): one preview event, nothing written (:mod:`agent.specs.preview`);
* ``run_migration`` carrying ``spec`` (the same params): the spec is installed, then run as
  the migration ``migration_id`` through the engine (backup, journal, rollback, events,
  RunUpdates, all labelled with the spec id and revision and the action id); the spec is kept
  beside the run's backup for a revert. Without ``spec`` but naming an installed spec, the
  installed revision runs; naming neither, the action goes to the built-in handler;
* ``revert_run`` (``run_id``): :func:`agent.specs.revert.revert_run` as its own run
  (``reverts_run_id``) ending in an ``EVENT_TYPE_MIGRATION_REVERT`` event: SUCCESS when
  reverted, FAILED when refused (naming the changed file) or failed.

A refusal is an ``agent_notice`` naming the action and the reason; nothing is installed or run.
The planner, preview and revert modules are imported by the jobs that need them: an idle agent
with specs installed only detects (:mod:`agent.specs.versions`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from agent import events, runs
from agent.action_verify import VerifiedAction
from agent.actions import (
    PREVIEW_MIGRATION,
    REVERT_RUN,
    ActionHandler,
    KindHandler,
    RunRequest,
)
from agent.config import AgentConfig
from agent.migrations import fsops
from agent.migrations.engine import MigrationEngine
from agent.migrations.model import DetectionError, Migration
from agent.migrations.result import RunResult
from agent.outbox import Outbox
from agent.runs import RunTracker
from agent.specs.errors import PathRefused
from agent.specs.store import InstalledSpec, SpecRefused, SpecStore, accept
from agent.specs.versions import SpecVersions
from agent.sysinfo import agent_info
from agent.uuid7 import uuid7_str
from flagpost.v1 import agent_pb2

if TYPE_CHECKING:
    from agent.specs.revert import RevertResult

log = logging.getLogger(__name__)

# (migration, requested_by action id) -> the run (the agent's engine, its wait-for-input rule)
RunMigration = Callable[[Migration, str], RunResult]


def spec_run_migration(installed: InstalledSpec, config: AgentConfig) -> Migration:
    """The engine migration of an installed spec, labelled with its id and revision."""
    from agent.specs.migration import spec_migration

    migration = spec_migration(installed.spec, config.root, config.allowed_paths)
    return replace(migration, labels=events.RunLabels(installed.spec_id, installed.revision))


class SpecActions:
    """The agent's installed specs and the actions about them. ``engine``, ``outbox`` and
    ``run_migration`` belong to the migration worker (the jobs run there); ``submit`` queues a
    job for it; ``builtin_run``: the handler of a ``run_migration`` about no spec;
    ``builtin_ids``: the agent's own migrations, which no spec may replace."""

    def __init__(
        self,
        config: AgentConfig,
        engine: MigrationEngine,
        outbox: Outbox,
        run_migration: RunMigration,
        submit: Callable[[RunRequest], None],
        builtin_run: KindHandler | None = None,
        builtin_ids: Collection[str] = (),
    ) -> None:
        self._config = config
        self._builtin_run = builtin_run
        self._builtin_ids = frozenset(builtin_ids)
        self._engine = engine
        self._outbox = outbox
        self._run_migration = run_migration
        self._submit = submit
        self.store = SpecStore(config.specs_dir)
        self.versions = SpecVersions(self.store, config.root, config.allowed_paths)

    def handle(self, kind: str, action: VerifiedAction, outbox: Outbox) -> str:
        """Act on a verified spec action of ``kind`` (``outbox``: the calling thread's)."""
        if kind == PREVIEW_MIGRATION:
            return self.on_preview(action, outbox)
        if kind == REVERT_RUN:
            return self.on_revert(action, outbox)
        return self.on_run(action, outbox)

    def facts(self) -> list[agent_pb2.SpecVersion]:
        """The host's version of every installed spec (``HostFacts.specs``)."""
        return self.versions.facts()

    # ------------------------------------------------------------ check-in thread

    def _install(self, action: VerifiedAction, outbox: Outbox) -> InstalledSpec | None:
        try:
            installed = accept(action.params, self._config.root, self._config.allowed_paths)
            if installed.spec_id in self._builtin_ids:
                raise SpecRefused(
                    f"spec {installed.spec_id} revision {installed.revision}: "
                    "that id is a built-in migration of this agent"
                )
        except SpecRefused as refused:
            ActionHandler.notice(
                outbox,
                f"Action {action.action_id} refused: {refused.reason}",
                events.RunLabels(action_id=action.action_id),
            )
            return None
        if self.store.install(installed):
            log.info(
                "installed spec %s revision %d (action %s)",
                installed.spec_id,
                installed.revision,
                action.action_id,
            )
        return installed

    def _queue(self, action: VerifiedAction, spec_id: str, job: Callable[[], object]) -> str:
        self._submit(RunRequest(action.action_id, spec_id, action.expires_at, "", action.kind, job))
        return "queued"

    def on_run(self, action: VerifiedAction, outbox: Outbox) -> str:
        """``run_migration``: a spec it carries, or an installed spec it names, else the
        built-in handler."""
        params = action.params
        if "spec" in params:
            installed = self._install(action, outbox)
            if installed is None:
                return "refused"
        else:
            found = self.store.get(params.get("migration_id", ""))
            if found is None:
                if self._builtin_run is None:
                    return ActionHandler.notice(outbox, f"Action {action.action_id} ignored")
                return self._builtin_run(action, outbox)
            installed = found
        return self._queue(action, installed.spec_id, lambda: self.run(installed, action.action_id))

    def on_preview(self, action: VerifiedAction, outbox: Outbox) -> str:
        installed = self._install(action, outbox)
        if installed is None:
            return "refused"
        return self._queue(
            action, installed.spec_id, lambda: self.preview(installed, action.action_id)
        )

    def on_revert(self, action: VerifiedAction, outbox: Outbox) -> str:
        run_id = action.params.get("run_id", "")[:100]  # checked by revert_run
        return self._queue(action, "", lambda: self.revert(run_id, action.action_id))

    # ------------------------------------------------------------ migration worker

    def run(self, installed: InstalledSpec, action_id: str) -> RunResult:
        """Run ``installed`` through the engine; keep it beside the run's backup."""
        from agent.specs.revert import record_spec

        migration = spec_run_migration(installed, self._config)
        result = self._run_migration(migration, action_id)
        if result.backup_dir is not None and result.execution is not None and not result.failed:
            record_spec(
                result.backup_dir, installed.source, json_source=True, revision=installed.revision
            )
        return result

    def preview(self, installed: InstalledSpec, action_id: str) -> agent_pb2.MigrationEvent:
        """Plan ``installed`` without writing and record the preview event."""
        from agent.specs.preview import preview_event

        config = self._config
        event = preview_event(installed, config.root, config.allowed_paths, agent_info(), action_id)
        self._outbox.add(event)
        log.info("%s", event.message)
        return event

    def revert(self, run_id: str, action_id: str) -> RevertResult:
        """Revert the spec run ``run_id`` and report it (see the module docstring)."""
        from agent.specs.revert import REVERTED, RevertResult, revert_run

        config = self._config
        try:
            result = revert_run(
                self._engine,
                config.backups_dir,
                run_id,
                config.root,
                config.allowed_paths,
                requested_by=action_id,
            )
        except (DetectionError, PathRefused) as exc:
            result = RevertResult("refused", run_id, f"revert of run {run_id} refused: {exc}")
        if result.outcome != REVERTED and not _reported(result):
            self._report_failure(result, action_id)
        log.info("revert of run %s: %s: %s", run_id, result.outcome, result.message)
        return result

    def _report_failure(self, result: RevertResult, action_id: str) -> None:
        """A revert the engine did not end with a revert event: refused before it started,
        or at its detection. Reported as a FAILED revert event of its own run."""
        spec_id, revision = _spec_of(self._config.backups_dir / result.reverted_run_id)
        labels = events.RunLabels(spec_id, revision, action_id, result.reverted_run_id)
        run_id = result.run_id
        if not run_id and spec_id:
            run_id = uuid7_str()
            tracker = RunTracker(
                self._outbox.runs,
                run_id=run_id,
                migration_id=spec_id,
                migration_from="",
                migration_to="",
                requested_by=action_id,
                labels=labels,
            )
            tracker.start()
            tracker.finish(runs.FAILED, events.short(result.message))
        detail = events.ErrorInfo(file_path=result.file, exception_type="RevertRefused")
        self._outbox.add(
            events.migration_event(
                event_type=events.REVERT,
                status=events.FAILED,
                run_id=run_id,
                message=result.message,
                error_message=result.message,
                error=detail if result.outcome == "refused" else None,
                system_info=agent_info(),
                labels=labels,
            )
        )


def _reported(result: RevertResult) -> bool:
    """Whether the engine already recorded the revert's outcome event."""
    run = result.run
    return run is not None and run.execution is not None


def _spec_of(backup_dir: Path) -> tuple[str, int]:
    """(spec id, revision) of the run whose backup is ``backup_dir``; ("", 0) if unknown."""
    from agent.specs.revert import recorded_revision

    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return fsops.load_after(backup_dir).migration_id, recorded_revision(backup_dir)
    return "", 0
