"""Reads and writes of migration specs (``migration_specs``), of what agents report about them
(``agent_spec_versions``) and of the preview events that answer a ``preview_migration``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from server.domain import (
    AgentSpecState,
    EventType,
    FileDiff,
    SpecFormat,
    SpecRevision,
    VersionCount,
)
from server.storage.events import diffs_from_text
from server.storage.models import Agent, AgentSpecVersion, MigrationSpec, UpdateEvent

UNKNOWN = ""  # the version key counting hosts whose detection failed or matched nothing


def _revision(row: Any) -> SpecRevision:
    return SpecRevision(
        spec_id=row.spec_id,
        revision=int(row.revision),
        title=row.title,
        target=row.target,
        source=row.source,
        source_format=SpecFormat(row.source_format),
        canonical=row.canonical,
        sha256=row.sha256,
        created_at=row.created_at,
        created_by=row.created_by,
    )


async def latest_revision(session: AsyncSession, spec_id: str) -> SpecRevision | None:
    """The newest revision of ``spec_id``, or None for an unknown spec."""
    row = (
        await session.execute(
            select(MigrationSpec)
            .where(MigrationSpec.spec_id == spec_id)
            .order_by(MigrationSpec.revision.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    return None if row is None else _revision(row)


async def get_revision(session: AsyncSession, spec_id: str, revision: int) -> SpecRevision | None:
    """Revision ``revision`` of ``spec_id``, or None."""
    row = await session.get(MigrationSpec, (spec_id, revision))
    return None if row is None else _revision(row)


async def list_revisions(session: AsyncSession, spec_id: str) -> list[SpecRevision]:
    """Every revision of ``spec_id``, oldest first."""
    result = await session.execute(
        select(MigrationSpec)
        .where(MigrationSpec.spec_id == spec_id)
        .order_by(MigrationSpec.revision)
    )
    return [_revision(row) for row in result.scalars()]


async def insert_revision(session: AsyncSession, spec: SpecRevision) -> None:
    """Store a new revision (the primary key refuses a revision number taken meanwhile)."""
    session.add(
        MigrationSpec(
            spec_id=spec.spec_id,
            revision=spec.revision,
            title=spec.title,
            target=spec.target,
            source=spec.source,
            source_format=spec.source_format.value,
            canonical=spec.canonical,
            sha256=spec.sha256,
            created_at=spec.created_at,
            created_by=spec.created_by,
        )
    )
    await session.flush()


async def latest_of_every_spec(session: AsyncSession) -> list[SpecRevision]:
    """The newest revision of every spec, by spec id."""
    newest = (
        select(MigrationSpec.spec_id, func.max(MigrationSpec.revision).label("revision"))
        .group_by(MigrationSpec.spec_id)
        .subquery()
    )
    result = await session.execute(
        select(MigrationSpec)
        .join(
            newest,
            (newest.c.spec_id == MigrationSpec.spec_id)
            & (newest.c.revision == MigrationSpec.revision),
        )
        .order_by(MigrationSpec.spec_id)
    )
    return [_revision(row) for row in result.scalars()]


async def version_counts(
    session: AsyncSession, spec_ids: Sequence[str] | None = None
) -> dict[str, list[VersionCount]]:
    """Spec id -> how many agents report each version (``UNKNOWN``: an error or no version),
    by version."""
    version = case((AgentSpecVersion.error != "", UNKNOWN), else_=AgentSpecVersion.version).label(
        "v"
    )
    query = select(AgentSpecVersion.spec_id, version, func.count()).group_by(
        AgentSpecVersion.spec_id, version
    )
    if spec_ids is not None:
        query = query.where(AgentSpecVersion.spec_id.in_(list(spec_ids)))
    counts: dict[str, list[VersionCount]] = {}
    for spec_id, value, count in await session.execute(
        query.order_by(AgentSpecVersion.spec_id, version)
    ):
        counts.setdefault(spec_id, []).append(VersionCount(value or UNKNOWN, int(count)))
    return counts


async def agent_states(session: AsyncSession, spec_id: str) -> list[AgentSpecState]:
    """What every agent reporting ``spec_id`` last said, by hostname then agent id."""
    result = await session.execute(
        select(
            AgentSpecVersion.agent_id,
            Agent.hostname,
            AgentSpecVersion.revision,
            AgentSpecVersion.version,
            AgentSpecVersion.error,
            AgentSpecVersion.reported_at,
        )
        .join(Agent, Agent.id == AgentSpecVersion.agent_id)
        .where(AgentSpecVersion.spec_id == spec_id)
        .order_by(Agent.hostname, AgentSpecVersion.agent_id)
    )
    return [
        AgentSpecState(
            agent_id=row.agent_id,
            hostname=row.hostname,
            revision=int(row.revision),
            version=row.version,
            error=row.error,
            reported_at=row.reported_at,
        )
        for row in result
    ]


async def preview_answer(
    session: AsyncSession,
    agent_id: str,
    action_id: str,
    event_type: EventType = EventType.MIGRATION_PREVIEW,
) -> Any | None:
    """The newest ``event_type`` event of ``agent_id`` answering ``action_id`` (a row with
    status, versions, messages, ``diffs`` and ``occurred_at``), or None."""
    result = await session.execute(
        select(
            UpdateEvent.status,
            UpdateEvent.migration_from,
            UpdateEvent.migration_to,
            UpdateEvent.message,
            UpdateEvent.error_message,
            UpdateEvent.diffs,
            UpdateEvent.occurred_at,
        )
        .where(
            # literal, so the planner can use the partial index ix_update_events_action_id
            text("update_events.action_id != ''"),
            UpdateEvent.action_id == action_id,
            UpdateEvent.agent_id == agent_id,
            UpdateEvent.event_type == event_type.value,
        )
        .order_by(UpdateEvent.id.desc())
        .limit(1)
    )
    return result.first()


def row_diffs(row: Any) -> tuple[FileDiff, ...]:
    """The diffs of a :func:`preview_answer` row."""
    return diffs_from_text(row.diffs)
