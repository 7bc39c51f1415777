"""Issue 5, TLS: ``flagpost-server tls selfsigned``, gRPC and web over TLS, agent verification.

A real server on port 0 serves the certificates ``tls selfsigned`` wrote into ``tmp_path``; real
agent processes enroll and check in over TLS verified by the CA file or a pinned fingerprint. A
wrong CA or a wrong pin fails cleanly (events stay in the outbox, ``once`` exits non-zero);
under mutual TLS a client without a certificate is refused; the web serves HTTPS with the same
certificate; plain text on a non-loopback address prints a loud warning.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import re
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_testlib import logged_in_http
from sqlalchemy import func, select

from agent.config import AgentConfigError, load_config
from server import app_keys
from server.app import RunningServer, start_server
from server.config import ServerConfig
from server.config import load_config as load_server_config
from server.errors import ConfigError
from server.services.enrollment import create_token
from server.storage.models import UpdateEvent
from server.tls import warn_if_plaintext

REPO = Path(__file__).resolve().parent.parent
LEGACY = """\
# aggregator agent configuration
server_url = https://flagpost.example.net:50051
agent_token = tls-token-value
check_interval = 300
log_level = info
"""


def make_server_config(db_url: str, tmp_path: Path, **overrides: object) -> ServerConfig:
    """Ports 0, state in ``tmp_path``, no environment (tests/conftest.py's helper is shadowed
    by tests/agent_tests/conftest.py when both directories run together)."""
    settings: dict[str, object] = {
        "database_url": db_url,
        "grpc_port": 0,
        "web_port": 0,
        "state_dir": tmp_path / "server-state",
    }
    return load_server_config(env={}, overrides={**settings, **overrides})


@dataclass(frozen=True)
class Certs:
    """The files ``flagpost-server tls selfsigned`` wrote, and the fingerprint it printed."""

    out: Path
    fingerprint: str
    stdout: str

    def path(self, name: str) -> str:
        return str(self.out / name)


def selfsigned(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``flagpost-server tls selfsigned --out OUT EXTRA``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    return subprocess.run(
        [sys.executable, "-m", "server", "tls", "selfsigned", "--out", str(out), *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def make_certs(out: Path) -> Certs:
    done = selfsigned(out)
    assert done.returncode == 0, done.stderr
    match = re.search(r"server fingerprint:\s+sha256:([0-9a-f]{64})", done.stdout)
    assert match is not None, done.stdout
    return Certs(out=out, fingerprint=match.group(1), stdout=done.stdout)


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


@pytest.fixture
def other_certs(tmp_path: Path) -> Certs:
    """A second, unrelated development CA (the "wrong CA")."""
    return make_certs(tmp_path / "other-certs")


async def serve(sqlite_db_url: str, tmp_path: Path, **tls: str) -> RunningServer:
    config = make_server_config(sqlite_db_url, tmp_path, checkin_interval_seconds=1, **tls)
    return await start_server(config)


@pytest.fixture
async def tls_server(
    sqlite_db_url: str, tmp_path: Path, certs: Certs
) -> AsyncIterator[RunningServer]:
    server = await serve(
        sqlite_db_url,
        tmp_path,
        tls_cert_file=certs.path("server.pem"),
        tls_key_file=certs.path("server-key.pem"),
    )
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def mtls_server(
    sqlite_db_url: str, tmp_path: Path, certs: Certs
) -> AsyncIterator[RunningServer]:
    server = await serve(
        sqlite_db_url,
        tmp_path,
        tls_cert_file=certs.path("server.pem"),
        tls_key_file=certs.path("server-key.pem"),
        tls_client_ca_file=certs.path("ca.pem"),
    )
    try:
        yield server
    finally:
        await server.stop()


@dataclass(frozen=True)
class AgentRun:
    returncode: int
    output: str


async def agent(root: Path, env: dict[str, str], *args: str) -> AgentRun:
    """``python -m agent --root ROOT ARGS`` with ``env`` (FLAGPOST_AGENT_* settings) added,
    without blocking the loop the server runs on."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_AGENT_")}
    environ.update(
        FLAGPOST_AGENT_RETRY_ONCE_ATTEMPTS="1",
        FLAGPOST_AGENT_RETRY_INITIAL_SECONDS="0",
        FLAGPOST_AGENT_RPC_TIMEOUT_SECONDS="5",
        **env,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "--root",
        str(root),
        *args,
        cwd=REPO,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return AgentRun(proc.returncode, out.decode())


def agent_root(base: Path, name: str) -> Path:
    root = base / name
    (root / "etc" / "aggregator").mkdir(parents=True)
    (root / "etc" / "aggregator" / "agent.conf").write_text(LEGACY)
    return root


async def enroll(server: RunningServer, root: Path, env: dict[str, str]) -> AgentRun:
    token = await create_token(
        server.app[app_keys.SESSIONS], uses=1, expires_in=timedelta(minutes=5)
    )
    return await agent(
        root, env, "enroll", "--server", f"127.0.0.1:{server.grpc_port}", "--token", token
    )


async def stored_events(server: RunningServer) -> int:
    async with server.app[app_keys.SESSIONS]() as session:
        count = await session.scalar(select(func.count()).select_from(UpdateEvent))
        return int(count or 0)


async def outbox_depth(root: Path, env: dict[str, str]) -> int:
    status = await agent(root, env, "status", "--json")
    assert status.returncode == 0, status.output
    return int(json.loads(status.output)["outbox_depth"])


def ca_env(certs: Certs) -> dict[str, str]:
    return {"FLAGPOST_AGENT_CA_FILE": certs.path("ca.pem")}


# --- tls selfsigned ---------------------------------------------------------------------------


def test_selfsigned_writes_ca_server_and_agent_certificates(tmp_path: Path) -> None:
    out = tmp_path / "dev-certs"
    certs = make_certs(out)
    names = {"ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "agent.pem", "agent-key.pem"}
    assert {p.name for p in out.iterdir()} == names
    for key in ("ca-key.pem", "server-key.pem", "agent-key.pem"):
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600, key
    der = ssl.PEM_cert_to_DER_cert((out / "server.pem").read_text())
    assert hashlib.sha256(der).hexdigest() == certs.fingerprint
    # The server certificate chains to the CA and names the default hosts.
    context = ssl.create_default_context(cafile=str(out / "ca.pem"))
    context.load_cert_chain(out / "agent.pem", out / "agent-key.pem")  # a matching pair
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    again = selfsigned(out)

    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_selfsigned_rejects_bad_arguments(tmp_path: Path) -> None:
    done = selfsigned(tmp_path / "x", "--days", "0")
    assert done.returncode == 2
    assert "must be at least 1" in done.stderr
    assert not (tmp_path / "x").exists()


# --- agent over TLS ---------------------------------------------------------------------------


async def test_agent_enrolls_and_checks_in_over_tls_with_the_ca(
    tls_server: RunningServer, certs: Certs, agent_base: Path
) -> None:
    root = agent_root(agent_base, "tls-ca")
    env = ca_env(certs)

    enrolled = await enroll(tls_server, root, env)
    assert enrolled.returncode == 0, enrolled.output
    once = await agent(root, env, "once")

    assert once.returncode == 0, once.output
    assert await stored_events(tls_server) >= 2  # detection + execution succeeded
    assert await outbox_depth(root, env) == 0


async def test_a_plain_text_agent_cannot_talk_to_a_tls_server(
    tls_server: RunningServer, agent_base: Path
) -> None:
    root = agent_root(agent_base, "plain")
    enrolled = await enroll(tls_server, root, {})
    assert enrolled.returncode == 1
    assert "UNAVAILABLE" in enrolled.output
    assert await stored_events(tls_server) == 0


async def test_wrong_ca_fails_cleanly_and_keeps_events(
    tls_server: RunningServer, certs: Certs, other_certs: Certs, agent_base: Path
) -> None:
    root = agent_root(agent_base, "wrong-ca")
    wrong = ca_env(other_certs)
    refused = await enroll(tls_server, root, wrong)
    assert refused.returncode == 1, refused.output
    assert "enrollment" in refused.output and "UNAVAILABLE" in refused.output
    enrolled = await enroll(tls_server, root, ca_env(certs))
    assert enrolled.returncode == 0, enrolled.output

    once = await agent(root, wrong, "once")

    assert once.returncode != 0, once.output
    assert "Traceback" not in once.output
    assert await stored_events(tls_server) == 0
    kept = await outbox_depth(root, wrong)
    assert kept >= 2
    # The same events arrive once the agent trusts the right CA.
    fixed = await agent(root, ca_env(certs), "once")
    assert fixed.returncode == 0, fixed.output
    assert await stored_events(tls_server) >= kept  # kept ones, and this run's own
    assert await outbox_depth(root, ca_env(certs)) == 0


# --- pinned fingerprint -----------------------------------------------------------------------


async def test_pinned_fingerprint_works_without_a_ca(
    tls_server: RunningServer, certs: Certs, agent_base: Path
) -> None:
    root = agent_root(agent_base, "pinned")
    env = {"FLAGPOST_AGENT_SERVER_FINGERPRINT": f"sha256:{certs.fingerprint.upper()}"}

    enrolled = await enroll(tls_server, root, env)
    assert enrolled.returncode == 0, enrolled.output
    once = await agent(root, env, "once")

    assert once.returncode == 0, once.output
    assert await stored_events(tls_server) >= 2


async def test_wrong_pin_is_refused(
    tls_server: RunningServer, certs: Certs, other_certs: Certs, agent_base: Path
) -> None:
    root = agent_root(agent_base, "wrong-pin")
    wrong = {"FLAGPOST_AGENT_SERVER_FINGERPRINT": other_certs.fingerprint}

    refused = await enroll(tls_server, root, wrong)
    assert refused.returncode == 1, refused.output
    assert "does not match the pinned server_fingerprint" in refused.output
    assert f"sha256:{certs.fingerprint}" in refused.output  # what the server presented
    enrolled = await enroll(tls_server, root, ca_env(certs))
    assert enrolled.returncode == 0, enrolled.output

    once = await agent(root, wrong, "once")

    assert once.returncode != 0, once.output
    assert "does not match the pinned server_fingerprint" in once.output
    assert await stored_events(tls_server) == 0
    assert await outbox_depth(root, wrong) >= 2


# --- mutual TLS -------------------------------------------------------------------------------


def health_check(port: int, credentials: grpc.ChannelCredentials) -> grpc.StatusCode:
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            return code
    return grpc.StatusCode.OK


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    mtls_server: RunningServer, certs: Certs, other_certs: Certs, agent_base: Path
) -> None:
    ca = Path(certs.path("ca.pem")).read_bytes()
    port = mtls_server.grpc_port
    no_cert = grpc.ssl_channel_credentials(root_certificates=ca)
    assert await asyncio.to_thread(health_check, port, no_cert) == grpc.StatusCode.UNAVAILABLE
    foreign = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=Path(other_certs.path("agent-key.pem")).read_bytes(),
        certificate_chain=Path(other_certs.path("agent.pem")).read_bytes(),
    )
    assert await asyncio.to_thread(health_check, port, foreign) == grpc.StatusCode.UNAVAILABLE
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=Path(certs.path("agent-key.pem")).read_bytes(),
        certificate_chain=Path(certs.path("agent.pem")).read_bytes(),
    )
    assert await asyncio.to_thread(health_check, port, with_cert) == grpc.StatusCode.OK

    # A real agent: refused without its certificate, enrolls and checks in with it.
    root = agent_root(agent_base, "mtls")
    refused = await enroll(mtls_server, root, ca_env(certs))
    assert refused.returncode == 1, refused.output
    env = {
        **ca_env(certs),
        "FLAGPOST_AGENT_CLIENT_CERT_FILE": certs.path("agent.pem"),
        "FLAGPOST_AGENT_CLIENT_KEY_FILE": certs.path("agent-key.pem"),
    }
    enrolled = await enroll(mtls_server, root, env)
    assert enrolled.returncode == 0, enrolled.output
    once = await agent(root, env, "once")
    assert once.returncode == 0, once.output
    assert await stored_events(mtls_server) >= 2


