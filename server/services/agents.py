"""Agents: authenticating their credentials, revoking them, deriving their health.

Authentication keeps an in-process cache of *successful* lookups (credential hash -> agent
id, bound machine id, what rotation needs) for ``AUTH_CACHE_TTL`` seconds, longer than an
agent's check-in interval, so an agent's check-ins do not each pay a SELECT (at a 60 s interval
a shorter cache missed on every one). What makes a cached credential wrong (the agent revoked
or deleted, the credential revoked, a rotation requested) writes a row into ``auth_changes``
by a trigger, whichever process or tool made it; about once every ``AUTH_CHANGES_POLL``
seconds the authenticator reads the new rows and forgets those agents. So a revocation made
anywhere takes effect everywhere within about a second (``revoke`` also clears this process's
entries at once); the TTL is only the backstop. Failures are never cached.

Machine binding: a credential is bound to the ``machine_id`` its agent enrolled with; every
check-in must carry host facts with that machine id (``check_machine``), so a credential copied
to another host is refused.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.domain import AgentHealth, AgentSummary, BulkOutcome
from server.errors import Conflict, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from server.selectors import parse_selector
from server.services.enrollment import CREDENTIAL_PREFIX, secret_hash
from server.services.health import unavailable_on_outage
from server.services.targets import MAX_BULK_AGENTS, Targets, resolve_in, select_in
from server.storage import agents as agents_db
from server.storage import auth_changes as auth_changes_db
from server.storage import targets as targets_db

AUTH_CACHE_TTL = 300.0
AUTH_CACHE_MAX = 200_000
AUTH_CHANGES_POLL = 1.0  # seconds between reads of auth_changes
# A change is looked for again for this long after its id was first passed: on PostgreSQL a
# transaction may commit a lower id after a higher one was read (ids are drawn at insert).
AUTH_CHANGES_OVERLAP = 30.0
AUTH_CHANGES_PAGE = 10_000
monotonic = time.monotonic  # the authenticator's clock (tests move it)


class AgentIdentity(NamedTuple):
    """An authenticated agent and the machine its credential is bound to (enrollment's
    ``HostFacts.machine_id``), with what credential rotation needs to know about the
    credential presented (``server.services.rotation``)."""

    agent_id: str
    machine_id: str
    credential_id: int = 0
    created_at: datetime | None = None
    expires_at: datetime | None = None
    used: bool = True  # False: its first use (a freshly rotated-in credential)
    rotate_requested_at: datetime | None = None


MACHINE_MISMATCH = "credential bound to another machine"


def check_machine(bound_machine_id: str | None, has_facts: bool, machine_id: str) -> None:
    """Refuse a check-in that does not prove it comes from the enrolled machine: no host facts
    (InvalidArgument), another ``machine_id`` or no known binding (PermissionDenied). No
    database access: the bound machine comes with the (cached) credential lookup, ``identify``."""
    if bound_machine_id is None:
        raise PermissionDenied("no machine binding known for this credential")
    if not has_facts:
        raise InvalidArgument(
            "is required: the agent credential is bound to the enrolled machine_id", field="facts"
        )
    if machine_id != bound_machine_id:
        raise PermissionDenied(MACHINE_MISMATCH)


def _check_expiry(expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise Unauthenticated(
            f"agent credential expired at {expires_at.isoformat()}; re-enroll the agent "
            "(flagpost-agent enroll with a new token)"
        )


def checked_identity(record: agents_db.CredentialRecord | None) -> AgentIdentity:
    """The identity a stored credential grants. Unauthenticated for a missing, revoked or
    expired credential, PermissionDenied for a revoked agent."""
    if record is None or record.credential_revoked:
        raise Unauthenticated("invalid agent credential")
    _check_expiry(record.expires_at)
    if record.agent_revoked:
        raise PermissionDenied("this agent has been revoked")
    return AgentIdentity(
        record.agent_id,
        record.machine_id,
        credential_id=record.credential_id,
        created_at=record.created_at,
        expires_at=record.expires_at,
        used=record.last_used_at is not None,
        rotate_requested_at=record.rotate_requested_at,
    )


class Authenticator:
    """Turns a bearer credential into an agent id (see the module docstring for caching)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        ttl_seconds: float = AUTH_CACHE_TTL,
    ) -> None:
        self._sessions = sessions
        self._ttl = ttl_seconds
        self._cache: dict[str, tuple[AgentIdentity, float]] = {}
        # agent id -> the digests of its cached credentials, so that settling or forgetting one
        # agent touches its own entries only (a fleet's first check-ins settle every agent)
        self._digests: dict[str, set[str]] = {}
        self._next_poll = 0.0
        self._polling = False
        self._floor: int | None = None  # changes up to this id were applied (None: not read)
        self._recent: dict[int, float] = {}  # change ids above the floor already applied
        self.lookups = 0  # database lookups (cache misses), for metrics

    async def authenticate(self, credential: str) -> str:
        """The agent id owning ``credential``. Raises Unauthenticated for a missing, unknown,
        expired or revoked credential and PermissionDenied for a revoked agent."""
        return (await self.identify(credential)).agent_id

    async def identify(self, credential: str) -> AgentIdentity:
        """The agent owning ``credential`` and its bound machine id; raises as ``authenticate``
        (one cached lookup serves both)."""
        if not credential.startswith(CREDENTIAL_PREFIX) or len(credential) > 128:
            raise Unauthenticated("invalid agent credential")
        digest = secret_hash(credential)
        now = monotonic()
        if now >= self._next_poll and not self._polling:
            await self._catch_up(now)
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            _check_expiry(hit[0].expires_at)
            return hit[0]
        self.lookups += 1
        with unavailable_on_outage("authentication"):
            async with self._sessions() as session:
                record = await agents_db.find_credential(session, digest)
        identity = checked_identity(record)
        if len(self._cache) >= AUTH_CACHE_MAX:
            self._cache.clear()
            self._digests.clear()
        self._cache[digest] = (identity, now + self._ttl)
        self._digests.setdefault(identity.agent_id, set()).add(digest)
        return identity

    async def _catch_up(self, now: float) -> None:
        """Forget the agents of the ``auth_changes`` rows not applied yet. The first read only
        notes where the table ends (and drops anything cached before it)."""
        self._polling = True
        try:
            with unavailable_on_outage("authentication"):
                async with self._sessions() as session:
                    if self._floor is None:
                        self._floor = await auth_changes_db.latest_id(session)
                        self._cache.clear()
                        self._digests.clear()
                        return
                    changes = await auth_changes_db.changes_after(
                        session, self._floor, AUTH_CHANGES_PAGE
                    )
            for change_id, agent_id in changes:
                if change_id not in self._recent:
                    self._recent[change_id] = now
                    self.forget(agent_id)
            if len(changes) == AUTH_CHANGES_PAGE:  # more than a page behind: start afresh
                self._cache.clear()
                self._digests.clear()
                self._floor, self._recent = changes[-1][0], {}
            # Ids applied longer ago than the overlap are not looked for again.
            settled = [i for i, seen in self._recent.items() if now - seen > AUTH_CHANGES_OVERLAP]
            if settled:
                self._floor = max(self._floor, *settled)
                self._recent = {i: t for i, t in self._recent.items() if i > self._floor}
        finally:
            self._polling = False
            self._next_poll = now + AUTH_CHANGES_POLL

    def settle(self, identity: AgentIdentity) -> None:
        """After a credential's first use (``server.services.rotation``): remember it as
        ``identity`` says (used) and forget the agent's other cached credentials, which were
        just revoked, so they are refused at once by this process."""
        digests = self._digests.get(identity.agent_id, set())
        for digest in list(digests):
            hit = self._cache.get(digest)
            if hit is None:
                digests.discard(digest)
            elif hit[0].credential_id == identity.credential_id:
                self._cache[digest] = (identity, hit[1])
            else:
                del self._cache[digest]
                digests.discard(digest)

    def forget(self, agent_id: str) -> None:
        """Drop cached lookups for ``agent_id`` (after a revocation)."""
        for digest in self._digests.pop(agent_id, set()):
            self._cache.pop(digest, None)


