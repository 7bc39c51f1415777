"""Fixtures for the agent tests: a dir the unprivileged user can reach, a real gRPC server."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from agent_testlib import FakeServer, FakeServicer

from flagpost.v1 import agent_pb2_grpc


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
