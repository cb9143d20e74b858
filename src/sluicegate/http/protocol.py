"""The HTTP/1.1 connection: uvicorn's httptools protocol with the edge limits the gateway needs.

uvicorn answers a request its parser refuses (``Content-Length`` with ``Transfer-Encoding``, a negative
``Content-Length``, a bad method) with a plain-text 400, puts no limit on header size or count, and waits
for ever on a client that trickles its headers or body. This subclass keeps uvicorn's request cycle and
adds, per connection:

- every refusal of its own as the OpenAI error envelope with an ``x-request-id`` (SPEC §6), then close;
- a total deadline from a request's first byte to the end of its headers (``server.header_timeout``, also
  for a new connection that sends nothing), and from there to the end of its body (``body_timeout``):
  totals, so a byte every few seconds does not keep a connection (and its key's concurrency slot) for ever;
- ``max_header_bytes`` / ``max_headers``: 431.

The common case costs no timer at all: a request whose headers and body arrive in one read completes
inside ``data_received``, and a deadline is armed only when a read ends with the request incomplete.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ..errors import GatewayError, HeadersTooLarge, MalformedHttp, RequestTimeout
from ..wire.openai_chat.encode import error_body

log = logging.getLogger("sluicegate.http")

_IDLE, _HEAD, _BODY = 0, 1, 2


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; httptools re-raises it as the callback error's context."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


def limits_of(app: Any) -> EdgeLimits:
    """The gateway app's limits, looked for through uvicorn's own middleware wrappers (``.app``)."""
    for _ in range(4):
        limits = getattr(app, "edge_limits", None)
        if isinstance(limits, EdgeLimits):
            return limits
        app = getattr(app, "app", None)
    return EdgeLimits()


class _Edge:
    """This connection's state; one attribute on the protocol, with slots.

    uvicorn's protocol already has 27 attributes; past 30, CPython stops sharing instance-dict keys and every
    attribute access of uvicorn's own per-request code gets slower (measured: +2,000 instructions a request).
    """

    __slots__ = ("deadline", "head_bytes", "limits", "phase")

    def __init__(self, limits: EdgeLimits) -> None:
        self.limits = limits
        self.phase = _IDLE
        # Bytes read since the current request began, while its head is incomplete (the read that completes
        # it counted whole: an upper bound on the head's size, exact enough to decide when to measure it).
        self.head_bytes = 0
        self.deadline: asyncio.TimerHandle | None = None

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None


class GatewayHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._edge = _Edge(limits_of(self.app))

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn arms no timer for a connection that never sends a byte; its keep-alive handler closes it.
        idle = self._edge.limits.header_timeout
        self.timeout_keep_alive_task = self.loop.call_later(idle, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._edge.disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        edge = self._edge
        if edge.phase == _IDLE:
            # Data on an idle connection starts a request. (Not an on_message_begin override, which would cost
            # every request a Python call; the price: a pipelined request's head deadline starts on its next read.)
            edge.phase = _HEAD
            edge.head_bytes = len(data)
        elif edge.phase == _HEAD:
            edge.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Served as plain HTTP (uvicorn runs with ws="none"); the parser stops at the upgrade point.
            return
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                self._refuse(exc.__context__.error)
                return
            raise
        except httptools.HttpParserError as exc:
            # llhttp's reason names the rule that was broken, never the request's bytes.
            self._refuse(MalformedHttp(f"Malformed HTTP request: {exc}"))
            return
        # The request is incomplete after this read: from here on it runs against a deadline.
        if edge.phase == _HEAD:
            if edge.head_bytes > edge.limits.max_header_bytes:
                self._refuse(_too_large(edge.limits))
            elif edge.deadline is None:
                edge.deadline = self.loop.call_later(edge.limits.header_timeout, self._header_timed_out)
        elif edge.phase == _BODY and edge.deadline is None:
            edge.deadline = self.loop.call_later(edge.limits.body_timeout, self._body_timed_out)

    # Parser callbacks (uvicorn's, extended). The base class is called directly, not through super():
    # these run for every request.

    def on_headers_complete(self) -> None:
        edge = self._edge
        limits = edge.limits
        if len(self.headers) > limits.max_headers:
            raise _Refused(HeadersTooLarge(f"The request has more than {limits.max_headers} headers"))
        if edge.head_bytes > limits.max_header_bytes and self._head_size() > limits.max_header_bytes:
            raise _Refused(_too_large(limits))
        if edge.deadline is not None:
            edge.disarm()
        edge.phase = _BODY
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        edge = self._edge
        if edge.deadline is not None:
            edge.disarm()
        edge.phase = _IDLE
        HttpToolsProtocol.on_message_complete(self)

    # Deadlines

    def _header_timed_out(self) -> None:
        edge = self._edge
        edge.deadline = None
        if edge.phase != _HEAD or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A pipelined request's head is late while the previous response is still being written: let that
            # response finish, then close instead of reading on.
            cycle.keep_alive = False
            return
        timeout = edge.limits.header_timeout
        self._refuse(RequestTimeout(f"The request headers were not received within {timeout:g} s"))

    def _body_timed_out(self) -> None:
        edge = self._edge
        edge.deadline = None
        cycle = self.cycle
        if edge.phase != _BODY or self.transport.is_closing() or cycle is None:
            return
        if cycle.response_started:
            # Answered without waiting for the body (e.g. 401): stop reading what is left of it.
            if cycle.response_complete:
                self.transport.close()
            else:
                cycle.keep_alive = False
            return
        timeout = edge.limits.body_timeout
        self._refuse(RequestTimeout(f"The request body was not received within {timeout:g} s"))

    # Refusals

    def _refuse(self, error: GatewayError) -> None:
        """Answer with the envelope and close: after a refusal the connection's framing cannot be trusted."""
        self._edge.disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:
                self.transport.close()
                return
            # The app may still be waiting on this request: it now sees a disconnect and its sends go nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        request_id = "req_" + secrets.token_hex(12)
        peer = self.client[0] if self.client else "?"
        log.info("refused %s (request %s) from %s: %s", error.status, request_id, peer, error.message)
        body = error_body(error, request_id)
        head = [STATUS_LINE[error.status]]
        head.extend(b"%s: %s\r\n" % (name, value) for name, value in self.server_state.default_headers)
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nx-request-id: %s\r\nconnection: close\r\n\r\n"
            % (len(body), request_id.encode())
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()
        self._edge.phase = _IDLE

    def _head_size(self) -> int:
        # As on the wire: "name: value\r\n" per header, plus the request line.
        return len(self.url) + 14 + sum(len(name) + len(value) + 4 for name, value in self.headers)


def _too_large(limits: EdgeLimits) -> HeadersTooLarge:
    return HeadersTooLarge(f"The request headers are larger than {limits.max_header_bytes} bytes")
