"""What goes into the webhook outbox, and the body a receiver gets.

Rollout events (``rollout.halted|completed|aborted``) are enqueued by
:func:`enqueue_rollout_change`, which ``server.services.rollouts.change_state`` calls inside
the transaction that records the transition: the delivery rows commit with the transition or
not at all, so each transition is notified exactly once, durably.

Run events (``run.failed``, ``run.waiting_input``) are aggregated per minute by
:func:`aggregate` (called by the dispatcher every tick). Each webhook subscribed to one
keeps a cursor (``webhooks.runs_cursor_at``, starting at its creation): every minute that has
ended (plus :data:`GRACE_SECONDS`, for commits still in flight) since the cursor is read from
``migration_runs`` (FAILED/PARTIAL runs by ``updated_at``, the time the server stored the final
state, which never changes after; asks for input by ``input_requested_at``), one delivery per
event per minute with runs in it is inserted, and the cursor moves to the end of the last
minute read, all in one transaction (a compare-and-set on the cursor: replicas never enqueue a
minute twice). So a webhook gets at most one ``run.failed`` delivery per minute, listing that
minute's failed runs, and no minute is missed across restarts.

``agent.offline`` rides on the same cursor and minutes: an agent goes offline at
``last_checkin_at + offline_window`` (``server.services.agents.offline_window``, the threshold
of the health shown). For each minute read, the agents (not revoked) whose offline moment is in
it are the ones that crossed the threshold then and have not checked in since (a check-in
moves ``last_checkin_at``); one delivery per minute lists them. An agent that came back before
the tick read its minute is not listed; one already offline when the webhook was created is
not either.

The stored payload is ``{event, at, text, path, data}``; :func:`render` makes the body at each
attempt: JSON ``{event, at, text, url, data}`` (``url`` = ``public_url`` + ``path``) or Slack's
``{"text": ...}``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.domain import (
    DeliveryState,
    RolloutState,
    RolloutSummary,
    WebhookEvent,
    WebhookFormat,
)
from server.services.agents import offline_window
from server.storage import webhooks as webhooks_db

GRACE_SECONDS = 5.0
MINUTE = timedelta(minutes=1)
MAX_RUNS_LISTED = 50  # runs or agents per delivery; data.count has them all
MAX_RUNS_READ = 5_000  # runs or agents per event per webhook per tick (a long outage catches
# up over several ticks)
MAX_TEXT_HOSTS = 5

_ROLLOUT_EVENTS: dict[RolloutState, WebhookEvent] = {
    RolloutState.HALTED: WebhookEvent.ROLLOUT_HALTED,
    RolloutState.COMPLETED: WebhookEvent.ROLLOUT_COMPLETED,
    RolloutState.ABORTED: WebhookEvent.ROLLOUT_ABORTED,
}
_ABORTABLE = frozenset({RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.HALTED})


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def rollout_event(old: RolloutState, new: RolloutState) -> WebhookEvent | None:
    """The webhook event of a rollout transition (an abort with revert counts as aborted)."""
    if new == RolloutState.REVERTING and old in _ABORTABLE:
        return WebhookEvent.ROLLOUT_ABORTED
    return _ROLLOUT_EVENTS.get(new)


async def enqueue(
    session: AsyncSession, event: WebhookEvent, payload: dict[str, Any], now: datetime
) -> int:
    """One pending delivery of ``payload`` per enabled webhook subscribed to ``event``, due
    now, in the caller's transaction; returns how many."""
    ids = await webhooks_db.subscribers(session, event)
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    await webhooks_db.insert_deliveries(session, [_row(i, event, text, now) for i in ids])
    return len(ids)


def _row(webhook_id: str, event: WebhookEvent, payload: str, now: datetime) -> dict[str, Any]:
    return {
        "webhook_id": webhook_id,
        "event": event.value,
        "payload": payload,
        "state": DeliveryState.PENDING.value,
        "attempts": 0,
        "next_attempt_at": now,
        "last_status": None,
        "last_error": "",
        "last_latency_ms": None,
        "created_at": now,
        "delivered_at": None,
    }


