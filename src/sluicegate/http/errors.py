"""GatewayError → the OpenAI error envelope, the only place an error becomes an HTTP response."""

from __future__ import annotations

import orjson

from ..errors import GatewayError, InternalError


def error_body(exc: GatewayError) -> bytes:
    return orjson.dumps(exc.envelope())


def internal_error() -> InternalError:
    # Never the exception's text: it may hold internals or secrets.
    return InternalError("The gateway failed to handle this request. It has been logged.")
