"""The daemon with a run that needs inputs, against a real gRPC server on port 0 sending signed
``provide_input`` / ``cancel_run`` actions: AWAITING_INPUT reaches the server, a wrong answer is
asked again with its error, right answers resume the run to SUCCEEDED, a stale answer is refused
with a notice, cancel, timeout, agent restart while waiting; the secrets reach no log, no
request the agent sent, and no file but the 0600 secrets file."""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path

import pytest
from agent_testlib import (
    AGENT_TOKEN,
    FakeServer,
    daemon,
    enrolled_fast,
    signed_action,
    snapshot,
    wait_for,
    write_legacy,
)

from agent import events, runs
from agent.config import AgentConfig
from agent.daemon import Agent
from agent.specs.builtin import legacy_config_with_secrets, secrets_file
from flagpost.v1 import agent_pb2

DB_PASSWORD = "daemon-db-pw-5d1e0c77"
UPSTREAM_TOKEN = "daemon-upstream-9a0b31f2"
SECRETS = (DB_PASSWORD, UPSTREAM_TOKEN)


def enrolled(root: Path, server: FakeServer, **settings: str) -> AgentConfig:
    config = enrolled_fast(root, server, **settings)
    write_legacy(
        root,
        legacy_config_with_secrets(
            server_url="https://flagpost.example:8443",
            agent_token=AGENT_TOKEN,
            database_url="postgresql://fleet@db.example/fleet",
            database_password=DB_PASSWORD,
            upstream_token=UPSTREAM_TOKEN,
        ),
    )
    return config


def asks(server: FakeServer) -> list[agent_pb2.RunUpdate]:
    """AWAITING_INPUT updates the server stored, in order."""
    with server.lock:
        found = [u for u in server.stored_updates.values() if u.state == runs.AWAITING_INPUT]
    return sorted(found, key=lambda u: u.update_id)


def terminal(server: FakeServer) -> list[agent_pb2.RunUpdate]:
    with server.lock:
        return [u for u in server.stored_updates.values() if u.state in runs.TERMINAL]


def notices(server: FakeServer) -> list[agent_pb2.MigrationEvent]:
    with server.lock:
        return [e for e in server.stored.values() if e.event_type == events.AGENT_NOTICE]


def answer(server: FakeServer, action_id: str, update: agent_pb2.RunUpdate, **values: str) -> None:
    params = {"run_id": update.run_id, "request_id": update.input_request.request_id}
    params.update({f"input.{name}": value for name, value in values.items()})
    with server.lock:
        server.actions.append(signed_action(action_id, "provide_input", params))


def secret_forms() -> list[str]:
    return [f for s in SECRETS for f in (s, base64.b64encode(s.encode()).decode())]


