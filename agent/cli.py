"""``flagpost-agent``: enroll | once | run | migrate [--dry-run] | status.

Global options (before or after the subcommand): ``--root DIR``, ``--config FILE``,
``--server HOST:PORT``, ``--log-level LEVEL``. Exit codes: 0 ok; 1 the operation failed (check-in
failed, migration failed, enrollment refused); 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent import __version__
from agent.config import AgentConfig, AgentConfigError, load_config
from agent.daemon import Agent
from agent.enroll import EnrollmentError, enroll
from agent.migrations.chain import agent_config_migration, json_conf
from agent.migrations.model import DetectionError, DiskView
from agent.migrations.plan import make_plan
from agent.migrations.registry import default_registry
from agent.sysinfo import host_facts
from agent.tls import ChannelSecurity

log = logging.getLogger("agent")


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    default = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--root", type=Path, default=default, help="directory every path hangs off (default /)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        help="agent TOML (default <root>/etc/flagpost-agent/agent.toml)",
    )
    parser.add_argument("--server", default=default, help="server address HOST:PORT")
    parser.add_argument("--log-level", default=default, help="DEBUG, INFO, WARNING, ERROR")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="flagpost-agent", description="Flagpost agent: config migrations and check-ins."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    enroll_cmd = commands.add_parser("enroll", help="enroll with a server using a token")
    _global_options(enroll_cmd, top=False)
    token = enroll_cmd.add_mutually_exclusive_group(required=True)
    token.add_argument("--token", help="enrollment token")
    token.add_argument("--token-file", type=Path, help="file holding the enrollment token")
    for name, text in (
        ("once", "recover, migrate, check in once, exit"),
        ("run", "run as a daemon"),
    ):
        _global_options(commands.add_parser(name, help=text), top=False)
    migrate_cmd = commands.add_parser("migrate", help="run the config migrations locally")
    _global_options(migrate_cmd, top=False)
    migrate_cmd.add_argument(
        "--dry-run", action="store_true", help="print what would happen, change nothing"
    )
    status_cmd = commands.add_parser("status", help="outbox, quarantine, last check-in")
    _global_options(status_cmd, top=False)
    status_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def _enroll(config: AgentConfig, args: argparse.Namespace) -> int:
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
    facts = host_facts(config.root, config.state_dir, json_conf(config.root), version)
    try:
        credentials = enroll(
            config.server,
            token,
            facts,
            config.credentials_path,
            config.rpc_timeout,
            ChannelSecurity.from_config(config),
        )
    except EnrollmentError as exc:
        print(f"flagpost-agent: {exc}", file=sys.stderr)
        return 1
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


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point of ``flagpost-agent``; returns the exit code."""
    args = build_parser().parse_args(argv)
    cli = {
        "root": getattr(args, "root", None),
        "server": getattr(args, "server", None),
        "log_level": getattr(args, "log_level", None),
    }
    try:
        config = load_config(cli, env, getattr(args, "config", None))
    except AgentConfigError as exc:
        print(f"flagpost-agent: configuration error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(config.log_level)
    if args.command == "enroll":
        return _enroll(config, args)
    if args.command == "migrate":
        return _dry_run(config) if args.dry_run else _migrate(config)
    if args.command == "status":
        return _status(config, args.json)
    with Agent(config) as agent:
        agent.install_signal_handlers()
        if args.command == "once":
            return agent.once()
        try:
            enrolled = agent.credentials() is not None
        except EnrollmentError as exc:
            print(f"flagpost-agent: {exc}", file=sys.stderr)
            return 2
        if not enrolled:
            print(
                f"flagpost-agent: not enrolled (no {config.credentials_path}); "
                "run flagpost-agent enroll first",
                file=sys.stderr,
            )
            return 2
        return agent.run()
