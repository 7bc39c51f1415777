"""A validated spec as a :class:`~agent.migrations.model.Migration`, so the existing engine runs
it: checksummed backup, atomic writes, journal, rollback on any failure, re-detection of the
target as verification, events and runs (see :mod:`agent.migrations.engine`).

The built-in agent-config chain is such a spec (:mod:`agent.specs.builtin`). ``detect`` says
which version of the spec's config the host holds, ``files`` lists every file the spec names
(all backed up), and each spec step becomes one engine
:class:`~agent.migrations.model.Step` whose ``plan`` interprets the step's operations on the
engine's view (the disk plus the earlier steps' planned ops) and returns the engine's own
``WriteFile`` / ``RemoveFile`` operations. A step with ``require_input`` operations declares
them as :class:`~agent.migrations.model.InputNeeds`, the engine's AWAITING_INPUT flow.

Confinement (``allowed_paths``) happens twice: :func:`spec_migration` refuses the spec before
the engine sees it, and ``detect`` checks again before it reads a file (a symlink may have been
swapped in between), then as a DetectionError the engine reports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent.migrations.model import (
    Detected,
    DetectionError,
    FileOp,
    FileView,
    InputNeeds,
    Inputs,
    InputSpec,
    Migration,
    Step,
)
from agent.specs.detect import detect
from agent.specs.errors import PathRefused
from agent.specs.paths import DEFAULT_ALLOWED_PATHS, confine, host_path
from agent.specs.spec import RequireInput, Spec
from agent.specs.spec import Step as SpecStep

if TYPE_CHECKING:
    from agent.specs.plan import StepOutcome

MAX_LABEL = 200


def confined_paths(spec: Spec, root: Path, allowed_paths: Sequence[str]) -> Mapping[str, Path]:
    """:func:`~agent.specs.paths.confine` as a DetectionError the engine reports (a refused
    spec is a failed detection: nothing was read or written)."""
    try:
        return confine(spec, root, allowed_paths)
    except PathRefused as exc:
        raise DetectionError(str(exc), exception_type="PathRefused") from None


def _describe(step: SpecStep) -> str:
    """What the run log says a step does: operation names only, never a value."""
    if step.description:
        return step.description
    names = ", ".join(op.op for op in step.ops)
    return f"{len(step.ops)} operations: {names}"


class _SpecStep:
    """The engine's plan/needs callables of one spec step."""

    def __init__(self, spec: Spec, step: SpecStep, allowed_paths: Sequence[str]) -> None:
        self.spec = spec
        self.step = step
        self.allowed_paths = tuple(allowed_paths)
        self.last = step.to == spec.target
        self.asks = tuple(op for op in step.ops if isinstance(op, RequireInput))

    def _outcome(self, view: FileView, inputs: Mapping[str, str] | None) -> StepOutcome:
        # The planner (and difflib) loads when a step is planned, not when an idle agent
        # registers its migrations and detects its versions.
        from agent.specs.plan import plan_one_step

        paths = confined_paths(self.spec, view.root, self.allowed_paths)
        return plan_one_step(self.spec, view, self.step, paths, inputs=inputs, verify=self.last)

    def plan(self, view: FileView) -> Sequence[FileOp]:
        return self._outcome(view, None).planned.ops

    def declare(self, view: FileView) -> Sequence[InputSpec]:
        # Planned, not read off the ops: an input whose op's ``when`` fails is not asked for.
        return [
            InputSpec(asked.name, (asked.prompt or asked.name)[:MAX_LABEL], asked.secret)
            for asked in self._outcome(view, None).inputs
        ]

    def check(self, view: FileView, inputs: Inputs) -> Mapping[str, str]:
        return dict(self._outcome(view, inputs).input_errors)

    def plan_with(self, view: FileView, inputs: Inputs) -> Sequence[FileOp]:
        return self._outcome(view, inputs).planned.ops

    def engine_step(self) -> Step:
        needs = (
            InputNeeds(declare=self.declare, check=self.check, plan=self.plan_with)
            if self.asks
            else None
        )
        return Step(
            self.step.name, self.step.from_, self.step.to, _describe(self.step), self.plan, needs
        )


def spec_detector(spec: Spec, allowed_paths: Sequence[str]) -> Callable[[FileView], Detected]:
    """The ``detect`` of a spec's migration (confines, then detects)."""

    def detect_spec(view: FileView) -> Detected:
        paths = confined_paths(spec, view.root, allowed_paths)
        found = detect(spec, view, paths)
        if found.version is None:
            return Detected(None, None, f"No {spec.title} found under {view.root}")
        return Detected(
            found.version, found.path, f"{spec.id}: version {found.version} at {found.file}"
        )

    return detect_spec


def spec_migration(
    spec: Spec, root: Path | None, allowed_paths: Sequence[str] = DEFAULT_ALLOWED_PATHS
) -> Migration:
    """The engine's migration for ``spec`` on the host under ``root``. Raises
    :class:`~agent.specs.errors.PathRefused` (exit code 2) when the spec names a file outside
    ``allowed_paths``, before anything is read. With ``root`` None (a migration registered for
    any root, like the built-in one) that check waits for ``detect``, which runs it on every
    host before reading a file."""
    if root is not None:
        confine(spec, root, allowed_paths)
    allowed = tuple(allowed_paths)
    files = spec.files()
    return Migration(
        id=spec.id,
        title=spec.title,
        current_version=spec.target,
        detect=spec_detector(spec, allowed),
        files=lambda base: [host_path(base, file) for file in files],
        steps=tuple(_SpecStep(spec, step, allowed).engine_step() for step in spec.steps),
    )
