"""A fault-injecting fake OpenAI-compatible upstream, speaking the real wire format over real sockets.

Built on a raw ``asyncio.Protocol`` instead of a web framework because the faults we inject live below what a
framework lets us touch: chunked transfer encoding is written by hand, bodies can be split at any byte, the socket
can be reset (``SO_LINGER`` 0 then close sends a TCP RST), left silent, or closed mid-body, and the moment the
client closes its socket is recorded.

Usage (synchronous, so it fits plain pytest fixtures; the server runs its own loop in a daemon thread)::

    with FakeOpenAI() as fake:
        client = openai.OpenAI(base_url=fake.url, api_key="k", max_retries=0)
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi scenario:text:3"}])
        assert fake.requests[0].scenario == "text:3"

Endpoints: ``POST /v1/chat/completions`` (stream and non-stream) and ``GET /v1/models``. HTTP/1.1 keep-alive with
many requests per connection; request bodies with ``Content-Length`` or chunked. ``GET /v1/models`` lists
``FakeOpenAI.models`` and ignores scenarios.

Scenario grammar
----------------
A scenario is ``NAME`` or ``NAME:ARG`` (``NAME`` matches ``[a-z_]+``; ``ARG`` is a number or a word without
whitespace, e.g. ``text:3``, ``status:429``, ``finish:length``). It is chosen, first match wins, from:

1. the request header ``x-fake-scenario: NAME[:ARG]`` (for tests of the fake; the gateway does not forward it);
2. ``FakeOpenAI.scenario``, if set (per instance, changeable at runtime: one fake per deployment in failover tests);
3. a token ``scenario:NAME[:ARG]`` anywhere in the request's ``model`` (lets a gateway config give each deployment
   its own behaviour, e.g. ``model: "gpt-x scenario:status:503"``);
4. a token ``scenario:NAME[:ARG]`` in the content of the last message whose role is ``user`` (string content, or
   the first ``text`` part of an array);
5. otherwise ``normal``.

An unknown name or a bad ARG gets a 400 envelope naming the problem and is appended to ``FakeOpenAI.errors``.

Normal output and usage (deterministic)
---------------------------------------
A stream is: role chunk ``{"role":"assistant","content":""}``, one chunk per content piece, a finish chunk
(``delta: {}``, ``finish_reason: "stop"``), a usage chunk (``choices: []``) only when the request had
``stream_options.include_usage: true`` (then every other chunk carries ``"usage": null``), and ``data: [DONE]``.
All chunks share ``id`` (``chatcmpl-fakeN``), ``created``, ``object: chat.completion.chunk`` and ``model`` = the
request's ``model``. Usage is ``prompt_tokens = PROMPT_TOKENS`` (11) and ``completion_tokens`` = the number of
content (or tool-call) chunks; non-stream responses carry the same numbers. ``normal`` streams ``NORMAL_PIECES``
(5 pieces, "Hello from the fake upstream.", usage 11 + 5 = 16).

"Chunk N" in the scenarios below counts stream events from 1 in this order: role, contents, finish, usage (if
asked), ``[DONE]``; so ``reset_after:2`` sends the role chunk and the first content chunk.

Scenarios (stream behaviour; non-stream behaviour in brackets when it differs from "the normal completion")
------------------------------------------------------------------------------------------------------------
- ``normal``: as above.
- ``text:N``: N content chunks ``"w0 "``, ``"w1 "``, ...; completion_tokens N.
- ``tool_calls``: role chunk with ``content: null`` (as OpenAI sends when a turn starts with tools), then for each
  of the two ``TOOL_CALLS`` an opening delta (index, id, type, name, ``arguments: ""``) and
  ``ARGUMENT_FRAGMENTS`` (3) argument fragments, one delta per chunk, call 0 before call 1; finish ``tool_calls``;
  completion_tokens 8. [message with ``tool_calls`` and ``content: null``]
- ``split:K``: the normal stream with the non-ASCII text ``UNICODE_PIECES`` ("héllo wörld 🚀 日本"), the whole body
  written K bytes at a time, each slice its own HTTP chunk and its own socket write, with a short pause between
  writes; K=1 splits inside multi-byte UTF-8 characters. [the JSON body written K bytes at a time]
- ``crlf``: SSE lines end with CRLF, events with ``\\r\\n\\r\\n``.
- ``finish:REASON``: the normal stream with that finish_reason (``length``, ``content_filter``, ...).
- ``echo``: one content chunk whose text is the JSON of the received request body; completion_tokens 1.
- ``finish_with_content``: finish_reason ``stop`` rides on the last content chunk (as vLLM does); no empty finish chunk.
- ``role_every_chunk``: every chunk's delta repeats ``role: "assistant"``.
- ``no_usage``: never a usage chunk, even when asked. [no ``usage`` field]
- ``no_finish``: content chunks, usage (if asked), ``[DONE]``; no finish_reason anywhere. [``finish_reason: null``]
- ``no_done``: the complete stream (finish, usage if asked) without ``[DONE]``; the chunked body is never terminated
  and the socket stays open until the client closes it.
- ``no_done_close``: as ``no_done``, then the chunked body is terminated and the connection closed (FIN).
- ``eof_no_finish``: role and content chunks, then the chunked body is terminated and the connection closed (FIN);
  no finish, no usage, no ``[DONE]``. [headers, half the JSON body, then FIN]
- ``empty_body``: 200 ``text/event-stream`` whose chunked body is terminated at once. [200 JSON, Content-Length 0]
- ``reset_before_headers``: the request is read, then the socket is reset (RST).
- ``reset_after:N``: headers and chunks 1..N, then RST. [headers, half the JSON body, then RST]
- ``inband_error_first``: 200, ``data: {"error": {...}}`` (``INBAND_ERROR``) as the first event, ``[DONE]``, end
  (vLLM's shape). [200 whose JSON body is ``INBAND_ERROR``]
- ``inband_error_after:N``: chunks 1..N, then the in-band error event and ``[DONE]``. [as ``inband_error_first``]
- ``malformed_first`` / ``malformed_after:N``: one ``data:`` event whose payload is not JSON (``MALFORMED_DATA``)
  after N good chunks (0 for ``_first``), then the rest of the normal stream. [200 whose body is ``MALFORMED_DATA``]
- ``silent``: the request is read and never answered; the socket stays open until the client closes it.
- ``headers_then_silence``: stream headers, then nothing until the client closes. [headers with the full
  Content-Length, no body]
- ``stall_after:N``: chunks 1..N, then nothing until the client closes. [headers, half the JSON body, silence]
- ``slow_first:MS``: headers at once, the first chunk after MS milliseconds, then normal. [answer after MS ms]
- ``slow_chunks:MS``: the normal stream with MS milliseconds between consecutive events. [answer after MS ms]
- ``status:CODE``: HTTP CODE with an OpenAI error envelope (429 adds ``retry-after: 1`` and
  ``retry-after-ms: 1000``). ``context_length``: 400 ``context_length_exceeded`` with OpenAI's message.
  ``content_filter``: 400 with code ``content_filter``. ``rate_limited``: 429 without any retry-after header.
  ``retry_after:S``: 429 with ``retry-after: ceil(S)`` and ``retry-after-ms: S*1000``.
- ``status_noenvelope:CODE``: HTTP CODE with an HTML body.
- ``hostile_error``: 400 with an OpenAI envelope whose ``code`` is ``HOSTILE_CODE`` (200 characters with a NUL in
  the middle: longer than the gateway's error-code column, and a character PostgreSQL cannot store) and whose
  message carries a NUL too.
- ``leak_status:CODE``: HTTP CODE with an envelope whose message echoes the ``Authorization`` it received (whole,
  masked as OpenAI masks keys, cut to its ends) and the host it was reached at (also in ``param``; ``code`` is
  ``invalid_api_key:<the key>``), plus
  ``www-authenticate`` (with the key), ``x-upstream-host`` and ``x-ratelimit-remaining-requests`` headers
  (429 adds ``retry-after: 1``). ``leak_text:CODE``: the same message as a ``text/plain`` body.
- ``leak_inband_first`` / ``leak_inband_after:N``: as ``inband_error_*``, the error frame carrying that message.
- ``fail_times:N``: the first N requests carrying this exact scenario string get 500 with an envelope, later ones
  the normal answer (counter per scenario string, cleared by ``reset()``).
- ``nested_delta:N``: the normal answer whose first chunk's delta (the message) carries an extra field ``x_nested``,
  N arrays nested in each other (valid JSON that orjson cannot write back when N > 254).
- ``reject_prefill``: 400 ``invalid_request_error`` when the last message is from the assistant (a provider that
  does not support prefill), otherwise normal.

Every response carries the header ``x-fake-scenario`` naming the scenario that produced it.
Times in ``RecordedRequest`` come from ``time.monotonic()`` so tests can compare them with their own readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import math
import re
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import orjson

__all__ = [
    "ARGUMENT_FRAGMENTS",
    "HOSTILE_CODE",
    "INBAND_ERROR",
    "MALFORMED_DATA",
    "NORMAL_PIECES",
    "NORMAL_TEXT",
    "PROMPT_TOKENS",
    "SCENARIOS",
    "TOOL_CALLS",
    "UNICODE_PIECES",
    "UNICODE_TEXT",
    "FakeOpenAI",
    "RecordedRequest",
    "Scenario",
    "parse_scenario",
    "select_scenario",
]

NORMAL_PIECES = ("Hello", " from", " the", " fake", " upstream.")
NORMAL_TEXT = "".join(NORMAL_PIECES)
UNICODE_PIECES = ("héllo", " wörld", " 🚀", " 日", "本")
UNICODE_TEXT = "".join(UNICODE_PIECES)
PROMPT_TOKENS = 11
# (id, function name, JSON arguments) of the two parallel calls the ``tool_calls`` scenario makes.
TOOL_CALLS = (
    ("call_fake_0", "get_weather", '{"city": "Paris", "unit": "celsius"}'),
    ("call_fake_1", "get_time", '{"timezone": "Europe/Paris"}'),
)
ARGUMENT_FRAGMENTS = 3
INBAND_ERROR: dict[str, Any] = {
    "error": {
        "message": "fake upstream failed while generating",
        "type": "server_error",
        "param": None,
        "code": "internal_server_error",
    }
}
# Truncated JSON: the kind of garbage a crashing upstream or a broken proxy leaves behind.
MALFORMED_DATA = b'{"id":"chatcmpl-broken","choices":[{"index":0,"delta":{"content":"trunc'

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------------------
# Scenario selection


@dataclass(frozen=True)
class Scenario:
    name: str
    arg: str | None = None

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}:{self.arg}"


class ScenarioError(ValueError):
    """An unknown scenario or a bad argument; answered with a 400 so the test author sees it."""


_TOKEN = re.compile(r"scenario:([a-z_]+)(?::([\w.\-]*\w))?")
_BARE = re.compile(r"\s*(?:scenario:)?([a-z_]+)(?::(\S+))?\s*")


def parse_scenario(text: str) -> Scenario | None:
    """The first ``scenario:NAME[:ARG]`` token in ``text``, if any."""
    match = _TOKEN.search(text)
    return Scenario(match[1], match[2]) if match else None


def _last_user_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                return str(part["text"])
    return ""


def select_scenario(body: Any, headers: dict[str, str], forced: str | None = None) -> Scenario:
    """Apply the precedence of the module docstring: header, instance setting, model, last user message."""
    for explicit in (headers.get("x-fake-scenario"), forced):
        if explicit:
            match = _BARE.fullmatch(explicit)
            if not match:
                raise ScenarioError(f"cannot parse scenario {explicit!r}")
            return Scenario(match[1], match[2])
    if isinstance(body, dict):
        for text in (str(body.get("model", "")), _last_user_text(body)):
            if found := parse_scenario(text):
                return found
    return Scenario("normal")


# --------------------------------------------------------------------------------------------------------------
# The request log


@dataclass
class RecordedRequest:
    """One request as the fake saw it. Fields after ``received_at`` are updated live by the server thread."""

    index: int
    connection_id: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or None when the body was empty or not JSON
    raw_body: bytes
    scenario: str | None  # None for requests other than chat completions
    received_at: float
    status: int | None = None  # None when no status line was sent (silence, reset before headers)
    finished_at: float | None = None  # when the fake was done with the response (completed, reset or closed)
    client_closed_at: float | None = None  # set when the client closed its socket before the response finished
    outcome: str | None = None  # complete | reset | closed | client_closed | server_stopped


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _PeerGone(Exception):
    """The client closed its socket: the handler stops writing."""


# --------------------------------------------------------------------------------------------------------------
# One TCP connection


class _Connection(asyncio.Protocol):
    def __init__(self, fake: FakeOpenAI, connection_id: int) -> None:
        self.fake = fake
        self.id = connection_id
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.data_arrived = asyncio.Event()
        self.peer_gone = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed_by_us = False
        self.current: RecordedRequest | None = None

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.fake._adopt(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.data_arrived.set()

    def eof_received(self) -> bool:
        # An HTTP client only half-closes when it gives up, so EOF means "gone"; returning False closes our side.
        self._on_peer_gone()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_peer_gone()
        self.writable.set()  # wake a writer blocked on flow control so it notices
        self.fake._forget(self)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def _on_peer_gone(self) -> None:
        if self.peer_gone.is_set():
            return
        self.peer_gone.set()
        self.data_arrived.set()
        record = self.current
        if not self.closed_by_us and record is not None and record.finished_at is None:
            # Outcome first: tests poll for client_closed_at from another thread, then read the outcome.
            record.outcome = "client_closed"
            record.client_closed_at = time.monotonic()

    # reading

    async def _more_data(self) -> bool:
        if self.peer_gone.is_set():
            return False
        self.data_arrived.clear()
        await self.data_arrived.wait()
        return True

    async def _read_until(self, marker: bytes) -> bytes | None:
        """Bytes up to ``marker`` (consumed, not returned), or None when the client closed first."""
        while (end := self.buffer.find(marker)) < 0:
            if not await self._more_data():
                return None
        data = bytes(self.buffer[:end])
        del self.buffer[: end + len(marker)]
        return data

    async def _read_exact(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not await self._more_data():
                return None
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def _read_chunked(self) -> bytes | None:
        body = bytearray()
        while (size_line := await self._read_until(b"\r\n")) is not None:
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                while await self._read_until(b"\r\n"):  # trailers, up to the empty line
                    pass
                return bytes(body)
            if (data := await self._read_exact(size + 2)) is None:
                return None
            body += data[:-2]
        return None

    async def read_request(self) -> _Request | None:
        """The next request on this connection, or None when the client closed it."""
        head = await self._read_until(b"\r\n\r\n")
        if head is None:
            return None
        request_line, *lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if headers.get("expect", "").lower() == "100-continue":
            self.write_now(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked()
        else:
            body = await self._read_exact(int(headers.get("content-length", "0")))
        if body is None:
            return None
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
        return _Request(method.upper(), target.split("?", 1)[0], headers, body, keep_alive)

    # writing

    def write_now(self, data: bytes) -> None:
        if self.peer_gone.is_set() or self.transport is None or self.transport.is_closing():
            raise _PeerGone
        self.transport.write(data)

    async def send(self, data: bytes) -> None:
        self.write_now(data)
        await self.writable.wait()

    async def reset(self) -> None:
        """Abort with a TCP RST, after what was written has reached the kernel (abort() discards our buffer)."""
        assert self.transport is not None
        while self.transport.get_write_buffer_size() and not self.peer_gone.is_set():
            await asyncio.sleep(0.001)
        self.closed_by_us = True
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def close(self) -> None:
        """Close cleanly (FIN) once the write buffer has been flushed."""
        self.closed_by_us = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed_by_us = True
        if self.transport is not None:
            self.transport.abort()


# --------------------------------------------------------------------------------------------------------------
# One request/response exchange: HTTP and SSE framing, chunk builders


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _usage(tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": tokens,
        "total_tokens": PROMPT_TOKENS + tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


HOSTILE_CODE = "x" * 100 + "\u0000" + "y" * 99


def _envelope(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _Exchange:
    def __init__(self, fake: FakeOpenAI, conn: _Connection, request: _Request, record: RecordedRequest) -> None:
        self.fake = fake
        self.conn = conn
        self.request = request
        self.record = record
        self.body: dict[str, Any] = record.body if isinstance(record.body, dict) else {}
        self.scenario = Scenario("normal")
        self.stream = self.body.get("stream") is True
        options = self.body.get("stream_options")
        self.include_usage = self.stream and isinstance(options, dict) and options.get("include_usage") is True
        self.send_usage = True  # the no_usage scenario turns it off even when asked
        self.model = str(self.body.get("model", "fake-model"))
        self.id = f"chatcmpl-fake{record.index}"
        self.created = int(time.time())
        self.split: int | None = None
        self.eol = b"\n"

    # scenario arguments

    def int_arg(self, minimum: int = 0) -> int:
        try:
            value = int(self.scenario.arg or "")
        except ValueError:
            raise ScenarioError(f"scenario {self.scenario} needs an integer argument") from None
        if value < minimum:
            raise ScenarioError(f"scenario {self.scenario}: argument must be >= {minimum}")
        return value

    def float_arg(self) -> float:
        try:
            return float(self.scenario.arg or "")
        except ValueError:
            raise ScenarioError(f"scenario {self.scenario} needs a numeric argument") from None

    def str_arg(self) -> str:
        if not self.scenario.arg:
            raise ScenarioError(f"scenario {self.scenario.name} needs an argument")
        return self.scenario.arg

    # response lifecycle

    def finish(self, outcome: str) -> None:
        if self.record.finished_at is None:
            self.record.outcome = outcome  # before finished_at, which other threads poll for
            self.record.finished_at = time.monotonic()

    async def send_head(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        lines = [f"HTTP/1.1 {status} {_reason(status)}", "server: fake-openai", f"x-fake-scenario: {self.scenario}"]
        lines += [f"{name}: {value}" for name, value in headers]
        lines.append("connection: keep-alive" if self.request.keep_alive else "connection: close")
        self.record.status = status
        await self.conn.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def send_body(
        self, status: int, body: bytes, content_type: str, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        await self.send_head(status, [("content-type", content_type), ("content-length", str(len(body))), *headers])
        if self.split:
            await self._write_split(body, chunked=False)
        elif body:
            await self.conn.send(body)
        self.finish("complete")

    async def send_json(self, status: int, obj: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        await self.send_body(status, orjson.dumps(obj), "application/json", headers)

    async def start_stream(self) -> None:
        await self.send_head(
            200,
            [("content-type", "text/event-stream"), ("cache-control", "no-cache"), ("transfer-encoding", "chunked")],
        )

    async def send_events(self, payloads: Iterable[bytes], gap: float = 0.0) -> None:
        """Write each payload as one SSE ``data:`` event in its own HTTP chunk (or split, see ``split:K``)."""
        frames = [b"data: " + payload + self.eol + self.eol for payload in payloads]
        if self.split:
            await self._write_split(b"".join(frames), chunked=True)
            return
        for number, frame in enumerate(frames):
            if gap and number:
                await asyncio.sleep(gap)
            await self.conn.send(_http_chunk(frame))

    async def _write_split(self, body: bytes, *, chunked: bool) -> None:
        size = self.split or len(body)
        for start in range(0, len(body), size):
            piece = body[start : start + size]
            await self.conn.send(_http_chunk(piece) if chunked else piece)
            await asyncio.sleep(0)
            # asyncio timers have millisecond granularity, far too coarse for 1-byte writes; a blocking
            # micro-pause releases the GIL and lets the peer read each piece on its own. Only split blocks the loop.
            time.sleep(self.fake.split_pause)

    async def end_stream(self) -> None:
        await self.conn.send(b"0\r\n\r\n")
        self.finish("complete")

    async def reset(self) -> None:
        self.finish("reset")
        await self.conn.reset()

    def close(self) -> None:
        self.finish("closed")
        self.conn.close()

    async def hang(self) -> None:
        """Say nothing more until the client closes; its close time is recorded by the connection."""
        await self.conn.peer_gone.wait()

    # chunk builders

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def text_chunks(self, pieces: Iterable[str], finish_reason: str = "stop") -> list[dict[str, Any]]:
        """Role chunk, one chunk per piece, finish chunk."""
        chunks = [self.chunk({"role": "assistant", "content": ""})]
        chunks += [self.chunk({"content": piece}) for piece in pieces]
        chunks.append(self.chunk({}, finish_reason))
        return chunks

    def payloads(self, chunks: Iterable[dict[str, Any]], tokens: int, *, done: bool = True) -> list[bytes]:
        """Encode chunks, add the usage chunk when the client asked for it, and ``[DONE]``."""
        out = [orjson.dumps(chunk) for chunk in chunks]
        if self.include_usage and self.send_usage:
            usage_chunk = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": _usage(tokens),
            }
            out.append(orjson.dumps(usage_chunk))
        if done:
            out.append(b"[DONE]")
        return out

    def normal_payloads(self) -> list[bytes]:
        return self.payloads(self.text_chunks(NORMAL_PIECES), len(NORMAL_PIECES))

    def completion(self, message: dict[str, Any], finish_reason: str | None, tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.send_usage:
            body["usage"] = _usage(tokens)
        return body

    def text_completion(self, pieces: Iterable[str], finish_reason: str | None = "stop") -> dict[str, Any]:
        pieces = list(pieces)
        message = {"role": "assistant", "content": "".join(pieces), "refusal": None}
        return self.completion(message, finish_reason, len(pieces))


# --------------------------------------------------------------------------------------------------------------
# Scenarios


_Handler = Callable[[_Exchange], Awaitable[None]]
SCENARIOS: dict[str, _Handler] = {}


def _scenario(*names: str) -> Callable[[_Handler], _Handler]:
    def register(handler: _Handler) -> _Handler:
        for name in names:
            SCENARIOS[name] = handler
        return handler

    return register


async def _reply(
    ex: _Exchange,
    pieces: Iterable[str],
    finish_reason: str = "stop",
    edit: Callable[[list[dict[str, Any]]], None] | None = None,
) -> None:
    """A complete answer made of ``pieces``; ``edit`` may rewrite the stream's chunk list first."""
    pieces = list(pieces)
    if not ex.stream:
        await ex.send_json(200, ex.text_completion(pieces, finish_reason))
        return
    chunks = ex.text_chunks(pieces, finish_reason)
    if edit is not None:
        edit(chunks)
    await ex.start_stream()
    await ex.send_events(ex.payloads(chunks, len(pieces)))
    await ex.end_stream()


