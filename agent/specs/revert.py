"""Reverting a finished spec run: put back the files its backup holds, through the same engine.

A committed run leaves, in its backup directory ``<state>/backups/<run id>/``, the manifest of
the files as they were (:func:`agent.migrations.fsops.create_backup`), ``after.json``: each
touched file as the run left it, checksummed (:func:`agent.migrations.fsops.record_after`), and
the spec it ran (``spec.toml`` or ``spec.json``, :func:`record_spec`; a server-defined spec
also its revision, ``spec-revision.json``).

A revert is refused, naming the file, unless every file is still exactly what the run left
(content checksum, permission bits, or still absent). It then runs as one engine migration
with one step (``to_version -> from_version``) whose ops write back each saved copy (checksum
verified) and remove each file the run created: a new backup of the current files, atomic
writes, the journal, rollback on any failure, and re-detection of the run's ``from`` version
as verification. It is a run of its own (its RunUpdates carry ``reverts_run_id``, the spec id as
``migration_id`` and the spec revision); its outcome event is ``EVENT_TYPE_MIGRATION_REVERT``
(after the engine's detection event); :class:`RevertResult` says reverted, refused or failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import events
from agent.migrations import fsops
from agent.migrations.engine import MigrationEngine
from agent.migrations.model import (
    DetectionError,
    DiskView,
    FileOp,
    FileView,
    Migration,
    RemoveFile,
    Step,
    WriteFile,
)
from agent.migrations.result import RunResult
from agent.specs.migration import confined_paths, spec_detector
from agent.specs.spec import Spec
from agent.specs.validate import parse_spec, parse_spec_json

REVERTED = "reverted"
REFUSED = "refused"
FAILED = "failed"
SPEC_TOML = "spec.toml"
SPEC_JSON = "spec.json"
SPEC_REVISION = "spec-revision.json"
REVERTED_MARK = "reverted.json"
_RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class RevertRefused(DetectionError):
    """A revert that must not run (a file changed since the run, no such finished run):
    ``file`` names the changed file, "" if none."""

    def __init__(self, message: str, *, file: str = "") -> None:
        super().__init__(message, path=Path(file) if file else None, exception_type="RevertRefused")
        self.file = file


@dataclass(frozen=True, slots=True)
class RevertResult:
    """``outcome``: :data:`REVERTED`, :data:`REFUSED` (nothing read beyond checksums, nothing
    changed) or :data:`FAILED` (rolled back, or PARTIAL: see ``run``). ``run_id``: the revert's
    own run ("" when refused before the engine started); ``file``: the file that changed (a
    refusal) or failed."""

    outcome: str
    reverted_run_id: str
    message: str
    run_id: str = ""
    file: str = ""
    run: RunResult | None = None


def record_spec(
    backup_dir: Path, source: str, *, json_source: bool = False, revision: int = 0
) -> None:
    """Keep the spec a run ran beside its backup (0600), for a later revert; ``revision``: a
    server-defined spec's revision (0: a local spec file)."""
    name = SPEC_JSON if json_source else SPEC_TOML
    fsops.atomic_write(backup_dir / name, source.encode("utf-8"), 0o600)
    if revision:
        data = (json.dumps({"revision": revision}) + "\n").encode("utf-8")
        fsops.atomic_write(backup_dir / SPEC_REVISION, data, 0o600)


