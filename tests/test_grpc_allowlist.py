"""The explicit allow-list of unauthenticated gRPC methods and the start-up check."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server.app import RunningServer
from server.errors import UnprotectedMethod
from server.grpc.interceptors import PUBLIC_METHODS, FlagpostInterceptor
from server.grpc.server import REGISTERED_SERVICES, check_protection


async def _never(credential: str) -> str:
    raise AssertionError("not called by the start-up check")


def probe_service() -> descriptor_pool.ServiceDescriptor:  # type: ignore[name-defined]
    """A test-only service ``flagpost.test.Probe`` with one method ``Open``."""
    pool = descriptor_pool.DescriptorPool()
    proto = descriptor_pb2.FileDescriptorProto(name="probe.proto", package="flagpost.test")
    proto.message_type.add(name="Empty")
    service = proto.service.add(name="Probe")
    service.method.add(
        name="Open", input_type=".flagpost.test.Empty", output_type=".flagpost.test.Empty"
    )
    pool.Add(proto)
    return pool.FindServiceByName("flagpost.test.Probe")


def test_the_allow_list_names_exactly_enroll_health_and_reflection() -> None:
    assert {
        "/flagpost.v1.AgentService/Enroll",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    } == PUBLIC_METHODS
    checked = check_protection(REGISTERED_SERVICES, [FlagpostInterceptor(_never)])
    assert "/flagpost.v1.AgentService/CheckIn" in checked
    assert "/grpc.health.v1.Health/List" in checked  # present, and requires a credential


def test_a_deliberately_public_test_method_refuses_start() -> None:
    service = probe_service()
    guarded = FlagpostInterceptor(_never)
    assert check_protection([*REGISTERED_SERVICES, service], [guarded])  # protected: fine
    leaky = FlagpostInterceptor(
        _never, public_methods=PUBLIC_METHODS | {"/flagpost.test.Probe/Open"}
    )
    with pytest.raises(UnprotectedMethod) as caught:
        check_protection([*REGISTERED_SERVICES, service], [leaky])
    assert "/flagpost.test.Probe/Open" in caught.value.message
    assert "allow-list" in caught.value.message


def test_a_missing_authentication_interceptor_refuses_start() -> None:
    with pytest.raises(UnprotectedMethod) as caught:
        check_protection(REGISTERED_SERVICES, [])
    assert "no authentication interceptor" in caught.value.message


async def test_real_server_protects_everything_off_the_list(running_server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        ok = await health.Check(health_pb2.HealthCheckRequest(service=""))  # no credential
        assert ok.status == health_pb2.HealthCheckResponse.SERVING
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CheckIn(agent_pb2.CheckInRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