async def revoke(
    sessions: async_sessionmaker[AsyncSession],
    agent_id: str,
    authenticator: Authenticator | None = None,
) -> None:
    """Revoke ``agent_id``: its check-ins get PERMISSION_DENIED from now on (other server
    processes: within AUTH_CACHE_TTL). Raises NotFound for an unknown agent."""
    async with sessions() as session, session.begin():
        found = await agents_db.set_revoked(session, agent_id, datetime.now(UTC))
    if not found:
        raise NotFound(f"no agent {agent_id}")
    if authenticator is not None:
        authenticator.forget(agent_id)


async def revoke_agents(
    sessions: async_sessionmaker[AsyncSession],
    config: ServerConfig,
    targets: Targets,
    authenticator: Authenticator | None = None,
) -> BulkOutcome:
    """Revoke every agent ``targets`` addresses (at most ``MAX_BULK_AGENTS``) as
    :func:`revoke` does; ``changed`` counts those not revoked before."""
    with unavailable_on_outage("revoke agents"):
        async with sessions() as session, session.begin():
            ids = await resolve_in(session, config, targets, MAX_BULK_AGENTS)
            revoked = await agents_db.set_revoked_many(session, ids, datetime.now(UTC))
    if authenticator is not None:
        for agent_id in revoked:
            authenticator.forget(agent_id)
    return BulkOutcome(len(ids), len(revoked))


