"""Migration specs service: upload (validated by the agent's own validator, stored as immutable
revisions), lists and details with the hosts per version the agents report, diffs between
revisions, and what people ask of specs: previews, runs and reverts, queued as signed actions
the agent receives with its next check-in.

Every function takes the app's sessionmaker, owns its transaction, returns domain dataclasses
and raises ``server.errors``: NotFound, Conflict, InvalidArgument, Unavailable.

Action params (all strings; the agent reads exactly these): ``preview_migration`` and
``run_migration`` carry ``migration_id`` (the spec id), ``spec_id``, ``spec_revision``, ``spec``
(the canonical JSON) and ``spec_sha256``; ``revert_run`` carries ``run_id``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agent.specs.validate import SPEC_ID
from server.config import ServerConfig
from server.domain import (
    ActionKind,
    BulkOutcome,
    EventStatus,
    EventType,
    PendingAction,
    PreviewResult,
    RunState,
    RunSummary,
    SpecDetail,
    SpecFormat,
    SpecRevision,
    SpecSummary,
)
from server.errors import Conflict, InvalidArgument, NotFound
from server.services.health import unavailable_on_outage
from server.services.runs import new_action, requester
from server.services.spec_checks import check_spec
from server.services.targets import MAX_BULK_AGENTS, Targets, resolve_in
from server.storage import actions as actions_store
from server.storage import agents as agents_store
from server.storage import runs as runs_store
from server.storage import specs as specs_store
from server.storage import targets as targets_store

MAX_PREVIEW_AGENTS = 100
# Open preview/run actions per agent: each carries up to 64 KiB of spec, and every open action
# rides along with each check-in response until acknowledged.
MAX_OPEN_SPEC_ACTIONS = 16
_SPEC_KINDS = (ActionKind.PREVIEW_MIGRATION, ActionKind.RUN_MIGRATION)


def _spec_id(spec_id: str) -> str:
    if SPEC_ID.fullmatch(spec_id) is None:
        raise InvalidArgument("is not a spec id", field="spec_id")
    return spec_id


async def add_spec(
    sessions: async_sessionmaker[AsyncSession], source: str, fmt: str, by: str
) -> tuple[str, int, bool]:
    """Validate and store ``source`` (``fmt`` "toml" or "json"): ``(spec_id, revision,
    created)``. Content whose canonical JSON equals the latest revision's returns that revision
    (``created`` False); anything else becomes the next revision. InvalidArgument with the
    validator's words (``line 27: steps[0].ops[0].op: unknown operation 'rename'``)."""
    by = requester(by)
    try:
        source_format = SpecFormat(fmt)
    except ValueError:
        raise InvalidArgument("must be toml or json", field="format") from None
    checked = check_spec(source, source_format)
    spec = checked.spec
    now = datetime.now(UTC)
    with unavailable_on_outage("add spec"):
        try:
            async with sessions() as session, session.begin():
                latest = await specs_store.latest_revision(session, spec.id)
                if latest is not None and latest.sha256 == checked.sha256:
                    return spec.id, latest.revision, False
                revision = SpecRevision(
                    spec_id=spec.id,
                    revision=1 if latest is None else latest.revision + 1,
                    title=spec.title,
                    target=spec.target,
                    source=source,
                    source_format=source_format,
                    canonical=checked.canonical,
                    sha256=checked.sha256,
                    created_at=now,
                    created_by=by,
                )
                await specs_store.insert_revision(session, revision)
        except IntegrityError:
            raise Conflict(
                f"spec {spec.id} got a new revision at the same moment; upload again"
            ) from None
    return spec.id, revision.revision, True


async def list_specs(sessions: async_sessionmaker[AsyncSession]) -> list[SpecSummary]:
    """Every spec: its latest revision, title, target and hosts per version."""
    with unavailable_on_outage("list specs"):
        async with sessions() as session:
            latest = await specs_store.latest_of_every_spec(session)
            counts = await specs_store.version_counts(session)
    return [
        SpecSummary(
            spec_id=spec.spec_id,
            latest_revision=spec.revision,
            title=spec.title,
            target=spec.target,
            updated_at=spec.created_at,
            versions=tuple(counts.get(spec.spec_id, ())),
            agents=sum(c.agents for c in counts.get(spec.spec_id, ())),
        )
        for spec in latest
    ]


async def get_spec(
    sessions: async_sessionmaker[AsyncSession], spec_id: str, revision: int | None = None
) -> SpecDetail:
    """Revision ``revision`` (default: the latest) of a spec with every revision, its hosts per
    version and each reporting agent. NotFound for an unknown spec or revision."""
    _spec_id(spec_id)
    with unavailable_on_outage("get spec"):
        async with sessions() as session:
            revisions = await specs_store.list_revisions(session, spec_id)
            if not revisions:
                raise NotFound(f"no migration spec {spec_id} (see: flagpost-server migration list)")
            chosen = revisions[-1] if revision is None else None
            for item in revisions:
                if item.revision == revision:
                    chosen = item
            if chosen is None:
                raise NotFound(
                    f"spec {spec_id} has no revision {revision} (revisions 1 to "
                    f"{revisions[-1].revision})"
                )
            counts = await specs_store.version_counts(session, [spec_id])
            agents = await specs_store.agent_states(session, spec_id)
    return SpecDetail(
        spec=chosen,
        revisions=tuple(revisions),
        versions=tuple(counts.get(spec_id, ())),
        agents=tuple(agents),
    )


