"""View models of the rollouts pages (``/rollouts``, ``/rollouts/new``, ``/rollouts/{id}``).

Built from the rollouts service's domain results (``server.domain`` rollout types); templates
never see ORM rows. Hostnames, errors, selectors and reasons stay plain ``str`` and are
autoescaped by the templates; ``web/static/rollout.js`` writes its updates with
``textContent``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from server.domain import (
    TERMINAL_ROLLOUT_STATES,
    RolloutDetail,
    RolloutGates,
    RolloutHost,
    RolloutHostState,
    RolloutState,
    RolloutSummary,
    RolloutTransition,
    SpecSummary,
    WaveCounts,
)
from server.services import rollouts as rollouts_service
from server.waves import format_duration
from server.web.fleet.views import agent_url
from server.web.format import display_time, relative_time
from server.web.forms import Option
from server.web.migrations.views import spec_url
from server.web.runs.styles import run_url

BAR_WIDTH = 300
BAR_HEIGHT = 14
DEFAULT_WAVES_TEXT = ", ".join(rollouts_service.DEFAULT_WAVES)
DEFAULT_WAVE_TIMEOUT = format_duration(rollouts_service.DEFAULT_WAVE_TIMEOUT_SECONDS)
# The per-wave counts in the order the wave rows show them.
WAVE_COLUMNS: tuple[tuple[RolloutHostState, str], ...] = (
    (RolloutHostState.WAITING, "not started"),
    (RolloutHostState.PENDING, "pending"),
    (RolloutHostState.RUNNING, "running"),
    (RolloutHostState.BLOCKED, "blocked"),
    (RolloutHostState.SUCCEEDED, "succeeded"),
    (RolloutHostState.FAILED, "failed"),
    (RolloutHostState.NOT_REACHED, "not reached"),
    (RolloutHostState.SKIPPED, "skipped"),
)
# Hosts an admin's pause / resume / abort affects: those not started yet.
NOT_STARTED: frozenset[RolloutHostState] = frozenset(
    {RolloutHostState.WAITING, RolloutHostState.PENDING}
)
# The states the page's buttons move a rollout to (pause, resume, abort, abort and revert).
BUTTON_STATES: frozenset[str] = frozenset(
    s.value
    for s in (
        RolloutState.PAUSED,
        RolloutState.RUNNING,
        RolloutState.ABORTED,
        RolloutState.REVERTING,
    )
)


def rollout_url(rollout_id: str) -> str:
    """``/rollouts/{id}`` with the id percent-encoded."""
    return f"/rollouts/{quote(rollout_id, safe='')}"


def new_rollout_url(spec_id: str = "") -> str:
    """The new-rollout form, the spec ``spec_id`` preselected when given."""
    return f"/rollouts/new?spec={quote(spec_id, safe='')}" if spec_id else "/rollouts/new"


def state_class(state: RolloutState) -> str:
    """The badge class of a rollout state (``rollout-state-halted``)."""
    return f"rollout-state-{state.value.lower()}"


def percent_text(rate: float) -> str:
    """0.05 -> ``"5%"``, 0.125 -> ``"12.5%"``."""
    return f"{rate * 100:.1f}".removesuffix(".0") + "%"


def gates_text(gates: RolloutGates) -> str:
    """When a wave halts the rollout, in words."""
    parts = []
    if gates.max_failure_rate is not None:
        parts.append(f"more than {percent_text(gates.max_failure_rate)} of a wave fails")
    if gates.max_failures is not None:
        n = gates.max_failures
        parts.append(f"more than {n} host{'' if n == 1 else 's'} of a wave fail")
    return "halts when " + " or ".join(parts) if parts else "no gate"


def wave_text(rollout: RolloutSummary) -> str:
    """``"wave 2 of 3"`` (the last wave once the rollout completed)."""
    total = len(rollout.wave_sizes)
    current = min(rollout.current_wave + 1, total)
    if rollout.state == RolloutState.COMPLETED:
        current = total
    return f"wave {current} of {total}"


# --------------------------------------------------------------------------- /rollouts


@dataclass(frozen=True, slots=True)
class RolloutRow:
    """One rollout in the list."""

    id: str
    url: str
    state: str
    state_class: str
    spec_id: str
    spec_revision: int
    spec_url: str
    wave_text: str
    hosts_done: int
    hosts_total: int
    created_by: str
    created_iso: str
    created_display: str
    created_relative: str


@dataclass(frozen=True, slots=True)
class RolloutsPage:
    rollouts: tuple[RolloutRow, ...]
    new_url: str


def rollout_row(r: RolloutSummary, now: datetime) -> RolloutRow:
    return RolloutRow(
        id=r.id,
        url=rollout_url(r.id),
        state=r.state.value,
        state_class=state_class(r.state),
        spec_id=r.spec_id,
        spec_revision=r.spec_revision,
        spec_url=spec_url(r.spec_id, r.spec_revision),
        wave_text=wave_text(r),
        hosts_done=r.hosts_done,
        hosts_total=r.hosts_total,
        created_by=r.created_by,
        created_iso=r.created_at.isoformat(),
        created_display=display_time(r.created_at),
        created_relative=relative_time(r.created_at, now),
    )


def rollouts_page(rollouts: Sequence[RolloutSummary], now: datetime) -> RolloutsPage:
    return RolloutsPage(
        rollouts=tuple(rollout_row(r, now) for r in rollouts), new_url=new_rollout_url()
    )


# --------------------------------------------------------------------------- /rollouts/new


@dataclass(frozen=True, slots=True)
class RolloutForm:
    """What the new-rollout form shows: the typed values (kept on an error) and the error, its
    ``field`` the form field it names."""

    spec_id: str = ""
    revision: str = ""
    select: str = ""
    waves: str = DEFAULT_WAVES_TEXT
    max_failure_rate: str = ""
    max_failures: str = ""
    soak: str = "0"
    wave_timeout: str = DEFAULT_WAVE_TIMEOUT
    error: str = ""
    field: str = ""


@dataclass(frozen=True, slots=True)
class NewRolloutPage:
    form: RolloutForm
    specs: tuple[Option, ...]


def new_rollout_page(specs: Sequence[SpecSummary], form: RolloutForm) -> NewRolloutPage:
    """The form with every spec to choose from (``form.spec_id`` selected, or the first)."""
    chosen = form.spec_id or (specs[0].spec_id if specs else "")
    options = tuple(
        Option(
            s.spec_id, f"{s.spec_id}, revision {s.latest_revision}: {s.title}", s.spec_id == chosen
        )
        for s in specs
    )
    if form.spec_id and not any(o.selected for o in options):
        options += (Option(form.spec_id, f"unknown spec {form.spec_id}", True),)
    return NewRolloutPage(form=form, specs=options)


# --------------------------------------------------------------------------- /rollouts/{id}


@dataclass(frozen=True, slots=True)
class CountCell:
    state: str
    label: str
    count: int


@dataclass(frozen=True, slots=True)
class RateBar:
    """A wave's failure rate drawn against its gate (SVG user units; ``gate_x`` None: the wave
    has no gate that a rate can show)."""

    rate: float
    percent: str
    gate: float | None
    gate_percent: str
    breached: bool
    fill_width: float
    gate_x: float | None
    width: int = BAR_WIDTH
    height: int = BAR_HEIGHT


@dataclass(frozen=True, slots=True)
class WaveView:
    index: int
    number: int
    label: str
    size: int
    hosts: int
    failed: int
    counts: tuple[CountCell, ...]
    bar: RateBar
    current: bool


@dataclass(frozen=True, slots=True)
class HostView:
    agent_id: str
    hostname: str
    agent_url: str
    wave_number: int
    state: str
    run_id: str
    run_url: str
    error: str
    revert_state: str
    revert_run_url: str


@dataclass(frozen=True, slots=True)
class TransitionView:
    from_state: str
    to_state: str
    by: str
    reason: str
    at_iso: str
    at_display: str


@dataclass(frozen=True, slots=True)
class RolloutPage:
    id: str
    url: str
    api_url: str
    state: str
    state_class: str
    terminal: bool
    reason: str
    spec_id: str
    spec_revision: int
    spec_url: str
    selector: tuple[str, ...]
    waves_text: str
    gates_text: str
    max_failure_rate: str  # data attributes for rollout.js ("" for no such gate)
    max_failures: str
    soak: str
    wave_timeout: str
    wave_text: str
    hosts_done: int
    hosts_total: int
    not_started: int
    migrated: int
    created_by: str
    created_iso: str
    created_display: str
    created_relative: str
    next_wave_display: str
    override_wave: int
    waves: tuple[WaveView, ...]
    hosts: tuple[HostView, ...]
    hosts_shown_all: bool
    transitions: tuple[TransitionView, ...]
    transitions_json: str  # state -> the states it may go to (rollouts_service.can_change)
    can: frozenset[str]  # the states this rollout may go to now
    no_actions: bool  # no button applies (only the scheduler moves it, if anything)
    error: str  # why the last change asked for was refused


def gate_rate(gates: RolloutGates, hosts: int) -> float | None:
    """The failure rate beyond which a wave of ``hosts`` halts (the lower of the two gates; a
    host count as a rate of the wave), None without a gate."""
    rates = []
    if gates.max_failure_rate is not None:
        rates.append(gates.max_failure_rate)
    if gates.max_failures is not None and hosts > 0:
        rates.append(min(gates.max_failures / hosts, 1.0))
    return min(rates) if rates else None


def rate_bar(wave: WaveCounts, gates: RolloutGates) -> RateBar:
    rate = wave.failure_rate
    gate = gate_rate(gates, wave.hosts)
    return RateBar(
        rate=round(rate, 4),
        percent=percent_text(rate),
        gate=None if gate is None else round(gate, 4),
        gate_percent="" if gate is None else percent_text(gate),
        breached=gates.breached(wave.failed, wave.hosts),
        fill_width=round(BAR_WIDTH * rate, 2),
        gate_x=None if gate is None else round(BAR_WIDTH * gate, 2),
    )


def wave_view(wave: WaveCounts, rollout: RolloutSummary) -> WaveView:
    return WaveView(
        index=wave.index,
        number=wave.index + 1,
        label=wave.label,
        size=wave.size,
        hosts=wave.hosts,
        failed=wave.failed,
        counts=tuple(
            CountCell(state.value, label, wave.counts.get(state, 0))
            for state, label in WAVE_COLUMNS
        ),
        bar=rate_bar(wave, rollout.gates),
        current=wave.index == rollout.current_wave and rollout.state not in TERMINAL_ROLLOUT_STATES,
    )


def host_view(h: RolloutHost) -> HostView:
    return HostView(
        agent_id=h.agent_id,
        hostname=h.hostname or h.agent_id,
        agent_url=agent_url(h.agent_id),
        wave_number=h.wave + 1,
        state=h.state.value,
        run_id=h.run_id,
        run_url=run_url(h.run_id) if h.run_id else "",
        error=h.error,
        revert_state=h.revert_state.value,
        revert_run_url=run_url(h.revert_run_id) if h.revert_run_id else "",
    )


def transition_view(t: RolloutTransition) -> TransitionView:
    return TransitionView(
        from_state=t.from_state,
        to_state=t.to_state.value,
        by=t.by,
        reason=t.reason,
        at_iso=t.at.isoformat(),
        at_display=display_time(t.at),
    )


def allowed_moves() -> dict[str, list[str]]:
    """Every rollout state with the states it may go to (``rollouts_service.can_change``)."""
    return {
        old.value: [new.value for new in RolloutState if rollouts_service.can_change(old, new)]
        for old in RolloutState
    }


def rollout_page(detail: RolloutDetail, now: datetime, error: str = "") -> RolloutPage:
    r = detail.rollout
    waves = tuple(wave_view(w, r) for w in detail.waves)
    total = {state: sum(w.counts.get(state, 0) for w in detail.waves) for state in RolloutHostState}
    gates = r.gates
    can = frozenset(s.value for s in RolloutState if rollouts_service.can_change(r.state, s))
    return RolloutPage(
        id=r.id,
        url=rollout_url(r.id),
        api_url=f"/api/v1/rollouts/{quote(r.id, safe='')}",
        state=r.state.value,
        state_class=state_class(r.state),
        terminal=r.state in TERMINAL_ROLLOUT_STATES,
        reason=r.reason,
        spec_id=r.spec_id,
        spec_revision=r.spec_revision,
        spec_url=spec_url(r.spec_id, r.spec_revision),
        selector=r.selector,
        waves_text=", ".join(r.wave_labels),
        gates_text=gates_text(gates),
        max_failure_rate="" if gates.max_failure_rate is None else str(gates.max_failure_rate),
        max_failures="" if gates.max_failures is None else str(gates.max_failures),
        soak=format_duration(r.soak_seconds) if r.soak_seconds else "none",
        wave_timeout=format_duration(r.wave_timeout_seconds),
        wave_text=wave_text(r),
        hosts_done=r.hosts_done,
        hosts_total=r.hosts_total,
        not_started=sum(total[s] for s in NOT_STARTED),
        migrated=total[RolloutHostState.SUCCEEDED],
        created_by=r.created_by,
        created_iso=r.created_at.isoformat(),
        created_display=display_time(r.created_at),
        created_relative=relative_time(r.created_at, now),
        next_wave_display=display_time(r.next_wave_at) if r.next_wave_at else "",
        override_wave=r.override_wave,
        waves=waves,
        hosts=tuple(host_view(h) for h in detail.hosts),
        hosts_shown_all=len(detail.hosts) >= r.hosts_total,
        transitions=tuple(transition_view(t) for t in detail.transitions),
        transitions_json=json.dumps(allowed_moves(), separators=(",", ":")),
        can=can,
        no_actions=not can & BUTTON_STATES,
        error=error,
    )
