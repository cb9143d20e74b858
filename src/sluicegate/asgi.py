"""Minimal ASGI plumbing: a request view, body reading with a size cap, JSON and error responses.

No web framework on the hot path: measured on this machine, a framework adds about a third to the
per-request CPU of a raw ASGI app, and the gateway needs only a route table and two kinds of response.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from .errors import GatewayError, InvalidHeader, InvalidRequest, RequestTooLarge, UnsupportedEncoding
from .wire.openai_chat.encode import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"


class ClientGone(Exception):
    """The client disconnected before the request body arrived."""


# Headers that name one thing: sent twice, which one the client meant is a guess, so the request is refused.
_SINGLE = (b"authorization", b"x-api-key", b"content-encoding")
# Compressed bodies larger than this are inflated in a thread: a small input can expand to the whole body limit.
_INFLATE_INLINE_BYTES = 4096
_NO_NAMES: frozenset[bytes] = frozenset()
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class Request:
    __slots__ = ("_doubled", "_headers", "receive", "scope", "send")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self._headers: dict[bytes, bytes] | None = None
        self._doubled = _NO_NAMES

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    @property
    def path(self) -> str:
        return str(self.scope["path"])

    def _index(self) -> dict[bytes, bytes]:
        if self._headers is None:
            raw = self.scope["headers"]
            self._headers = {k.lower(): v for k, v in raw}
            if len(self._headers) < len(raw):
                names = [k.lower() for k, _ in raw]
                self._doubled = frozenset(n for n in _SINGLE if names.count(n) > 1)
        return self._headers

    def header(self, name: bytes) -> str | None:
        """The header's value; an ``InvalidHeader`` for a header in ``_SINGLE`` that was sent more than once."""
        headers = self._headers if self._headers is not None else self._index()
        value = headers.get(name)
        if self._doubled and name in self._doubled:
            text = name.decode()
            raise InvalidHeader(f"The request has more than one {text} header; send it once", param=text)
        return value.decode("latin-1") if value is not None else None

    async def body(self, limit: int) -> bytes:
        """The body, at most ``limit`` bytes as sent and, for a gzip or deflate body, once inflated."""
        headers = self._headers if self._headers is not None else self._index()
        wbits = self._wbits() if b"content-encoding" in headers else None
        declared = headers.get(b"content-length")
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
                break
        raw = parts[0] if len(parts) == 1 else b"".join(parts)
        if wbits is None or not raw:
            return raw
        if len(raw) <= _INFLATE_INLINE_BYTES:
            return inflate(raw, wbits, limit)
        return await asyncio.to_thread(inflate, raw, wbits, limit)

    def _wbits(self) -> int | None:
        """zlib's window setting for the body's Content-Encoding; None for identity; 415 for anything else."""
        encoding = (self.header(b"content-encoding") or "").strip().lower()
        if encoding in ("", "identity"):
            return None
        wbits = _WBITS.get(encoding)
        if wbits is None:
            raise UnsupportedEncoding(
                f"Content-Encoding {encoding[:32]!r} is not supported; send gzip, deflate or identity",
                param="content-encoding",
            )
        return wbits


def inflate(raw: bytes, wbits: int, limit: int) -> bytes:
    """Decompress, never producing more than ``limit`` bytes: a gzip bomb costs at most the limit."""
    out: list[bytes] = []
    size = 0
    try:
        while raw:
            inflater = zlib.decompressobj(wbits)
            part = inflater.decompress(raw, limit + 1 - size)
            size += len(part)
            if size > limit:
                raise RequestTooLarge(f"The request body is larger than the limit of {limit} bytes once decompressed")
            if not inflater.eof:
                raise InvalidRequest("The compressed request body is truncated", param="content-encoding")
            out.append(part)
            raw = inflater.unused_data  # gzip allows several members, one after the other
    except zlib.error as exc:
        raise InvalidRequest(
            "The request body is not valid for its Content-Encoding", param="content-encoding"
        ) from exc
    return out[0] if len(out) == 1 else b"".join(out)


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
