"""``flagpost-agent``: enroll | once | run | migrate [--dry-run] | status |
spec preview FILE | spec run FILE | spec revert RUN_ID.

Global options (before or after the subcommand): ``--root DIR``, ``--config FILE``,
``--server HOST:PORT``, ``--log-level LEVEL``, ``--debug``. Exit codes: 0 ok; 1 the operation
failed (check-in failed, migration failed, enrollment refused, state directory unusable); 2 usage
or configuration error.

:func:`main` is the one place that turns the errors a person can fix (configuration, enrollment,
an unusable state directory) into one line on stderr; ``--debug`` (or ``log_level = "DEBUG"``,
``FLAGPOST_AGENT_LOG_LEVEL=DEBUG``) prints the traceback too, for bug reports.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import AgentConfig, AgentConfigError, load_config
from agent.daemon import Agent
from agent.diagnose import DEFAULT_GRPC_PORT, ensure_state_dir
from agent.enroll import enroll
from agent.errors import AgentError
from agent.migrations.model import DetectionError, DiskView
from agent.migrations.plan import make_plan
from agent.migrations.registry import default_registry
from agent.specs.builtin import agent_config_migration, json_conf
from agent.sysinfo import host_facts
from agent.tls import ChannelSecurity

log = logging.getLogger("agent")


def version() -> str:
    """The installed version of the ``flagpost`` distribution (``agent.__version__`` when it
    is not installed, e.g. run from a copied tree)."""
    try:
        return importlib.metadata.version("flagpost")
    except importlib.metadata.PackageNotFoundError:
        return __version__


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    default = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--root",
        type=Path,
        default=default,
        metavar="DIR",
        help="directory every path hangs off (config root, env FLAGPOST_AGENT_ROOT; default: /)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        metavar="FILE",
        help="agent TOML (env FLAGPOST_AGENT_CONFIG; default: "
        "<root>/etc/flagpost-agent/agent.toml if it exists)",
    )
    parser.add_argument(
        "--server",
        default=default,
        metavar="HOST:PORT",
        help="the server's gRPC address, no http:// (config server, env FLAGPOST_AGENT_SERVER; "
        f"default: the address stored at enrollment; the server listens on port "
        f"{DEFAULT_GRPC_PORT} by default)",
    )
    parser.add_argument(
        "--log-level",
        default=default,
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING or ERROR (config log_level, env FLAGPOST_AGENT_LOG_LEVEL; "
        "default: INFO)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="log at DEBUG and print tracebacks with errors (same as --log-level DEBUG)",
    )


def _command(commands: Any, name: str, text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=text, description=text[0].upper() + text[1:] + "."
    )
    _global_options(parser, top=False)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="flagpost-agent", description="Flagpost agent: config migrations and check-ins."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    _global_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    enroll_cmd = _command(
        commands,
        "enroll",
        "enroll with a server using a token from `flagpost-server token create`; stores the "
        "agent's credential in the state directory",
    )
    token = enroll_cmd.add_mutually_exclusive_group(required=True)
    token.add_argument("--token", help="enrollment token (one of --token, --token-file)")
    token.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="file holding the enrollment token (one of --token, --token-file)",
    )
    _command(commands, "once", "recover, migrate, check in until the outbox is sent, exit")
    _command(commands, "run", "run as a daemon: migrate, check in every interval, run actions")
    migrate_cmd = _command(commands, "migrate", "run the config migrations locally, no server")
    migrate_cmd.add_argument(
        "--dry-run", action="store_true", help="print what would happen, change nothing"
    )
    status_cmd = _command(
        commands, "status", "show the outbox, quarantined events and the last check-in"
    )
    status_cmd.add_argument(
        "--json", action="store_true", help="machine-readable output (default: text)"
    )
    spec_cmd = _command(
        commands,
        "spec",
        "a migration spec (TOML, or JSON for a .json file) on this host, locally: preview, run, "
        "revert",
    )
    spec_actions = spec_cmd.add_subparsers(dest="spec_command", required=True, metavar="ACTION")
    preview_cmd = _command(
        spec_actions, "preview", "print the diffs and operations a run would do; change nothing"
    )
    preview_cmd.add_argument("file", type=Path, metavar="FILE", help="the spec")
    spec_run_cmd = _command(
        spec_actions,
        "run",
        "run the spec (backup, journal, rollback on failure); prints its run id",
    )
    spec_run_cmd.add_argument("file", type=Path, metavar="FILE", help="the spec")
    revert_cmd = _command(
        spec_actions,
        "revert",
        "restore the backup of a finished spec run, if its files are still what it wrote",
    )
    revert_cmd.add_argument("run_id", metavar="RUN_ID", help="the run id `spec run` printed")
    return parser


def _spec(config: AgentConfig, args: argparse.Namespace) -> int:
    """``spec preview|run|revert`` (agent/specs/local.py; imported only for these)."""
    from agent.specs import local
    from agent.specs.errors import SpecError

    if args.spec_command == "revert":
        code, lines = local.revert(config, args.run_id)
        for line in lines[:-1]:
            print(line)
        if code == 0:
            print(lines[-1])
        else:
            print(f"flagpost-agent: {lines[-1]}", file=sys.stderr)
        return code
    try:
        loaded = local.load_spec_file(args.file)
    except SpecError as exc:
        print(f"flagpost-agent: {args.file}: invalid spec:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return exc.exit_code
    if args.spec_command == "preview":
        for line in local.preview_lines(local.preview(config, loaded.spec)):
            print(line)
        return 0
    result = local.run(config, loaded)
    for line in local.run_lines(result):
        print(line)
    return 1 if result.failed else 0


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def _enroll(config: AgentConfig, args: argparse.Namespace) -> int:
    ensure_state_dir(config.state_dir)  # before the token is spent
    token = args.token
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            print(f"flagpost-agent: cannot read token file: {exc}", file=sys.stderr)
            return 2
    try:
        detected = agent_config_migration().detect(DiskView(config.root))
        version = detected.version or ""
    except DetectionError:
        version = ""
    facts = host_facts(
        config.root, config.state_dir, json_conf(config.root), version, config.labels
    )
    credentials = enroll(
        config.server,
        token,
        facts,
        config.credentials_path,
        config.rpc_timeout,
        ChannelSecurity.from_config(config),
    )
    print(f"enrolled: agent_id={credentials.agent_id} server={credentials.server}")
    return 0


def _dry_run(config: AgentConfig) -> int:
    failed = False
    for migration in default_registry():
        try:
            plan = make_plan(migration, DiskView(config.root))
        except DetectionError as exc:
            print(f"{migration.id}: detection failed: {exc.message}")
            failed = True
            continue
        detected = plan.detected
        if detected.version is None:
            print(f"{migration.id}: no config found under {config.root}; nothing to do")
            continue
        print(
            f"{migration.id}: detected version {detected.version} at {detected.path} "
            f"(current {migration.current_version})"
        )
        if not plan.needed:
            print("  no migration needed")
            continue
        if plan.inputs:
            names = ", ".join(spec.name for spec in plan.inputs)
            print(f"  needs input when run (asked for on the server's run page): {names}")
        print(f"  would back up into {config.backups_dir}/<run id>/:")
        for path in plan.touched():
            state = "exists" if path.exists() else "absent, deleted on rollback"
            print(f"    {path} ({state})")
        for planned in plan.steps:
            step = planned.step
            print(
                f"  step {step.name} ({step.from_version} -> {step.to_version}): {step.description}"
            )
            for op in planned.ops:
                print(f"    {op.describe()}")
        print(f"  then verify the result is version {migration.current_version}")
    print("dry run: nothing was changed")
    return 1 if failed else 0


def _migrate(config: AgentConfig) -> int:
    with Agent(config) as agent:
        agent.install_signal_handlers()
        agent.recover()
        results = agent.migrate()
    code = 0
    for result in results:
        for event in (result.detection, result.execution):
            if event is not None:
                print(f"{result.migration_id}: {event.message}")
                if event.error_message:
                    print(f"  {event.error_message}")
        if result.failed:
            code = 1
    return code


def _status(config: AgentConfig, as_json: bool) -> int:
    with Agent(config) as agent:
        status = agent.status()
    if as_json:
        print(json.dumps(status.to_json(), indent=2))
        return 0
    print(f"agent id:        {status.agent_id or '(not enrolled)'}")
    print(f"server:          {status.server or '-'}")
    print(f"config version:  {status.config_version or '-'}")
    print(f"outbox depth:    {status.outbox_depth}")
    print(f"last check-in:   {status.last_checkin_at or 'never'}")
    print(
        f"last error:      {status.last_error or '-'}"
        + (f" (at {status.last_error_at})" if status.last_error_at else "")
    )
    print(f"journal pending: {'yes' if status.journal_pending else 'no'}")
    runs = status.runs
    print(
        f"run reporting:   {runs['run_updates_pending']} run updates, "
        f"{runs['log_lines_pending']} log lines, {runs['action_acks_pending']} action acks "
        f"waiting; {runs['run_updates_quarantined'] + runs['log_lines_quarantined']} set aside"
    )
    print(f"quarantined:     {len(status.quarantined)}")
    for item in status.quarantined:
        print(f"  {item['event_id']} {item['summary']}: {item['reason']}")
    return 0


def _fail(exc: BaseException, code: int, debug: bool, prefix: str = "") -> int:
    """Print ``exc`` as one line (after its traceback when ``debug``); return ``code``."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"flagpost-agent: {prefix}{exc}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point of ``flagpost-agent``; returns the exit code. The one place that turns
    errors into messages (see the module docstring)."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    cli = {
        "root": getattr(args, "root", None),
        "server": getattr(args, "server", None),
        "log_level": "DEBUG" if debug else getattr(args, "log_level", None),
    }
    try:
        config = load_config(cli, env, getattr(args, "config", None))
    except AgentConfigError as exc:
        return _fail(exc, exc.exit_code, debug, "configuration error: ")
    _setup_logging(config.log_level)
    debug = config.log_level == "DEBUG"
    try:
        return _dispatch(config, args)
    except AgentError as exc:  # each class says its exit code (agent/errors.py)
        return _fail(exc, exc.exit_code, debug)


def _dispatch(config: AgentConfig, args: argparse.Namespace) -> int:
    if args.command == "enroll":
        return _enroll(config, args)
    if args.command == "migrate":
        return _dry_run(config) if args.dry_run else _migrate(config)
    if args.command == "status":
        return _status(config, args.json)
    if args.command == "spec":
        return _spec(config, args)
    with Agent(config) as agent:
        agent.install_signal_handlers()
        if args.command == "once":
            return agent.once()
        if agent.credentials() is None:
            print(
                f"flagpost-agent: not enrolled (no {config.credentials_path}); "
                "run flagpost-agent enroll first",
                file=sys.stderr,
            )
            return 2
        return agent.run()