def test_waiting_run_asks_again_then_succeeds(
    tmp_path: Path, fake_server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = enrolled(tmp_path, fake_server)
    with daemon(config):
        wait_for(lambda: asks(fake_server))
        [first] = asks(fake_server)
        assert [(f.name, f.secret, f.error) for f in first.input_request.fields] == [
            ("database_password", True, ""),
            ("upstream_token", True, ""),
        ]
        # While it waits the agent checks in at its fast cadence (answers arrive quickly).
        with fake_server.lock:
            seen = len(fake_server.checkins)
        time.sleep(1.5)
        with fake_server.lock:
            assert len(fake_server.checkins) - seen >= 3

        answer(
            fake_server, "a-in-1", first, database_password="wrong", upstream_token=UPSTREAM_TOKEN
        )
        wait_for(lambda: len(asks(fake_server)) == 2)
        second = asks(fake_server)[1]
        assert second.run_id == first.run_id
        assert second.input_request.request_id != first.input_request.request_id
        assert [(f.name, f.error) for f in second.input_request.fields] == [
            ("database_password", "wrong password for database 'fleet'")
        ]

        # An answer to the old request is refused with a notice that holds no value.
        stale_value = "stale-value-0c2d"
        answer(fake_server, "a-in-old", first, database_password=stale_value)
        wait_for(lambda: any("a-in-old" in n.message for n in notices(fake_server)))
        [stale] = [n for n in notices(fake_server) if "a-in-old" in n.message]
        assert "refused" in stale.message and "no longer waits for request" in stale.message
        assert stale_value not in str(stale)

        answer(fake_server, "a-in-2", second, database_password=DB_PASSWORD)
        wait_for(lambda: terminal(fake_server))
        wait_for(lambda: {"a-in-1", "a-in-old", "a-in-2"} <= set(fake_server.action_acks))
    [final] = terminal(fake_server)
    assert final.run_id == first.run_id and final.state == runs.SUCCEEDED
    resumed = [
        u
        for u in fake_server.updates_of(first.run_id)
        if u.state == runs.RUNNING and u.update_id > second.update_id
    ]
    assert resumed and not resumed[0].HasField("input_request")

    secrets = secrets_file(tmp_path)
    assert json.loads(secrets.read_text())["database_password"] == DB_PASSWORD
    # Found only in the 0600 secrets file: not in any other file (outbox and its WAL, journal,
    # backups, waiting-runs), not in any log record, not in anything the agent sent.
    forms = secret_forms()
    holders = sorted(
        str(p)
        for p in tmp_path.rglob("*")
        if p.is_file() and any(f.encode() in p.read_bytes() for f in forms)
    )
    assert holders == [str(secrets)]
    assert not any(f in caplog.text for f in forms)
    with fake_server.lock:
        sent = [str(request) for request in fake_server.checkins]
    assert not any(f in text for text in sent for f in forms)


def test_cancel_while_waiting(tmp_path: Path, fake_server: FakeServer) -> None:
    config = enrolled(tmp_path, fake_server)
    with daemon(config):
        wait_for(lambda: asks(fake_server))
        [ask] = asks(fake_server)
        with fake_server.lock:
            fake_server.actions.append(signed_action("a-x", "cancel_run", {"run_id": ask.run_id}))
        wait_for(lambda: terminal(fake_server))
    [final] = terminal(fake_server)
    assert final.state == runs.CANCELLED and final.run_id == ask.run_id
    assert "cancelled while waiting for input" in final.error_message
    assert not secrets_file(tmp_path).exists()
    assert (tmp_path / "etc/aggregator/agent.conf").exists()  # nothing was changed


def test_timeout_fails_the_run(tmp_path: Path, fake_server: FakeServer) -> None:
    config = enrolled(tmp_path, fake_server, FLAGPOST_AGENT_INPUT_TIMEOUT_SECONDS="1")
    assert config.input_timeout.total_seconds() == 1
    with daemon(config):
        wait_for(lambda: terminal(fake_server))
    [final] = terminal(fake_server)
    assert final.state == runs.FAILED
    assert "no input within 1 s for: database_password, upstream_token" in final.error_message
    assert asks(fake_server)  # it did ask first


def test_restart_while_waiting_asks_again_for_the_same_run(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    config = enrolled(tmp_path, fake_server)
    with daemon(config):
        wait_for(lambda: asks(fake_server))
    [before] = asks(fake_server)
    assert not terminal(fake_server)  # stopping left the run waiting

    with daemon(config):
        wait_for(lambda: len(asks(fake_server)) == 2)
        after = asks(fake_server)[1]
        assert after.run_id == before.run_id
        # The same fields: the same request, so answers sent for it still count.
        assert after.input_request.request_id == before.input_request.request_id
        assert [f.name for f in after.input_request.fields] == [
            "database_password",
            "upstream_token",
        ]
        answer(
            fake_server,
            "a-new",
            before,
            database_password=DB_PASSWORD,
            upstream_token=UPSTREAM_TOKEN,
        )
        wait_for(lambda: terminal(fake_server))
    [final] = terminal(fake_server)
    assert final.run_id == before.run_id and final.state == runs.SUCCEEDED
    with fake_server.lock:
        detections = [
            e
            for e in fake_server.stored.values()
            if e.event_type == events.DETECTION and e.run_id == before.run_id
        ]
    assert len(detections) == 1
    assert not notices(fake_server)


def test_answers_sent_while_the_agent_was_down_are_accepted(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    config = enrolled(tmp_path, fake_server)
    with daemon(config):
        wait_for(lambda: asks(fake_server))
    [before] = asks(fake_server)
    # The admin answers while the agent is down: delivered with its first check-in, which may
    # come before or after the resumed run asks again.
    answer(
        fake_server, "a-down", before, database_password=DB_PASSWORD, upstream_token=UPSTREAM_TOKEN
    )
    with daemon(config):
        wait_for(lambda: terminal(fake_server))
        wait_for(lambda: "a-down" in fake_server.action_acks)
    [final] = terminal(fake_server)
    assert final.run_id == before.run_id and final.state == runs.SUCCEEDED
    assert not notices(fake_server)  # nothing refused as stale
    assert json.loads(secrets_file(tmp_path).read_text())["database_password"] == DB_PASSWORD


def test_once_times_out_a_waiting_run(tmp_path: Path, fake_server: FakeServer) -> None:
    config = enrolled(tmp_path, fake_server, FLAGPOST_AGENT_INPUT_TIMEOUT_SECONDS="1")
    with Agent(config) as agent:
        assert agent.once() == 0
    [ask] = asks(fake_server)
    assert not terminal(fake_server)
    time.sleep(1.1)
    with Agent(config) as agent:
        assert agent.once() == 0
    [final] = terminal(fake_server)
    assert final.run_id == ask.run_id and final.state == runs.FAILED
    assert "no input within 1 s for: database_password, upstream_token" in final.error_message
    assert not (config.state_dir / "waiting-runs.json").exists()
    assert not secrets_file(tmp_path).exists()


def test_once_cancels_a_waiting_run(tmp_path: Path, fake_server: FakeServer) -> None:
    config = enrolled(tmp_path, fake_server)
    before = snapshot(tmp_path / "etc")
    with Agent(config) as agent:
        assert agent.once() == 0
    [ask] = asks(fake_server)
    with fake_server.lock:
        fake_server.actions.append(signed_action("a-c1", "cancel_run", {"run_id": ask.run_id}))
    with Agent(config) as agent:
        assert agent.once() == 0
    [final] = terminal(fake_server)
    assert final.run_id == ask.run_id and final.state == runs.CANCELLED
    assert final.error_message == (
        "Migration 1 -> 4 cancelled while waiting for input; nothing was changed"
    )
    with fake_server.lock:
        [execution] = [
            e
            for e in fake_server.stored.values()
            if e.event_type == events.EXECUTION and e.run_id == ask.run_id
        ]
    assert execution.error_detail.exception_type == "RunCancelled"
    assert "action a-c1" in execution.error_message
    assert "a-c1" in fake_server.action_acks
    assert not notices(fake_server)  # not refused as "not in progress"
    assert snapshot(tmp_path / "etc") == before
    assert not (config.state_dir / "waiting-runs.json").exists()
    # A cancel for a run that is neither in progress nor waiting is still refused.
    with fake_server.lock:
        fake_server.actions.append(signed_action("a-c2", "cancel_run", {"run_id": ask.run_id}))
    with Agent(config) as agent:
        assert agent.once() == 0
    assert any("a-c2 (cancel_run) ignored" in n.message for n in notices(fake_server))


def test_cancel_at_the_restarted_daemons_first_check_in(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    """The cancel may arrive before the restarted daemon resumed the run (then it is marked
    and ended when resumed) or after (then it is in progress): CANCELLED either way."""
    config = enrolled(tmp_path, fake_server)
    with daemon(config):
        wait_for(lambda: asks(fake_server))
    [ask] = asks(fake_server)
    with fake_server.lock:
        fake_server.actions.append(signed_action("a-c3", "cancel_run", {"run_id": ask.run_id}))
    with daemon(config):
        wait_for(lambda: terminal(fake_server))
        wait_for(lambda: "a-c3" in fake_server.action_acks)
    [final] = terminal(fake_server)
    assert final.run_id == ask.run_id and final.state == runs.CANCELLED
    assert not notices(fake_server)
    assert not (config.state_dir / "waiting-runs.json").exists()
    assert not secrets_file(tmp_path).exists()
