"""What the ``flagpost-server`` command groups with actions (``migration``, ``rollout``,
``webhook``) share: the parser of each action, and bad settings named by their flags."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Mapping

from server.errors import InvalidArgument

ActionAdder = Callable[[str, str], argparse.ArgumentParser]


def action_group(
    add: Callable[..., argparse.ArgumentParser],
    name: str,
    text: str,
    db_url: argparse.ArgumentParser,
) -> ActionAdder:
    """The command ``name`` with actions; returns ``sub(action, text)``, which adds one with
    ``--database-url`` and ``--json``."""
    group = add(name, text)
    commands = group.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False, parents=[db_url])
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")

    def sub(action: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            action,
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            parents=[common],
        )
        return parser

    return sub


async def naming_flags(flags: Mapping[str, str], run: Awaitable[int]) -> int:
    """``run``'s exit code; an InvalidArgument about a service field in ``flags`` is raised
    again naming its command-line flag instead (``soak_seconds`` -> ``--soak``)."""
    try:
        return await run
    except InvalidArgument as exc:
        flag = flags.get(exc.field or "")
        if flag is None:
            raise
        raise InvalidArgument(exc.detail, field=flag) from None
