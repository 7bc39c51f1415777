"""Fixtures for the agent tests: a dir the unprivileged user can reach, a real gRPC server."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

# pytest puts tests/ on sys.path; its tests/agent directory would shadow the real `agent`
# package (a namespace package wins over the editable install's finder). The repo goes first.
_REPO = str(Path(__file__).resolve().parents[2])
if sys.path[:1] != [_REPO]:
    sys.path.insert(0, _REPO)

import grpc  # noqa: E402
import pytest  # noqa: E402
from agent_testlib import FakeServer, FakeServicer  # noqa: E402

from flagpost.v1 import agent_pb2_grpc  # noqa: E402


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A temp dir that the unprivileged user can traverse (tmp_path is 0700 root)."""
    base = Path(tempfile.mkdtemp(prefix="flagpost-agent-test-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    state = FakeServer()
    executor = futures.ThreadPoolExecutor(max_workers=4)
    server = grpc.server(executor)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(FakeServicer(state), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    state.address = f"127.0.0.1:{port}"
    try:
        yield state
    finally:
        server.stop(grace=None).wait()
        executor.shutdown(wait=True)
