"""TLS for both transports: the server's certificate files, and a development CA.

``load_server_tls(config)`` reads ``tls_cert_file`` / ``tls_key_file`` (and, for mutual TLS,
``tls_client_ca_file``) once at start-up; the gRPC server gets :func:`grpc_server_credentials`
(client certificates required when a client CA is set) and the web server an ``ssl.SSLContext``
from :func:`web_ssl_context` (browsers present no certificate, so the web never asks for one).

``write_selfsigned(out, hosts)`` is ``flagpost-server tls selfsigned``: a development CA, a
server certificate for ``hosts`` signed by it, and an agent client certificate for mutual TLS.
Private keys are created 0600 from the first byte; existing files are never overwritten.

Without TLS, a server listening on an address other than loopback prints a loud warning
(:func:`warn_if_plaintext`): agent credentials would cross the network in clear text.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server.config import ServerConfig
from server.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """The server's certificate chain and key (PEM), and the CA agents' certificates must
    chain to (mutual TLS) or None."""

    cert_file: Path
    key_file: Path
    cert_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)  # never in a repr, a log or a test failure
    client_ca: bytes | None = field(repr=False)

    @property
    def mutual(self) -> bool:
        """True when agents must present a client certificate."""
        return self.client_ca is not None

    @property
    def fingerprint(self) -> str:
        """sha256 of the server certificate (the first in the chain), as agents pin it."""
        return cert_fingerprint(self.cert_chain)


def cert_fingerprint(pem: bytes) -> str:
    """Lower-case hex sha256 of the DER form of the first certificate in ``pem``."""
    text = pem.decode("ascii", errors="replace")
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end_marker = "-----END CERTIFICATE-----"
    end = text.find(end_marker, begin)
    if begin < 0 or end < 0:
        raise ConfigError("no PEM certificate found")
    der = ssl.PEM_cert_to_DER_cert(text[begin : end + len(end_marker)] + "\n")
    return hashlib.sha256(der).hexdigest()


def _read(name: str, value: str) -> bytes:
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise ConfigError(f"config {name}: cannot read {value}: {exc.strerror}") from exc


def load_server_tls(config: ServerConfig) -> ServerTLS | None:
    """The TLS material of ``config``, None when TLS is off. Raises ConfigError when only one
    of cert and key is set, a client CA is set without them, or a file is unreadable or not a
    usable certificate/key pair."""
    cert, key, client_ca = config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file
    if not cert and not key:
        if client_ca:
            raise ConfigError("config tls_client_ca_file needs tls_cert_file and tls_key_file")
        return None
    if not cert or not key:
        raise ConfigError("config tls_cert_file and tls_key_file must be set together")
    tls = ServerTLS(
        cert_file=Path(cert),
        key_file=Path(key),
        cert_chain=_read("tls_cert_file", cert),
        private_key=_read("tls_key_file", key),
        client_ca=_read("tls_client_ca_file", client_ca) if client_ca else None,
    )
    web_ssl_context(tls)  # fails now, with a clear message, on a mismatched or broken pair
    return tls


def grpc_server_credentials(tls: ServerTLS) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port``; client certificates required under mutual TLS."""
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.cert_chain)],
        root_certificates=tls.client_ca,
        require_client_auth=tls.mutual,
    )


def web_ssl_context(tls: ServerTLS) -> ssl.SSLContext:
    """The web server's context: TLS 1.2+, the server certificate, no client certificates."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"config tls_cert_file/tls_key_file: not a usable certificate and key: {exc}"
        ) from exc
    return context


def is_loopback(host: str) -> bool:
    """True for loopback addresses and names; "" and wildcard addresses are not loopback."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def warn_if_plaintext(config: ServerConfig, stream: TextIO | None = None) -> list[str]:
    """Log a WARNING and write a line to ``stream`` (stderr) for every transport that serves
    plain text on a non-loopback address; returns the warnings."""
    if config.tls_cert_file:
        return []
    warnings = [
        f"WARNING: {name} serves PLAIN TEXT on {host}:{port} (not loopback): agent credentials "
        "and all data cross the network unencrypted; set tls_cert_file and tls_key_file "
        "(`flagpost-server tls selfsigned` makes development certificates)"
        for name, host, port in (
            ("gRPC", config.grpc_host, config.grpc_port),
            ("web", config.web_host, config.web_port),
        )
        if not is_loopback(host)
    ]
    out = sys.stderr if stream is None else stream
    for warning in warnings:
        log.warning("%s", warning)
        print(f"!!! {warning}", file=out, flush=True)
    return warnings


