"""``flagpost-server rollout create|list|show|pause|resume|abort``: rollouts from the command
line (``server.services.rollouts``). The running server's scheduler picks every change up at
its next tick. ``show --json`` and ``list --json`` are machine-readable."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from server.cli_commands import action_group, naming_flags
from server.targets_cli import SELECT_HELP
from server.waves import format_duration, parse_duration, parse_rate, split_list

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from server.config import ServerConfig
    from server.domain import RolloutDetail, RolloutSummary


def add_rollout_commands(
    add: Callable[..., argparse.ArgumentParser], db_url: argparse.ArgumentParser
) -> None:
    """Add the ``rollout`` command to ``flagpost-server``."""
    sub = action_group(
        add, "rollout", "run a migration spec on many hosts in waves that halt themselves", db_url
    )

    create = sub("create", "start a rollout of a spec; prints its id")
    create.add_argument("spec_id", metavar="SPEC_ID")
    create.add_argument("--revision", type=int, metavar="N", help="spec revision (default: latest)")
    create.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="EXPR",
        help=SELECT_HELP + " (default: every online host)",
    )
    create.add_argument(
        "--waves",
        default="1,10%,100%",
        metavar="LIST",
        help="cumulative wave sizes, host counts or percentages, ending with 100%% "
        "(default: 1,10%%,100%%)",
    )
    create.add_argument(
        "--max-failure-rate",
        metavar="PCT",
        help="halt when more than PCT of a wave's hosts fail, e.g. 5%% (default: no rate gate)",
    )
    create.add_argument(
        "--max-failures",
        type=int,
        metavar="N",
        help="halt when more than N of a wave's hosts fail (default: 0 when neither gate is "
        "given: any failure halts)",
    )
    create.add_argument(
        "--soak",
        default="0",
        metavar="DURATION",
        help="wait after each wave, e.g. 10m (default: 0)",
    )
    create.add_argument(
        "--wave-timeout",
        default="30m",
        metavar="DURATION",
        help="a host not finished this long after its start counts as failed (default: 30m)",
    )
    lister = sub("list", "list rollouts, newest first")
    lister.add_argument("--limit", type=int, default=50, metavar="N", help="(default: 50)")
    show = sub("show", "show a rollout: state, and per wave its hosts by outcome")
    show.add_argument("rollout_id", metavar="ID")
    show.add_argument("--hosts", action="store_true", help="also list every host")
    pause = sub("pause", "pause a running rollout: no new host starts")
    pause.add_argument("rollout_id", metavar="ID")
    pause.add_argument("--reason", default="", metavar="TEXT", help="why (default: none)")
    resume = sub("resume", "resume a paused or halted rollout (halted: --reason required)")
    resume.add_argument("rollout_id", metavar="ID")
    resume.add_argument(
        "--reason",
        default="",
        metavar="TEXT",
        help="why, recorded (default: none; required when HALTED)",
    )
    abort = sub("abort", "stop a rollout for good")
    abort.add_argument("rollout_id", metavar="ID")
    abort.add_argument(
        "--revert",
        action="store_true",
        help="and revert every host it migrated from its backup, newest wave first",
    )
    abort.add_argument("--reason", default="", metavar="TEXT", help="why (default: none)")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _gates(r: RolloutSummary) -> str:
    parts = []
    if r.gates.max_failure_rate is not None:
        parts.append(f"failure rate <= {r.gates.max_failure_rate:.1%}")
    if r.gates.max_failures is not None:
        parts.append(f"failures <= {r.gates.max_failures}")
    return ", ".join(parts)


def _print_detail(d: RolloutDetail, with_hosts: bool) -> None:
    r = d.rollout
    print(f"rollout {r.id}: {r.state.value} ({r.reason})")
    print(
        f"spec {r.spec_id} revision {r.spec_revision}; {r.hosts_total} hosts "
        f"({' '.join(r.selector) or 'every online host'}); gates: {_gates(r)}; "
        f"soak {format_duration(r.soak_seconds)}, wave timeout "
        f"{format_duration(r.wave_timeout_seconds)}"
    )
    print(
        f"{'WAVE':>4}  {'SIZE':>6}  {'HOSTS':>5}  {'PENDING':>7}  {'RUNNING':>7}  "
        f"{'OK':>5}  {'FAILED':>6}  {'BLOCKED':>7}  {'NOT REACHED':>11}  RATE"
    )
    for w in d.waves:
        c = {state.value: n for state, n in w.counts.items()}
        marker = "*" if w.index == r.current_wave and r.state.value != "COMPLETED" else " "
        print(
            f"{w.index + 1:>3}{marker}  {w.label:>6}  {w.hosts:>5}  "
            f"{c['waiting'] + c['pending']:>7}  {c['running']:>7}  {c['succeeded']:>5}  "
            f"{c['failed']:>6}  {c['blocked']:>7}  {c['not_reached']:>11}  {w.failure_rate:.1%}"
        )
    if any(d.reverts.get(state, 0) for state in d.reverts if state.value):
        print("reverts: " + ", ".join(f"{s.value}: {n}" for s, n in d.reverts.items() if s.value))
    for t in d.transitions:
        print(
            f"  {t.at:%Y-%m-%d %H:%M:%S}  {t.from_state or '-':>9} -> "
            f"{t.to_state.value:9}  {t.by}: {t.reason}"
        )
    if with_hosts:
        for h in d.hosts:
            extra = f"  {h.error}" if h.error else ""
            print(f"  wave {h.wave + 1}  {h.hostname:24}  {h.agent_id}  {h.state.value}{extra}")


_FLAGS = {
    "waves": "--waves",
    "select": "--select",
    "reason": "--reason",
    "max_failure_rate": "--max-failure-rate",
    "max_failures": "--max-failures",
    "soak_seconds": "--soak",
    "wave_timeout_seconds": "--wave-timeout",
}


async def rollout_command(
    config: ServerConfig, sessions: async_sessionmaker[AsyncSession], args: argparse.Namespace
) -> int:
    """Run one ``rollout`` action; returns the exit code. A bad setting names its flag."""
    return await naming_flags(_FLAGS, _rollout_command(config, sessions, args))


async def _rollout_command(
    config: ServerConfig, sessions: async_sessionmaker[AsyncSession], args: argparse.Namespace
) -> int:
    from server.migration_cli import cli_user
    from server.services import rollouts
    from server.web.api.rollout_shapes import rollout_detail_json, rollout_json, rollout_list_json

    command = args.rollout_command
    if command == "create":
        created = await rollouts.create_rollout(
            sessions,
            config,
            args.spec_id,
            cli_user(),
            revision=args.revision,
            selector=args.select,
            waves=split_list(args.waves),
            max_failure_rate=(
                None
                if args.max_failure_rate is None
                else parse_rate(args.max_failure_rate, "--max-failure-rate")
            ),
            max_failures=args.max_failures,
            soak_seconds=parse_duration(args.soak, "--soak"),
            wave_timeout_seconds=parse_duration(args.wave_timeout, "--wave-timeout"),
        )
        if args.json:
            _print_json(rollout_json(created))
        else:
            print(created.id)
        return 0
    if command == "list":
        found = await rollouts.list_rollouts(sessions, args.limit)
        if args.json:
            _print_json(rollout_list_json(found))
            return 0
        if not found:
            print("no rollouts (start one: flagpost-server rollout create SPEC_ID)")
            return 0
        print(f"{'ID':36}  {'STATE':9}  {'SPEC':20}  {'WAVE':>5}  {'DONE':>9}  CREATED BY")
        for r in found:
            spec = f"{r.spec_id} r{r.spec_revision}"
            wave = f"{r.current_wave + 1}/{len(r.wave_sizes)}"
            done = f"{r.hosts_done}/{r.hosts_total}"
            print(
                f"{r.id:36}  {r.state.value:9}  {spec:20}  {wave:>5}  {done:>9}  "
                f"{r.created_by} {r.created_at:%Y-%m-%d %H:%M}"
            )
        return 0
    if command == "show":
        detail = await rollouts.get_rollout(sessions, args.rollout_id)
        if args.json:
            _print_json(rollout_detail_json(detail))
        else:
            _print_detail(detail, args.hosts)
        return 0
    if command == "pause":
        changed = await rollouts.pause(sessions, args.rollout_id, cli_user(), args.reason)
    elif command == "resume":
        changed = await rollouts.resume(sessions, args.rollout_id, cli_user(), args.reason)
    else:
        changed = await rollouts.abort(
            sessions, args.rollout_id, cli_user(), revert=args.revert, reason=args.reason
        )
    if args.json:
        _print_json(rollout_json(changed))
    else:
        print(f"rollout {changed.id}: {changed.state.value}")
    return 0
