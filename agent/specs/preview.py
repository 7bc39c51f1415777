"""A preview asked for by the server: plan a spec without writing, report one event.

``preview_migration`` plans the spec on the host (:func:`~agent.specs.plan.plan_spec`, in
memory: nothing is written, backed up or journaled, and no run is made) and reports one
``EVENT_TYPE_MIGRATION_PREVIEW`` event:

* SUCCESS when a run would change files: ``diffs`` holds one ``FileDiff`` per file (its path as
  the spec names it, i.e. as the host sees it under the agent's root; the unified diff with
  secrets redacted, cut at :data:`MAX_DIFF_BYTES` with ``[truncated]``; the operations touching
  it; the notes, such as comments a conversion could not carry), at most :data:`MAX_DIFFS`;
* NOT_NEEDED when the host is at the target (or holds no file of any version);
* FAILED when planning fails (a refused path, a file that does not parse, with its line, a
  step that cannot be planned), with ``error_message`` and ``error_detail``.

``migration_from`` is the detected version, ``migration_to`` the target; the event carries the
spec id and revision and the action id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from agent import events
from agent.errors import error_info
from agent.migrations.model import DetectionError, DiskView
from agent.specs.errors import PathRefused
from agent.specs.plan import FileChange, SpecPlan, plan_spec
from agent.specs.store import InstalledSpec
from flagpost.v1 import agent_pb2

MAX_DIFF_BYTES = 256 * 1024
MAX_DIFFS = 64
TRUNCATED = "\n[truncated]\n"


def cap(text: str, limit: int = MAX_DIFF_BYTES) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, marked ``[truncated]`` when cut."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    room = limit - len(TRUNCATED.encode("utf-8"))
    return data[:room].decode("utf-8", errors="ignore") + TRUNCATED


def file_diffs(plan: SpecPlan) -> list[agent_pb2.FileDiff]:
    """One ``FileDiff`` per planned file change (at most :data:`MAX_DIFFS`)."""
    return [_file_diff(plan, change) for change in plan.changes[:MAX_DIFFS]]


def _file_diff(plan: SpecPlan, change: FileChange) -> agent_pb2.FileDiff:
    operations = [
        f"{op.step}[{op.index}] {op.description}"
        for op in plan.operations
        if change.file in op.files
    ]
    notes = list(change.notes)
    if change.action == "delete":
        notes.insert(0, "deleted")
    return agent_pb2.FileDiff(
        path=change.file,
        diff=cap(change.diff),
        operations=operations,
        note=cap("; ".join(notes), 16 * 1024),
    )


def _summary(plan: SpecPlan, installed: InstalledSpec) -> str:
    head = f"preview {installed.spec_id} r{installed.revision}"
    count = len(plan.changes)
    files = "file would change" if count == 1 else "files would change"
    return f"{head}: {plan.detected} -> {plan.spec.target}, {count} {files}"


def preview_event(
    installed: InstalledSpec,
    root: Path,
    allowed_paths: Sequence[str],
    system_info: Mapping[str, str],
    action_id: str = "",
) -> agent_pb2.MigrationEvent:
    """Plan ``installed`` on the host under ``root`` and describe it as a preview event."""
    spec = installed.spec
    labels = events.RunLabels(spec.id, installed.revision, action_id)
    head = f"preview {spec.id} r{installed.revision}"

    def event(
        status: int,
        message: str,
        *,
        migration_from: str = "",
        error_message: str = "",
        error: events.ErrorInfo | None = None,
    ) -> agent_pb2.MigrationEvent:
        return events.migration_event(
            event_type=events.PREVIEW,
            status=status,
            run_id="",
            message=message,
            error_message=error_message,
            error=error,
            migration_from=migration_from,
            migration_to=spec.target,
            system_info=system_info,
            labels=labels,
        )

    try:
        plan = plan_spec(spec, DiskView(root), allowed_paths=allowed_paths)
    except (PathRefused, DetectionError, OSError) as exc:
        detail = error_info(exc)
        if isinstance(exc, PathRefused) and exc.refused:
            detail = replace(detail, file_path=exc.refused[0][0])
        return event(
            events.FAILED,
            f"{head}: cannot plan: {exc}",
            error_message=str(exc),
            error=detail,
            migration_from=exc.version if isinstance(exc, DetectionError) else "",
        )
    if plan.detected is None:
        return event(
            events.NOT_NEEDED, f"{head}: no file of any version exists; nothing would change"
        )
    if not plan.needed:
        return event(
            events.NOT_NEEDED,
            f"{head}: at version {plan.detected} (the target); nothing would change",
            migration_from=plan.detected,
        )
    found = event(events.SUCCESS, _summary(plan, installed), migration_from=plan.detected)
    found.diffs.extend(file_diffs(plan))
    if plan.inputs:
        names = ", ".join(required.name for required in plan.inputs)
        found.error_message = f"inputs asked for when run: {names}"
    return found