async def revision_in(session: AsyncSession, spec_id: str, revision: int | None) -> SpecRevision:
    """Revision ``revision`` (None: the latest) of ``spec_id`` read in ``session``; NotFound
    naming what is missing."""
    _spec_id(spec_id)
    if revision is None:
        found = await specs_store.latest_revision(session, spec_id)
    else:
        found = await specs_store.get_revision(session, spec_id, revision)
    if found is None:
        what = f"spec {spec_id}" if revision is None else f"revision {revision} of spec {spec_id}"
        raise NotFound(f"no {what} (see: flagpost-server migration list)")
    return found


async def diff_revisions(
    sessions: async_sessionmaker[AsyncSession], spec_id: str, old: int, new: int
) -> str:
    """A unified diff of the sources of revisions ``old`` and ``new`` ("" when equal)."""
    with unavailable_on_outage("diff spec"):
        async with sessions() as session:
            a = await revision_in(session, spec_id, old)
            b = await revision_in(session, spec_id, new)
    return "".join(
        difflib.unified_diff(
            a.source.splitlines(keepends=True),
            b.source.splitlines(keepends=True),
            fromfile=f"{spec_id} revision {old}",
            tofile=f"{spec_id} revision {new}",
        )
    )


def spec_params(spec: SpecRevision) -> dict[str, str]:
    """The params of a ``preview_migration`` / ``run_migration`` action for ``spec``."""
    return {
        "migration_id": spec.spec_id,
        "spec_id": spec.spec_id,
        "spec_revision": str(spec.revision),
        "spec": spec.canonical,
        "spec_sha256": spec.sha256,
    }


async def _queue_spec_action(
    session: AsyncSession,
    config: ServerConfig,
    agent_id: str,
    kind: ActionKind,
    spec: SpecRevision,
    by: str,
    now: datetime,
) -> PendingAction:
    agent = await agents_store.get_agent(session, agent_id)
    if agent is None:
        raise NotFound(f"no agent {agent_id} (see: flagpost-server agent list)")
    if agent.revoked:
        raise Conflict(f"agent {agent_id} is revoked")
    open_count = 0
    for open_kind in _SPEC_KINDS:
        open_count += len(await actions_store.open_actions(session, agent.id, now, open_kind))
    if open_count >= MAX_OPEN_SPEC_ACTIONS:
        raise Conflict(
            f"agent {agent_id} already has {open_count} spec actions waiting for its next "
            "check-in; wait until it takes them"
        )
    action = new_action(config, agent.id, kind, spec_params(spec), by, now)
    await actions_store.create_action(session, action)
    return action


async def request_preview(
    sessions: async_sessionmaker[AsyncSession],
    config: ServerConfig,
    spec_id: str,
    agent_ids: Sequence[str],
    by: str,
    revision: int | None = None,
) -> list[PendingAction]:
    """One signed ``preview_migration`` action per agent (the agent plans the spec in memory
    and reports a ``migration_preview`` event with the diffs, answering the action id)."""
    by = requester(by)
    ids = list(dict.fromkeys(agent_ids))
    if not 1 <= len(ids) <= MAX_PREVIEW_AGENTS:
        raise InvalidArgument(f"must name 1 to {MAX_PREVIEW_AGENTS} agents", field="agent_ids")
    now = datetime.now(UTC)
    with unavailable_on_outage("request preview"):
        async with sessions() as session, session.begin():
            spec = await revision_in(session, spec_id, revision)
            return [
                await _queue_spec_action(
                    session, config, agent_id, ActionKind.PREVIEW_MIGRATION, spec, by, now
                )
                for agent_id in ids
            ]


async def request_run(
    sessions: async_sessionmaker[AsyncSession],
    config: ServerConfig,
    spec_id: str,
    agent_id: str,
    by: str,
    revision: int | None = None,
) -> PendingAction:
    """A signed ``run_migration`` action running the spec on ``agent_id`` (the run appears
    when the agent reports it, carrying the action id)."""
    by = requester(by)
    now = datetime.now(UTC)
    with unavailable_on_outage("request spec run"):
        async with sessions() as session, session.begin():
            spec = await revision_in(session, spec_id, revision)
            return await _queue_spec_action(
                session, config, agent_id, ActionKind.RUN_MIGRATION, spec, by, now
            )


