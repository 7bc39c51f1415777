"""Helpers for the agent tests (a uniquely named module: tests/ has no __init__ files)."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from unprivileged_testlib import nobody_runtime

from agent.config import AgentConfig, load_config
from agent.daemon import Agent
from agent.enroll import Credentials, save_credentials
from flagpost.v1 import agent_pb2, agent_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


NOBODY = 65534
AGENT_ID = "agent-0001"
CREDENTIAL = "cred-secret-xyz-0123456789"
# The fake server's action-signing key; agents "enrolled" by these tests pin its public half.
SERVER_KEY = Ed25519PrivateKey.generate()
SERVER_PUBLIC_KEY = SERVER_KEY.public_key().public_bytes(
    serialization.Encoding.Raw, serialization.PublicFormat.Raw
)


def signed_action(
    action_id: str,
    kind: str,
    params: Mapping[str, str] | None = None,
    *,
    agent_id: str = AGENT_ID,
    expires_at: datetime | None = None,
    nonce: bytes | None = None,
    key: Ed25519PrivateKey = SERVER_KEY,
    issued_at: datetime | None = None,
) -> agent_pb2.Action:
    """An action as the real server sends it: a serialized ActionBody signed with ``key``
    (default: the fake server's). Issued now and expires 10 minutes later unless ``issued_at``
    / ``expires_at`` say otherwise."""
    now = issued_at or datetime.now(UTC)
    body = agent_pb2.ActionBody(
        action_id=action_id,
        agent_id=agent_id,
        kind=kind,
        params=dict(params or {}),
        nonce=nonce if nonce is not None else secrets.token_bytes(16),
    )
    body.issued_at.FromDatetime(now)
    body.expires_at.FromDatetime(expires_at or now + timedelta(minutes=10))
    raw = body.SerializeToString()
    return agent_pb2.Action(action_id=action_id, body=raw, signature=key.sign(raw))


ENROLL_TOKEN = "enroll-token-abc"
AGENT_TOKEN = "tok-SECRET-legacy-42"

LEGACY_CONF = f"""# aggregator agent config
server_url = https://flagpost.example:8443
agent_token = {AGENT_TOKEN}
check_interval = 30

log_level = info
proxy = http://proxy.local:3128
"""


def write_legacy(root: Path, text: str = LEGACY_CONF, mode: int = 0o640) -> Path:
    """A v1 config under ``root``."""
    path = root / "etc/aggregator/agent.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``directory``: relative path -> (bytes, permission bits)."""
    result = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            result[str(path.relative_to(directory))] = (
                path.read_bytes(),
                stat.S_IMODE(path.stat().st_mode),
            )
    return result


def agent_env(**extra: str) -> dict[str, str]:
    """Environment for an agent subprocess: no inherited FLAGPOST_AGENT_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_AGENT_")}
    env.update(extra)
    return env


def run_agent(
    *args: str, env: dict[str, str] | None = None, as_nobody: bool = False, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m agent ARGS`` in a subprocess (optionally as the unprivileged ``nobody``,
    from the session's copy of the agent that nobody can read: see unprivileged_testlib)."""
    command = [sys.executable, "-m", "agent", *args]
    env = env or agent_env()
    cwd = REPO
    if as_nobody:
        runtime = nobody_runtime()
        assert runtime.user.pw_uid == NOBODY
        command, env, cwd = runtime.command(*args), runtime.env(env), runtime.path
    return subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


@dataclass
class FakeServer:
    """A real gRPC AgentService on 127.0.0.1:<port 0> whose answers tests can script."""

    address: str = ""
    checkins: list[agent_pb2.CheckInRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    stored: dict[str, agent_pb2.MigrationEvent] = field(default_factory=dict)
    enrolls: list[agent_pb2.EnrollRequest] = field(default_factory=list)
    # Each failure: (code, details, trailing metadata) answered to one CheckIn, in order.
    failures: list[tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]] = field(
        default_factory=list
    )
    reject_event_ids: set[str] = field(default_factory=set)
    reject_event_types: set[int] = field(default_factory=set)
    ack_none: bool = False
    next_checkin_seconds: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Runs: stored like the real server (idempotent by update_id / (run_id, seq)).
    stored_updates: dict[str, agent_pb2.RunUpdate] = field(default_factory=dict)
    stored_lines: dict[tuple[str, int], agent_pb2.LogLine] = field(default_factory=dict)
    ack_runs: bool = True  # False: behave like a server that ignores run updates and log lines
    reject_update_ids: set[str] = field(default_factory=set)
    actions: list[agent_pb2.Action] = field(default_factory=list)  # sent once, next response
    action_acks: list[str] = field(default_factory=list)
    checkin_times: list[float] = field(default_factory=list)  # time.monotonic() of each CheckIn
    # Bearer credentials accepted (beside CREDENTIAL); rotate_to: sent as new_credential in the
    # next response (once).
    accepted: set[str] = field(default_factory=set)
    rotate_to: str = ""

    def updates_of(self, run_id: str) -> list[agent_pb2.RunUpdate]:
        """Stored updates of one run, in update_id (= time) order."""
        with self.lock:
            found = [u for u in self.stored_updates.values() if u.run_id == run_id]
        return sorted(found, key=lambda u: u.update_id)

    def lines_of(self, run_id: str) -> list[agent_pb2.LogLine]:
        """Stored lines of one run, by seq."""
        with self.lock:
            found = [line for key, line in self.stored_lines.items() if key[0] == run_id]
        return sorted(found, key=lambda line: line.seq)


class FakeServicer(agent_pb2_grpc.AgentServiceServicer):  # type: ignore[misc]
    def __init__(self, state: FakeServer) -> None:
        self.state = state

    def Enroll(self, request, context):  # type: ignore[no-untyped-def]
        with self.state.lock:
            self.state.enrolls.append(request)
        if request.token != ENROLL_TOKEN:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "enrollment token unknown or expired")
        return agent_pb2.EnrollResponse(
            agent_id=AGENT_ID,
            credential=CREDENTIAL,
            checkin_interval_seconds=30,
            server_signing_key=SERVER_PUBLIC_KEY,
        )

    def CheckIn(self, request, context):  # type: ignore[no-untyped-def]
        state = self.state
        with state.lock:
            state.checkins.append(request)
            state.checkin_times.append(time.monotonic())
            state.metadata.append(dict(context.invocation_metadata()))
            failure = state.failures.pop(0) if state.failures else None
        if failure is not None:
            code, details, trailing = failure
            if trailing:
                context.set_trailing_metadata(trailing)
            context.abort(code, details)
        bearer = dict(context.invocation_metadata()).get("authorization", "")
        with state.lock:
            accepted = {f"Bearer {c}" for c in (CREDENTIAL, *state.accepted)}
        if bearer not in accepted:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad credential")
        for index, event in enumerate(request.events):
            if event.event_id in state.reject_event_ids:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"events[{index}].occurred_at: timestamp out of range",
                )
            if event.event_type in state.reject_event_types:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"events[{index}].event_type: unknown event type {event.event_type}",
                )
        for index, update in enumerate(request.run_updates):
            if update.update_id in state.reject_update_ids:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"run_updates[{index}].state: invalid transition",
                )
        with state.lock:
            for event in request.events:
                state.stored.setdefault(event.event_id, event)
            state.action_acks.extend(request.acknowledged_action_ids)
            actions, state.actions = state.actions, []
            rotate_to, state.rotate_to = state.rotate_to, ""
            if state.ack_runs:
                for update in request.run_updates:
                    state.stored_updates.setdefault(update.update_id, update)
                for line in request.log_lines:
                    state.stored_lines.setdefault((line.run_id, line.seq), line)
        acked = [] if state.ack_none else [event.event_id for event in request.events]
        response = agent_pb2.CheckInResponse(
            acknowledged_event_ids=acked,
            next_checkin_seconds=state.next_checkin_seconds,
            actions=actions,
            new_credential=rotate_to,
        )
        if state.ack_runs:
            response.acknowledged_run_update_ids.extend(u.update_id for u in request.run_updates)
            by_run: dict[str, list[int]] = {}
            for line in request.log_lines:
                by_run.setdefault(line.run_id, []).append(line.seq)
            response.acknowledged_log_lines.extend(
                agent_pb2.LogAck(run_id=run_id, seqs=seqs) for run_id, seqs in by_run.items()
            )
        return response


