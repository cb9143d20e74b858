"""GatewayError → the OpenAI error envelope, the only place an error becomes an HTTP response."""

from __future__ import annotations

import orjson

from ..errors import GatewayError, InternalError


def error_body(exc: GatewayError, request_id: str | None = None) -> bytes:
    """The envelope, with `` (request id: X)`` after the message so a caller can quote it to an operator.

    The four keys and their meaning are unchanged; only the human-readable ``message`` grows. (The SSE
    ``stream_error`` frame is byte-exact by contract and never goes through here.)
    """
    envelope = exc.envelope()
    if request_id:
        err = envelope.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            # A copy: an upstream's envelope is passed on from the exception and must stay intact.
            envelope = {**envelope, "error": {**err, "message": f"{err['message']} (request id: {request_id})"}}
    return orjson.dumps(envelope)


def internal_error() -> InternalError:
    # Never the exception's text: it may hold internals or secrets.
    return InternalError("The gateway failed to handle this request. It has been logged.")