async def _stream_then(ex: _Exchange, payloads: list[bytes], ending: str) -> None:
    """Stream headers and ``payloads``, then end the exchange in one of the ways a real upstream can."""
    await ex.start_stream()
    await ex.send_events(payloads)
    if ending == "end":
        await ex.end_stream()
    elif ending == "end_then_close":
        await ex.end_stream()
        ex.close()
    elif ending == "reset":
        await ex.reset()
    elif ending == "hang":
        await ex.hang()
    else:
        raise AssertionError(ending)


async def _partial_json(ex: _Exchange, ending: str, fraction: float = 0.5) -> None:
    """Non-stream counterpart of a broken stream: the head promises the whole body, a fraction of it follows."""
    body = orjson.dumps(ex.text_completion(NORMAL_PIECES))
    await ex.send_head(200, [("content-type", "application/json"), ("content-length", str(len(body)))])
    if cut := int(len(body) * fraction):
        await ex.conn.send(body[:cut])
    if ending == "reset":
        await ex.reset()
    elif ending == "close":
        ex.close()
    else:
        await ex.hang()


@_scenario("normal")
async def _normal(ex: _Exchange) -> None:
    await _reply(ex, NORMAL_PIECES)


@_scenario("text")
async def _text(ex: _Exchange) -> None:
    await _reply(ex, [f"w{i} " for i in range(ex.int_arg())])


