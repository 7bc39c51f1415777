"""Check-in timing: the server's interval with jitter, retry-after with full jitter, startup
jitter, and reconnection on the agent's own schedule after UNAVAILABLE."""

from __future__ import annotations

import random
import socket
import statistics
from concurrent import futures
from datetime import timedelta
from pathlib import Path

import grpc
from agent_testlib import CREDENTIAL, FakeServer, FakeServicer

from agent.checkin import CheckInClient, CheckInResult
from agent.config import RetrySettings
from agent.enroll import Credentials
from agent.outbox import Outbox
from agent.schedule import CheckInSchedule
from flagpost.v1 import agent_pb2, agent_pb2_grpc

RETRY = RetrySettings(initial=timedelta(seconds=1), maximum=timedelta(seconds=60))


def schedule(seed: int, interval: float = 60, startup: float = 30) -> CheckInSchedule:
    return CheckInSchedule(
        timedelta(seconds=interval),
        RETRY,
        startup_jitter=timedelta(seconds=startup),
        rng=random.Random(seed),
    )


def seconds(delays: list[timedelta]) -> list[float]:
    return [d.total_seconds() for d in delays]


def test_first_checkin_is_spread_over_the_startup_window() -> None:
    first = seconds([schedule(seed).first_delay() for seed in range(1000)])
    assert min(first) >= 0 and max(first) <= 30
    assert statistics.pstdev(first) > 7  # uniform(0, 30) has stdev 8.7
    short = seconds([schedule(seed, interval=2).first_delay() for seed in range(100)])
    assert max(short) <= 2  # never later than one interval


def test_success_adopts_server_interval_with_jitter() -> None:
    delays = []
    for seed in range(500):
        plan = schedule(seed)
        delays.append(plan.after(CheckInResult(ok=True, next_interval=timedelta(seconds=10))))
        assert plan.interval == timedelta(seconds=10)
    values = seconds(delays)
    assert min(values) >= 9 and max(values) <= 11 and statistics.pstdev(values) > 0.4


def test_backlog_left_means_go_again_soon() -> None:
    delay = schedule(1).after(CheckInResult(ok=True, more=True)).total_seconds()
    assert delay <= 1.1


def test_retry_after_is_honoured_with_full_jitter() -> None:
    """1000 agents all told "retry after 2 s": none earlier, spread over the next window."""
    hint = CheckInResult(ok=False, code="RESOURCE_EXHAUSTED", retry_after=timedelta(seconds=2))
    values = seconds([schedule(seed).after(hint) for seed in range(1000)])
    assert min(values) >= 2 and max(values) <= 4
    assert statistics.pstdev(values) > 0.5  # uniform(2, 4) has stdev 0.58
    buckets = {int((v - 2) * 5) for v in values}
    assert len(buckets) >= 10  # no pile-up at the hint itself


def test_failures_back_off_exponentially_then_reset() -> None:
    plan = schedule(3)
    down = CheckInResult(ok=False, code="UNAVAILABLE")
    delays = seconds([plan.after(down) for _ in range(8)])
    assert plan.failures == 8
    assert all(d <= min(60, 2**n) for n, d in enumerate(delays))
    plan.after(CheckInResult(ok=True))
    assert plan.failures == 0
    auth = CheckInResult(ok=False, auth_failed=True)
    assert plan.after(auth) == RETRY.maximum


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_reconnects_at_once_when_the_server_returns(tmp_path: Path) -> None:
    """After UNAVAILABLE the next cycle opens a fresh channel: it does not wait out gRPC's
    internal reconnect backoff (>= 0.8 s after a refused connection)."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    state = FakeServer(address=address)
    credentials = Credentials("agent-0001", CREDENTIAL, address)
    facts = agent_pb2.HostFacts(hostname="h1")
    with Outbox(tmp_path / "outbox.db") as outbox, CheckInClient(address, credentials) as client:
        down = client.cycle(outbox, facts, max_events=10, max_bytes=100_000, max_chunks=1)
        assert not down.ok and down.code == "UNAVAILABLE"
        executor = futures.ThreadPoolExecutor(max_workers=2)
        server = grpc.server(executor)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(FakeServicer(state), server)
        assert server.add_insecure_port(address) == port
        server.start()
        try:
            back = client.cycle(outbox, facts, max_events=10, max_bytes=100_000, max_chunks=1)
        finally:
            server.stop(grace=None).wait()
            executor.shutdown(wait=True)
    assert back.ok, back.error
