"""The agent's one way to open a channel to the server: plain text, or TLS that verifies it.

TLS is on when the config names a CA file (``ca_file``: the server's certificate must chain to
it and match the address) or pins the server certificate (``server_fingerprint``: its sha256).
With a pin, :func:`open_channel` first fetches the certificate the server presents, refuses to
go on unless its sha256 equals the pin, and then trusts exactly that certificate as the root
(or the CA file, when both are set): gRPC's own handshake then proves the server holds its key.
A client certificate and key (``client_cert_file`` / ``client_key_file``) are presented to a
server that requires mutual TLS.

Failures to set a channel up (unreadable files, no server, a certificate that does not match the
pin) raise :class:`ChannelError`, a ``grpc.RpcError`` with status UNAVAILABLE, so the check-in
and enrollment code handle them exactly like a server that cannot be reached: events stay in
the outbox and the agent retries with backoff.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from agent.config import AgentConfig
from agent.errors import AgentError


@dataclass(frozen=True, slots=True)
class ChannelSecurity:
    """How to reach the server: the TLS settings of :class:`agent.config.AgentConfig`."""

    ca_file: Path | None = None
    server_fingerprint: str = ""  # 64 lower-case hex digits, or "" (no pin)
    client_cert_file: Path | None = None
    client_key_file: Path | None = None

    @classmethod
    def from_config(cls, config: AgentConfig) -> ChannelSecurity:
        """The TLS settings of ``config``."""
        return cls(
            ca_file=config.ca_file,
            server_fingerprint=config.server_fingerprint,
            client_cert_file=config.client_cert_file,
            client_key_file=config.client_key_file,
        )

    @property
    def tls(self) -> bool:
        """True when the server is verified over TLS (a CA file or a pinned fingerprint)."""
        return self.ca_file is not None or bool(self.server_fingerprint)


class ChannelError(AgentError, grpc.RpcError):  # type: ignore[misc]
    """A channel to the server could not be set up; behaves as an RpcError (UNAVAILABLE)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self._message = message

    def code(self) -> grpc.StatusCode:
        """Always UNAVAILABLE: callers retry with backoff and keep what they have not sent."""
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        """The reason, naming the file, the address or the fingerprints involved."""
        return self._message

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """No server answered, so there is no metadata."""
        return ()


def certificate_fingerprint(der: bytes) -> str:
    """Lower-case hex sha256 of a DER certificate (the form ``server_fingerprint`` pins)."""
    return hashlib.sha256(der).hexdigest()


def _split_target(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ChannelError(f"server address {target!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def fetch_server_certificate(
    target: str, security: ChannelSecurity, timeout: float = 10.0
) -> bytes:
    """The DER certificate the server at ``target`` presents, unverified (the caller checks it
    against the pin). Presents the client certificate when one is configured."""
    host, port = _split_target(target)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only to read the certificate; trust comes from the pin
    if security.client_cert_file is not None and security.client_key_file is not None:
        try:
            context.load_cert_chain(security.client_cert_file, security.client_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ChannelError(f"client certificate/key unusable: {exc}") from None
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as conn,
        ):
            der = conn.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise ChannelError(f"cannot fetch the server certificate from {target}: {exc}") from None
    if not der:
        raise ChannelError(f"the server at {target} presented no certificate")
    return der


def _read(what: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ChannelError(f"cannot read {what} {path}: {exc.strerror}") from None


def channel_credentials(
    target: str, security: ChannelSecurity, timeout: float = 10.0
) -> grpc.ChannelCredentials:
    """TLS credentials for ``target`` under ``security`` (which must have ``tls``): the CA
    file, or the pinned certificate after checking the one the server presents."""
    root: bytes | None = None
    if security.server_fingerprint:
        der = fetch_server_certificate(target, security, timeout)
        seen = certificate_fingerprint(der)
        if seen != security.server_fingerprint:
            raise ChannelError(
                f"the server at {target} presented certificate sha256:{seen}, which does not "
                f"match the pinned server_fingerprint sha256:{security.server_fingerprint}; "
                "refusing to connect"
            )
        root = ssl.DER_cert_to_PEM_cert(der).encode("ascii")
    if security.ca_file is not None:
        root = _read("ca_file", security.ca_file)
    key = cert = None
    if security.client_cert_file is not None and security.client_key_file is not None:
        cert = _read("client_cert_file", security.client_cert_file)
        key = _read("client_key_file", security.client_key_file)
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )


def open_channel(
    target: str, security: ChannelSecurity | None = None, timeout: float = 10.0
) -> grpc.Channel:
    """A channel to ``target``: TLS verified as ``security`` says, plain text without TLS
    settings. Raises :class:`ChannelError` when TLS cannot be set up (see the module
    docstring); ``timeout`` bounds the certificate fetch of a pinned server."""
    if security is None or not security.tls:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, channel_credentials(target, security, timeout))
