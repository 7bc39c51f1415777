"""View models of the migrations pages (``/migrations``, ``/migrations/{id}``, the preview and
run-waiting pages).

Built from the specs service's domain results; templates never see ORM rows. Agent- and
admin-supplied strings (titles, sources, diffs, errors) stay plain ``str`` and are autoescaped
by the templates.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from server.domain import (
    AgentSpecState,
    FileDiff,
    PreviewResult,
    SpecDetail,
    SpecRevision,
    SpecSummary,
    VersionCount,
)
from server.web.fleet.views import agent_url
from server.web.format import display_time, relative_time
from server.web.forms import Option
from server.web.refused import RefusedParam

BAR_WIDTH = 300
BAR_HEIGHT = 14
# A version's colour on the bars: the target green, the others in turn, failed detection red.
_OTHER_CLASSES = ("bar-info", "bar-warning", "bar-other")
UNKNOWN_LABEL = "unknown / error"


def spec_url(spec_id: str, revision: int | None = None) -> str:
    """``/migrations/{id}`` (``?revision=N`` for one revision) with the id percent-encoded."""
    url = f"/migrations/{quote(spec_id, safe='')}"
    return f"{url}?revision={revision}" if revision else url


def preview_url(spec_id: str, action_ids: Iterable[str]) -> str:
    """The preview result page of the ``preview_migration`` actions ``action_ids``."""
    query = "&".join(f"action={quote(a, safe='')}" for a in action_ids)
    return f"{spec_url(spec_id)}/previews?{query}"


def spec_run_url(spec_id: str, action_id: str) -> str:
    """The page that waits for the run a ``run_migration`` action starts."""
    return f"{spec_url(spec_id)}/runs/{quote(action_id, safe='')}"


# --------------------------------------------------------------------------- version bars


@dataclass(frozen=True, slots=True)
class BarSegment:
    """One version's share of a spec's hosts bar (SVG user units)."""

    version: str
    label: str
    agents: int
    percent: int
    css_class: str
    x: float
    width: float
    is_target: bool


@dataclass(frozen=True, slots=True)
class VersionBar:
    """A horizontal stacked bar of a spec's hosts by version, with its text summary."""

    width: int
    height: int
    segments: tuple[BarSegment, ...]
    total: int
    description: str


def _percent(part: int, whole: int) -> int:
    return part * 100 // whole if whole > 0 else 0


def version_bar(versions: Sequence[VersionCount], target: str) -> VersionBar:
    """The bar of ``versions`` (hosts per version; "" is unknown/failed detection): the target
    version first, then the others by count, unknown last."""

    def order(v: VersionCount) -> tuple[int, int, str]:
        rank = 0 if v.version == target else 2 if not v.version else 1
        return rank, -v.agents, v.version

    counted = sorted((v for v in versions if v.agents > 0), key=order)
    total = sum(v.agents for v in counted)
    segments: list[BarSegment] = []
    x = 0.0
    others = 0
    for v in counted:
        if v.version == target:
            css = "bar-success"
        elif not v.version:
            css = "bar-error"
        else:
            css = _OTHER_CLASSES[others % len(_OTHER_CLASSES)]
            others += 1
        width = BAR_WIDTH * v.agents / total
        label = f"version {v.version}" if v.version else UNKNOWN_LABEL
        segments.append(
            BarSegment(
                v.version,
                label,
                v.agents,
                _percent(v.agents, total),
                css,
                round(x, 2),
                round(width, 2),
                v.version == target,
            )
        )
        x += width
    if total:
        parts = ", ".join(f"{s.agents} at {s.label}" for s in segments)
        description = f"{total} host{'s' if total != 1 else ''}: {parts}"
    else:
        description = "No host reports this spec yet"
    return VersionBar(BAR_WIDTH, BAR_HEIGHT, tuple(segments), total, description)


# --------------------------------------------------------------------------- /migrations


@dataclass(frozen=True, slots=True)
class SpecListRow:
    spec_id: str
    url: str
    title: str
    latest_revision: int
    target: str
    at_target: int
    agents: int
    bar: VersionBar
    updated_iso: str
    updated_display: str
    updated_relative: str


