"""The JSON bodies of the migration specs API (``/api/v1/migrations``, ``/api/v1/previews``),
defined once like ``server.web.api.shapes``: ``TypedDict`` shapes (the OpenAPI document derives
its schemas from them) and the functions that build them from domain objects."""

from __future__ import annotations

from typing import Annotated, NotRequired, TypedDict

from server import domain
from server.domain import EventStatus, SpecFormat
from server.web.api.shapes import Action, NonNegative, action_json, iso
from server.web.schema import Doc, Time, Uuid

SpecId = Annotated[str, Doc(pattern="^[a-z0-9][a-z0-9_.-]{0,63}$")]
Revision = Annotated[int, Doc(minimum=1)]


class VersionCount(TypedDict):
    version: Annotated[str, Doc(description='"" counts hosts whose detection failed (unknown)')]
    agents: NonNegative


class SpecSummary(TypedDict):
    spec_id: SpecId
    revision: Annotated[int, Doc(minimum=1, description="the latest revision")]
    title: str
    target: str
    updated_at: Time
    agents: Annotated[int, Doc(minimum=0, description="agents reporting the spec")]
    at_target: NonNegative
    versions: list[VersionCount]


class SpecList(TypedDict):
    specs: list[SpecSummary]


class SpecRevisionInfo(TypedDict):
    revision: Revision
    sha256: str
    created_at: Time
    created_by: str


class AgentSpecState(TypedDict):
    agent_id: str
    hostname: str
    revision: NonNegative
    version: str
    error: str
    reported_at: Time


class SpecDetail(TypedDict):
    spec_id: SpecId
    revision: Revision
    title: str
    target: str
    source: Annotated[str, Doc(description="exactly as uploaded")]
    source_format: SpecFormat
    canonical: Annotated[str, Doc(description="the spec as canonical JSON: what agents receive")]
    sha256: Annotated[str, Doc(description="SHA-256 of canonical")]
    created_at: Time
    created_by: str
    revisions: list[SpecRevisionInfo]
    versions: list[VersionCount]
    agents: list[AgentSpecState]


class SpecUploaded(TypedDict):
    spec_id: SpecId
    revision: Revision
    created: Annotated[bool, Doc(description="false: the same spec as the latest revision")]


class SpecDiff(TypedDict):
    spec_id: SpecId
    from_revision: Revision
    to_revision: Revision
    diff: Annotated[str, Doc(description='unified diff of the sources ("" when equal)')]


class PreviewRequest(TypedDict):
    """The body of ``POST /api/v1/migrations/{spec_id}/preview``."""

    agent_ids: Annotated[list[str], Doc(minItems=1, maxItems=100)]
    revision: NotRequired[Revision]


class SpecRunRequest(TypedDict):
    """The body of ``POST /api/v1/migrations/{spec_id}/run``."""

    agent_id: str
    revision: NotRequired[Revision]


class PreviewsAccepted(TypedDict):
    actions: list[Action]


class FileDiff(TypedDict):
    path: str
    diff: Annotated[str, Doc(description="unified diff, secrets shown as ********")]
    operations: list[str]
    note: str


class Preview(TypedDict):
    action_id: Uuid
    agent_id: str
    spec_id: str
    spec_revision: NonNegative
    pending: Annotated[bool, Doc(description="true until the agent reports the preview")]
    status: EventStatus | None
    migration_from: str
    migration_to: str
    message: str
    error_message: str
    diffs: list[FileDiff]
    occurred_at: Time | None


def _versions(versions: tuple[domain.VersionCount, ...]) -> list[VersionCount]:
    return [VersionCount(version=v.version, agents=v.agents) for v in versions]


def spec_list_json(specs: list[domain.SpecSummary]) -> SpecList:
    """The body of ``GET /api/v1/migrations``."""
    return SpecList(
        specs=[
            SpecSummary(
                spec_id=s.spec_id,
                revision=s.latest_revision,
                title=s.title,
                target=s.target,
                updated_at=iso(s.updated_at),
                agents=s.agents,
                at_target=s.at_target,
                versions=_versions(s.versions),
            )
            for s in specs
        ]
    )


def spec_detail_json(detail: domain.SpecDetail) -> SpecDetail:
    """The body of ``GET /api/v1/migrations/{spec_id}`` (and of one revision)."""
    spec = detail.spec
    return SpecDetail(
        spec_id=spec.spec_id,
        revision=spec.revision,
        title=spec.title,
        target=spec.target,
        source=spec.source,
        source_format=spec.source_format,
        canonical=spec.canonical,
        sha256=spec.sha256,
        created_at=iso(spec.created_at),
        created_by=spec.created_by,
        revisions=[
            SpecRevisionInfo(
                revision=r.revision,
                sha256=r.sha256,
                created_at=iso(r.created_at),
                created_by=r.created_by,
            )
            for r in detail.revisions
        ],
        versions=_versions(detail.versions),
        agents=[
            AgentSpecState(
                agent_id=a.agent_id,
                hostname=a.hostname,
                revision=a.revision,
                version=a.version,
                error=a.error,
                reported_at=iso(a.reported_at),
            )
            for a in detail.agents
        ],
    )


def previews_json(actions: list[domain.PendingAction]) -> PreviewsAccepted:
    """The 202 body of ``POST /api/v1/migrations/{spec_id}/preview``."""
    return PreviewsAccepted(actions=[action_json(a) for a in actions])


def preview_json(result: domain.PreviewResult) -> Preview:
    """The body of ``GET /api/v1/previews/{action_id}``."""
    return Preview(
        action_id=result.action_id,
        agent_id=result.agent_id,
        spec_id=result.spec_id,
        spec_revision=result.spec_revision,
        pending=result.pending,
        status=EventStatus(result.status) if result.status else None,
        migration_from=result.migration_from,
        migration_to=result.migration_to,
        message=result.message,
        error_message=result.error_message,
        diffs=[
            FileDiff(path=d.path, diff=d.diff, operations=list(d.operations), note=d.note)
            for d in result.diffs
        ],
        occurred_at=iso(result.occurred_at),
    )