async def test_mutual_tls_with_a_pinned_fingerprint(
    mtls_server: RunningServer, certs: Certs, agent_base: Path
) -> None:
    root = agent_root(agent_base, "mtls-pin")
    env = {
        "FLAGPOST_AGENT_SERVER_FINGERPRINT": certs.fingerprint,
        "FLAGPOST_AGENT_CLIENT_CERT_FILE": certs.path("agent.pem"),
        "FLAGPOST_AGENT_CLIENT_KEY_FILE": certs.path("agent-key.pem"),
    }
    enrolled = await enroll(mtls_server, root, env)
    assert enrolled.returncode == 0, enrolled.output
    assert (await agent(root, env, "once")).returncode == 0
    assert await stored_events(mtls_server) >= 2


# --- web over HTTPS ---------------------------------------------------------------------------


async def test_web_serves_https_with_the_same_certificate(
    tls_server: RunningServer, certs: Certs
) -> None:
    assert tls_server.web_url.startswith("https://")
    assert "PRIVATE KEY" not in repr(tls_server)  # the key never shows in a repr or log
    context = ssl.create_default_context(cafile=certs.path("ca.pem"))
    connector = aiohttp.TCPConnector(ssl=context)
    async with logged_in_http(tls_server, "viewer", connector=connector) as client:
        async with client.get(f"{tls_server.web_url}/history", ssl=context) as response:
            assert response.status == 200
            assert "<html" in (await response.text()).lower()
        peer = await asyncio.to_thread(
            ssl.get_server_certificate, ("127.0.0.1", tls_server.web_port)
        )
        assert hashlib.sha256(ssl.PEM_cert_to_DER_cert(peer)).hexdigest() == certs.fingerprint
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with client.get(
                f"{tls_server.web_url}/history", ssl=ssl.create_default_context()
            ):  # system CAs only
                pass
        plain = f"http://127.0.0.1:{tls_server.web_port}/history"
        with pytest.raises(aiohttp.ClientError):
            async with client.get(plain) as response:
                await response.read()