@dataclass(frozen=True, slots=True)
class UploadForm:
    """The admin's upload form: what was typed (kept on an error) and the validator's issues."""

    text: str = ""
    format: str = "toml"
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MigrationsPage:
    specs: tuple[SpecListRow, ...]
    form: UploadForm
    notice: str


def spec_list_row(spec: SpecSummary, now: datetime) -> SpecListRow:
    return SpecListRow(
        spec_id=spec.spec_id,
        url=spec_url(spec.spec_id),
        title=spec.title,
        latest_revision=spec.latest_revision,
        target=spec.target,
        at_target=spec.at_target,
        agents=spec.agents,
        bar=version_bar(spec.versions, spec.target),
        updated_iso=spec.updated_at.isoformat(),
        updated_display=display_time(spec.updated_at),
        updated_relative=relative_time(spec.updated_at, now),
    )


def migrations_page(
    specs: Sequence[SpecSummary], now: datetime, form: UploadForm | None = None, notice: str = ""
) -> MigrationsPage:
    return MigrationsPage(
        specs=tuple(spec_list_row(s, now) for s in specs),
        form=form or UploadForm(),
        notice=notice,
    )


# --------------------------------------------------------------------------- /migrations/{id}


@dataclass(frozen=True, slots=True)
class SourceLine:
    number: int
    text: str


@dataclass(frozen=True, slots=True)
class RevisionRow:
    revision: int
    url: str
    title: str
    target: str
    by: str
    created_iso: str
    created_display: str
    sha256: str
    short_sha: str
    current: bool


@dataclass(frozen=True, slots=True)
class DiffLine:
    """One line of a unified diff with its class (``add``, ``del``, ``hunk``, ``file``,
    ``ctx``)."""

    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class AgentSpecRow:
    agent_id: str
    url: str
    hostname: str
    revision: int
    version: str
    error: str
    at_target: bool
    reported_iso: str
    reported_display: str
    reported_relative: str


@dataclass(frozen=True, slots=True)
class RevisionDiff:
    """The diff shown between two revisions (``lines`` empty: identical)."""

    old: int
    new: int
    lines: tuple[DiffLine, ...]


@dataclass(frozen=True, slots=True)
class SpecPage:
    spec_id: str
    url: str
    title: str
    target: str
    revision: int
    latest_revision: int
    source_format: str
    sha256: str
    source: tuple[SourceLine, ...]
    revisions: tuple[RevisionRow, ...]
    diff: RevisionDiff | None
    bar: VersionBar
    agents: tuple[AgentSpecRow, ...]
    preview_action: str
    run_action: str


@dataclass(frozen=True, slots=True)
class SpecDetailPage:
    """Everything ``migration.html`` renders: the spec, the agents the admin's forms offer, and
    the notice after an upload, and a refused query parameter."""

    spec: SpecPage
    agents: tuple[Option, ...] | None  # None: too many to list, the forms take agent ids
    saved: str
    refused: RefusedParam | None = None  # a bad revision number: shown next to its field (400)


def diff_lines(diff: str) -> tuple[DiffLine, ...]:
    """A unified diff split into classed lines."""
    lines: list[DiffLine] = []
    for text in diff.splitlines():
        if text.startswith(("+++", "---")):
            kind = "file"
        elif text.startswith("@@"):
            kind = "hunk"
        elif text.startswith("+"):
            kind = "add"
        elif text.startswith("-"):
            kind = "del"
        else:
            kind = "ctx"
        lines.append(DiffLine(kind, text))
    return tuple(lines)


def revision_row(rev: SpecRevision, current: int) -> RevisionRow:
    return RevisionRow(
        revision=rev.revision,
        url=spec_url(rev.spec_id, rev.revision),
        title=rev.title,
        target=rev.target,
        by=rev.created_by,
        created_iso=rev.created_at.isoformat(),
        created_display=display_time(rev.created_at),
        sha256=rev.sha256,
        short_sha=rev.sha256[:12],
        current=rev.revision == current,
    )


