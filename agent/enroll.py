"""Enrollment: trade an enrollment token for an agent id and credential, stored 0600.

``state_dir/credentials.json`` holds ``agent_id``, ``credential``, ``server``, the server's
``checkin_interval_seconds``, the server's Ed25519 public key pinned at enrollment
(``server_signing_key``, hex: every action must be signed with it, see
:mod:`agent.action_verify`) and the credential's expiry (``credential_expires_at``, ISO 8601,
"" = never). It is created with ``os.open(..., 0o600)`` (never world-readable, not even
briefly), fsynced and renamed into place. A credential rotated in by the server
(``CheckInResponse.new_credential``) replaces the old one the same way, before it is used. The
credential is never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from agent.diagnose import state_dir_error, unreachable_reason
from agent.errors import EXIT_USAGE, AgentError
from agent.migrations.fsops import atomic_write
from agent.tls import ChannelError, ChannelSecurity, open_channel
from flagpost.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)


class EnrollmentError(AgentError):
    """Enrollment failed, or the stored credentials are missing or unreadable."""


class CredentialsError(EnrollmentError):
    """The stored credentials cannot be read: a configuration problem, not a refusal."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True, slots=True)
class Credentials:
    """What enrollment gave us. ``repr`` never shows the credential."""

    agent_id: str
    credential: str
    server: str
    checkin_interval_seconds: int = 0
    server_signing_key: bytes = b""  # pinned at enrollment; b"": none (re-enroll)
    credential_expires_at: str = ""  # ISO 8601; "": never

    def __repr__(self) -> str:
        return (
            f"Credentials(agent_id={self.agent_id!r}, credential='***', server={self.server!r}, "
            f"checkin_interval_seconds={self.checkin_interval_seconds}, "
            f"server_signing_key={self.server_signing_key.hex()[:16]!r}, "
            f"credential_expires_at={self.credential_expires_at!r})"
        )

    def rotated(self, credential: str, expires_at: datetime | None) -> Credentials:
        """These credentials with a new credential (from a rotation) and its expiry."""
        return replace(
            self,
            credential=credential,
            credential_expires_at=expires_at.isoformat() if expires_at is not None else "",
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
            "server_signing_key": credentials.server_signing_key.hex(),
            "credential_expires_at": credentials.credential_expires_at,
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
        raise CredentialsError(f"{path}: cannot read credentials: {exc}") from exc
    try:
        return Credentials(
            agent_id=str(data["agent_id"]),
            credential=str(data["credential"]),
            server=str(data.get("server", "")),
            checkin_interval_seconds=int(data.get("checkin_interval_seconds", 0)),
            server_signing_key=bytes.fromhex(str(data.get("server_signing_key", ""))),
            credential_expires_at=str(data.get("credential_expires_at", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CredentialsError(f"{path}: malformed credentials ({type(exc).__name__})") from exc


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
        details = unreachable_reason(server, exc.details())
        raise EnrollmentError(f"enrollment at {server} failed: {details}") from None
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
            details = str(exc.details())
            if code == grpc.StatusCode.UNAVAILABLE:
                details = unreachable_reason(server, details)
            elif code == grpc.StatusCode.UNAUTHENTICATED:
                details += (
                    "; make a new one on the server with `flagpost-server token create` "
                    "and pass it with --token or --token-file"
                )
            message = f"enrollment at {server} failed: {name}: {details}"
            raise EnrollmentError(message) from None
    if not response.agent_id or not response.credential:
        raise EnrollmentError(f"enrollment at {server} returned no agent id or credential")
    if len(response.server_signing_key) != 32:
        raise EnrollmentError(
            f"enrollment at {server} returned no server signing key (32 bytes expected, got "
            f"{len(response.server_signing_key)}): the server is too old for this agent"
        )
    expires = (
        response.credential_expires_at.ToDatetime(tzinfo=UTC).isoformat()
        if response.HasField("credential_expires_at")
        else ""
    )
    credentials = Credentials(
        agent_id=response.agent_id,
        credential=response.credential,
        server=server,
        checkin_interval_seconds=int(response.checkin_interval_seconds),
        server_signing_key=bytes(response.server_signing_key),
        credential_expires_at=expires,
    )
    try:
        save_credentials(credentials_path, credentials)
    except OSError as exc:
        raise state_dir_error(credentials_path.parent, credentials_path, exc) from exc
    log.info(
        "enrolled at %s as agent %s (server signing key %s pinned)",
        server,
        credentials.agent_id,
        hashlib.sha256(credentials.server_signing_key).hexdigest()[:16],
    )
    return credentials
