"""Webhooks on a real server (SQLite and PostgreSQL) with a real aiohttp receiver on
127.0.0.1: signed bodies verify with the documented recipe (and tampered or old ones do not);
a receiver answering 500 is retried with growing delays and its failures show in the delivery
log (API and page); a rollout halting delivers rollout.halted; deliveries pending at shutdown
are delivered after a restart; failed runs are aggregated per minute; the secret is stored
encrypted."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from agent_tests.spec_testlib import SAMPLE
from server_testlib import logged_in_http, make_server_config
from sqlalchemy import select, update
from webhooks_testlib import receiver, report_run, seed_agents

from server import app_keys
from server.app import RunningServer, start_server
from server.config import ServerConfig
from server.domain import AgentHealth, DeliveryState, RolloutState, WebhookEvent
from server.services import rollouts, webhook_events
from server.services import specs as specs_service
from server.services import webhooks as webhooks_service
from server.services.agents import agent_health, offline_window
from server.services.webhook_dispatcher import SendResult, WebhookDispatcher, backoff_seconds
from server.services.webhook_secrets import SecretBox
from server.storage.db import create_engine_for_url, make_sessionmaker
from server.storage.models import Agent, PendingActionRow, WebhookRow
from server.webhook_sender import HttpSender
from server.webhook_signature import REPLAY_WINDOW_SECONDS, sign, verify

FAST = {
    "webhook_tick_seconds": 0.1,
    "webhook_timeout_seconds": 2.0,
    "webhook_backoff_base_seconds": 0.2,
    "webhook_backoff_cap_seconds": 1.0,
    "webhook_max_attempts": 4,
    "rollout_tick_seconds": 0.2,
    "public_url": "https://flagpost.example.com/",
}


@pytest.fixture
def config(db_url: str, tmp_path: Path) -> ServerConfig:
    return make_server_config(db_url, tmp_path, **FAST)


@pytest.fixture
async def server(config: ServerConfig) -> AsyncIterator[RunningServer]:
    running = await start_server(config)
    try:
        yield running
    finally:
        await running.stop()


def recipe(secret: str, body: bytes, header: str, now: float) -> bool:
    """The receiver's check as README-webhooks.md documents it, written out."""
    fields = dict(item.split("=", 1) for item in header.split(","))
    t = int(fields["t"])
    if abs(now - t) > 300:
        return False
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, fields["v1"])


def test_signature_verifies_and_tampered_or_old_does_not() -> None:
    body = b'{"event":"rollout.halted"}'
    now = time.time()
    header = sign("whsec_abc", body)
    assert verify("whsec_abc", body, header) and recipe("whsec_abc", body, header, now)
    assert not verify("whsec_abc", body + b" ", header)
    assert not recipe("whsec_abc", body.replace(b"halted", b"complet"), header, now)
    assert not verify("other-secret", body, header)
    old = sign("whsec_abc", body, int(now) - REPLAY_WINDOW_SECONDS - 10)
    assert not verify("whsec_abc", body, old) and not recipe("whsec_abc", body, old, now)
    assert not verify("whsec_abc", body, "t=abc,v1=00") and not verify("whsec_abc", body, "")


def test_backoff_grows_exponentially_up_to_the_cap_with_full_jitter() -> None:
    ceilings = [backoff_seconds(n, 10, 3600, rand=lambda: 1.0) for n in range(1, 12)]
    assert ceilings[:4] == [10, 20, 40, 80] and ceilings[-1] == 3600
    assert all(b >= a for a, b in itertools.pairwise(ceilings))
    assert backoff_seconds(3, 10, 3600, rand=lambda: 0.0) == 0
    assert all(0 <= backoff_seconds(5, 10, 3600) <= 160 for _ in range(100))


async def _add(server: RunningServer, url: str, *events: str, fmt: str = "json") -> tuple[str, str]:
    webhook, secret = await webhooks_service.add_webhook(
        server.app[app_keys.SESSIONS],
        server.app[app_keys.WEBHOOK_SECRETS],
        url,
        list(events),
        "alice",
        fmt=fmt,
    )
    return webhook.id, secret


