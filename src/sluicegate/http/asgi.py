"""Minimal ASGI plumbing: a request view, body reading with a size cap, JSON and error responses.

No web framework on the hot path: measured on this machine, a framework adds about a third to the
per-request CPU of a raw ASGI app, and the gateway needs only a route table and two kinds of response.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from ..errors import GatewayError, RequestTooLarge
from ..wire.openai_chat.encode import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"


class ClientGone(Exception):
    """The client disconnected before the request body arrived."""


class Request:
    __slots__ = ("_headers", "receive", "scope", "send")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self._headers: dict[bytes, bytes] | None = None

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    @property
    def path(self) -> str:
        return str(self.scope["path"])

    def header(self, name: bytes) -> str | None:
        if self._headers is None:
            self._headers = {k.lower(): v for k, v in self.scope["headers"]}
        value = self._headers.get(name)
        return value.decode("latin-1") if value is not None else None

    async def body(self, limit: int) -> bytes:
        declared = self.header(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestTooLarge(f"The request body is larger than the limit of {limit} bytes")
        parts: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise RequestTooLarge(f"The request body is larger than the limit of {limit} bytes")
                parts.append(chunk)
            if not message.get("more_body"):
                return parts[0] if len(parts) == 1 else b"".join(parts)


def _headers(content_type: bytes, length: int, extra: dict[str, str] | None) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % length)]
    if extra:
        headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items())
    return headers


async def send_bytes(
    send: Send, status: int, body: bytes, content_type: bytes = JSON, headers: dict[str, str] | None = None
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _headers(content_type, len(body), headers)})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
    await send_bytes(send, status, orjson.dumps(obj), JSON, headers)


ErrorRenderer = Callable[[GatewayError, "str | None"], bytes]


async def send_error(
    send: Send, exc: GatewayError, headers: dict[str, str] | None = None, render: ErrorRenderer = error_body
) -> None:
    """The error as an HTTP response; ``render`` is the wire format's envelope (OpenAI's by default)."""
    merged = {**exc.headers, **(headers or {})}
    await send_bytes(send, exc.status, render(exc, merged.get("x-request-id")), JSON, merged)


async def watch_disconnect(receive: Receive, task: asyncio.Task[Any], gone: list[bool]) -> None:
    """Cancel the request's task as soon as the client goes away, so the upstream call stops at once."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.append(True)
            task.cancel()
            return
