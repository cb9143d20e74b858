"""The stream state and chat encoder enforce SPEC §5 whatever the upstream sends; the adapter path is split-invariant.

Property tests: random canonical chunk sequences (content pieces, tool-call openings and fragments with arbitrary
upstream indexes, repeated roles, finish riding on content, junk after the finish) always encode to a stream that
satisfies the SPEC §5 invariants, and the bytes do not depend on how the chunks were grouped into batches. The
last property runs the OpenAI adapter's own parsing path (``SseDecoder`` + ``_parse_chunk``) on an upstream body
cut at arbitrary bytes, without sockets.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.config import Deployment
from sluicegate.providers.base import StreamStats
from sluicegate.providers.openai_compat import _parse_chunk
from sluicegate.providers.sse import SseDecoder
from sluicegate.service import state as stream_state
from sluicegate.types import ChatChunk, ChoiceDelta, Usage
from sluicegate.wire.openai_chat.encode import DONE, stream_error_frame
from tests.support.encoding import ClientStream

CID = "chatcmpl-test123"
CREATED = 1764200000
MODEL = "gpt-test"
FINISHES = ["stop", "length", "tool_calls", "content_filter"]

pieces = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["", "Hello", " wörld", " 🚀", "日本", '"quoted"', "\n", "\\"]),
)
names = st.sampled_from(["get_weather", "get_time", "search", "", "ünïcode_tool"])


@dataclass
class ChoiceModel:
    """What one choice should look like on the wire, computed from the input independently of the encoder."""

    content: str = ""
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)  # upstream index -> {id, name, arguments}
    order: list[int] = field(default_factory=list)  # upstream indexes in order of first appearance
    finish: str | None = None


def model_of(chunks: list[ChatChunk]) -> tuple[dict[int, ChoiceModel], Usage | None]:
    choices: dict[int, ChoiceModel] = {}
    usage: Usage | None = None
    for chunk in chunks:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            m = choices.setdefault(c.index, ChoiceModel())
            if m.finish is not None:
                continue
            content = c.delta.get("content")
            if isinstance(content, str):
                m.content += content
            for call in c.delta.get("tool_calls") or []:
                fn = call.get("function") or {}
                args = fn.get("arguments") if isinstance(fn.get("arguments"), str) else ""
                up = call["index"]
                if up not in m.calls:
                    m.order.append(up)
                    m.calls[up] = {"id": call.get("id"), "name": fn.get("name") or "", "arguments": args}
                else:
                    m.calls[up]["arguments"] += args
            if c.finish_reason is not None:
                m.finish = "tool_calls" if (m.calls and c.finish_reason == "stop") else c.finish_reason
    return choices, usage


@st.composite
def choice_deltas(draw: st.DrawFn, index: int, opened: set[int]) -> ChoiceDelta:
    kind = draw(st.sampled_from(["content", "content", "role", "open", "fragment", "packed", "finish", "mixed"]))
    delta: dict[str, Any] = {}
    finish: str | None = None
    if kind == "content":
        delta["content"] = draw(pieces)
        if draw(st.booleans()):
            delta["role"] = "assistant"  # an upstream that repeats the role on every chunk
        if draw(st.integers(0, 9)) == 0:
            finish = draw(st.sampled_from(FINISHES))  # finish riding on content, as vLLM does
    elif kind == "role":
        delta = draw(st.sampled_from([{"role": "assistant"}, {"role": "assistant", "content": ""}, {"content": None}]))
    elif kind in ("open", "fragment", "packed", "mixed"):
        count = draw(st.integers(2, 3)) if kind == "packed" else 1
        calls = []
        for _ in range(count):
            up = draw(st.sampled_from(sorted(opened))) if kind == "fragment" and opened else draw(st.integers(0, 9))
            call: dict[str, Any] = {"index": up, "function": {"arguments": draw(pieces)}}
            if up not in opened or draw(st.integers(0, 4)) == 0:  # openings, and upstreams that repeat id/name
                call["id"] = draw(st.sampled_from(["call_a", "call_b", "call_xyz", ""]))
                call["type"] = "function"
                call["function"]["name"] = draw(names)
            opened.add(up)
            calls.append(call)
        delta["tool_calls"] = calls
        if kind == "mixed":
            delta["content"] = draw(pieces)
    else:
        finish = draw(st.sampled_from(FINISHES))
    return ChoiceDelta(index=index, delta=delta, finish_reason=finish)


@st.composite
def chunk_sequences(draw: st.DrawFn, max_choices: int = 2) -> list[ChatChunk]:
    n = draw(st.integers(1, max_choices))
    opened: dict[int, set[int]] = {i: set() for i in range(n)}
    chunks: list[ChatChunk] = []
    for _ in range(draw(st.integers(0, 25))):
        if draw(st.integers(0, 12)) == 0:
            usage = Usage(prompt_tokens=draw(st.integers(0, 99)), completion_tokens=draw(st.integers(0, 99)))
            chunks.append(ChatChunk([], usage))
            continue
        index = draw(st.integers(0, n - 1))
        chunks.append(ChatChunk([draw(choice_deltas(index, opened[index]))]))
    if draw(st.integers(0, 4)):
        for index in range(n):
            chunks.append(ChatChunk([ChoiceDelta(index, {}, draw(st.sampled_from(FINISHES)))]))
        if draw(st.booleans()):  # an upstream that goes on after its finish
            chunks.append(ChatChunk([ChoiceDelta(0, {"content": "late"})]))
    return chunks


@contextmanager
def deterministic_call_ids() -> Iterator[None]:
    counter = itertools.count()
    with mock.patch.object(stream_state, "_call_id", lambda: f"call_gen{next(counter)}"):
        yield


def encode_batches(batches: list[list[ChatChunk]], include_usage: bool) -> tuple[bytes, ClientStream]:
    with deterministic_call_ids():
        encoder = ClientStream(CID, CREATED, MODEL, include_usage)
        return b"".join(encoder.encode(batch) for batch in batches), encoder


def parse_frames(raw: bytes) -> list[dict[str, Any]]:
    if not raw:
        return []
    assert raw.endswith(b"\n\n")
    out = []
    for frame in raw[:-2].split(b"\n\n"):
        assert frame.startswith(b"data: ") and b"\n" not in frame, frame
        out.append(json.loads(frame[6:]))
    return out


def check_invariants(raw: bytes, chunks: list[ChatChunk], include_usage: bool) -> None:
    frames = parse_frames(raw)
    expected, _ = model_of(chunks)
    for f in frames:
        assert (f["id"], f["object"], f["created"], f["model"]) == (CID, "chat.completion.chunk", CREATED, MODEL)
        assert ("usage" in f) == include_usage
        if include_usage:
            assert f["usage"] is None
        assert len(f["choices"]) == 1
        assert set(f["choices"][0]) <= {"index", "delta", "finish_reason", "logprobs"}
    by_choice: dict[int, list[dict[str, Any]]] = {}
    for f in frames:
        by_choice.setdefault(f["choices"][0]["index"], []).append(f["choices"][0])
    assert set(by_choice) == set(expected)
    for index, got in by_choice.items():
        want = expected[index]
        assert got[0] == {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        assert all("role" not in c["delta"] for c in got[1:])
        finishes = [c for c in got if c["finish_reason"] is not None]
        if want.finish is None:
            assert finishes == []
        else:
            assert len(finishes) == 1 and finishes[0] is got[-1]
            assert finishes[0]["delta"] == {} and finishes[0]["finish_reason"] == want.finish
        assert "".join(c["delta"].get("content", "") for c in got) == want.content
        assert all(c["delta"].get("content") != "" for c in got[1:])
        # Tool calls: one per chunk, dense indexes from 0, id/type/name only on openings.
        opened: list[dict[str, Any]] = []
        arguments: list[str] = []
        for c in got:
            calls = c["delta"].get("tool_calls")
            if calls is None:
                continue
            assert set(c["delta"]) == {"tool_calls"} and len(calls) == 1
            call = calls[0]
            if "id" in call:
                assert call["index"] == len(opened)
                assert set(call) == {"index", "id", "type", "function"} and call["type"] == "function"
                assert set(call["function"]) == {"name", "arguments"}
                assert isinstance(call["id"], str) and call["id"]
                opened.append(call)
                arguments.append(call["function"]["arguments"])
            else:
                assert set(call) == {"index", "function"} and set(call["function"]) == {"arguments"}
                assert 0 <= call["index"] < len(opened)
                assert call["function"]["arguments"]
                arguments[call["index"]] += call["function"]["arguments"]
        assert len(opened) == len(want.order)
        for ours, up in enumerate(want.order):
            model_call = want.calls[up]
            assert opened[ours]["function"]["name"] == model_call["name"]
            assert arguments[ours] == model_call["arguments"]
            assert opened[ours]["id"] == (model_call["id"] or opened[ours]["id"])
            assert opened[ours]["id"].startswith("call_")


@st.composite
def batchings(draw: st.DrawFn, chunks: list[ChatChunk]) -> list[list[ChatChunk]]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(chunks)), max_size=len(chunks) + 1))))
    return [chunks[a:b] for a, b in zip([0, *cuts], [*cuts, len(chunks)], strict=True)]


@settings(max_examples=200, deadline=None)
@given(chunk_sequences(), st.booleans())
def test_encoder_output_satisfies_the_contract(chunks: list[ChatChunk], include_usage: bool) -> None:
    raw, encoder = encode_batches([chunks], include_usage)
    check_invariants(raw, chunks, include_usage)
    expected, usage = model_of(chunks)
    assert encoder.usage == usage
    assert encoder.started == bool(expected)
    assert encoder.complete == (bool(expected) and all(m.finish is not None for m in expected.values()))


@settings(max_examples=200, deadline=None)
@given(st.data(), chunk_sequences(), st.booleans())
def test_batching_does_not_change_the_bytes(data: st.DataObject, chunks: list[ChatChunk], include_usage: bool) -> None:
    whole, _ = encode_batches([chunks], include_usage)
    one_by_one, _ = encode_batches([[c] for c in chunks], include_usage)
    grouped, _ = encode_batches(data.draw(batchings(chunks)), include_usage)
    assert one_by_one == whole
    assert grouped == whole


def test_exact_bytes_of_a_short_stream() -> None:
    chunks = [
        ChatChunk([ChoiceDelta(0, {"role": "assistant", "content": "Logs"})]),
        ChatChunk([ChoiceDelta(0, {"role": "assistant", "content": " flow"}, "stop")]),
    ]
    raw, _ = encode_batches([chunks], include_usage=False)
    head = b'data: {"id":"chatcmpl-test123","object":"chat.completion.chunk","created":1764200000,"model":"gpt-test",'
    assert raw == (
        head + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
        + head + b'"choices":[{"index":0,"delta":{"content":"Logs"},"finish_reason":null}]}\n\n'
        + head + b'"choices":[{"index":0,"delta":{"content":" flow"},"finish_reason":null}]}\n\n'
        + head + b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    )  # fmt: skip


def test_usage_frame_and_error_frame() -> None:
    encoder = ClientStream(CID, CREATED, MODEL, include_usage=True)
    frame = encoder.usage_frame(Usage(prompt_tokens=3, completion_tokens=4))
    (chunk,) = parse_frames(frame)
    assert chunk["choices"] == [] and chunk["usage"]["total_tokens"] == 7 and chunk["id"] == CID
    error = stream_error_frame()
    assert error.startswith(b"event: error\ndata: ") and error.endswith(b"\n\n" + DONE)
    # Byte for byte (SPEC §7 as amended by issue 17): "param": null, keys in OpenAI's order.
    assert error == (
        b'event: error\ndata: {"error":{"message":"upstream stream interrupted","type":"server_error",'
        b'"param":null,"code":"stream_error"}}\n\n' + DONE
    )


# ---------------------------------------------------------------------------------------------------------------
# The adapter's parsing path: upstream SSE bytes, cut anywhere, give the same client bytes.

DEPLOYMENT = Deployment(provider="openai", model="upstream-gpt", api_base="http://127.0.0.1:9/v1")


def upstream_payload(chunk: ChatChunk) -> bytes:
    """An OpenAI-compatible upstream's chunk JSON for a canonical chunk (with its own id and model)."""
    obj: dict[str, Any] = {
        "id": "chatcmpl-upstream",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "upstream-gpt-internal",
        "choices": [
            {"index": c.index, "delta": c.delta, "logprobs": None, "finish_reason": c.finish_reason}
            for c in chunk.choices
        ],
    }
    if chunk.usage is not None:
        obj["usage"] = chunk.usage.to_openai()
    return orjson.dumps(obj)