async def request_rotation(
    sessions: async_sessionmaker[AsyncSession],
    agent_id: str,
    authenticator: Authenticator | None = None,
) -> None:
    """``flagpost-server agent rotate ID``: the agent's next check-in receives a new credential
    (every server process: within AUTH_CACHE_TTL). NotFound for an unknown agent, Conflict for a
    revoked one."""
    async with sessions() as session, session.begin():
        record = await agents_db.get_agent(session, agent_id)
        if record is None:
            raise NotFound(f"no agent {agent_id}")
        if record.revoked:
            raise Conflict(f"agent {agent_id} is revoked: enroll it again instead")
        await agents_db.set_rotate_requested(session, agent_id, datetime.now(UTC))
    if authenticator is not None:
        authenticator.forget(agent_id)


def stale_window(config: ServerConfig) -> timedelta:
    """How long an agent may be silent and still count as online."""
    return timedelta(seconds=config.checkin_interval_seconds) * config.stale_after_intervals


def offline_window(config: ServerConfig) -> timedelta:
    """How long an agent may be silent before it counts as offline: it goes offline at
    ``last_checkin_at + offline_window`` (the health shown, the fleet counts and the
    ``agent.offline`` webhook event all use this)."""
    return timedelta(seconds=config.checkin_interval_seconds) * config.offline_after_intervals


def agent_health(
    last_checkin_at: datetime | None, now: datetime, config: ServerConfig
) -> AgentHealth:
    """Online / stale / offline from the last check-in and the configured interval."""
    if last_checkin_at is None:
        return AgentHealth.NEVER
    silent = now - last_checkin_at
    if silent <= stale_window(config):
        return AgentHealth.ONLINE
    if silent <= offline_window(config):
        return AgentHealth.STALE
    return AgentHealth.OFFLINE


async def get_agent(
    sessions: async_sessionmaker[AsyncSession], config: ServerConfig, agent_id: str
) -> AgentSummary:
    """One agent with its derived health. Raises NotFound (Unavailable: database down)."""
    with unavailable_on_outage("get agent"):
        async with sessions() as session:
            record = await agents_db.get_agent(session, agent_id)
            tags = await targets_db.tags_of(session, [agent_id]) if record is not None else {}
    if record is None:
        raise NotFound(f"no agent {agent_id}")
    return _summary(record, datetime.now(UTC), config, tags.get(agent_id, ()))


async def list_agents(
    sessions: async_sessionmaker[AsyncSession],
    config: ServerConfig,
    expressions: Sequence[str] | None = None,
) -> list[AgentSummary]:
    """Every agent with its derived health, by hostname (Unavailable: database down); only
    those the selector ``expressions`` pick when given (SelectorError on a bad one)."""
    selector = parse_selector(expressions) if expressions else None
    with unavailable_on_outage("list agents"):
        async with sessions() as session:
            records = await agents_db.list_agents(session)
            if selector is not None:
                picked = {
                    agent_id for agent_id, _ in (await select_in(session, config, selector)).agents
                }
                records = [record for record in records if record.id in picked]
            tags = await targets_db.tags_of(session)
    now = datetime.now(UTC)
    return [_summary(record, now, config, tags.get(record.id, ())) for record in records]


def _summary(
    record: agents_db.AgentRecord,
    now: datetime,
    config: ServerConfig,
    tags: tuple[str, ...] = (),
) -> AgentSummary:
    return AgentSummary(
        id=record.id,
        hostname=record.hostname,
        os=record.os,
        agent_version=record.agent_version,
        config_version=record.config_version,
        enrolled_at=record.enrolled_at,
        last_checkin_at=record.last_checkin_at,
        revoked=record.revoked,
        health=agent_health(record.last_checkin_at, now, config),
        labels=record.labels,
        tags=tags,
    )