@_scenario("split")
async def _split(ex: _Exchange) -> None:
    ex.split = ex.int_arg(minimum=1)
    await _reply(ex, UNICODE_PIECES)


@_scenario("crlf")
async def _crlf(ex: _Exchange) -> None:
    ex.eol = b"\r\n"
    await _reply(ex, NORMAL_PIECES)


@_scenario("finish")
async def _finish(ex: _Exchange) -> None:
    await _reply(ex, NORMAL_PIECES, finish_reason=ex.str_arg())


@_scenario("echo")
async def _echo(ex: _Exchange) -> None:
    await _reply(ex, [orjson.dumps(ex.record.body).decode()])


@_scenario("finish_with_content")
async def _finish_with_content(ex: _Exchange) -> None:
    def merge(chunks: list[dict[str, Any]]) -> None:
        finish = chunks.pop()
        chunks[-1]["choices"][0]["finish_reason"] = finish["choices"][0]["finish_reason"]

    await _reply(ex, NORMAL_PIECES, edit=merge)


@_scenario("role_every_chunk")
async def _role_every_chunk(ex: _Exchange) -> None:
    def add_role(chunks: list[dict[str, Any]]) -> None:
        for chunk in chunks[1:]:
            choice = chunk["choices"][0]
            choice["delta"] = {"role": "assistant", **choice["delta"]}

    await _reply(ex, NORMAL_PIECES, edit=add_role)