@st.composite
def upstream_bodies(draw: st.DrawFn) -> tuple[bytes, list[ChatChunk]]:
    chunks = [ChatChunk([ChoiceDelta(0, {"role": "assistant", "content": ""})]), *draw(chunk_sequences(1))]
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    out = [b": keep-alive" + eol + eol] if draw(st.booleans()) else []
    for i, chunk in enumerate(chunks):
        out.append(b"data: " + upstream_payload(chunk) + eol + eol)
        if i and draw(st.integers(0, 9)) == 0:
            out.append(b"data: {not json" + eol + eol)  # dropped by a non-strict deployment
        if draw(st.integers(0, 9)) == 0:
            out.append(b": ping" + eol + eol)
    out.append(b"data: [DONE]" + eol + eol)
    return b"".join(out), chunks


def run_adapter_path(pieces: list[bytes]) -> tuple[bytes, bool]:
    """What ``OpenAICompatProvider.stream`` + the encoder do with these reads: one batch per read."""
    decoder = SseDecoder()
    stats = StreamStats()
    out: list[bytes] = []
    with deterministic_call_ids():
        encoder = ClientStream(CID, CREATED, MODEL, include_usage=True)
        for piece in pieces:
            batch = []
            done = False
            for event in decoder.feed(piece):
                if event.data == b"[DONE]":
                    done = True
                    break
                chunk = _parse_chunk(event.data, DEPLOYMENT, stats)
                if chunk is not None:
                    batch.append(chunk)
            out.append(encoder.encode(batch))
            if done:
                return b"".join(out), True
    return b"".join(out), False


@settings(max_examples=200, deadline=None)
@given(st.data(), upstream_bodies())
def test_upstream_splits_do_not_change_the_client_stream(
    data: st.DataObject, case: tuple[bytes, list[ChatChunk]]
) -> None:
    body, chunks = case
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=20)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    whole, whole_done = run_adapter_path([body])
    split, split_done = run_adapter_path(pieces)
    bytewise, _ = run_adapter_path([body[i : i + 1] for i in range(len(body))])
    assert whole_done and split_done
    assert split == whole
    assert bytewise == whole
    check_invariants(whole, chunks, include_usage=True)
    assert b"upstream-gpt-internal" not in whole and b"chatcmpl-upstream" not in whole