async def enqueue_rollout_change(
    session: AsyncSession,
    rollout: RolloutSummary,
    new: RolloutState,
    by: str,
    reason: str,
    now: datetime,
) -> None:
    """Enqueue the event of ``rollout`` going to ``new`` (if it is one webhooks get)."""
    event = rollout_event(rollout.state, new)
    if event is None:
        return
    word = event.value.removeprefix("rollout.")
    if new == RolloutState.REVERTING:
        word = "aborted (reverting its hosts)"
    payload = {
        "event": event.value,
        "at": _iso(now),
        "text": f"Rollout {rollout.id[:8]} of {rollout.spec_id} revision "
        f"{rollout.spec_revision} {word}: {reason}",
        "path": f"/rollouts/{rollout.id}",
        "data": {
            "rollout_id": rollout.id,
            "spec_id": rollout.spec_id,
            "spec_revision": rollout.spec_revision,
            "from_state": rollout.state.value,
            "state": new.value,
            "by": by,
            "reason": reason,
            "current_wave": rollout.current_wave,
            "waves": len(rollout.wave_sizes),
            "hosts_total": rollout.hosts_total,
            "hosts_done": rollout.hosts_done,
        },
    }
    await enqueue(session, event, payload, now)


def _floor_minute(value: datetime) -> datetime:
    return value.replace(second=0, microsecond=0)


def runs_payload(
    event: WebhookEvent, runs: list[webhooks_db.RunNotice], since: datetime, until: datetime
) -> dict[str, Any]:
    """The payload of one minute's failed (or waiting) runs."""
    what = "failed" if event == WebhookEvent.RUN_FAILED else "are waiting for input"
    hosts = ", ".join(f"{r.hostname} ({r.migration_id or 'migration'})" for r in runs[:5])
    more = f" and {len(runs) - MAX_TEXT_HOSTS} more" if len(runs) > MAX_TEXT_HOSTS else ""
    count = f"{len(runs)} run{'s' if len(runs) != 1 else ''}"
    if len(runs) == 1 and event == WebhookEvent.RUN_WAITING_INPUT:
        what = "is waiting for input"
    state = "failed" if event == WebhookEvent.RUN_FAILED else "awaiting_input"
    return {
        "event": event.value,
        "at": _iso(until),
        "text": f"{count} {what} between {since:%H:%M:%S} and {until:%H:%M:%S} UTC: {hosts}{more}",
        "path": f"/runs/{runs[0].run_id}" if len(runs) == 1 else f"/runs?state={state}",
        "data": {
            "since": _iso(since),
            "until": _iso(until),
            "count": len(runs),
            "runs": [
                {
                    "run_id": r.run_id,
                    "agent_id": r.agent_id,
                    "hostname": r.hostname,
                    "migration_id": r.migration_id,
                    "state": r.state,
                    "error": r.error[:500],
                    "at": _iso(r.at),
                }
                for r in runs[:MAX_RUNS_LISTED]
            ],
        },
    }


