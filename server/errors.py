"""The one exception tree of the server.

Each error names its gRPC status code and HTTP status here, once; the gRPC interceptor
(``server.grpc.interceptors``) and the aiohttp middleware (``server.web.middleware``) are the only
places that turn these into wire statuses.
"""

from __future__ import annotations


class FlagpostError(Exception):
    """Base of every error the server raises on purpose."""

    grpc_code: str = "INTERNAL"  # a name of grpc.StatusCode
    http_status: int = 500
    reason: str = "internal"  # short machine-readable reason (metrics label, JSON "error")

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(FlagpostError):
    """Bad input. ``field`` is a dotted path such as ``events[3].event_id``."""

    grpc_code = "INVALID_ARGUMENT"
    http_status = 400
    reason = "invalid_argument"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.detail = message  # without the field


class Unauthenticated(FlagpostError):
    grpc_code = "UNAUTHENTICATED"
    http_status = 401
    reason = "unauthenticated"


class PermissionDenied(FlagpostError):
    grpc_code = "PERMISSION_DENIED"
    http_status = 403
    reason = "permission_denied"


class NotFound(FlagpostError):
    grpc_code = "NOT_FOUND"
    http_status = 404
    reason = "not_found"


class Conflict(FlagpostError):
    grpc_code = "FAILED_PRECONDITION"
    http_status = 409
    reason = "conflict"


class ResourceExhausted(FlagpostError):
    """The server sheds load; clients retry after ``retry_after_ms`` (with jitter)."""

    grpc_code = "RESOURCE_EXHAUSTED"
    http_status = 503
    reason = "overloaded"

    def __init__(self, message: str, *, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Overloaded(ResourceExhausted):
    """No database connection became free within ``database_pool_timeout_seconds`` (the pool
    of ``database_pool_size`` is exhausted): shed the request like a full ingest queue.
    ``server.storage.db`` raises it in place of SQLAlchemy's pool ``TimeoutError``."""


class RateLimited(ResourceExhausted):
    """One client made too many attempts (logins, enrollments): 429 on the web."""

    http_status = 429
    reason = "rate_limited"


class TooManyStreams(ResourceExhausted):
    """A web session (``max_streams_per_session``) or the server (``max_streams_total``) has as
    many live streams open as allowed: 429 on the web, retry after one closes."""

    http_status = 429
    reason = "too_many_streams"


class Unavailable(FlagpostError):
    """A dependency (the database) is unreachable; the operation is safe to retry."""

    grpc_code = "UNAVAILABLE"
    http_status = 503
    reason = "unavailable"


class ListenError(FlagpostError):
    """A transport cannot bind its address (the port is in use, the host is not an address of
    this machine). The message names the OS reason and the flag, config key and environment
    variable that choose the address; ``setting`` is the config prefix (``grpc`` or ``web``)."""

    reason = "listen"

    def __init__(
        self, transport: str, host: str, port: int, os_reason: str, *, in_use: bool, setting: str
    ) -> None:
        flag = f"--{setting}-port"
        port_hint = (
            f"choose another port with {flag} (config {setting}_port, env "
            f"FLAGPOST_{setting.upper()}_PORT)"
        )
        if in_use:
            hint = f"another process (another flagpost-server?) holds it: stop it, or {port_hint}"
        else:
            hint = (
                f"set {setting}_host (env FLAGPOST_{setting.upper()}_HOST) to an address of this "
                f"machine, or {port_hint}"
            )
        super().__init__(f"cannot listen for {transport} on {host}:{port}: {os_reason}; {hint}")
        self.port = port


class SchemaOutOfDate(FlagpostError):
    """The database schema is behind the code: run ``flagpost-server db upgrade``."""

    reason = "schema_out_of_date"


class ConfigError(FlagpostError):
    """The server's own configuration is invalid."""

    reason = "config"


class UnprotectedMethod(FlagpostError):
    """Start-up check: a gRPC method is callable without authentication but is not on the
    allow-list, or the authentication interceptor is missing. The server refuses to start."""

    reason = "unprotected_method"