def recorded_revision(backup_dir: Path) -> int:
    """The revision :func:`record_spec` kept (0: none)."""
    try:
        return int(json.loads((backup_dir / SPEC_REVISION).read_text("utf-8"))["revision"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def load_recorded_spec(backup_dir: Path) -> Spec | None:
    """The spec recorded by :func:`record_spec`, None if none was."""
    for name, parse in ((SPEC_TOML, parse_spec), (SPEC_JSON, parse_spec_json)):
        with contextlib.suppress(FileNotFoundError):
            return parse((backup_dir / name).read_text("utf-8"))
    return None


def _matches(view: FileView, entry: fsops.AfterEntry) -> bool:
    path = Path(entry.path)
    if not view.exists(path):
        return not entry.exists and not path.exists()
    if not entry.exists:
        return False
    return (
        fsops.sha256_bytes(view.read_bytes(path)) == entry.sha256 and view.mode(path) == entry.mode
    )


def changed_file(view: FileView, after: fsops.AfterState) -> str:
    """The first file that is no longer what the run left ("" when none changed)."""
    for entry in after.entries:
        if not _matches(view, entry):
            return entry.path
    return ""


def _refusal(path: str, run_id: str) -> str:
    return (
        f"revert of run {run_id} refused: {path} changed since the run "
        "(content, mode or presence); nothing was changed"
    )


def revert_migration(
    spec: Spec,
    after: fsops.AfterState,
    manifest: fsops.Manifest,
    backup_dir: Path,
    allowed_paths: Sequence[str],
    revision: int = 0,
) -> Migration:
    """The engine migration that reverts the run ``after`` describes (``revision``: the
    reverted run's spec revision, for its labels)."""
    run_id = after.run_id

    def plan(view: FileView) -> Sequence[FileOp]:
        confined_paths(spec, view.root, allowed_paths)
        changed = changed_file(view, after)
        if changed:
            raise RevertRefused(_refusal(changed, run_id), file=changed)
        writes: list[FileOp] = []
        removes: list[FileOp] = []
        for entry in manifest.entries:
            path = Path(entry.original_path)
            if entry.existed:
                data = (backup_dir / entry.backup_name).read_bytes()
                if fsops.sha256_bytes(data) != entry.sha256:
                    raise DetectionError(
                        f"backup copy {entry.backup_name} of run {run_id} is corrupt (checksum)",
                        path=backup_dir / entry.backup_name,
                        exception_type="BackupError",
                    )
                writes.append(WriteFile(path, data, entry.mode))
            elif view.exists(path):
                removes.append(RemoveFile(path))
        return (*writes, *removes)

    entries = tuple(Path(entry.original_path) for entry in manifest.entries)
    step = Step(
        f"revert_{run_id}",
        after.to_version,
        after.from_version,
        f"restore the {len(entries)} files of run {run_id} from its backup",
        plan,
    )
    return Migration(
        id=spec.id,
        title=f"revert run {run_id} of {spec.id}",
        current_version=after.from_version,
        detect=spec_detector(spec, allowed_paths),
        files=lambda root: entries,
        steps=(step,),
        labels=events.RunLabels(spec.id, revision, reverts_run_id=run_id),
    )


def _remove_empty_dirs(manifest: fsops.Manifest) -> None:
    """The directories the reverted run created, if the revert left them empty."""
    for directory in manifest.missing_dirs:
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.lstat(directory).st_mode):
                os.rmdir(directory)


def revert_run(
    engine: MigrationEngine,
    backups_dir: Path,
    run_id: str,
    root: Path,
    allowed_paths: Sequence[str],
    *,
    requested_by: str = "",
) -> RevertResult:
    """Revert the finished spec run ``run_id`` (see the module docstring); ``requested_by``:
    the server action that asked for it."""

    def refused(message: str, file: str = "") -> RevertResult:
        return RevertResult(REFUSED, run_id, message, file=file)

    if not _RUN_ID.fullmatch(run_id):
        return refused(f"{run_id!r} is not a run id (the id `spec run` printed)")
    backup_dir = backups_dir / run_id
    if not backup_dir.is_dir():
        return refused(f"no backup of run {run_id} in {backups_dir}")
    mark = backup_dir / REVERTED_MARK
    if mark.exists():
        by = json.loads(mark.read_text("utf-8")).get("revert_run_id", "")
        return refused(f"run {run_id} was already reverted (by run {by})")
    try:
        after = fsops.load_after(backup_dir)
    except FileNotFoundError:
        return refused(f"run {run_id} did not finish (it was rolled back): nothing to revert")
    spec = load_recorded_spec(backup_dir)
    if spec is None or spec.id != after.migration_id:
        return refused(f"run {run_id} is not a spec run (no recorded spec)")
    manifest = fsops.load_manifest(backup_dir)
    confined_paths(spec, root, allowed_paths)  # PathRefused, as a DetectionError
    changed = changed_file(DiskView(root), after)
    if changed:
        return refused(_refusal(changed, run_id), changed)
    revision = recorded_revision(backup_dir)
    migration = revert_migration(spec, after, manifest, backup_dir, allowed_paths, revision)
    result = engine.run(migration, wait_for_input=False, requested_by=requested_by)
    execution, detection = result.execution, result.detection
    if execution is not None and execution.status == events.SUCCESS:
        assert result.backup_dir is not None
        record_spec(
            result.backup_dir,
            _spec_source(backup_dir),
            json_source=_is_json(backup_dir),
            revision=revision,
        )
        fsops.atomic_write(
            mark, (json.dumps({"revert_run_id": result.run_id}) + "\n").encode(), 0o600
        )
        _remove_empty_dirs(manifest)
        return RevertResult(
            REVERTED,
            run_id,
            f"run {run_id} reverted: {after.to_version} -> {after.from_version} "
            f"(backup of the reverted files: {result.backup_dir})",
            run_id=result.run_id,
            run=result,
        )
    event = execution or detection
    if event is None:
        return RevertResult(FAILED, run_id, f"revert of run {run_id}: nothing recorded")
    detail = event.error_detail
    outcome = REFUSED if detail.exception_type == "RevertRefused" else FAILED
    if execution is None and event.status == events.NOT_NEEDED:
        outcome = FAILED
    return RevertResult(
        outcome,
        run_id,
        event.error_message or event.message,
        run_id=result.run_id,
        file=detail.file_path,
        run=result,
    )


def _is_json(backup_dir: Path) -> bool:
    return (backup_dir / SPEC_JSON).exists() and not (backup_dir / SPEC_TOML).exists()


def _spec_source(backup_dir: Path) -> str:
    name = SPEC_JSON if _is_json(backup_dir) else SPEC_TOML
    return (backup_dir / name).read_text("utf-8")