async def _enqueue(server: RunningServer, text: str = "hello") -> None:
    now = datetime.now(UTC)
    payload = {"event": "rollout.halted", "at": now.isoformat(), "text": text, "path": "/x"}
    async with server.app[app_keys.SESSIONS]() as session, session.begin():
        await webhook_events.enqueue(session, WebhookEvent.ROLLOUT_HALTED, payload, now)


async def test_a_failing_receiver_is_retried_with_backoff_and_logged(
    server: RunningServer,
) -> None:
    async with receiver(500, 500, 500) as hook:
        webhook_id, secret = await _add(server, hook.url, "rollout.halted")
        await _enqueue(server)
        got = await hook.wait_for(4)
        for request in got:  # each attempt signed afresh, over its exact body
            assert verify(secret, request.body, request.headers["Flagpost-Signature"])
            assert request.headers["Flagpost-Event"] == "rollout.halted"
        body = json.loads(got[-1].body)
        assert body == {
            "event": "rollout.halted",
            "at": body["at"],
            "text": "hello",
            "url": "https://flagpost.example.com/x",
            "data": {},
        }
        gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
        # full jitter: attempt n waits up to min(cap, base * 2**(n-1)) (+ a tick)
        for n, gap in enumerate(gaps, 1):
            assert gap <= min(1.0, 0.2 * 2 ** (n - 1)) + 0.5, gaps
        await asyncio.sleep(0.3)
        _, log = await webhooks_service.deliveries(server.app[app_keys.SESSIONS], webhook_id)
    [delivery] = log
    assert delivery.state == DeliveryState.DELIVERED and delivery.attempts == 4
    assert delivery.last_status == 200 and delivery.last_latency_ms is not None


async def test_giving_up_after_max_attempts_shows_the_error(server: RunningServer) -> None:
    async with receiver(500, 500, 500, 500, 500) as hook:
        webhook_id, _ = await _add(server, hook.url, "rollout.halted")
        await _enqueue(server)
        await hook.wait_for(4)
        sessions = server.app[app_keys.SESSIONS]
        for _ in range(50):
            _, log = await webhooks_service.deliveries(sessions, webhook_id)
            if log[0].state == DeliveryState.FAILED:
                break
            await asyncio.sleep(0.1)
    assert log[0].state == DeliveryState.FAILED and log[0].attempts == 4
    assert log[0].last_status == 500 and log[0].last_error == "HTTP 500: boom"
    assert log[0].next_attempt_at is None
    async with logged_in_http(server) as admin:  # the API and the page show the same log
        url = f"{server.web_url}/api/v1/webhooks/{webhook_id}/deliveries"
        async with admin.get(url) as reply:
            assert reply.status == 200
            [shown] = (await reply.json())["deliveries"]
        async with admin.get(f"{server.web_url}/webhooks") as reply:
            assert reply.status == 200
            page = await reply.text()
    assert shown["state"] == "failed" and shown["attempts"] == 4
    assert shown["last_status"] == 500 and shown["last_error"] == "HTTP 500: boom"
    assert shown["last_latency_ms"] >= 0 and shown["next_attempt_at"] is None
    row = page[page.index(f'id="delivery-{log[0].id}"') :].split("</tr>")[0]
    for cell in ("failed", ">500<", ">4<", "HTTP 500: boom", " ms<"):
        assert cell in row, row


