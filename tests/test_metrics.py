"""GET /metrics after real check-ins: the counters say exactly what happened."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_testlib import logged_in_http
from test_grpc_ingest import FACTS, auth, enroll, event

from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server import app_keys
from server.app import RunningServer, start_server
from server.config import ServerConfig


async def scrape(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with (
        logged_in_http(server, "viewer") as http,
        http.get(f"{server.web_url}/metrics") as reply,
    ):
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = await reply.text()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def value(
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


async def test_counters_follow_real_checkins(running_server: RunningServer) -> None:
    server = running_server
    before = await scrape(server)
    assert value(before, "flagpost_checkins_total") == 0
    assert value(before, "flagpost_database_up") == 1
    for reason in ("invalid_argument", "unauthenticated", "permission_denied", "overloaded"):
        assert value(before, "flagpost_checkins_rejected_total", reason=reason) == 0

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        _, credential = await enroll(server, channel)
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        first = [event() for _ in range(4)]
        await stub.CheckIn(
            agent_pb2.CheckInRequest(facts=FACTS, events=first), metadata=auth(credential)
        )
        # Two already stored, one repeated inside the request, two new.
        again = [first[0], first[1], *(event() for _ in range(2))]
        again.append(again[-1])
        await stub.CheckIn(
            agent_pb2.CheckInRequest(facts=FACTS, events=again), metadata=auth(credential)
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.CheckIn(
                agent_pb2.CheckInRequest(events=[event(event_id="nope")]),
                metadata=auth(credential),
            )
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.CheckIn(
                    agent_pb2.CheckInRequest(events=[event()]), metadata=auth("fpa_" + "x" * 43)
                )
        with pytest.raises(grpc.aio.AioRpcError):  # another agent's id
            await stub.CheckIn(
                agent_pb2.CheckInRequest(agent_id="00000000-0000-4000-8000-000000000000"),
                metadata=auth(credential),
            )

    after = await scrape(server)
    assert value(after, "flagpost_checkins_total") == 2
    assert value(after, "flagpost_events_stored_total") == 6
    assert value(after, "flagpost_events_duplicate_total") == 3
    assert value(after, "flagpost_ingest_batches_total") == 2
    assert value(after, "flagpost_ingest_failed_batches_total") == 0
    assert value(after, "flagpost_ingest_queue_events") == 0
    assert value(after, "flagpost_checkins_rejected_total", reason="invalid_argument") == 1
    assert value(after, "flagpost_checkins_rejected_total", reason="unauthenticated") == 2
    assert value(after, "flagpost_checkins_rejected_total", reason="permission_denied") == 1
    assert value(after, "flagpost_checkins_rejected_total", reason="overloaded") == 0
    assert value(after, "flagpost_checkins_rejected_total", reason="unavailable") == 0
    assert value(after, "flagpost_ingest_latency_seconds_count") == 2
    assert 0 < value(after, "flagpost_ingest_latency_seconds_sum") < 5
    assert value(after, "flagpost_ingest_latency_seconds_bucket", le="+Inf") == 2


async def test_each_server_has_its_own_registry(
    running_server: RunningServer, server_config: ServerConfig
) -> None:
    other = await start_server(server_config)
    try:
        assert (
            other.app[app_keys.METRICS].registry
            is not running_server.app[app_keys.METRICS].registry
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{other.grpc_port}") as channel:
            _, credential = await enroll(other, channel)
            await agent_pb2_grpc.AgentServiceStub(channel).CheckIn(
                agent_pb2.CheckInRequest(facts=FACTS, events=[event()]), metadata=auth(credential)
            )
        assert value(await scrape(other), "flagpost_checkins_total") == 1
        assert value(await scrape(running_server), "flagpost_checkins_total") == 0
    finally:
        await other.stop()


async def test_overload_counts_as_overloaded(server_config: ServerConfig) -> None:
    from dataclasses import replace

    server = await start_server(replace(server_config, ingest_queue_max_events=3))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            _, credential = await enroll(server, channel)
            with pytest.raises(grpc.aio.AioRpcError):
                await agent_pb2_grpc.AgentServiceStub(channel).CheckIn(
                    agent_pb2.CheckInRequest(facts=FACTS, events=[event() for _ in range(4)]),
                    metadata=auth(credential),
                )
        metrics = await scrape(server)
        assert value(metrics, "flagpost_checkins_rejected_total", reason="overloaded") == 1
        assert value(metrics, "flagpost_checkins_total") == 0
    finally:
        await server.stop()
