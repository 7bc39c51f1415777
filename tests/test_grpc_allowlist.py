"""The explicit allow-list of unauthenticated gRPC methods and the start-up check."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server import app_keys
from server.app import RunningServer
from server.errors import UnprotectedMethod
from server.grpc.interceptors import PUBLIC_METHODS, FlagpostInterceptor, method_path
from server.grpc.server import MethodRecorder, add_services, check_protection


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


async def served_methods(running_server: RunningServer) -> list[str]:
    """What create_grpc_server adds, recorded the same way: on a fresh, never started server."""
    server = grpc.aio.server()
    try:
        methods, _ = add_services(server, running_server.app[app_keys.SERVICES])
    finally:
        await server.stop(None)
    return methods


async def test_the_allow_list_names_exactly_enroll_health_and_reflection(
    running_server: RunningServer,
) -> None:
    assert {
        "/flagpost.v1.AgentService/Enroll",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    } == PUBLIC_METHODS
    methods = await served_methods(running_server)
    # Recorded from what was added, not listed by hand: every method of the three services.
    described = {
        method_path(service, method.name)
        for service in (
            agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
            health_pb2.DESCRIPTOR.services_by_name["Health"],
            reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
        )
        for method in service.methods
    }
    assert set(methods) == described and len(methods) == len(described)
    checked = check_protection(methods, [FlagpostInterceptor(_never)])
    assert "/flagpost.v1.AgentService/CheckIn" in checked
    assert "/grpc.health.v1.Health/List" in checked  # present, and requires a credential


async def test_a_deliberately_public_test_method_refuses_start(
    running_server: RunningServer,
) -> None:
    methods = [*await served_methods(running_server), "/flagpost.test.Probe/Open"]
    guarded = FlagpostInterceptor(_never)
    assert check_protection(methods, [guarded])  # protected: fine
    leaky = FlagpostInterceptor(
        _never, public_methods=PUBLIC_METHODS | {"/flagpost.test.Probe/Open"}
    )
    with pytest.raises(UnprotectedMethod) as caught:
        check_protection(methods, [leaky])
    assert "/flagpost.test.Probe/Open" in caught.value.message
    assert "allow-list" in caught.value.message


async def test_an_interceptor_public_beyond_the_allow_list_refuses_start(
    running_server: RunningServer,
) -> None:
    """Even for a method the server does not serve (yet): the interceptor's public set must be
    a subset of PUBLIC_METHODS."""
    methods = await served_methods(running_server)
    assert "/x.Debug/Dump" not in methods
    leaky = FlagpostInterceptor(_never, public_methods=PUBLIC_METHODS | {"/x.Debug/Dump"})
    with pytest.raises(UnprotectedMethod) as caught:
        check_protection(methods, [FlagpostInterceptor(_never), leaky])
    assert "/x.Debug/Dump" in caught.value.message and "allow-list" in caught.value.message
    # Narrower than the allow-list is fine.
    narrow = FlagpostInterceptor(_never, public_methods=frozenset())
    assert check_protection(methods, [narrow]) == methods


class _AnyMethod(grpc.GenericRpcHandler):  # type: ignore[misc]
    def service(self, details: grpc.HandlerCallDetails) -> Any:
        return None


async def test_a_handler_whose_methods_cannot_be_listed_refuses_start() -> None:
    probe = probe_service()
    handlers = {"Open": grpc.unary_unary_rpc_method_handler(lambda request, context: request)}
    servers = [grpc.aio.server(), grpc.aio.server()]
    try:
        recorder = MethodRecorder(servers[0])
        recorder.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(probe.full_name, handlers)]
        )
        recorder.add_registered_method_handlers(probe.full_name, handlers)
        recorder.check_listed()  # how the generated add_*_to_server functions register
        assert recorder.methods == ["/flagpost.test.Probe/Open"]
        recorder.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("flagpost.test.Hidden", handlers)]
        )
        with pytest.raises(UnprotectedMethod, match="not registered by name"):
            recorder.check_listed()
        opaque = MethodRecorder(servers[1])
        opaque.add_generic_rpc_handlers([_AnyMethod()])
        with pytest.raises(UnprotectedMethod, match="cannot list them"):
            opaque.check_listed()
    finally:
        for server in servers:
            await server.stop(None)


def test_a_missing_authentication_interceptor_refuses_start() -> None:
    with pytest.raises(UnprotectedMethod) as caught:
        check_protection(["/flagpost.v1.AgentService/CheckIn"], [])
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
