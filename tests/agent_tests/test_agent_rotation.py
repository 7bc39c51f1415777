"""Credential rotation, agent side, against a real gRPC server on port 0: the rotated credential
is stored over the credentials file as it is now (re-read first), never over another agent's
credentials written by a re-enrollment meanwhile, and the daemon checks in with what the file
says."""

from __future__ import annotations

import json
import logging
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from agent_testlib import CREDENTIAL, SERVER_PUBLIC_KEY, FakeServer, enrolled_fast

from agent.checkin import CheckInClient
from agent.daemon import Agent
from agent.enroll import Credentials, load_credentials, save_credentials
from agent.outbox import Outbox
from flagpost.v1 import agent_pb2

FACTS = agent_pb2.HostFacts(hostname="h1", agent_version="0.1.0", config_version="4")
ROTATED = "rotated-cred-7d0a55e1"
REENROLLED = Credentials(
    "agent-0002", "reenrolled-cred-91c3", "", 45, server_signing_key=SERVER_PUBLIC_KEY
)


def cycle(client: CheckInClient, outbox: Outbox) -> bool:
    return client.cycle(outbox, FACTS, max_events=10, max_bytes=100_000, max_chunks=2).ok


def test_rotation_replaces_only_the_credential_of_the_stored_file(
    tmp_path: Path, fake_server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "credentials.json"
    loaded = Credentials("agent-0001", CREDENTIAL, fake_server.address, 30, SERVER_PUBLIC_KEY)
    save_credentials(path, loaded)
    client = CheckInClient(fake_server.address, loaded, timedelta(seconds=5), credentials_path=path)
    # The file changed after the client loaded it (same agent: e.g. a new interval).
    save_credentials(path, Credentials("agent-0001", CREDENTIAL, fake_server.address, 77))
    fake_server.rotate_to = ROTATED
    fake_server.accepted.add(ROTATED)
    with client, Outbox(tmp_path / "outbox.db") as outbox:
        assert cycle(client, outbox)
        stored = load_credentials(path)
        assert stored is not None
        assert (stored.agent_id, stored.credential) == ("agent-0001", ROTATED)
        assert stored.checkin_interval_seconds == 77  # the file as it is now, not as loaded
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert cycle(client, outbox)
    with fake_server.lock:
        assert fake_server.metadata[-1]["authorization"] == f"Bearer {ROTATED}"
    assert ROTATED not in caplog.text


def test_rotation_never_overwrites_a_re_enrollment(
    tmp_path: Path, fake_server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "credentials.json"
    loaded = Credentials("agent-0001", CREDENTIAL, fake_server.address, 30, SERVER_PUBLIC_KEY)
    save_credentials(path, loaded)
    client = CheckInClient(fake_server.address, loaded, timedelta(seconds=5), credentials_path=path)
    save_credentials(path, REENROLLED)  # someone re-enrolled while the daemon ran
    before = path.read_bytes()
    fake_server.rotate_to = ROTATED
    fake_server.accepted.add(REENROLLED.credential)
    with client, Outbox(tmp_path / "outbox.db") as outbox:
        assert cycle(client, outbox)  # answered with a rotation for agent-0001
        assert path.read_bytes() == before  # the new enrollment is kept as it is
        assert cycle(client, outbox)
    assert "now names agent agent-0002" in caplog.text
    assert ROTATED not in caplog.text and REENROLLED.credential not in caplog.text
    with fake_server.lock:
        last, metadata = fake_server.checkins[-1], fake_server.metadata[-1]
    # From the next call on the client is the agent the file names.
    assert last.agent_id == "agent-0002"
    assert metadata["authorization"] == f"Bearer {REENROLLED.credential}"


def test_the_daemon_checks_in_as_the_agent_the_file_names(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    config = enrolled_fast(tmp_path, fake_server)
    fake_server.accepted.add(REENROLLED.credential)
    with Agent(config) as agent:
        assert agent.check_in().ok
        save_credentials(
            config.credentials_path,
            Credentials(
                REENROLLED.agent_id,
                REENROLLED.credential,
                fake_server.address,
                server_signing_key=SERVER_PUBLIC_KEY,
            ),
        )
        assert agent.check_in().ok
        with fake_server.lock:
            assert fake_server.checkins[-1].agent_id == "agent-0002"
        stored = json.loads(config.credentials_path.read_text())
        assert (stored["agent_id"], stored["credential"]) == ("agent-0002", REENROLLED.credential)