def _window_text(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def offline_text(data: dict[str, Any], base_url: str | None = None) -> str:
    """The text of an ``agent.offline`` payload's ``data``: plain, or with each host a Slack
    link to its agent page when ``base_url`` is given."""
    agents = data["agents"]
    count = int(data["count"])
    since = datetime.fromisoformat(data["since"])
    until = datetime.fromisoformat(data["until"])
    hosts = []
    for agent in agents[:MAX_TEXT_HOSTS]:
        last = datetime.fromisoformat(agent["last_checkin_at"])
        name = agent["hostname"] or agent["agent_id"][:8]
        if base_url is not None:
            name = f"<{base_url.rstrip('/')}{agent['path']}|{_slack_escape(name)}>"
        hosts.append(f"{name} (last check-in {last:%H:%M:%S})")
    more = f" and {count - MAX_TEXT_HOSTS} more" if count > MAX_TEXT_HOSTS else ""
    noun = "agent" if count == 1 else "agents"
    window = _window_text(timedelta(seconds=int(data["offline_after_seconds"])))
    return (
        f"{count} {noun} went offline (no check-in for {window}) between "
        f"{since:%H:%M:%S} and {until:%H:%M:%S} UTC: {', '.join(hosts)}{more}"
    )


def offline_payload(
    agents: list[webhooks_db.OfflineNotice], window: timedelta, since: datetime, until: datetime
) -> dict[str, Any]:
    """The payload of one minute's agents gone offline."""
    data = {
        "since": _iso(since),
        "until": _iso(until),
        "count": len(agents),
        "offline_after_seconds": int(window.total_seconds()),
        "agents": [
            {
                "agent_id": a.agent_id,
                "hostname": a.hostname,
                "last_checkin_at": _iso(a.last_checkin_at),
                "offline_at": _iso(a.at),
                "path": agent_path(a.agent_id),
            }
            for a in agents[:MAX_RUNS_LISTED]
        ],
    }
    return {
        "event": WebhookEvent.AGENT_OFFLINE.value,
        "at": _iso(until),
        "text": offline_text(data),
        "path": agent_path(agents[0].agent_id) if len(agents) == 1 else "/",
        "data": data,
    }


def agent_path(agent_id: str) -> str:
    return f"/agents/{quote(agent_id, safe='')}"


async def aggregate(
    sessions: async_sessionmaker[AsyncSession], config: ServerConfig, now: datetime
) -> int:
    """Turn the ended minutes since each aggregating webhook's cursor into deliveries (run
    events and ``agent.offline``, see the module docstring); returns how many deliveries were
    enqueued."""
    end = _floor_minute(now - timedelta(seconds=GRACE_SECONDS))
    window = offline_window(config)
    async with sessions() as session:
        cursors = [c for c in await webhooks_db.run_cursors(session) if c.cursor < end]
    enqueued = 0
    for cursor in cursors:
        async with sessions() as session, session.begin():
            rows: list[dict[str, Any]] = []
            until = end
            for event in cursor.events:
                found: list[webhooks_db.RunNotice] | list[webhooks_db.OfflineNotice]
                if event == WebhookEvent.AGENT_OFFLINE:
                    found = await webhooks_db.agents_offline_between(
                        session, window, cursor.cursor, end, MAX_RUNS_READ
                    )
                else:
                    found = await webhooks_db.runs_between(
                        session, event, cursor.cursor, end, MAX_RUNS_READ
                    )
                if len(found) == MAX_RUNS_READ:  # read on from the last full minute next tick
                    until = min(
                        until,
                        max(_floor_minute(found[-1].at), _floor_minute(cursor.cursor) + MINUTE),
                    )
                rows.extend(
                    _minute_rows(cursor.webhook_id, event, found, cursor.cursor, now, window)
                )
            rows = [r for r in rows if r["_since"] < until]
            for row in rows:
                del row["_since"]
            if not await webhooks_db.advance_cursor(
                session, cursor.webhook_id, cursor.cursor, until
            ):
                await session.rollback()
                continue
            await webhooks_db.insert_deliveries(session, rows)
            enqueued += len(rows)
    return enqueued


def _minute_rows(
    webhook_id: str,
    event: WebhookEvent,
    found: list[webhooks_db.RunNotice] | list[webhooks_db.OfflineNotice],
    start: datetime,
    now: datetime,
    window: timedelta,
) -> list[dict[str, Any]]:
    by_minute: dict[datetime, list[Any]] = {}
    for item in found:
        by_minute.setdefault(_floor_minute(item.at), []).append(item)
    rows = []
    for minute, items in sorted(by_minute.items()):
        since = max(minute, start)
        if event == WebhookEvent.AGENT_OFFLINE:
            payload = offline_payload(items, window, since, minute + MINUTE)
        else:
            payload = runs_payload(event, items, since, minute + MINUTE)
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        rows.append({**_row(webhook_id, event, text, now), "_since": minute})
    return rows


def render(payload: dict[str, Any], fmt: WebhookFormat, base_url: str) -> bytes:
    """The body of one attempt for a webhook of format ``fmt``."""
    base = base_url.rstrip("/")
    url = base + str(payload.get("path", "/"))
    data = payload.get("data", {})
    offline = payload.get("event") == WebhookEvent.AGENT_OFFLINE.value
    if fmt == WebhookFormat.SLACK:
        text = offline_text(data, base) if offline else payload["text"]
        body: dict[str, Any] = {"text": f"{text} <{url}|Open in Flagpost>"}
    else:
        if offline:  # each agent's page as a URL, like the payload's own
            data = {
                **data,
                "agents": [
                    {**{k: v for k, v in a.items() if k != "path"}, "url": base + a["path"]}
                    for a in data["agents"]
                ],
            }
        body = {
            "event": payload["event"],
            "at": payload["at"],
            "text": payload["text"],
            "url": url,
            "data": data,
        }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
