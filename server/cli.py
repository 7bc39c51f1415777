"""``flagpost-server``: serve, manage the schema, create enrollment tokens.

    flagpost-server --version
    flagpost-server [--config FILE] [--debug] COMMAND ...
    flagpost-server [--config FILE] serve [--database-url URL] [--grpc-port N] [--web-port N]
                                          [--state-dir DIR] [--auto-upgrade]
    flagpost-server [--config FILE] db upgrade | db downgrade REV | db current
    flagpost-server [--config FILE] token create [--uses N] [--expires 24h|30m|7d|never]
    flagpost-server [--config FILE] token list | token revoke PREFIX|ID
    flagpost-server [--config FILE] agent list | agent revoke AGENT_ID|--select EXPR
    flagpost-server [--config FILE] agent rotate AGENT_ID
    flagpost-server [--config FILE] user create NAME --role admin|viewer [--password-file FILE]
    flagpost-server [--config FILE] user list | user delete NAME
    flagpost-server [--config FILE] prune [--database-url URL]
    flagpost-server [--config FILE] webhook add URL --events LIST [--format json|slack]
                                            [--secret S] | list | remove ID | deliveries ID
    flagpost-server tls selfsigned --out DIR [--host HOST]... [--days N]

Flags override the config file and ``FLAGPOST_*`` environment (``load_config(overrides=…)``).
Exit codes: 0 ok, 1 error, 2 usage error or database schema out of date.

Errors a person can fix (a port in use, an unreachable database, an unwritable state directory,
an out-of-date schema) are FlagpostErrors raised where they happen; :func:`main` is the one place
that prints them, as one line, without a traceback. ``--debug`` (or ``log_level = "DEBUG"``,
``FLAGPOST_LOG_LEVEL=DEBUG``) logs at DEBUG and prints the traceback too, for bug reports.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import importlib.metadata
import logging
import os
import re
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.config import ServerConfig, load_config
from server.errors import ConfigError, FlagpostError, SchemaOutOfDate
from server.logging import setup_logging
from server.migration_cli import add_migration_commands, migration_command
from server.rollout_cli import add_rollout_commands, rollout_command
from server.targets_cli import (
    add_list_select,
    add_target_commands,
    revoke_selected,
    targets_command,
)
from server.user_cli import add_user_commands, user_command
from server.webhook_cli import add_webhook_commands, webhook_command

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

log = logging.getLogger("server.cli")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # also: schema out of date (the operator must act before starting)

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta | None:
    """``30m``, ``24h``, ``7d``, ``90s`` -> timedelta; ``never`` -> None."""
    if text.strip().lower() == "never":
        return None
    match = _DURATION.match(text.lower())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use e.g. 30m, 24h, 7d or never"
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be 0..65535 (0 = any free port)")
    return value


def version() -> str:
    """The installed version of the ``flagpost`` distribution."""
    try:
        return importlib.metadata.version("flagpost")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _default(name: str) -> Any:
    """The built-in default of the ServerConfig field ``name`` (what applies when neither the
    config file, the environment nor a flag sets it)."""
    return next(f.default for f in dataclasses.fields(ServerConfig) if f.name == name)


def _setting(name: str) -> str:
    """Help suffix naming the config key and environment variable behind a flag."""
    return f"config {name}, env FLAGPOST_{name.upper()}; default: {_default(name)}"


class _Commands:
    """Adds subcommands whose ``--help`` starts with what they do (the ``help`` text)."""

    def __init__(self, subparsers: Any) -> None:
        self._subparsers = subparsers

    def add(self, name: str, text: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._subparsers.add_parser(
            name, help=text, description=text[0].upper() + text[1:] + ".", **kwargs
        )
        parser.add_argument(  # also accepted after the subcommand
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="flagpost-server", description="Flagpost server: gRPC check-ins and the History."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML config file (env FLAGPOST_CONFIG; default: none, built-in defaults)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="log at DEBUG and print tracebacks with errors (same as FLAGPOST_LOG_LEVEL=DEBUG)",
    )
    commands = _Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))

    db_url = argparse.ArgumentParser(add_help=False)
    db_url.add_argument(
        "--database-url", metavar="URL", help=f"database to use ({_setting('database_url')})"
    )

    serve = commands.add(
        "serve", "run the gRPC and web servers until SIGTERM or Ctrl-C", parents=[db_url]
    )
    serve.add_argument(
        "--grpc-port",
        type=_port,
        metavar="N",
        help=f"port agents check in on, on grpc_host; 0 = any free port ({_setting('grpc_port')})",
    )
    serve.add_argument(
        "--web-port",
        type=_port,
        metavar="N",
        help=f"port of the web pages and API, on web_host; 0 = any free port "
        f"({_setting('web_port')})",
    )
    serve.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help=f"directory for the signing and input keys; relative to the current directory "
        f"({_setting('state_dir')})",
    )
    serve.add_argument(
        "--auto-upgrade",
        action="store_true",
        default=None,
        help="migrate the schema at start instead of refusing to start "
        f"({_setting('auto_upgrade')})",
    )

    db = commands.add("db", "manage the database schema (alembic migrations)")
    db_commands = _Commands(
        db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    )
    db_commands.add("upgrade", "migrate the database to the newest schema", parents=[db_url])
    downgrade = db_commands.add(
        "downgrade", "migrate the database down to an older revision", parents=[db_url]
    )
    downgrade.add_argument("revision", help='target revision ("base" empties the database)')
    db_commands.add(
        "current", "print the revision the database is at, and the newest one", parents=[db_url]
    )

    token = commands.add("token", "create, list and revoke enrollment tokens")
    token_commands = _Commands(
        token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    )
    create = token_commands.add(
        "create",
        "create an enrollment token and print it (shown once); agents enroll with "
        "`flagpost-agent enroll --token TOKEN`",
        parents=[db_url],
    )
    create.add_argument(
        "--uses",
        type=_positive_int,
        default=1,
        metavar="N",
        help="enrollments allowed (default: 1)",
    )
    create.add_argument(
        "--expires",
        type=parse_duration,
        default=timedelta(hours=24),
        metavar="DURATION",
        help="lifetime: 30m, 24h, 7d or never (default: 24h)",
    )
    token_commands.add(
        "list", "list tokens: prefix, dates, uses left, state (no secrets)", parents=[db_url]
    )
    token_revoke = token_commands.add(
        "revoke", "revoke a token: it can never enroll again", parents=[db_url]
    )
    token_revoke.add_argument("token", metavar="PREFIX|ID", help="as shown by `token list`")

    agent = commands.add("agent", "list, select, tag, revoke and rotate enrolled agents")
    agent_commands = _Commands(
        agent.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    )
    add_list_select(agent_commands.add("list", "list agents and their health", parents=[db_url]))
    revoke = agent_commands.add(
        "revoke", "revoke an agent: its check-ins are refused from now on", parents=[db_url]
    )
    revoke.add_argument("agent_id", nargs="?", metavar="AGENT_ID", help="as shown by `agent list`")
    add_list_select(revoke, "revoke every agent the selector picks (instead of AGENT_ID)")
    rotate = agent_commands.add(
        "rotate",
        "give the agent a new credential at its next check-in (the old one stops working "
        "once the new one is used)",
        parents=[db_url],
    )
    rotate.add_argument("agent_id", metavar="AGENT_ID", help="as shown by `agent list`")
    add_target_commands(agent_commands.add, db_url)

    add_user_commands(commands.add, db_url)
    add_migration_commands(commands.add, db_url)
    add_rollout_commands(commands.add, db_url)
    add_webhook_commands(commands.add, db_url)

    commands.add(
        "prune",
        "delete events, runs and logs beyond the retention limits (progress on stderr)",
        parents=[db_url],
    )
    tls = commands.add("tls", "make TLS certificates for development")
    tls_commands = _Commands(
        tls.add_subparsers(dest="tls_command", required=True, metavar="ACTION")
    )
    selfsigned = tls_commands.add(
        "selfsigned",
        "write a development CA, a server certificate and an agent client certificate",
    )
    selfsigned.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="directory to write into (required)"
    )
    selfsigned.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="HOST",
        help="IP address or DNS name the server certificate is valid for (repeat; "
        "default: 127.0.0.1 and localhost)",
    )
    selfsigned.add_argument(
        "--days",
        type=_positive_int,
        default=365,
        metavar="N",
        help="validity in days (default: 365)",
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "log_level": "DEBUG" if args.debug else None,
        "database_url": getattr(args, "database_url", None),
        "grpc_port": getattr(args, "grpc_port", None),
        "web_port": getattr(args, "web_port", None),
        "state_dir": getattr(args, "state_dir", None),
        "auto_upgrade": getattr(args, "auto_upgrade", None),
    }


def _fail(exc: FlagpostError, code: int, debug: bool) -> int:
    """Print ``exc`` as one line (after its traceback when ``debug``); return ``code``."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"flagpost-server: {exc.message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``flagpost-server``; returns the exit code. The one place that turns
    errors into messages: every FlagpostError is one line on stderr, exit 1 (2 for a bad
    configuration or an out-of-date schema); ``--debug`` adds the traceback."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, overrides=_overrides(args))
    except ConfigError as exc:
        return _fail(exc, EXIT_USAGE, args.debug)
    setup_logging(config)
    debug = config.log_level.upper() == "DEBUG"
    try:
        if args.command == "serve":
            return asyncio.run(_serve(config))
        if args.command == "db":
            return _db(config, args)
        if args.command == "agent":
            return asyncio.run(_agent(config, args))
        if args.command == "user":
            return asyncio.run(user_command(config, args))
        if args.command == "migration":
            return asyncio.run(migration_command(config, args))
        if args.command == "rollout":
            return asyncio.run(_with_database(config, args, rollout_command))
        if args.command == "webhook":
            return asyncio.run(_with_database(config, args, webhook_command))
        if args.command == "prune":
            return asyncio.run(_prune(config))
        if args.command == "tls":
            return _tls_selfsigned(args.out, args.hosts, args.days)
        if args.token_command in ("list", "revoke"):
            return asyncio.run(_token_manage(config, args))
        return asyncio.run(_token_create(config, args.uses, args.expires))
    except SchemaOutOfDate as exc:
        return _fail(exc, EXIT_USAGE, debug)
    except FlagpostError as exc:
        return _fail(exc, EXIT_ERROR, debug)
    except KeyboardInterrupt:
        return 130


def _db(config: ServerConfig, args: argparse.Namespace) -> int:
    from server.storage.db import translate_connect_errors

    with translate_connect_errors(config.database_url):
        return _db_command(config, args)


def _db_command(config: ServerConfig, args: argparse.Namespace) -> int:
    from server.storage import schema

    if args.db_command == "upgrade":
        schema.upgrade(config.database_url)
        print(f"database at revision {schema.current_revision(config.database_url)}")
    elif args.db_command == "downgrade":
        schema.downgrade(config.database_url, args.revision)
        print(f"database at revision {schema.current_revision(config.database_url) or 'base'}")
    else:
        current = schema.current_revision(config.database_url)
        head = schema.head_revision()
        state = "up to date" if current == head else "run `flagpost-server db upgrade`"
        print(f"{current or 'base'} (head: {head}; {state})")
    return EXIT_OK


async def _token_create(config: ServerConfig, uses: int, expires: timedelta | None) -> int:
    from server.services import enrollment
    from server.storage import schema
    from server.storage.db import create_engine, make_sessionmaker

    engine = create_engine(config)
    try:
        await schema.assert_schema_current(engine)
        token = await enrollment.create_token(make_sessionmaker(engine), uses, expires)
    finally:
        await engine.dispose()
    print(token)
    return EXIT_OK


async def _token_manage(config: ServerConfig, args: argparse.Namespace) -> int:
    from server.services import enrollment
    from server.storage import schema
    from server.storage.db import create_engine, make_sessionmaker

    engine = create_engine(config)
    try:
        await schema.assert_schema_current(engine)
        sessions = make_sessionmaker(engine)
        if args.token_command == "revoke":  # noqa: S105 - a subcommand name
            count = await enrollment.revoke_token(sessions, args.token)
            print(f"revoked {count} enrollment token{'s' if count != 1 else ''} ({args.token})")
            return EXIT_OK
        tokens = await enrollment.list_tokens(sessions)
    finally:
        await engine.dispose()
    print(f"{'ID':>6}  {'PREFIX':12}  {'CREATED':19}  {'EXPIRES':19}  {'USES LEFT':>9}  STATE")
    for t in tokens:
        expires = t.expires_at.strftime("%Y-%m-%d %H:%M:%S") if t.expires_at else "never"
        created = t.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{t.id:>6}  {t.prefix:12}  {created:19}  {expires:19}  {t.uses_left:>9}  "
            f"{t.state.value}"
        )
    return EXIT_OK