def enrolled_fast(root: Path, server: FakeServer, **settings: str) -> AgentConfig:
    """An agent config under ``root``, enrolled with ``server`` (credentials and the pinned key
    saved), no start-up jitter and a fast run cadence; ``settings``: more FLAGPOST_AGENT_ env."""
    env = {
        "FLAGPOST_AGENT_STARTUP_JITTER_SECONDS": "0",
        "FLAGPOST_AGENT_FAST_CHECKIN_INTERVAL_SECONDS": "0.3",
        "FLAGPOST_AGENT_FAST_CHECKIN_LINGER_SECONDS": "1",
        **settings,
    }
    return enrolled_config(root, server, **env)


def enrolled_config(root: Path, server: FakeServer, **settings: str) -> AgentConfig:
    """An agent config under ``root`` (``settings``: FLAGPOST_AGENT_ environment), enrolled
    with ``server``: credentials and the server's pinned key saved as enrollment would."""
    config = load_config({"root": str(root)}, env=settings)
    save_credentials(
        config.credentials_path,
        Credentials(
            "agent-0001",
            CREDENTIAL,
            server.address,
            checkin_interval_seconds=30,
            server_signing_key=SERVER_PUBLIC_KEY,
        ),
    )
    return config


@contextmanager
def daemon(config: AgentConfig) -> Iterator[None]:
    """``Agent.run`` on a thread (the agent's SQLite connection belongs to that thread)."""
    holder: dict[str, Agent] = {}
    ready = threading.Event()

    def target() -> None:
        with Agent(config) as agent:
            holder["agent"] = agent
            ready.set()
            agent.run()

    thread = threading.Thread(target=target)
    thread.start()
    assert ready.wait(10)
    try:
        yield
    finally:
        holder["agent"].request_stop()
        thread.join(30)
        assert not thread.is_alive()


def wait_for(predicate: Callable[[], object], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