# --- configuration and warnings ---------------------------------------------------------------


async def test_incomplete_or_broken_tls_settings_refuse_to_start(
    sqlite_db_url: str, tmp_path: Path, certs: Certs
) -> None:
    with pytest.raises(ConfigError, match="must be set together"):
        await serve(sqlite_db_url, tmp_path, tls_cert_file=certs.path("server.pem"))
    with pytest.raises(ConfigError, match="needs tls_cert_file"):
        await serve(sqlite_db_url, tmp_path, tls_client_ca_file=certs.path("ca.pem"))
    with pytest.raises(ConfigError, match="not a usable certificate and key"):
        await serve(
            sqlite_db_url,
            tmp_path,
            tls_cert_file=certs.path("server.pem"),
            tls_key_file=certs.path("agent-key.pem"),  # not the server's key
        )
    with pytest.raises(ConfigError, match="cannot read"):
        await serve(
            sqlite_db_url,
            tmp_path,
            tls_cert_file=str(tmp_path / "missing.pem"),
            tls_key_file=certs.path("server-key.pem"),
        )


def test_plain_text_on_a_non_loopback_address_warns_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = make_server_config("sqlite+aiosqlite:///unused.db", tmp_path)
    quiet = io.StringIO()
    assert warn_if_plaintext(base, quiet) == []
    assert quiet.getvalue() == ""
    exposed = make_server_config(
        "sqlite+aiosqlite:///unused.db", tmp_path, grpc_host="0.0.0.0", web_host="10.1.2.3"
    )
    stream = io.StringIO()
    with caplog.at_level(logging.WARNING, logger="server.tls"):
        warnings = warn_if_plaintext(exposed, stream)
    assert len(warnings) == 2
    assert "gRPC serves PLAIN TEXT on 0.0.0.0" in stream.getvalue()
    assert "web serves PLAIN TEXT on 10.1.2.3" in stream.getvalue()
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
    with_tls = make_server_config(
        "sqlite+aiosqlite:///unused.db",
        tmp_path,
        grpc_host="0.0.0.0",
        tls_cert_file="server.pem",
        tls_key_file="server-key.pem",
    )
    assert warn_if_plaintext(with_tls, io.StringIO()) == []


