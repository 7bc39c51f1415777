"""Enrollment: trade an enrollment token for an agent id and credential, stored 0600.

``state_dir/credentials.json`` holds ``agent_id``, ``credential``, ``server`` and the server's
``checkin_interval_seconds``. It is created with ``os.open(..., 0o600)`` (never world-readable,
not even briefly), fsynced and renamed into place. The credential is never logged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc

from agent.migrations.fsops import atomic_write
from agent.tls import ChannelError, ChannelSecurity, open_channel
from flagpost.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)


class EnrollmentError(Exception):
    """Enrollment failed, or the stored credentials are missing or unreadable."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What enrollment gave us. ``repr`` never shows the credential."""

    agent_id: str
    credential: str
    server: str
    checkin_interval_seconds: int = 0

    def __repr__(self) -> str:
        return (
            f"Credentials(agent_id={self.agent_id!r}, credential='***', server={self.server!r}, "
            f"checkin_interval_seconds={self.checkin_interval_seconds})"
        )

    @property
    def checkin_interval(self) -> timedelta | None:
        if self.checkin_interval_seconds <= 0:
            return None
        return timedelta(seconds=self.checkin_interval_seconds)


def save_credentials(path: Path, credentials: Credentials) -> None:
    """Write ``credentials`` atomically with mode 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(
        {
            "agent_id": credentials.agent_id,
            "credential": credentials.credential,
            "server": credentials.server,
            "checkin_interval_seconds": credentials.checkin_interval_seconds,
        },
        indent=2,
    ).encode("utf-8")
    atomic_write(path, data, 0o600)


def load_credentials(path: Path) -> Credentials | None:
    """The stored credentials, None if the agent is not enrolled. Raises
    :class:`EnrollmentError` if the file exists but is unreadable or malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise EnrollmentError(f"{path}: cannot read credentials: {exc}") from exc
    try:
        return Credentials(
            agent_id=str(data["agent_id"]),
            credential=str(data["credential"]),
            server=str(data.get("server", "")),
            checkin_interval_seconds=int(data.get("checkin_interval_seconds", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise EnrollmentError(f"{path}: malformed credentials ({type(exc).__name__})") from exc


def enroll(
    server: str,
    token: str,
    facts: agent_pb2.HostFacts,
    credentials_path: Path,
    timeout: timedelta = timedelta(seconds=10),
    security: ChannelSecurity | None = None,
) -> Credentials:
    """Call ``Enroll`` on ``server`` (host:port) and store the credentials. Raises
    :class:`EnrollmentError` with the gRPC status on failure (the token is never included).
    ``security``: TLS settings for the channel (:mod:`agent.tls`); None is plain text."""
    if not server:
        raise EnrollmentError("no server address: pass --server HOST:PORT")
    if not token:
        raise EnrollmentError("no enrollment token")
    try:
        channel = open_channel(server, security, timeout.total_seconds())
    except ChannelError as exc:
        raise EnrollmentError(f"enrollment at {server} failed: {exc.details()}") from None
    with channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        try:
            response = stub.Enroll(
                agent_pb2.EnrollRequest(token=token, facts=facts),
                timeout=timeout.total_seconds(),
            )
        except grpc.RpcError as exc:
            code = exc.code()
            name = code.name if code is not None else "UNKNOWN"
            message = f"enrollment at {server} failed: {name}: {exc.details()}"
            raise EnrollmentError(message) from None
    if not response.agent_id or not response.credential:
        raise EnrollmentError(f"enrollment at {server} returned no agent id or credential")
    credentials = Credentials(
        agent_id=response.agent_id,
        credential=response.credential,
        server=server,
        checkin_interval_seconds=int(response.checkin_interval_seconds),
    )
    save_credentials(credentials_path, credentials)
    log.info("enrolled at %s as agent %s", server, credentials.agent_id)
    return credentials
