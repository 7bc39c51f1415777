"""``flagpost-server migration add|list|show|diff|preview|run|revert``: migration specs (see
``server.services.specs``). Every command takes ``--json`` for machine-readable output.

``preview --wait`` and ``run``/``revert --wait`` poll the database until the agents answer
(they pick the actions up at their next check-in; the server that delivers them needs to run).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.cli_commands import action_group
from server.domain import RunState
from server.errors import InvalidArgument

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from server.config import ServerConfig
    from server.domain import PendingAction, RunSummary, SpecDetail, VersionCount

POLL_SECONDS = 0.5
DEFAULT_TIMEOUT = 120.0


def add_migration_commands(
    add: Callable[..., argparse.ArgumentParser], db_url: argparse.ArgumentParser
) -> None:
    """Add the ``migration`` command to ``flagpost-server``."""
    sub = action_group(
        add, "migration", "upload migration specs, preview, run and revert them", db_url
    )

    add_cmd = sub("add", "upload a spec (TOML, or JSON when the name ends in .json)")
    add_cmd.add_argument("file", type=Path, metavar="FILE")
    sub("list", "list specs: latest revision and hosts per version")
    show = sub("show", "show a spec's source, revisions and hosts per version")
    show.add_argument("spec_id", metavar="ID")
    show.add_argument("--revision", type=int, metavar="N", help="revision (default: latest)")
    diff = sub("diff", "unified diff of two revisions' sources")
    diff.add_argument("spec_id", metavar="ID")
    diff.add_argument("old", type=int, metavar="REV1")
    diff.add_argument("new", type=int, metavar="REV2")
    for name, text in (
        ("preview", "ask agents to plan the spec and report the diffs (changes nothing)"),
        ("run", "ask an agent to run the spec"),
    ):
        parser = sub(name, text)
        parser.add_argument("spec_id", metavar="ID")
        parser.add_argument(
            "--agent",
            action="append",
            dest="agents",
            required=name == "preview",
            metavar="AGENT_ID",
            help="agent id (required"
            + ("; repeat for more)" if name == "preview" else " unless --select)"),
        )
        if name == "run":
            parser.add_argument(
                "--select",
                action="append",
                dest="select",
                metavar="EXPR",
                help="run on every agent the selector picks, instead of --agent (required "
                "unless --agent; repeat: all must hold; see `agent select`)",
            )
        parser.add_argument("--revision", type=int, metavar="N", help="default: latest")
        _wait_flags(parser)
    revert = sub("revert", "ask the run's agent to put the files of a succeeded spec run back")
    revert.add_argument("run_id", metavar="RUN_ID")
    _wait_flags(revert)


def _wait_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="wait for the agents' answers")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"with --wait: give up after S seconds, exit 1 (default: {DEFAULT_TIMEOUT:g})",
    )


def read_spec_file(path: Path) -> tuple[str, str]:
    """``(source, format)`` of a spec file; InvalidArgument naming the file otherwise."""
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}", field="FILE") from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"{path} is not UTF-8 text", field="FILE") from None
    return source, "json" if path.suffix.lower() == ".json" else "toml"


def cli_user() -> str:
    """Who asks from the command line: ``cli:<login>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _versions(versions: Sequence[VersionCount]) -> str:
    return ", ".join(f"{v.version or 'unknown/error'}: {v.agents}" for v in versions) or "none"