@dataclass(frozen=True, slots=True)
class SelfSignedFiles:
    """What ``write_selfsigned`` wrote, and the server certificate's sha256 fingerprint."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    agent_cert: Path
    agent_key: Path
    server_fingerprint: str


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    lifetime: dt.timedelta,
) -> x509.CertificateBuilder:
    """A certificate for ``key`` with a random serial, valid from 5 minutes ago (clock skew)
    for ``lifetime``."""
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signatures (ECDSA) for every certificate; key agreement (ECDHE) for a leaf, certificate
    and CRL signing for the CA."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf(
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    lifetime: dt.timedelta,
    usage: x509.ObjectIdentifier,
    hosts: Sequence[str] = (),
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _builder(subject, ca_cert.subject, key, lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(host) for host in hosts]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256())


def _ca(key: ec.EllipticCurvePrivateKey, lifetime: dt.timedelta) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Flagpost development CA")])
    return (
        _builder(name, name, key, lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


def write_selfsigned(
    out: Path, hosts: Sequence[str] = DEFAULT_HOSTS, days: int = 365
) -> SelfSignedFiles:
    """Write a development CA (``ca.pem``, ``ca-key.pem``), a server certificate for ``hosts``
    (IP addresses and DNS names; ``server.pem``, ``server-key.pem``) and an agent client
    certificate for mutual TLS (``agent.pem``, ``agent-key.pem``) into ``out`` (created if
    needed); keys are 0600. Raises ConfigError when a host is empty, ``days`` < 1 or a file
    already exists (nothing is overwritten)."""
    if days < 1:
        raise ConfigError("--days must be at least 1")
    if not hosts or any(not host.strip() for host in hosts):
        raise ConfigError("--host must name an IP address or DNS name")
    lifetime = dt.timedelta(days=days)
    ca_key, server_key, agent_key = _key(), _key(), _key()
    ca_cert = _ca(ca_key, lifetime)
    server_cert = _leaf(
        hosts[0], server_key, ca_cert, ca_key, lifetime, ExtendedKeyUsageOID.SERVER_AUTH, hosts
    )
    agent_cert = _leaf(
        "flagpost-agent", agent_key, ca_cert, ca_key, lifetime, ExtendedKeyUsageOID.CLIENT_AUTH
    )
    contents = {
        out / "ca.pem": (_cert_pem(ca_cert), 0o644),
        out / "ca-key.pem": (_key_pem(ca_key), 0o600),
        out / "server.pem": (_cert_pem(server_cert), 0o644),
        out / "server-key.pem": (_key_pem(server_key), 0o600),
        out / "agent.pem": (_cert_pem(agent_cert), 0o644),
        out / "agent-key.pem": (_key_pem(agent_key), 0o600),
    }
    existing = [str(path) for path in contents if path.exists()]
    if existing:
        raise ConfigError(f"refusing to overwrite {', '.join(existing)}")
    written: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for path, (data, mode) in contents.items():
            _write_new(path, data, mode)
            written.append(path)
    except OSError as exc:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise ConfigError(f"cannot write into {out}: {exc.strerror or exc}") from exc
    return SelfSignedFiles(
        ca_cert=out / "ca.pem",
        ca_key=out / "ca-key.pem",
        server_cert=out / "server.pem",
        server_key=out / "server-key.pem",
        agent_cert=out / "agent.pem",
        agent_key=out / "agent-key.pem",
        server_fingerprint=cert_fingerprint(_cert_pem(server_cert)),
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (never overwrite) with ``mode`` from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