async def test_the_page_adds_and_removes_webhooks_for_admins_only(
    server: RunningServer,
) -> None:
    async with (
        logged_in_http(server, "viewer") as viewer,
        viewer.get(f"{server.web_url}/webhooks") as reply,
    ):
        assert reply.status == 403
    async with logged_in_http(server) as admin:
        csrf = admin.headers["X-CSRF-Token"]
        form = {"csrf_token": csrf, "url": "ftp://x", "events": "rollout.halted"}
        async with admin.post(f"{server.web_url}/webhooks", data=form) as reply:
            assert reply.status == 400
            assert "url: must start with http:// or https://" in await reply.text()
        form = {"csrf_token": csrf, "url": "https://h.example.com/x", "events": "run.failed"}
        async with admin.post(f"{server.web_url}/webhooks", data=form) as reply:
            assert reply.status == 200
            page = await reply.text()
        [webhook] = await webhooks_service.list_webhooks(server.app[app_keys.SESSIONS])
        secret = page.split('id="new-secret-value"')[1].split(">", 1)[1].split("<")[0]
        async with server.app[app_keys.SESSIONS]() as session:
            row = (await session.execute(select(WebhookRow))).scalar_one()
        assert server.app[app_keys.WEBHOOK_SECRETS].decrypt(webhook.id, row.secret) == secret
        async with admin.get(f"{server.web_url}/webhooks") as reply:
            again = await reply.text()
        assert secret not in again and "https://h.example.com/x" in again
        remove = f"{server.web_url}/webhooks/{webhook.id}/remove"
        async with admin.post(remove, data={"csrf_token": csrf}) as reply:
            assert reply.status == 200 and "Webhook removed." in await reply.text()
    assert await webhooks_service.list_webhooks(server.app[app_keys.SESSIONS]) == []


async def test_the_secret_is_stored_encrypted(server: RunningServer) -> None:
    webhook_id, secret = await _add(server, "https://example.com/hook", "run.failed")
    assert secret.startswith("whsec_") and len(secret) > 40
    async with server.app[app_keys.SESSIONS]() as session:
        row = (await session.execute(select(WebhookRow))).scalar_one()
    assert secret.encode() not in row.secret and secret not in repr(row.__dict__)
    box = server.app[app_keys.WEBHOOK_SECRETS]
    assert box.decrypt(webhook_id, row.secret) == secret
    with pytest.raises(Exception, match="belongs to another"):
        box.decrypt("00000000-0000-0000-0000-000000000000", row.secret)


async def _halt_a_rollout(server: RunningServer) -> str:
    sessions = server.app[app_keys.SESSIONS]
    await specs_service.add_spec(sessions, SAMPLE, "toml", "alice")
    [agent_id] = await seed_agents(sessions, 1)
    created = await rollouts.create_rollout(
        sessions, server.app[app_keys.CONFIG], "myapp", "alice", waves=["100%"]
    )
    server.app[app_keys.ROLLOUTS].wake()
    action_id = None
    for _ in range(100):  # the scheduler starts the wave: the host's action appears
        async with sessions() as session:
            action_id = (
                await session.execute(
                    select(PendingActionRow.action_id).where(PendingActionRow.agent_id == agent_id)
                )
            ).scalar()
        if action_id:
            break
        await asyncio.sleep(0.05)
    assert action_id
    await report_run(sessions, agent_id, "FAILED", action_id=action_id, error="disk full")
    server.app[app_keys.ROLLOUTS].wake()
    return created.id


async def test_a_halted_rollout_delivers_rollout_halted(server: RunningServer) -> None:
    async with receiver() as hook:
        _, secret = await _add(server, hook.url, "rollout.halted", "rollout.completed")
        slack_id, _ = await _add(server, hook.url, "rollout.halted", fmt="slack")
        await _add(server, hook.url, "rollout.completed")  # not subscribed: gets nothing
        rollout_id = await _halt_a_rollout(server)
        got = await hook.wait_for(2)
        await asyncio.sleep(0.5)
    assert len(hook.got) == 2
    bodies = [json.loads(r.body) for r in got]
    [full] = [b for b in bodies if "event" in b]
    [slack] = [b for b in bodies if "event" not in b]
    assert full["event"] == "rollout.halted"
    assert full["url"] == f"https://flagpost.example.com/rollouts/{rollout_id}"
    assert full["data"]["rollout_id"] == rollout_id and full["data"]["state"] == "HALTED"
    assert full["data"]["from_state"] == "RUNNING" and full["data"]["by"] == "scheduler"
    assert "halted" in full["text"] and "1 of 1 hosts failed" in full["text"]
    assert set(slack) == {"text"} and rollout_id[:8] in slack["text"]
    signed = next(r for r in got if "event" in json.loads(r.body))
    assert verify(secret, signed.body, signed.headers["Flagpost-Signature"])
    detail = await rollouts.get_rollout(server.app[app_keys.SESSIONS], rollout_id)
    assert detail.rollout.state == RolloutState.HALTED
    _, log = await webhooks_service.deliveries(server.app[app_keys.SESSIONS], slack_id)
    assert [d.state for d in log] == [DeliveryState.DELIVERED]


