"""One request/response exchange: HTTP and SSE framing, and the builders of OpenAI chunks and completions."""

from __future__ import annotations

import asyncio
import http
import time
from collections.abc import Iterable
from typing import Any, Protocol

import orjson

from .connection import Connection, HttpRequest, RecordedRequest
from .constants import NORMAL_PIECES, PROMPT_TOKENS
from .selection import Scenario, ScenarioError


class ExchangeOwner(Protocol):
    """What an exchange and its scenario use of the server (``FakeOpenAI``)."""

    split_pause: float

    def count_attempt(self, scenario: str) -> int: ...


def reason_phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def usage(tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": tokens,
        "total_tokens": PROMPT_TOKENS + tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def envelope(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class Exchange:
    def __init__(self, fake: ExchangeOwner, conn: Connection, request: HttpRequest, record: RecordedRequest) -> None:
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
        lines = [
            f"HTTP/1.1 {status} {reason_phrase(status)}",
            "server: fake-openai",
            f"x-fake-scenario: {self.scenario}",
        ]
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
            await self.conn.send(http_chunk(frame))

    async def _write_split(self, body: bytes, *, chunked: bool) -> None:
        size = self.split or len(body)
        for start in range(0, len(body), size):
            piece = body[start : start + size]
            await self.conn.send(http_chunk(piece) if chunked else piece)
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
                "usage": usage(tokens),
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
            body["usage"] = usage(tokens)
        return body

    def text_completion(self, pieces: Iterable[str], finish_reason: str | None = "stop") -> dict[str, Any]:
        pieces = list(pieces)
        message = {"role": "assistant", "content": "".join(pieces), "refusal": None}
        return self.completion(message, finish_reason, len(pieces))