async def request_runs(
    sessions: async_sessionmaker[AsyncSession],
    config: ServerConfig,
    spec_id: str,
    targets: Targets,
    by: str,
    revision: int | None = None,
) -> BulkOutcome:
    """:func:`request_run` on every agent ``targets`` addresses (at most ``MAX_BULK_AGENTS``),
    one signed ``run_migration`` action each, queued in one transaction. Revoked agents and
    agents with ``MAX_OPEN_SPEC_ACTIONS`` spec actions waiting are skipped (not ``changed``)."""
    by = requester(by)
    now = datetime.now(UTC)
    with unavailable_on_outage("request spec runs"):
        async with sessions() as session, session.begin():
            spec = await revision_in(session, spec_id, revision)
            ids = await resolve_in(session, config, targets, MAX_BULK_AGENTS)
            revoked = await targets_store.revoked_among(session, ids)
            waiting = await actions_store.open_action_counts(session, ids, _SPEC_KINDS, now)
            params = spec_params(spec)
            actions = [
                new_action(config, agent_id, ActionKind.RUN_MIGRATION, params, by, now)
                for agent_id in ids
                if agent_id not in revoked and waiting.get(agent_id, 0) < MAX_OPEN_SPEC_ACTIONS
            ]
            await actions_store.create_actions(session, actions)
    return BulkOutcome(len(ids), len(actions))


async def request_revert(
    sessions: async_sessionmaker[AsyncSession], config: ServerConfig, run_id: str, by: str
) -> PendingAction:
    """A signed ``revert_run`` action for the run's agent (asking again while one is pending
    returns it). NotFound for an unknown run; Conflict unless it is a succeeded run of a spec
    not reverted yet."""
    by = requester(by)
    now = datetime.now(UTC)
    with unavailable_on_outage("request revert"):
        async with sessions() as session, session.begin():
            run = await runs_store.get_run(session, run_id.lower())
            if run is None:
                raise NotFound(f"no run {run_id}")
            if run.spec_revision <= 0 or run.reverts_run_id:
                raise Conflict(f"run {run.id} is not a run of a migration spec; only those revert")
            if run.state != RunState.SUCCEEDED:
                raise Conflict(
                    f"run {run.id} is {run.state.value}; only a succeeded run can be reverted"
                )
            revert = await runs_store.reverted_by(session, run.id)
            if revert is not None:
                raise Conflict(f"run {run.id} was already reverted (by run {revert.id})")
            for action in await actions_store.open_actions(
                session, run.agent_id, now, ActionKind.REVERT_RUN
            ):
                if action.params.get("run_id") == run.id:
                    return action
            action = new_action(
                config, run.agent_id, ActionKind.REVERT_RUN, {"run_id": run.id}, by, now
            )
            await actions_store.create_action(session, action)
    return action


async def get_preview(sessions: async_sessionmaker[AsyncSession], action_id: str) -> PreviewResult:
    """The ``migration_preview`` event answering ``action_id`` (status, versions, diffs), or
    ``pending`` while the agent has not reported it. NotFound unless it is a preview action."""
    with unavailable_on_outage("get preview"):
        async with sessions() as session:
            action = await actions_store.get_action(session, action_id.lower())
            if action is None or action.kind != ActionKind.PREVIEW_MIGRATION:
                raise NotFound(f"no preview {action_id}")
            row = await specs_store.preview_answer(session, action.agent_id, action.action_id)
    spec_id = action.params.get("spec_id", "")
    revision = int(action.params.get("spec_revision", "0") or 0)
    if row is None:
        return PreviewResult(action.action_id, action.agent_id, spec_id, revision, pending=True)
    return PreviewResult(
        action_id=action.action_id,
        agent_id=action.agent_id,
        spec_id=spec_id,
        spec_revision=revision,
        pending=False,
        status=row.status,
        migration_from=row.migration_from,
        migration_to=row.migration_to,
        message=row.message,
        error_message=row.error_message,
        diffs=specs_store.row_diffs(row),
        occurred_at=row.occurred_at,
    )


async def run_for_action(
    sessions: async_sessionmaker[AsyncSession], action_id: str
) -> RunSummary | None:
    """The run (or revert run) the agent reported for ``action_id``; None until it did."""
    with unavailable_on_outage("run for action"):
        async with sessions() as session:
            return await runs_store.run_for_action(session, action_id.lower())


async def not_needed(sessions: async_sessionmaker[AsyncSession], action: PendingAction) -> bool:
    """True when the agent answered a ``run_migration`` action with a detection event saying
    the host is already at the target (then no run is reported)."""
    with unavailable_on_outage("action outcome"):
        async with sessions() as session:
            row = await specs_store.preview_answer(
                session, action.agent_id, action.action_id, EventType.MIGRATION_DETECTION
            )
    return row is not None and row.status == EventStatus.NOT_NEEDED.value


async def reverted_by(sessions: async_sessionmaker[AsyncSession], run_id: str) -> RunSummary | None:
    """The succeeded revert run of ``run_id``, or None while it has none (the run page offers
    Revert only until then)."""
    with unavailable_on_outage("revert lookup"):
        async with sessions() as session:
            return await runs_store.reverted_by(session, run_id.lower())
