#!/usr/bin/env python3
"""CPU per streamed chunk: the Anthropic (and Gemini) adapters against the OpenAI pass-through, in one run.

    .venv/bin/python -m benchmarks.bench_translate [--chunks 1000] [--streams 50] [--rounds 7]

Run it from the project venv (sluicegate installed editable); it needs no benchmark kit.

In-process, no sockets: each adapter's real ``stream()`` runs against a stub aiohttp session whose
response hands out one pre-built SSE event per ``readany()`` (one token per read, what a live
upstream does), so what is timed is exactly the per-chunk gateway work: SSE decoding, JSON parsing,
translation to canonical chunks and ``StreamState`` + ``ChunkEncoder`` serialisation of the client's bytes. Every
stream has the same number of content deltas (``--chunks``, plus the provider's framing events).
Rounds interleave the providers so machine noise hits all alike; the median round is reported.

Target (issue): Anthropic ≤ 1.5x OpenAI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

import aiohttp

from sluicegate.config import Deployment
from sluicegate.providers.anthropic import AnthropicProvider
from sluicegate.providers.base import StreamStats
from sluicegate.providers.gemini import GeminiProvider
from sluicegate.providers.openai_compat import OpenAICompatProvider
from sluicegate.service.state import StreamState
from sluicegate.types import ChatRequest
from sluicegate.wire.openai_chat.encode import ChunkEncoder

WORDS = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."]


class _Content:
    __slots__ = ("_i", "_parts")

    def __init__(self, parts: list[bytes]) -> None:
        self._parts = parts
        self._i = 0

    async def readany(self) -> bytes:
        if self._i >= len(self._parts):
            return b""
        self._i += 1
        return self._parts[self._i - 1]


class _Response:
    status = 200
    headers: dict[str, str] = {}

    def __init__(self, parts: list[bytes]) -> None:
        self.content = _Content(parts)

    def release(self) -> None:
        return None

    def close(self) -> None:
        return None


class _Session:
    """Just enough of ``aiohttp.ClientSession`` for ``providers._http.open_post``."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    async def post(self, url: str, **_: Any) -> _Response:
        return _Response(self.parts)


def _sse(obj: Any, event: str | None = None, eol: str = "\n") -> bytes:
    head = f"event: {event}{eol}" if event else ""
    return f"{head}data: {json.dumps(obj, separators=(',', ':'))}{eol}{eol}".encode()


def openai_events(n: int) -> list[bytes]:
    base = {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "service_tier": "default",
        "system_fingerprint": "fp_eb9dce56a8",
        "usage": None,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    usage = {"prompt_tokens": 9, "completion_tokens": n, "total_tokens": 9 + n}
    return [
        chunk({"role": "assistant", "content": "", "refusal": None}),
        *(chunk({"content": WORDS[i % len(WORDS)]}) for i in range(n)),
        chunk({}, "stop"),
        _sse({**base, "choices": [], "usage": usage}),
        b"data: [DONE]\n\n",
    ]


def anthropic_events(n: int) -> list[bytes]:
    usage = {"input_tokens": 9, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1}
    message: dict[str, Any] = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-sonnet-4-5",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}}

    def delta(text: str) -> bytes:
        data = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
        return _sse(data, "content_block_delta")

    return [
        _sse({"type": "message_start", "message": message}, "message_start"),
        _sse(block, "content_block_start"),
        *(delta(WORDS[i % len(WORDS)]) for i in range(n)),
        _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        _sse({**end, "usage": {"output_tokens": n}}, "message_delta"),
        _sse({"type": "message_stop"}, "message_stop"),
    ]


def gemini_events(n: int) -> list[bytes]:
    usage = {
        "promptTokenCount": 9,
        "totalTokenCount": 9,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 9}],
    }
    meta = {"usageMetadata": usage, "modelVersion": "gemini-2.5-flash", "responseId": "Yx5DaeGWKJ2hz7IPhqjT4Qc"}

    def chunk(text: str, finish: str | None = None) -> bytes:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        return _sse({"candidates": [candidate], **meta}, eol="\r\n")

    return [*(chunk(WORDS[i % len(WORDS)]) for i in range(n - 1)), chunk(WORDS[0], "STOP")]


Factory = Callable[[aiohttp.ClientSession], Any]
PROVIDERS: dict[str, tuple[Factory, Callable[[int], list[bytes]], str]] = {
    "openai": (OpenAICompatProvider, openai_events, "openai"),
    "anthropic": (AnthropicProvider, anthropic_events, "anthropic"),
    "gemini": (GeminiProvider, gemini_events, "gemini"),
}


async def run_streams(name: str, parts: list[bytes], streams: int) -> tuple[float, int]:
    """CPU seconds for ``streams`` full streams, and the client bytes one stream produced."""
    factory, _, provider = PROVIDERS[name]
    adapter = factory(cast(aiohttp.ClientSession, _Session(parts)))
    deployment = Deployment.model_validate(
        {"provider": provider, "model": "m", "api_base": "http://upstream.invalid/v1", "api_key": "k"}
    )
    request = ChatRequest(
        model="bench",
        messages=[{"role": "user", "content": "hi"}],
        params={"stream": True},
        stream=True,
        include_usage=True,
    )
    out = 0
    t0 = time.process_time()
    for _ in range(streams):
        state = StreamState()
        encoder = ChunkEncoder("chatcmpl-bench", 1741570283, "bench", include_usage=True)
        out = 0
        async for batch in adapter.stream(request, deployment, "req-bench", StreamStats()):
            out += len(encoder.encode(state.feed(batch)))
        assert state.complete and state.usage is not None, name
    return time.process_time() - t0, out


async def main(args: argparse.Namespace) -> int:
    events = {name: spec[1](args.chunks) for name, spec in PROVIDERS.items()}
    for name, parts in events.items():  # warm-up, and a sanity check that every path completes
        await run_streams(name, parts, 2)
    per_chunk: dict[str, list[float]] = {name: [] for name in PROVIDERS}
    client_bytes: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, parts in events.items():
            cpu, client_bytes[name] = await run_streams(name, parts, args.streams)
            per_chunk[name].append(cpu / (args.streams * args.chunks) * 1e6)
    base = statistics.median(per_chunk["openai"])
    print(f"{args.chunks}-chunk streams x {args.streams} per round, {args.rounds} rounds; median CPU per content chunk")
    print(f"{'adapter':<10} {'upstream B/stream':>17} {'client B/stream':>15} {'µs/chunk':>9} {'vs openai':>9}")
    for name in PROVIDERS:
        med = statistics.median(per_chunk[name])
        upstream = sum(len(p) for p in events[name])
        print(f"{name:<10} {upstream:>17} {client_bytes[name]:>15} {med:>9.2f} {med / base:>8.2f}x")
    ratio = statistics.median(per_chunk["anthropic"]) / base
    verdict = "meets" if ratio <= 1.5 else "MISSES"
    print(f"anthropic/openai = {ratio:.2f}x: {verdict} the ≤ 1.5x target")
    return 0 if ratio <= 1.5 else 1


def _run(coro: Coroutine[Any, Any, int]) -> int:
    # The gateway runs on uvloop; plain asyncio is slower for every adapter alike.
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    sys.exit(_run(main(parser.parse_args())))
