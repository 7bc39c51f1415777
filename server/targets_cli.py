"""``flagpost-server agent select|tag`` and ``agent list --select``: target selection from the
command line (``server.selectors`` for the syntax)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.errors import InvalidArgument

SELECT_HELP = (
    "selector expression, e.g. env=prod, 'role in (db,cache)', '!canary', 'host=web-*', "
    "id=ID,ID, health=online|offline|any (default online); repeat: all must hold"
)


def add_target_commands(
    add: Callable[..., argparse.ArgumentParser], db_url: argparse.ArgumentParser
) -> None:
    """Add ``agent select`` and ``agent tag add|remove`` (``add``: the ``agent`` subcommand
    adder)."""
    select = add(
        "select", "print how many agents a selector picks, and their ids", parents=[db_url]
    )
    select.add_argument("expressions", nargs="+", metavar="EXPR", help=SELECT_HELP)
    select.add_argument("--json", action="store_true", help="print machine-readable JSON")
    tag = add("tag", "add or remove server-side tags on agents, in bulk")
    tag_commands = tag.add_subparsers(dest="tag_command", required=True, metavar="ACTION")
    for name, text in (("add", "add tags to"), ("remove", "remove tags from")):
        sub = tag_commands.add_parser(
            name,
            help=f"{text} the agents picked",
            description=f"{text[0].upper()}{text[1:]} the agents picked by --select or --agent.",
            parents=[db_url],
        )
        sub.add_argument("tags", nargs="+", metavar="TAG", help="NAME or NAME=VALUE")
        which = sub.add_mutually_exclusive_group(required=True)
        which.add_argument(
            "--select", action="append", dest="select", metavar="EXPR", help=SELECT_HELP
        )
        which.add_argument(
            "--agent",
            action="append",
            dest="agent_ids",
            metavar="ID",
            help="agent id (repeat; required unless --select)",
        )


def add_list_select(parser: argparse.ArgumentParser, purpose: str = "") -> None:
    """``agent list --select EXPR`` (and ``agent revoke --select EXPR``)."""
    parser.add_argument(
        "--select",
        action="append",
        dest="select",
        metavar="EXPR",
        help=f"{purpose}: {SELECT_HELP}" if purpose else SELECT_HELP,
    )


async def revoke_selected(
    config: ServerConfig, sessions: async_sessionmaker[AsyncSession], args: argparse.Namespace
) -> int:
    """``agent revoke --select EXPR``: revoke every agent the selector picks."""
    from server.services import agents, targets

    if args.agent_id and args.select is not None:
        raise InvalidArgument("give AGENT_ID or --select, not both", field="--select")
    if args.select is None:
        raise InvalidArgument("give an agent id or --select EXPR", field="AGENT_ID")
    where = targets.targets_of(args.select, None)
    outcome = await agents.revoke_agents(sessions, config, where)
    print(
        f"revoked {outcome.changed} of {outcome.matched} agents picked "
        "(servers refuse them within a few seconds)"
    )
    return 0


async def targets_command(
    config: ServerConfig, sessions: async_sessionmaker[AsyncSession], args: argparse.Namespace
) -> int:
    """Run ``agent select`` or ``agent tag add|remove``; returns the exit code."""
    from server.services import targets

    if args.agent_command == "select":
        selection = await targets.select_agents(sessions, config, args.expressions)
        if args.json:
            agents = [{"id": i, "hostname": h} for i, h in selection.agents]
            print(json.dumps({"count": selection.count, "agents": agents}, indent=2))
        else:
            print(f"{selection.count} agent{'s' if selection.count != 1 else ''}")
            for agent_id, hostname in selection.agents:
                print(f"{agent_id}  {hostname}")
        return 0
    adding = args.tag_command == "add"
    change = await targets.change_tags(
        sessions,
        config,
        add=args.tags if adding else (),
        remove=() if adding else args.tags,
        expressions=args.select,
        agent_ids=args.agent_ids,
    )
    verb = "tagged" if adding else "untagged"
    print(f"{verb} {change.changed} of {change.matched} agents picked ({' '.join(args.tags)})")
    return 0