@_scenario("no_usage")
async def _no_usage(ex: _Exchange) -> None:
    ex.send_usage = False
    await _reply(ex, NORMAL_PIECES)


@_scenario("no_finish")
async def _no_finish(ex: _Exchange) -> None:
    if not ex.stream:
        await ex.send_json(200, ex.text_completion(NORMAL_PIECES, finish_reason=None))
        return

    def drop_finish_chunk(chunks: list[dict[str, Any]]) -> None:
        chunks.pop()

    await _reply(ex, NORMAL_PIECES, edit=drop_finish_chunk)


@_scenario("tool_calls")
async def _tool_calls(ex: _Exchange) -> None:
    tokens = len(TOOL_CALLS) * (1 + ARGUMENT_FRAGMENTS)
    if not ex.stream:
        calls = [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            for call_id, name, arguments in TOOL_CALLS
        ]
        message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": calls}
        await ex.send_json(200, ex.completion(message, "tool_calls", tokens))
        return
    chunks = [ex.chunk({"role": "assistant", "content": None})]
    for index, (call_id, name, arguments) in enumerate(TOOL_CALLS):
        opening = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        chunks.append(ex.chunk({"tool_calls": [opening]}))
        step = math.ceil(len(arguments) / ARGUMENT_FRAGMENTS)
        for start in range(0, len(arguments), step):
            fragment = {"index": index, "function": {"arguments": arguments[start : start + step]}}
            chunks.append(ex.chunk({"tool_calls": [fragment]}))
    chunks.append(ex.chunk({}, "tool_calls"))
    await _stream_then(ex, ex.payloads(chunks, tokens), "end")