async def test_deliveries_pending_at_shutdown_are_delivered_after_a_restart(
    config: ServerConfig,
) -> None:
    async with receiver() as hook:
        first = await start_server(config)
        try:
            await _add(first, hook.url, "rollout.aborted")
        finally:
            await first.stop()
        engine = create_engine_for_url(config.database_url)
        try:  # the server is down: an abort (the CLI's) enqueues into the outbox
            sessions = make_sessionmaker(engine)
            await specs_service.add_spec(sessions, SAMPLE, "toml", "alice")
            await seed_agents(sessions, 1)
            created = await rollouts.create_rollout(sessions, config, "myapp", "bob")
            await rollouts.abort(sessions, created.id, "bob", reason="wrong spec")
        finally:
            await engine.dispose()
        assert hook.got == []
        second = await start_server(config)
        try:
            [request] = await hook.wait_for(1)
        finally:
            await second.stop()
    body = json.loads(request.body)
    assert body["event"] == "rollout.aborted" and body["data"]["reason"] == "wrong spec"


async def test_failed_runs_are_aggregated_once_per_minute(config: ServerConfig) -> None:
    engine = create_engine_for_url(config.database_url)
    try:
        sessions = make_sessionmaker(engine)
        box = SecretBox.open(config)
        webhook, _ = await webhooks_service.add_webhook(
            sessions, box, "http://127.0.0.1:9/hook", ["run.failed", "run.waiting_input"], "al"
        )
        a, b = await seed_agents(sessions, 2)
        start = webhook.created_at.replace(second=0, microsecond=0) + timedelta(minutes=1)
        await report_run(sessions, a, "FAILED", error="boom", at=start + timedelta(seconds=5))
        await report_run(sessions, b, "PARTIAL", at=start + timedelta(seconds=50))
        await report_run(sessions, a, "SUCCEEDED", at=start + timedelta(seconds=51))
        await report_run(sessions, b, "FAILED", at=start + timedelta(minutes=2, seconds=1))
        await report_run(
            sessions, b, "AWAITING_INPUT", at=start + timedelta(seconds=7), input_requested=True
        )
        now = start + timedelta(minutes=1, seconds=10)  # minute 1 ended, minute 3 did not
        assert await webhook_events.aggregate(sessions, config, now) == 2
        assert await webhook_events.aggregate(sessions, config, now) == 0  # exactly once
        _, log = await webhooks_service.deliveries(sessions, webhook.id)
        by_event = {d.event: d.payload for d in log}
        failed = by_event[WebhookEvent.RUN_FAILED]
        assert failed["data"]["count"] == 2 and failed["path"] == "/runs?state=failed"
        assert [r["state"] for r in failed["data"]["runs"]] == ["FAILED", "PARTIAL"]
        assert failed["data"]["runs"][0]["error"] == "boom"
        assert "2 runs failed" in failed["text"] and "web-000" in failed["text"]
        waiting = by_event[WebhookEvent.RUN_WAITING_INPUT]
        assert waiting["data"]["count"] == 1 and waiting["path"].startswith("/runs/")
        later = start + timedelta(minutes=3, seconds=6)
        assert await webhook_events.aggregate(sessions, config, later) == 1
    finally:
        await engine.dispose()


async def _set_last_checkin(sessions: Any, agent_id: str, at: datetime, **values: Any) -> None:
    async with sessions() as session, session.begin():
        await session.execute(
            update(Agent).where(Agent.id == agent_id).values(last_checkin_at=at, **values)
        )


