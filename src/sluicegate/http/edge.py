"""Around every handler: the headers every response carries and the CORS preflight.

``App._http`` decides when (the chat and models handlers set their own request id, so with CORS off they get
no wrapper: the hot path stays as it was); this module decides what: ``x-request-id`` on every other response,
CORS headers for an allowed browser origin, ``Allow`` for 405, and the 204 answer to a preflight.
"""

from __future__ import annotations

from ..asgi import Message, Request, Send
from ..config import ServerConfig
from .cors import Cors, CorsRefused
from .inference import request_id_of


class Edge:
    __slots__ = ("cors",)

    def __init__(self, server: ServerConfig) -> None:
        self.cors = Cors(server.cors_origins) if server.cors_origins else None

    def decorated(self, request: Request, add_request_id: bool, ids: dict[str, str]) -> Send:
        """``request.send`` adding the headers this response must carry; ``ids`` gets the request id it chose."""
        extra: list[tuple[bytes, bytes]] = []
        if add_request_id:
            ids["x-request-id"] = request_id_of(request)
            extra.append((b"x-request-id", ids["x-request-id"].encode()))
        if self.cors is not None:
            allowed = self.cors.allow_origin(request.header(b"origin"))
            if allowed is not None:
                extra.extend(self.cors.response_headers(allowed))
        return _adding_headers(request.send, extra) if extra else request.send

    def allow(self, methods: tuple[str, ...]) -> str:
        return ", ".join((*methods, "OPTIONS") if self.cors is not None else methods)

    def is_preflight(self, request: Request) -> bool:
        return (
            self.cors is not None
            and request.method == "OPTIONS"
            and request.header(b"access-control-request-method") is not None
        )

    async def preflight(self, request: Request, methods: tuple[str, ...]) -> None:
        """204 with what the browser may send; 403 for an origin not in ``server.cors_origins``."""
        assert self.cors is not None
        origin = request.header(b"origin")
        allowed = self.cors.allow_origin(origin)
        if allowed is None:
            raise CorsRefused(f"Origin {(origin or '')[:80]!r} is not allowed by server.cors_origins")
        headers = self.cors.preflight_headers(
            allowed, ", ".join(methods), request.header(b"access-control-request-headers")
        )
        await request.send({"type": "http.response.start", "status": 204, "headers": headers})
        await request.send({"type": "http.response.body", "body": b""})


def _adding_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            present = {name for name, _ in headers}
            headers.extend(h for h in extra if h[0] not in present)
            message = {**message, "headers": headers}
        await send(message)

    return sending