def agent_spec_row(state: AgentSpecState, target: str, now: datetime) -> AgentSpecRow:
    return AgentSpecRow(
        agent_id=state.agent_id,
        url=agent_url(state.agent_id),
        hostname=state.hostname,
        revision=state.revision,
        version=state.version,
        error=state.error,
        at_target=bool(state.version) and state.version == target,
        reported_iso=state.reported_at.isoformat(),
        reported_display=display_time(state.reported_at),
        reported_relative=relative_time(state.reported_at, now),
    )


def spec_page(
    detail: SpecDetail,
    now: datetime,
    *,
    diff: RevisionDiff | None = None,
) -> SpecPage:
    spec = detail.spec
    latest = max((r.revision for r in detail.revisions), default=spec.revision)
    base = spec_url(spec.spec_id)
    return SpecPage(
        spec_id=spec.spec_id,
        url=base,
        title=spec.title,
        target=spec.target,
        revision=spec.revision,
        latest_revision=latest,
        source_format=str(spec.source_format),
        sha256=spec.sha256,
        source=tuple(SourceLine(i, t) for i, t in enumerate(spec.source.splitlines(), 1)),
        revisions=tuple(revision_row(r, spec.revision) for r in reversed(detail.revisions)),
        diff=diff,
        bar=version_bar(detail.versions, spec.target),
        agents=tuple(agent_spec_row(a, spec.target, now) for a in detail.agents),
        preview_action=f"{base}/previews",
        run_action=f"{base}/runs",
    )


# --------------------------------------------------------------------------- previews


@dataclass(frozen=True, slots=True)
class FileDiffView:
    path: str
    operations: tuple[str, ...]
    note: str
    lines: tuple[DiffLine, ...]


@dataclass(frozen=True, slots=True)
class PreviewView:
    action_id: str
    agent_id: str
    hostname: str
    agent_url: str
    pending: bool
    status: str
    status_label: str
    transition: str
    message: str
    error_message: str
    files: tuple[FileDiffView, ...]
    refused: str = ""  # the agent's notice when it refused the action (then not pending)


@dataclass(frozen=True, slots=True)
class PreviewsPage:
    spec_id: str
    spec_url: str
    title: str
    revision: int
    previews: tuple[PreviewView, ...]
    pending: int
    refresh_seconds: int


_PREVIEW_LABELS = {
    "success": "Changes planned",
    "not_needed": "Up to date",
    "failed": "Preview failed",
    "warning": "Warning",
}


def file_diff_view(diff: FileDiff) -> FileDiffView:
    return FileDiffView(diff.path, diff.operations, diff.note, diff_lines(diff.diff))


def preview_view(result: PreviewResult, hostname: str, refused: str | None = None) -> PreviewView:
    """One host's preview; ``refused``: the agent's notice if it refused instead of answering."""
    pending = result.pending and refused is None
    if refused is not None and result.pending:
        label = "Refused by the agent"
    elif pending:
        label = "Waiting for the agent"
    else:
        label = _PREVIEW_LABELS.get(result.status, result.status.replace("_", " ").capitalize())
    transition = ""
    if result.migration_from or result.migration_to:
        transition = f"{result.migration_from or '?'} → {result.migration_to or '?'}"
    return PreviewView(
        action_id=result.action_id,
        agent_id=result.agent_id,
        hostname=hostname or result.agent_id,
        agent_url=agent_url(result.agent_id),
        pending=pending,
        status=result.status or ("refused" if refused is not None else "pending"),
        status_label=label,
        transition=transition,
        message=result.message,
        error_message=result.error_message,
        files=tuple(file_diff_view(d) for d in result.diffs),
        refused=(refused or "") if result.pending else "",
    )


@dataclass(frozen=True, slots=True)
class SpecRunWaitPage:
    """The page between "Run" and the run page: the agent has not reported the run yet."""

    spec_id: str
    spec_url: str
    title: str
    revision: int
    action_id: str
    hostname: str
    agent_url: str
    refresh_seconds: int
    refused: str = ""  # the agent's notice when it refused the run (the page stops waiting)
    not_needed: str = ""  # its detection when the host already is at the target (no run)

    @property
    def ended(self) -> bool:
        return bool(self.refused or self.not_needed)
