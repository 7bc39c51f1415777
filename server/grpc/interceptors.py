"""The one gRPC server interceptor: authentication and the FlagpostError -> status mapping.

(a) Every method outside ``PUBLIC_METHODS`` (an explicit allow-list: Enroll, the health
    checks, server reflection; ``server.grpc.server`` refuses to start when any other method is
    callable without a credential) needs ``authorization: Bearer <credential>`` metadata; the
    authenticated agent id is handed to the servicer through the ``CURRENT_AGENT`` contextvar
    (read it with ``current_agent_id()``), and the machine id its credential is bound to
    through ``CURRENT_MACHINE``
    (``current_machine_id()``; None when the authenticate callable returns only an agent id).
(b) While the server drains for shutdown (``server.grpc.drain.Drain``) every call but the
    health checks is refused with UNAVAILABLE before any work.
(c) A FlagpostError becomes the status named by ``err.grpc_code`` with its message
    (ResourceExhausted adds trailing metadata ``retry-after-ms``); any other exception becomes
    INTERNAL with a generic message, logged here with its traceback. Nowhere else decides a
    status code. Every error is also reported to ``on_error(method, reason)`` (metrics).
"""

from __future__ import annotations

import contextvars
import inspect
import ipaddress
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from flagpost.v1 import agent_pb2
from server.errors import FlagpostError, InvalidArgument, ResourceExhausted, Unauthenticated
from server.grpc.drain import Drain

log = logging.getLogger(__name__)


def method_path(service: ServiceDescriptor, name: str) -> str:
    """The gRPC path of one method: ``/<package.Service>/<Method>``."""
    return f"/{service.full_name}/{name}"


def _all_methods(service: ServiceDescriptor) -> set[str]:
    return {method_path(service, m.name) for m in service.methods}


_HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
# The allow-list of methods callable without a credential, named from the service descriptors
# (Health/List, which names every service, is not on it).
HEALTH_METHODS = frozenset(_all_methods(_HEALTH))  # answered even while the server drains
PUBLIC_METHODS = frozenset(
    {
        method_path(agent_pb2.DESCRIPTOR.services_by_name["AgentService"], "Enroll"),
        method_path(_HEALTH, _HEALTH.methods_by_name["Check"].name),
        method_path(_HEALTH, _HEALTH.methods_by_name["Watch"].name),
    }
    | _all_methods(reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"])
)
RETRY_AFTER_KEY = "retry-after-ms"

CURRENT_AGENT: contextvars.ContextVar[str] = contextvars.ContextVar("flagpost_agent_id")
# The machine id the credential is bound to; None when the authenticator binds none.
CURRENT_MACHINE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "flagpost_machine_id", default=None
)

# -> agent id, or (agent id, bound machine id, anything else ...)
Authenticate = Callable[[str], Awaitable[str | tuple[Any, ...]]]
ErrorObserver = Callable[[str, str], None]  # (method, reason): metrics


def current_agent_id() -> str:
    """The agent authenticated for the RPC being served."""
    try:
        return CURRENT_AGENT.get()
    except LookupError:
        raise Unauthenticated("no authenticated agent for this call") from None


def current_machine_id() -> str | None:
    """The machine id the current RPC's credential is bound to (None: no binding known)."""
    return CURRENT_MACHINE.get()