@_scenario("no_done")
async def _no_done(ex: _Exchange) -> None:
    if not ex.stream:
        await _normal(ex)
        return
    await _stream_then(ex, ex.normal_payloads()[:-1], "hang")


@_scenario("no_done_close")
async def _no_done_close(ex: _Exchange) -> None:
    if not ex.stream:
        await _normal(ex)
        return
    await _stream_then(ex, ex.normal_payloads()[:-1], "end_then_close")


@_scenario("eof_no_finish")
async def _eof_no_finish(ex: _Exchange) -> None:
    if not ex.stream:
        await _partial_json(ex, "close")
        return
    chunks = ex.text_chunks(NORMAL_PIECES)[:-1]
    payloads = [orjson.dumps(chunk) for chunk in chunks]
    await _stream_then(ex, payloads, "end_then_close")


@_scenario("empty_body")
async def _empty_body(ex: _Exchange) -> None:
    if not ex.stream:
        await ex.send_body(200, b"", "application/json")
        return
    await _stream_then(ex, [], "end")


@_scenario("reset_before_headers")
async def _reset_before_headers(ex: _Exchange) -> None:
    await ex.reset()


@_scenario("reset_after")
async def _reset_after(ex: _Exchange) -> None:
    count = ex.int_arg()
    if not ex.stream:
        await _partial_json(ex, "reset")
        return
    await _stream_then(ex, ex.normal_payloads()[:count], "reset")


