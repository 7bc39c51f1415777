"""Planning a migration: detect the config's version, then plan every step on an in-memory
overlay, so everything a run would change is known before anything changes on disk."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent import runlog
from agent.migrations.model import (
    MAX_INPUT_ERROR_CHARS,
    MAX_INPUT_FIELDS,
    Detected,
    DetectionError,
    FileOp,
    FileView,
    Inputs,
    InputSpec,
    Migration,
    PlannedView,
    Step,
)
from agent.runlog import RunLog


@dataclass(frozen=True, slots=True)
class PlannedStep:
    step: Step
    ops: tuple[FileOp, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """What a run would do: the detected state and, per step, its file operations.

    ``inputs``: every input the steps need (in step order, each name once); ``input_errors``:
    per name, why a given value is wrong. While :attr:`missing` is not empty the ops of the
    steps that need those inputs were planned with placeholders and must not be executed."""

    migration: Migration
    root: Path
    detected: Detected
    steps: tuple[PlannedStep, ...]
    inputs: tuple[InputSpec, ...] = ()
    input_errors: Mapping[str, str] = field(default_factory=dict)
    provided: frozenset[str] = frozenset()

    @property
    def needed(self) -> bool:
        return bool(self.steps)

    @property
    def missing(self) -> tuple[InputSpec, ...]:
        """The inputs without a right value: not given, or given and wrong."""
        return tuple(
            spec
            for spec in self.inputs
            if spec.name not in self.provided or spec.name in self.input_errors
        )

    def touched(self) -> tuple[Path, ...]:
        """Every file the run may touch: the migration's declared files plus every op path."""
        paths = list(self.migration.files(self.root))
        for planned in self.steps:
            paths.extend(op.path for op in planned.ops)
        return tuple(dict.fromkeys(paths))


def make_plan(
    migration: Migration,
    view: FileView,
    run_log: RunLog | None = None,
    inputs: Mapping[str, str] | None = None,
) -> Plan:
    """Detect and plan every step on an in-memory overlay; nothing on disk changes.

    ``run_log``: the run's logger; ``detect`` runs with it bound to source "detector" and each
    step's ``plan`` with it bound to the step's name (see :func:`agent.runlog.current`).
    ``inputs``: values for the inputs steps declare (see :class:`~.model.InputNeeds`); each given
    value is checked by its step, a missing or wrong one is planned with a placeholder (see
    :attr:`Plan.missing`). Raises :class:`DetectionError` for a bad config (or a step that cannot
    read its input)."""
    given = Inputs(inputs)
    specs: dict[str, InputSpec] = {}
    errors: dict[str, str] = {}
    try:
        with runlog.bound(run_log, "detector"):
            detected = migration.detect(view)
        planned: list[PlannedStep] = []
        if detected.version is not None and detected.version != migration.current_version:
            overlay = PlannedView(view)
            for step in migration.path_from(detected.version):
                with runlog.bound(run_log, step.name):
                    ops = _plan_step(step, overlay, given, specs, errors)
                for op in ops:
                    overlay.apply(op)
                planned.append(PlannedStep(step, ops))
    except OSError as exc:
        path = Path(exc.filename) if exc.filename else view.root
        raise DetectionError.from_os_error(path, exc) from exc
    if len(specs) > MAX_INPUT_FIELDS:
        raise DetectionError(
            f"{migration.id}: the steps need {len(specs)} inputs, at most {MAX_INPUT_FIELDS} "
            "can be asked for at once",
            exception_type="TooManyInputs",
        )
    provided = frozenset(name for name in specs if name in given)
    return Plan(
        migration, view.root, detected, tuple(planned), tuple(specs.values()), errors, provided
    )


def _plan_step(
    step: Step,
    view: FileView,
    given: Inputs,
    specs: dict[str, InputSpec],
    errors: dict[str, str],
) -> tuple[FileOp, ...]:
    """The ops of one step; a step that needs inputs adds its specs and checks the given values
    (a name declared by two steps is asked once and checked by each)."""
    declared = tuple(step.needs.declare(view)) if step.needs is not None else ()
    if step.needs is None or not declared:
        return tuple(step.plan(view))
    names = [spec.name for spec in declared]
    for spec in declared:
        specs.setdefault(spec.name, spec)
    present = given.only(names)
    if present:
        try:
            found = step.needs.check(view, present)
        except DetectionError:
            raise
        except Exception as exc:
            # Never chain or repeat the exception: its message could hold a value.
            raise DetectionError(
                f"{step.name}: checking the inputs failed ({type(exc).__name__})",
                exception_type="InputCheckError",
            ) from None
        for name, message in found.items():
            if name in present and name not in errors:
                errors[name] = (str(message) or "wrong value")[:MAX_INPUT_ERROR_CHARS]
    values = {
        name: present[name] if name in present and name not in errors else f"<{name}>"
        for name in names
    }
    return tuple(step.needs.plan(view, Inputs(values)))


def fingerprint(plan: Plan) -> str:
    """A digest of every file the plan touches (content, mode, owner) and of their directories
    (mode, owner): equal fingerprints mean a retry would meet exactly the same conditions."""
    digest = hashlib.sha256()
    for path in plan.touched():
        for target in (path, path.parent):
            try:
                info = os.stat(target)
            except OSError as exc:
                digest.update(f"{target}:missing:{exc.errno}\n".encode())
                continue
            digest.update(f"{target}:{info.st_mode}:{info.st_uid}:{info.st_gid}\n".encode())
        try:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError:
            digest.update(b"-")
    return digest.hexdigest()