def peer_key(peer: str) -> str:
    """The rate-limit bucket of a grpc peer string: one client address, normalised so that one
    client cannot spread its attempts over many keys.

    ``ipv4:10.0.0.5:51234`` -> ``10.0.0.5``; an IPv4-mapped IPv6 address
    (``ipv6:[::ffff:10.0.0.5]:51234``) -> the IPv4 address; any other IPv6 address -> its /64
    network (``2001:db8:1:2::/64``: one host usually owns a whole /64), zone id dropped; a
    transport without an IP address (``unix:/run/x.sock``, ``unix-abstract:``, ``vsock:``) or
    an address that does not parse -> one bucket named after the transport (``unix``)."""
    scheme, _, rest = urllib.parse.unquote(peer).partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return scheme or "unknown"
    host = rest.rpartition(":")[0] if rest.rfind("]") < rest.rfind(":") else rest  # the port
    host = host.strip("[]").partition("%")[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return scheme
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def bearer_token(metadata: Any) -> str:
    """The credential of an ``authorization: Bearer …`` header, else Unauthenticated."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            break
    raise Unauthenticated("missing `authorization: Bearer <agent credential>` metadata")


async def _abort(
    context: grpc.aio.ServicerContext,
    method: str,
    exc: BaseException,
    on_error: ErrorObserver | None = None,
) -> None:
    if on_error is not None:
        on_error(method, exc.reason if isinstance(exc, FlagpostError) else "internal")
    if isinstance(exc, FlagpostError):
        code = getattr(grpc.StatusCode, exc.grpc_code, grpc.StatusCode.INTERNAL)
        trailing: tuple[tuple[str, str], ...] = ()
        if isinstance(exc, ResourceExhausted):
            trailing = ((RETRY_AFTER_KEY, str(exc.retry_after_ms)),)
        log.info("%s -> %s: %s", method, code.name, exc.message)
        await context.abort(code, exc.message, trailing_metadata=trailing)
    log.error("%s failed unexpectedly", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal server error")


def _parsing(
    behavior: Callable[..., Any], deserializer: Callable[[bytes], Any] | None
) -> Callable[..., Any]:
    """``behavior`` taking the raw request bytes: parse them with ``deserializer`` first; a
    message that does not parse (corrupt wire format, bad UTF-8) is InvalidArgument."""
    if deserializer is None:
        return behavior

    def parse_then_call(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = deserializer(raw)
        except DecodeError:
            raise InvalidArgument("is not a valid protobuf message", field="request") from None
        return behavior(request, context)

    return parse_then_call


class FlagpostInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates and maps errors for every RPC (see module docstring)."""

    def __init__(
        self,
        authenticate: Authenticate,
        on_error: ErrorObserver | None = None,
        public_methods: frozenset[str] = PUBLIC_METHODS,
        drain: Drain | None = None,
    ) -> None:
        """``public_methods``: served without a credential (the start-up check refuses any
        that is not on ``PUBLIC_METHODS``; tests pass more to prove that). ``drain``: admits
        each call (refuses them while the server shuts down)."""
        self._authenticate = authenticate
        self._drain = drain
        self._on_error = on_error
        self._public = frozenset(public_methods)

    @property
    def public_methods(self) -> frozenset[str]:
        """The methods this interceptor serves without a credential."""
        return self._public

    def requires_authentication(self, method: str) -> bool:
        """False for the methods this interceptor serves without a credential."""
        return method not in self._public

    async def _enter(self, method: str, context: grpc.aio.ServicerContext) -> None:
        if self._drain is not None:
            self._drain.admit(method)
        if self.requires_authentication(method):
            identity = await self._authenticate(bearer_token(context.invocation_metadata()))
            if isinstance(identity, str):
                CURRENT_AGENT.set(identity)
                CURRENT_MACHINE.set(None)
            else:
                CURRENT_AGENT.set(str(identity[0]))
                CURRENT_MACHINE.set(str(identity[1]))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method
        if handler.unary_unary is not None:
            # The request arrives as bytes and is parsed inside the wrapper, after
            # authentication: a corrupt message is then INVALID_ARGUMENT, not grpc's UNKNOWN.
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(
                    method, _parsing(handler.unary_unary, handler.request_deserializer)
                ),
                response_serializer=handler.response_serializer,
            )
        if not self.requires_authentication(method):
            return handler  # streaming health Watch / reflection: nothing to add
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(method, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(method, handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap_unary(
        self, method: str, behavior: Callable[..., Any]
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                await self._enter(method, context)
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                return result
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, method, exc, self._on_error)

        return wrapped

    def _wrap_stream(
        self, method: str, behavior: Callable[..., Any]
    ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                await self._enter(method, context)
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                elif inspect.isawaitable(result):
                    await result
                else:
                    for item in result:
                        yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, method, exc, self._on_error)

        return wrapped