def _run_json(run: RunSummary | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {
        "run_id": run.id,
        "agent_id": run.agent_id,
        "state": run.state.value,
        "spec_revision": run.spec_revision,
        "reverts_run_id": run.reverts_run_id,
        "error_message": run.error_message,
    }


async def migration_command(config: ServerConfig, args: argparse.Namespace) -> int:
    """Run one ``migration`` action; returns the exit code."""
    from server.storage import schema
    from server.storage.db import create_engine, make_sessionmaker

    source = read_spec_file(args.file) if args.migration_command == "add" else None
    engine = create_engine(config)
    try:
        await schema.assert_schema_current(engine)
        return await _dispatch(config, make_sessionmaker(engine), args, source)
    finally:
        await engine.dispose()


async def _dispatch(
    config: ServerConfig,
    sessions: async_sessionmaker[AsyncSession],
    args: argparse.Namespace,
    source: tuple[str, str] | None,
) -> int:
    from server.services import specs

    command = args.migration_command
    if command == "add":
        assert source is not None
        spec_id, revision, created = await specs.add_spec(
            sessions, source[0], source[1], cli_user()
        )
        if args.json:
            _print_json({"spec_id": spec_id, "revision": revision, "created": created})
        else:
            print(f"{spec_id} revision {revision}" + ("" if created else " (unchanged)"))
        return 0
    if command == "list":
        return _list(await specs.list_specs(sessions), args.json)
    if command == "show":
        return _show(await specs.get_spec(sessions, args.spec_id, args.revision), args.json)
    if command == "diff":
        text = await specs.diff_revisions(sessions, args.spec_id, args.old, args.new)
        if args.json:
            _print_json({"spec_id": args.spec_id, "from": args.old, "to": args.new, "diff": text})
        else:
            sys.stdout.write(text or f"revisions {args.old} and {args.new} are the same\n")
        return 0
    if command == "preview":
        actions = await specs.request_preview(
            sessions, config, args.spec_id, args.agents, cli_user(), args.revision
        )
        return await _preview(sessions, actions, args)
    if command == "run" and args.select is not None:
        return await _run_selected(config, sessions, args)
    if command == "run":
        if not args.agents:
            raise InvalidArgument("is required (or --select EXPR)", field="--agent")
        if len(args.agents) != 1:
            raise InvalidArgument("takes exactly one agent", field="--agent")
        action = await specs.request_run(
            sessions, config, args.spec_id, args.agents[0], cli_user(), args.revision
        )
        return await _follow_run(sessions, action, args)
    action = await specs.request_revert(sessions, config, args.run_id, cli_user())
    return await _follow_run(sessions, action, args)


async def _run_selected(
    config: ServerConfig, sessions: async_sessionmaker[AsyncSession], args: argparse.Namespace
) -> int:
    """``migration run ID --select EXPR``: one run_migration action per agent picked."""
    from server.services import specs, targets

    if args.agents:
        raise InvalidArgument("give --agent or --select, not both", field="--select")
    if args.wait:
        raise InvalidArgument(
            "waits for one --agent only; follow runs started with --select on the Runs page",
            field="--wait",
        )
    where = targets.targets_of(args.select, None, targets.MAX_BULK_AGENTS)
    outcome = await specs.request_runs(
        sessions, config, args.spec_id, where, cli_user(), args.revision
    )
    if args.json:
        _print_json({"matched": outcome.matched, "changed": outcome.changed})
    else:
        print(f"queued {args.spec_id} on {outcome.changed} of {outcome.matched} agents picked")
    return 0


def _list(summaries: Sequence[Any], as_json: bool) -> int:
    if as_json:
        _print_json(
            [
                {
                    "spec_id": s.spec_id,
                    "revision": s.latest_revision,
                    "title": s.title,
                    "target": s.target,
                    "agents": s.agents,
                    "versions": {v.version: v.agents for v in s.versions},
                }
                for s in summaries
            ]
        )
        return 0
    if not summaries:
        print("no migration specs (upload one: flagpost-server migration add FILE)")
        return 0
    print(f"{'ID':24}  {'REV':>3}  {'TARGET':8}  HOSTS PER VERSION  TITLE")
    for s in summaries:
        print(
            f"{s.spec_id:24}  {s.latest_revision:>3}  {s.target:8}  {_versions(s.versions)}"
            f"  {s.title}"
        )
    return 0


def _show(detail: SpecDetail, as_json: bool) -> int:
    spec = detail.spec
    if as_json:
        _print_json(
            {
                "spec_id": spec.spec_id,
                "revision": spec.revision,
                "title": spec.title,
                "target": spec.target,
                "source_format": spec.source_format.value,
                "source": spec.source,
                "sha256": spec.sha256,
                "revisions": [
                    {"revision": r.revision, "created_at": r.created_at, "created_by": r.created_by}
                    for r in detail.revisions
                ],
                "versions": {v.version: v.agents for v in detail.versions},
                "agents": [
                    {
                        "agent_id": a.agent_id,
                        "hostname": a.hostname,
                        "revision": a.revision,
                        "version": a.version,
                        "error": a.error,
                    }
                    for a in detail.agents
                ],
            }
        )
        return 0
    print(f"{spec.spec_id} revision {spec.revision}: {spec.title} (target {spec.target})")
    width = len(str(spec.source.count("\n") + 1))
    for number, line in enumerate(spec.source.splitlines(), start=1):
        print(f"{number:>{width}}  {line}")
    print("revisions:")
    for r in detail.revisions:
        print(f"  {r.revision:>3}  {r.created_at:%Y-%m-%d %H:%M:%S}  {r.created_by}")
    print(f"hosts per version: {_versions(detail.versions)}")
    for a in detail.agents:
        state = f"error: {a.error}" if a.error else a.version or "unknown"
        print(f"  {a.hostname:24}  {a.agent_id}  revision {a.revision}  {state}")
    return 0


async def _preview(
    sessions: async_sessionmaker[AsyncSession],
    actions: Sequence[PendingAction],
    args: argparse.Namespace,
) -> int:
    from server.services import specs

    if not args.json:
        for a in actions:
            print(f"preview {a.action_id} for agent {a.agent_id}", flush=True)
    if not args.wait:
        if args.json:
            _print_json([{"agent_id": a.agent_id, "action_id": a.action_id} for a in actions])
        return 0
    deadline = time.monotonic() + args.timeout
    results: dict[str, Any] = {}
    while True:
        for a in actions:
            if a.action_id not in results:
                answer = await specs.get_preview(sessions, a.action_id)
                if not answer.pending:
                    results[a.action_id] = answer
        if len(results) == len(actions) or time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL_SECONDS)
    missing = [a.agent_id for a in actions if a.action_id not in results]
    if args.json:
        _print_json(
            {
                "previews": [
                    {
                        "agent_id": r.agent_id,
                        "action_id": r.action_id,
                        "status": r.status,
                        "from": r.migration_from,
                        "to": r.migration_to,
                        "error_message": r.error_message,
                        "diffs": [d.to_json() for d in r.diffs],
                    }
                    for r in results.values()
                ],
                "no_answer": missing,
            }
        )
    else:
        for r in results.values():
            print(f"agent {r.agent_id}: {r.status} ({r.migration_from} -> {r.migration_to})")
            if r.error_message:
                print(f"  {r.error_message}")
            for d in r.diffs:
                print(f"== {d.path}" + (f" ({d.note})" if d.note else ""))
                for op in d.operations:
                    print(f"  - {op}")
                sys.stdout.write(d.diff if d.diff.endswith("\n") or not d.diff else d.diff + "\n")
    if missing:
        print(
            f"flagpost-server: no answer within {args.timeout:g} s from: {', '.join(missing)} "
            "(is the server running and the agent checking in?)",
            file=sys.stderr,
        )
        return 1
    return 0


