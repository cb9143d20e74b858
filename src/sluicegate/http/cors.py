"""CORS for browser clients (``server.cors_origins``; off by default).

Credentials travel in ``Authorization`` / ``x-api-key``, never in cookies, so responses never carry
``Access-Control-Allow-Credentials``, and ``*`` may be answered literally. ``Authorization`` cannot be
allowed by a ``*`` in ``Access-Control-Allow-Headers`` (Fetch standard), so a preflight is answered with
the requested headers that are on the list below, by name.
"""

from __future__ import annotations

from ..errors import PermissionDenied


class CorsRefused(PermissionDenied):
    """A preflight from an origin that is not in ``server.cors_origins``."""

    code = "cors_origin_not_allowed"


# What the OpenAI SDKs (openai-node sends its x-stainless-* telemetry from browsers too), the Anthropic SDK
# and plain fetch() send with a chat request.
_ALLOWED_HEADERS = frozenset(
    {
        "accept",
        "authorization",
        "content-type",
        "content-encoding",
        "x-api-key",
        "x-request-id",
        "openai-organization",
        "openai-project",
        "openai-beta",
        "anthropic-version",
        "anthropic-beta",
        "anthropic-dangerous-direct-browser-access",
    }
)
_ALLOWED_PREFIXES = ("x-stainless-",)
# Response headers a browser script may read: the request id to quote, and what a client needs to back off.
EXPOSED = (
    b"x-request-id, retry-after, retry-after-ms, x-sluicegate-attempts, x-sluicegate-fallbacks, "
    b"x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, "
    b"x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens"
)
MAX_AGE = b"600"


class Cors:
    __slots__ = ("_any", "_origins")

    def __init__(self, origins: list[str]) -> None:
        self._any = "*" in origins
        self._origins = frozenset(origins)

    def allow_origin(self, origin: str | None) -> bytes | None:
        """The ``Access-Control-Allow-Origin`` value for a request from ``origin``, or None when not allowed."""
        if origin is None:
            return None
        if self._any:
            return b"*"
        return origin.encode("latin-1") if origin.lower() in self._origins else None

    def response_headers(self, allowed: bytes) -> list[tuple[bytes, bytes]]:
        headers = [(b"access-control-allow-origin", allowed), (b"access-control-expose-headers", EXPOSED)]
        if allowed != b"*":
            headers.append((b"vary", b"origin"))
        return headers

    def preflight_headers(self, allowed: bytes, methods: str, requested: str | None) -> list[tuple[bytes, bytes]]:
        names = [h.strip().lower() for h in (requested or "").split(",") if h.strip()]
        granted = ", ".join(n for n in names if n in _ALLOWED_HEADERS or n.startswith(_ALLOWED_PREFIXES))
        headers = [
            (b"access-control-allow-origin", allowed),
            (b"access-control-allow-methods", methods.encode()),
            (b"access-control-max-age", MAX_AGE),
        ]
        if granted:
            headers.append((b"access-control-allow-headers", granted.encode("latin-1")))
        # The answer depends on what was asked, so a cache must key on it.
        vary = b"access-control-request-method, access-control-request-headers"
        headers.append((b"vary", vary if allowed == b"*" else b"origin, " + vary))
        return headers
