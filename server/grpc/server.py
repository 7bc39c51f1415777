"""The grpc.aio server factory: AgentService + standard health + reflection, one interceptor.

Start-up check (``check_protection``), before the port is bound: every installed
FlagpostInterceptor may serve without a credential only methods on the explicit allow-list
``interceptors.PUBLIC_METHODS``, and every method actually added to the server (recorded as the
generated ``add_*_to_server`` functions register them: ``add_services``; nothing is listed by
hand) either requires a credential or is on that list. A missing authentication interceptor, a
wider public set or any other method callable without a credential raises UnprotectedMethod
naming it, and the server does not start.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server.config import ServerConfig
from server.errors import ListenError, UnprotectedMethod
from server.grpc.drain import Drain
from server.grpc.interceptors import PUBLIC_METHODS, FlagpostInterceptor
from server.grpc.servicer import AgentServicer
from server.services import Services
from server.tls import ServerTLS, grpc_server_credentials

AGENT_SERVICE: str = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class MethodRecorder:
    """Stands in for the server while services are added: forwards each registration to it and
    records the method paths (``/<service>/<Method>``) of every service added."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server
        self.services: list[str] = []
        self.methods: list[str] = []
        self._generic: list[Any] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        self._generic.extend(handlers)
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.services.append(service)
        self.methods.extend(f"/{service}/{name}" for name in handlers)
        self._server.add_registered_method_handlers(service, handlers)

    def check_listed(self) -> None:
        """UnprotectedMethod for a generic handler whose methods were not registered by name
        (it could serve any method: the start-up check could not see them)."""
        for handler in self._generic:
            name = handler.service_name() if isinstance(handler, grpc.ServiceRpcHandler) else None
            if name not in self.services:
                raise UnprotectedMethod(
                    f"gRPC handler {handler!r} serves methods that are not registered by name; "
                    "the start-up check cannot list them; refusing to start"
                )


def add_services(
    server: grpc.aio.Server, services: Services
) -> tuple[list[str], health.aio.HealthServicer]:
    """Add AgentService, the standard health service and reflection (for every service added)
    to ``server``. Returns every method path added and the health servicer."""
    recorder = MethodRecorder(server)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(services), recorder)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, recorder)
    reflected = (*recorder.services, reflection.SERVICE_NAME)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(reflected), recorder
    )
    recorder.check_listed()
    return recorder.methods, health_servicer


def check_protection(
    methods: Iterable[str], interceptors: Sequence[grpc.aio.ServerInterceptor]
) -> list[str]:
    """Refuse (UnprotectedMethod) unless a FlagpostInterceptor is installed, none serves a
    method off ``PUBLIC_METHODS`` without a credential, and every one of ``methods`` (method
    paths) needs a credential or is on ``PUBLIC_METHODS``. Returns every method path checked."""
    guards = [i for i in interceptors if isinstance(i, FlagpostInterceptor)]
    if not guards:
        raise UnprotectedMethod(
            "the gRPC server has no authentication interceptor (FlagpostInterceptor): every "
            "method would be callable without a credential; refusing to start"
        )
    for guard in guards:
        extra = sorted(guard.public_methods - PUBLIC_METHODS)
        if extra:
            raise UnprotectedMethod(
                f"the authentication interceptor serves {', '.join(extra)} without a "
                "credential, but they are not on the allow-list "
                "(server.grpc.interceptors.PUBLIC_METHODS); refusing to start"
            )
    checked: list[str] = []
    for path in methods:
        if path not in PUBLIC_METHODS and not all(
            guard.requires_authentication(path) for guard in guards
        ):
            raise UnprotectedMethod(
                f"gRPC method {path} is callable without authentication but is not on the "
                "allow-list (server.grpc.interceptors.PUBLIC_METHODS); refusing to start"
            )
        checked.append(path)
    return checked


async def create_grpc_server(
    config: ServerConfig,
    services: Services,
    tls: ServerTLS | None = None,
    drain: Drain | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Build the grpc.aio server bound to ``config.grpc_host:grpc_port`` (0 = a free port).

    Registers AgentService behind the FlagpostInterceptor, the standard health service (for ""
    and flagpost.v1.AgentService: SERVING, NOT_SERVING while ``services.health`` says the
    database is unreachable) and reflection for all three services. Returns
    ``(server, bound_port)``; the caller starts it and stops it (``await server.stop(grace)``).
    With ``tls`` (``server.tls.load_server_tls``) the port serves TLS only, requiring client
    certificates under mutual TLS; without it, plain text. With ``drain``
    (``server.grpc.drain``) every call is admitted through it, and the health service turns
    NOT_SERVING for good when it begins. ListenError (naming the OS reason
    and ``--grpc-port``) when the address cannot be bound.
    """
    on_error = services.metrics.record_rpc_error if services.metrics is not None else None
    interceptors = [FlagpostInterceptor(services.authenticator.identify, on_error, drain=drain)]
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a port in use is an error, never silently shared
        ],
    )
    methods, health_servicer = add_services(server, services)
    check_protection(methods, interceptors)

    async def publish(available: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if available
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", AGENT_SERVICE):
            await health_servicer.set(service, status)

    health_state = services.health
    await publish(health_state is None or health_state.available)
    if health_state is not None:
        health_state.add_listener(publish)
    if drain is not None:
        drain.on_begin(health_servicer.enter_graceful_shutdown)
    address = f"{config.grpc_host}:{config.grpc_port}"
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, grpc_server_credentials(tls))
    except RuntimeError as exc:
        raise _listen_error(config.grpc_host, config.grpc_port) from exc
    if not port:
        raise _listen_error(config.grpc_host, config.grpc_port)
    return server, int(port)


def _listen_error(host: str, port: int) -> ListenError:
    """ListenError for a gRPC address grpc could not bind. grpc reports only "Failed to bind";
    binding the same address with a plain socket recovers the OS reason."""
    in_use = False
    reason = "the address cannot be bound"
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        family, kind, proto, _, sockaddr = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(sockaddr)
    except OSError as exc:
        in_use = exc.errno == errno.EADDRINUSE
        reason = exc.strerror or str(exc)
    return ListenError("gRPC", host, port, reason, in_use=in_use, setting="grpc")
