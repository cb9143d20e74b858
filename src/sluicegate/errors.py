"""The one error tree of sluicegate.

Every failure the gateway reports is a ``GatewayError``. Each class carries the HTTP status, the
OpenAI error ``type`` and ``code`` it maps to (SPEC §6); the HTTP edge is the only place that turns
one into a response (``http/errors.py``), and the stream encoder the only place that turns one into
an SSE ``stream_error`` frame (SPEC §7).

    GatewayError
    ├── InvalidRequest            400 invalid_body (param names the field)
    │   ├── InvalidHeader             invalid_header (param names the header)
    │   └── MalformedHttp             malformed_request (refused by the HTTP parser)
    ├── RequestTimeout            408 request_timeout (headers or body not received in time)
    ├── RequestTooLarge           413 request_too_large
    ├── UnsupportedEncoding       415 unsupported_content_encoding
    ├── HeadersTooLarge           431 headers_too_large
    ├── AuthenticationFailed      401 invalid_api_key
    ├── PermissionDenied          403
    │   ├── ModelAccessDenied         model_access_denied
    │   ├── BudgetExceeded            budget_exceeded
    │   ├── DlpBlocked                dlp_blocked
    │   └── AdminKeyRequired          admin_key_required (an API key on the admin API)
    ├── NotFound                  404 (route)
    │   └── ModelNotFound             model_not_found
    ├── MethodNotAllowed          405 method_not_allowed
    ├── Conflict                  409 conflict (admin: name taken, group in use)
    ├── RateLimited               429 rate_limit_exceeded
    ├── Overloaded                503 overloaded (load shedding)
    ├── StoreUnavailable          503 store_unavailable (fail closed)
    ├── InternalError             500 internal_error
    └── UpstreamError             502 upstream_error  (an attempt at one deployment failed)
        ├── UpstreamEmptyBody         502 upstream_empty_body
        ├── UpstreamStatus            the upstream's own status and envelope, passed on
        ├── UpstreamUnavailable       503 upstream_unavailable
        └── UpstreamTimeout           504 upstream_timeout

Messages never contain secrets: adapters build them from upstream bodies, which never echo our key.
"""

from __future__ import annotations

import math
from typing import Any


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers: dict[str, str] = headers or {}

    def envelope(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_body"


class InvalidHeader(InvalidRequest):
    code = "invalid_header"


class MalformedHttp(InvalidRequest):
    code = "malformed_request"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class RequestTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedEncoding(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_content_encoding"


class HeadersTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class ModelAccessDenied(PermissionDenied):
    code = "model_access_denied"


class BudgetExceeded(PermissionDenied):
    code = "budget_exceeded"


class DlpBlocked(PermissionDenied):
    code = "dlp_blocked"


class AdminKeyRequired(PermissionDenied):
    code = "admin_key_required"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class Overloaded(GatewayError):
    status = 503
    type = "server_error"
    code = "overloaded"


class StoreUnavailable(GatewayError):
    """The store cannot be reached; requests that need it fail closed."""

    status = 503
    type = "server_error"
    code = "store_unavailable"


class InternalError(GatewayError):
    status = 500
    type = "server_error"
    code = "internal_error"


class UpstreamError(GatewayError):
    """One attempt at an upstream failed.

    ``retryable`` says whether another attempt (same or other deployment) may succeed;
    ``retry_after`` is the upstream's hint in seconds, when it gave one.
    """

    status = 502
    type = "server_error"
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        retry_after: float | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, param=param, headers=headers)
        self.retryable = retryable
        self.retry_after = retry_after


class UpstreamEmptyBody(UpstreamError):
    code = "upstream_empty_body"


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamStatus(UpstreamError):
    """The upstream answered with an HTTP error; the client gets its status and its reason.

    ``body`` is the OpenAI envelope to pass on: an OpenAI-compatible upstream's own envelope
    verbatim, or another provider's error translated by its adapter.
    """

    def __init__(
        self,
        status: int,
        body: dict[str, Any],
        *,
        retryable: bool,
        retry_after: float | None = None,
    ) -> None:
        err = body.get("error") if isinstance(body.get("error"), dict) else {}
        assert isinstance(err, dict)
        message = str(err.get("message") or f"upstream returned HTTP {status}")
        headers: dict[str, str] = {}
        if retry_after is not None:
            # Pass the upstream's hint on: the SDKs read retry-after-ms first, then retry-after.
            headers = {"retry-after": str(math.ceil(retry_after)), "retry-after-ms": str(int(retry_after * 1000))}
        super().__init__(message, retryable=retryable, retry_after=retry_after, headers=headers)
        self.status = status
        self.type = str(err.get("type") or ("server_error" if status >= 500 else "invalid_request_error"))
        self.code = str(err["code"]) if err.get("code") is not None else "upstream_error"
        self.param = str(err["param"]) if err.get("param") is not None else None
        self.body = body

    def envelope(self) -> dict[str, Any]:
        return self.body


class StreamInterrupted(Exception):
    """A failure after the first byte was sent; ends the stream with the ``stream_error`` frame (SPEC §7)."""

    def __init__(self, message: str = "upstream stream interrupted") -> None:
        super().__init__(message)
        self.message = message