@_scenario("stall_after")
async def _stall_after(ex: _Exchange) -> None:
    count = ex.int_arg()
    if not ex.stream:
        await _partial_json(ex, "hang")
        return
    await _stream_then(ex, ex.normal_payloads()[:count], "hang")


@_scenario("headers_then_silence")
async def _headers_then_silence(ex: _Exchange) -> None:
    if not ex.stream:
        await _partial_json(ex, "hang", fraction=0)
        return
    await _stream_then(ex, [], "hang")


@_scenario("silent")
async def _silent(ex: _Exchange) -> None:
    await ex.hang()


@_scenario("inband_error_first", "inband_error_after")
async def _inband_error(ex: _Exchange) -> None:
    count = 0 if ex.scenario.name == "inband_error_first" else ex.int_arg()
    if not ex.stream:
        await ex.send_json(200, INBAND_ERROR)
        return
    payloads = [*ex.normal_payloads()[:count], orjson.dumps(INBAND_ERROR), b"[DONE]"]
    await _stream_then(ex, payloads, "end")


@_scenario("malformed_first", "malformed_after")
async def _malformed(ex: _Exchange) -> None:
    count = 0 if ex.scenario.name == "malformed_first" else ex.int_arg()
    if not ex.stream:
        await ex.send_body(200, MALFORMED_DATA, "application/json")
        return
    payloads = ex.normal_payloads()
    payloads.insert(count, MALFORMED_DATA)
    await _stream_then(ex, payloads, "end")


@_scenario("slow_first")
async def _slow_first(ex: _Exchange) -> None:
    delay = ex.int_arg() / 1000
    if not ex.stream:
        await asyncio.sleep(delay)
        await _normal(ex)
        return
    await ex.start_stream()
    await asyncio.sleep(delay)
    await ex.send_events(ex.normal_payloads())
    await ex.end_stream()


@_scenario("slow_chunks")
async def _slow_chunks(ex: _Exchange) -> None:
    gap = ex.int_arg() / 1000
    if not ex.stream:
        await asyncio.sleep(gap)
        await _normal(ex)
        return
    await ex.start_stream()
    await ex.send_events(ex.normal_payloads(), gap=gap)
    await ex.end_stream()


_ERROR_BODIES: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request (fake upstream)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", None, "You are not allowed to use this model."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    408: ("timeout", None, "Request timed out."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1s."),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
}


async def _send_status(ex: _Exchange, status: int, headers: Iterable[tuple[str, str]] = ()) -> None:
    type_, code, message = _ERROR_BODIES.get(
        status, ("server_error", None, "The server had an error while processing your request. Sorry about that!")
    )
    await ex.send_json(status, _envelope(message, type_, code), headers)


@_scenario("status")
async def _status(ex: _Exchange) -> None:
    status = ex.int_arg(minimum=100)
    headers = [("retry-after", "1"), ("retry-after-ms", "1000")] if status == 429 else []
    await _send_status(ex, status, headers)


@_scenario("rate_limited")
async def _rate_limited(ex: _Exchange) -> None:
    await _send_status(ex, 429)


@_scenario("retry_after")
async def _retry_after(ex: _Exchange) -> None:
    seconds = ex.float_arg()
    headers = [("retry-after", str(math.ceil(seconds))), ("retry-after-ms", str(int(seconds * 1000)))]
    await _send_status(ex, 429, headers)


@_scenario("context_length")
async def _context_length(ex: _Exchange) -> None:
    message = (
        "This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 tokens. "
        "Please reduce the length of the messages."
    )
    await ex.send_json(400, _envelope(message, "invalid_request_error", "context_length_exceeded", "messages"))


