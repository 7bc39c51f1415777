"""The local door to specs: ``flagpost-agent spec preview FILE | run FILE | revert RUN_ID``
against ``--root``, no server (:mod:`agent.cli` calls these).

* :func:`preview`: plans without writing: nothing on the host changes and nothing is made in
  the state directory (no outbox, no backup, no journal);
* :func:`run`: the spec through the engine (:mod:`agent.specs.migration`), its events and run in
  the outbox like any run, the spec kept beside the run's backup for a revert;
* :func:`revert`: see :mod:`agent.specs.revert`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.config import AgentConfig
from agent.errors import EXIT_USAGE, AgentError
from agent.migrations.model import DiskView
from agent.migrations.result import RunResult
from agent.specs.plan import SpecPlan, plan_spec
from agent.specs.spec import Spec
from agent.specs.validate import parse_spec, parse_spec_json


class SpecFileError(AgentError):
    """The spec file cannot be read."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True, slots=True)
class LoadedSpec:
    """A validated spec and the text it came from (``json_source``: JSON, else TOML)."""

    spec: Spec
    source: str
    json_source: bool


def load_spec_file(path: Path) -> LoadedSpec:
    """The spec in ``path`` (JSON when it ends in ``.json``, else TOML); raises
    :class:`SpecFileError` or :class:`~agent.specs.errors.SpecError`."""
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpecFileError(f"{path}: cannot read the spec: {reason}") from None
    json_source = path.suffix == ".json"
    spec = parse_spec_json(source) if json_source else parse_spec(source)
    return LoadedSpec(spec, source, json_source)


def preview(config: AgentConfig, spec: Spec) -> SpecPlan:
    """The plan of ``spec`` on the host (PathRefused before anything is read)."""
    return plan_spec(spec, DiskView(config.root), allowed_paths=config.allowed_paths)


def preview_lines(plan: SpecPlan) -> list[str]:
    """What ``spec preview`` prints: the detected version, then per file its action, notes and
    unified diff (secrets redacted), then the operations."""
    spec = plan.spec
    if plan.detected is None:
        return [f"{spec.id}: no file of any version exists; nothing to do"]
    if not plan.needed:
        return [f"{spec.id}: at version {plan.detected} (the target); no migration needed"]
    steps = ", ".join(planned.step.name for planned in plan.steps)
    lines = [f"{spec.id}: version {plan.detected} -> {spec.target} (steps: {steps})"]
    for change in plan.changes:
        mode = f", mode {change.mode:04o}" if change.mode is not None else ""
        lines.append(f"== {change.action} {change.file}{mode}")
        lines.extend(f"   note: {note}" for note in change.notes)
        lines.extend(change.diff.splitlines())
    lines.append("operations:")
    lines.extend(f"  {op.step}[{op.index}] {op.description}" for op in plan.operations)
    if plan.inputs:
        names = ", ".join(required.name for required in plan.inputs)
        lines.append(f"inputs asked for when run: {names}")
    lines.append("preview: nothing was changed")
    return lines


def run(config: AgentConfig, loaded: LoadedSpec) -> RunResult:
    """Run the spec through the engine (after resolving a journal left by a crash)."""
    from agent.daemon import Agent
    from agent.specs.migration import spec_migration
    from agent.specs.revert import record_spec

    migration = spec_migration(loaded.spec, config.root, config.allowed_paths)
    with Agent(config) as agent:
        agent.install_signal_handlers()
        agent.recover()
        result = agent.run_migration(migration)
    if result.backup_dir is not None and not result.failed and result.execution is not None:
        record_spec(result.backup_dir, loaded.source, json_source=loaded.json_source)
    return result


def run_lines(result: RunResult) -> list[str]:
    lines = [f"run {result.run_id}"]
    for event in (result.detection, result.execution):
        if event is not None:
            lines.append(f"{result.migration_id}: {event.message}")
            if event.error_message and event.error_message != event.message:
                lines.append(f"  {event.error_message}")
    if result.waiting:
        lines.append("  waiting for input (answer it on the server's run page)")
    return lines


def revert(config: AgentConfig, run_id: str) -> tuple[int, Sequence[str]]:
    """Revert the spec run ``run_id``: (exit code, lines to print)."""
    from agent.daemon import Agent
    from agent.specs.revert import REVERTED, revert_run

    with Agent(config) as agent:
        agent.install_signal_handlers()
        agent.recover()
        result = revert_run(
            agent.engine, config.backups_dir, run_id, config.root, config.allowed_paths
        )
    head = f"revert {result.outcome}"
    if result.run_id:
        head += f" (run {result.run_id})"
    return (0 if result.outcome == REVERTED else 1), [head, result.message]
