"""``flagpost-server user create|list|delete|disable|enable``: web users (see
``server.services.users``).

The password is never an argument (shells keep history, ``ps`` shows argv): it comes from
``--password-file FILE`` (its first line), from standard input when that is not a terminal
(``printf '%s\\n' "$PW" | flagpost-server user create ...``), or is prompted for twice.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.errors import InvalidArgument

if TYPE_CHECKING:
    from server.config import ServerConfig


def add_user_commands(
    add: Callable[..., argparse.ArgumentParser], db_url: argparse.ArgumentParser
) -> None:
    """Add the ``user`` command to ``flagpost-server``; ``add(name, text, **kwargs)`` adds one
    subcommand whose help and description are ``text``."""
    user = add("user", "manage the web users who may log in")
    user_commands = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")

    def sub(name: str, text: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = user_commands.add_parser(
            name, help=text, description=text[0].upper() + text[1:] + ".", **kwargs
        )
        return parser

    create = sub(
        "create",
        "create a web user (password from --password-file, stdin, or a prompt)",
        parents=[db_url],
        allow_abbrev=False,  # "--password SECRET" must not pass for --password-file
    )
    create.add_argument("name", metavar="NAME", help="login name")
    create.add_argument(
        "--role",
        required=True,
        choices=["admin", "viewer"],
        help="admin: may also act (request and cancel runs, give input); viewer: read only "
        "(required)",
    )
    create.add_argument(
        "--password-file",
        type=Path,
        metavar="FILE",
        help="read the password from this file's first line (default: stdin if piped, "
        "else a prompt)",
    )
    sub("list", "list web users (no hashes)", parents=[db_url])
    delete = sub("delete", "delete a web user and end its sessions", parents=[db_url])
    delete.add_argument("name", metavar="NAME", help="login name")
    for action, text in (
        ("disable", "refuse a web user's logins and end its sessions (kept for the record)"),
        ("enable", "let a disabled web user log in again"),
    ):
        toggle = sub(action, text, parents=[db_url])
        toggle.add_argument("name", metavar="NAME", help="login name")


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def read_password(password_file: Path | None) -> str:
    """The new user's password: from ``password_file``, else piped stdin, else prompted twice."""
    if password_file is not None:
        try:
            return _first_line(password_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidArgument(
                f"cannot read {password_file}: {exc.strerror}", field="password-file"
            ) from None
    if not sys.stdin.isatty():
        return _first_line(sys.stdin.read())
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password (again): ") != first:
        raise InvalidArgument("the two passwords differ", field="password")
    return first


async def user_command(config: ServerConfig, args: argparse.Namespace) -> int:
    """Run ``user create|list|delete|disable|enable``; returns the exit code."""
    from server.services import users as users_service
    from server.storage import schema
    from server.storage.db import create_engine, make_sessionmaker

    password = read_password(args.password_file) if args.user_command == "create" else ""
    engine = create_engine(config)
    try:
        await schema.assert_schema_current(engine)
        sessions = make_sessionmaker(engine)
        if args.user_command == "create":
            user = await users_service.create_user(sessions, args.name, password, args.role)
            print(f"created {user.role.value} {user.name}")
            return 0
        if args.user_command == "delete":
            await users_service.delete_user(sessions, args.name)
            print(f"deleted {args.name} (its sessions ended)")
            return 0
        if args.user_command in ("disable", "enable"):
            disable = args.user_command == "disable"
            await users_service.set_disabled(sessions, args.name, disable)
            ended = " (its sessions ended)" if disable else ""
            print(f"{args.user_command}d {args.name}{ended}")
            return 0
        users = await users_service.list_users(sessions)
    finally:
        await engine.dispose()
    print(f"{'NAME':32}  {'ROLE':6}  {'CREATED':19}  DISABLED")
    for u in users:
        created = u.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{u.name:32}  {u.role.value:6}  {created:19}  {'yes' if u.disabled else 'no'}")
    return 0