@_scenario("content_filter")
async def _content_filter(ex: _Exchange) -> None:
    message = (
        "The response was filtered due to the prompt triggering the content management policy. "
        "Please modify your prompt and retry."
    )
    await ex.send_json(400, _envelope(message, "invalid_request_error", "content_filter", "prompt"))


@_scenario("hostile_error")
async def _hostile_error(ex: _Exchange) -> None:
    await ex.send_json(400, _envelope("bad\u0000request", "invalid_request_error", HOSTILE_CODE))


@_scenario("status_noenvelope")
async def _status_noenvelope(ex: _Exchange) -> None:
    status = ex.int_arg(minimum=100)
    page = f"<html><head><title>{status} {_reason(status)}</title></head><body><h1>{status}</h1></body></html>\n"
    await ex.send_body(status, page.encode(), "text/html")


@_scenario("fail_times")
async def _fail_times(ex: _Exchange) -> None:
    limit = ex.int_arg()
    if ex.fake._count_attempt(str(ex.scenario)) <= limit:
        await _send_status(ex, 500)
    else:
        await _normal(ex)


@_scenario("nested_delta")
async def _nested_delta(ex: _Exchange) -> None:
    # Written by hand: orjson itself refuses to write JSON nested more than 254 levels, a client's parser does not.
    depth = ex.int_arg(1)
    nested = b"[" * depth + b"]" * depth
    if not ex.stream:
        body = ex.text_completion(NORMAL_PIECES)
        body["choices"][0]["message"]["x_nested"] = "@nested@"
        await ex.send_body(200, orjson.dumps(body).replace(b'"@nested@"', nested), "application/json")
        return
    chunks = ex.text_chunks(NORMAL_PIECES)
    chunks[0]["choices"][0]["delta"]["x_nested"] = "@nested@"
    payloads = [p.replace(b'"@nested@"', nested) for p in ex.payloads(chunks, len(NORMAL_PIECES))]
    await _stream_then(ex, payloads, "end")


@_scenario("reject_prefill")
async def _reject_prefill(ex: _Exchange) -> None:
    messages = ex.body.get("messages") or [{}]
    if isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        message = (
            "This model does not support assistant message prefill. The conversation must end with a user message."
        )
        await ex.send_json(400, _envelope(message, "invalid_request_error", None, "messages"))
    else:
        await _normal(ex)


def _leak(ex: _Exchange) -> tuple[str, list[tuple[str, str]]]:
    """What a careless upstream says back: the credential it received (whole, masked the way OpenAI masks it,
    and cut to its ends) and its own address, in a message and in headers."""
    auth = ex.request.headers.get("authorization", "")
    key = auth.removeprefix("Bearer ").strip()
    host = ex.request.headers.get("host", "")
    message = (
        f"Incorrect API key provided: {key[:11]}{'*' * 17}{key[-4:]}. You sent '{auth}' ({key[:3]}...{key[-4:]}) "
        f"to http://{host}/v1/chat/completions on {host}."
    )
    headers = [
        ("www-authenticate", f'Bearer realm="{host}", error="invalid_token", key="{key}"'),
        ("x-upstream-host", host),
        ("x-ratelimit-remaining-requests", "0"),
    ]
    return message, headers


@_scenario("leak_status")
async def _leak_status(ex: _Exchange) -> None:
    status = ex.int_arg(minimum=400)
    message, headers = _leak(ex)
    if status == 429:
        headers.append(("retry-after", "1"))
    host = ex.request.headers.get("host", "")
    code = "invalid_api_key:" + ex.request.headers.get("authorization", "").removeprefix("Bearer ")
    await ex.send_json(status, _envelope(message, "invalid_request_error", code, host), headers)


@_scenario("leak_text")
async def _leak_text(ex: _Exchange) -> None:
    message, headers = _leak(ex)
    await ex.send_body(ex.int_arg(minimum=400), message.encode(), "text/plain", headers)


@_scenario("leak_inband_first", "leak_inband_after")
async def _leak_inband(ex: _Exchange) -> None:
    count = 0 if ex.scenario.name == "leak_inband_first" else ex.int_arg()
    message, _ = _leak(ex)
    error = orjson.dumps(_envelope(message, "server_error", None))
    if not ex.stream:
        await ex.send_body(200, error, "application/json")
        return
    await _stream_then(ex, [*ex.normal_payloads()[:count], error, b"[DONE]"], "end")


# --------------------------------------------------------------------------------------------------------------
# The server