async def _follow_run(
    sessions: async_sessionmaker[AsyncSession], action: PendingAction, args: argparse.Namespace
) -> int:
    """Print the action id, then (``--wait``) the run once reported and its final state."""
    from server.services import specs

    if not args.json:
        print(f"action {action.action_id} for agent {action.agent_id}", flush=True)
    deadline = time.monotonic() + args.timeout
    run = await specs.run_for_action(sessions, action.action_id)
    announced = False
    skipped = False
    while args.wait and (run is None or not run.terminal) and time.monotonic() < deadline:
        if run is not None and not announced and not args.json:
            print(f"run {run.id}", flush=True)
            announced = True
        if run is None and await specs.not_needed(sessions, action):
            skipped = True  # already at the target: the agent reports no run
            break
        await asyncio.sleep(POLL_SECONDS)
        run = await specs.run_for_action(sessions, action.action_id)
    if skipped:
        if args.json:
            _print_json(
                {
                    "action_id": action.action_id,
                    "agent_id": action.agent_id,
                    "run": None,
                    "outcome": "not_needed",
                }
            )
        else:
            print("not_needed")
        return 0
    if args.json:
        _print_json(
            {"action_id": action.action_id, "agent_id": action.agent_id, "run": _run_json(run)}
        )
    elif run is not None:
        if not announced:
            print(f"run {run.id}")
        if args.wait:
            print(f"{run.state.value}" + (f": {run.error_message}" if run.error_message else ""))
    if not args.wait:
        return 0
    if run is None or not run.terminal:
        print(
            f"flagpost-server: agent {action.agent_id} did not finish within {args.timeout:g} s "
            "(is the server running and the agent checking in?)",
            file=sys.stderr,
        )
        return 1
    return 0 if run.state == RunState.SUCCEEDED else 1
