"""``flagpost-server webhook add|list|remove|deliveries``: webhooks from the command line
(``server.services.webhooks``). ``add`` prints the new webhook's id and its secret, once; the
secret is encrypted with ``<state_dir>/inputs.key``, so run it with the server's state
directory (``--state-dir`` or config ``state_dir``). The running server's dispatcher sends to
a new webhook from its next event on."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.cli_commands import action_group, naming_flags
from server.domain import WebhookEvent

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from server.config import ServerConfig

EVENTS = ",".join(e.value for e in WebhookEvent)


def add_webhook_commands(
    add: Callable[..., argparse.ArgumentParser], db_url: argparse.ArgumentParser
) -> None:
    """Add the ``webhook`` command to ``flagpost-server``."""
    sub = action_group(
        add, "webhook", "send rollout and run notifications to HTTP receivers (signed)", db_url
    )

    adder = sub("add", "add a webhook; prints its id and its signing secret (shown once)")
    adder.add_argument("url", metavar="URL", help="http:// or https:// URL to POST to")
    adder.add_argument(
        "--events",
        required=True,
        metavar="LIST",
        help=f"comma-separated events to send (required; of: {EVENTS})",
    )
    adder.add_argument(
        "--format",
        default="json",
        metavar="FORMAT",
        help='body: "json" (the full payload) or "slack" ({"text": ...}) (default: json)',
    )
    adder.add_argument(
        "--secret",
        metavar="S",
        help="signing secret of 16 to 256 characters (default: generated)",
    )
    adder.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="the server's state directory, whose inputs.key encrypts the secret "
        "(config state_dir; default: flagpost-state)",
    )
    sub("list", "list webhooks (never their secrets)")
    remove = sub("remove", "remove a webhook and its delivery log")
    remove.add_argument("webhook_id", metavar="ID")
    deliveries = sub("deliveries", "show a webhook's delivery log, newest first")
    deliveries.add_argument("webhook_id", metavar="ID")
    deliveries.add_argument("--limit", type=int, default=50, metavar="N", help="(default: 50)")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


_FLAGS = {
    "url": "URL",
    "events": "--events",
    "format": "--format",
    "secret": "--secret",
    "limit": "--limit",
}


async def webhook_command(
    config: ServerConfig, sessions: async_sessionmaker[AsyncSession], args: argparse.Namespace
) -> int:
    """Run one ``webhook`` action; returns the exit code. A bad setting names its flag."""
    return await naming_flags(_FLAGS, _webhook_command(config, sessions, args))


async def _webhook_command(
    config: ServerConfig, sessions: async_sessionmaker[AsyncSession], args: argparse.Namespace
) -> int:
    import asyncio

    from server.migration_cli import cli_user
    from server.services import webhooks
    from server.services.webhook_secrets import SecretBox
    from server.web.api.webhook_shapes import (
        delivery_list_json,
        webhook_created_json,
        webhook_list_json,
    )

    command = args.webhook_command
    if command == "add":
        from server.services.inputs import KEY_FILE

        key_existed = (config.state_dir / KEY_FILE).exists()
        box = await asyncio.to_thread(SecretBox.open, config)
        created, secret = await webhooks.add_webhook(
            sessions,
            box,
            args.url,
            args.events.split(","),
            cli_user(),
            fmt=args.format,
            secret=args.secret,
        )
        if not key_existed:
            print(
                f"note: created {config.state_dir / KEY_FILE}; the server must use this "
                "state directory (--state-dir) to sign with the secret",
                file=sys.stderr,
            )
        if args.json:
            _print_json(webhook_created_json(created, secret))
        else:
            print(f"webhook {created.id}")
            print(f"secret {secret}")
            print("(the secret is shown only now: the receiver checks Flagpost-Signature with it)")
        return 0
    if command == "list":
        found = await webhooks.list_webhooks(sessions)
        if args.json:
            _print_json(webhook_list_json(found))
            return 0
        if not found:
            print("no webhooks (add one: flagpost-server webhook add URL --events LIST)")
            return 0
        print(f"{'ID':36}  {'FORMAT':6}  {'EVENTS':40}  URL")
        for w in found:
            events = ",".join(e.value for e in w.events)
            print(f"{w.id:36}  {w.format.value:6}  {events:40}  {w.url}")
        return 0
    if command == "remove":
        await webhooks.remove_webhook(sessions, args.webhook_id)
        print(f"webhook {args.webhook_id.strip()} removed")
        return 0
    webhook, log = await webhooks.deliveries(sessions, args.webhook_id, args.limit)
    if args.json:
        _print_json(delivery_list_json(webhook, log))
        return 0
    print(f"webhook {webhook.id}: {webhook.url}")
    if not log:
        print("no deliveries yet")
        return 0
    print(
        f"{'ID':>8}  {'EVENT':18}  {'STATE':9}  {'TRIES':>5}  {'STATUS':>6}  {'MS':>6}  "
        "NEXT / ERROR"
    )
    for d in log:
        status = "-" if d.last_status is None else str(d.last_status)
        latency = "-" if d.last_latency_ms is None else str(d.last_latency_ms)
        nxt = f"next {d.next_attempt_at:%Y-%m-%d %H:%M:%S}" if d.next_attempt_at else ""
        extra = "  ".join(part for part in (nxt, d.last_error) if part)
        print(
            f"{d.id:>8}  {d.event.value:18}  {d.state.value:9}  {d.attempts:>5}  {status:>6}  "
            f"{latency:>6}  {extra}"
        )
    return 0