class FakeOpenAI:
    """A fake OpenAI-compatible upstream on 127.0.0.1, running its own event loop in a daemon thread.

    ``scenario`` forces a scenario for every chat request (see the module docstring's precedence); ``models`` is what
    ``GET /v1/models`` lists; with ``api_key`` set, requests without ``Authorization: Bearer <api_key>`` get 401.
    """

    def __init__(
        self,
        *,
        scenario: str | None = None,
        models: Iterable[str] = ("fake-model",),
        api_key: str | None = None,
        split_pause: float = 0.0001,
    ) -> None:
        self.scenario = scenario
        self.models = list(models)
        self.api_key = api_key
        self.split_pause = split_pause
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._errors: list[str] = []
        self._attempts: dict[str, int] = {}
        self._next_index = 0
        self._next_connection = 0
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        # Touched only from the server thread.
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # lifecycle (called from the test's thread)

    def start(self) -> FakeOpenAI:
        if self._thread is not None:
            raise RuntimeError("FakeOpenAI already started")
        self._thread = threading.Thread(target=self._run, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("FakeOpenAI did not start within 10 s")
        if self._startup_error is not None:
            raise RuntimeError("FakeOpenAI failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Close the listener and every open connection, then join the thread."""
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        thread.join(10)
        self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeOpenAI is not started")
        return self._port

    @property
    def url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # the log (thread-safe)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the log, oldest first; the records themselves keep updating (client_closed_at, ...)."""
        with self._lock:
            return list(self._requests)

    @property
    def errors(self) -> list[str]:
        """Problems inside the fake (bad scenario names, handler crashes); tests should expect it empty."""
        with self._lock:
            return list(self._errors)

    def reset(self) -> None:
        """Clear the request log and the ``fail_times`` counters."""
        with self._lock:
            self._requests.clear()
            self._attempts.clear()

    def wait_for(self, predicate: Callable[[list[RecordedRequest]], T], timeout: float = 5.0) -> T:
        """Poll ``predicate(requests)`` until it returns something truthy, and return that; TimeoutError if never."""
        deadline = time.monotonic() + timeout
        while not (result := predicate(self.requests)):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s; requests: {self._summary()}")
            time.sleep(0.005)
        return result

    async def wait_for_async(self, predicate: Callable[[list[RecordedRequest]], T], timeout: float = 5.0) -> T:
        """``wait_for`` for async tests: sleeps without blocking the caller's event loop."""
        deadline = time.monotonic() + timeout
        while not (result := predicate(self.requests)):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s; requests: {self._summary()}")
            await asyncio.sleep(0.005)
        return result

    def _summary(self) -> str:
        return ", ".join(f"{r.method} {r.path} [{r.scenario}] {r.outcome}" for r in self.requests) or "none"

    # server thread

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._startup_error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = asyncio.Event()
        server = await loop.create_server(self._new_connection, "127.0.0.1", 0)
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for conn in list(self._connections):
                if conn.current is not None and conn.current.finished_at is None:
                    conn.current.finished_at = time.monotonic()
                    conn.current.outcome = "server_stopped"
                conn.abort()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    def _new_connection(self) -> _Connection:
        self._next_connection += 1
        return _Connection(self, self._next_connection)

    def _adopt(self, conn: _Connection) -> None:
        self._connections.add(conn)
        task = asyncio.get_running_loop().create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, conn: _Connection) -> None:
        self._connections.discard(conn)

    def _count_attempt(self, scenario: str) -> int:
        with self._lock:
            self._attempts[scenario] = self._attempts.get(scenario, 0) + 1
            return self._attempts[scenario]

    def _record_error(self, message: str) -> None:
        with self._lock:
            self._errors.append(message)

    async def _serve(self, conn: _Connection) -> None:
        try:
            while (request := await conn.read_request()) is not None:
                await self._handle(conn, request)
                if conn.peer_gone.is_set() or conn.closed_by_us:
                    return
                if not request.keep_alive:
                    conn.close()
                    return
        except _PeerGone:
            pass
        except Exception as exc:  # a bug in the fake: make it visible to the test instead of hanging the client
            self._record_error(f"{type(exc).__name__}: {exc}")
            conn.abort()

    def _log(self, conn: _Connection, request: _Request) -> RecordedRequest:
        try:
            body = orjson.loads(request.body) if request.body else None
        except orjson.JSONDecodeError:
            body = None
        with self._lock:
            self._next_index += 1
            record = RecordedRequest(
                index=self._next_index,
                connection_id=conn.id,
                method=request.method,
                path=request.path,
                headers=request.headers,
                body=body,
                raw_body=request.body,
                scenario=None,
                received_at=time.monotonic(),
            )
            self._requests.append(record)
        return record

    async def _handle(self, conn: _Connection, request: _Request) -> None:
        record = self._log(conn, request)
        conn.current = record
        ex = _Exchange(self, conn, request, record)
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            await _send_status(ex, 401)
        elif request.path == "/v1/chat/completions" and request.method == "POST":
            await self._chat(ex)
        elif request.path == "/v1/models" and request.method == "GET":
            await ex.send_json(200, self._model_list())
        elif request.path in ("/v1/chat/completions", "/v1/models"):
            await ex.send_json(405, _envelope("Method not allowed.", "invalid_request_error", None))
        else:
            message = f"Unknown request URL: {request.method} {request.path}."
            await ex.send_json(404, _envelope(message, "invalid_request_error", "unknown_url"))

    async def _chat(self, ex: _Exchange) -> None:
        if not isinstance(ex.record.body, dict):
            message = "We could not parse the JSON body of your request."
            await ex.send_json(400, _envelope(message, "invalid_request_error", None))
            return
        try:
            ex.scenario = select_scenario(ex.record.body, ex.request.headers, self.scenario)
            ex.record.scenario = str(ex.scenario)
            handler = SCENARIOS.get(ex.scenario.name)
            if handler is None:
                raise ScenarioError(
                    f"unknown fake scenario {ex.scenario.name!r}; known: {', '.join(sorted(SCENARIOS))}"
                )
            await handler(ex)
        except ScenarioError as exc:
            self._record_error(str(exc))
            await ex.send_json(400, _envelope(str(exc), "invalid_request_error", "fake_bad_scenario"))

    def _model_list(self) -> dict[str, Any]:
        created = 1_700_000_000
        data = [{"id": model, "object": "model", "created": created, "owned_by": "fake"} for model in self.models]
        return {"object": "list", "data": data}
