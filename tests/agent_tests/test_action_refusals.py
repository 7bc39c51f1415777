"""Signed actions, agent side: every action is verified with the server key pinned at
enrollment before anything else; each refusal is acknowledged, not executed, and reported as an
agent_notice warning naming the reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agent_testlib import (
    AGENT_ID,
    CREDENTIAL,
    SERVER_PUBLIC_KEY,
    FakeServer,
    signed_action,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import events
from agent.config import AgentConfig, load_config
from agent.daemon import Agent
from agent.enroll import Credentials, load_credentials, save_credentials
from flagpost.v1 import agent_pb2


def enrolled(root: Path, server: FakeServer, key: bytes = SERVER_PUBLIC_KEY) -> AgentConfig:
    config = load_config({"root": str(root)}, env={"FLAGPOST_AGENT_STARTUP_JITTER_SECONDS": "0"})
    save_credentials(
        config.credentials_path,
        Credentials(AGENT_ID, CREDENTIAL, server.address, 30, server_signing_key=key),
    )
    return config


def notices(agent: Agent) -> list[str]:
    return [e.message for e in agent.outbox.events() if e.event_type == events.AGENT_NOTICE]


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def refusals() -> list[tuple[str, agent_pb2.Action, str]]:
    good = signed_action("a-good", "run_migration")
    tampered_body = agent_pb2.Action(
        action_id="a-body", body=flip(good.body, len(good.body) // 2), signature=good.signature
    )
    tampered_signature = agent_pb2.Action(
        action_id="a-sig", body=good.body, signature=flip(good.signature, 5)
    )
    return [
        ("unsigned", agent_pb2.Action(action_id="a-unsigned"), "unsigned action"),
        ("body", tampered_body, "bad signature"),
        ("signature", tampered_signature, "bad signature"),
        (
            "expired",
            signed_action(
                "a-expired", "run_migration", expires_at=datetime.now(UTC) - timedelta(seconds=1)
            ),
            "expired at",
        ),
        (
            "other-agent",
            signed_action("a-other", "run_migration", agent_id="agent-9999"),
            "addressed to another agent ('agent-9999'",
        ),
        (
            "other-key",
            signed_action("a-key", "run_migration", key=Ed25519PrivateKey.generate()),
            "bad signature",
        ),
        (
            "mismatched-id",
            agent_pb2.Action(action_id="a-envelope", body=good.body, signature=good.signature),
            "names another action id ('a-good')",
        ),
    ]


@pytest.mark.parametrize(
    ("action", "reason"),
    [pytest.param(a, r, id=name) for name, a, r in refusals()],
)
def test_bad_actions_are_refused_reported_and_not_executed(
    tmp_path: Path, fake_server: FakeServer, action: agent_pb2.Action, reason: str
) -> None:
    config = enrolled(tmp_path, fake_server)
    with Agent(config) as agent:
        result = agent.check_in()  # nothing delivered yet: a heartbeat
        assert result.ok
        fake_server.actions = [action]
        result = agent.check_in()
        assert [a.action_id for a in result.actions] == [action.action_id]
        agent.handle_actions(result.actions, agent.outbox)
        assert agent.run_requested() == 0  # nothing queued, nothing executed
        [message] = notices(agent)
        assert message.startswith(f"Action {action.action_id} refused: ")
        assert reason in message
        agent.check_in()  # acknowledges the action, delivers the notice
    assert action.action_id in fake_server.action_acks
    stored = [e for e in fake_server.stored.values() if e.event_type == events.AGENT_NOTICE]
    assert [e.status for e in stored] == [events.WARNING]
    assert reason in stored[0].message
    assert not fake_server.stored_updates  # no run was started


def test_without_a_pinned_key_every_action_is_refused(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    config = enrolled(tmp_path, fake_server, key=b"")  # enrolled by an older agent
    with Agent(config) as agent:
        agent.handle_actions([signed_action("a-1", "run_migration")], agent.outbox)
        assert agent.run_requested() == 0
        [message] = notices(agent)
    assert "no pinned server signing key" in message and "re-enroll" in message


def test_a_replay_is_refused_after_execution_and_after_a_restart(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    config = enrolled(tmp_path, fake_server)
    action = signed_action("a-run", "run_migration")
    with Agent(config) as agent:
        fake_server.actions = [action]
        assert agent.once() == 0  # executes it and acknowledges it
        assert any(u.requested_by_action_id == "a-run" for u in fake_server.stored_updates.values())
        runs_before = len(fake_server.stored_updates)
        # The same bytes again, after the server had our acknowledgement.
        fake_server.actions = [action]
        assert agent.once() == 0
        assert any(
            "a-run refused: replayed" in m for m in notices(agent) + stored_notices(fake_server)
        )
        assert len(fake_server.stored_updates) == runs_before
    # Restart (a new process on the same state dir), and the same action once more; also a
    # different action id reusing the nonce (a signed body is what counts).
    with Agent(config) as agent:
        fake_server.actions = [action]
        assert agent.once() == 0
        assert len(fake_server.stored_updates) == runs_before
    replays = [m for m in stored_notices(fake_server) if "a-run refused: replayed" in m]
    assert len(replays) == 2
    assert fake_server.action_acks.count("a-run") == 3


def stored_notices(server: FakeServer) -> list[str]:
    with server.lock:
        return [e.message for e in server.stored.values() if e.event_type == events.AGENT_NOTICE]


def test_a_reused_nonce_is_refused_and_nonces_are_pruned_after_expiry(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    config = enrolled(tmp_path, fake_server)
    nonce = bytes(range(16))
    first = signed_action("a-first", "cancel_run", {"run_id": "r-1"}, nonce=nonce)
    second = signed_action("a-second", "cancel_run", {"run_id": "r-1"}, nonce=nonce)
    with Agent(config) as agent:
        agent.handle_actions([first, second], agent.outbox)
        messages = notices(agent)
        assert agent.outbox.runs.nonce_count() == 1
        # A nonce is kept until its action's expiry plus a margin, then pruned.
        long_gone = datetime.now(UTC) - timedelta(days=1)
        assert agent.outbox.runs.claim_nonce(b"\x01" * 16, "a-old", long_gone) is None
        assert agent.outbox.runs.claim_nonce(b"\x02" * 16, "a-new", datetime.now(UTC)) is None
        assert agent.outbox.runs.nonce_count() == 2  # a-old's was pruned by the later claim
    assert any("a-first (cancel_run) ignored: run r-1 is not in progress" in m for m in messages)
    assert any(
        "a-second refused: replayed (its nonce was already used by action a-first)" in m
        for m in messages
    )


def test_enrollment_pins_the_server_key(tmp_path: Path, fake_server: FakeServer) -> None:
    from agent.enroll import enroll

    path = tmp_path / "credentials.json"
    credentials = enroll(
        fake_server.address, "enroll-token-abc", agent_pb2.HostFacts(hostname="h"), path
    )
    assert credentials.server_signing_key == SERVER_PUBLIC_KEY
    assert json.loads(path.read_text())["server_signing_key"] == SERVER_PUBLIC_KEY.hex()
    loaded = load_credentials(path)
    assert loaded is not None and loaded.server_signing_key == SERVER_PUBLIC_KEY
    assert CREDENTIAL not in repr(loaded)


def test_an_expired_refusal_shows_both_clocks_and_points_at_skew() -> None:
    from agent.action_verify import ActionRefused, verify

    issued = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    action = signed_action("a-late", "run_migration", issued_at=issued)  # lifetime 10 min

    # The agent's clock is an hour ahead: the server sent it unexpired, it arrives expired.
    ahead = issued + timedelta(hours=1)
    with pytest.raises(ActionRefused) as refused:
        verify(action, SERVER_PUBLIC_KEY, AGENT_ID, ahead)
    reason = refused.value.reason
    assert reason.startswith("expired at 2030-01-01T12:10:00+00:00 ")
    assert "agent clock 2030-01-01T13:00:00+00:00" in reason
    assert "issued at 2030-01-01T12:00:00+00:00" in reason
    assert "lifetime (600 s)" in reason and "3000 s past its expiry" in reason
    assert "clock skew" in reason

    # Expired a moment ago (it could have been late in transit): the times, no skew claim.
    just = issued + timedelta(minutes=10, seconds=2)
    with pytest.raises(ActionRefused) as refused:
        verify(action, SERVER_PUBLIC_KEY, AGENT_ID, just)
    reason = refused.value.reason
    assert "agent clock 2030-01-01T12:10:02+00:00" in reason and "issued at 2030-" in reason
    assert "clock skew" not in reason

    # Issued in the future by the agent's clock.
    future = signed_action(
        "a-future",
        "run_migration",
        issued_at=issued,
        expires_at=issued - timedelta(hours=2),
    )
    with pytest.raises(ActionRefused) as refused:
        verify(future, SERVER_PUBLIC_KEY, AGENT_ID, issued - timedelta(hours=1))
    reason = refused.value.reason
    assert "issued 3600 s in the future by the agent's clock" in reason
    assert "clock skew" in reason