def _tls_selfsigned(out: Path, hosts: list[str] | None, days: int) -> int:
    from server.tls import DEFAULT_HOSTS, write_selfsigned

    files = write_selfsigned(out, hosts or DEFAULT_HOSTS, days)
    print(f"CA certificate:      {files.ca_cert}  (agents: ca_file)")
    print(f"CA key:              {files.ca_key}  (keep offline)")
    print(f"server certificate:  {files.server_cert}  (server: tls_cert_file)")
    print(f"server key:          {files.server_key}  (server: tls_key_file)")
    print(f"agent certificate:   {files.agent_cert}  (agents: client_cert_file, mutual TLS)")
    print(f"agent key:           {files.agent_key}  (agents: client_key_file)")
    print(f"server fingerprint:  sha256:{files.server_fingerprint}  (agents: server_fingerprint)")
    return EXIT_OK


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a long-running server: everything allocated at
    start-up moves to the permanent generation, and the young generation is collected every
    50,000 allocations instead of 700 (ingest allocates many short-lived, acyclic objects; the
    default threshold spent ~7% of the loop's time in the collector under load)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


GIL_SWITCH_INTERVAL_S = 0.0005


def tune_gil() -> None:
    """Hand the GIL over every 0.5 ms instead of 5 ms. The SQLite writer thread releases the
    GIL inside every statement and commit and must win it back from the busy event loop each
    time; with the default interval it waited up to 5 ms per statement (the "convoy effect"),
    stalling group commit. Measured with ``tests.bench.logs``: ~40-49k -> ~53-70k log lines/s;
    event ingest unchanged within noise (BENCHMARKS.md)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


async def _with_database(
    config: ServerConfig,
    args: argparse.Namespace,
    command: Callable[
        [ServerConfig, async_sessionmaker[AsyncSession], argparse.Namespace], Awaitable[int]
    ],
) -> int:
    """Run ``command`` on the configured database (refused when its schema is behind)."""
    from server.storage import schema
    from server.storage.db import create_engine, make_sessionmaker

    engine = create_engine(config)
    try:
        await schema.assert_schema_current(engine)
        return await command(config, make_sessionmaker(engine), args)
    finally:
        await engine.dispose()


async def _agent(config: ServerConfig, args: argparse.Namespace) -> int:
    from server.services import agents as agent_service
    from server.storage import schema
    from server.storage.db import create_engine, make_sessionmaker

    engine = create_engine(config)
    try:
        await schema.assert_schema_current(engine)
        sessions = make_sessionmaker(engine)
        if args.agent_command == "revoke" and (args.select is not None or not args.agent_id):
            return await revoke_selected(config, sessions, args)
        if args.agent_command == "revoke":
            await agent_service.revoke(sessions, args.agent_id)
            print(f"revoked {args.agent_id} (servers refuse it within a few seconds)")
            return EXIT_OK
        if args.agent_command == "rotate":
            await agent_service.request_rotation(sessions, args.agent_id)
            print(f"rotation requested for {args.agent_id}: new credential at its next check-in")
            return EXIT_OK
        if args.agent_command in ("select", "tag"):
            return await targets_command(config, sessions, args)
        agents = await agent_service.list_agents(sessions, config, args.select)
    finally:
        await engine.dispose()
    print(f"{'ID':36}  {'HOSTNAME':24}  {'HEALTH':8}  {'LAST CHECK-IN':20}  {'TAGS':24}  REVOKED")
    for a in agents:
        last = a.last_checkin_at.strftime("%Y-%m-%d %H:%M:%S") if a.last_checkin_at else "-"
        tags = ",".join(a.tags) or "-"
        print(
            f"{a.id:36}  {a.hostname[:24]:24}  {a.health.value:8}  {last:20}  {tags:24}  "
            f"{'yes' if a.revoked else 'no'}"
        )
    return EXIT_OK


def _progress_line(result: Any) -> str:
    return (
        f"\rpruning ({result.phase}): {result.events} events, {result.runs} runs, "
        f"{result.log_lines} log lines, {result.actions} actions, {result.answers} answers, "
        f"{result.sessions} sessions deleted"
    )


async def _prune(config: ServerConfig) -> int:
    from server.services.retention import PruneResult, prune
    from server.storage import schema
    from server.storage.db import create_engine, make_sessionmaker

    tty = sys.stderr.isatty()
    last = 0.0

    def progress(result: PruneResult) -> None:
        nonlocal last
        now = asyncio.get_running_loop().time()
        if result.phase == "done" or now - last >= (0.1 if tty else 1.0):
            last = now
            sys.stderr.write(_progress_line(result).ljust(100))
            sys.stderr.flush()

    engine = create_engine(config)
    try:
        await schema.assert_schema_current(engine)
        result = await prune(make_sessionmaker(engine), config, progress=progress)
    finally:
        await engine.dispose()
    sys.stderr.write("\n")
    print(
        f"pruned {result.events} events, {result.runs} runs, {result.log_lines} log lines, "
        f"{result.actions} actions, {result.answers} undeliverable answers, "
        f"{result.sessions} expired sessions"
    )
    return EXIT_OK


async def _serve(config: ServerConfig) -> int:
    from server.app import start_server
    from server.fdlimit import raise_soft_limit

    raise_soft_limit()  # before the first socket: the web's cap is derived from it
    running = await start_server(config)
    tune_gc()
    tune_gil()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():  # second signal: leave now
            os._exit(128 + signum)
        log.info("received %s: shutting down (again to exit at once)", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        print(f"grpc: {config.grpc_host}:{running.grpc_port}", flush=True)
        print(f"web: {running.web_url}/history", flush=True)
        if running.tls is not None:
            mutual = ", client certificates required" if running.tls.mutual else ""
            print(f"tls: server certificate sha256:{running.tls.fingerprint}{mutual}", flush=True)
        await stop.wait()
    finally:
        await running.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    log.info("stopped")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