def test_serve_prints_the_warning_and_the_fingerprint(tmp_path: Path, certs: Certs) -> None:
    """``flagpost-server serve`` with TLS prints the fingerprint agents pin."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGPOST_")}
    env.update(
        FLAGPOST_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}",
        FLAGPOST_AUTO_UPGRADE="1",
        FLAGPOST_GRPC_PORT="0",
        FLAGPOST_WEB_PORT="0",
        FLAGPOST_STATE_DIR=str(tmp_path / "state"),
        FLAGPOST_TLS_CERT_FILE=certs.path("server.pem"),
        FLAGPOST_TLS_KEY_FILE=certs.path("server-key.pem"),
        FLAGPOST_TLS_CLIENT_CA_FILE=certs.path("ca.pem"),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert lines[1].startswith("web: https://127.0.0.1:"), (lines, err)
    assert lines[2].strip() == (
        f"tls: server certificate sha256:{certs.fingerprint}, client certificates required"
    ), (lines, err)
    assert "PLAIN TEXT" not in err


def test_agent_tls_settings_are_validated(tmp_path: Path) -> None:
    pin = "AB:" * 31 + "AB"
    config = load_config(env={"FLAGPOST_AGENT_SERVER_FINGERPRINT": f"sha256:{pin}"})
    assert config.server_fingerprint == "ab" * 32
    with pytest.raises(AgentConfigError, match="sha256 fingerprint"):
        load_config(env={"FLAGPOST_AGENT_SERVER_FINGERPRINT": "abc"})
    with pytest.raises(AgentConfigError, match="set together"):
        load_config(env={"FLAGPOST_AGENT_CLIENT_CERT_FILE": "agent.pem"})
    with pytest.raises(AgentConfigError, match="needs ca_file or server_fingerprint"):
        load_config(
            env={
                "FLAGPOST_AGENT_CLIENT_CERT_FILE": "agent.pem",
                "FLAGPOST_AGENT_CLIENT_KEY_FILE": "agent-key.pem",
            }
        )
    toml = tmp_path / "agent.toml"
    toml.write_text('ca_file = "/etc/flagpost-agent/ca.pem"\n')
    assert load_config(env={}, config_file=toml).ca_file == Path("/etc/flagpost-agent/ca.pem")
