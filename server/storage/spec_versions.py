"""Writes to ``agent_spec_versions``: what each agent's check-ins report in ``HostFacts.specs``.

Runs inside the ingest writer's transaction (``server.storage.batches``) on a synchronous
connection. Cheap on the hot path: one SELECT of the stored rows of the batch's reporting agents,
then writes only for what changed (a new spec, another revision, version or error: upserted;
a spec the agent no longer reports: deleted). A check-in without facts changes nothing.
``reported_at`` is therefore when the agent first reported the stored state.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from server.domain import SpecVersionReport
from server.storage.models import AgentSpecVersion

_TABLE = AgentSpecVersion.__table__
_CHUNK = 500

Stored = tuple[int, str, str]  # revision, version, error


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _stored(conn: Connection, agent_ids: Sequence[str]) -> dict[tuple[str, str], Stored]:
    found: dict[tuple[str, str], Stored] = {}
    t = _TABLE.c
    for chunk in _chunks(agent_ids):
        rows = conn.execute(
            select(t.agent_id, t.spec_id, t.revision, t.version, t.error).where(
                t.agent_id.in_(chunk)
            )
        )
        for agent_id, spec_id, revision, version, error in rows:
            found[(agent_id, spec_id)] = (revision, version, error)
    return found


def record_spec_versions(
    conn: Connection, reports: Mapping[str, Sequence[SpecVersionReport]], now: datetime
) -> int:
    """Make ``agent_spec_versions`` hold exactly ``reports`` (agent id -> every spec it
    reports) for those agents, writing only the differences. Returns the rows written or
    deleted."""
    if not reports:
        return 0
    agent_ids = sorted(reports)
    stored = _stored(conn, agent_ids)
    upserts: list[dict[str, object]] = []
    reported: set[tuple[str, str]] = set()
    for agent_id in agent_ids:
        for r in reports[agent_id]:
            key = (agent_id, r.spec_id)
            reported.add(key)
            if stored.get(key) != (r.revision, r.version, r.error):
                upserts.append(
                    {
                        "agent_id": agent_id,
                        "spec_id": r.spec_id,
                        "revision": r.revision,
                        "version": r.version,
                        "error": r.error,
                        "reported_at": now,
                    }
                )
    gone = sorted(key for key in stored if key not in reported)
    if upserts:
        insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        statement = insert(AgentSpecVersion)
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["agent_id", "spec_id"],
                set_={
                    "revision": statement.excluded.revision,
                    "version": statement.excluded.version,
                    "error": statement.excluded.error,
                    "reported_at": statement.excluded.reported_at,
                },
            ),
            upserts,
        )
    by_agent: dict[str, list[str]] = {}
    for agent_id, spec_id in gone:
        by_agent.setdefault(agent_id, []).append(spec_id)
    for agent_id, spec_ids in by_agent.items():  # rare: an agent dropped a spec
        conn.execute(
            delete(AgentSpecVersion).where(
                AgentSpecVersion.agent_id == agent_id, AgentSpecVersion.spec_id.in_(spec_ids)
            )
        )
    return len(upserts) + len(gone)


def reports_of(
    works: Sequence[tuple[str, Sequence[SpecVersionReport] | None]],
) -> dict[str, Sequence[SpecVersionReport]]:
    """Agent id -> the specs of its newest check-in in ``works`` that carried facts."""
    reports: dict[str, Sequence[SpecVersionReport]] = {}
    for agent_id, specs in works:
        if specs is not None:
            reports[agent_id] = specs
    return reports