async def test_agents_going_offline_are_delivered_once_per_minute(config: ServerConfig) -> None:
    """Agents whose last check-in + the offline window falls in an ended minute: one
    agent.offline delivery per subscribed webhook listing them, sent once (two replicas' ticks
    at the same time, then a restarted dispatcher); not to a webhook not subscribed; an agent
    that checked in again, a revoked one and one offline before the webhook existed are not
    listed."""
    engine = create_engine_for_url(config.database_url)
    try:
        sessions = make_sessionmaker(engine)
        box = SecretBox.open(config)
        base = "http://127.0.0.1:9/"
        hook, _ = await webhooks_service.add_webhook(
            sessions, box, base + "json", ["agent.offline"], "al"
        )
        await webhooks_service.add_webhook(
            sessions, box, base + "slack", ["agent.offline"], "al", fmt="slack"
        )
        runs_only, _ = await webhooks_service.add_webhook(
            sessions, box, base + "runs", ["run.failed"], "al"
        )
        a, b, back, revoked, later, old = await seed_agents(sessions, 6)
        window = offline_window(config)
        assert window == timedelta(
            seconds=config.checkin_interval_seconds * config.offline_after_intervals
        )
        start = hook.created_at.replace(second=0, microsecond=0) + timedelta(minutes=1)
        await _set_last_checkin(sessions, b, start + timedelta(seconds=20) - window)
        await _set_last_checkin(sessions, a, start + timedelta(seconds=10) - window)
        await _set_last_checkin(sessions, back, start + timedelta(seconds=30) - window)
        await _set_last_checkin(sessions, back, start + timedelta(seconds=25))  # checked in again
        await _set_last_checkin(
            sessions, revoked, start + timedelta(seconds=15) - window, revoked=True
        )
        await _set_last_checkin(sessions, later, start + timedelta(minutes=1, seconds=5) - window)
        await _set_last_checkin(sessions, old, hook.created_at - window - timedelta(seconds=1))
        sent: list[tuple[str, dict[str, Any]]] = []

        async def send(url: str, body: bytes, headers: Any, timeout_s: float) -> SendResult:
            assert headers["Flagpost-Event"] == "agent.offline"
            sent.append((url.rsplit("/", 1)[1], json.loads(body)))
            return SendResult(204, "", 5)

        now = start + timedelta(minutes=1, seconds=10)  # minute 1 ended, minute 2 did not
        one, two = (WebhookDispatcher(sessions, config, box, send) for _ in range(2))
        await asyncio.gather(one.run_once(now), two.run_once(now))
        await one.run_once(now + timedelta(seconds=20))  # the next tick: nothing new
        assert sorted(name for name, _ in sent) == ["json", "slack"]
        [full] = [body for name, body in sent if name == "json"]
        [slack] = [body for name, body in sent if name == "slack"]
        assert full["event"] == "agent.offline"
        assert full["at"] == (start + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
        data = full["data"]
        assert data["count"] == 2 and data["offline_after_seconds"] == window.total_seconds()
        assert [(x["agent_id"], x["hostname"]) for x in data["agents"]] == [
            (a, "web-000"),
            (b, "web-001"),
        ]
        first = data["agents"][0]
        assert first["url"] == f"https://flagpost.example.com/agents/{a}" and "path" not in first
        last_a = start + timedelta(seconds=10) - window
        assert datetime.fromisoformat(first["last_checkin_at"]) == last_a
        assert datetime.fromisoformat(first["offline_at"]) == start + timedelta(seconds=10)
        assert full["url"] == "https://flagpost.example.com/"
        assert full["text"].startswith("2 agents went offline (no check-in for 10 min) between")
        assert f"web-000 (last check-in {last_a:%H:%M:%S}), web-001" in full["text"]
        assert set(slack) == {"text"}
        assert f"<https://flagpost.example.com/agents/{a}|web-000>" in slack["text"]
        assert f"<https://flagpost.example.com/agents/{b}|web-001>" in slack["text"]
        # the moment it is listed for is when its health turns offline
        offline_at = start + timedelta(seconds=10)
        assert agent_health(last_a, offline_at, config) == AgentHealth.STALE
        assert agent_health(last_a, offline_at + timedelta(seconds=1), config) == (
            AgentHealth.OFFLINE
        )

        sent.clear()  # a restarted dispatcher, once the next minute ended: only that one
        await WebhookDispatcher(sessions, config, box, send).run_once(now + timedelta(minutes=1))
        assert sorted(name for name, _ in sent) == ["json", "slack"]
        [full] = [body for name, body in sent if name == "json"]
        assert [x["agent_id"] for x in full["data"]["agents"]] == [later]
        assert full["url"] == f"https://flagpost.example.com/agents/{later}"
        assert full["text"].startswith("1 agent went offline")
        _, log = await webhooks_service.deliveries(sessions, hook.id)
        assert [d.event for d in log] == [WebhookEvent.AGENT_OFFLINE] * 2
        assert all(d.state == DeliveryState.DELIVERED for d in log)
        _, nothing = await webhooks_service.deliveries(sessions, runs_only.id)
        assert nothing == []
    finally:
        await engine.dispose()


async def test_two_dispatchers_send_each_delivery_once(config: ServerConfig) -> None:
    """Two replicas' dispatchers on one database: every delivery is POSTed exactly once."""
    engine = create_engine_for_url(config.database_url)
    try:
        sessions = make_sessionmaker(engine)
        box = SecretBox.open(config)
        await webhooks_service.add_webhook(
            sessions, box, "http://127.0.0.1:9/h", ["rollout.halted"], "al"
        )
        now = datetime.now(UTC)
        async with sessions() as session, session.begin():
            for n in range(30):
                payload = {"event": "rollout.halted", "at": "x", "text": str(n), "path": "/"}
                await webhook_events.enqueue(session, WebhookEvent.ROLLOUT_HALTED, payload, now)
        sent: list[str] = []

        async def send(url: str, body: bytes, headers: Any, timeout_s: float) -> SendResult:
            sent.append(headers["Flagpost-Delivery"])
            await asyncio.sleep(0.05)
            return SendResult(204, "", 50)

        one, two = (WebhookDispatcher(sessions, config, box, send) for _ in range(2))
        for _ in range(3):
            await asyncio.gather(one.run_once(), two.run_once())
        assert sorted(sent) == sorted(set(sent)) and len(sent) == 30
        assert one.sent + two.sent == 30
    finally:
        await engine.dispose()


async def test_a_slow_receiver_times_out_and_old_rows_are_pruned(config: ServerConfig) -> None:
    engine = create_engine_for_url(config.database_url)
    slow = replace(config, webhook_timeout_seconds=0.3, webhook_max_attempts=1)
    sender = HttpSender()
    try:
        sessions = make_sessionmaker(engine)
        box = SecretBox.open(config)
        async with receiver() as hook:
            hook.delay = 2.0
            webhook, _ = await webhooks_service.add_webhook(
                sessions, box, hook.url, ["rollout.halted"], "al"
            )
            now = datetime.now(UTC)
            async with sessions() as session, session.begin():
                payload = {"event": "rollout.halted", "at": "x", "text": "t", "path": "/"}
                await webhook_events.enqueue(session, WebhookEvent.ROLLOUT_HALTED, payload, now)
            dispatcher = WebhookDispatcher(sessions, slow, box, sender)
            assert await dispatcher.run_once() == 1
        _, [delivery] = await webhooks_service.deliveries(sessions, webhook.id)
        assert delivery.state == DeliveryState.FAILED and delivery.last_status is None
        assert delivery.last_error == "no answer within 0.3 s"
        later = datetime.now(UTC) + timedelta(days=config.retention_days, minutes=1)
        await WebhookDispatcher(sessions, slow, box, sender).run_once(later)
        _, log = await webhooks_service.deliveries(sessions, webhook.id)
        assert log == []
    finally:
        await sender.close()
        await engine.dispose()
