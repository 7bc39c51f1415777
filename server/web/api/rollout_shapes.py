"""The JSON bodies of the rollouts API (``/api/v1/rollouts``), defined once like
``server.web.api.shapes``: ``TypedDict`` shapes (the OpenAPI document derives its schemas from
them) and the functions that build them from domain objects. ``flagpost-server rollout
... --json`` prints the same bodies."""

from __future__ import annotations

from typing import Annotated, NotRequired, TypedDict

from server import domain
from server.domain import RevertState, RolloutHostState, RolloutState
from server.web.api.shapes import NonNegative, iso
from server.web.schema import Doc, Time, Uuid

Fraction = Annotated[float, Doc(minimum=0, maximum=1)]
WaveLabel = Annotated[str, Doc(pattern=r"^\d+(\.\d+)?%?$", description="a host count or 10%")]


class RolloutSummary(TypedDict):
    id: Uuid
    spec_id: str
    spec_revision: Annotated[int, Doc(minimum=1)]
    selector: list[str]
    waves: list[WaveLabel]
    wave_sizes: Annotated[list[int], Doc(description="cumulative host counts of the waves")]
    max_failure_rate: Annotated[
        Fraction | None, Doc(description="a wave halts beyond this fraction of failed hosts")
    ]
    max_failures: Annotated[
        int | None, Doc(minimum=0, description="a wave halts beyond this many failed hosts")
    ]
    soak_seconds: NonNegative
    wave_timeout_seconds: Annotated[int, Doc(minimum=1)]
    state: RolloutState
    reason: Annotated[str, Doc(description="why it is in its state")]
    current_wave: Annotated[int, Doc(minimum=0, description="0-based")]
    hosts_total: NonNegative
    hosts_done: NonNegative
    created_at: Time
    created_by: str
    updated_at: Time
    next_wave_at: Annotated[Time | None, Doc(description="between waves: when the soak ends")]
    override_wave: Annotated[int, Doc(description="the wave whose gate was overridden, or -1")]


class RolloutList(TypedDict):
    rollouts: list[RolloutSummary]


class WaveCounts(TypedDict):
    index: NonNegative
    label: WaveLabel
    size: Annotated[int, Doc(minimum=0, description="cumulative")]
    hosts: Annotated[int, Doc(minimum=0, description="this wave's own hosts")]
    counts: Annotated[dict[str, int], Doc(description="hosts by RolloutHostState")]
    failed: Annotated[int, Doc(minimum=0, description="failed + not reached")]
    failure_rate: Fraction


class RolloutTransition(TypedDict):
    from_state: Annotated[str, Doc(description='"" for the creation')]
    to_state: RolloutState
    at: Time
    by: str
    reason: str


class RolloutHost(TypedDict):
    agent_id: str
    hostname: str
    wave: NonNegative
    state: RolloutHostState
    run_id: Annotated[str, Doc(description='the run the agent reported ("" before)')]
    error: str
    revert_state: RevertState
    revert_run_id: str


class RolloutDetail(RolloutSummary):
    waves_detail: list[WaveCounts]
    reverts: Annotated[dict[str, int], Doc(description='hosts by revert state ("none": none)')]
    transitions: list[RolloutTransition]
    hosts: Annotated[list[RolloutHost], Doc(description="up to 1000, by wave")]


class RolloutCreate(TypedDict):
    """The body of ``POST /api/v1/rollouts``."""

    spec_id: str
    revision: NotRequired[Annotated[int, Doc(minimum=1)]]
    select: NotRequired[Annotated[list[str], Doc(description="selector expressions (AND)")]]
    waves: NotRequired[Annotated[list[WaveLabel], Doc(description='default ["1","10%","100%"]')]]
    max_failure_rate: NotRequired[Annotated[str, Doc(description='e.g. "5%"')]]
    max_failures: NotRequired[Annotated[int, Doc(minimum=0)]]
    soak: NotRequired[Annotated[str, Doc(description='e.g. "10m" (default "0")')]]
    wave_timeout: NotRequired[Annotated[str, Doc(description='e.g. "30m" (the default)')]]


class RolloutChange(TypedDict):
    """The body of pause, resume and abort (all optional)."""

    reason: NotRequired[Annotated[str, Doc(description="recorded; required to resume HALTED")]]
    revert: NotRequired[Annotated[bool, Doc(description="abort: also revert (default false)")]]


def rollout_json(r: domain.RolloutSummary) -> RolloutSummary:
    """One rollout as lists show it."""
    return RolloutSummary(
        id=r.id,
        spec_id=r.spec_id,
        spec_revision=r.spec_revision,
        selector=list(r.selector),
        waves=list(r.wave_labels),
        wave_sizes=list(r.wave_sizes),
        max_failure_rate=r.gates.max_failure_rate,
        max_failures=r.gates.max_failures,
        soak_seconds=r.soak_seconds,
        wave_timeout_seconds=r.wave_timeout_seconds,
        state=r.state,
        reason=r.reason,
        current_wave=r.current_wave,
        hosts_total=r.hosts_total,
        hosts_done=r.hosts_done,
        created_at=iso(r.created_at),
        created_by=r.created_by,
        updated_at=iso(r.updated_at),
        next_wave_at=iso(r.next_wave_at),
        override_wave=r.override_wave,
    )


def rollout_list_json(rollouts: list[domain.RolloutSummary]) -> RolloutList:
    """The body of ``GET /api/v1/rollouts``."""
    return RolloutList(rollouts=[rollout_json(r) for r in rollouts])


def rollout_detail_json(d: domain.RolloutDetail) -> RolloutDetail:
    """The body of ``GET /api/v1/rollouts/{rollout_id}``."""
    return RolloutDetail(
        **rollout_json(d.rollout),
        waves_detail=[
            WaveCounts(
                index=w.index,
                label=w.label,
                size=w.size,
                hosts=w.hosts,
                counts={state.value: n for state, n in w.counts.items()},
                failed=w.failed,
                failure_rate=w.failure_rate,
            )
            for w in d.waves
        ],
        reverts={state.value or "none": n for state, n in d.reverts.items()},
        transitions=[
            RolloutTransition(
                from_state=t.from_state, to_state=t.to_state, at=iso(t.at), by=t.by, reason=t.reason
            )
            for t in d.transitions
        ],
        hosts=[
            RolloutHost(
                agent_id=h.agent_id,
                hostname=h.hostname,
                wave=h.wave,
                state=h.state,
                run_id=h.run_id,
                error=h.error,
                revert_state=h.revert_state,
                revert_run_id=h.revert_run_id,
            )
            for h in d.hosts
        ],
    )
